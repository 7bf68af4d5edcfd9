//! The publish window: an op version's queue holds at most its window of ready messages,
//! the rest wait in the run store, and the room goes to owners in turn, so a small run
//! submitted behind another team's backlog does not wait for the backlog. A canceled
//! run's waiting steps never reach a worker. Checked from the broker's count and the run
//! store's history, not by timing.

use std::time::Duration;

use anyhow::Context;
use opflow_integration::{Env, parse_summary, wait_for};

/// Only turns a hang into a failure.
const DEADLINE: Duration = Duration::from_secs(120);

const QUEUE: &str = "opflow.op.noop.1.1.0";

fn sweep(name: &str, steps: u32) -> String {
    format!(
        "name: {name}\nassets:\n  - name: {name}\n    op: noop@1.1.0\n    sweep: {{k: {{from: 1, to: {steps}}}}}\n"
    )
}

async fn submit(env: &Env, name: &str, steps: u32, owner: &str) -> anyhow::Result<String> {
    let plan = env.plan_file(name, &sweep(name, steps))?;
    let plan = plan.to_str().context("utf-8")?;
    let run = parse_summary(&env.opflow_ok(&["run", plan, "--json", "--owner", owner]).await?)?;
    Ok(run["run_id"].as_str().context("run_id")?.to_owned())
}

/// Waits until the op's queue holds `depth` ready messages.
async fn wait_for_depth(env: &Env, what: &str, depth: u32) -> anyhow::Result<()> {
    wait_for(what, DEADLINE, || async { Ok((env.queue_depth(QUEUE).await? == depth).then_some(())) }).await
}

async fn succeeded(db: &sqlx::PgPool, run: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM steps WHERE run_id = $1::uuid AND status = 'succeeded'")
        .bind(run)
        .fetch_one(db)
        .await?)
}

#[tokio::test]
async fn a_queue_holds_its_window_and_a_later_owner_does_not_wait_for_the_backlog() -> anyhow::Result<()> {
    let mut env = Env::new("window_fair").await?;
    env.register("noop").await?;
    env.opflow_ok(&["ops", "scale", "noop@1.1.0", "--window", "4"]).await?;
    let _dispatcher = env.spawn_dispatcher().await?;
    let db = env.db().await?;

    let backlog = submit(&env, "backlog", 300, "risk").await?;
    wait_for_depth(&env, "the window to fill", 4).await?;
    // Two polls later (each corrects the window's count from the broker's), still four: the
    // rest wait in the outbox.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(env.queue_depth(QUEUE).await?, 4, "the queue holds the window, no more");
    let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE run_id = $1::uuid")
        .bind(&backlog)
        .fetch_one(&db)
        .await?;
    assert_eq!(waiting, 296);
    // Status says why those steps wait.
    let status = parse_summary(&env.opflow_ok(&["status", &backlog, "--json"]).await?)?;
    assert_eq!(
        (status["steps"]["queued"].as_i64(), status["behind_window"].as_i64()),
        (Some(300), Some(296)),
        "{status}"
    );
    let human = env.opflow_ok(&["status", &backlog]).await?;
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(human.contains("296 of the queued steps wait for room in their op's publish window"), "{human}");

    let small = submit(&env, "small", 20, "ml").await?;
    let _worker = env.spawn_worker("noop")?;
    wait_for("the small run to succeed", DEADLINE, || async {
        Ok((succeeded(&db, &small).await? == 20).then_some(()))
    })
    .await?;
    // First in, first out, the small run would have waited for all 300 of the backlog. Fair
    // shares of a window of four let it finish after about 4 + 20 of them.
    let backlog_done = succeeded(&db, &backlog).await?;
    assert!(backlog_done <= 100, "the small run waited for {backlog_done} backlog steps");
    wait_for("the backlog to finish", DEADLINE, || async {
        Ok((succeeded(&db, &backlog).await? == 300).then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_canceled_runs_steps_waiting_behind_the_window_never_reach_a_worker() -> anyhow::Result<()> {
    let mut env = Env::new("window_cancel").await?;
    env.register("noop").await?;
    env.opflow_ok(&["ops", "scale", "noop@1.1.0", "--window", "2"]).await?;
    let _dispatcher = env.spawn_dispatcher().await?;
    let db = env.db().await?;

    let run = submit(&env, "waiting", 50, "risk").await?;
    wait_for_depth(&env, "the window to fill", 2).await?;
    let waiting: Vec<i32> = sqlx::query_scalar("SELECT step_id FROM outbox WHERE run_id = $1::uuid")
        .bind(&run)
        .fetch_all(&db)
        .await?;
    assert_eq!(waiting.len(), 48);
    env.opflow_ok(&["cancel", &run]).await?;

    // A worker now takes the two messages that were on the queue (and drops them: the run
    // is canceled); nothing else of the run is published.
    let _worker = env.spawn_worker("noop")?;
    wait_for_depth(&env, "the queue to drain", 0).await?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(env.queue_depth(QUEUE).await?, 0);
    let (rows, events): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM outbox WHERE run_id = $1::uuid),
                (SELECT count(*) FROM events WHERE run_id = $1::uuid AND step_id = ANY($2))",
    )
    .bind(&run)
    .bind(&waiting)
    .fetch_one(&db)
    .await?;
    assert_eq!((rows, events), (0, 0), "no waiting step was published, started or reported");
    Ok(())
}
