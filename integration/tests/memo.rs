//! Memoized steps: a ready step whose memo key (op and version, effective config, the
//! output digests of what it reads) matches an earlier materialization is satisfied from
//! it instead of run. Counted from the run store: which successes came from workers, and
//! which from the catalog.

use std::time::Instant;

use anyhow::Context;
use opflow_integration::{Env, parse_summary};
use serde_json::Value;
use sqlx::PgPool;

async fn run_to_end(env: &Env, name: &str, yaml: &str, extra: &[&str]) -> anyhow::Result<Value> {
    let plan = env.plan_file(name, yaml)?;
    let mut args = vec!["run", plan.to_str().context("utf-8")?, "--wait", "--json"];
    args.extend_from_slice(extra);
    let summary = parse_summary(&env.opflow(&args).await?)?;
    assert_eq!(summary["status"], "succeeded", "{summary}");
    Ok(summary)
}

/// (steps a worker ran, steps satisfied from the catalog) of a run, from its applied results.
async fn executed_and_reused(db: &PgPool, run: &Value) -> anyhow::Result<(i64, i64)> {
    let run = run["run_id"].as_str().context("run_id")?;
    Ok(sqlx::query_as(
        "SELECT count(*) FILTER (WHERE worker <> 'dispatcher (reused)'),
                count(*) FILTER (WHERE worker = 'dispatcher (reused)')
         FROM events WHERE run_id = $1::uuid AND kind = 'succeeded' AND applied",
    )
    .bind(run)
    .fetch_one(db)
    .await?)
}

fn sweep(points: u32) -> String {
    format!(
        "name: memo-sweep\nassets:\n  - name: paths\n    op: noop@1.1.0\n    sweep: {{seed: {{from: 1, to: {points}}}}}\n"
    )
}

#[tokio::test]
async fn a_wider_sweep_runs_only_its_new_points() -> anyhow::Result<()> {
    let mut env = Env::new("memo_sweep").await?;
    env.register("noop").await?;
    let _dispatcher = env.spawn_dispatcher().await?;
    let _workers = (env.spawn_worker("noop")?, env.spawn_worker("noop")?);
    let db = env.db().await?;

    let first = run_to_end(&env, "sweep", &sweep(10_000), &[]).await?;
    assert_eq!(executed_and_reused(&db, &first).await?, (10_000, 0));

    let started = Instant::now();
    let second = run_to_end(&env, "sweep", &sweep(10_100), &[]).await?;
    let took = started.elapsed();
    assert_eq!(executed_and_reused(&db, &second).await?, (100, 10_000), "only the 100 new points run");
    assert_eq!(second["steps"]["reused"], 10_000, "{second}");
    assert_eq!(second["steps"]["succeeded"], 10_100, "{second}");
    // How long the reuse decision took, by the store's clock: from the run's creation to
    // the last reused step's end.
    let decided: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM max(s.finished_at) - r.created_at)::float8
         FROM runs r JOIN steps s ON s.run_id = r.id
         JOIN events e ON e.run_id = s.run_id AND e.step_id = s.id AND e.kind = 'succeeded' AND e.applied
         WHERE r.id = $1::uuid AND e.worker = 'dispatcher (reused)' GROUP BY r.created_at",
    )
    .bind(second["run_id"].as_str().context("run_id")?)
    .fetch_one(&db)
    .await?;
    eprintln!(
        "10,000 steps reused in {decided:.3} s after the run was stored (run ended {:.3} s after submit)",
        took.as_secs_f64()
    );

    // A reused step's outputs are the earlier ones, and its catalog entry points at them.
    let reused_from: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM materializations m JOIN materializations o ON o.id = m.reused_from
         WHERE m.run_id = $1::uuid AND o.run_id = $2::uuid AND o.memo_key = m.memo_key",
    )
    .bind(second["run_id"].as_str().context("run_id")?)
    .bind(first["run_id"].as_str().context("run_id")?)
    .fetch_one(&db)
    .await?;
    assert_eq!(reused_from, 10_000);
    let outputs: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM steps a JOIN steps b ON b.id = a.id
         WHERE a.run_id = $1::uuid AND b.run_id = $2::uuid AND a.output = b.output",
    )
    .bind(first["run_id"].as_str().context("run_id")?)
    .bind(second["run_id"].as_str().context("run_id")?)
    .fetch_one(&db)
    .await?;
    assert_eq!(outputs, 10_000, "the reused steps hand on the outputs they reuse");

    // Counted in /metrics: every reuse once, and each step that ran missed at least once.
    let (status, metrics) =
        opflow_integration::http_text(&env.api_addr, "GET", "/metrics", None, None).await?;
    assert_eq!(status, 200);
    let counter = |result: &str| -> u64 {
        let name = format!("opflow_catalog_lookups_total{{result=\"{result}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&name)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    };
    assert_eq!(counter("reused"), 10_000, "{metrics}");
    assert!(counter("missed") >= 10_100, "{metrics}");
    assert_eq!(counter("unkeyable"), 0, "{metrics}");

    // --no-reuse runs every step again.
    let forced = run_to_end(&env, "sweep", &sweep(100), &["--no-reuse"]).await?;
    assert_eq!(executed_and_reused(&db, &forced).await?, (100, 0));
    Ok(())
}

fn chain(up_config: &str, down_reuse: &str) -> String {
    format!(
        "name: memo-chain
assets:
  - name: up
    op: noop@1.1.0
    partitions: [a, b, c]
    config: {up_config}
  - name: down
    op: noop@1.1.0
    deps: [up]
    partitions: [a, b, c]
    reuse: {down_reuse}
"
    )
}

#[tokio::test]
async fn a_rerun_with_the_same_output_recomputes_nothing_downstream() -> anyhow::Result<()> {
    let mut env = Env::new("memo_cutoff").await?;
    env.register("noop").await?;
    let _dispatcher = env.spawn_dispatcher().await?;
    let _worker = env.spawn_worker("noop")?;
    let db = env.db().await?;

    let first = run_to_end(&env, "chain", &chain("{echo: {v: 1}}", "auto"), &[]).await?;
    assert_eq!(executed_and_reused(&db, &first).await?, (6, 0));

    // The same plan: nothing runs.
    let same = run_to_end(&env, "chain", &chain("{echo: {v: 1}}", "auto"), &[]).await?;
    assert_eq!(executed_and_reused(&db, &same).await?, (0, 6));

    // `up` runs again (its config changed) and produces the same outputs: `down` is reused
    // (early cutoff).
    let cutoff = run_to_end(&env, "chain", &chain("{echo: {v: 1}, sleep_ms: 1}", "auto"), &[]).await?;
    assert_eq!(executed_and_reused(&db, &cutoff).await?, (3, 3), "up ran, down was reused");

    // `up` produces other outputs: exactly its downstream is recomputed.
    let changed = run_to_end(&env, "chain", &chain("{echo: {v: 2}}", "auto"), &[]).await?;
    assert_eq!(executed_and_reused(&db, &changed).await?, (6, 0));

    // `reuse: never` runs the asset every time; the rest may still be reused.
    let never = run_to_end(&env, "chain", &chain("{echo: {v: 2}}", "never"), &[]).await?;
    assert_eq!(executed_and_reused(&db, &never).await?, (3, 3), "up reused, down run");

    // The catalog tells the reused cells apart and points them at what they reused.
    let history =
        env.opflow_ok(&["assets", "show", "down", "--partition", "a", "--history", "--json"]).await?;
    let history: Value = serde_json::from_slice(&history.stdout)?;
    let history = history.as_array().context("a list")?;
    assert_eq!(history.len(), 5, "one per run: {history:?}");
    // Newest first: never (ran), changed (ran), cutoff (reused), same (reused), first (ran).
    let reused: Vec<bool> = history.iter().map(|m| m["reused_from"].is_i64()).collect();
    assert_eq!(reused, [false, false, true, true, false], "{history:?}");
    Ok(())
}

/// 100 runs submitted at once, each asking for the same step: it runs once, and the other
/// 99 wait for it and reuse what it made.
#[tokio::test]
async fn identical_steps_in_flight_at_once_execute_once() -> anyhow::Result<()> {
    let mut env = Env::new("memo_identical").await?;
    env.register("noop").await?;
    let (_dispatcher, api) = env.spawn_dispatcher_api(&[]).await?;
    let _workers = (env.spawn_worker("noop")?, env.spawn_worker("noop")?, env.spawn_worker("noop")?);
    let db = env.db().await?;
    // Slow enough that every run is stored while the first one's step still runs.
    let plan = "name: identical\nassets:\n  - name: slow\n    op: noop@1.1.0\n    config: {sleep_ms: 3000, echo: 7}\n";
    let submits = (0..100).map(|_| {
        let api = api.clone();
        async move {
            let (status, body) = opflow_integration::http(
                &api,
                "POST",
                "/v1/runs",
                None,
                Some(&serde_json::json!({ "plan": plan })),
            )
            .await?;
            anyhow::ensure!(status == 201, "submit answered {status}: {body}");
            anyhow::Ok(body["run_id"].as_str().context("run_id")?.to_owned())
        }
    });
    let runs: Vec<String> = futures_util::future::try_join_all(submits).await?;
    assert_eq!(runs.len(), 100);
    opflow_integration::wait_for("100 runs to succeed", std::time::Duration::from_secs(120), || async {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM runs WHERE plan_name = 'identical' AND status = 'succeeded'",
        )
        .fetch_one(&db)
        .await?;
        Ok((done == 100).then_some(()))
    })
    .await?;
    let (executed, reused): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE worker <> 'dispatcher (reused)'),
                count(*) FILTER (WHERE worker = 'dispatcher (reused)')
         FROM events WHERE kind = 'succeeded' AND applied",
    )
    .fetch_one(&db)
    .await?;
    assert_eq!((executed, reused), (1, 99), "the step ran once; 99 runs reused it");
    Ok(())
}

fn versions_plan(version: &str, echo: u32) -> String {
    format!(
        "name: versions
assets:
  - name: a
    op: noop@{version}
    partitions: [x, y, z]
    config: {{echo: {echo}}}
  - name: b
    op: noop@{version}
    deps: [a]
    partitions: [x, y, z]
"
    )
}

/// A release that declares itself compatible with earlier versions (`reuse_from: ^1.0`)
/// reuses what they made; without the declaration, the op version is part of the key and
/// it runs.
#[tokio::test]
async fn a_release_declared_compatible_reuses_what_earlier_versions_made() -> anyhow::Result<()> {
    let mut env = Env::new("memo_reuse_from").await?;
    env.register("noop@1.0.0").await?;
    env.register("noop").await?;
    let _dispatcher = env.spawn_dispatcher().await?;
    let _workers = (env.spawn_worker("noop@1.0.0")?, env.spawn_worker("noop")?);
    let db = env.db().await?;

    let old = run_to_end(&env, "v1", &versions_plan("1.0.0", 1), &[]).await?;
    assert_eq!(executed_and_reused(&db, &old).await?, (6, 0));
    let new = run_to_end(&env, "v2", &versions_plan("1.1.0", 1), &[]).await?;
    assert_eq!(executed_and_reused(&db, &new).await?, (6, 0), "another op version is another key");

    // The same build of 1.1.0, registered again as compatible with ^1.0.
    let noop = opflow_integration::binary("noop")?;
    let output = env
        .command(&opflow_integration::binary("opflow")?)
        .args(["ops", "add", noop.to_str().context("utf-8")?])
        .env("NOOP_REUSE_FROM", "^1.0")
        .output()
        .await?;
    assert!(output.status.success(), "{}", opflow_integration::stderr(&output));
    let old = run_to_end(&env, "v1", &versions_plan("1.0.0", 2), &[]).await?;
    assert_eq!(executed_and_reused(&db, &old).await?, (6, 0));
    // A backfill counts the compatible version's cells as current.
    let plan = env.plan_file("v2", &versions_plan("1.1.0", 2))?;
    let check =
        env.opflow_ok(&["plan", "check", plan.to_str().context("utf-8")?, "--missing", "--json"]).await?;
    let check: Value = serde_json::from_slice(&check.stdout)?;
    assert_eq!(check["runs"], 0, "{check}");
    let new = run_to_end(&env, "v2", &versions_plan("1.1.0", 2), &[]).await?;
    assert_eq!(executed_and_reused(&db, &new).await?, (0, 6), "1.1.0 reused what 1.0.0 made");

    // A bad requirement is refused at registration.
    let output = env
        .command(&opflow_integration::binary("opflow")?)
        .args(["ops", "add", noop.to_str().context("utf-8")?])
        .env("NOOP_REUSE_FROM", "one point oh")
        .output()
        .await?;
    assert!(!output.status.success());
    assert!(
        opflow_integration::stderr(&output).contains("not a semver requirement"),
        "{}",
        opflow_integration::stderr(&output)
    );
    Ok(())
}
