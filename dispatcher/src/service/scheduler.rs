//! The leader's scheduler: submits each schedule's due ticks, once each. Every second (or
//! sooner, when a tick is due sooner), it takes the schedules with a tick due or a tick
//! buffered, and for each: submits the oldest buffered tick once nothing of the schedule
//! runs, then decides its due ticks in order (`schedules::decide`): submitted, buffered,
//! canceled-then-submitted or skipped; ticks older than the catch-up window are skipped
//! as one range.
//!
//! Exactly once: a tick's run is submitted with the idempotency key of the schedule and
//! the tick, then the tick is recorded and the schedule advanced in one transaction that
//! holds only if the schedule is still at that tick. A dispatcher killed between the two
//! submits the tick again on its next round (or its standby does), and finds the same run.

use std::{path::Path, time::Duration};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    plan::backfill::PartitionSelection,
    schedules::{self, Decision, KEY_OWNER, Overlap, Timing},
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
    loop {
        let now = Utc::now();
        match store.schedules().due(now, SCHEDULES_PER_LOOK).await {
            Ok(due) => {
                for schedule in due {
                    if cancel.is_cancelled() {
                        return;
                    }
                    if let Err(error) = handle(&store, &schedule, now).await {
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
    let key = schedules::run_key(&schedule.name, tick);
    let partitions = if schedule.partition_of_tick {
        match timing.partition_of(tick).parse::<PartitionSelection>() {
            Ok(selection) => Some(selection),
            Err(why) => return Ok(Err(why)),
        }
    } else {
        None
    };
    let options = RunOptions {
        owner: &schedule.owner,
        priority: schedule.priority.and_then(|p| u8::try_from(p).ok()),
        no_reuse: false,
        partitions: partitions.as_ref(),
        only: None,
    };
    let submitted = crate::submit::submit_notifying(
        store,
        &schedule.plan_source,
        Path::new(&schedule.plan_file),
        Some(IdempotencyKey { owner: KEY_OWNER, key: &key }),
        None,
        options,
    )
    .await;
    match submitted {
        Ok(submitted) => {
            tracing::info!(schedule = %schedule.name, %tick, run_id = %submitted.run_id,
                existing = submitted.existing, "submitted a schedule's tick");
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
    let timing = Timing::parse(&schedule.cron, Some(&schedule.tz)).map_err(bad)?;
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
        let timing = Timing::parse(&schedule.cron, Some(&schedule.tz)).map_err(bad)?;
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
