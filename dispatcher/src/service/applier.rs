//! Isolation: whatever one op sends can fail only its own step, never stall the others.
//!
//! Events are applied in batches, one transaction each, and a batch succeeds or fails as
//! a whole. [`Applier::apply`] keeps one bad event from holding its batch (and with it
//! every run of every team) hostage:
//!
//! - an outage (the database unreachable, a serialization failure) is waited out, trying
//!   the same batch again with capped, jittered backoff until it applies or we are told to
//!   stop;
//! - a refusal (the data, not the database: a constraint, a value out of range, a plan
//!   that cannot be read), a panic while applying, or a "transient" error that keeps
//!   coming back while the database answers, splits the batch in halves, and each half is
//!   applied on its own, until the event at fault stands alone;
//! - that event's step is then failed with a message saying why, carrying the event's
//!   own text (already made storable); if even that cannot be applied, its run is failed
//!   with a plain statement ([`Store::fail_run`]); only if that fails too is the event
//!   given up on, and its delivery is dead-lettered by the caller.
//!
//! Texts are storable before they get here: a [`StorableEvent`] can only be made by
//! `store::storable`.

use std::{collections::VecDeque, panic::AssertUnwindSafe, sync::Arc, time::Duration};

use backon::BackoffBuilder;
use futures_util::FutureExt;
use opflow_protocol::{Event, EventKind, RunId, StepId};
use tokio_util::sync::CancellationToken;

use super::window::Arrivals;
use crate::{
    api::metrics::Metrics,
    store::{
        StoreError, apply::ApplyOutcome, key_slots::SUPERSEDED_BY_DISPATCHER, lease::LeaderStore,
        run_plan::PlanCache, storable::StorableEvent,
    },
};

/// The `worker` field of events the dispatcher makes up itself.
pub const DISPATCHER_WORKER: &str = "dispatcher";

/// A failure decided by the dispatcher (an unroutable step, inputs too large, a refused
/// publish, a lost message, an event that cannot be applied), applied through the same
/// path as a worker's failure event.
pub fn dispatcher_failure(
    run_id: RunId,
    step_id: StepId,
    attempt: u32,
    error: String,
    retryable: bool,
) -> StorableEvent {
    Event::new(run_id, step_id, attempt, DISPATCHER_WORKER, EventKind::Failed { error, retryable }).into()
}

/// How often a batch may fail with a "transient" error while the database answers pings
/// before it is treated as refused and split.
const TRANSIENT_TRIES: u32 = 3;

/// Applies events; see the module docs. Cheap to clone.
#[derive(Clone)]
pub struct Applier {
    pub store: LeaderStore,
    pub plans: Arc<PlanCache>,
    /// Counts each committed batch and the steps it ended. Every event the dispatcher
    /// applies goes through here, so this is the one place they are counted.
    pub metrics: Arc<Metrics>,
    /// Told of each committed batch's queued steps and of the steps it started, for the
    /// publisher's window.
    pub arrivals: Arc<Arrivals>,
}

/// What applying a set of events did, with positions relative to the set.
#[derive(Debug, Default)]
pub struct Applied {
    pub outcome: ApplyOutcome,
    /// Positions of events that could not be applied at all, even as a failure of their
    /// step or their run; the caller dead-letters their deliveries.
    pub given_up: Vec<usize>,
}

/// Why one attempt at a batch did not apply it.
enum Failure {
    /// The database is unreachable or busy: try the same batch again later.
    Outage(StoreError),
    /// The batch itself is at fault (or a panic, or an error that keeps coming back).
    Refused(String),
}

impl Applier {
    /// Applies `events`; see the module docs. `None` if `cancel` fired before everything
    /// was applied (what was applied stays applied; the caller leaves the rest unacked).
    pub async fn apply(&self, events: &[StorableEvent], cancel: &CancellationToken) -> Option<Applied> {
        let mut applied = Applied::default();
        let mut pending = VecDeque::from([(0, events.len())]);
        while let Some((start, end)) = pending.pop_front() {
            if start == end {
                continue;
            }
            match self.apply_batch(&events[start..end], cancel).await? {
                Ok(outcome) => merge(&mut applied.outcome, outcome, start),
                Err(why) if end - start == 1 => {
                    if !self.fail_alone(&events[start], &why, &mut applied.outcome, start, cancel).await? {
                        applied.given_up.push(start);
                    }
                }
                Err(why) => {
                    tracing::warn!(events = end - start, reason = %why,
                        "a batch of events was refused; applying its halves apart to find the event at fault");
                    let middle = start + (end - start) / 2;
                    pending.push_front((middle, end));
                    pending.push_front((start, middle));
                }
            }
        }
        Some(applied)
    }

    /// Applies one batch, waiting out outages. `Some(Err)` when the batch is refused;
    /// `None` when cancelled first.
    async fn apply_batch(
        &self,
        events: &[StorableEvent],
        cancel: &CancellationToken,
    ) -> Option<Result<ApplyOutcome, String>> {
        let mut pauses = opflow_process::backoff::reconnect().build();
        let mut transient_while_up = 0;
        loop {
            let error = match self.try_apply(events).await {
                Ok(outcome) => return Some(Ok(outcome)),
                Err(Failure::Refused(why)) => return Some(Err(why)),
                Err(Failure::Outage(error)) => error,
            };
            // An error that looks transient but keeps coming back while the database
            // answers is about this batch after all.
            if self.store.ping().await.is_ok() {
                transient_while_up += 1;
                if transient_while_up >= TRANSIENT_TRIES {
                    return Some(Err(format!(
                        "{error} ({TRANSIENT_TRIES} times while the database answered)"
                    )));
                }
            }
            let pause = pauses.next().unwrap_or(Duration::from_secs(5));
            tracing::warn!(%error, retry_in = ?pause, events = events.len(), "applying events failed; retrying");
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = cancel.cancelled() => return None,
            }
        }
    }

    async fn try_apply(&self, events: &[StorableEvent]) -> Result<ApplyOutcome, Failure> {
        let started = std::time::Instant::now();
        let store = self.store.events();
        let attempt = AssertUnwindSafe(store.apply(events, &self.plans)).catch_unwind();
        match attempt.await {
            Ok(Ok(mut outcome)) => {
                // Committed: counted here once. A refused or rolled-back attempt is not.
                let terminal = std::mem::take(&mut outcome.terminal);
                self.metrics.applied(events.len(), started.elapsed(), &terminal);
                self.arrivals.tell(
                    &outcome.queued,
                    &outcome.started,
                    &outcome.settled,
                    &outcome.ended,
                    &results(events),
                );
                Ok(outcome)
            }
            Ok(Err(error)) if error.is_transient() => Err(Failure::Outage(error)),
            Ok(Err(error)) => Err(Failure::Refused(error.to_string())),
            Err(panic) => Err(Failure::Refused(format!(
                "the dispatcher panicked: {}",
                opflow_process::panic::message(&*panic)
            ))),
        }
    }

    /// Fails the step of an event that cannot be applied (or its run, if that cannot be
    /// applied either). Returns whether one of the two took hold; `None` when cancelled.
    async fn fail_alone(
        &self,
        event: &StorableEvent,
        why: &str,
        outcome: &mut ApplyOutcome,
        position: usize,
        cancel: &CancellationToken,
    ) -> Option<bool> {
        let reason = refusal_message(event, why);
        tracing::error!(run_id = %event.run_id, step_id = %event.step_id, attempt = event.attempt,
            kind = event.kind.name(), worker = %event.worker, %why, "an event cannot be applied; failing its step");
        let failure = dispatcher_failure(event.run_id, event.step_id, event.attempt, reason.clone(), false);
        let also = match self.apply_batch(std::slice::from_ref(&failure), cancel).await? {
            Ok(failed) => {
                merge(outcome, failed, position);
                return Some(true);
            }
            Err(also) => also,
        };
        tracing::error!(run_id = %event.run_id, error = %also, "failing the step failed too; failing its run");
        let run_reason =
            format!("{reason}; failing the step failed too ({also}), so the whole run is failed");
        loop {
            match AssertUnwindSafe(self.store.events().fail_run(event.run_id, &run_reason, &self.plans))
                .catch_unwind()
                .await
            {
                Ok(Ok(failed)) => {
                    self.metrics.failed_without_event(&failed.failed);
                    return Some(true);
                }
                Ok(Err(error)) if error.is_transient() && self.store.ping().await.is_err() => {
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = cancel.cancelled() => return None,
                    }
                }
                Ok(Err(error)) => {
                    tracing::error!(run_id = %event.run_id, %error, "cannot fail the run either; giving the event up");
                    return Some(false);
                }
                Err(panic) => {
                    tracing::error!(run_id = %event.run_id, panic = opflow_process::panic::message(&*panic),
                        "cannot fail the run either; giving the event up");
                    return Some(false);
                }
            }
        }
    }
}

/// The step attempts `events` bring a result for, applied or not: each frees the attempt's
/// concurrency slots (`service::key_slots`), since its worker is done with it. The
/// dispatcher's failure of a step a newer one replaces is not such a result: the step runs
/// until its worker stops it, and that worker's own result frees the slots.
fn results(events: &[StorableEvent]) -> Vec<(RunId, StepId, u32)> {
    events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Succeeded { .. } | EventKind::Failed { .. }))
        .filter(|e| e.worker != SUPERSEDED_BY_DISPATCHER)
        .map(|e| (e.run_id, e.step_id, e.attempt))
        .collect()
}

/// The error a step gets when one of its events cannot be applied.
fn refusal_message(event: &Event, why: &str) -> String {
    let body = serde_json::to_string(&event.kind).unwrap_or_default();
    let body = crate::store::storable::short_text(&body);
    format!(
        "the dispatcher could not apply a `{}` event of this step from worker {}: {why}; the step is failed so \
         that its run can go on. The event: {body}",
        event.kind.name(),
        event.worker
    )
}

/// Adds `more` (whose positions start at `offset` in the whole set) to `into`.
fn merge(into: &mut ApplyOutcome, more: ApplyOutcome, offset: usize) {
    into.unknown_run.extend(more.unknown_run.into_iter().map(|p| p + offset));
    into.duplicates += more.duplicates;
    into.queued.extend(more.queued);
    into.started.extend(more.started);
    into.settled.extend(more.settled);
    into.finished.extend(more.finished);
}

#[cfg(test)]
mod tests {
    use opflow_protocol::LogLevel;

    use super::*;

    #[test]
    fn every_result_frees_its_attempts_slots_but_a_replacement_by_the_dispatcher() {
        let run = RunId::new();
        let event = |step: u32, worker: &str, kind| -> StorableEvent {
            Event::new(run, StepId(step), 1, worker, kind).into()
        };
        let failed = || EventKind::Failed { error: "e".into(), retryable: false };
        let events = [
            event(0, "w1", EventKind::Succeeded { output: serde_json::Value::Null }),
            event(1, "w1", failed()),
            event(2, DISPATCHER_WORKER, failed()),
            event(3, SUPERSEDED_BY_DISPATCHER, failed()),
            event(4, "w1", EventKind::Heartbeat),
            event(5, "w1", EventKind::Log { level: LogLevel::Info, message: "m".into() }),
        ];
        let freed: Vec<u32> = results(&events).into_iter().map(|(_, step, _)| step.0).collect();
        assert_eq!(freed, vec![0, 1, 2], "results of workers and of the dispatcher's own failures");
    }
}
