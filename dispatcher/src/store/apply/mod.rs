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
    catalog::{self, CatalogColumns},
    outbox::OutboxRow,
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
    /// Steps queued (written to the outbox) by this batch: their outbox rows, for the
    /// publisher's window.
    pub queued: Vec<OutboxRow>,
    /// Steps this batch moved from queued to running: their messages left their queue.
    pub started: Vec<(RunId, StepId)>,
    /// Steps this batch gave a result (an end, or a retry): their messages left their
    /// queue, unless they were among the `started` of this or an earlier batch. (A quick
    /// step reports no start, only its result.)
    pub settled: Vec<(RunId, StepId)>,
    /// Steps this batch ended with a result (succeeded, or failed for good): what waits for
    /// an identical step (`service::reuse`) may go.
    pub ended: Vec<(RunId, StepId)>,
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

/// Applying events, as the leader's applier does (`leader.events()`): only a
/// `LeaderStore` hands it out.
#[derive(Clone, Copy)]
pub struct Events<'a> {
    /// Its pool runs the transaction; its plans are what the batch loads (`PlanCache::get`).
    pub(in crate::store) store: &'a Store,
}

impl Events<'_> {
    /// Applies `events` in one transaction; see the module docs. Runs that end here are
    /// forgotten by `plans`.
    pub async fn apply(
        &self,
        events: &[StorableEvent],
        plans: &PlanCache,
    ) -> Result<ApplyOutcome, StoreError> {
        let mut outcome = ApplyOutcome::default();
        if events.is_empty() {
            return Ok(outcome);
        }
        let mut tx = self.store.pool.begin().await?;

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
        for event in batch.iter().filter(|e| {
            matches!(
                e.kind,
                EventKind::Succeeded { .. } | EventKind::Failed { .. } | EventKind::CheckResult { .. }
            )
        }) {
            if let std::collections::hash_map::Entry::Vacant(entry) = run_plans.entry(event.run_id.as_uuid())
            {
                entry.insert(plans.get(self.store, event.run_id).await?);
            }
        }
        let plan_of = |run: Uuid| run_plans[&run].clone();

        // The guards make a duplicate change nothing, so duplicates need no filtering first.
        let mut deltas: HashMap<Uuid, RunDelta> = HashMap::new();
        let mut applied: HashSet<Uuid> = HashSet::new();
        for (run, step, event) in statements::started(&mut tx, &columns::started(&batch)).await? {
            deltas.entry(run).or_default().started = true;
            applied.insert(event);
            outcome.started.push((RunId::from_uuid(run), StepId(step as u32)));
        }
        statements::progress(&mut tx, &columns::progress(&batch)).await?;

        let blocked = blocked_successes(&mut tx, &batch, &plan_of).await?;
        let settled = decide::settle(
            &batch,
            |e| plan_of(e.run_id.as_uuid()).retry_policy(e.step_id),
            Utc::now(),
            &blocked,
        );
        let (results, retries) = columns::results(&settled.results);
        let ended = statements::results(&mut tx, &results).await?;
        for (run, step, event) in statements::retries(&mut tx, &retries).await? {
            deltas.entry(run).or_default().started = true;
            applied.insert(event);
            outcome.settled.push((RunId::from_uuid(run), StepId(step as u32)));
        }
        let mut unlocks = Unlocks::default();
        let mut skips = Vec::new();
        let mut catalog = CatalogColumns::default();
        for event in batch.iter().filter(|e| matches!(e.kind, EventKind::CheckResult { .. })) {
            catalog.check(&plan_of(event.run_id.as_uuid()), event);
        }
        let results_by_id: HashMap<Uuid, &(&Event, decide::Outcome)> =
            settled.results.iter().map(|result| (result.0.id.as_uuid(), result)).collect();
        for step in &ended {
            applied.insert(step.event);
            outcome.ended.push((RunId::from_uuid(step.run), step.step));
            let result = results_by_id.get(&step.event);
            // A step satisfied from the catalog was never published: nothing left a queue.
            let reused = result.is_some_and(|(event, _)| event.worker == catalog::REUSED_BY_DISPATCHER);
            if !reused {
                outcome.settled.push((RunId::from_uuid(step.run), step.step));
            }
            let plan = plan_of(step.run);
            let delta = deltas.entry(step.run).or_default();
            delta.started = true;
            delta.reused += i32::from(reused && step.succeeded);
            let status = if step.succeeded {
                delta.succeeded += 1;
                unlocks.succeeded(step.run, &plan, step.step);
                if let Some((event, _)) = result {
                    catalog.succeeded(step.run, &plan, step.step, event);
                }
                TerminalStatus::Succeeded
            } else {
                delta.failed += 1;
                skips.extend(decide::skips(step.run, &plan, step.step));
                if let Some((_, decide::Outcome::Failed { error })) = result {
                    catalog.failed(step.run, &plan, step.step, error);
                }
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
        outcome.queued = statements::unlock(&mut tx, &unlocks.ranges).await?;
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
        // After the events: a materialization carries its attempt's `materialized` events.
        catalog::record(&mut tx, &catalog).await?;
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
        let mut tx = self.store.pool.begin().await?;
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

/// The batch's successes that a failed blocking check fails ([`decide::blocked`]): the
/// failed checks of their attempts are read from the batch and from `events` (a worker
/// reports a check before the result, maybe in an earlier batch). No query when no success
/// of the batch has a blocking check.
async fn blocked_successes(
    tx: &mut sqlx::PgConnection,
    batch: &[&Event],
    plan_of: &impl Fn(Uuid) -> Arc<RunPlan>,
) -> Result<HashMap<Uuid, String>, StoreError> {
    let guarded: Vec<&Event> = batch
        .iter()
        .filter(|e| {
            matches!(e.kind, EventKind::Succeeded { .. })
                && plan_of(e.run_id.as_uuid()).blocking_checks(e.step_id).next().is_some()
        })
        .copied()
        .collect();
    if guarded.is_empty() {
        return Ok(HashMap::new());
    }
    let mut failed: Vec<decide::FailedCheck> =
        batch.iter().filter_map(|e| decide::FailedCheck::of(e)).collect();
    failed.extend(statements::failed_checks(tx, &guarded).await?);
    Ok(decide::blocked(&guarded, |e, name| plan_of(e.run_id.as_uuid()).is_blocking(e.step_id, name), &failed))
}

/// What [`Store::fail_run`] did.
#[derive(Debug, Default)]
pub struct FailedRun {
    /// The run was still going, and ended now.
    pub ended: bool,
    /// Steps it failed, per op version.
    pub failed: Vec<(opflow_protocol::OpRef, u64)>,
}
