//! Applying worker events to the run store, a batch per transaction: what the batch
//! decides ([`decide`], pure) written by bulk statements ([`statements`]) over the batch's
//! columns ([`columns`], pure).
//!
//! Idempotence comes from two guards on every transition: the event's `attempt` must be
//! the step's current attempt, and the step must be in a state the transition starts
//! from (`queued` → `running`; `queued`/`running` → `succeeded`/`failed`/`retrying`). A
//! duplicate, a late event from an attempt that was already retried, or an event after
//! the step finished therefore matches no row and changes nothing. Because of the same
//! guards the kinds can be applied in bulk, one statement each, whatever their order in
//! the batch; within a batch one result counts per step attempt ([`decide::settle`]).
//! Every event is also appended to `events` once (keyed by its id), after the
//! transitions, with `applied` saying whether it changed its step.
//!
//! Every step this batch moved to a terminal state (succeeded, failed for good, skipped)
//! is listed in [`ApplyOutcome::terminal`], taken from the rows the guarded statements
//! changed (their `RETURNING`), never from the events: a duplicate or late event that
//! changed nothing is not listed, so the metrics counting them (`api::metrics`) count each
//! step once. Its op version comes from the run's cached plan ([`RunPlan::op`]), which the
//! batch loads anyway to judge failures and to unlock and skip, so no query is added for it.
//!
//! A success unlocks downstream steps by decrementing their `pending_upstream`; the step
//! whose count reaches zero is queued and written to the outbox in the same statement. A
//! final failure skips every step downstream of it. A run ends when all its steps are
//! succeeded, failed or skipped.

pub mod columns;
pub mod decide;
mod statements;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use chrono::Utc;
use opflow_protocol::{Event, EventKind, RunId, StepId};
use uuid::Uuid;

use super::{
    Store, StoreError,
    run_plan::{PlanCache, RunPlan},
    runs::RunStatus,
    storable::StorableEvent,
};
use decide::{RunDelta, Unlocks};

/// What applying a batch did.
#[derive(Debug, Default)]
pub struct ApplyOutcome {
    /// Positions (in the batch) of events naming a run this store does not know.
    pub unknown_run: Vec<usize>,
    /// Events already applied before (same event id).
    pub duplicates: usize,
    /// Steps queued (written to the outbox) by this batch.
    pub newly_queued: u64,
    /// Runs that ended with this batch.
    pub finished: Vec<(RunId, RunStatus)>,
    /// Steps this batch moved to a terminal state, each once (see the module docs).
    pub terminal: Vec<TerminalStep>,
}

/// The terminal states a step reaches by applying events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TerminalStatus {
    Succeeded,
    Failed,
    Skipped,
}

impl TerminalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TerminalStatus::Succeeded => "succeeded",
            TerminalStatus::Failed => "failed",
            TerminalStatus::Skipped => "skipped",
        }
    }
}

/// A step that reached a terminal state in an applied batch.
#[derive(Debug, Clone)]
pub struct TerminalStep {
    /// Its run's plan, which names the step's op version ([`TerminalStep::op`]); shared,
    /// so listing a step copies no names.
    pub plan: Arc<RunPlan>,
    pub step: StepId,
    pub status: TerminalStatus,
    /// How long its last attempt ran (the result's `finished_at − started_at`), when the
    /// result came from a worker; `None` for a failure the dispatcher decided and for a skip.
    pub seconds: Option<f64>,
}

impl TerminalStep {
    pub fn op(&self) -> &opflow_protocol::OpRef {
        self.plan.op(self.step)
    }
}

impl Store {
    /// Applies `events` in one transaction; see the module docs. Runs that end here are
    /// forgotten by `plans`.
    pub async fn apply_events(
        &self,
        events: &[StorableEvent],
        plans: &PlanCache,
    ) -> Result<ApplyOutcome, StoreError> {
        let mut outcome = ApplyOutcome::default();
        if events.is_empty() {
            return Ok(outcome);
        }
        let mut tx = self.pool.begin().await?;

        // Events of runs this store does not know are set aside. Runs whose plan is cached
        // are known; only the others are looked up.
        let known = self.known_runs(&mut tx, events, plans).await?;
        let mut batch: Vec<&Event> = Vec::with_capacity(events.len());
        for (position, event) in events.iter().enumerate() {
            if known.contains(&event.run_id.as_uuid()) {
                batch.push(event);
            } else {
                outcome.unknown_run.push(position);
            }
        }

        // The plans of the runs with results: failures are judged by them, and what
        // results unlock and skip is read from them.
        let mut run_plans: HashMap<Uuid, Arc<RunPlan>> = HashMap::new();
        for event in
            batch.iter().filter(|e| matches!(e.kind, EventKind::Succeeded { .. } | EventKind::Failed { .. }))
        {
            if let std::collections::hash_map::Entry::Vacant(entry) = run_plans.entry(event.run_id.as_uuid())
            {
                entry.insert(plans.get(self, event.run_id).await?);
            }
        }
        let plan_of = |run: Uuid| run_plans[&run].clone();

        // The guards make a duplicate change nothing, so duplicates need no filtering first.
        let mut deltas: HashMap<Uuid, RunDelta> = HashMap::new();
        let mut applied: HashSet<Uuid> = HashSet::new();
        for (run, event) in statements::started(&mut tx, &columns::started(&batch)).await? {
            deltas.entry(run).or_default().started = true;
            applied.insert(event);
        }
        statements::progress(&mut tx, &columns::progress(&batch)).await?;

        let settled =
            decide::settle(&batch, |e| plan_of(e.run_id.as_uuid()).retry_policy(e.step_id), Utc::now());
        let (results, retries) = columns::results(&settled.results);
        let ended = statements::results(&mut tx, &results).await?;
        for (run, event) in statements::retries(&mut tx, &retries).await? {
            deltas.entry(run).or_default().started = true;
            applied.insert(event);
        }
        let mut unlocks = Unlocks::default();
        let mut skips = Vec::new();
        for step in &ended {
            applied.insert(step.event);
            let plan = plan_of(step.run);
            let delta = deltas.entry(step.run).or_default();
            delta.started = true;
            let status = if step.succeeded {
                delta.succeeded += 1;
                unlocks.succeeded(step.run, &plan, step.step);
                TerminalStatus::Succeeded
            } else {
                delta.failed += 1;
                skips.extend(decide::skips(step.run, &plan, step.step));
                TerminalStatus::Failed
            };
            outcome.terminal.push(TerminalStep { plan, step: step.step, status, seconds: step.seconds });
        }

        // Unlock what the successes unblocked: count down their dependency groups, then
        // decrement the steps waiting on those that emptied (see `plan::graph`). Skip
        // everything downstream of a final failure.
        if !unlocks.groups.is_empty() || !unlocks.ranges.is_empty() || !skips.is_empty() {
            statements::plan_for_these_arrays(&mut tx).await?;
        }
        for (run, group) in statements::count_down(&mut tx, &unlocks.groups).await? {
            unlocks.emptied(run, &plan_of(run), group);
        }
        outcome.newly_queued = statements::unlock(&mut tx, &unlocks.ranges).await?;
        for (run, step) in statements::skip(&mut tx, &skips).await? {
            deltas.entry(run).or_default().skipped += 1;
            outcome.terminal.push(TerminalStep {
                plan: plan_of(run),
                step,
                status: TerminalStatus::Skipped,
                seconds: None,
            });
        }

        // Count it all into the runs, record the events, and move the runs that started
        // or ended.
        let rows = columns::event_rows(&batch, &applied);
        let recorded = statements::record(&mut tx, &deltas, &rows).await?;
        outcome.duplicates = rows.ids.len() - recorded.inserted;
        let moves: Vec<(Uuid, RunStatus)> = recorded
            .runs
            .iter()
            .filter_map(|(run, counters)| {
                let started = deltas.get(run).is_some_and(|d| d.started);
                decide::run_moves(counters, started).map(|status| (*run, status))
            })
            .collect();
        outcome.finished = statements::move_runs(&mut tx, &moves).await?;
        tx.commit().await?;
        for (run, _) in &outcome.finished {
            plans.forget(*run);
        }
        Ok(outcome)
    }

    /// The runs of `events` this store knows: those whose plan is cached, and those found.
    async fn known_runs(
        &self,
        tx: &mut sqlx::PgConnection,
        events: &[StorableEvent],
        plans: &PlanCache,
    ) -> Result<HashSet<Uuid>, StoreError> {
        let runs: HashSet<Uuid> = events.iter().map(|e| e.run_id.as_uuid()).collect();
        let (mut known, unseen): (HashSet<Uuid>, HashSet<Uuid>) =
            runs.into_iter().partition(|run| plans.contains(RunId::from_uuid(*run)));
        if !unseen.is_empty() {
            let unseen: Vec<Uuid> = unseen.into_iter().collect();
            let found: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM runs WHERE id = ANY($1)")
                .bind(&unseen)
                .fetch_all(&mut *tx)
                .await?;
            known.extend(found);
        }
        Ok(known)
    }
}

impl Store {
    /// Ends a run as failed with `reason`, failing every step not yet finished and
    /// dropping its unpublished outbox rows, in one plain statement that needs neither the
    /// run's plan nor its events. The last resort when an event of the run cannot be
    /// applied at all: the run ends instead of waiting forever. Returns whether the run was
    /// still going (a finished run is left as it is) and how many steps of each op version
    /// it failed (from `run_assets`, not the plan, which may be what cannot be read).
    pub async fn fail_run(
        &self,
        run: RunId,
        reason: &str,
        plans: &PlanCache,
    ) -> Result<FailedRun, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM outbox WHERE run_id = $1").bind(run.as_uuid()).execute(&mut *tx).await?;
        let (ended, names, versions, counts): (bool, Vec<String>, Vec<String>, Vec<i64>) = sqlx::query_as(
            "WITH failed AS (
                 UPDATE steps SET status = 'failed', error = $2, finished_at = now()
                 WHERE run_id = $1 AND status IN ('waiting', 'queued', 'running', 'retrying')
                 RETURNING asset
             ), ended AS (
                 UPDATE runs SET status = 'failed', finished_at = now(),
                                 steps_failed = steps_failed + (SELECT count(*) FROM failed)
                 WHERE id = $1 AND status IN ('queued', 'running')
                 RETURNING id
             ), announced AS (
                 SELECT id, pg_notify($3, id::text) FROM ended
             ), per_op AS (
                 SELECT a.op_name, a.op_version, count(*) AS n
                 FROM failed f JOIN run_assets a ON a.run_id = $1 AND a.idx = f.asset
                 GROUP BY a.op_name, a.op_version
             )
             SELECT (SELECT count(*) FROM announced) > 0,
                    coalesce((SELECT array_agg(op_name ORDER BY op_name, op_version) FROM per_op), '{}'),
                    coalesce((SELECT array_agg(op_version ORDER BY op_name, op_version) FROM per_op), '{}'),
                    coalesce((SELECT array_agg(n ORDER BY op_name, op_version) FROM per_op), '{}')",
        )
        .bind(run.as_uuid())
        .bind(super::storable::text(reason))
        .bind(super::RUNS_CHANNEL)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        plans.forget(run);
        let mut failed = Vec::with_capacity(names.len());
        for ((name, version), count) in names.into_iter().zip(versions).zip(counts) {
            // Counting is all these are for: an op name that no longer parses is left out.
            if let Ok(op) = format!("{name}@{version}").parse::<opflow_protocol::OpRef>() {
                failed.push((op, count.max(0) as u64));
            }
        }
        Ok(FailedRun { ended, failed })
    }
}

/// What [`Store::fail_run`] did.
#[derive(Debug, Default)]
pub struct FailedRun {
    /// The run was still going, and ended now.
    pub ended: bool,
    /// Steps it failed, per op version.
    pub failed: Vec<(opflow_protocol::OpRef, u64)>,
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use opflow_protocol::{Event, EventKind, RunId, StepId};
    use serde_json::json;

    use super::*;
    use crate::{
        plan::{self, RegisteredOp},
        store::testing::TestDb,
    };

    async fn one_step_run(db: &TestDb, retry_max: u32) -> RunId {
        let registered = [RegisteredOp { name: "noop".into(), version: "1.0.0".parse().unwrap() }];
        let source = format!(
            "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    retry: {{max: {retry_max}, backoff: 10m}}\n"
        );
        let plan = plan::compile(&source, Path::new("p.yaml"), &registered).unwrap();
        db.store.submit_run(&plan, "p.yaml", &source, None).await.unwrap().run_id
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
        let first = db.store.apply_events(std::slice::from_ref(&success), &plans).await.unwrap();
        assert_eq!(first.finished.len(), 1);
        let again = db.store.apply_events(&[success.clone(), success], &plans).await.unwrap();
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
        db.store.apply_events(&[failed], &plans).await.unwrap();
        // Attempt 1 is retried as attempt 2; a success of attempt 1 arrives late.
        let late = db.store.apply_events(&[event(run, 1, ok())], &plans).await.unwrap();
        assert!(late.finished.is_empty());
        assert_eq!(state(&db, run).await, ("retrying".into(), 2, "running".into(), 0, 0, 2, 1));
        // Not even attempt 2's result counts before attempt 2 was queued; once it is, it does.
        db.store.apply_events(&[event(run, 2, ok())], &plans).await.unwrap();
        assert_eq!(state(&db, run).await.0, "retrying");
        sqlx::query("UPDATE steps SET next_attempt_at = now() - interval '1 second' WHERE run_id = $1")
            .bind(run.as_uuid())
            .execute(db.store.pool())
            .await
            .unwrap();
        assert_eq!(db.store.release_due_retries().await.unwrap(), 1);
        db.store.apply_events(&[event(run, 2, ok())], &plans).await.unwrap();
        assert_eq!(state(&db, run).await, ("succeeded".into(), 2, "succeeded".into(), 1, 0, 4, 2));
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
            let outcome = db.store.apply_events(&batch, &PlanCache::default()).await.unwrap();
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
        db.store.apply_events(&[event(run, 1, ok())], &plans).await.unwrap();
        let op = "noop@1.0.0".parse().unwrap();
        db.store.apply_events(&[event(run, 1, EventKind::Started { op })], &plans).await.unwrap();
        assert_eq!(state(&db, run).await, ("succeeded".into(), 1, "succeeded".into(), 1, 0, 2, 1));
    }

    #[tokio::test]
    async fn failing_a_run_says_how_many_steps_of_each_op_it_failed() {
        let db = TestDb::new("fail_run_counts").await;
        let run = one_step_run(&db, 0).await;
        let plans = PlanCache::default();
        let failed = db.store.fail_run(run, "cannot apply", &plans).await.unwrap();
        assert!(failed.ended);
        assert_eq!(failed.failed, [("noop@1.0.0".parse().unwrap(), 1)]);
        let again = db.store.fail_run(run, "cannot apply", &plans).await.unwrap();
        assert!(!again.ended && again.failed.is_empty(), "{again:?}");
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
        let registered = [RegisteredOp { name: "noop".into(), version: "1.0.0".parse().unwrap() }];
        let source = "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    sweep: {k: {from: 1, to: 5000}}\n  \
                      - name: b\n    op: noop@1.0.0\n    deps: [a]\n    sweep: {j: {from: 1, to: 5000}}\n";
        let plan = plan::compile(source, Path::new("p.yaml"), &registered).unwrap();
        let run = db.store.submit_run(&plan, "p.yaml", source, None).await.unwrap().run_id;
        let plans = PlanCache::default();
        let before = step_updates(&db).await;
        let mut queued = 0;
        for chunk in (0..5000u32).collect::<Vec<_>>().chunks(500) {
            let events: Vec<StorableEvent> = chunk
                .iter()
                .map(|&s| {
                    Event::new(run, StepId(s), 1, "w", EventKind::Succeeded { output: json!(s) }).into()
                })
                .collect();
            queued += db.store.apply_events(&events, &plans).await.unwrap().newly_queued;
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
}
