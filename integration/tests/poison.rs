//! Poison messages: a step that kills its worker every time is dead-lettered after its
//! queue's delivery limit and failed with a message saying so; malformed messages on the op
//! queue and on the events exchange (not JSON, an unknown schema version, an unknown run)
//! are dead-lettered with their reason logged, and no process crashes.

use std::{path::Path, time::Duration};

use anyhow::Context;
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use opflow_integration::{Env, binary, parse_summary, stderr, wait_for};
use opflow_protocol::{Event, SCHEMA_VERSION, StepMessage, queue};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(120);

#[tokio::test]
async fn a_step_that_crashes_its_worker_is_failed_after_the_delivery_limit() -> anyhow::Result<()> {
    let mut env = Env::new("poison").await?;
    let noop = binary("noop")?;
    env.opflow_ok(&["ops", "add", noop.to_str().context("utf-8")?, "--delivery-limit", "2"]).await?;
    let _dispatcher = env.spawn_dispatcher().await?;
    let worker_log = env.log_file("workers")?;
    let mut worker = env.spawn_worker_logged("noop", &worker_log)?;
    let plan = env.plan_file(
        "poison",
        "name: poison\nassets:\n  - name: poison\n    op: noop@^1\n    config: {fail: crash}\n\
         \x20 - name: fine\n    op: noop@^1\n",
    )?;
    let output = env.opflow_ok(&["run", plan.to_str().context("utf-8")?, "--json"]).await?;
    let run_id = parse_summary(&output)?["run_id"].as_str().context("run_id")?.to_owned();

    // Start a new worker whenever the last one dies, as `opflow up` or Kubernetes would.
    let db = env.db().await?;
    let mut crashes = 0;
    let error: String = wait_for("the poison step to fail", DEADLINE, || {
        let respawn = match worker.try_wait() {
            Ok(Some(_)) => true,
            Ok(None) | Err(_) => false,
        };
        if respawn {
            crashes += 1;
            worker = env.spawn_worker_logged("noop", &worker_log).expect("a worker starts");
        }
        let db = db.clone();
        let run_id = run_id.clone();
        async move {
            Ok(sqlx::query_scalar(
                "SELECT s.error FROM steps s JOIN run_assets a ON a.run_id = s.run_id AND a.idx = s.asset
                 WHERE s.run_id = $1::uuid AND a.name = 'poison' AND s.status = 'failed'",
            )
            .bind(run_id)
            .fetch_optional(&db)
            .await?)
        }
    })
    .await?;
    assert!(error.contains("crashed its worker") && error.contains("dead-lettered"), "{error}");
    assert!(crashes >= 2, "the limit is 2 redeliveries, yet only {crashes} workers crashed");
    let times: u32 = error
        .split("crashed its worker ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("a count of crashes in: {error}"))?;
    assert_eq!(times, 3, "a delivery limit of 2 allows 3 deliveries: {error}");

    // The step that does not crash still ran, and the run ended.
    let summary = wait_for("the run to end", DEADLINE, || async {
        let summary = parse_summary(&env.opflow_ok(&["status", &run_id, "--json"]).await?)?;
        Ok(matches!(summary["status"].as_str(), Some("succeeded" | "failed" | "cancelled"))
            .then_some(summary))
    })
    .await?;
    assert_eq!(summary["status"], "failed", "{summary}");
    assert_eq!(summary["steps"]["succeeded"], 1, "{summary}");
    let log = std::fs::read_to_string(&worker_log)?;
    assert!(log.contains("aborting the worker process as configured"), "{log}");
    Ok(())
}

#[tokio::test]
async fn malformed_messages_are_dead_lettered_and_nothing_crashes() -> anyhow::Result<()> {
    let env = Env::new("malformed").await?;
    env.register("noop").await?;
    let (mut dispatcher, dispatcher_log) = env.spawn_dispatcher_logged().await?;
    let worker_log = env.log_file("worker")?;
    let mut worker = env.spawn_worker_logged("noop", &worker_log)?;
    let op_queue = "opflow.op.noop.1.1.0";
    wait_for("the dispatcher and the worker to be ready", DEADLINE, || async {
        let ready = std::fs::read_to_string(&dispatcher_log)?.contains("dispatcher ready")
            && std::fs::read_to_string(&worker_log)?.contains("consuming");
        Ok(ready.then_some(()))
    })
    .await?;

    let connection = Connection::connect(&env.amqp_url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    // Confirmed: without confirms the last publishes can still be in the client's buffer
    // when the connection closes below, and never reach the broker (the test then waited
    // for dead letters that were never sent).
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let unknown_run = uuid::Uuid::now_v7().to_string();
    let step = json!({"v": SCHEMA_VERSION, "run_id": unknown_run, "step_id": 1, "attempt": 1,
                      "op": "noop@1.1.0", "asset": "ghost", "config": {"sleep_ms": 300}})
    .to_string();
    StepMessage::decode(step.as_bytes()).context("the test's step message is well formed")?;
    let event = json!({"v": SCHEMA_VERSION, "id": uuid::Uuid::now_v7().to_string(), "run_id": unknown_run,
                       "step_id": 1, "attempt": 1, "at": "2026-11-23T08:00:00Z", "worker": "test/1",
                       "kind": {"succeeded": {"output": null }}})
    .to_string();
    Event::decode(event.as_bytes()).context("the test's event is well formed")?;
    let from_the_future = r#"{"v":99,"run_id":"x","step_id":1}"#;

    let publish = |exchange: &'static str, key: String, body: String, kind: &'static str| {
        let channel = channel.clone();
        async move {
            let confirm = channel
                .basic_publish(
                    exchange.into(),
                    key.as_str().into(),
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    BasicProperties::default().with_type(kind.into()).with_delivery_mode(2),
                )
                .await?
                .await?;
            anyhow::ensure!(confirm.is_ack(), "the broker did not take the test's message: {confirm:?}");
            anyhow::Ok(())
        }
    };
    let step_key = || op_queue.to_owned();
    let event_key = || queue::event_routing_key("succeeded");
    // On the op queue: read by the worker.
    publish(queue::STEP_EXCHANGE, step_key(), "not json at all".into(), queue::STEP_MESSAGE_TYPE).await?;
    publish(queue::STEP_EXCHANGE, step_key(), from_the_future.into(), queue::STEP_MESSAGE_TYPE).await?;
    publish(queue::STEP_EXCHANGE, step_key(), step, queue::STEP_MESSAGE_TYPE).await?;
    // On the events exchange: read by the dispatcher.
    publish(queue::EVENTS_EXCHANGE, event_key(), "{\"truncated\":".into(), queue::EVENT_MESSAGE_TYPE).await?;
    publish(queue::EVENTS_EXCHANGE, event_key(), from_the_future.into(), queue::EVENT_MESSAGE_TYPE).await?;
    publish(queue::EVENTS_EXCHANGE, event_key(), event, queue::EVENT_MESSAGE_TYPE).await?;
    let _ = connection.close(200, "done".into()).await;

    // The worker refuses two step messages and runs the ghost step (long enough to report
    // `started`), whose `started` and
    // `succeeded` events the dispatcher refuses (unknown run); it also refuses the three
    // events published above. Every refused message reaches the dead-letter queue, whose
    // consumer logs and drops it.
    let count = |path: &Path, needle: &str| -> anyhow::Result<usize> {
        Ok(std::fs::read_to_string(path)?.matches(needle).count())
    };
    wait_for("seven dead letters to be dropped", DEADLINE, || async {
        Ok((count(&dispatcher_log, "dropped a dead-lettered message")? >= 7).then_some(()))
    })
    .await
    .with_context(|| {
        format!(
            "dispatcher log:\n{}\nworker log:\n{}",
            std::fs::read_to_string(&dispatcher_log).unwrap_or_default(),
            std::fs::read_to_string(&worker_log).unwrap_or_default()
        )
    })?;
    assert_eq!(count(&worker_log, "malformed step message; dead-lettering it")?, 2);
    assert!(count(&worker_log, "message has schema version 99")? >= 1, "the log names the bad version");
    assert_eq!(count(&dispatcher_log, "malformed event; dead-lettering it")?, 2);
    assert!(count(&dispatcher_log, "a run this dispatcher does not know")? >= 3);
    wait_for("the dead-letter queue to drain", DEADLINE, || async {
        Ok((env.queue_depth(queue::DEAD_LETTER_QUEUE).await? == 0).then_some(()))
    })
    .await?;

    // Nobody crashed, and real work still flows.
    dispatcher.check_alive()?;
    assert!(worker.try_wait()?.is_none(), "the worker exited: {}", std::fs::read_to_string(&worker_log)?);
    let plan = env.plan_file("after", "name: after\nassets:\n  - name: a\n    op: noop@^1\n")?;
    let output = env.opflow(&["run", plan.to_str().context("utf-8")?, "--wait", "--json"]).await?;
    assert!(output.status.success(), "{}", stderr(&output));
    Ok(())
}

#[tokio::test]
async fn a_result_that_reaches_the_dead_letter_queue_is_applied_not_dropped() -> anyhow::Result<()> {
    let mut env = Env::new("dead_result").await?;
    env.register("noop").await?;
    let (mut dispatcher, _) = env.spawn_dispatcher_api(&[]).await?;
    // No worker: the step waits on its queue, and its result arrives another way.
    let plan = env.plan_file("one", "name: one\nassets:\n  - name: a\n    op: noop@1.1.0\n")?;
    let run = parse_summary(&env.opflow_ok(&["run", plan.to_str().context("utf-8")?, "--json"]).await?)?;
    let run_id = run["run_id"].as_str().context("run_id")?.to_owned();
    wait_for("the step to be published", DEADLINE, || async {
        Ok((env.queue_depth("opflow.op.noop.1.1.0").await? == 1).then_some(()))
    })
    .await?;
    // As if the events queue had dead-lettered a worker's result past its delivery limit.
    let result = json!({"v": SCHEMA_VERSION, "id": uuid::Uuid::now_v7().to_string(), "run_id": run_id,
                        "step_id": 0, "attempt": 1, "at": "2026-11-30T08:00:00Z", "worker": "noop@1.1.0/h/1",
                        "kind": {"succeeded": {"output": {"from": "the dead-letter queue"}}}})
    .to_string();
    let connection = Connection::connect(&env.amqp_url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    // Confirmed before the connection closes (see the test above).
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let confirm = channel
        .basic_publish(
            queue::DEAD_LETTER_EXCHANGE.into(),
            "step.succeeded".into(),
            BasicPublishOptions::default(),
            result.as_bytes(),
            BasicProperties::default().with_type(queue::EVENT_MESSAGE_TYPE.into()).with_delivery_mode(2),
        )
        .await?
        .await?;
    anyhow::ensure!(confirm.is_ack(), "the broker did not take the test's message: {confirm:?}");
    let _ = connection.close(200, "done".into()).await;
    let db = env.db().await?;
    let output: serde_json::Value = wait_for("the dead-lettered result to be applied", DEADLINE, || async {
        Ok(sqlx::query_scalar("SELECT output FROM steps WHERE run_id = $1::uuid AND status = 'succeeded'")
            .bind(&run_id)
            .fetch_optional(&db)
            .await?)
    })
    .await?;
    assert_eq!(output["from"], "the dead-letter queue");
    let status = parse_summary(&env.opflow_ok(&["status", &run_id, "--json"]).await?)?;
    assert_eq!(status["status"], "succeeded");
    dispatcher.check_alive()?;
    Ok(())
}
