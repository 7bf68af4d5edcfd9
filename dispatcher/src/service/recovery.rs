//! Every run ends. Redelivery covers a worker that dies holding a step, but not a message
//! the broker itself lost (a purged or deleted queue, a policy that drops messages), nor a
//! worker that hangs without dying, nor a store that (through a bug) leaves a step waiting
//! on nothing. While it leads, the dispatcher looks for these every few seconds:
//!
//! - **Silent running steps**: a step `running` whose worker has sent no heartbeat for
//!   `lost_step_after` (the worker sends one every 10 s) is failed retryably, so the retry
//!   policy gives it a new attempt (or fails it for good, with the reason).
//! - **Lost messages**: when an op's queue holds fewer messages than there are published,
//!   unstarted steps of that op (less the events not applied yet), the difference is lost.
//!   The oldest such steps, queued longer than `lost_step_after`, are failed retryably, once
//!   the same steps came out lost in two checks in a row: a count read mid-publish, or a
//!   message a worker has just taken (it reports the step started within 100 ms, or ends
//!   it), cannot fail a step that is fine.
//! - **Runs with nothing in flight**: a run still going with no step queued, running or
//!   retrying can never move again; its waiting steps fail with the reason and it ends.
//!
//! Both checks that read the events queue back off while events wait to be applied: a
//! heartbeat or result still in that queue is not a sign of loss. That queue holds only
//! the events that move steps; log lines and progress wait on a queue of their own
//! (`opflow.dispatcher.telemetry`), so a step that logs without end does not hold
//! recovery up for anyone. So a loss is acted on
//! within `lost_step_after` plus two check intervals of the events being applied
//! (docs/reliability.md). A step taken for lost but merely slow runs again, and its late
//! result is ignored: at-least-once, as everywhere.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use lapin::Connection;
use opflow_amqp::topology::{ProbeError, QueueCounts, QueueProbe};
use opflow_protocol::{OpRef, queue};
use tokio_util::sync::CancellationToken;

use crate::{
    service::applier::{Applier, dispatcher_failure},
    store::{StoreError, in_flight::StepAttempt, storable::StorableEvent},
};

/// Silent steps failed per check, at most.
const PER_CHECK: u32 = 1000;

#[derive(Debug, thiserror::Error)]
#[error("recovery: {0}")]
pub struct RecoveryError(#[from] ProbeError);

/// Looks for lost steps and stuck runs; see the module docs.
pub struct Recovery {
    pub applier: Applier,
    pub lost_after: Duration,
}

impl Recovery {
    /// How often to look: a quarter of `lost_after`, between 1 and 15 seconds.
    pub fn interval(&self) -> Duration {
        (self.lost_after / 4).clamp(Duration::from_secs(1), Duration::from_secs(15))
    }

    /// Looks every [`Recovery::interval`] until cancelled. A store error is logged and the
    /// check tried again next time; a broker error ends the session like any other part's.
    pub async fn run(self, connection: &Connection, cancel: CancellationToken) -> Result<(), RecoveryError> {
        let mut probe = QueueProbe::new(connection);
        let mut suspects: HashMap<OpRef, HashSet<StepAttempt>> = HashMap::new();
        let mut ticks = tokio::time::interval(self.interval());
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = ticks.tick() => {}
            }
            match self.check(&mut probe, &mut suspects, &cancel).await {
                Ok(()) => {}
                Err(Check::Store(error)) => {
                    tracing::warn!(%error, "looking for lost steps failed; trying again")
                }
                Err(Check::Broker(error)) => {
                    probe.close().await;
                    return Err(error);
                }
            }
        }
        probe.close().await;
        Ok(())
    }

    async fn check(
        &self,
        probe: &mut QueueProbe<'_>,
        suspects: &mut HashMap<OpRef, HashSet<StepAttempt>>,
        cancel: &CancellationToken,
    ) -> Result<(), Check> {
        let store = &self.applier.store;
        let events = probe.counts(queue::DISPATCHER_EVENTS_QUEUE).await?.unwrap_or_default();
        let mut failures: Vec<StorableEvent> = Vec::new();
        if events.ready == 0 {
            for silent in store.in_flight().silent_steps(self.lost_after, PER_CHECK).await? {
                let reason = format!(
                    "lost: its worker {} has not been heard from since {} (no heartbeat for over {}): it hangs, \
                     or lost its broker connection and the broker did not give the step to another worker",
                    silent.worker,
                    silent.last_seen.format("%Y-%m-%d %H:%M:%S UTC"),
                    humantime::format_duration(self.lost_after)
                );
                failures.push(failure(silent.step, reason));
            }
        }
        for op in store.ops().registered().await? {
            let name = queue::op_queue(&op);
            let on_broker = probe.counts(&name).await?;
            let QueueCounts { ready, consumers } = on_broker.unwrap_or_default();
            // Messages the broker holds for this op's steps, and events that may still say
            // a step started or ended. (A message a worker holds unacked is in neither for
            // the moment until it reports; the second check clears it.)
            let accounted = u64::from(ready) + u64::from(events.ready);
            let published = store.queues().published(&op, accounted + PER_CHECK as u64).await?;
            let missing = published.saturating_sub(accounted);
            let previous = suspects.remove(&op).unwrap_or_default();
            if missing == 0 {
                continue;
            }
            let candidates: HashSet<StepAttempt> = store
                .in_flight()
                .oldest_published(&op, self.lost_after, missing.min(PER_CHECK as u64))
                .await?
                .into_iter()
                .collect();
            for lost in candidates.intersection(&previous) {
                let reason = match on_broker {
                    Some(_) => format!(
                        "lost: its message is no longer on queue `{name}` ({published} published steps of op {op} \
                         are not started, the queue holds {ready} messages and has {consumers} consumers): the queue \
                         was purged, or a policy dropped messages"
                    ),
                    None => format!("lost: queue `{name}` of op {op} no longer exists"),
                };
                failures.push(failure(*lost, reason));
            }
            suspects.insert(op, candidates);
        }
        if !failures.is_empty() {
            tracing::warn!(steps = failures.len(), "steps lost; failing them retryably so they run again");
            if self.applier.apply(&failures, cancel).await.is_none() {
                return Ok(());
            }
        }
        for run in store.in_flight().runs_with_nothing_in_flight(self.lost_after).await? {
            let reason = "its upstream steps all ended, yet it was never unlocked: an inconsistency in the run \
                          store, which opflow cannot explain (please report it); the run is ended so that it \
                          does not wait forever";
            if store.in_flight().settle_run(run, reason).await? {
                self.applier.plans.forget(run);
                tracing::error!(run_id = %run, "a run had nothing in flight but had not ended; ended it");
            }
        }
        Ok(())
    }
}

fn failure(step: StepAttempt, reason: String) -> StorableEvent {
    dispatcher_failure(step.run_id, step.step_id, step.attempt, reason, true)
}

enum Check {
    Store(StoreError),
    Broker(RecoveryError),
}

impl From<StoreError> for Check {
    fn from(error: StoreError) -> Self {
        Check::Store(error)
    }
}

impl From<ProbeError> for Check {
    fn from(error: ProbeError) -> Self {
        Check::Broker(error.into())
    }
}
