//! Every run has an owner and a priority, the ground of fair sharing between teams: a
//! token submits for its team (or, without one, for its name) and cannot name another; a
//! caller of an API without tokens names its own (`local` by default); a run's priority
//! comes from `--priority`, else its plan, else 1.

use anyhow::Context;
use opflow_integration::{Env, http, parse_summary, stderr};
use serde_json::json;

const PLAN: &str = "name: p\nassets:\n  - name: a\n    op: noop@1.1.0\n";
const PLAN_WITH_PRIORITY: &str = "name: p\npriority: 3\nassets:\n  - name: a\n    op: noop@1.1.0\n";

#[tokio::test]
async fn a_tokens_runs_belong_to_its_team_and_no_token_names_another() -> anyhow::Result<()> {
    let env = Env::new("owners_tokens").await?;
    env.register("noop").await?;
    let (_dispatcher, api) = env.spawn_dispatcher_api(&[("OPFLOW_API_AUTH", "required")]).await?;
    let token = |output: std::process::Output| String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let ci = token(env.opflow_ok(&["tokens", "create", "ci", "--scope", "submit", "--team", "risk"]).await?);
    let bob = token(env.opflow_ok(&["tokens", "create", "bob", "--scope", "submit"]).await?);

    let (status, body) =
        http(&api, "POST", "/v1/runs", Some(&ci), Some(&json!({"plan": PLAN_WITH_PRIORITY}))).await?;
    assert_eq!(status, 201, "{body}");
    assert_eq!((body["owner"].as_str(), body["priority"].as_u64()), (Some("risk"), Some(3)), "{body}");
    let (status, body) =
        http(&api, "POST", "/v1/runs", Some(&bob), Some(&json!({"plan": PLAN_WITH_PRIORITY, "priority": 7})))
            .await?;
    assert_eq!(status, 201, "{body}");
    assert_eq!((body["owner"].as_str(), body["priority"].as_u64()), (Some("bob"), Some(7)), "{body}");
    // Naming its own team is fine; naming another is refused, and changes nothing.
    let (status, body) =
        http(&api, "POST", "/v1/runs", Some(&ci), Some(&json!({"plan": PLAN, "owner": "risk"}))).await?;
    assert_eq!(status, 201, "{body}");
    let (status, body) =
        http(&api, "POST", "/v1/runs", Some(&ci), Some(&json!({"plan": PLAN, "owner": "ml"}))).await?;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().is_some_and(|m| m.contains("submits for `risk`")), "{body}");
    // An owner that is no owner name is refused before any message quotes it.
    let long = "x".repeat(100_000);
    let (status, body) =
        http(&api, "POST", "/v1/runs", Some(&ci), Some(&json!({"plan": PLAN, "owner": long}))).await?;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().len() < 1_000, "{body}");
    let (status, body) =
        http(&api, "POST", "/v1/runs", Some(&ci), Some(&json!({"plan": PLAN, "priority": 11}))).await?;
    assert_eq!(status, 400, "{body}");
    let (_, runs) = http(&api, "GET", "/v1/runs?limit=10", Some(&ci), None).await?;
    let owners: Vec<&str> =
        runs["items"].as_array().context("items")?.iter().filter_map(|r| r["owner"].as_str()).collect();
    assert_eq!(owners, ["risk", "bob", "risk"], "{runs}");

    let listed = env.opflow_ok(&["tokens", "list", "--json"]).await?;
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout)?;
    let teams: Vec<(&str, &str)> = listed
        .as_array()
        .context("a list")?
        .iter()
        .filter_map(|t| Some((t["name"].as_str()?, t["team"].as_str()?)))
        .collect();
    assert_eq!(teams, [("bob", "bob"), ("ci", "risk")]);
    Ok(())
}

#[tokio::test]
async fn without_tokens_a_caller_names_the_owner_and_the_plan_its_priority() -> anyhow::Result<()> {
    let env = Env::new("owners_open").await?;
    env.register("noop").await?;
    let _dispatcher = env.spawn_dispatcher().await?;
    let plan = env.plan_file("p", PLAN_WITH_PRIORITY)?;
    let plan = plan.to_str().context("utf-8")?;

    let run = parse_summary(&env.opflow_ok(&["run", plan, "--json"]).await?)?;
    assert_eq!((run["owner"].as_str(), run["priority"].as_u64()), (Some("local"), Some(3)), "{run}");
    let run =
        parse_summary(&env.opflow_ok(&["run", plan, "--json", "--owner", "ml", "--priority", "9"]).await?)?;
    assert_eq!((run["owner"].as_str(), run["priority"].as_u64()), (Some("ml"), Some(9)), "{run}");
    let status = env.opflow_ok(&["status", run["run_id"].as_str().context("run_id")?]).await?;
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("owner  ml, priority 9"), "{status}");

    // Out of range, in the plan or on the command line: exit 2, nothing submitted.
    let bad = env.plan_file("bad", "name: p\npriority: 11\nassets:\n  - name: a\n    op: noop@1.1.0\n")?;
    let output = env.opflow(&["run", bad.to_str().context("utf-8")?]).await?;
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("priority: 11 is out of range; use 1 to 10"), "{}", stderr(&output));
    let output = env.opflow(&["run", plan, "--priority", "0"]).await?;
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let output = env.opflow(&["run", plan, "--owner", "two words"]).await?;
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let (_, runs) = http(&env.api_addr, "GET", "/v1/runs", None, None).await?;
    assert_eq!(runs["items"].as_array().map(Vec::len), Some(2), "{runs}");
    Ok(())
}

/// `opflow runs` lists runs newest first, filtered by status, plan and owner (`GET /v1/runs`
/// and its `plan` and `owner` filters), follows the API's pages up to `--limit`, and says
/// so when nothing matches.
#[tokio::test]
async fn opflow_runs_lists_newest_first_by_status_plan_and_owner() -> anyhow::Result<()> {
    let env = Env::new("runs_list").await?;
    env.register("noop").await?;
    let _dispatcher = env.spawn_dispatcher().await?;
    let _worker = env.spawn_worker("noop")?;
    let good = env.plan_file("good", "name: good\nassets:\n  - name: a\n    op: noop@^1\n")?;
    let bad = env
        .plan_file("bad", "name: bad\nassets:\n  - name: a\n    op: noop@^1\n    config: {fail: fatal}\n")?;
    let (good, bad) = (good.to_str().context("utf-8")?, bad.to_str().context("utf-8")?);
    let mut submitted = Vec::new();
    for (plan, owner) in [(good, "risk"), (bad, "risk"), (good, "ml"), (good, "risk")] {
        let output = env.opflow(&["run", plan, "--wait", "--json", "--owner", owner]).await?;
        submitted.push(parse_summary(&output)?["run_id"].as_str().context("run_id")?.to_owned());
    }
    let listed = |args: &'static [&'static str]| {
        let env = &env;
        async move {
            let output = env.opflow_ok(&[&["runs", "--json"], args].concat()).await?;
            let ids: Vec<String> = String::from_utf8_lossy(&output.stdout)
                .lines()
                .map(|l| {
                    Ok(serde_json::from_str::<serde_json::Value>(l)?["run_id"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned())
                })
                .collect::<anyhow::Result<_>>()?;
            anyhow::Ok(ids)
        }
    };
    let newest_first: Vec<String> = submitted.iter().rev().cloned().collect();
    assert_eq!(listed(&[]).await?, newest_first);
    assert_eq!(listed(&["--owner", "risk"]).await?, [submitted[3].as_str(), &submitted[1], &submitted[0]]);
    assert_eq!(listed(&["--plan", "bad"]).await?, [submitted[1].as_str()]);
    assert_eq!(
        listed(&["--status", "succeeded", "--owner", "risk"]).await?,
        [submitted[3].as_str(), &submitted[0]]
    );
    assert_eq!(listed(&["--limit", "2"]).await?, newest_first[..2]);
    assert!(listed(&["--owner", "nobody"]).await?.is_empty());

    let table = env.opflow_ok(&["runs", "--plan", "bad"]).await?;
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("STATUS") && table.contains("failed") && table.contains("0/1 (1 failed)"),
        "{table}"
    );
    let none = env.opflow_ok(&["runs", "--owner", "nobody"]).await?;
    assert!(String::from_utf8_lossy(&none.stdout).contains("no runs match"));
    let refused = env.opflow(&["runs", "--status", "sideways"]).await?;
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    let long = "o".repeat(10_000);
    let refused = env.opflow(&["runs", "--owner", &long]).await?;
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("at most 64") && !stderr(&refused).contains(&long),
        "{}",
        stderr(&refused)
    );
    // The dispatcher goes on answering.
    assert_eq!(listed(&["--limit", "1"]).await?, newest_first[..1]);
    Ok(())
}
