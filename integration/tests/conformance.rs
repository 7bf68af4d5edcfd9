//! The op contract, run against both SDKs from the same test code: the Rust `noop`
//! (remote-ops/noop, on the Rust SDK in worker/) and the Python `noop-py` (remote-ops/noop-py,
//! on the Python SDK in sdk/python/). Both take the same parameters, so each scenario is one
//! function of the SDK; `conformance::rust::*` and `conformance::python::*` run every one
//! (docs/protocol.md is the contract they follow).

use std::{path::Path, time::Duration};

use anyhow::Context;
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use opflow_integration::{Env, parse_summary, sigkill, sigterm, stderr, wait_for};
use opflow_protocol::queue;
use serde_json::{Value, json};
use sqlx::PgPool;

/// Only turns a hang into a failure.
const DEADLINE: Duration = Duration::from_secs(120);

/// The SDK a scenario runs against, through its noop op.
#[derive(Debug, Clone, Copy)]
enum Sdk {
    Rust,
    Python,
}

impl Sdk {
    /// The noop op's command (a workspace binary or a Python op's script) and name.
    fn op(self) -> &'static str {
        match self {
            Sdk::Rust => "noop",
            Sdk::Python => "noop-py",
        }
    }

    fn queue(self) -> String {
        format!("opflow.op.{}.1.1.0", self.op())
    }

    /// A plan whose assets are written with `{op}` for the noop op's name.
    fn plan(self, env: &Env, name: &str, assets: &str) -> anyhow::Result<String> {
        let yaml = format!("name: {name}\nassets:\n{}", assets.replace("{op}", self.op()));
        Ok(env.plan_file(name, &yaml)?.to_str().context("utf-8 path")?.to_owned())
    }

    fn test(self, name: &str) -> String {
        format!("{}_{}", name, self.op().replace('-', "_"))
    }
}

/// Registers the SDK's noop, starts a dispatcher with `vars` and one worker.
async fn setup(
    sdk: Sdk,
    name: &str,
    vars: &[(&str, &str)],
) -> anyhow::Result<(Env, opflow_integration::Service, tokio::process::Child)> {
    let env = Env::new(&sdk.test(name)).await?;
    env.register(sdk.op()).await?;
    let dispatcher = env.spawn_dispatcher_with(vars).await?;
    let worker = env.spawn_worker(sdk.op())?;
    Ok((env, dispatcher, worker))
}

async fn run_wait(env: &Env, plan: &str) -> anyhow::Result<(Value, String)> {
    let output = env.opflow(&["run", plan, "--wait", "--json"]).await?;
    let summary = parse_summary(&output).with_context(|| stderr(&output))?;
    let run_id = summary["run_id"].as_str().context("run_id")?.to_owned();
    Ok((summary, run_id))
}

async fn submit(env: &Env, plan: &str) -> anyhow::Result<String> {
    let summary = parse_summary(&env.opflow_ok(&["run", plan, "--json"]).await?)?;
    Ok(summary["run_id"].as_str().context("run_id")?.to_owned())
}

/// `(asset, status, attempt, error, output)` of each step, by asset and step id.
async fn steps(
    db: &PgPool,
    run_id: &str,
) -> anyhow::Result<Vec<(String, String, i32, Option<String>, Option<Value>)>> {
    Ok(sqlx::query_as(
        "SELECT a.name, s.status::text, s.attempt, s.error, s.output FROM steps s
         JOIN run_assets a ON a.run_id = s.run_id AND a.idx = s.asset
         WHERE s.run_id = $1::uuid ORDER BY a.name, s.id",
    )
    .bind(run_id)
    .fetch_all(db)
    .await?)
}

async fn events_of(db: &PgPool, run_id: &str, kind: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM events WHERE run_id = $1::uuid AND kind = $2")
        .bind(run_id)
        .bind(kind)
        .fetch_one(db)
        .await?)
}

async fn wait_running(db: &PgPool, run_id: &str) -> anyhow::Result<()> {
    wait_for("a step to be running", DEADLINE, || async {
        let running: i64 =
            sqlx::query_scalar("SELECT count(*) FROM steps WHERE run_id = $1::uuid AND status = 'running'")
                .bind(run_id)
                .fetch_one(db)
                .await?;
        Ok((running > 0).then_some(()))
    })
    .await
}

/// Outputs reach downstream steps; materializations and check results reach the catalog.
async fn succeeds_with_outputs_materializations_and_checks(sdk: Sdk) -> anyhow::Result<()> {
    let (mut env, _dispatcher, _worker) = setup(sdk, "outputs", &[]).await?;
    let plan = sdk.plan(
        &env,
        "outputs",
        "  - name: a\n    op: \"{op}@^1\"\n    partitions: [p1, p2]\n    \
         config: {echo: {answer: 42}, materialize: {rows: 7}, check: non_empty}\n    checks: [{name: non_empty}]\n  \
         - name: b\n    op: \"{op}@^1\"\n    deps: [a]\n",
    )?;
    let (summary, run_id) = run_wait(&env, &plan).await?;
    assert_eq!(summary["status"], "succeeded", "{summary}");
    let db = env.db().await?;
    let steps = steps(&db, &run_id).await?;
    assert_eq!(steps.len(), 3);
    for (asset, status, attempt, _, output) in &steps {
        assert_eq!((status.as_str(), *attempt), ("succeeded", 1), "{asset}");
        let output = output.as_ref().context("an output")?;
        assert_eq!(output["op_version"], "1.1.0", "{output}");
        if asset == "a" {
            assert_eq!(output["echo"], json!({"answer": 42}), "{output}");
        } else {
            assert_eq!(output["inputs"], 2, "b fans in both partitions of a: {output}");
        }
    }
    assert_eq!(events_of(&db, &run_id, "materialized").await?, 2);
    let checks: Vec<(String, bool)> =
        sqlx::query_as("SELECT partition, passed FROM catalog_checks WHERE asset = 'a' ORDER BY partition")
            .fetch_all(&db)
            .await?;
    assert_eq!(checks, [("p1".to_owned(), true), ("p2".to_owned(), true)]);
    let materialized: Value = sqlx::query_scalar(
        "SELECT body FROM events WHERE run_id = $1::uuid AND kind = 'materialized' LIMIT 1",
    )
    .bind(&run_id)
    .fetch_one(&db)
    .await?;
    assert_eq!(materialized["materialized"]["metadata"], json!({"rows": 7}), "{materialized}");
    Ok(())
}

/// Retryable failures are retried by the dispatcher, fatal ones (and a crashing handler, and
/// parameters that do not fit the op's config) fail for good on their first attempt.
async fn failures_are_retryable_or_fatal(sdk: Sdk) -> anyhow::Result<()> {
    let (mut env, _dispatcher, _worker) = setup(sdk, "failures", &[]).await?;
    let plan = sdk.plan(
        &env,
        "failures",
        "  - name: flaky\n    op: \"{op}@^1\"\n    config: {fail_until_attempt: 3}\n    retry: {max: 2, backoff: 10ms}\n  \
         - name: fatal\n    op: \"{op}@^1\"\n    config: {fail: fatal}\n    retry: {max: 3, backoff: 10ms}\n  \
         - name: panics\n    op: \"{op}@^1\"\n    config: {fail: panic}\n    retry: {max: 3, backoff: 10ms}\n  \
         - name: bad_config\n    op: \"{op}@^1\"\n    config: {sleep_ms: soon}\n    retry: {max: 3, backoff: 10ms}\n  \
         - name: exhausted\n    op: \"{op}@^1\"\n    config: {fail: retryable}\n    retry: {max: 1, backoff: 10ms}\n",
    )?;
    let (summary, run_id) = run_wait(&env, &plan).await?;
    assert_eq!(summary["status"], "failed", "{summary}");
    let db = env.db().await?;
    let steps = steps(&db, &run_id).await?;
    let step = |name: &str| steps.iter().find(|s| s.0 == name).cloned().context("step");
    let flaky = step("flaky")?;
    assert_eq!((flaky.1.as_str(), flaky.2), ("succeeded", 3), "two failed attempts, then success");
    for (name, needle) in [
        ("fatal", "failing as configured (fail: fatal)"),
        ("panics", "panicking as configured (fail: panic)"),
        ("bad_config", "invalid parameters"),
    ] {
        let (_, status, attempt, error, _) = step(name)?;
        let error = error.unwrap_or_default();
        assert_eq!((status.as_str(), attempt), ("failed", 1), "{name}: {error}");
        assert!(error.contains("not retryable") && error.contains(needle), "{name}: {error}");
    }
    let (_, status, attempt, error, _) = step("exhausted")?;
    assert_eq!((status.as_str(), attempt), ("failed", 2));
    assert!(error.unwrap_or_default().contains("failed after 2 attempts"));
    Ok(())
}

/// A step over its timeout is told to stop, fails retryably, and is retried.
async fn a_timeout_stops_the_step_and_fails_it_retryably(sdk: Sdk) -> anyhow::Result<()> {
    let (mut env, _dispatcher, mut worker) = setup(sdk, "timeout", &[]).await?;
    let plan = sdk.plan(
        &env,
        "timeout",
        "  - name: slow\n    op: \"{op}@^1\"\n    config: {sleep_ms: 60000}\n    timeout: 1s\n    \
         retry: {max: 1, backoff: 10ms}\n",
    )?;
    let (summary, run_id) = run_wait(&env, &plan).await?;
    assert_eq!(summary["status"], "failed", "{summary}");
    let db = env.db().await?;
    let (_, _, attempt, error, _) = steps(&db, &run_id).await?.remove(0);
    let error = error.unwrap_or_default();
    assert_eq!(attempt, 2, "timed out, retried once, timed out again: {error}");
    assert!(error.contains("failed after 2 attempts") && error.contains("timed out after 1s"), "{error}");
    assert!(!error.contains("did not stop"), "the sleeping handler stops when told: {error}");
    assert!(worker.try_wait()?.is_none(), "a handler that stopped leaves its worker running");
    Ok(())
}

/// A handler that ignores the request to stop is not waited for past the stop grace: the
/// step is reported and acked, and the worker exits 0 to stop it.
async fn a_handler_that_will_not_stop_ends_its_worker(sdk: Sdk) -> anyhow::Result<()> {
    let env = Env::new(&sdk.test("unstoppable")).await?;
    env.register(sdk.op()).await?;
    let _dispatcher = env.spawn_dispatcher().await?;
    let mut worker =
        env.command(&opflow_integration::binary(sdk.op())?).env("OPFLOW_STOP_GRACE", "1s").spawn()?;
    let plan = sdk.plan(
        &env,
        "unstoppable",
        "  - name: spin\n    op: \"{op}@^1\"\n    config: {burn_ms: 8000}\n    timeout: 500ms\n    retry: {max: 0}\n",
    )?;
    let run_id = submit(&env, &plan).await?;
    let status = tokio::time::timeout(DEADLINE, worker.wait()).await??;
    assert_eq!(status.code(), Some(0), "the worker exits 0 once the step is reported");
    let mut env = env;
    let db = env.db().await?;
    let error = wait_for("the step to fail", DEADLINE, || async {
        let (_, status, _, error, _) = steps(&db, &run_id).await?.remove(0);
        Ok((status == "failed").then_some(error.unwrap_or_default()))
    })
    .await?;
    assert!(error.contains("timed out after 500ms") && error.contains("did not stop within 1s"), "{error}");
    assert_eq!(env.queue_depth(&sdk.queue()).await?, 0, "the step's message was acked, not requeued");
    Ok(())
}

/// Cancelling a run stops its running step (reported at once) and the worker carries on.
async fn cancel_stops_a_running_step(sdk: Sdk) -> anyhow::Result<()> {
    let (mut env, _dispatcher, mut worker) = setup(sdk, "cancel", &[]).await?;
    let plan =
        sdk.plan(&env, "cancel", "  - name: slow\n    op: \"{op}@^1\"\n    config: {sleep_ms: 60000}\n")?;
    let run_id = submit(&env, &plan).await?;
    let db = env.db().await?;
    wait_running(&db, &run_id).await?;
    let output = env.opflow(&["cancel", &run_id, "--json"]).await?;
    assert!(output.status.success(), "{}", stderr(&output));
    wait_for("the running step to be reported stopped", DEADLINE, || async {
        let stopped =
            opflow_integration::failed_events_containing(&db, &run_id, "canceled while this step ran")
                .await?;
        Ok((stopped == 1).then_some(()))
    })
    .await?;
    let status: String = sqlx::query_scalar("SELECT status::text FROM runs WHERE id = $1::uuid")
        .bind(&run_id)
        .fetch_one(&db)
        .await?;
    assert_eq!(status, "canceled");
    assert!(worker.try_wait()?.is_none(), "the worker carries on after a cancel");
    // A queued step of a canceled run never starts either: the worker already knows.
    let quick = sdk.plan(&env, "after", "  - name: a\n    op: \"{op}@^1\"\n")?;
    let (summary, _) = run_wait(&env, &quick).await?;
    assert_eq!(summary["status"], "succeeded", "{summary}");
    Ok(())
}

/// Progress and log lines reach the run (`opflow logs`, the events).
async fn progress_and_logs_reach_the_run(sdk: Sdk) -> anyhow::Result<()> {
    let (mut env, _dispatcher, _worker) = setup(sdk, "telemetry", &[]).await?;
    let plan = sdk.plan(
        &env,
        "telemetry",
        "  - name: a\n    op: \"{op}@^1\"\n    config: {chatty: true, log_lines: 3, log_line_bytes: 20000}\n",
    )?;
    let (summary, run_id) = run_wait(&env, &plan).await?;
    assert_eq!(summary["status"], "succeeded", "{summary}");
    let db = env.db().await?;
    assert_eq!(events_of(&db, &run_id, "log").await?, 4);
    assert_eq!(events_of(&db, &run_id, "progress").await?, 1);
    let logs = env.opflow_ok(&["logs", &run_id]).await?;
    let text = String::from_utf8_lossy(&logs.stdout);
    assert!(text.contains("working on attempt 1"), "{text}");
    // A 20,000-byte line is cut by the SDK to 16 KiB, saying so.
    assert!(text.contains("(cut from 20000 bytes)"), "{text}");
    let progress: Value =
        sqlx::query_scalar("SELECT body FROM events WHERE run_id = $1::uuid AND kind = 'progress'")
            .bind(&run_id)
            .fetch_one(&db)
            .await?;
    assert_eq!(progress["progress"], json!({"fraction": 0.5, "message": "halfway"}), "{progress}");
    Ok(())
}

/// A step running longer than `lost_step_after` is kept alive by its heartbeats.
async fn heartbeats_keep_a_long_step_alive(sdk: Sdk) -> anyhow::Result<()> {
    // The harness's workers beat every second; a step silent for 3 s is lost.
    let (mut env, _dispatcher, _worker) =
        setup(sdk, "heartbeats", &[("OPFLOW_LOST_STEP_AFTER_SECS", "3")]).await?;
    let plan = sdk.plan(&env, "long", "  - name: a\n    op: \"{op}@^1\"\n    config: {sleep_ms: 8000}\n")?;
    let (summary, run_id) = run_wait(&env, &plan).await?;
    assert_eq!(summary["status"], "succeeded", "{summary}");
    let db = env.db().await?;
    let (attempt, heartbeat_at): (i32, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT attempt, heartbeat_at FROM steps WHERE run_id = $1::uuid")
            .bind(&run_id)
            .fetch_one(&db)
            .await?;
    assert_eq!(attempt, 1, "never taken for lost");
    assert!(heartbeat_at.is_some(), "the step's heartbeats were recorded");
    assert_eq!(events_of(&db, &run_id, "started").await?, 1);
    assert_eq!(events_of(&db, &run_id, "failed").await?, 0);
    Ok(())
}

/// A worker SIGKILLed mid-step loses nothing: the broker redelivers the message (the same
/// attempt) to another worker, and each success is applied once.
async fn sigkill_mid_step_redelivers_and_applies_once(sdk: Sdk) -> anyhow::Result<()> {
    let (mut env, _dispatcher, mut doomed) = setup(sdk, "sigkill", &[]).await?;
    let plan = sdk.plan(
        &env,
        "slow",
        "  - name: slow\n    op: \"{op}@^1\"\n    sweep: {k: [1, 2, 3]}\n    config: {sleep_ms: 1500}\n  \
         - name: after\n    op: \"{op}@^1\"\n    deps: [slow]\n",
    )?;
    let run_id = submit(&env, &plan).await?;
    let db = env.db().await?;
    let killed: i32 = wait_for("a step to start", DEADLINE, || async {
        Ok(sqlx::query_scalar("SELECT id FROM steps WHERE run_id = $1::uuid AND status = 'running'")
            .bind(&run_id)
            .fetch_optional(&db)
            .await?)
    })
    .await?;
    sigkill(&doomed)?;
    doomed.wait().await?;
    let _survivor = env.spawn_worker(sdk.op())?;
    let status = wait_for("the run to finish", DEADLINE, || async {
        let status: String = sqlx::query_scalar("SELECT status::text FROM runs WHERE id = $1::uuid")
            .bind(&run_id)
            .fetch_one(&db)
            .await?;
        Ok((status == "succeeded" || status == "failed").then_some(status))
    })
    .await?;
    assert_eq!(status, "succeeded");
    let (total, succeeded, attempts): (i32, i32, i32) = sqlx::query_as(
        "SELECT steps_total, steps_succeeded, (SELECT max(attempt) FROM steps WHERE run_id = $1::uuid)
         FROM runs WHERE id = $1::uuid",
    )
    .bind(&run_id)
    .fetch_one(&db)
    .await?;
    assert_eq!((total, succeeded), (4, 4), "each success applied once");
    assert_eq!(attempts, 1, "a redelivery is the same attempt");
    let workers: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT worker) FROM events WHERE run_id = $1::uuid AND step_id = $2 AND kind = 'started'",
    )
    .bind(&run_id)
    .bind(killed)
    .fetch_one(&db)
    .await?;
    assert_eq!(workers, 2, "step {killed} was started by both workers");
    // The fan-in step (id 3) started only after every upstream success (ids 0-2). It is
    // quick, so its start is recorded from its result rather than a `started` event.
    let in_order: bool = sqlx::query_scalar(
        "SELECT (SELECT started_at FROM steps WHERE run_id = $1::uuid AND id = 3)
             >= (SELECT max(at) FROM events WHERE run_id = $1::uuid AND kind = 'succeeded' AND step_id < 3)",
    )
    .bind(&run_id)
    .fetch_one(&db)
    .await?;
    assert!(in_order, "the fan-in step started before its upstream steps all succeeded");
    Ok(())
}

/// SIGTERM drains: the step in hand finishes and is reported, then the worker exits 0.
async fn sigterm_finishes_the_step_in_hand(sdk: Sdk) -> anyhow::Result<()> {
    let (mut env, _dispatcher, mut worker) = setup(sdk, "sigterm", &[]).await?;
    let plan = sdk.plan(&env, "one", "  - name: a\n    op: \"{op}@^1\"\n    config: {sleep_ms: 1500}\n")?;
    let run_id = submit(&env, &plan).await?;
    let db = env.db().await?;
    wait_running(&db, &run_id).await?;
    sigterm(&worker)?;
    let status = tokio::time::timeout(DEADLINE, worker.wait()).await??;
    assert!(status.success(), "the worker drains and exits 0, got {status}");
    let (_, status, attempt, _, _) = wait_for("the step's result", DEADLINE, || async {
        let step = steps(&db, &run_id).await?.remove(0);
        Ok((step.1 == "succeeded").then_some(step))
    })
    .await?;
    assert_eq!((status.as_str(), attempt), ("succeeded", 1));
    assert_eq!(env.queue_depth(&sdk.queue()).await?, 0);
    Ok(())
}

/// Messages no worker of the op could run (not JSON, another schema version, another op
/// version) are dead-lettered, never requeued, and the worker goes on.
async fn poison_messages_are_dead_lettered(sdk: Sdk) -> anyhow::Result<()> {
    let env = Env::new(&sdk.test("poison")).await?;
    env.register(sdk.op()).await?;
    let (_dispatcher, dispatcher_log) = env.spawn_dispatcher_logged().await?;
    let worker_log = env.log_file("worker")?;
    let mut worker = env.spawn_worker_logged(sdk.op(), &worker_log)?;
    wait_for("the worker to consume", DEADLINE, || async {
        Ok(std::fs::read_to_string(&worker_log)?.contains("consuming").then_some(()))
    })
    .await?;
    let connection = Connection::connect(&env.amqp_url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let other_op = json!({"v": 1, "run_id": uuid::Uuid::now_v7().to_string(), "step_id": 0, "attempt": 1,
                          "op": format!("{}@9.9.9", sdk.op()), "asset": "a"})
    .to_string();
    for body in ["not json at all".to_owned(), r#"{"v":99,"run_id":"x","step_id":1}"#.to_owned(), other_op] {
        let confirm = channel
            .basic_publish(
                queue::STEP_EXCHANGE.into(),
                sdk.queue().as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default().with_type(queue::STEP_MESSAGE_TYPE.into()).with_delivery_mode(2),
            )
            .await?
            .await?;
        anyhow::ensure!(confirm.is_ack(), "the broker did not take the test's message");
    }
    let _ = connection.close(200, "done".into()).await;
    let count = |path: &Path, needle: &str| -> anyhow::Result<usize> {
        Ok(std::fs::read_to_string(path)?.matches(needle).count())
    };
    wait_for("three dead letters to be dropped", DEADLINE, || async {
        Ok((count(&dispatcher_log, "dropped a dead-lettered message")? >= 3).then_some(()))
    })
    .await
    .with_context(|| std::fs::read_to_string(&worker_log).unwrap_or_default())?;
    assert_eq!(env.queue_depth(&sdk.queue()).await?, 0, "nothing was requeued");
    assert!(worker.try_wait()?.is_none(), "the worker goes on: {}", std::fs::read_to_string(&worker_log)?);
    let plan = sdk.plan(&env, "after", "  - name: a\n    op: \"{op}@^1\"\n")?;
    let (summary, _) = run_wait(&env, &plan).await?;
    assert_eq!(summary["status"], "succeeded", "{summary}");
    Ok(())
}

/// An output over 64 KiB fails the step, not retryably, saying what to do.
async fn outputs_over_the_limit_fail_the_step(sdk: Sdk) -> anyhow::Result<()> {
    let (mut env, _dispatcher, _worker) = setup(sdk, "big_output", &[]).await?;
    let plan = sdk.plan(
        &env,
        "big",
        "  - name: big\n    op: \"{op}@^1\"\n    config: {output_bytes: 70000}\n    retry: {max: 2, backoff: 10ms}\n  \
         - name: fits\n    op: \"{op}@^1\"\n    config: {output_bytes: 60000}\n",
    )?;
    let (summary, run_id) = run_wait(&env, &plan).await?;
    assert_eq!(summary["status"], "failed", "{summary}");
    let db = env.db().await?;
    let steps = steps(&db, &run_id).await?;
    let (_, status, attempt, error, _) = steps[0].clone();
    let error = error.unwrap_or_default();
    assert_eq!((status.as_str(), attempt), ("failed", 1), "{error}");
    assert!(error.contains("over the 64 KiB limit") && error.contains("not retryable"), "{error}");
    assert_eq!(steps[1].1, "succeeded", "an output under the limit is kept");
    Ok(())
}

/// A step running past `--handover-after` is handed over to the run store: its message is
/// acked while it runs (nothing held for the broker's consumer timeout to take back), its
/// heartbeats go on, its result is applied once, and the worker consumes again.
async fn a_long_step_is_handed_over_and_its_worker_consumes_again(sdk: Sdk) -> anyhow::Result<()> {
    let env = Env::new(&sdk.test("handover")).await?;
    env.register(sdk.op()).await?;
    let _dispatcher = env.spawn_dispatcher().await?;
    let _worker =
        env.command(&opflow_integration::binary(sdk.op())?).env("OPFLOW_HANDOVER_AFTER", "1s").spawn()?;
    let plan = sdk.plan(
        &env,
        "long",
        "  - name: long\n    op: \"{op}@^1\"\n    config: {sleep_ms: 5000}\n  \
         - name: after\n    op: \"{op}@^1\"\n    deps: [long]\n",
    )?;
    let (summary, run_id) = run_wait(&env, &plan).await?;
    assert_eq!(summary["status"], "succeeded", "{summary}");
    let mut env = env;
    let db = env.db().await?;
    for (asset, status, attempt, _, _) in steps(&db, &run_id).await? {
        assert_eq!((status.as_str(), attempt), ("succeeded", 1), "{asset}");
    }
    // A handover is a second `started` of the attempt, published with a confirm before the
    // message is acked; the step after it ran on the same worker, consuming again.
    let started: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE run_id = $1::uuid AND step_id = 0 AND kind = 'started'",
    )
    .bind(&run_id)
    .fetch_one(&db)
    .await?;
    assert_eq!(started, 2, "started once at 100 ms, and again at the handover");
    assert_eq!(env.queue_depth(&sdk.queue()).await?, 0);
    Ok(())
}

/// `--max-steps`: the worker exits 0 after its N-th settled step (a supervisor replaces it).
async fn a_worker_recycles_after_max_steps(sdk: Sdk) -> anyhow::Result<()> {
    let env = Env::new(&sdk.test("recycle")).await?;
    env.register(sdk.op()).await?;
    let _dispatcher = env.spawn_dispatcher().await?;
    let mut worker =
        env.command(&opflow_integration::binary(sdk.op())?).env("OPFLOW_MAX_STEPS", "2").spawn()?;
    let plan = sdk.plan(&env, "three", "  - name: a\n    op: \"{op}@^1\"\n    sweep: {k: [1, 2, 3]}\n")?;
    let run_id = submit(&env, &plan).await?;
    let status = tokio::time::timeout(DEADLINE, worker.wait()).await??;
    assert_eq!(status.code(), Some(0), "recycling is a clean exit");
    let mut env = env;
    let db = env.db().await?;
    let succeeded: i32 = sqlx::query_scalar("SELECT steps_succeeded FROM runs WHERE id = $1::uuid")
        .bind(&run_id)
        .fetch_one(&db)
        .await?;
    assert_eq!(succeeded, 2, "exactly two steps before it exited");
    let _replacement = env.spawn_worker(sdk.op())?;
    wait_for("the replacement to run the third step", DEADLINE, || async {
        let succeeded: i32 = sqlx::query_scalar("SELECT steps_succeeded FROM runs WHERE id = $1::uuid")
            .bind(&run_id)
            .fetch_one(&db)
            .await?;
        Ok((succeeded == 3).then_some(()))
    })
    .await?;
    Ok(())
}

/// A Python op registers from a command with arguments (`-- python -m noop_py`) or from the
/// description file it wrote with `--describe`; a file that is not one is refused, saying so.
#[tokio::test]
async fn a_python_op_registers_from_a_command_or_its_description_file() -> anyhow::Result<()> {
    let env = Env::new("py_register").await?;
    let python = opflow_integration::python_ops_dir().context("OPFLOW_PYTHON_OPS is not set")?.join("python");
    let python = python.to_str().context("utf-8 path")?;
    let added = env.opflow_ok(&["ops", "add", "--", python, "-m", "noop_py"]).await?;
    let said = String::from_utf8_lossy(&added.stdout);
    assert!(said.contains("registered noop-py@1.1.0"), "{said}");

    // Another version, described by the op into a file, registered without running it.
    let described = tokio::process::Command::new(opflow_integration::binary("noop-py")?)
        .arg("--describe")
        .env("OPFLOW_OP_VERSION", "1.2.0")
        .output()
        .await?;
    assert!(described.status.success(), "{}", stderr(&described));
    let file = env.log_file("noop-py-1.2.0.json")?;
    std::fs::write(&file, &described.stdout)?;
    let added = env.opflow_ok(&["ops", "add", "--description", file.to_str().context("utf-8 path")?]).await?;
    let said = String::from_utf8_lossy(&added.stdout);
    assert!(said.contains("registered noop-py@1.2.0"), "{said}");
    assert_eq!(env.queue_depth("opflow.op.noop-py.1.2.0").await?, 0, "its queue was declared");

    std::fs::write(&file, "{\"op\": \"noop-py@1.3.0\"}")?;
    let refused = env.opflow(&["ops", "add", "--description", file.to_str().context("utf-8 path")?]).await?;
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("is not an op description"), "{}", stderr(&refused));
    let listed = env.opflow_ok(&["ops", "list"]).await?;
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains("noop-py@1.1.0") && listed.contains("noop-py@1.2.0"), "{listed}");
    assert!(!listed.contains("1.3.0"), "{listed}");
    Ok(())
}

macro_rules! conformance {
    ($($scenario:ident),* $(,)?) => {
        mod rust {
            $(#[tokio::test]
            async fn $scenario() -> anyhow::Result<()> {
                super::$scenario(super::Sdk::Rust).await
            })*
        }
        mod python {
            $(#[tokio::test]
            async fn $scenario() -> anyhow::Result<()> {
                super::$scenario(super::Sdk::Python).await
            })*
        }
    };
}

conformance!(
    succeeds_with_outputs_materializations_and_checks,
    failures_are_retryable_or_fatal,
    a_timeout_stops_the_step_and_fails_it_retryably,
    a_handler_that_will_not_stop_ends_its_worker,
    cancel_stops_a_running_step,
    progress_and_logs_reach_the_run,
    heartbeats_keep_a_long_step_alive,
    sigkill_mid_step_redelivers_and_applies_once,
    sigterm_finishes_the_step_in_hand,
    poison_messages_are_dead_lettered,
    outputs_over_the_limit_fail_the_step,
    a_worker_recycles_after_max_steps,
    a_long_step_is_handed_over_and_its_worker_consumes_again,
);
