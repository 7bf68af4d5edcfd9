//! The dispatcher's Prometheus metrics, served at `GET /metrics` (behind the token guard
//! when the API needs tokens, and without one on `metrics_addr` for a scraper that holds
//! none; nothing here names a run or a plan).
//! Written with `prometheus-client`, the official Rust client, in its text exposition
//! (OpenMetrics text, which Prometheus scrapes; see docs/observability.md).
//!
//! One [`Metrics`] is made by the dispatcher service and handed to the parts that count
//! (the service's applier and webhook delivery, and the API state) rather than kept in a
//! process global: each test, and each service in one process, counts on its own, and what
//! is counted is plain from the types.
//!
//! Counters count from process start (Prometheus convention: `rate()` and `increase()`
//! handle the reset when a dispatcher restarts), and they count what *this* dispatcher
//! applied: with a leader and a standby, the leader counts; after a failover the new
//! leader counts from then on. Summing over instances gives the whole.
//!
//! - `opflow_steps_total{op,version,status}`: steps that reached a terminal state as this
//!   dispatcher applied events (`succeeded`, `failed` for good, `skipped` after an upstream
//!   failure). Taken from the store's guarded transitions, so a duplicate or late event
//!   that changed nothing is not counted, and a batch rolled back is not counted either.
//!   Steps a run's last-resort failure ends ([`Store::fail_run`]) count as `failed`.
//!   Steps canceled with their run are not counted here: cancel is one statement in
//!   whichever process served it (API or CLI), not an applied event.
//! - `opflow_step_duration_seconds{op,version,status}`: how long each succeeded or failed
//!   step's last attempt ran, from its result event (finished at − started at, both the
//!   worker's clock); dispatcher-made failures (nothing ran) and skips are not observed.
//! - `opflow_queue_ready{queue,op,version}`, `opflow_queue_running{…}`: per registered op
//!   version, steps queued for it (on its queue or about to be published), and steps its workers hold
//!   (unacked), read from the run store when scraped, in one bounded query (see
//!   [`QUEUE_READ_TIMEOUT`]); the same numbers `GET /v1/queues` gives as `ready`/`unacked`.
//! - `opflow_event_apply_seconds`, `opflow_event_apply_batch_events`: each committed
//!   batch's transaction time and event count.
//! - `opflow_webhook_deliveries_total{outcome}`: [`Metrics::webhook_delivery`], for the
//!   webhook sender to call per delivery attempt outcome.
//! - `opflow_plan_cache_bytes`, `opflow_plan_cache_plans`: what the plan cache holds,
//!   weighed in real bytes, against its budget (`plan_cache_mb`).
//! - `opflow_refused_messages_total{what,reason}`: [`Metrics::refused`], messages refused
//!   for who sent them (`op_identity: required`; see `service::senders`): `what` is `event`
//!   or `cancel`, `reason` `no_sender`, `not_the_steps_op` or `not_the_dispatcher`.
//! - `opflow_catalog_lookups_total{result}`: [`Metrics::catalog_lookups`], ready steps looked
//!   up in the asset catalog before publishing: `reused`, `missed`, `unkeyable` (no memo key
//!   could be computed: fail closed, the step runs), `waiting` (for an identical step),
//!   `taken` or `runs` (a backfill's cells).

use std::{collections::HashMap, time::Duration};

use prometheus_client::{
    encoding::{EncodeLabelSet, text},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::store::{
    Store,
    apply::{TerminalStatus, TerminalStep},
    run_plan::CacheGauges,
};

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The longest a scrape waits for the queue depths; past it they are left out of that
/// scrape (and the miss is logged) rather than hold the scraper.
pub const QUEUE_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Step duration buckets, seconds: from a noop's milliseconds to an hour-long op.
const STEP_SECONDS: [f64; 16] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

/// Apply transaction buckets, seconds: 0.5 ms to about 4 s.
const APPLY_SECONDS: [f64; 14] =
    [0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096];

/// Events per batch buckets: 1 to 1,024 (the batch size is a setting).
const BATCH_EVENTS: [f64; 11] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    op: String,
    version: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
    op: String,
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LookupLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    what: &'static str,
    reason: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The dispatcher's metrics; see the module docs. Cheap to share (`Arc`); every method
/// takes `&self`.
pub struct Metrics {
    registry: Registry,
    steps: Family<StepLabels, Counter>,
    step_seconds: HistogramFamily<StepLabels>,
    apply_seconds: Histogram,
    apply_events: Histogram,
    webhook_deliveries: Family<OutcomeLabels, Counter>,
    refused: Family<RefusedLabels, Counter>,
    catalog_lookups: Family<LookupLabels, Counter>,
    plan_cache: CacheGauges,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("opflow");
        let steps = Family::<StepLabels, Counter>::default();
        registry.register(
            "steps",
            "Steps that reached a terminal state (succeeded, failed, skipped) as this dispatcher applied events, \
             since it started",
            steps.clone(),
        );
        let step_seconds: HistogramFamily<StepLabels> =
            Family::new_with_constructor(|| Histogram::new(STEP_SECONDS));
        registry.register(
            "step_duration_seconds",
            "How long succeeded and failed steps' last attempts ran (finished at - started at, from the worker's result)",
            step_seconds.clone(),
        );
        let apply_seconds = Histogram::new(APPLY_SECONDS);
        registry.register(
            "event_apply_seconds",
            "Time of each committed transaction applying a batch of events",
            apply_seconds.clone(),
        );
        let apply_events = Histogram::new(BATCH_EVENTS);
        registry.register("event_apply_batch_events", "Events in each committed batch", apply_events.clone());
        let webhook_deliveries = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook delivery attempts by outcome",
            webhook_deliveries.clone(),
        );
        let refused = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "refused_messages",
            "Events and cancel records refused because of who sent them (an op speaking for another op's step, \
             a cancel not from the dispatcher)",
            refused.clone(),
        );
        let catalog_lookups = Family::<LookupLabels, Counter>::default();
        registry.register(
            "catalog_lookups",
            "Ready steps looked up in the asset catalog before publishing, by result: reused (a memo hit), \
             missed (runs), unkeyable (a read materialization not in the catalog: no memo key, runs), \
             waiting (an identical step runs), taken and runs (a backfill's cells)",
            catalog_lookups.clone(),
        );
        let plan_cache = CacheGauges::default();
        registry.register(
            "plan_cache_bytes",
            "Bytes the plans of runs in flight hold in the dispatcher's cache (at most `plan_cache_mb`)",
            plan_cache.bytes.clone(),
        );
        registry.register("plan_cache_plans", "Plans in the dispatcher's cache", plan_cache.plans.clone());
        Self {
            registry,
            steps,
            step_seconds,
            apply_seconds,
            apply_events,
            webhook_deliveries,
            refused,
            catalog_lookups,
            plan_cache,
        }
    }

    /// The gauges the plan cache keeps current (`opflow_plan_cache_bytes`, `…_plans`).
    pub fn plan_cache_gauges(&self) -> CacheGauges {
        self.plan_cache.clone()
    }

    /// Records one committed batch of `events` events that took `elapsed`, and the steps it
    /// moved to a terminal state. Call only after the commit: a rolled-back batch is
    /// applied again, and would be counted twice.
    pub fn applied(&self, events: usize, elapsed: Duration, terminal: &[TerminalStep]) {
        self.apply_seconds.observe(elapsed.as_secs_f64());
        self.apply_events.observe(events as f64);
        if terminal.is_empty() {
            return;
        }
        // One label set (two strings) per op version and status in the batch, not per step.
        let mut by_label: HashMap<(&opflow_protocol::OpRef, TerminalStatus), Vec<Option<f64>>> =
            HashMap::new();
        for step in terminal {
            by_label.entry((step.op(), step.status)).or_default().push(step.seconds);
        }
        for ((op, status), seconds) in by_label {
            let labels = StepLabels {
                op: op.name.to_string(),
                version: op.version.to_string(),
                status: status.as_str(),
            };
            self.steps.get_or_create(&labels).inc_by(seconds.len() as u64);
            let observed: Vec<f64> = seconds.into_iter().flatten().collect();
            if !observed.is_empty() {
                let histogram = self.step_seconds.get_or_create(&labels);
                for seconds in observed {
                    histogram.observe(seconds.max(0.0));
                }
            }
        }
    }

    /// Counts steps failed for good without an event: [`Store::fail_run`], the last resort
    /// when an event of the run cannot be applied at all (its transaction is committed).
    pub fn failed_without_event(&self, failed: &[(opflow_protocol::OpRef, u64)]) {
        for (op, count) in failed {
            let labels = StepLabels {
                op: op.name.to_string(),
                version: op.version.to_string(),
                status: TerminalStatus::Failed.as_str(),
            };
            self.steps.get_or_create(&labels).inc_by(*count);
        }
    }

    /// Counts `n` ready steps looked up in the catalog with `result` (see the metric's help):
    /// `opflow_catalog_lookups_total{result}`, from `service::reuse`.
    pub fn catalog_lookups(&self, result: &'static str, n: u64) {
        if n > 0 {
            self.catalog_lookups.get_or_create(&LookupLabels { result }).inc_by(n);
        }
    }

    /// Counts one webhook delivery attempt by its outcome (`delivered`, `retrying`, or
    /// `failed`: given up): `opflow_webhook_deliveries_total{outcome}`, from
    /// `service::webhooks::record_attempt`. The outcomes are a small fixed set: each is a series.
    pub fn webhook_delivery(&self, outcome: &str) {
        self.webhook_deliveries.get_or_create(&OutcomeLabels { outcome: outcome.to_owned() }).inc();
    }

    /// Counts one message refused for its sender (`what`: `event` or `cancel`; `reason`: a
    /// fixed label value, see the module docs).
    pub fn refused(&self, what: &'static str, reason: &'static str) {
        self.refused.get_or_create(&RefusedLabels { what, reason }).inc();
    }

    /// The exposition text: every metric, with the queue depths read from `store` now
    /// (left out if that takes longer than [`QUEUE_READ_TIMEOUT`] or fails).
    pub async fn render(&self, store: &Store) -> String {
        let queues = match tokio::time::timeout(QUEUE_READ_TIMEOUT, store.queues().depths()).await {
            Ok(Ok(depths)) => Some(depths),
            Ok(Err(error)) => {
                tracing::warn!(%error, "reading queue depths for /metrics failed; leaving them out");
                None
            }
            Err(_) => {
                tracing::warn!(timeout = ?QUEUE_READ_TIMEOUT, "reading queue depths for /metrics timed out; leaving them out");
                None
            }
        };
        let mut out = String::new();
        // Writing to a String cannot fail; the encoder's `fmt::Error` only reports a writer's.
        let _ = text::encode_registry(&mut out, &self.registry);
        if let Some(queues) = queues {
            let _ = text::encode_registry(&mut out, &queue_registry(&queues));
        }
        let _ = text::encode_eof(&mut out);
        out
    }
}

/// The queue depths of one scrape, as gauges of a registry of their own: an op version
/// no longer registered simply stops appearing.
fn queue_registry(depths: &[crate::store::queues::QueueDepthRow]) -> Registry {
    let mut registry = Registry::with_prefix("opflow");
    let ready = Family::<QueueLabels, Gauge>::default();
    let running = Family::<QueueLabels, Gauge>::default();
    for depth in depths {
        let labels = QueueLabels {
            queue: opflow_protocol::queue::op_queue(&depth.op),
            op: depth.op.name.to_string(),
            version: depth.op.version.to_string(),
        };
        ready.get_or_create(&labels).set(i64::try_from(depth.ready).unwrap_or(i64::MAX));
        running.get_or_create(&labels).set(i64::try_from(depth.running).unwrap_or(i64::MAX));
    }
    registry.register(
        "queue_ready",
        "Steps queued for the op version: on its queue or about to be published",
        ready,
    );
    registry.register("queue_running", "Steps the op version's workers hold (unacked messages)", running);
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(text: &str, name: &str) -> Vec<String> {
        text.lines().filter(|l| l.starts_with(name)).map(str::to_owned).collect()
    }

    #[test]
    fn webhook_outcomes_are_counted_by_outcome() {
        let metrics = Metrics::new();
        metrics.webhook_delivery("delivered");
        metrics.webhook_delivery("delivered");
        metrics.webhook_delivery("failed");
        let mut text = String::new();
        text::encode(&mut text, &metrics.registry).unwrap();
        let mut got = samples(&text, "opflow_webhook_deliveries_total");
        got.sort();
        assert_eq!(
            got,
            [
                "opflow_webhook_deliveries_total{outcome=\"delivered\"} 2",
                "opflow_webhook_deliveries_total{outcome=\"failed\"} 1"
            ],
            "{text}"
        );
    }
}
