//! The leader's scheduler: submits each schedule's due ticks, once each. Every second (or
//! sooner, when a tick is due sooner), it takes the schedules with a tick due or a tick
//! buffered, and for each: submits the oldest buffered tick once nothing of the schedule
//! runs, then decides its due ticks in order (`schedules::decide`): submitted, buffered,
//! canceled-then-submitted or skipped; ticks older than the catch-up window are skipped
//! as one range.
//!
//! A schedule triggered by the catalog (`on: stale`, `on: upstream_materialized`) is
//! looked at each second instead: it submits its plan with `--missing` when a cell of it
//! is stale, or when another run materialized an asset it reads, once its debounce passed
//! and none of its runs still runs (`handle_trigger`).
//!
//! Exactly once: a tick's run is submitted with the idempotency key of the schedule and
//! the tick, then the tick is recorded and the schedule advanced in one transaction that
//! holds only if the schedule is still at that tick. A dispatcher killed between the two
//! submits the tick again on its next round (or its standby does), and finds the same run.

use std::{collections::HashMap, path::Path, time::Duration};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    plan::{Only, backfill::PartitionSelection},
    schedules::{self, Cause, Decision, KEY_OWNER, Overlap, Timing, Trigger},
    store::{
        Store, StoreError,
        runs::{IdempotencyKey, RunOptions},
        schedules::{Outcome, ScheduleRow},
    },
    submit::SubmitError,
};

/// The longest wait between two looks.
const POLL: Duration = Duration::from_secs(1);
/// Schedules handled per look, and ticks decided per schedule per look: a long backlog is
/// worked off over several looks, every schedule getting its turn.
const SCHEDULES_PER_LOOK: u32 = 100;
const TICKS_PER_LOOK: usize = 100;
/// The longest reason stored for a tick passed over.
const MAX_REASON_BYTES: usize = 1024;

/// Submits due ticks until `cancel`.
pub async fn run_schedules(store: Store, cancel: CancellationToken) {
    let mut plans = TriggerPlans::default();
    loop {
        let now = Utc::now();
        match store.schedules().due(now, SCHEDULES_PER_LOOK).await {
            Ok(due) => {
                plans.keep_only(&due);
                for schedule in due {
                    if cancel.is_cancelled() {
                        return;
                    }
                    let handled = if schedule.trigger == Trigger::Cron.as_str() {
                        handle(&store, &schedule, now).await
                    } else {
                        handle_trigger(&store, &schedule, &mut plans, now).await
                    };
                    if let Err(error) = handled {
                        tracing::warn!(schedule = %schedule.name, error = format!("{error:#}"),
                            "deciding a schedule's ticks failed; trying again");
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "looking for due schedules failed; trying again"),
        }
        if let Err(error) = backfill(&store, &cancel).await {
            tracing::warn!(error = format!("{error:#}"), "submitting backfills' ticks failed; trying again");
        }
        let wait = match store.schedules().next_due().await {
            Ok(Some(at)) => {
                (at - Utc::now()).to_std().unwrap_or_default().clamp(Duration::from_millis(10), POLL)
            }
            _ => POLL,
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum TickError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("schedule `{0}` is stored with a bad definition: {1}")]
    Definition(String, String),
}

/// Submits the run of `tick`; `Ok(Err(why))` when the plan no longer submits (an op gone,
/// a partition it lacks): the tick is skipped for that reason.
async fn submit(
    store: &Store,
    schedule: &ScheduleRow,
    timing: &Timing,
    tick: DateTime<Utc>,
) -> Result<Result<Uuid, String>, TickError> {
    let partitions = if schedule.partition_of_tick {
        match timing.partition_of(tick).parse::<PartitionSelection>() {
            Ok(selection) => Some(selection),
            Err(why) => return Ok(Err(why)),
        }
    } else {
        None
    };
    submit_keyed(store, schedule, &schedules::run_key(&schedule.name, tick), partitions.as_ref()).await
}

/// Submits the schedule's plan with idempotency key `key`.
async fn submit_keyed(
    store: &Store,
    schedule: &ScheduleRow,
    key: &str,
    partitions: Option<&PartitionSelection>,
) -> Result<Result<Uuid, String>, TickError> {
    let options = RunOptions {
        owner: &schedule.owner,
        priority: schedule.priority.and_then(|p| u8::try_from(p).ok()),
        no_reuse: false,
        partitions,
        only: schedule.missing.then_some(Only::Missing),
    };
    let submitted = crate::submit::submit_notifying(
        store,
        &schedule.plan_source,
        Path::new(&schedule.plan_file),
        Some(IdempotencyKey { owner: KEY_OWNER, key }),
        None,
        options,
    )
    .await;
    match submitted {
        Ok(submitted) => {
            tracing::info!(schedule = %schedule.name, key, run_id = %submitted.run_id,
                existing = submitted.existing, "submitted a schedule's run");
            Ok(Ok(submitted.run_id.as_uuid()))
        }
        Err(SubmitError::Store(error)) => Err(error.into()),
        // Cut where it is made: a plan's problems may be many, and the reason is stored.
        Err(other) => Ok(Err(format!(
            "the plan did not submit: {}",
            opflow_protocol::text::cut(&other.to_string(), MAX_REASON_BYTES)
        ))),
    }
}

/// Decides what `schedule` has to do at `now`.
async fn handle(store: &Store, schedule: &ScheduleRow, now: DateTime<Utc>) -> Result<(), TickError> {
    let bad = |why: String| TickError::Definition(schedule.name.clone(), why);
    let timing =
        Timing::parse(schedule.cron.as_deref().unwrap_or_default(), Some(&schedule.tz)).map_err(bad)?;
    let overlap: Overlap = schedule.overlap.parse().map_err(bad)?;
    let catch_up = Duration::from_secs(schedule.catch_up_secs.max(0) as u64);
    let schedules = store.schedules();
    let mut active = schedules.active_runs(&schedule.name).await?;
    let mut buffered = schedules.buffered(&schedule.name).await?;
    // A buffered tick goes once nothing of the schedule runs.
    if active.is_empty()
        && let Some(&tick) = buffered.first()
    {
        let recorded = match submit(store, schedule, &timing, tick).await? {
            Ok(run) => {
                active.push(run);
                Recorded::Submitted(run)
            }
            Err(why) => Recorded::Skipped(why),
        };
        schedules.record(&schedule.name, tick, &recorded.outcome(), None).await?;
        buffered.remove(0);
    }
    let mut next = schedule.next_tick_at;
    for _ in 0..TICKS_PER_LOOK {
        let Some(tick) = next.filter(|t| *t <= now) else { break };
        let late = (now - tick).to_std().unwrap_or_default();
        if late > catch_up {
            // Every tick before the window at once: one row, however many.
            let window_start = now - chrono::Duration::from_std(catch_up).unwrap_or_default();
            // Never the skipped tick again, whatever the clock's fractions.
            let resume =
                timing.next_from(window_start).filter(|r| *r > tick).or_else(|| timing.next_after(tick));
            let reason = format!(
                "missed: the dispatcher did not run them, and they are older than the catch-up window of {}",
                humantime::format_duration(catch_up)
            );
            let until = Some(window_start);
            if !schedules
                .record(&schedule.name, tick, &Outcome::Skipped { reason: &reason, until }, Some(resume))
                .await?
            {
                return Ok(());
            }
            next = resume;
            continue;
        }
        let after = timing.next_after(tick);
        let decision = schedules::decide(tick, now, catch_up, overlap, active.len(), buffered.len());
        let outcome = match decision {
            Decision::Submit | Decision::CancelThenSubmit => {
                if decision == Decision::CancelThenSubmit {
                    for run in active.drain(..) {
                        store.runs().cancel(opflow_protocol::RunId::from_uuid(run)).await?;
                        tracing::info!(schedule = %schedule.name, run_id = %run, "canceled for a new tick (overlap: cancel_other)");
                    }
                }
                match submit(store, schedule, &timing, tick).await? {
                    Ok(run) => {
                        active.push(run);
                        Recorded::Submitted(run)
                    }
                    Err(why) => Recorded::Skipped(why),
                }
            }
            Decision::Buffer => {
                buffered.push(tick);
                Recorded::Buffered
            }
            Decision::Skip(why) => Recorded::Skipped(why),
        };
        if !schedules.record(&schedule.name, tick, &outcome.outcome(), Some(after)).await? {
            return Ok(()); // another leader decided it
        }
        next = after;
    }
    Ok(())
}

/// Backfills worked on per look, and ticks one submits per look at most: every backfill
/// moves a little each second, beside the others.
const BACKFILLS_PER_LOOK: u32 = 100;
const BACKFILL_TICKS_PER_LOOK: i64 = 20;

/// Submits the next ticks of each open backfill, up to its room (`max_in_flight` less its
/// runs queued or running). A tick's run has the schedule's own key for that tick, so a
/// tick the schedule ran itself (or an overlapping backfill did) is found, not run again.
/// A tick whose plan does not submit is passed over, as the schedule would skip it.
async fn backfill(store: &Store, cancel: &CancellationToken) -> Result<(), TickError> {
    let schedules = store.schedules();
    for backfill in schedules.open_backfills(BACKFILLS_PER_LOOK).await? {
        if cancel.is_cancelled() {
            return Ok(());
        }
        let Some(schedule) = schedules.get(&backfill.schedule).await? else { continue };
        let bad = |why: String| TickError::Definition(schedule.name.clone(), why);
        let timing =
            Timing::parse(schedule.cron.as_deref().unwrap_or_default(), Some(&schedule.tz)).map_err(bad)?;
        let in_flight = schedules.backfill_in_flight(backfill.id).await?;
        let room = (i64::from(backfill.max_in_flight) - in_flight).clamp(0, BACKFILL_TICKS_PER_LOOK);
        let mut next = backfill.next_at;
        for _ in 0..room {
            let Some(tick) = next else { break };
            let after = timing.next_after(tick).filter(|t| *t <= backfill.to_at);
            let submitted = submit(store, &schedule, &timing, tick).await?;
            if let Err(why) = &submitted {
                tracing::warn!(schedule = %schedule.name, %tick, why, "a backfilled tick did not submit; passing over it");
            }
            if !schedules
                .backfilled(&backfill, tick, submitted.as_ref().map(|r| *r).map_err(String::as_str), after)
                .await?
            {
                break; // another leader moved it
            }
            next = after;
        }
    }
    Ok(())
}

/// What a triggered schedule's plan names: its assets, and those of them another reads.
#[derive(Debug, Clone)]
struct TriggerPlan {
    created_at: DateTime<Utc>,
    assets: Vec<String>,
    read: Vec<String>,
}

/// The plans of triggered schedules, compiled once each (a schedule's plan never changes:
/// it is removed and added again).
#[derive(Debug, Default)]
struct TriggerPlans(HashMap<String, TriggerPlan>);

impl TriggerPlans {
    /// Forgets the plans of schedules no longer due (removed, or paused).
    fn keep_only(&mut self, due: &[ScheduleRow]) {
        self.0.retain(|name, _| due.iter().any(|s| s.name == *name));
    }

    async fn of(&mut self, store: &Store, schedule: &ScheduleRow) -> Result<&TriggerPlan, TickError> {
        let fresh = self.0.get(&schedule.name).is_some_and(|p| p.created_at == schedule.created_at);
        if !fresh {
            let plan = crate::submit::compile(store, &schedule.plan_source, Path::new(&schedule.plan_file))
                .await
                .map_err(|e| match e {
                    SubmitError::Store(error) => TickError::Store(error),
                    other => TickError::Definition(schedule.name.clone(), other.to_string()),
                })?;
            let assets = plan.assets.iter().map(|a| a.name.clone()).collect();
            let mut read: Vec<String> = plan
                .assets
                .iter()
                .flat_map(|a| &a.deps)
                .map(|d| plan.assets[d.upstream].name.clone())
                .collect();
            read.sort();
            read.dedup();
            self.0
                .insert(schedule.name.clone(), TriggerPlan { created_at: schedule.created_at, assets, read });
        }
        Ok(&self.0[&schedule.name])
    }
}

/// Submits a triggered schedule's run when `schedules::fires` says so: its plan with
/// `--missing`, so that only what is stale or missing runs. The key names what it answers,
/// so that a look repeated after a crash finds the same run; recording it moves the
/// schedule on, once.
async fn handle_trigger(
    store: &Store,
    schedule: &ScheduleRow,
    plans: &mut TriggerPlans,
    now: DateTime<Utc>,
) -> Result<(), TickError> {
    let bad = |why: String| TickError::Definition(schedule.name.clone(), why);
    let trigger = Trigger::from_stored(&schedule.trigger).map_err(bad)?;
    let schedules = store.schedules();
    let active = schedules.active_runs(&schedule.name).await?.len();
    if active > 0 {
        return Ok(());
    }
    let debounce = Duration::from_secs(schedule.debounce_secs.max(0) as u64);
    let last = schedules.last_decided(&schedule.name).await?;
    if last.is_some_and(|at| !schedules::quiet_since(now, at, debounce)) {
        return Ok(());
    }
    let plan = match plans.of(store, schedule).await {
        Ok(plan) => plan.clone(),
        // Its plan no longer compiles (an op deregistered, say): told in its ticks, once
        // per debounce, not in the log each second.
        Err(TickError::Definition(_, why)) => {
            let reason =
                format!("the plan does not compile: {}", opflow_protocol::text::cut(&why, MAX_REASON_BYTES));
            schedules
                .record(&schedule.name, now, &Outcome::Skipped { reason: &reason, until: None }, None)
                .await?;
            return Ok(());
        }
        Err(other) => return Err(other),
    };
    let answered = schedule.seen_materialization;
    let (cause, key_part, seen) = match trigger {
        Trigger::Cron => return Ok(()),
        Trigger::Stale => {
            let cells = store.freshness().stale_cells(&plan.assets, now).await?;
            (Cause::Stale { cells }, answered + 1, answered + 1)
        }
        Trigger::Upstream => {
            let unseen =
                store.freshness().unseen_materializations(&plan.read, answered, &schedule.name).await?;
            match unseen {
                None => return Ok(()),
                Some(u) => (Cause::Upstream { first_at: Some(u.first_at) }, u.first, u.newest),
            }
        }
    };
    if !schedules::fires(cause, now, active, debounce, last) {
        return Ok(());
    }
    let key = schedules::trigger_key(&schedule.name, trigger, key_part);
    match submit_keyed(store, schedule, &key, None).await? {
        Ok(run) => {
            tracing::info!(schedule = %schedule.name, ?cause, run_id = %run, "a trigger submitted its plan");
            schedules.record_fired(&schedule.name, now, run, answered, seen).await?;
        }
        Err(why) => {
            tracing::warn!(schedule = %schedule.name, why, "a triggered plan did not submit; trying again after the debounce");
            schedules
                .record(&schedule.name, now, &Outcome::Skipped { reason: &why, until: None }, None)
                .await?;
        }
    }
    Ok(())
}

/// A decided tick, owning its reason.
enum Recorded {
    Submitted(Uuid),
    Buffered,
    Skipped(String),
}

impl Recorded {
    fn outcome(&self) -> Outcome<'_> {
        match self {
            Recorded::Submitted(run) => Outcome::Submitted(*run),
            Recorded::Buffered => Outcome::Buffered,
            Recorded::Skipped(why) => Outcome::Skipped { reason: why, until: None },
        }
    }
}
