//! Following runs over the HTTP API: the resumable events stream, the lists, the OpenAPI
//! document, and `opflow watch` on a terminal and in a pipe.

use std::time::{Duration, Instant};

use anyhow::Context;
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use opflow_integration::{Env, parse_summary, stderr};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(240);

/// One event as the stream sent it.
#[derive(Debug)]
struct Received {
    id: String,
    event: String,
    data: Value,
}

/// Reads `GET path` as Server-Sent Events, sending `Last-Event-ID: last` when given, until
/// the stream ends or `stop_after` events (with an `id:`) were read; then drops the connection.
async fn read_sse(
    client: &reqwest::Client,
    addr: &str,
    path: &str,
    last: Option<i64>,
    stop_after: Option<usize>,
) -> anyhow::Result<Vec<Received>> {
    let mut request = client.get(format!("http://{addr}{path}"));
    if let Some(last) = last {
        request = request.header("last-event-id", last.to_string());
    }
    let response = request.send().await?.error_for_status()?;
    anyhow::ensure!(
        response.headers()["content-type"].to_str()?.starts_with("text/event-stream"),
        "not an event stream: {:?}",
        response.headers()
    );
    let mut stream = response.bytes_stream().eventsource();
    let mut received = Vec::new();
    while let Some(event) =
        tokio::time::timeout(DEADLINE, stream.next()).await.context("the stream stalled")?
    {
        let event = event?;
        let data = serde_json::from_str(&event.data).with_context(|| format!("data of {event:?}"))?;
        let end = event.event == "end";
        received.push(Received { id: event.id, event: event.event, data });
        if end || stop_after.is_some_and(|n| received.iter().filter(|r| !r.id.is_empty()).count() >= n) {
            break;
        }
    }
    Ok(received)
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// This env's dispatcher (with its API) and two noop workers, and a run of `steps` chatty
/// steps (each logs, reports progress and succeeds) submitted over the API: the dispatcher,
/// the workers, the API's address and the run's id.
async fn chatty_run(
    env: &Env,
    steps: u32,
    sleep_ms: u32,
) -> anyhow::Result<(opflow_integration::Service, [tokio::process::Child; 2], String, String)> {
    env.register("noop").await?;
    let (dispatcher, api) = env.spawn_dispatcher_api(&[]).await?;
    let workers = [env.spawn_worker("noop")?, env.spawn_worker("noop")?];
    let plan = format!(
        "name: chatty\nassets:\n  - name: work\n    op: noop@1.1.0\n    sweep: {{i: {{from: 1, to: {steps}}}}}\n    \
         config: {{chatty: true, sleep_ms: {sleep_ms}}}\n"
    );
    let (status, body) =
        opflow_integration::http(&api, "POST", "/v1/runs", None, Some(&serde_json::json!({ "plan": plan })))
            .await?;
    anyhow::ensure!(status == 201, "submitting the chatty run: {status} {body}");
    let run = body["run_id"].as_str().context("run_id")?.to_owned();
    Ok((dispatcher, workers, api, run))
}

/// A client that hangs up in the middle of a stream is a client gone, nothing more: the
/// dispatcher's next write to that socket must fail the write, not kill the process (a
/// SIGPIPE would: the API's HTTP writes are `writev`, which cannot ask not to be signalled).
#[tokio::test]
async fn clients_that_hang_up_mid_stream_do_not_take_the_dispatcher_down() -> anyhow::Result<()> {
    let env = Env::new("sse_hangups").await?;
    // A finished run's events replay as fast as the socket takes them: many writes follow
    // each hang-up.
    let (mut dispatcher, _workers, api, run) = chatty_run(&env, 300, 0).await?;
    let path = format!("/v1/runs/{run}/events");
    let client = client();
    let ended = read_sse(&client, &api, &path, None, None).await?;
    assert_eq!(ended.last().map(|r| r.event.as_str()), Some("end"), "the run ends before the hang-ups");
    for _ in 0..30 {
        let read = read_sse(&client, &api, &path, None, Some(5)).await?;
        assert_eq!(read.len(), 5);
        tokio::time::sleep(Duration::from_millis(20)).await;
        dispatcher.check_alive().context("a client hung up mid-stream")?;
    }
    let (status, _) = opflow_integration::http(&api, "GET", "/healthz", None, None).await?;
    assert_eq!(status, 200);
    Ok(())
}

#[tokio::test]
async fn an_sse_client_dropped_mid_run_and_resumed_gets_every_event_of_a_2000_step_run_once_in_order()
-> anyhow::Result<()> {
    let mut env = Env::new("sse_resume").await?;
    // Each step logs, reports progress and succeeds: about 6,000 events.
    let (_dispatcher, _workers, api, run) = chatty_run(&env, 2000, 3).await?;
    let path = format!("/v1/runs/{run}/events");
    let client = client();

    // Read some, drop the connection mid-run, twice, then read to the end.
    let mut received = read_sse(&client, &api, &path, None, Some(500)).await?;
    let (_, state) = opflow_integration::http(&api, "GET", &format!("/v1/runs/{run}"), None, None).await?;
    assert_ne!(state["status"], "succeeded", "the first connection must be dropped mid-run: {state}");
    for stop_after in [Some(1500), None] {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let last: i64 = received.last().context("an event")?.id.parse()?;
        received.extend(read_sse(&client, &api, &path, Some(last), stop_after).await?);
    }

    let end = received.pop().context("events")?;
    assert_eq!(end.event, "end", "the stream ends with the run's summary");
    assert_eq!(end.data["status"], "succeeded", "{}", end.data);
    let seqs: Vec<i64> = received.iter().map(|r| r.id.parse()).collect::<Result<_, _>>()?;
    let db = env.db().await?;
    let stored: Vec<i64> = sqlx::query_scalar("SELECT seq FROM events WHERE run_id = $1::uuid ORDER BY seq")
        .bind(&run)
        .fetch_all(&db)
        .await?;
    assert!(stored.len() >= 4000, "each step logs, reports progress and succeeds: {} events", stored.len());
    assert_eq!(seqs, stored, "every recorded event once, in order, across the reconnects");
    for r in &received {
        assert_eq!(
            r.data["seq"].as_i64().map(|s| s.to_string()),
            Some(r.id.clone()),
            "id: is the event's seq"
        );
        assert_eq!(r.event, r.data["kind"], "event: is the kind");
    }
    let successes: std::collections::HashSet<u64> = received
        .iter()
        .filter(|r| r.event == "succeeded")
        .map(|r| r.data["step_id"].as_u64().unwrap_or(u64::MAX))
        .collect();
    assert_eq!(successes.len(), 2000, "a success per step");

    // A finished run replays from the store and ends; the figure is for the docs.
    let started = Instant::now();
    let replay = read_sse(&client, &api, &path, None, None).await?;
    let took = started.elapsed();
    assert_eq!(replay.len(), stored.len() + 1);
    println!(
        "replayed {} events through SSE in {:.3}s: {:.0} events/s",
        stored.len(),
        took.as_secs_f64(),
        stored.len() as f64 / took.as_secs_f64()
    );
    // Filtered by kind and resumed by query: only log lines after the 100th event.
    let logs = read_sse(&client, &api, &format!("{path}?kinds=log&after=100"), None, None).await?;
    let expected: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE run_id = $1::uuid AND kind = 'log' AND seq > 100",
    )
    .bind(&run)
    .fetch_one(&db)
    .await?;
    assert_eq!(logs.len() as i64, expected + 1, "log events after 100, then the end");
    assert!(logs[..logs.len() - 1].iter().all(|r| r.event == "log" && r.data["data"]["message"].is_string()));
    Ok(())
}

#[tokio::test]
async fn the_api_lists_runs_and_steps_and_serves_the_openapi_document_kept_in_the_repository()
-> anyhow::Result<()> {
    let env = Env::new("api_lists").await?;
    env.register("noop").await?;
    let (_dispatcher, api) = env.spawn_dispatcher_api(&[]).await?;
    let _worker = env.spawn_worker("noop")?;
    let plan = env.plan_file(
        "p",
        "name: p\nassets:\n  - name: a\n    op: noop@1.1.0\n    sweep: {k: {from: 1, to: 5}}\n",
    )?;
    let mut runs = Vec::new();
    for _ in 0..3 {
        let output = env.opflow_ok(&["run", plan.to_str().context("utf-8")?, "--wait", "--json"]).await?;
        runs.push(parse_summary(&output)?["run_id"].as_str().context("run_id")?.to_owned());
    }
    // Newest first, paged by cursor.
    let (status, page) =
        opflow_integration::http(&api, "GET", "/v1/runs?status=succeeded&limit=2", None, None).await?;
    assert_eq!(status, 200, "{page}");
    let cursor = page["next_cursor"].as_str().context("a second page")?;
    let (_, rest) = opflow_integration::http(
        &api,
        "GET",
        &format!("/v1/runs?status=succeeded&limit=2&cursor={cursor}"),
        None,
        None,
    )
    .await?;
    let listed: Vec<&str> = page["items"]
        .as_array()
        .into_iter()
        .chain(rest["items"].as_array())
        .flatten()
        .filter_map(|r| r["run_id"].as_str())
        .collect();
    let mut newest_first = runs.iter().map(String::as_str).collect::<Vec<_>>();
    newest_first.reverse();
    assert_eq!(listed, newest_first);
    let (status, bad) = opflow_integration::http(&api, "GET", "/v1/runs?status=sideways", None, None).await?;
    assert_eq!(status, 400);
    assert!(bad["error"].as_str().is_some_and(|m| m.contains("sideways")), "{bad}");

    let (status, steps) = opflow_integration::http(
        &api,
        "GET",
        &format!("/v1/runs/{}/steps?asset=a&status=succeeded&limit=3", runs[0]),
        None,
        None,
    )
    .await?;
    assert_eq!(status, 200, "{steps}");
    let items = steps["items"].as_array().context("items")?;
    assert_eq!(items.len(), 3);
    assert!(items.iter().all(|s| s["op"] == "noop@1.1.0" && s["status"] == "succeeded"), "{steps}");
    assert_eq!(steps["next_cursor"], "2");

    // An Idempotency-Key header gives one run for two requests.
    let body = serde_json::json!({ "plan": "name: k\nassets:\n  - name: a\n    op: noop@1.1.0\n" });
    let keyed = |key: &'static str| {
        let (api, body) = (api.clone(), body.clone());
        async move {
            let response = client()
                .post(format!("http://{api}/v1/runs"))
                .header("idempotency-key", key)
                .json(&body)
                .send()
                .await?;
            anyhow::Ok((response.status().as_u16(), response.json::<Value>().await?))
        }
    };
    let (first_status, first) = keyed("nightly-1").await?;
    let (again_status, again) = keyed("nightly-1").await?;
    assert_eq!((first_status, again_status), (201, 200));
    assert_eq!(first["run_id"], again["run_id"]);
    assert_eq!(again["existing"], true);

    let (status, served) = opflow_integration::http(&api, "GET", "/openapi.json", None, None).await?;
    assert_eq!(status, 200);
    let kept: Value = serde_json::from_str(&std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/openapi.json"
    ))?)?;
    assert_eq!(served, kept, "docs/openapi.json is what the dispatcher serves");
    Ok(())
}

/// `opflow watch` on a terminal draws a bar per asset; in a pipe it prints plain lines.
#[tokio::test]
async fn opflow_watch_draws_bars_on_a_terminal_and_plain_lines_in_a_pipe() -> anyhow::Result<()> {
    let env = Env::new("watch").await?;
    env.register("noop").await?;
    let _dispatcher = env.spawn_dispatcher().await?;
    let _worker = env.spawn_worker("noop")?;
    let plan = env.plan_file(
        "watched",
        "name: watched\nassets:\n  - name: prices\n    op: noop@1.1.0\n    sweep: {k: {from: 1, to: 30}}\n    \
         config: {sleep_ms: 100, chatty: true}\n  - name: report\n    op: noop@1.1.0\n    deps: [prices]\n    \
         config: {fail: fatal}\n",
    )?;
    let run = parse_summary(&env.opflow_ok(&["run", plan.to_str().context("utf-8")?, "--json"]).await?)?;
    let run = run["run_id"].as_str().context("run_id")?.to_owned();

    // Under a pseudo-terminal (util-linux `script`), while the run goes on.
    let opflow = opflow_integration::binary("opflow")?;
    let mut terminal = env.command(std::path::Path::new("script"));
    terminal
        .args(["-qfec", &format!("{} watch {run}", opflow.display()), "/dev/null"])
        .env("TERM", "xterm-256color")
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let shown = tokio::time::timeout(DEADLINE, terminal.output()).await.context("opflow watch hung")??;
    let screen = String::from_utf8_lossy(&shown.stdout);
    assert_eq!(shown.status.code(), Some(1), "the run fails (report fails), so watch exits 1:\n{screen}");
    for part in [
        "prices",
        "report",
        "/30",
        "ETA",
        "█",
        "halfway",
        "✗ report step 30 attempt 1 failed: failing as configured",
    ] {
        assert!(screen.contains(part), "`{part}` missing from the terminal view:\n{screen}");
    }
    assert!(screen.contains('\u{1b}'), "a terminal view redraws with escape codes:\n{screen}");

    // In a pipe: plain lines, no escape codes, and the same facts.
    let piped = env.opflow(&["watch", &run]).await?;
    let text = String::from_utf8_lossy(&piped.stdout);
    assert_eq!(piped.status.code(), Some(1), "{}", stderr(&piped));
    assert!(!text.contains('\u{1b}'), "no escape codes in a pipe:\n{text}");
    for part in
        ["following run", "done prices 30/30", "✗ report step 30 attempt 1 failed", "run ", ": failed"]
    {
        assert!(text.contains(part), "`{part}` missing from the plain view:\n{text}");
    }

    // --json: one event per line, then the run's state.
    let json = env.opflow(&["watch", &run, "--json"]).await?;
    let lines: Vec<Value> =
        String::from_utf8_lossy(&json.stdout).lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    let (last, events) = lines.split_last().context("lines")?;
    assert_eq!(last["status"], "failed");
    assert!(events.len() >= 31 && events.iter().all(|e| e["seq"].is_i64() && e["kind"].is_string()));

    // `opflow logs` prints the ops' log lines; `opflow events --kinds` filters.
    let logs = env.opflow_ok(&["logs", &run]).await?;
    let logs = String::from_utf8_lossy(&logs.stdout);
    assert_eq!(logs.lines().filter(|l| l.contains("working on attempt 1")).count(), 30, "{logs}");
    let failed = env.opflow_ok(&["events", &run, "--kinds", "failed"]).await?;
    assert_eq!(String::from_utf8_lossy(&failed.stdout).lines().count(), 1);
    Ok(())
}

/// A run of many assets is followed in pages: `run --wait` in a pipe shows the busiest
/// assets and sums up the rest, and exits as the run ended; the asset list pages in plan
/// order and filters by state; steps and outputs of an unknown asset are a 404.
#[tokio::test]
async fn a_run_of_many_assets_is_followed_in_pages_with_the_rest_summed_up() -> anyhow::Result<()> {
    let env = Env::new("many_assets").await?;
    env.register("noop").await?;
    let (_dispatcher, api) = env.spawn_dispatcher_api(&[]).await?;
    let _workers = [env.spawn_worker("noop")?, env.spawn_worker("noop")?];
    // A chain of 120 assets of 3 steps each beside 30 independent assets: 390 steps.
    let mut plan = String::from("name: many\nassets:\n");
    for i in 1..=120 {
        plan.push_str(&format!(
            "  - name: c{i:03}\n    op: noop@1.1.0\n    sweep: {{k: {{from: 1, to: 3}}}}\n"
        ));
        if i > 1 {
            plan.push_str(&format!("    deps: [c{:03}]\n", i - 1));
        }
    }
    for i in 1..=30 {
        plan.push_str(&format!("  - name: w{i:02}\n    op: noop@1.1.0\n"));
    }
    let plan = env.plan_file("many", &plan)?;
    let output = env.opflow(&["run", plan.to_str().context("utf-8")?, "--wait"]).await?;
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{text}\n{}", stderr(&output));
    assert!(text.contains("150 assets"), "the first line names the run's size:\n{text}");
    assert!(text.contains("more assets: ") || text.contains("… and 150 assets: "), "{text}");
    assert!(text.contains("390/390 steps"), "the last frame counts every step:\n{text}");
    assert!(text.contains(": succeeded"), "{text}");
    let run = text
        .lines()
        .find_map(|l| l.strip_prefix("following run "))
        .and_then(|l| l.split_whitespace().next())
        .context("the run id")?
        .to_owned();

    // The asset list: paged in plan order, with each asset's counts.
    let (status, page) =
        opflow_integration::http(&api, "GET", &format!("/v1/runs/{run}/assets?limit=100"), None, None)
            .await?;
    assert_eq!(status, 200, "{page}");
    let items = page["items"].as_array().context("items")?;
    assert_eq!(items.len(), 100);
    assert_eq!((items[0]["name"].as_str(), items[0]["index"].as_u64()), (Some("c001"), Some(0)));
    assert_eq!(items[0]["counts"]["succeeded"], 3, "{}", items[0]);
    assert_eq!(items[0]["state"], "done");
    assert_eq!(items[0]["leaf"], false);
    assert_eq!(page["next_cursor"], "99");
    let (_, rest) = opflow_integration::http(
        &api,
        "GET",
        &format!("/v1/runs/{run}/assets?limit=100&cursor=99"),
        None,
        None,
    )
    .await?;
    let rest = rest["items"].as_array().context("items")?;
    assert_eq!(rest.len(), 50);
    assert!(rest.iter().all(|a| a["state"] == "done"), "every asset ended");
    let leaves: Vec<&str> =
        rest.iter().filter(|a| a["leaf"] == true).filter_map(|a| a["name"].as_str()).collect();
    assert_eq!(leaves.len(), 31, "c120 and the 30 independent assets: {leaves:?}");
    let (_, waiting) =
        opflow_integration::http(&api, "GET", &format!("/v1/runs/{run}/assets?state=waiting"), None, None)
            .await?;
    assert_eq!(waiting["items"].as_array().map(Vec::len), Some(0));
    let (status, busiest) = opflow_integration::http(
        &api,
        "GET",
        &format!("/v1/runs/{run}/assets?order=busiest&cursor=3"),
        None,
        None,
    )
    .await?;
    assert_eq!(status, 400, "busiest is one page: {busiest}");

    // The summary counts assets by state; an unknown asset is named in a 404.
    let (_, summary) = opflow_integration::http(&api, "GET", &format!("/v1/runs/{run}"), None, None).await?;
    assert_eq!(summary["assets"]["total"], 150);
    assert_eq!(summary["assets"]["done"], 150);
    assert!(summary["last_event"].as_i64().is_some_and(|n| n >= 390), "{summary}");
    for list in ["steps", "outputs"] {
        let (status, missing) =
            opflow_integration::http(&api, "GET", &format!("/v1/runs/{run}/{list}?asset=nope"), None, None)
                .await?;
        assert_eq!(status, 404, "{missing}");
        assert!(missing["error"].as_str().is_some_and(|m| m.contains("no asset `nope`")), "{missing}");
    }
    // A long name is quoted back cut, not whole.
    let long = "x".repeat(6_000);
    let (status, missing) =
        opflow_integration::http(&api, "GET", &format!("/v1/runs/{run}/steps?asset={long}"), None, None)
            .await?;
    assert_eq!(status, 404);
    assert!(
        missing["error"].as_str().is_some_and(|m| m.len() < 2_000),
        "{} bytes",
        missing.to_string().len()
    );
    let (_, outputs) =
        opflow_integration::http(&api, "GET", &format!("/v1/runs/{run}/outputs?asset=c120"), None, None)
            .await?;
    let labels: Vec<&str> =
        outputs["items"].as_array().into_iter().flatten().filter_map(|o| o["label"].as_str()).collect();
    assert_eq!(labels, ["c120{k=1}", "c120{k=2}", "c120{k=3}"]);
    Ok(())
}
