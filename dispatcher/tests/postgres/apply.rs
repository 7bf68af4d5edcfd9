//! Applying events: duplicates, late and reordered results, run ends, fan-in linearity.

use opflow_dispatcher::store::{run_plan::PlanCache, runs::Cancellation, storable::StorableEvent};
use opflow_protocol::{Event, EventKind, RunId, StepId};
use serde_json::json;

use crate::common::{TestDb, assert_counts_kept, submit};

async fn one_step_run(db: &TestDb, retry_max: u32) -> RunId {
    let source = format!(
        "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    retry: {{max: {retry_max}, backoff: 10m}}\n"
    );
    submit(db, &source).await
}

fn event(run: RunId, attempt: u32, kind: EventKind) -> StorableEvent {
    Event::new(run, StepId(0), attempt, "noop@1.0.0/h/1", kind).into()
}

fn ok() -> EventKind {
    EventKind::Succeeded { output: json!({"ok": true}) }
}

/// The step's status and attempt, the run's status and counters (succeeded, failed), and
/// how many of its events are recorded and applied.
async fn state(db: &TestDb, run: RunId) -> (String, i32, String, i32, i32, i64, i64) {
    sqlx::query_as(
        "SELECT s.status::text, s.attempt, r.status::text, r.steps_succeeded, r.steps_failed,
                (SELECT count(*) FROM events e WHERE e.run_id = r.id),
                (SELECT count(*) FROM events e WHERE e.run_id = r.id AND e.applied)
         FROM steps s JOIN runs r ON r.id = s.run_id WHERE s.run_id = $1",
    )
    .bind(run.as_uuid())
    .fetch_one(db.store.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn a_duplicate_event_is_recorded_once_and_changes_nothing() {
    let db = TestDb::new("duplicate_event").await;
    let run = one_step_run(&db, 0).await;
    let plans = PlanCache::default();
    let success = event(run, 1, ok());
    let first = db.leader.events().apply(std::slice::from_ref(&success), &plans).await.unwrap();
    assert_eq!(first.finished.len(), 1);
    let again = db.leader.events().apply(&[success.clone(), success], &plans).await.unwrap();
    assert_eq!(again.duplicates, 2);
    assert!(again.finished.is_empty(), "a run ends once");
    assert_eq!(state(&db, run).await, ("succeeded".into(), 1, "succeeded".into(), 1, 0, 1, 1));
}

#[tokio::test]
async fn a_late_result_of_a_retried_attempt_is_ignored() {
    let db = TestDb::new("stale_attempt").await;
    let run = one_step_run(&db, 1).await;
    let plans = PlanCache::default();
    let failed = event(run, 1, EventKind::Failed { error: "flaky".into(), retryable: true });
    db.leader.events().apply(&[failed], &plans).await.unwrap();
    // Attempt 1 is retried as attempt 2; a success of attempt 1 arrives late.
    let late = db.leader.events().apply(&[event(run, 1, ok())], &plans).await.unwrap();
    assert!(late.finished.is_empty());
    assert_eq!(state(&db, run).await, ("retrying".into(), 2, "running".into(), 0, 0, 2, 1));
    // Not even attempt 2's result counts before attempt 2 was queued; once it is, it does.
    db.leader.events().apply(&[event(run, 2, ok())], &plans).await.unwrap();
    assert_eq!(state(&db, run).await.0, "retrying");
    sqlx::query("UPDATE steps SET next_attempt_at = now() - interval '1 second' WHERE run_id = $1")
        .bind(run.as_uuid())
        .execute(db.store.pool())
        .await
        .unwrap();
    assert_eq!(db.leader.outbox().release_due_retries().await.unwrap().len(), 1);
    db.leader.events().apply(&[event(run, 2, ok())], &plans).await.unwrap();
    assert_eq!(state(&db, run).await, ("succeeded".into(), 2, "succeeded".into(), 1, 0, 4, 2));
    // Queued → retrying → queued (the due retry released) → succeeded, each counted.
    assert_counts_kept(&db).await;
}

#[tokio::test]
async fn a_success_and_a_failure_of_one_attempt_in_one_batch_count_once() {
    let db = TestDb::new("success_and_failure").await;
    for order in [[0, 1], [1, 0]] {
        let run = one_step_run(&db, 0).await;
        let events = [
            event(run, 1, EventKind::Failed { error: "boom".into(), retryable: false }),
            event(run, 1, ok()),
        ];
        let batch: Vec<StorableEvent> = order.iter().map(|&i| events[i].clone()).collect();
        let outcome = db.leader.events().apply(&batch, &PlanCache::default()).await.unwrap();
        assert_eq!(outcome.finished.len(), 1, "the run ends once");
        let (step, _, status, succeeded, failed, recorded, applied) = state(&db, run).await;
        // Whichever the order, exactly one result counts: the success.
        assert_eq!((step.as_str(), status.as_str(), succeeded, failed), ("succeeded", "succeeded", 1, 0));
        assert_eq!((recorded, applied), (2, 1));
    }
}

#[tokio::test]
async fn a_start_after_the_result_changes_nothing() {
    let db = TestDb::new("late_start").await;
    let run = one_step_run(&db, 0).await;
    let plans = PlanCache::default();
    db.leader.events().apply(&[event(run, 1, ok())], &plans).await.unwrap();
    let op = "noop@1.0.0".parse().unwrap();
    db.leader.events().apply(&[event(run, 1, EventKind::Started { op })], &plans).await.unwrap();
    assert_eq!(state(&db, run).await, ("succeeded".into(), 1, "succeeded".into(), 1, 0, 2, 1));
}

#[tokio::test]
async fn failing_a_run_says_how_many_steps_of_each_op_it_failed() {
    let db = TestDb::new("fail_run_counts").await;
    let run = one_step_run(&db, 0).await;
    let plans = PlanCache::default();
    let failed = db.leader.events().fail_run(run, "cannot apply", &plans).await.unwrap();
    assert!(failed.ended);
    assert_eq!(failed.failed, [("noop@1.0.0".parse().unwrap(), 1)]);
    let again = db.leader.events().fail_run(run, "cannot apply", &plans).await.unwrap();
    assert!(!again.ended && again.failed.is_empty(), "{again:?}");
    assert_counts_kept(&db).await;
}

/// Every statement that changes a step's status keeps its asset's counts: submitting,
/// starts, successes and the unlocks they make, a final failure and the skips it makes,
/// and a cancel.
#[tokio::test]
async fn every_status_change_is_counted_in_its_assets_counts() {
    let db = TestDb::new("counts_kept").await;
    let run = submit(
        &db,
        "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    sweep: {k: [1, 2, 3]}\n  \
         - name: b\n    op: noop@1.0.0\n    deps: [a]\n  - name: c\n    op: noop@1.0.0\n    deps: [b]\n  \
         - name: d\n    op: noop@1.0.0\n    sweep: {k: [1, 2]}\n",
    )
    .await;
    assert_counts_kept(&db).await;
    let plans = PlanCache::default();
    let at = |step: u32, kind: EventKind| -> StorableEvent {
        Event::new(run, StepId(step), 1, "noop@1.0.0/h/1", kind).into()
    };
    let started = || EventKind::Started { op: "noop@1.0.0".parse().unwrap() };
    db.leader.events().apply(&[at(0, started()), at(1, started())], &plans).await.unwrap();
    assert_counts_kept(&db).await;
    db.leader.events().apply(&[at(0, ok()), at(1, ok()), at(2, ok())], &plans).await.unwrap();
    assert_counts_kept(&db).await; // `b` unlocked: waiting → queued
    let fatal = EventKind::Failed { error: "boom".into(), retryable: false };
    db.leader.events().apply(&[at(3, fatal)], &plans).await.unwrap();
    assert_counts_kept(&db).await; // `b` failed, `c` skipped
    let canceled = db.store.runs().cancel(run).await.unwrap().expect("the run");
    assert!(matches!(canceled, Cancellation::Canceled { not_started: 2, running: 0 }), "{canceled:?}");
    assert_counts_kept(&db).await; // `d` canceled
    let summary = db.store.runs().summary(run).await.unwrap().unwrap();
    let s = &summary.steps;
    assert_eq!((s.succeeded, s.failed, s.skipped, s.canceled, s.total), (3, 1, 1, 2, 7));
    assert_eq!((summary.assets.done, summary.assets.failed, summary.assets.total), (4, 1, 4));
}

/// Row updates of `steps` so far, as PostgreSQL's statistics count them.
async fn step_updates(db: &TestDb) -> i64 {
    sqlx::query("SELECT pg_stat_force_next_flush()").execute(db.store.pool()).await.unwrap();
    sqlx::query_scalar("SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'steps'")
        .fetch_one(db.store.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_5000_by_5000_fan_in_writes_each_step_a_few_times_not_25_million() {
    let db = TestDb::new("fan_in").await;
    let source = "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    sweep: {k: {from: 1, to: 5000}}\n  \
                  - name: b\n    op: noop@1.0.0\n    deps: [a]\n    sweep: {j: {from: 1, to: 5000}}\n";
    let run = submit(&db, source).await;
    let plans = PlanCache::default();
    let before = step_updates(&db).await;
    let mut queued = 0;
    for chunk in (0..5000u32).collect::<Vec<_>>().chunks(500) {
        let events: Vec<StorableEvent> = chunk
            .iter()
            .map(|&s| Event::new(run, StepId(s), 1, "w", EventKind::Succeeded { output: json!(s) }).into())
            .collect();
        queued += db.leader.events().apply(&events, &plans).await.unwrap().queued.len() as u64;
    }
    let updates = step_updates(&db).await - before;
    assert_eq!(queued, 5000, "every fan-in step is queued once the last upstream step succeeded");
    // 5,000 successes and 5,000 unlocks; the per-pair way wrote 25,005,000.
    assert!(updates <= 10_000, "{updates} step row updates");
    let (pending, outbox): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM steps WHERE run_id = $1 AND status = 'queued' AND pending_upstream = 0),
                (SELECT count(*) FROM outbox WHERE run_id = $1)",
    )
    .bind(run.as_uuid())
    .fetch_one(db.store.pool())
    .await
    .unwrap();
    assert_eq!((pending, outbox), (5000, 10_000));
}
