//! What lost-step recovery and the queues' demand read, and the run ends recovery writes.

use std::time::Duration;

use opflow_dispatcher::store::{
    in_flight::StepAttempt,
    queues::{OpDemand, QueueDepthRow},
};
use opflow_protocol::{OpRef, RunId, StepId};

use crate::common::{TestDb, submit};

async fn chain(db: &TestDb) -> RunId {
    let source =
        "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n  - name: b\n    op: noop@1.0.0\n    deps: [a]\n";
    submit(db, source).await
}

async fn exec(db: &TestDb, sql: &str, run: RunId) {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(run.as_uuid())
        .execute(db.store.pool())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_run_left_with_nothing_in_flight_is_found_and_ended_with_the_reason() {
    let db = TestDb::new("stuck_run").await;
    let run = chain(&db).await;
    assert!(db.leader.in_flight().runs_with_nothing_in_flight(Duration::ZERO).await.unwrap().is_empty());
    // As if the unlock of `b` had been lost: `a` succeeded, `b` still waits.
    exec(&db, "UPDATE steps SET status = 'succeeded' WHERE run_id = $1 AND id = 0", run).await;
    exec(&db, "DELETE FROM outbox WHERE run_id = $1", run).await;
    assert_eq!(db.leader.in_flight().runs_with_nothing_in_flight(Duration::ZERO).await.unwrap(), [run]);
    assert!(db.leader.in_flight().settle_run(run, "stuck for the test").await.unwrap());
    let (status, failed, succeeded): (String, i32, i32) =
        sqlx::query_as("SELECT status::text, steps_failed, steps_succeeded FROM runs WHERE id = $1")
            .bind(run.as_uuid())
            .fetch_one(db.store.pool())
            .await
            .unwrap();
    assert_eq!((status.as_str(), failed, succeeded), ("failed", 1, 1));
    let error: String = sqlx::query_scalar("SELECT error FROM steps WHERE run_id = $1 AND id = 1")
        .bind(run.as_uuid())
        .fetch_one(db.store.pool())
        .await
        .unwrap();
    assert_eq!(error, "stuck for the test");
    assert!(!db.leader.in_flight().settle_run(run, "again").await.unwrap(), "an ended run is left alone");
    crate::common::assert_counts_kept(&db).await;
}

#[tokio::test]
async fn a_running_step_without_heartbeats_is_found_silent() {
    let db = TestDb::new("silent_step").await;
    let run = chain(&db).await;
    exec(
        &db,
        "UPDATE steps SET status = 'running', worker = 'noop@1.0.0/h/7', started_at = now() - interval '2 minutes',
                          heartbeat_at = now() - interval '90 seconds'
         WHERE run_id = $1 AND id = 0",
        run,
    )
    .await;
    let silent = db.leader.in_flight().silent_steps(Duration::from_secs(60), 10).await.unwrap();
    assert_eq!(silent.len(), 1);
    assert_eq!((silent[0].step.step_id, silent[0].worker.as_str()), (StepId(0), "noop@1.0.0/h/7"));
    assert!(db.leader.in_flight().silent_steps(Duration::from_secs(120), 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn demand_counts_running_steps_their_workers_and_steps_about_to_be_ready() {
    let db = TestDb::new("demand").await;
    let run = chain(&db).await;
    let op: OpRef = "noop@1.0.0".parse().unwrap();
    // `a` is queued, `b` waits on it: `b` is forecast.
    assert_eq!(
        db.store.queues().demand(&op).await.unwrap(),
        OpDemand { queued: 1, running: 0, busy_workers: vec![], forecast: 1 }
    );
    exec(
        &db,
        "UPDATE steps SET status = 'running', worker = 'noop@1.0.0/h/9' WHERE run_id = $1 AND id = 0",
        run,
    )
    .await;
    let demand = db.store.queues().demand(&op).await.unwrap();
    assert_eq!(
        demand,
        OpDemand { queued: 0, running: 1, busy_workers: vec!["noop@1.0.0/h/9".into()], forecast: 1 }
    );
}

#[tokio::test]
async fn queue_depths_name_every_registered_op_and_count_its_queued_and_running_steps() {
    let db = TestDb::new("queue_depths").await;
    for version in ["1.0.0", "2.0.0"] {
        sqlx::query(
            "INSERT INTO ops (name, version, queue, queue_type, delivery_limit, description)
             VALUES ('noop', $1, 'q', 'quorum', 5, '{}')",
        )
        .bind(version)
        .execute(db.store.pool())
        .await
        .unwrap();
    }
    let depth = |version: &str, ready, running| QueueDepthRow {
        op: format!("noop@{version}").parse().unwrap(),
        ready,
        running,
    };
    let run = chain(&db).await;
    // `a` is queued, in the outbox or on the queue: ready either way (it is about to be).
    assert_eq!(db.store.queues().depths().await.unwrap(), [depth("1.0.0", 1, 0), depth("2.0.0", 0, 0)]);
    exec(&db, "DELETE FROM outbox WHERE run_id = $1", run).await;
    assert_eq!(db.store.queues().depths().await.unwrap(), [depth("1.0.0", 1, 0), depth("2.0.0", 0, 0)]);
    exec(&db, "UPDATE steps SET status = 'running' WHERE run_id = $1 AND id = 0", run).await;
    assert_eq!(db.store.queues().depths().await.unwrap(), [depth("1.0.0", 0, 1), depth("2.0.0", 0, 0)]);
}

#[tokio::test]
async fn published_queued_steps_leave_out_the_outbox() {
    let db = TestDb::new("published").await;
    let run = chain(&db).await;
    let op: OpRef = "noop@1.0.0".parse().unwrap();
    // `a` is queued but still in the outbox: not published.
    assert_eq!(db.store.queues().published(&op, 100).await.unwrap(), 0);
    exec(&db, "DELETE FROM outbox WHERE run_id = $1", run).await;
    assert_eq!(db.store.queues().published(&op, 100).await.unwrap(), 1);
    let oldest = db.leader.in_flight().oldest_published(&op, Duration::ZERO, 10).await.unwrap();
    assert_eq!(oldest, [StepAttempt { run_id: run, step_id: StepId(0), attempt: 1 }]);
}

/// Regression: with 20,000 steps just queued (all in the outbox, the tables not yet
/// analyzed), counting the published ones once joined each outbox row to a scan of the
/// run's queued steps, 20,000 × 20,000 rows: during a 100,000-step run the lost-step
/// check's count ran for the whole run, a PostgreSQL core busy and vacuum held back.
/// The statement timeout turns such a plan into a failure instead of a hang.
#[tokio::test]
async fn counting_published_steps_of_a_large_fresh_run_stays_cheap() {
    // The statement timeout turns a plan of 20,000 × 20,000 rows into a failure.
    let db = TestDb::with_url_options("published_large", "?options=-c%20statement_timeout%3D10000").await;
    sqlx::query(
        "INSERT INTO ops (name, version, queue, queue_type, delivery_limit, description)
         VALUES ('noop', '1.0.0', 'q', 'quorum', 5, '{}')",
    )
    .execute(db.store.pool())
    .await
    .unwrap();
    let source = "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    sweep: {k: {from: 1, to: 20000}}\n";
    let run = submit(&db, source).await;
    let (store, leader) = (&db.store, &db.leader);
    let op: OpRef = "noop@1.0.0".parse().unwrap();
    assert_eq!(store.queues().published(&op, 30_000).await.unwrap(), 0);
    let ready = |depths: Vec<QueueDepthRow>| depths.iter().map(|d| d.ready).collect::<Vec<_>>();
    // Queued, in the outbox: ready for `/metrics` (about to be published), not published.
    assert_eq!(ready(store.queues().depths().await.unwrap()), [20_000]);
    let oldest = leader.in_flight().oldest_published(&op, Duration::ZERO, 10).await.unwrap();
    assert!(oldest.is_empty(), "{oldest:?}");
    exec(&db, "DELETE FROM outbox WHERE run_id = $1 AND step_id >= 10000", run).await;
    assert_eq!(store.queues().published(&op, 30_000).await.unwrap(), 10_000);
    assert_eq!(store.queues().published(&op, 100).await.unwrap(), 100);
    assert_eq!(ready(store.queues().depths().await.unwrap()), [20_000]);
    let oldest = leader.in_flight().oldest_published(&op, Duration::ZERO, 10).await.unwrap();
    assert_eq!(oldest.len(), 10);
    assert!(oldest.iter().all(|s| s.step_id.0 >= 10_000), "{oldest:?}");
}
