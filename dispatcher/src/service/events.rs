//! The events consumer: reads what workers report, applies it to the run store in batches
//! (one transaction each), and acks a batch only after its transaction committed. It reads
//! two queues as one, the events that move steps always first and log lines and progress
//! after (see `opflow_protocol::queue::DISPATCHER_TELEMETRY_QUEUE`), so a flood of log lines
//! holds up no step's result, heartbeat or recovery. A crash
//! in between redelivers the batch, which applies idempotently. An event that cannot be
//! applied fails only its own step (see `service::applier`).

use std::{collections::HashSet, time::Duration};

use futures_util::{FutureExt, StreamExt};
use lapin::{
    Channel, Connection, Consumer,
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions},
    types::FieldTable,
};
use opflow_amqp::trace;
use opflow_protocol::{Event, queue};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    service::{
        applier::Applier,
        senders::{self, SenderCheck},
    },
    store::storable::StorableEvent,
};

/// A batch stops gathering once its events hold this many bytes: a batch is held in memory
/// several times over while it is applied (decoded, bound, encoded), and events carrying
/// 64 KiB outputs must not multiply into hundreds of megabytes.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("consuming {queue}: {cause}")]
    Consume { queue: &'static str, cause: lapin::Error },
    #[error("the broker cancelled the dispatcher's consumer of {0}; was the queue deleted?")]
    Cancelled(&'static str),
}

pub struct EventConsumer {
    pub applier: Applier,
    /// Set when ops must speak for themselves (`op_identity`): an event from anyone but
    /// the op version of its step is dropped and counted.
    pub senders: Option<SenderCheck>,
    pub batch_size: u32,
    /// How long a batch waits for more events when the previous batch showed they arrive
    /// faster than they are applied (`event_linger_ms`). Each transaction has a fixed cost
    /// (its statements' planning, the commit's WAL flush, the notifications), which a
    /// longer batch spreads over more events: under w1's load, 3 ms gave batches of ~5
    /// events and ~430 us of dispatcher and PostgreSQL CPU per step, 20 ms ~200 us (see
    /// docs/benchmarks.md). A lone event (a chain, a quiet system) never waits.
    pub linger: Duration,
}

/// Which of the dispatcher's two queues a delivery came from: each is consumed on a channel
/// of its own, and acked there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// [`queue::DISPATCHER_EVENTS_QUEUE`]: what moves steps.
    Lifecycle,
    /// [`queue::DISPATCHER_TELEMETRY_QUEUE`]: log lines and progress.
    Telemetry,
}

/// The events queue's and the telemetry queue's consumers, read as one: the events that
/// move steps are always taken first, so a flood of log lines delays only log lines.
struct Consumers {
    lifecycle: Consumer,
    telemetry: Consumer,
}

impl Consumers {
    /// The next delivery, an event that moves a step before any log line.
    async fn next(&mut self) -> Result<(Source, Delivery), EventsError> {
        tokio::select! {
            biased;
            next = self.lifecycle.next() => take(Source::Lifecycle, next),
            next = self.telemetry.next() => take(Source::Telemetry, next),
        }
    }

    /// A delivery that has already arrived, if any (lifecycle first).
    fn ready(&mut self) -> Option<Result<(Source, Delivery), EventsError>> {
        if let Some(next) = self.lifecycle.next().now_or_never() {
            return Some(take(Source::Lifecycle, next));
        }
        self.telemetry.next().now_or_never().map(|next| take(Source::Telemetry, next))
    }
}

fn take(
    source: Source,
    next: Option<Result<Delivery, lapin::Error>>,
) -> Result<(Source, Delivery), EventsError> {
    let queue = match source {
        Source::Lifecycle => queue::DISPATCHER_EVENTS_QUEUE,
        Source::Telemetry => queue::DISPATCHER_TELEMETRY_QUEUE,
    };
    match next {
        Some(delivery) => Ok((source, delivery.map_err(|cause| EventsError::Consume { queue, cause })?)),
        None => Err(EventsError::Cancelled(queue)),
    }
}

impl EventConsumer {
    /// Consumes until cancelled; unacked deliveries go back to their queues when it returns.
    pub async fn run(self, connection: &Connection, cancel: CancellationToken) -> Result<(), EventsError> {
        // Enough unacked deliveries for the next batch to gather while this one commits.
        let prefetch = u16::try_from(self.batch_size.saturating_mul(2)).unwrap_or(u16::MAX);
        let (lifecycle_channel, lifecycle) =
            open_consumer(connection, queue::DISPATCHER_EVENTS_QUEUE, "opflow-dispatcher", prefetch).await?;
        let telemetry_prefetch = u16::try_from(self.batch_size).unwrap_or(u16::MAX);
        let (telemetry_channel, telemetry) = open_consumer(
            connection,
            queue::DISPATCHER_TELEMETRY_QUEUE,
            "opflow-dispatcher-telemetry",
            telemetry_prefetch,
        )
        .await?;
        let mut consumers = Consumers { lifecycle, telemetry };
        let result = self.consume(&mut consumers, &cancel).await;
        // Closing a channel hands any unacked (unapplied) event back to its queue.
        for channel in [lifecycle_channel, telemetry_channel] {
            if let Err(error) = channel.close(200, "dispatcher stopping".into()).await {
                tracing::debug!(%error, "closing an events channel failed");
            }
        }
        result
    }

    async fn consume(
        &self,
        consumers: &mut Consumers,
        cancel: &CancellationToken,
    ) -> Result<(), EventsError> {
        let mut busy = false;
        loop {
            let first = tokio::select! {
                biased;
                () = cancel.cancelled() => return Ok(()),
                next = consumers.next() => next?,
            };
            // Whatever else has already arrived joins the batch. A lone event (a chain of
            // steps, a quiet system) is applied at once. When the last batch held more than
            // one, events are arriving faster than they are applied: linger so each
            // transaction carries more of them (see `EventConsumer::linger`).
            let mut bytes = first.1.data.len();
            let mut deliveries = vec![first];
            let linger_until = busy.then(|| tokio::time::Instant::now() + self.linger);
            while deliveries.len() < self.batch_size as usize && bytes < MAX_BATCH_BYTES {
                let next = match consumers.ready() {
                    Some(next) => next?,
                    None => match linger_until {
                        Some(deadline) => match tokio::time::timeout_at(deadline, consumers.next()).await {
                            Ok(next) => next?,
                            Err(_) => break,
                        },
                        None => break,
                    },
                };
                bytes += next.1.data.len();
                deliveries.push(next);
            }
            busy = deliveries.len() > 1;
            let span = apply_span(&deliveries);
            if !self.apply(deliveries, cancel).instrument(span).await {
                return Ok(());
            }
        }
    }

    /// Applies one batch and settles its deliveries. Returns false when cancelled before the
    /// batch could be applied (its deliveries stay unacked and are redelivered).
    async fn apply(&self, mut deliveries: Vec<(Source, Delivery)>, cancel: &CancellationToken) -> bool {
        // A step's log lines were sent before its result: within a batch they come first
        // (a stable sort keeps each queue's own order).
        deliveries.sort_by_key(|(source, _)| *source == Source::Lifecycle);
        let mut events = Vec::with_capacity(deliveries.len());
        let mut decoded = Vec::with_capacity(deliveries.len());
        for (source, delivery) in deliveries {
            match Event::decode(&delivery.data) {
                Ok(event) => {
                    if let Some(check) = &self.senders {
                        match check.admit(&self.applier, senders::sender(&delivery), &event, cancel).await {
                            None => return false,
                            Some(true) => {}
                            Some(false) => {
                                // Settled at once and alone: dropped, never applied.
                                if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
                                    tracing::debug!(%error, "acking a refused event failed");
                                }
                                continue;
                            }
                        }
                    }
                    events.push(StorableEvent::new(event));
                    decoded.push((source, delivery));
                }
                Err(error) => {
                    tracing::error!(%error, routing_key = %delivery.routing_key, "malformed event; dead-lettering it");
                    reject(&delivery).await;
                }
            }
        }
        if events.is_empty() {
            return true;
        }
        let Some(applied) = self.applier.apply(&events, cancel).await else {
            return false;
        };
        let outcome = &applied.outcome;
        for &position in &outcome.unknown_run {
            let event = &events[position];
            tracing::error!(run_id = %event.run_id, step_id = %event.step_id, kind = event.kind.name(),
                "event for a run this dispatcher does not know; dead-lettering it");
            reject(&decoded[position].1).await;
        }
        for &position in &applied.given_up {
            reject(&decoded[position].1).await;
        }
        // One ack per queue settles the batch's deliveries from it (`multiple` covers every
        // earlier delivery still unsettled on that queue's channel, all of which were in
        // this batch or an earlier one; the rejected ones above are settled already).
        let rejected: HashSet<usize> = outcome.unknown_run.iter().chain(&applied.given_up).copied().collect();
        for source in [Source::Telemetry, Source::Lifecycle] {
            let last = decoded
                .iter()
                .enumerate()
                .rev()
                .find(|(position, (from, _))| *from == source && !rejected.contains(position));
            if let Some((_, (_, last))) = last
                && let Err(error) = last.acker.ack(BasicAckOptions { multiple: true }).await
            {
                // The batch is committed; if the ack is lost the events come back and are
                // recognised as duplicates.
                tracing::warn!(%error, "acking applied events failed; they will be redelivered and ignored");
            }
        }
        tracing::debug!(events = events.len(), queued = outcome.queued.len(), "applied a batch of events");
        if outcome.duplicates > 0 {
            tracing::debug!(duplicates = outcome.duplicates, "ignored events that were already applied");
        }
        for (run, status) in &outcome.finished {
            tracing::info!(run_id = %run, status = status.as_str(), "run finished");
        }
        true
    }
}

/// The `apply` span of one batch: it continues the trace of the batch's first event (the
/// worker's `step` span, from the headers; a lone event, as in a chain of steps, keeps its
/// whole trace) and, when spans are exported, links the others' (one span can have one
/// parent). One span per batch, none per event: the hot path stays cheap.
fn apply_span(deliveries: &[(Source, Delivery)]) -> tracing::Span {
    let span = tracing::info_span!("apply", events = deliveries.len());
    let mut headers = deliveries.iter().map(|(_, d)| d.properties.headers().as_ref());
    trace::adopt_parent(&span, headers.next().flatten());
    if opflow_process::telemetry::exporting() {
        for headers in headers {
            trace::link(&span, headers);
        }
    }
    span
}

/// A channel with `prefetch` and a consumer of `queue` on it; shared by the dispatcher's
/// consumers (events, dead letters).
pub(super) async fn open_consumer(
    connection: &Connection,
    queue: &'static str,
    tag: &str,
    prefetch: u16,
) -> Result<(Channel, Consumer), EventsError> {
    let failed = |source| EventsError::Consume { queue, cause: source };
    let channel = connection.create_channel().await.map_err(failed)?;
    channel.basic_qos(prefetch, BasicQosOptions::default()).await.map_err(failed)?;
    let consumer = channel
        .basic_consume(queue.into(), tag.into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .map_err(failed)?;
    Ok((channel, consumer))
}

async fn reject(delivery: &Delivery) {
    if let Err(error) = delivery.acker.reject(BasicRejectOptions { requeue: false }).await {
        tracing::warn!(%error, "rejecting a bad event failed");
    }
}
