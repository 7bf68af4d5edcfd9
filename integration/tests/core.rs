//! The core flow end to end, against the real RabbitMQ and PostgreSQL, driving the real
//! `opflow` and op binaries. Each test has its own database and vhost (see `Env`).

use std::path::PathBuf;

use anyhow::Context;
use opflow_integration::{Env, binary, parse_summary, stderr};
use serde_json::Value;

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

#[tokio::test]
async fn demo_plan_runs_end_to_end() -> anyhow::Result<()> {
    let mut env = Env::new("demo").await?;
    let plan = repo_file("examples/defi-risk.yaml");
    let output = env.opflow(&["up", "--run", plan.to_str().context("utf-8 path")?]).await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "opflow up --run failed:\n{stdout}\n{}", stderr(&output));
    assert!(stdout.contains("succeeded"), "{stdout}");
    for protocol in ["var[aave]", "var[compound]", "var[maker]"] {
        let line = stdout
            .lines()
            .find(|l| l.contains(protocol))
            .with_context(|| format!("no {protocol} in {stdout}"))?;
        assert!(line.contains("var_95=") && line.contains("var_99="), "{line}");
    }
    let db = env.db().await?;
    let (status, succeeded): (String, i32) =
        sqlx::query_as("SELECT status::text, steps_succeeded FROM runs").fetch_one(&db).await?;
    assert_eq!((status.as_str(), succeeded), ("succeeded", 30));
    // Every report fanned in its protocol's nine scenarios, and VaR 99 is the larger.
    let reports: Vec<Value> = sqlx::query_scalar(
        "SELECT s.output FROM steps s JOIN run_assets a ON a.run_id = s.run_id AND a.idx = s.asset WHERE a.name = 'var'",
    )
    .fetch_all(&db)
    .await?;
    assert_eq!(reports.len(), 3);
    for report in reports {
        assert_eq!(report["scenarios"], 9, "{report}");
        assert!(report["var_99"].as_f64() > report["var_95"].as_f64(), "{report}");
    }
    Ok(())
}

/// The second example plan: Rust ops (price-paths, var-report) and a Python op
/// (loss-aggregate, on sdk/python) in one run, under `opflow up`.
#[tokio::test]
async fn mixed_rust_and_python_plan_runs_end_to_end() -> anyhow::Result<()> {
    let mut env = Env::new("mixed").await?;
    let plan = repo_file("examples/mixed-risk.yaml");
    let ops = [binary("price-paths")?, binary("var-report")?, binary("loss-aggregate")?];
    let mut args = vec!["up", "--run", plan.to_str().context("utf-8 path")?];
    args.extend(ops.iter().map(|op| op.to_str().unwrap_or_default()));
    let output = env.opflow(&args).await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "opflow up --run failed:\n{stdout}\n{}", stderr(&output));
    let db = env.db().await?;
    let (status, succeeded): (String, i32) =
        sqlx::query_as("SELECT status::text, steps_succeeded FROM runs").fetch_one(&db).await?;
    assert_eq!((status.as_str(), succeeded), ("succeeded", 33));
    // Both reports of each protocol read its nine scenarios, and agree on VaR 95 %.
    let reports: Vec<(String, String, Value)> = sqlx::query_as(
        "SELECT a.name, s.output->>'protocol', s.output FROM steps s JOIN run_assets a ON a.run_id = s.run_id AND a.idx = s.asset
         WHERE a.name IN ('var', 'losses') ORDER BY 2, a.name",
    )
    .fetch_all(&db)
    .await?;
    assert_eq!(reports.len(), 6);
    for pair in reports.chunks(2) {
        let (losses, var) = (&pair[0].2, &pair[1].2);
        assert_eq!((pair[0].0.as_str(), pair[1].0.as_str()), ("losses", "var"));
        assert_eq!(losses["scenarios"], 9, "{losses}");
        let tail_95 = losses["tail"]
            .as_array()
            .and_then(|t| t.iter().find(|l| l["level"] == 0.95))
            .with_context(|| format!("no 95 % level in {losses}"))?;
        let (python, rust) =
            (tail_95["var"].as_f64().context("var")?, var["var_95"].as_f64().context("var_95")?);
        assert!((python - rust).abs() <= rust.abs() * 0.01 + 1.0, "{}: {python} vs {rust}", pair[0].1);
    }
    Ok(())
}

#[tokio::test]
async fn retryable_failures_are_retried_and_permanent_ones_fail_the_run() -> anyhow::Result<()> {
    let mut env = Env::new("retries").await?;
    env.register("noop").await?;
    let _dispatcher = env.spawn_dispatcher().await?;
    let _worker = env.spawn_worker("noop")?;

    let flaky = env.plan_file(
        "flaky",
        "name: flaky\nassets:\n  - name: flaky\n    op: noop@^1\n    config: {fail_until_attempt: 3}\n    \
         retry: {max: 2, backoff: 100ms}\n",
    )?;
    let output = env.opflow(&["run", flaky.to_str().context("utf-8")?, "--wait", "--json"]).await?;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let summary = parse_summary(&output)?;
    assert_eq!(summary["status"], "succeeded");
    let run_id = summary["run_id"].as_str().context("run_id")?.to_owned();
    let db = env.db().await?;
    let (attempt, failures): (i32, i64) = sqlx::query_as(
        "SELECT s.attempt, (SELECT count(*) FROM events e WHERE e.run_id = s.run_id AND e.kind = 'failed')
         FROM steps s WHERE s.run_id = $1::uuid",
    )
    .bind(&run_id)
    .fetch_one(&db)
    .await?;
    assert_eq!((attempt, failures), (3, 2), "two failed attempts, then success on the third");

    let broken = env.plan_file(
        "broken",
        "name: broken\nassets:\n  - name: fatal\n    op: noop@^1\n    config: {fail: fatal}\n    retry: {max: 3, backoff: 10ms}\n  \
         - name: exhausted\n    op: noop@^1\n    config: {fail: retryable}\n    retry: {max: 1, backoff: 10ms}\n  \
         - name: downstream\n    op: noop@^1\n    deps: [fatal]\n  - name: independent\n    op: noop@^1\n",
    )?;
    let output = env.opflow(&["run", broken.to_str().context("utf-8")?, "--wait", "--json"]).await?;
    assert_eq!(output.status.code(), Some(1), "a failed run exits 1: {}", stderr(&output));
    let summary = parse_summary(&output)?;
    assert_eq!(summary["status"], "failed");
    assert_eq!(summary["steps"]["failed"], 2, "{summary}");
    assert_eq!(summary["steps"]["skipped"], 1, "{summary}");
    assert_eq!(summary["steps"]["succeeded"], 1, "{summary}");
    let run_id = summary["run_id"].as_str().context("run_id")?.to_owned();
    let attempts: Vec<(String, i32, String)> = sqlx::query_as(
        "SELECT a.name, s.attempt, s.error FROM steps s JOIN run_assets a ON a.run_id = s.run_id AND a.idx = s.asset
         WHERE s.run_id = $1::uuid AND s.status = 'failed' ORDER BY a.name",
    )
    .bind(&run_id)
    .fetch_all(&db)
    .await?;
    assert_eq!(attempts[0].0, "exhausted");
    assert_eq!(attempts[0].1, 2, "one retry, then failed for good");
    assert!(attempts[0].2.contains("failed after 2 attempts"), "{}", attempts[0].2);
    assert_eq!(attempts[1].0, "fatal");
    assert_eq!(attempts[1].1, 1, "a fatal failure is not retried");
    assert!(attempts[1].2.contains("not retryable"), "{}", attempts[1].2);
    Ok(())
}

#[tokio::test]
async fn the_same_key_gives_one_run() -> anyhow::Result<()> {
    let mut env = Env::new("idempotency").await?;
    env.register("noop").await?;
    // Plans are submitted over the dispatcher's API.
    let _dispatcher = env.spawn_dispatcher().await?;
    let plan =
        env.plan_file("p", "name: p\nassets:\n  - name: a\n    op: noop@^1\n    sweep: {k: [1, 2, 3]}\n")?;
    let path = plan.to_str().context("utf-8")?;
    let first =
        parse_summary(&env.opflow_ok(&["run", path, "--key", "nightly-2026-11-22", "--json"]).await?)?;
    let again = env.opflow_ok(&["run", path, "--key", "nightly-2026-11-22", "--json"]).await?;
    let second = parse_summary(&again)?;
    assert_eq!(first["run_id"], second["run_id"]);
    let db = env.db().await?;
    let (runs, steps): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM steps)")
            .fetch_one(&db)
            .await?;
    assert_eq!((runs, steps), (1, 3));

    // The same key with a different plan is a mistake, not a second run.
    let other = env.plan_file("q", "name: q\nassets:\n  - name: b\n    op: noop@^1\n")?;
    let output =
        env.opflow(&["run", other.to_str().context("utf-8")?, "--key", "nightly-2026-11-22"]).await?;
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("different plan"), "{}", stderr(&output));
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM runs").fetch_one(&db).await?;
    assert_eq!(runs, 1);
    Ok(())
}

/// `opflow ops list | head -0`: a command whose reader went away stops quietly, exit 0 and
/// no panic, as any Unix tool does. (SIGPIPE stays ignored in every opflow process, so that
/// a client hanging up never kills the dispatcher; stdout's closed pipe is handled instead.)
#[tokio::test]
async fn a_command_whose_reader_went_away_stops_quietly() -> anyhow::Result<()> {
    let env = Env::new("closed_pipe").await?;
    env.register("noop").await?;
    let mut child = env
        .command(&binary("opflow")?)
        .args(["ops", "list"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // The reader goes away before the first line is written (the command connects first).
    drop(child.stdout.take());
    let output = child.wait_with_output().await?;
    let errors = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{}: {errors}", output.status);
    assert!(!errors.contains("panicked"), "{errors}");
    Ok(())
}

#[tokio::test]
async fn invalid_plans_exit_2_name_the_problem_and_change_nothing() -> anyhow::Result<()> {
    let mut env = Env::new("invalid").await?;
    env.register("noop").await?;
    // Plans are submitted over the dispatcher's API.
    let _dispatcher = env.spawn_dispatcher().await?;
    let fixtures = repo_file("integration/tests/fixtures/invalid");
    let expected = std::fs::read_to_string(fixtures.join("EXPECTED.txt"))?;
    let mut cases = 0;
    for line in expected.lines().filter(|l| !l.trim().is_empty()) {
        let (file, message) = line.split_once('\t').context("EXPECTED.txt lines are file<TAB>message")?;
        let path = fixtures.join(file);
        for command in [
            &["run", path.to_str().context("utf-8")?][..],
            &["plan", "check", path.to_str().context("utf-8")?],
        ] {
            let output = env.opflow(command).await?;
            let err = stderr(&output);
            assert_eq!(output.status.code(), Some(2), "{} on {file} should exit 2:\n{err}", command[0]);
            assert!(err.contains(message), "{} on {file}: expected `{message}` in:\n{err}", command[0]);
        }
        cases += 1;
    }
    assert_eq!(cases, 11, "one fixture per invalid-plan case");
    let db = env.db().await?;
    let rows: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM runs) + (SELECT count(*) FROM steps) + (SELECT count(*) FROM outbox)
              + (SELECT count(*) FROM run_assets)",
    )
    .fetch_one(&db)
    .await?;
    assert_eq!(rows, 0, "an invalid plan must not write anything");
    Ok(())
}

#[tokio::test]
async fn two_versions_of_an_op_serve_exactly_the_steps_that_pinned_them() -> anyhow::Result<()> {
    let mut env = Env::new("versions").await?;
    let old = binary("noop@1.0.0")?;
    let describe = std::process::Command::new(&old).arg("--describe").output()?;
    assert!(
        String::from_utf8_lossy(&describe.stdout).contains("\"noop@1.0.0\""),
        "the 1.0.0 build must say so"
    );
    env.register("noop@1.0.0").await?;
    env.register("noop").await?;
    let _dispatcher = env.spawn_dispatcher().await?;
    let _old_worker = env.spawn_worker("noop@1.0.0")?;
    let _new_worker = env.spawn_worker("noop")?;
    let plan = env.plan_file(
        "versions",
        "name: versions\nassets:\n  - name: old\n    op: noop@1.0.0\n    sweep: {k: {from: 1, to: 8}}\n  \
         - name: new\n    op: noop@1.1.0\n    sweep: {k: {from: 1, to: 8}}\n  \
         - name: newest\n    op: noop@^1\n    sweep: {k: {from: 1, to: 4}}\n",
    )?;
    let output = env.opflow(&["run", plan.to_str().context("utf-8")?, "--wait", "--json"]).await?;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let db = env.db().await?;
    let rows: Vec<(String, String, Option<String>, Value)> = sqlx::query_as(
        "SELECT a.name, a.op_version, s.worker, s.output FROM steps s
         JOIN run_assets a ON a.run_id = s.run_id AND a.idx = s.asset",
    )
    .fetch_all(&db)
    .await?;
    assert_eq!(rows.len(), 20);
    for (asset, pinned, worker, output) in rows {
        let expected = if asset == "old" { "1.0.0" } else { "1.1.0" };
        assert_eq!(pinned, expected, "asset {asset} resolved to the wrong version");
        let worker = worker.context("a succeeded step records its worker")?;
        assert!(worker.starts_with(&format!("noop@{expected}/")), "asset {asset} ran on {worker}");
        assert_eq!(output["op_version"], expected, "asset {asset}");
    }
    Ok(())
}
