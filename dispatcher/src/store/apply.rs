//! Applying worker events to the run store, a batch per transaction.
//!
//! Idempotence comes from two guards on every transition: the event's `attempt` must be
//! the step's current attempt, and the step must be in a state the transition starts
//! from (`queued` → `running`; `queued`/`running` → `succeeded`/`failed`/`retrying`). A
//! duplicate, a late event from an attempt that was already retried, or an event after
//! the step finished therefore matches no row and changes nothing. Because of the same
//! guards the kinds can be applied in bulk, one statement each, whatever their order in
//! the batch. Every event is also appended to `events` once (keyed by its id), after the
//! transitions, with `applied` saying whether it changed its step: each row is written once.
//!
//! Every step this batch moved to a terminal state (succeeded, failed for good, skipped)
//! is listed in [`ApplyOutcome::terminal`], taken from the rows the guarded statements
//! changed (their `RETURNING`), never from the events: a duplicate or late event that
//! changed nothing is not listed, so the metrics counting them (`api::metrics`) count each
//! step once. Its op version comes from the run's cached plan ([`RunPlan::op`]), which the
//! batch loads anyway to unlock and skip, so no query is added for it.
//!
//! A success unlocks downstream steps by decrementing their `pending_upstream`; the step
//! whose count reaches zero is queued and written to the outbox in the same statement. A
//! final failure skips every step downstream of it. A run ends when all its steps are
//! succeeded, failed or skipped.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use chrono::{DateTime, Utc};
use opflow_protocol::{Event, EventKind, RunId, StepId};
use serde_json::Value;
use uuid::Uuid;

use super::{
    Store, StoreError,
    run_plan::{DepGroup, PlanCache, RunPlan, StepRange, Unlock, UnlockMode},
    runs::RunStatus,
    storable::StorableEvent,
};
use crate::plan::retry::retry_delay;

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

/// A step row a guarded statement moved to a terminal state: run, step, and how long its
/// attempt ran (see [`TerminalStep::seconds`]).
type Finished = (Uuid, StepId, Option<f64>);

/// Per-run changes to the counters on `runs`.
#[derive(Debug, Default, Clone, Copy)]
struct RunDelta {
    succeeded: i32,
    failed: i32,
    skipped: i32,
    started: bool,
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

        // Runs whose plan is cached are known; only the others are looked up.
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
        let mut candidates: Vec<&Event> = Vec::with_capacity(events.len());
        for (position, event) in events.iter().enumerate() {
            if known.contains(&event.run_id.as_uuid()) {
                candidates.push(event);
            } else {
                outcome.unknown_run.push(position);
            }
        }

        // The guards make a duplicate change nothing, so duplicates need no filtering first.
        let mut deltas: HashMap<Uuid, RunDelta> = HashMap::new();
        let mut applied: HashSet<Uuid> = HashSet::new();
        apply_started(&mut tx, &candidates, &mut deltas, &mut applied).await?;
        apply_progress(&mut tx, &candidates).await?;
        let succeeded = apply_succeeded(&mut tx, &candidates, &mut deltas, &mut applied).await?;
        let failed = apply_failed(&mut tx, &candidates, plans, self, &mut deltas, &mut applied).await?;
        for (rows, status) in [(&succeeded, TerminalStatus::Succeeded), (&failed, TerminalStatus::Failed)] {
            for &(run, step, seconds) in rows {
                let plan = plans.get(self, RunId::from_uuid(run)).await?;
                outcome.terminal.push(TerminalStep { plan, step, status, seconds });
            }
        }

        // Unlock what the successes unblocked: count down their dependency groups, and
        // decrement the steps waiting on the groups that emptied (see `plan::graph`).
        let mut unlocks: BTreeMap<(Uuid, StepRange), i32> = BTreeMap::new();
        let mut groups: BTreeMap<(Uuid, DepGroup), i32> = BTreeMap::new();
        for (run, step, _) in &succeeded {
            let plan = plans.get(self, RunId::from_uuid(*run)).await?;
            match plan.mode() {
                UnlockMode::Groups => {
                    for unlock in plan.unlocks(*step) {
                        match unlock {
                            Unlock::Range(range) => *unlocks.entry((*run, range)).or_default() += 1,
                            Unlock::Group(group) => *groups.entry((*run, group)).or_default() += 1,
                        }
                    }
                }
                UnlockMode::Steps => {
                    for range in plan.downstream_ranges(*step) {
                        *unlocks.entry((*run, range)).or_default() += 1;
                    }
                }
            }
        }
        // Once per transaction, before the first statement that joins ranges or groups.
        let planned_for_arrays = !groups.is_empty() || !unlocks.is_empty();
        if planned_for_arrays {
            plan_for_these_arrays(&mut tx).await?;
        }
        for (run, group) in count_down(&mut tx, &groups).await? {
            let plan = plans.get(self, RunId::from_uuid(run)).await?;
            for range in plan.group_ranges(group) {
                *unlocks.entry((run, range)).or_default() += 1;
            }
        }
        outcome.newly_queued = unlock(&mut tx, &unlocks).await?;

        // Skip everything downstream of a final failure.
        let mut skips: Vec<(Uuid, StepRange, String)> = Vec::new();
        for (run, step, _) in &failed {
            let plan = plans.get(self, RunId::from_uuid(*run)).await?;
            let reason = format!("skipped: upstream step {} failed", plan.label(*step));
            skips.extend(plan.skip_ranges(*step).into_iter().map(|range| (*run, range, reason.clone())));
        }
        if !skips.is_empty() && !planned_for_arrays {
            plan_for_these_arrays(&mut tx).await?;
        }
        for (run, step) in skip(&mut tx, &skips).await? {
            deltas.entry(run).or_default().skipped += 1;
            let plan = plans.get(self, RunId::from_uuid(run)).await?;
            outcome.terminal.push(TerminalStep {
                plan,
                step,
                status: TerminalStatus::Skipped,
                seconds: None,
            });
        }

        let recorded = record(&mut tx, &deltas, &candidates, &applied).await?;
        outcome.finished = recorded.finished;
        outcome.duplicates = recorded.events - recorded.inserted;
        tx.commit().await?;
        for (run, _) in &outcome.finished {
            plans.forget(*run);
        }
        Ok(outcome)
    }
}

/// For `benches/apply.rs` only, not an API: the pure part of applying a batch, grouping
/// `events` into the columns the bulk statements of [`Store::apply_events`] bind (`started`,
/// progress, `succeeded`, and the `events` insert with every event flagged as applied), by
/// the same functions. Failures are left out: grouping them needs each run's retry policy,
/// which comes from the store.
#[doc(hidden)]
pub fn bench_columns(events: &[StorableEvent]) -> impl Sized {
    let events: Vec<&Event> = events.iter().map(|e| &**e).collect();
    let applied: HashSet<Uuid> = events.iter().map(|e| e.id.as_uuid()).collect();
    let recorded: Vec<&Event> =
        events.iter().copied().filter(|e| !matches!(e.kind, EventKind::Heartbeat)).collect();
    (
        started_columns(&events),
        progress_columns(&events),
        succeeded_columns(&events),
        event_rows(&recorded, &applied),
    )
}

/// The columns of the `events` insert, one row per event (pure; see [`bench_columns`]).
struct EventRows {
    ids: Vec<Uuid>,
    runs: Vec<Uuid>,
    steps: Vec<i32>,
    attempts: Vec<i32>,
    kinds: Vec<String>,
    bodies: Vec<Value>,
    workers: Vec<String>,
    ats: Vec<DateTime<Utc>>,
    flags: Vec<bool>,
}

fn event_rows(events: &[&Event], applied: &HashSet<Uuid>) -> EventRows {
    let mut ids = Vec::with_capacity(events.len());
    let mut runs = Vec::with_capacity(events.len());
    let mut steps = Vec::with_capacity(events.len());
    let mut attempts = Vec::with_capacity(events.len());
    let mut kinds = Vec::with_capacity(events.len());
    let mut bodies = Vec::with_capacity(events.len());
    let mut workers = Vec::with_capacity(events.len());
    let mut ats = Vec::with_capacity(events.len());
    let mut flags = Vec::with_capacity(events.len());
    for e in events {
        ids.push(e.id.as_uuid());
        runs.push(e.run_id.as_uuid());
        steps.push(e.step_id.0 as i32);
        attempts.push(e.attempt as i32);
        kinds.push(e.kind.name().to_owned());
        bodies.push(serde_json::to_value(&e.kind).unwrap_or(Value::Null));
        workers.push(e.worker.clone());
        ats.push(e.at);
        flags.push(applied.contains(&e.id.as_uuid()));
    }
    EventRows { ids, runs, steps, attempts, kinds, bodies, workers, ats, flags }
}

/// Columns shared by the per-kind bulk statements.
#[derive(Default)]
struct StepColumns {
    ids: Vec<Uuid>,
    runs: Vec<Uuid>,
    steps: Vec<i32>,
    attempts: Vec<i32>,
    ats: Vec<DateTime<Utc>>,
    workers: Vec<String>,
    /// When the attempt started, as its result says.
    started_ats: Vec<Option<DateTime<Utc>>>,
}

impl StepColumns {
    fn push(&mut self, e: &Event) {
        self.ids.push(e.id.as_uuid());
        self.runs.push(e.run_id.as_uuid());
        self.steps.push(e.step_id.0 as i32);
        self.attempts.push(e.attempt as i32);
        self.ats.push(e.at);
        self.workers.push(e.worker.clone());
        self.started_ats.push(e.started_at);
    }

    fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }
}

/// The columns of the `started` statement: the batch's `started` events.
fn started_columns(events: &[&Event]) -> StepColumns {
    let mut cols = StepColumns::default();
    for e in events.iter().filter(|e| matches!(e.kind, EventKind::Started { .. })) {
        cols.push(e);
    }
    cols
}

async fn apply_started(
    tx: &mut sqlx::PgConnection,
    events: &[&Event],
    deltas: &mut HashMap<Uuid, RunDelta>,
    applied: &mut HashSet<Uuid>,
) -> Result<(), StoreError> {
    let cols = started_columns(events);
    if cols.is_empty() {
        return Ok(());
    }
    let started: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "UPDATE steps s SET status = 'running', started_at = u.at, worker = u.worker
         FROM UNNEST($1::uuid[], $2::int[], $3::int[], $4::timestamptz[], $5::text[], $6::uuid[])
              AS u(run_id, step_id, attempt, at, worker, event_id)
         WHERE s.run_id = u.run_id AND s.id = u.step_id AND s.attempt = u.attempt AND s.status = 'queued'
         RETURNING s.run_id, u.event_id",
    )
    .bind(&cols.runs)
    .bind(&cols.steps)
    .bind(&cols.attempts)
    .bind(&cols.ats)
    .bind(&cols.workers)
    .bind(&cols.ids)
    .fetch_all(&mut *tx)
    .await?;
    for (run, event) in started {
        deltas.entry(run).or_default().started = true;
        applied.insert(event);
    }
    Ok(())
}

/// The newest progress of one step attempt within a batch.
struct LatestProgress<'a> {
    event: &'a Event,
    fraction: Option<f64>,
    message: Option<&'a str>,
}

/// The columns of the progress statement: the latest progress (or heartbeat) of each step
/// attempt in the batch, its fraction and its message.
fn progress_columns(events: &[&Event]) -> (StepColumns, Vec<Option<f32>>, Vec<Option<String>>) {
    let mut latest: HashMap<(Uuid, u32, u32), LatestProgress> = HashMap::new();
    for e in events {
        let (fraction, message) = match &e.kind {
            EventKind::Progress { fraction, message } => (Some(*fraction), message.as_deref()),
            EventKind::Heartbeat => (None, None),
            _ => continue,
        };
        let key = (e.run_id.as_uuid(), e.step_id.0, e.attempt);
        let entry = latest.entry(key).or_insert(LatestProgress { event: e, fraction, message });
        if e.at >= entry.event.at {
            *entry = LatestProgress {
                event: e,
                fraction: fraction.or(entry.fraction),
                message: message.or(entry.message),
            };
        }
    }
    let mut cols = StepColumns::default();
    let mut fractions: Vec<Option<f32>> = Vec::with_capacity(latest.len());
    let mut messages: Vec<Option<String>> = Vec::with_capacity(latest.len());
    for latest in latest.values() {
        cols.push(latest.event);
        fractions.push(latest.fraction.map(|f| f as f32));
        messages.push(latest.message.map(str::to_owned));
    }
    (cols, fractions, messages)
}

/// Progress and heartbeats: the latest of each step's events in the batch wins.
async fn apply_progress(tx: &mut sqlx::PgConnection, events: &[&Event]) -> Result<(), StoreError> {
    let (cols, fractions, messages) = progress_columns(events);
    if cols.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE steps s SET progress = coalesce(u.fraction, s.progress),
                            progress_message = coalesce(u.message, s.progress_message),
                            heartbeat_at = greatest(s.heartbeat_at, u.at)
         FROM UNNEST($1::uuid[], $2::int[], $3::int[], $4::timestamptz[], $5::real[], $6::text[])
              AS u(run_id, step_id, attempt, at, fraction, message)
         WHERE s.run_id = u.run_id AND s.id = u.step_id AND s.attempt = u.attempt
           AND s.status IN ('queued', 'running')",
    )
    .bind(&cols.runs)
    .bind(&cols.steps)
    .bind(&cols.attempts)
    .bind(&cols.ats)
    .bind(&fractions)
    .bind(&messages)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The columns of the `succeeded` statement: the batch's successes and their outputs.
fn succeeded_columns(events: &[&Event]) -> (StepColumns, Vec<Value>) {
    let mut cols = StepColumns::default();
    let mut outputs = Vec::new();
    for e in events {
        if let EventKind::Succeeded { output } = &e.kind {
            cols.push(e);
            outputs.push(output.clone());
        }
    }
    (cols, outputs)
}

/// Marks steps succeeded; returns the steps that changed.
async fn apply_succeeded(
    tx: &mut sqlx::PgConnection,
    events: &[&Event],
    deltas: &mut HashMap<Uuid, RunDelta>,
    applied: &mut HashSet<Uuid>,
) -> Result<Vec<Finished>, StoreError> {
    let (cols, outputs) = succeeded_columns(events);
    if cols.is_empty() {
        return Ok(Vec::new());
    }
    // Two successes of one step in a batch join the same row; PostgreSQL updates it once,
    // with one of them, and RETURNING names that one.
    let rows: Vec<(Uuid, i32, Uuid, Option<f64>)> = sqlx::query_as(
        "UPDATE steps s SET status = 'succeeded', output = u.output, output_bytes = octet_length(u.output::text),
                            finished_at = u.at, progress = 1,
                            worker = u.worker, error = NULL,
                            started_at = coalesce(u.started_at, s.started_at, u.at)
         FROM UNNEST($1::uuid[], $2::int[], $3::int[], $4::timestamptz[], $5::text[], $6::jsonb[], $7::uuid[],
                     $8::timestamptz[])
              AS u(run_id, step_id, attempt, at, worker, output, event_id, started_at)
         WHERE s.run_id = u.run_id AND s.id = u.step_id AND s.attempt = u.attempt
           AND s.status IN ('queued', 'running')
         RETURNING s.run_id, s.id, u.event_id,
                   -- How long the attempt ran, if a worker said when it started.
                   CASE WHEN u.started_at IS NOT NULL
                        THEN extract(epoch FROM s.finished_at - s.started_at)::float8 END",
    )
    .bind(&cols.runs)
    .bind(&cols.steps)
    .bind(&cols.attempts)
    .bind(&cols.ats)
    .bind(&cols.workers)
    .bind(&outputs)
    .bind(&cols.ids)
    .bind(&cols.started_ats)
    .fetch_all(&mut *tx)
    .await?;
    applied.extend(rows.iter().map(|(_, _, event, _)| *event));
    for (run, _, _, _) in &rows {
        let delta = deltas.entry(*run).or_default();
        delta.succeeded += 1;
        delta.started = true;
    }
    Ok(rows.into_iter().map(|(run, step, _, seconds)| (run, StepId(step as u32), seconds)).collect())
}

/// Schedules retries or fails steps for good; returns the steps that failed for good. A retryable failure of attempt `n` is retried while `n <= max_retries`.
async fn apply_failed(
    tx: &mut sqlx::PgConnection,
    events: &[&Event],
    plans: &PlanCache,
    store: &Store,
    deltas: &mut HashMap<Uuid, RunDelta>,
    applied: &mut HashSet<Uuid>,
) -> Result<Vec<Finished>, StoreError> {
    let mut retry = StepColumns::default();
    let mut retry_at = Vec::new();
    let mut retry_errors = Vec::new();
    let mut fail = StepColumns::default();
    let mut fail_errors = Vec::new();
    for e in events {
        let EventKind::Failed { error, retryable } = &e.kind else {
            continue;
        };
        let plan = plans.get(store, e.run_id).await?;
        let policy = plan.retry_policy(e.step_id);
        if *retryable && e.attempt <= policy.max_retries {
            let delay = retry_delay(policy.backoff, e.attempt);
            retry.push(e);
            retry_at.push(retry_time(Utc::now(), delay));
            retry_errors.push(format!("attempt {} failed: {error}", e.attempt));
        } else {
            fail.push(e);
            let why = if *retryable {
                format!("failed after {} attempts; last error: {error}", e.attempt)
            } else {
                format!("failed (not retryable) on attempt {}: {error}", e.attempt)
            };
            fail_errors.push(why);
        }
    }
    if !retry.is_empty() {
        let rows: Vec<(Uuid, Uuid)> = sqlx::query_as(
            "UPDATE steps s SET status = 'retrying', attempt = s.attempt + 1, next_attempt_at = u.next_at,
                                error = u.error, progress = NULL, progress_message = NULL
             FROM UNNEST($1::uuid[], $2::int[], $3::int[], $4::timestamptz[], $5::text[], $6::uuid[])
                  AS u(run_id, step_id, attempt, next_at, error, event_id)
             WHERE s.run_id = u.run_id AND s.id = u.step_id AND s.attempt = u.attempt
               AND s.status IN ('queued', 'running')
             RETURNING s.run_id, u.event_id",
        )
        .bind(&retry.runs)
        .bind(&retry.steps)
        .bind(&retry.attempts)
        .bind(&retry_at)
        .bind(&retry_errors)
        .bind(&retry.ids)
        .fetch_all(&mut *tx)
        .await?;
        applied.extend(rows.iter().map(|(_, event)| *event));
        for (run, _) in rows {
            deltas.entry(run).or_default().started = true;
        }
    }
    if fail.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<(Uuid, i32, Uuid, Option<f64>)> = sqlx::query_as(
        "UPDATE steps s SET status = 'failed', error = u.error, finished_at = u.at, worker = u.worker,
                            started_at = coalesce(u.started_at, s.started_at, u.at)
         FROM UNNEST($1::uuid[], $2::int[], $3::int[], $4::timestamptz[], $5::text[], $6::text[], $7::uuid[],
                     $8::timestamptz[])
              AS u(run_id, step_id, attempt, at, worker, error, event_id, started_at)
         WHERE s.run_id = u.run_id AND s.id = u.step_id AND s.attempt = u.attempt
           AND s.status IN ('queued', 'running')
         RETURNING s.run_id, s.id, u.event_id,
                   -- How long the attempt ran, if a worker said when it started.
                   CASE WHEN u.started_at IS NOT NULL
                        THEN extract(epoch FROM s.finished_at - s.started_at)::float8 END",
    )
    .bind(&fail.runs)
    .bind(&fail.steps)
    .bind(&fail.attempts)
    .bind(&fail.ats)
    .bind(&fail.workers)
    .bind(&fail_errors)
    .bind(&fail.ids)
    .bind(&fail.started_ats)
    .fetch_all(&mut *tx)
    .await?;
    applied.extend(rows.iter().map(|(_, _, event, _)| *event));
    for (run, _, _, _) in &rows {
        let delta = deltas.entry(*run).or_default();
        delta.failed += 1;
        delta.started = true;
    }
    Ok(rows.into_iter().map(|(run, step, _, seconds)| (run, StepId(step as u32), seconds)).collect())
}

/// When a retry `delay` from `now` is due. Delays are capped (`retry::MAX_RETRY_DELAY`), so
/// the fallback for an unrepresentable time only guards against a future change of cap.
fn retry_time(now: DateTime<Utc>, delay: std::time::Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(delay)
        .ok()
        .and_then(|delay| now.checked_add_signed(delay))
        .unwrap_or(now + chrono::Duration::hours(1))
}

impl Store {
    /// Why a worker last gave up on this step attempt without a result (an `abandoned`
    /// event), if one did: it explains a later dead-letter.
    pub async fn last_abandon_reason(
        &self,
        message: &opflow_protocol::StepMessage,
    ) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT body->'abandoned'->>'reason' FROM events
             WHERE run_id = $1 AND step_id = $2 AND attempt = $3 AND kind = 'abandoned'
             ORDER BY at DESC LIMIT 1",
        )
        .bind(message.run_id.as_uuid())
        .bind(message.step_id.0 as i32)
        .bind(message.attempt as i32)
        .fetch_optional(&self.pool)
        .await?
        .flatten())
    }
}

/// Has the statements after it in this transaction planned for their own arrays: called
/// once, before the first of the statements that join a batch's *ranges* to `steps` (unlock, skip) or its
/// groups to `dep_groups` (count-down). A cached generic plan cannot know how few ranges
/// a batch names, estimates each `BETWEEN` to match a share of the whole table, and so
/// hash-joined every chain link to a full scan of its run's steps, which grows with the
/// run: a 10,000-step chain spent 1.8–2.6 ms of each link there and cost twice the
/// 200-step chain per link (docs/benchmarks.md, w2). A custom plan sees the arrays and
/// probes the primary key. The per-event statements before them keep their cached plans,
/// so a batch with nothing to unlock (a sweep) plans nothing.
async fn plan_for_these_arrays(tx: &mut sqlx::PgConnection) -> Result<(), StoreError> {
    sqlx::query("SET LOCAL plan_cache_mode = force_custom_plan").execute(&mut *tx).await?;
    Ok(())
}

/// Counts the groups down by their successes; returns the groups that emptied.
async fn count_down(
    tx: &mut sqlx::PgConnection,
    groups: &BTreeMap<(Uuid, DepGroup), i32>,
) -> Result<Vec<(Uuid, DepGroup)>, StoreError> {
    if groups.is_empty() {
        return Ok(Vec::new());
    }
    let (mut runs, mut upstream, mut parts, mut counts) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((run, group), count) in groups {
        runs.push(*run);
        upstream.push(group.upstream as i32);
        parts.push(group.partition);
        counts.push(*count);
    }
    let emptied: Vec<(Uuid, i32, i32)> = sqlx::query_as(
        "UPDATE dep_groups g SET remaining = g.remaining - d.k
         FROM UNNEST($1::uuid[], $2::int[], $3::int[], $4::int[]) AS d(run_id, upstream, part, k)
         WHERE g.run_id = d.run_id AND g.upstream = d.upstream AND g.part = d.part
         RETURNING g.run_id, g.upstream, g.part, g.remaining = 0",
    )
    .bind(&runs)
    .bind(&upstream)
    .bind(&parts)
    .bind(&counts)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .filter_map(|(run, upstream, part, emptied): (Uuid, i32, i32, bool)| {
        emptied.then_some((run, upstream, part))
    })
    .collect();
    Ok(emptied
        .into_iter()
        .map(|(run, upstream, part)| (run, DepGroup { upstream: upstream as u32, partition: part }))
        .collect())
}

/// Decrements `pending_upstream` over each range by its count, queues the steps that reach
/// zero and writes them to the outbox. Returns how many were queued.
async fn unlock(
    tx: &mut sqlx::PgConnection,
    unlocks: &BTreeMap<(Uuid, StepRange), i32>,
) -> Result<u64, StoreError> {
    if unlocks.is_empty() {
        return Ok(0);
    }
    let (mut runs, mut firsts, mut lasts, mut counts) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((run, range), count) in unlocks {
        runs.push(*run);
        firsts.push(range.first as i32);
        lasts.push(range.last as i32);
        counts.push(*count);
    }
    let queued: i64 = sqlx::query_scalar(
        "WITH d AS (
             SELECT s.run_id, s.id, sum(d.k)::int AS k
             FROM UNNEST($1::uuid[], $2::int[], $3::int[], $4::int[]) AS d(run_id, lo, hi, k)
             JOIN steps s ON s.run_id = d.run_id AND s.id BETWEEN d.lo AND d.hi
             GROUP BY s.run_id, s.id
         ), unlocked AS (
             UPDATE steps s
             SET pending_upstream = s.pending_upstream - d.k,
                 status = CASE WHEN s.pending_upstream = d.k AND s.status = 'waiting'
                               THEN 'queued'::step_status ELSE s.status END,
                 queued_at = CASE WHEN s.pending_upstream = d.k AND s.status = 'waiting'
                                  THEN now() ELSE s.queued_at END
             FROM d
             WHERE s.run_id = d.run_id AND s.id = d.id
             RETURNING s.run_id, s.id, s.attempt, s.status, s.pending_upstream
         ), queued AS (
             INSERT INTO outbox (run_id, step_id, attempt)
             SELECT run_id, id, attempt FROM unlocked WHERE pending_upstream = 0 AND status = 'queued'
             ORDER BY run_id, id
             RETURNING 1
         )
         SELECT count(*) FROM queued",
    )
    .bind(&runs)
    .bind(&firsts)
    .bind(&lasts)
    .bind(&counts)
    .fetch_one(&mut *tx)
    .await?;
    Ok(queued as u64)
}

/// Skips waiting steps in the given ranges; returns every skipped step.
async fn skip(
    tx: &mut sqlx::PgConnection,
    skips: &[(Uuid, StepRange, String)],
) -> Result<Vec<(Uuid, StepId)>, StoreError> {
    if skips.is_empty() {
        return Ok(Vec::new());
    }
    let (mut runs, mut firsts, mut lasts, mut reasons) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (run, range, reason) in skips {
        runs.push(*run);
        firsts.push(range.first as i32);
        lasts.push(range.last as i32);
        reasons.push(reason.clone());
    }
    let skipped: Vec<(Uuid, i32)> = sqlx::query_as(
        "UPDATE steps s SET status = 'skipped', finished_at = now(), error = r.reason
         FROM UNNEST($1::uuid[], $2::int[], $3::int[], $4::text[]) AS r(run_id, lo, hi, reason)
         WHERE s.run_id = r.run_id AND s.id BETWEEN r.lo AND r.hi AND s.status = 'waiting'
         RETURNING s.run_id, s.id",
    )
    .bind(&runs)
    .bind(&firsts)
    .bind(&lasts)
    .bind(&reasons)
    .fetch_all(&mut *tx)
    .await?;
    Ok(skipped.into_iter().map(|(run, step)| (run, StepId(step as u32))).collect())
}

/// What [`record`] did.
struct Recorded {
    /// Runs that ended with this batch.
    finished: Vec<(RunId, RunStatus)>,
    /// Events meant to be recorded (all but heartbeats), and how many of them were new.
    events: usize,
    inserted: usize,
}

/// The batch's last statement, on each run it touched: adds its counts to the run, marks
/// it running, ends it when its steps are all done, numbers its events and appends those
/// not recorded before (each flagged with whether it took effect). One statement, so the
/// run's row is updated once per batch, not once for its counters and again for its
/// event numbers.
///
/// Each run's `event_seq` is bumped by its number of events and the events numbered after
/// the old value, in batch order. The bump locks the run's row until commit, so a reader
/// sees a run's numbers appear in order (migration 0011). A duplicate (same id, already
/// recorded) leaves a gap, which readers never rely on. Runs that ended are announced on
/// `RUNS_CHANNEL`, runs whose events were recorded on `EVENTS_CHANNEL` (for the events
/// stream). A run ended here has `finished_at` = this transaction's `now()`.
///
/// Heartbeats are not recorded: they only move `steps.heartbeat_at`, so a long step does
/// not add a row every few seconds.
async fn record(
    tx: &mut sqlx::PgConnection,
    deltas: &HashMap<Uuid, RunDelta>,
    events: &[&Event],
    applied: &HashSet<Uuid>,
) -> Result<Recorded, StoreError> {
    let events: Vec<&Event> =
        events.iter().copied().filter(|e| !matches!(e.kind, EventKind::Heartbeat)).collect();
    if deltas.is_empty() && events.is_empty() {
        return Ok(Recorded { finished: Vec::new(), events: 0, inserted: 0 });
    }
    let (mut runs, mut succeeded, mut failed, mut skipped, mut started) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (run, d) in deltas {
        runs.push(*run);
        succeeded.push(d.succeeded);
        failed.push(d.failed);
        skipped.push(d.skipped);
        started.push(d.started);
    }
    let EventRows { ids, runs: event_runs, steps, attempts, kinds, bodies, workers, ats, flags } =
        event_rows(&events, applied);
    let rows: Vec<(Option<Uuid>, Option<RunStatus>, Option<i64>)> = sqlx::query_as(
        "WITH d AS (
             SELECT * FROM UNNEST($1::uuid[], $2::int[], $3::int[], $4::int[], $5::bool[])
                 AS d(run_id, succeeded, failed, skipped, started)
         ), e AS (
             SELECT * FROM UNNEST($6::uuid[], $7::uuid[], $8::int[], $9::int[], $10::text[], $11::jsonb[],
                                  $12::text[], $13::timestamptz[], $14::bool[])
                 WITH ORDINALITY AS e(id, run_id, step_id, attempt, kind, body, worker, at, applied, ord)
         ), counts AS (
             SELECT run_id, count(*)::int AS n FROM e GROUP BY run_id
         ), u AS (
             SELECT coalesce(d.run_id, c.run_id) AS run_id,
                    coalesce(d.succeeded, 0) AS succeeded, coalesce(d.failed, 0) AS failed,
                    coalesce(d.skipped, 0) AS skipped, coalesce(d.started, false) AS started,
                    coalesce(c.n, 0) AS n
             FROM d FULL JOIN counts c ON c.run_id = d.run_id
         ), changed AS (
             UPDATE runs r
             SET steps_succeeded = r.steps_succeeded + u.succeeded,
                 steps_failed = r.steps_failed + u.failed,
                 steps_skipped = r.steps_skipped + u.skipped,
                 status = CASE
                     WHEN r.status IN ('queued', 'running')
                          AND r.steps_succeeded + u.succeeded + r.steps_failed + u.failed
                              + r.steps_skipped + u.skipped = r.steps_total
                     THEN CASE WHEN r.steps_failed + u.failed > 0 THEN 'failed'::run_status
                               ELSE 'succeeded'::run_status END
                     WHEN r.status = 'queued' AND u.started THEN 'running'::run_status
                     ELSE r.status END,
                 started_at = CASE WHEN r.started_at IS NULL AND u.started THEN now() ELSE r.started_at END,
                 finished_at = CASE
                     WHEN r.status IN ('queued', 'running')
                          AND r.steps_succeeded + u.succeeded + r.steps_failed + u.failed
                              + r.steps_skipped + u.skipped = r.steps_total
                     THEN now() ELSE r.finished_at END,
                 event_seq = r.event_seq + u.n
             FROM u
             WHERE r.id = u.run_id
             RETURNING r.id, r.status, r.finished_at = now() AS ended, r.event_seq - u.n AS base, u.n
         ), ended AS (
             -- A volatile output is never pruned: each ended run is announced once.
             SELECT id, status, pg_notify($15, id::text) AS announced FROM changed WHERE ended
         ), events_announced AS (
             SELECT pg_notify($16, CASE WHEN count(*) <= 100 THEN string_agg(id::text, ',') ELSE '' END)
             FROM changed WHERE n > 0 HAVING count(*) > 0
         ), inserted AS (
             INSERT INTO events (id, run_id, step_id, attempt, kind, body, worker, at, applied, seq)
             SELECT e.id, e.run_id, e.step_id, e.attempt, e.kind, e.body, e.worker, e.at, e.applied,
                    b.base + row_number() OVER (PARTITION BY e.run_id ORDER BY e.ord)
             FROM e JOIN changed b ON b.id = e.run_id
             -- Referenced so that it runs (a SELECT in WITH runs only when used).
             WHERE (SELECT count(*) FROM events_announced) >= 0
             ON CONFLICT (id) DO NOTHING
             RETURNING 1
         )
         SELECT id, status, NULL::bigint FROM ended
         UNION ALL
         SELECT NULL::uuid, NULL::run_status, count(*) FROM inserted",
    )
    .bind(&runs)
    .bind(&succeeded)
    .bind(&failed)
    .bind(&skipped)
    .bind(&started)
    .bind(&ids)
    .bind(&event_runs)
    .bind(&steps)
    .bind(&attempts)
    .bind(&kinds)
    .bind(&bodies)
    .bind(&workers)
    .bind(&ats)
    .bind(&flags)
    .bind(super::RUNS_CHANNEL)
    .bind(super::EVENTS_CHANNEL)
    .fetch_all(&mut *tx)
    .await?;
    let mut recorded = Recorded { finished: Vec::new(), events: events.len(), inserted: 0 };
    for row in rows {
        match row {
            (Some(run), Some(status), _) => recorded.finished.push((RunId::from_uuid(run), status)),
            (_, _, Some(inserted)) => recorded.inserted = inserted as usize,
            _ => {}
        }
    }
    Ok(recorded)
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

    #[test]
    fn a_batch_is_grouped_into_the_columns_its_statements_bind() {
        let run = RunId::new();
        let at = |step, kind| Event::new(run, StepId(step), 1, "w", kind);
        let started = at(0, EventKind::Started { op: "noop@1.0.0".parse().unwrap() });
        let progress = at(1, EventKind::Progress { fraction: 0.5, message: Some("half".into()) });
        let mut heartbeat = at(1, EventKind::Heartbeat);
        heartbeat.at = progress.at + chrono::Duration::seconds(1);
        let succeeded = at(2, EventKind::Succeeded { output: json!({"x": 1}) });
        let log = at(3, EventKind::Log { level: opflow_protocol::LogLevel::Info, message: "hi".into() });
        let batch = [&started, &progress, &heartbeat, &succeeded, &log];

        assert_eq!(started_columns(&batch).steps, [0]);
        // The heartbeat is later and wins, keeping the progress's fraction and message.
        let (cols, fractions, messages) = progress_columns(&batch);
        assert_eq!((cols.steps, cols.ats), (vec![1], vec![heartbeat.at]));
        assert_eq!((fractions, messages), (vec![Some(0.5)], vec![Some("half".to_owned())]));
        let (cols, outputs) = succeeded_columns(&batch);
        assert_eq!((cols.steps, outputs), (vec![2], vec![json!({"x": 1})]));
        let applied = HashSet::from([succeeded.id.as_uuid()]);
        let rows = event_rows(&[&started, &succeeded, &log], &applied);
        assert_eq!(rows.kinds, ["started", "succeeded", "log"]);
        assert_eq!(rows.flags, [false, true, false]);
        assert_eq!(rows.bodies[1], serde_json::to_value(&succeeded.kind).unwrap());
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
