//! The consume loop: one connection, prefetch 1, one step at a time, ack-late.
//!
//! Prefetch 1 because a long step must not hold queued messages that another replica
//! could run, and because KEDA then sees exactly one unacked message per busy worker.

use std::{sync::Arc, time::Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use lapin::{
    Channel,
    message::Delivery,
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable, ShortString},
};
use opflow_amqp::{Publisher, connect::ConnectRetry, topology, trace};
use opflow_protocol::{Event, EventKind, StepMessage, queue};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    MAX_OUTPUT_BYTES,
    context::StepContext,
    error::StepError,
    lease::StepLease,
    op::{OpSpec, WorkerSettings},
    report::Reporter,
};

/// What every step of this worker shares.
struct Worker {
    spec: Arc<OpSpec>,
    settings: WorkerSettings,
    /// `name@version/host/pid`: names this worker in events and in the broker's consumer list.
    id: String,
    reporter: Reporter,
    shutdown: CancellationToken,
}

/// Runs the worker until `shutdown` is cancelled (then drains) or the broker fails.
pub(crate) async fn run(
    spec: Arc<OpSpec>,
    settings: WorkerSettings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let redacted = opflow_process::redact_url(&settings.amqp_url);
    let id = format!("{}/{}/{}", spec.op, hostname(), std::process::id());
    let connection =
        opflow_amqp::connect(&settings.amqp_url, &redacted, &id, ConnectRetry::default(), &shutdown)
            .await
            .context("starting the worker")?;

    // A failed passive declare closes its channel, so check on a throwaway one.
    let probe = connection.create_channel().await.context("opening a channel")?;
    topology::check_op_queue(&probe, &spec.op)
        .await
        .with_context(|| format!("starting worker for {}", spec.op))?;
    if let Err(error) = probe.close(200, "queue checked".into()).await {
        tracing::debug!(%error, "closing the probe channel failed");
    }

    let publisher = Publisher::open(&connection).await.context("opening the events channel")?;
    let reporter_stop = CancellationToken::new();
    let (reporter, reporter_task) = Reporter::spawn(publisher.clone(), reporter_stop.clone());

    let channel = connection.create_channel().await.context("opening the consume channel")?;
    // Prefetch 1: see the module docs.
    channel.basic_qos(1, BasicQosOptions::default()).await.context("setting prefetch 1")?;
    let queue_name = queue::op_queue(&spec.op);
    let mut consumer = channel
        .basic_consume(
            queue_name.as_str().into(),
            id.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("consuming {queue_name}"))?;
    tracing::info!(op = %spec.op, queue = %queue_name, worker = %id, "consuming");

    let worker = Worker { spec, settings, id, reporter, shutdown: shutdown.clone() };
    let mut consuming = true;
    let outcome: anyhow::Result<()> = async {
        loop {
            let delivery = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(error)) => return Err(error).with_context(|| format!("consuming {queue_name}")),
                    None => bail!("the broker cancelled the consumer of {queue_name}; was the queue deleted?"),
                },
            };
            let step = worker.handle(delivery);
            tokio::pin!(step);
            let result = tokio::select! {
                result = &mut step => result,
                () = shutdown.cancelled() => {
                    // Stop consuming now so the broker hands the next message to another
                    // replica, then finish the step in hand.
                    stop_consuming(&channel, &worker.id).await;
                    consuming = false;
                    step.await
                }
            };
            result?;
        }
        Ok(())
    }
    .await;

    if consuming {
        stop_consuming(&channel, &worker.id).await;
    }
    // Closing the channel returns any message that was prefetched but not started.
    if let Err(error) = channel.close(200, "worker stopping".into()).await {
        tracing::debug!(%error, "closing the consume channel failed");
    }
    drop(worker);
    reporter_stop.cancel();
    if let Err(error) = reporter_task.await {
        tracing::warn!(%error, "the event publisher task failed");
    }
    // Close every channel before the connection, so that nothing is torn down under a
    // channel still closing (lapin reports that as a connection error).
    if let Err(error) = publisher.channel().close(200, "worker stopping".into()).await {
        tracing::debug!(%error, "closing the events channel failed");
    }
    if let Err(error) = connection.close(200, "worker stopping".into()).await {
        tracing::debug!(%error, "closing the connection failed");
    }
    if outcome.is_ok() {
        tracing::info!("stopped cleanly");
    }
    outcome
}

async fn stop_consuming(channel: &Channel, consumer_tag: &str) {
    if let Err(error) = channel.basic_cancel(consumer_tag.into(), BasicCancelOptions::default()).await {
        tracing::warn!(%error, "cancelling the consumer failed");
    }
}

impl Worker {
    /// Runs one delivery to its end: a settled lease, or an error that leaves the message
    /// unacked for redelivery.
    async fn handle(&self, delivery: Delivery) -> anyhow::Result<()> {
        let lease = StepLease::new(delivery.acker.clone());
        let message = match StepMessage::decode(&delivery.data) {
            Ok(message) => message,
            Err(error) => {
                tracing::error!(%error, queue = %queue::op_queue(&self.spec.op), "malformed step message; dead-lettering it");
                return Ok(lease.dead_letter().await?);
            }
        };
        if message.op != self.spec.op {
            tracing::error!(
                message_op = %message.op,
                run_id = %message.run_id,
                step_id = %message.step_id,
                "step for another op version arrived on this queue; dead-lettering it"
            );
            return Ok(lease.dead_letter().await?);
        }
        let span = tracing::info_span!(
            "step",
            run_id = %message.run_id,
            step_id = %message.step_id,
            attempt = message.attempt,
            op = %message.op,
            step = %message.label(),
        );
        trace::adopt_parent(&span, delivery.properties.headers().as_ref());
        let deliveries = delivery_count(delivery.properties.headers().as_ref());
        self.run_step(message, lease, delivery.redelivered, deliveries).instrument(span).await
    }

    async fn run_step(
        &self,
        message: StepMessage,
        lease: StepLease,
        redelivered: bool,
        deliveries: Option<i64>,
    ) -> anyhow::Result<()> {
        if redelivered {
            tracing::warn!(
                previous_deliveries = deliveries,
                "step was delivered before (a worker died or gave it back); running it again"
            );
        }
        let started = Instant::now();
        let (run_id, step_id, attempt) = (message.run_id, message.step_id, message.attempt);
        let event = |kind| Event::new(run_id, step_id, attempt, self.id.clone(), kind);
        self.reporter.send(event(EventKind::Started { op: self.spec.op.clone() }));

        let kind = match self.execute(message).await {
            Ok(output) => match output_size_error(&output) {
                None => EventKind::Succeeded { output },
                Some(error) => EventKind::Failed { error, retryable: false },
            },
            Err(error) => {
                EventKind::Failed { retryable: error.is_retryable(), error: error.message().to_owned() }
            }
        };
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match &kind {
            EventKind::Failed { error, retryable } => {
                tracing::warn!(elapsed_ms, %error, retryable, "step failed")
            }
            _ => tracing::info!(elapsed_ms, "step succeeded"),
        }
        lease.complete(&self.reporter, event(kind)).await?;
        Ok(())
    }

    /// Runs the handler in its own task (so a panic is contained) under the step's timeout,
    /// with heartbeats while it runs.
    async fn execute(&self, message: StepMessage) -> Result<Value, StepError> {
        let timeout = message.timeout_ms.map(std::time::Duration::from_millis);
        let ctx =
            StepContext::new(message, self.reporter.clone(), self.id.clone(), self.shutdown.child_token());
        let heartbeat = self.spawn_heartbeat(&ctx);
        let mut task = tokio::spawn((self.spec.handler)(ctx).in_current_span());
        let joined = match timeout {
            None => (&mut task).await,
            Some(limit) => match tokio::time::timeout(limit, &mut task).await {
                Ok(joined) => joined,
                Err(_) => {
                    task.abort();
                    heartbeat.abort();
                    return Err(StepError::Retryable(format!(
                        "timed out after {}; raise the asset's `timeout` in the plan if the step needs longer",
                        humantime::format_duration(limit)
                    )));
                }
            },
        };
        heartbeat.abort();
        match joined {
            Ok(result) => result,
            Err(error) if error.is_panic() => {
                Err(StepError::Fatal(format!("the handler panicked: {}", panic_message(error.into_panic()))))
            }
            Err(_) => Err(StepError::Retryable("the handler task was cancelled".into())),
        }
    }

    fn spawn_heartbeat(&self, ctx: &StepContext) -> tokio::task::JoinHandle<()> {
        let (reporter, worker, every) = (self.reporter.clone(), self.id.clone(), self.settings.heartbeat);
        let (run_id, step_id, attempt) = (ctx.run_id(), ctx.step_id(), ctx.attempt());
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.tick().await; // The first tick is immediate; `Started` already said we are alive.
            loop {
                ticks.tick().await;
                reporter.send(Event::new(run_id, step_id, attempt, worker.clone(), EventKind::Heartbeat));
            }
        })
    }
}

/// An output over [`MAX_OUTPUT_BYTES`] fails the step with a message saying what to do.
fn output_size_error(output: &Value) -> Option<String> {
    let size = serde_json::to_vec(output).map(|v| v.len()).unwrap_or(usize::MAX);
    (size > MAX_OUTPUT_BYTES).then(|| {
        format!(
            "the step's output is {size} bytes, over the {} KiB limit; store large data yourself \
             (a file, a table, an object store) and return a reference to it",
            MAX_OUTPUT_BYTES / 1024
        )
    })
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-text panic payload".to_owned()
    }
}

/// The quorum queue's `x-delivery-count` header: how often this message was delivered before.
fn delivery_count(headers: Option<&FieldTable>) -> Option<i64> {
    match headers?.inner().get(&ShortString::from("x-delivery-count"))? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        _ => None,
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn outputs_over_the_limit_are_refused_with_advice() {
        assert_eq!(output_size_error(&json!({"var95": 0.1})), None);
        let big = json!("x".repeat(MAX_OUTPUT_BYTES + 1));
        let error = output_size_error(&big).unwrap();
        assert!(error.contains("64 KiB") && error.contains("reference"), "{error}");
    }

    #[test]
    fn panic_payloads_become_messages() {
        assert_eq!(panic_message(Box::new("boom")), "boom");
        assert_eq!(panic_message(Box::new(String::from("bang"))), "bang");
        assert_eq!(panic_message(Box::new(42)), "a non-text panic payload");
    }
}
