//! Ops speak only for themselves (`op_identity: required`): with its own broker login, an
//! op cannot end another op's step, cancel another team's run, read another op's queue,
//! publish a step, or pass for the dispatcher; what reaches the dispatcher is counted in
//! `/metrics`. See docs/security.md.

use std::time::Duration;

use anyhow::Context;
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions},
    types::{FieldTable, ShortString},
};
use opflow_integration::{Env, http_text, parse_summary, stderr, wait_for};
use opflow_protocol::{CancelRecord, Event, EventKind, RunId, StepId, queue};

const DEADLINE: Duration = Duration::from_secs(120);
const REQUIRED: (&str, &str) = ("OPFLOW_OP_IDENTITY", "required");
/// The victim's op (noop@1.1.0) and the attacker's (noop@1.0.0): two op versions.
const VICTIM: &str = "noop@1.1.0";
const ATTACKER: &str = "noop@1.0.0";

/// Runs `opflow <args>` with op identities required; fails unless it exits 0.
async fn opflow(env: &Env, args: &[&str]) -> anyhow::Result<String> {
    let output = env
        .command(&opflow_integration::binary("opflow")?)
        .env(REQUIRED.0, REQUIRED.1)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .output()
        .await?;
    anyhow::ensure!(output.status.success(), "opflow {args:?} failed: {}", stderr(&output));
    Ok(String::from_utf8(output.stdout)?)
}

/// The user an AMQP URL logs in as (percent-decoded).
fn user_of(url: &str) -> anyhow::Result<String> {
    let uri: lapin::uri::AMQPUri = url.parse().map_err(anyhow::Error::msg)?;
    Ok(uri.authority.userinfo.username)
}

/// A confirmed publish as `user` on `connection`: `Ok(())` only if the broker took it.
async fn publish(
    connection: &Connection,
    exchange: &str,
    routing_key: &str,
    user: &str,
    message_type: &str,
    payload: &[u8],
) -> anyhow::Result<()> {
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_user_id(ShortString::from(user))
        .with_type(ShortString::from(message_type));
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions { mandatory: true, ..Default::default() },
            payload,
            properties,
        )
        .await?
        .await?;
    anyhow::ensure!(matches!(confirm, lapin::Confirmation::Ack(None)), "not taken: {confirm:?}");
    Ok(())
}

/// Waits until a step of the one-step run `run_id` runs.
async fn step_running(db: &sqlx::PgPool, run_id: &str) -> anyhow::Result<()> {
    wait_for("the run's step to run", DEADLINE, || async {
        let running: Option<i32> =
            sqlx::query_scalar("SELECT id FROM steps WHERE run_id = $1::uuid AND status = 'running'")
                .bind(run_id)
                .fetch_optional(db)
                .await?;
        Ok(running.map(|_| ()))
    })
    .await
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn an_op_with_its_own_login_cannot_speak_for_another_ops_steps() -> anyhow::Result<()> {
    let mut env = Env::new("identity_forgery").await?;
    for op in ["noop", ATTACKER] {
        let path = opflow_integration::binary(op)?;
        let said = opflow(&env, &["ops", "add", path.to_str().context("utf-8")?]).await?;
        assert!(said.contains("log in to RabbitMQ as opflow-op:"), "{said}");
    }
    let victim_url = opflow(&env, &["ops", "credentials", VICTIM]).await?.trim().to_owned();
    let attacker_url = opflow(&env, &["ops", "credentials", ATTACKER]).await?.trim().to_owned();
    let attacker = user_of(&attacker_url)?;
    assert!(attacker.starts_with("opflow-op:") && attacker.ends_with(ATTACKER), "{attacker}");
    let _dispatcher = env.spawn_dispatcher_with(&[REQUIRED]).await?;
    let _victim_worker = env
        .command(&opflow_integration::binary("noop")?)
        .env("OPFLOW_AMQP_URL", &victim_url)
        .env("OPFLOW_DISPATCHER_USER", "guest")
        .stdout(std::process::Stdio::null())
        .spawn()?;

    let plan = env.plan_file(
        "victim",
        "name: victim\nassets:\n  - name: slow\n    op: noop@1.1.0\n    config: {sleep_ms: 4000}\n",
    )?;
    let output = env.opflow_ok(&["run", plan.to_str().context("utf-8")?, "--json"]).await?;
    let run_id = parse_summary(&output)?["run_id"].as_str().context("run_id")?.to_owned();
    let run: RunId = run_id.parse().map_err(anyhow::Error::msg)?;
    let db = env.db().await?;
    step_running(&db, &run_id).await?;

    let connection = Connection::connect(&attacker_url, ConnectionProperties::default()).await?;
    // A `succeeded` event for the victim's step, with outputs of the attacker's choice: the
    // broker takes it (the events exchange is the attacker's to write to), the dispatcher
    // drops it.
    let forged = Event::new(
        run,
        StepId(0),
        1,
        "forger",
        EventKind::Succeeded { output: serde_json::json!({"forged": true}) },
    );
    let routing_key = queue::event_routing_key("succeeded");
    publish(
        &connection,
        queue::EVENTS_EXCHANGE,
        &routing_key,
        &attacker,
        queue::EVENT_MESSAGE_TYPE,
        &forged.encode(),
    )
    .await
    .context("publishing the forged event")?;
    // A cancel record for the victim's run: every worker reads it, none obeys it.
    let cancel = CancelRecord::run(run).encode();
    publish(&connection, queue::CANCELS_EXCHANGE, "", &attacker, queue::CANCEL_MESSAGE_TYPE, &cancel)
        .await
        .context("publishing the forged cancel")?;
    // Passing for the dispatcher: the broker refuses a user_id that is not the login's.
    let impersonated =
        publish(&connection, queue::CANCELS_EXCHANGE, "", "guest", queue::CANCEL_MESSAGE_TYPE, &cancel).await;
    assert!(impersonated.is_err(), "a cancel in the dispatcher's name was taken");
    // A step message straight into the victim's queue (the default exchange): refused.
    let victim_queue = queue::op_queue(&VICTIM.parse().map_err(anyhow::Error::msg)?);
    let step = publish(&connection, "", &victim_queue, &attacker, queue::STEP_MESSAGE_TYPE, b"{}").await;
    assert!(step.is_err(), "a step message from an op was taken");
    // Reading the victim's queue: refused.
    let channel = connection.create_channel().await?;
    let consumed = channel
        .basic_consume(
            victim_queue.as_str().into(),
            "thief".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await;
    let refusal = consumed.err().context("the attacker consumed the victim's queue")?;
    assert!(
        refusal.to_string().contains("ACCESS_REFUSED") || refusal.to_string().contains("403"),
        "{refusal}"
    );
    connection.close(200, "done".into()).await.ok();

    let status = wait_for("the victim's run to end", DEADLINE, || async {
        let status: String = sqlx::query_scalar("SELECT status::text FROM runs WHERE id = $1::uuid")
            .bind(&run_id)
            .fetch_one(&db)
            .await?;
        Ok((!matches!(status.as_str(), "queued" | "running")).then_some(status))
    })
    .await?;
    assert_eq!(status, "succeeded");
    let (attempt, output): (i32, Option<serde_json::Value>) =
        sqlx::query_as("SELECT attempt, output FROM steps WHERE run_id = $1::uuid AND id = 0")
            .bind(&run_id)
            .fetch_one(&db)
            .await?;
    assert_eq!(attempt, 1, "the step was stopped and retried");
    let output = output.context("the step's output")?;
    assert!(output.get("forged").is_none(), "the forged output was applied: {output}");

    let metrics = wait_for("both refusals to be counted", DEADLINE, || async {
        let (_, text) = http_text(&env.api_addr, "GET", "/metrics", None, None).await?;
        let event = metric(&text, r#"opflow_refused_messages_total{what="event",reason="not_the_steps_op"}"#);
        let cancel =
            metric(&text, r#"opflow_refused_messages_total{what="cancel",reason="not_the_dispatcher"}"#);
        Ok((event >= 1.0 && cancel >= 1.0).then_some((event, cancel)))
    })
    .await?;
    assert_eq!(metrics, (1.0, 1.0));
    Ok(())
}

/// `opflow up` gives each op version its own login by default: its workers connect as
/// their op's user, a run on them succeeds (each event passes the sender check), and a
/// cancel from the dispatcher still stops a running step.
#[tokio::test]
async fn opflow_up_gives_each_op_version_its_own_login() -> anyhow::Result<()> {
    let mut env = Env::new("identity_up").await?;
    let mut command = env.command(&opflow_integration::binary("opflow")?);
    command.args(["up", "--workers", "1"]);
    for op in ["noop", ATTACKER] {
        command.arg(opflow_integration::binary(op)?);
    }
    let _up = command.stdout(std::process::Stdio::null()).spawn()?;
    env.wait_for_api().await?;

    let plan = env.plan_file(
        "two",
        "name: two\nassets:\n  - name: a\n    op: noop@1.1.0\n  - name: b\n    op: noop@1.0.0\n    deps: [a]\n",
    )?;
    let output = env.opflow_ok(&["run", plan.to_str().context("utf-8")?, "--wait", "--json"]).await?;
    assert_eq!(parse_summary(&output)?["status"], "succeeded");
    let users = std::process::Command::new("rabbitmqctl").args(["-q", "list_users"]).output()?;
    let users = String::from_utf8_lossy(&users.stdout);
    for op in [VICTIM, ATTACKER] {
        let user = format!("opflow-op:{}:{op}", env.name);
        assert!(users.contains(&user), "no broker user {user} in {users}");
    }

    let slow = env.plan_file(
        "slow",
        "name: slow\nassets:\n  - name: a\n    op: noop@1.1.0\n    config: {sleep_ms: 30000}\n",
    )?;
    let output = env.opflow_ok(&["run", slow.to_str().context("utf-8")?, "--json"]).await?;
    let run_id = parse_summary(&output)?["run_id"].as_str().context("run_id")?.to_owned();
    let db = env.db().await?;
    step_running(&db, &run_id).await?;
    env.opflow_ok(&["cancel", &run_id]).await?;
    wait_for("the worker to stop the canceled step", DEADLINE, || async {
        let stopped =
            opflow_integration::failed_events_containing(&db, &run_id, "canceled while this step ran")
                .await?;
        Ok((stopped >= 1).then_some(()))
    })
    .await?;
    Ok(())
}
