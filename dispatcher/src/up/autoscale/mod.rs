//! The autoscaler of `opflow up`: each registered op version's worker processes scale from
//! zero with its queue, by KEDA's RabbitMQ scaler's rule and setting names ([`rule`]), so
//! that what scales right on one machine scales the same way on Kubernetes.
//!
//! Every `pollingInterval` (5 s by default, per op) it reads the op's messages, ready (from
//! the broker) plus unacknowledged (the op's running steps, from the store: a busy worker's
//! step counts), and the demand forecast, decides, and starts or stops workers
//! (`up::fleet::Fleet`). The outbox publisher wakes it at once when it publishes, so an op
//! at zero replicas does not wait for its next poll, and an op whose steps are about to be
//! ready (downstream of what was just published) starts a worker before they are. Each
//! change is logged once: the op, from → to, and why.
//!
//! `opflow up --workers N` runs a fixed fleet instead (N per op, always), for benchmarks.

pub mod rule;

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use lapin::Connection;
use opflow_amqp::{connect::ConnectRetry, topology};
use opflow_process::SecretUrl;
use opflow_protocol::{OpRef, queue};
use tokio_util::sync::CancellationToken;

use super::fleet::{Fleet, Recycling};
use crate::{
    service::publisher::Wakeups,
    store::{Store, ops::ScaleSettings},
};
use rule::{Decision, History, Observed};

/// How often fleets are checked for exited workers, and targets applied.
const TICK: Duration = Duration::from_millis(200);

/// How the fleets are sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// By each op's scaling settings.
    Auto,
    /// N workers per op, always.
    Fixed(u32),
}

/// One op version's fleet and what the autoscaler knows of it.
struct Scaled {
    fleet: Fleet,
    history: History,
    desired: u32,
    /// Pids of the fleet's workers running a step, as last seen: stopped last.
    busy: Vec<u32>,
    next_look: Instant,
    /// (replicas, desired) as last recorded in the registry.
    recorded: Option<(u32, u32)>,
}

/// Sizes every op's fleet until shutdown, then drains them all; see the module docs.
pub struct Autoscaler {
    pub store: Store,
    pub amqp_url: SecretUrl,
    pub mode: Mode,
    pub wakeups: std::sync::Arc<Wakeups>,
    /// Whether a demand forecast wakes an op at zero (`autoscale_forecast`).
    pub forecast: bool,
}

impl Autoscaler {
    pub async fn run(self, fleets: Vec<Fleet>, shutdown: CancellationToken) {
        let now = Instant::now();
        let mut scaled: Vec<Scaled> = fleets
            .into_iter()
            .map(|fleet| Scaled {
                fleet,
                history: History::default(),
                desired: 0,
                busy: Vec::new(),
                next_look: now,
                recorded: None,
            })
            .collect();
        let mut broker: Option<Connection> = None;
        loop {
            let woken = tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.wakeups.notified() => self.wakeups.take(),
                () = tokio::time::sleep(TICK) => HashSet::new(),
            };
            let now = Instant::now();
            for op in &mut scaled {
                op.fleet.reap();
                // A publish to one op may make another's steps about to be ready (its
                // forecast), so a wake-up looks at every op.
                if now >= op.next_look || !woken.is_empty() {
                    let polling = self.look(op, &mut broker, now).await;
                    op.next_look = now + polling;
                }
                let busy = op.busy.clone();
                op.fleet.scale_to(op.desired, &busy);
                self.record(op).await;
            }
        }
        if let Some(connection) = broker
            && let Err(error) = connection.close(200, "opflow up stopping".into()).await
        {
            tracing::debug!(%error, "closing the autoscaler's connection failed");
        }
        let drains = scaled.iter_mut().map(|op| op.fleet.drain());
        futures_util::future::join_all(drains).await;
    }
}

impl Autoscaler {
    /// Reads an op's demand and decides its target; returns how long until the next look.
    async fn look(&self, op: &mut Scaled, broker: &mut Option<Connection>, now: Instant) -> Duration {
        let name = op.fleet.op().clone();
        let settings = match self.store.ops().scale_settings(&name).await {
            Ok(Some(settings)) => settings,
            Ok(None) => {
                tracing::warn!(op = %name, "the op is no longer registered; keeping its workers as they are");
                return Duration::from_secs(5);
            }
            Err(error) => {
                tracing::warn!(op = %name, %error, "cannot read the op's scaling settings; trying again");
                return Duration::from_secs(1);
            }
        };
        op.fleet.set_recycling(recycling(&settings));
        let polling = Duration::from_secs(settings.polling_secs.max(1) as u64);
        if let Mode::Fixed(replicas) = self.mode {
            op.desired = replicas;
            return polling;
        }
        let demand = match self.store.queues().demand(&name).await {
            Ok(demand) => demand,
            Err(error) => {
                tracing::warn!(op = %name, %error, "cannot read the op's demand; trying again");
                return Duration::from_secs(1);
            }
        };
        let ready = match self.ready(broker, &name).await {
            Some(ready) => ready,
            // Without the broker, what the store knows is queued and not started.
            None => demand.queued,
        };
        let forecast = if self.forecast { demand.forecast } else { 0 };
        let seen = Observed { messages: ready + demand.running, forecast };
        let Decision { desired, why } = rule::decide(&settings, &mut op.history, seen, now);
        if desired != op.desired {
            tracing::info!(op = %name, from = op.desired, to = desired, %why, "scaling");
            op.desired = desired;
        }
        op.busy = demand.busy_workers.iter().filter_map(|worker| pid_of(worker)).collect();
        polling
    }

    /// Ready messages on the op's queue; `None` when the broker cannot be asked now (one
    /// attempt at connecting per look: the autoscaler never waits on the broker).
    async fn ready(&self, broker: &mut Option<Connection>, op: &OpRef) -> Option<u64> {
        if broker.as_ref().is_none_or(|connection| !connection.status().connected()) {
            let once = ConnectRetry { max_attempts: Some(1) };
            *broker =
                opflow_amqp::connect(&self.amqp_url, "opflow-autoscaler", once, &CancellationToken::new())
                    .await
                    .inspect_err(|error| tracing::debug!(%error, "the autoscaler cannot reach the broker"))
                    .ok();
        }
        let channel = broker.as_ref()?.create_channel().await.ok()?;
        let counts = topology::inspect_queue(&channel, &queue::op_queue(op)).await;
        match counts {
            Ok(counts) => {
                if let Err(error) = channel.close(200, "counted".into()).await {
                    tracing::debug!(%error, "closing the autoscaler's channel failed");
                }
                Some(u64::from(counts.ready))
            }
            // A missing queue holds nothing (and closed the channel).
            Err(topology::TopologyError::MissingQueue { .. }) => Some(0),
            Err(error) => {
                tracing::debug!(%error, "cannot count the op's queue");
                None
            }
        }
    }

    /// Records the fleet's size and target in the registry when they change.
    async fn record(&self, op: &mut Scaled) {
        let now = (op.fleet.replicas(), op.desired);
        if op.recorded == Some(now) {
            return;
        }
        match self.store.ops().record_scale(op.fleet.op(), now.0, now.1).await {
            Ok(()) => op.recorded = Some(now),
            Err(error) => tracing::debug!(op = %op.fleet.op(), %error, "cannot record the op's scale"),
        }
    }
}

fn recycling(settings: &ScaleSettings) -> Recycling {
    Recycling {
        max_steps: settings.max_steps.map(|n| n.max(1) as u32),
        max_rss_mb: settings.max_rss_mb.map(|n| n.max(1) as u32),
    }
}

/// The pid at the end of a worker's name (`name@version/host/pid`).
fn pid_of(worker: &str) -> Option<u32> {
    worker.rsplit('/').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workers_pid_ends_its_name() {
        assert_eq!(pid_of("noop@1.1.0/vm/4242"), Some(4242));
        assert_eq!(pid_of("dispatcher"), None);
    }

    #[test]
    fn a_wakeup_names_each_op_once_until_taken() {
        let wakeups = Wakeups::default();
        let op: OpRef = "noop@1.0.0".parse().unwrap();
        wakeups.published(&op);
        wakeups.published(&op);
        assert_eq!(wakeups.take().len(), 1);
        assert!(wakeups.take().is_empty());
    }
}
