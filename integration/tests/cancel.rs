//! Cancel: queued and waiting steps never start, running ones are told to stop, and the
//! run ends `canceled`. Cancelling a finished run changes nothing and says so.

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use opflow_integration::{Env, parse_summary, stderr, wait_for};
use serde_json::Value;

/// Only turns a hang into a failure.
const DEADLINE: Duration = Duration::from_secs(120);

#[tokio::test]
async fn a_canceled_run_ends_canceled_and_no_step_starts_after_the_cancel() -> anyhow::Result<()> {
    let mut env = Env::new("cancel").await?;
    env.register("noop").await?;
    let _dispatcher = env.spawn_dispatcher().await?;
    let _workers = [env.spawn_worker("noop")?, env.spawn_worker("noop")?];
    let plan = env.plan_file(
        "slow",
        "name: slow\nassets:\n  - name: slow\n    op: noop@1.1.0\n    sweep: {k: {from: 1, to: 200}}\n    \
         config: {sleep_ms: 1000}\n  - name: after\n    op: noop@1.1.0\n    deps: [slow]\n",
    )?;
    let run = parse_summary(&env.opflow_ok(&["run", plan.to_str().context("utf-8")?, "--json"]).await?)?;
    let run_id = run["run_id"].as_str().context("run_id")?.to_owned();
    let db = env.db().await?;
    // About two seconds in: both workers are on their second or third step, and at least
    // one has reported it started (a step reports that a moment after it begins).
    wait_for("four steps to succeed and one to be running", DEADLINE, || async {
        let (done, running): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*) FILTER (WHERE status = 'running')
             FROM steps WHERE run_id = $1::uuid",
        )
        .bind(&run_id)
        .fetch_one(&db)
        .await?;
        Ok((done >= 4 && running >= 1).then_some(()))
    })
    .await?;

    let canceled_at = Utc::now();
    let started = Instant::now();
    let output = env.opflow(&["cancel", &run_id, "--json"]).await?;
    assert!(output.status.success(), "{}", stderr(&output));
    let answer = parse_summary(&output)?;
    assert_eq!(answer["canceled"], true, "{answer}");
    assert_eq!(answer["run"]["status"], "canceled", "{answer}");
    let running = answer["running"].as_i64().context("running")?;
    assert!((1..=2).contains(&running), "two workers run at most two steps: {answer}");
    assert_eq!(answer["not_started"].as_i64().context("not_started")? + running + 4, 201, "{answer}");

    // The running steps are stopped and reported, and every queued message is dropped by
    // the workers, within five seconds.
    let stopped = wait_for("the running steps to be reported stopped", Duration::from_secs(5), || async {
        let stopped =
            opflow_integration::failed_events_containing(&db, &run_id, "canceled while this step ran")
                .await?;
        Ok((stopped >= running).then_some(stopped))
    })
    .await?;
    // Every step the cancel found running is stopped. A step its worker began less than
    // 100 ms before the cancel (plus the applier's linger) has not yet reported `started`
    // (quick steps report only their result), so the cancel counted it not started; its
    // worker stops it all the same. Two workers never run more than two.
    assert!((running..=2).contains(&stopped), "{stopped} stopped, {running} counted running");
    let took = started.elapsed();
    println!(
        "canceled a run of 200 one-second steps: its running steps were stopped {took:?} after the cancel"
    );
    wait_for("the workers to drop the queued steps", DEADLINE, || async {
        Ok((env.queue_depth("opflow.op.noop.1.1.0").await? == 0).then_some(()))
    })
    .await?;

    // Nothing that began after the cancel ran to the end, or got far enough to say it
    // started; and the run's row did not move after it was canceled.
    let (status, finished_at, statuses): (String, DateTime<Utc>, Value) = sqlx::query_as(
        "SELECT r.status::text, r.finished_at,
                (SELECT jsonb_object_agg(status, n) FROM
                    (SELECT status::text, count(*) AS n FROM steps WHERE run_id = r.id GROUP BY status) c)
         FROM runs r WHERE r.id = $1::uuid",
    )
    .bind(&run_id)
    .fetch_one(&db)
    .await?;
    assert_eq!(status, "canceled");
    assert!(finished_at >= canceled_at, "{finished_at} < {canceled_at}");
    assert_eq!(statuses["succeeded"], 4, "{statuses}");
    assert_eq!(statuses["canceled"], 197, "{statuses}");
    let (succeeded_late, started_late): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM steps WHERE run_id = $1::uuid AND status = 'succeeded' AND started_at > $2),
                (SELECT count(*) FROM events WHERE run_id = $1::uuid AND kind = 'started' AND at > $2)",
    )
    .bind(&run_id)
    .bind(canceled_at)
    .fetch_one(&db)
    .await?;
    assert_eq!((succeeded_late, started_late), (0, 0), "steps started after the cancel");
    let dropped: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE run_id = $1::uuid AND body::text LIKE '%canceled before this step started%'",
    )
    .bind(&run_id)
    .fetch_one(&db)
    .await?;
    assert!(dropped > 0, "the workers dropped the run's queued messages without running them");

    // Cancelling it again changes nothing, and says so.
    let again = parse_summary(&env.opflow_ok(&["cancel", &run_id, "--json"]).await?)?;
    assert_eq!(again["canceled"], false, "{again}");
    assert!(
        again["message"].as_str().is_some_and(|m| m.contains("already finished (canceled); nothing changed"))
    );
    Ok(())
}
