//! The consume loop: one connection at a time (reopened when lost), prefetch 1, one step
//! at a time, ack-late.
//!
//! Prefetch 1 because a long step must not hold queued messages that another replica
//! could run, and because KEDA then sees exactly one unacked message per busy worker.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use lapin::{
    Channel, Connection, Consumer,
    message::Delivery,
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable, ShortString},
};
use opflow_amqp::{
    Publisher,
    connect::{ConnectError, ConnectRetry},
    topology::{self, TopologyError},
    trace,
};
use opflow_protocol::{Event, EventKind, StepMessage, queue};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio_util::{sync::CancellationToken, task::AbortOnDropHandle};
use tracing::Instrument;

use crate::{
    MAX_OUTPUT_BYTES,
    cancel::Cancels,
    context::StepContext,
    error::StepError,
    lease::StepLease,
    op::{OpSpec, WorkerSettings},
    report::Reporter,
};

/// A step still running after this long reports `started`; a quicker one reports only
/// its result (which says when it started). Most steps of a sweep are quicker, and each
/// event saved is a publish, a delivery and a database write saved.
const REPORT_START_AFTER: Duration = Duration::from_millis(100);

/// What every step of one broker session shares.
struct Worker {
    spec: Arc<OpSpec>,
    heartbeat: Duration,
    /// How long a step told to stop (timed out, canceled) has to return by itself before
    /// the worker exits to stop it.
    stop_grace: Duration,
    /// The canceled runs this worker knows of, and the step in hand.
    cancels: Cancels,
    /// `name@version/host/pid`: names this worker in events and in the broker's consumer list.
    id: String,
    reporter: Reporter,
    shutdown: CancellationToken,
    /// Reports that could not be published before the session was lost; the next session
    /// publishes them first.
    unsent: Arc<std::sync::Mutex<Vec<Event>>>,
}

/// How the worker ended, for `Op::main`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Shutdown was requested; the step in hand was settled.
    Stopped,
    /// A step's handler would not stop when told to: the step is settled, and the process
    /// must exit now (without waiting for the handler) so that nothing of it runs on.
    Recycle,
}

/// How one broker session ended.
enum SessionEnd {
    /// Shutdown was requested and the step in hand (if any) is settled.
    Shutdown,
    /// See [`Exit::Recycle`]; the step is settled and the consume channel closed.
    Recycle,
    /// The broker connection or a channel failed; connect again and go on.
    Lost(anyhow::Error),
    /// Reconnecting would not help (the op's queue does not exist).
    Fatal(anyhow::Error),
}

/// A step whose message is settled.
struct Settled {
    /// The handler did not stop when told to; see [`Exit::Recycle`].
    recycle: bool,
}

/// Why a running step was told to stop.
enum Stop {
    TimedOut(Duration),
    Canceled,
    /// The consume channel closed under the step (the broker's consumer timeout, a lost
    /// connection): the broker has requeued the message.
    ChannelClosed(String),
}

/// How the handler's run ended.
enum Executed {
    Finished(Result<Value, StepError>),
    Stopped { why: Stop, handler_stopped: bool },
}

/// How a step ended when it did not settle normally.
enum StepEnd {
    /// The consume channel closed under the step; the broker has requeued the message.
    ChannelClosed(String),
    /// As `ChannelClosed`, and the handler would not stop: the process must exit.
    ChannelClosedRecycle,
    /// Publishing the result or acking failed; the broker redelivers the message.
    Broker(anyhow::Error),
}

/// Runs the worker until `shutdown` is cancelled (then drains). A lost broker connection
/// is opened again with capped, jittered backoff and consuming resumes; only a missing
/// queue (or a broker unreachable at start) ends the worker with an error.
pub(crate) async fn run(
    spec: Arc<OpSpec>,
    settings: WorkerSettings,
    shutdown: CancellationToken,
) -> anyhow::Result<Exit> {
    let redacted = opflow_process::redact_url(&settings.amqp_url);
    let id = format!("{}/{}/{}", spec.op, hostname(), std::process::id());
    // At start a wrong URL should be reported soon; once connected, outages are waited out.
    let mut retry = ConnectRetry::default();
    // Sessions that fail right after connecting (a channel refused, say) are spaced out
    // like connection attempts, so a broker that half-works is not hammered.
    let mut pauses = opflow_amqp::connect::session_backoff();
    let unsent = Arc::new(std::sync::Mutex::new(Vec::new()));
    let cancels = Cancels::default();
    loop {
        let connection =
            match opflow_amqp::connect(&settings.amqp_url, &redacted, &id, retry, &shutdown).await {
                Ok(connection) => connection,
                Err(ConnectError::Cancelled { .. }) => {
                    tracing::info!("stopped while connecting to the broker");
                    return Ok(Exit::Stopped);
                }
                Err(error) => return Err(error).context("starting the worker"),
            };
        let session = Session {
            connection: &connection,
            spec: &spec,
            heartbeat: settings.heartbeat,
            stop_grace: settings.stop_grace,
            cancels: cancels.clone(),
            id: &id,
            unsent: unsent.clone(),
        };
        let session_started = Instant::now();
        let end = session.run(&shutdown).await;
        if let Err(error) = connection.close(200, "worker stopping".into()).await {
            tracing::debug!(%error, "closing the connection failed");
        }
        match end {
            SessionEnd::Shutdown => {
                tracing::info!("stopped cleanly");
                return Ok(Exit::Stopped);
            }
            SessionEnd::Recycle => return Ok(Exit::Recycle),
            SessionEnd::Fatal(error) => return Err(error),
            SessionEnd::Lost(error) => {
                if session_started.elapsed() > Duration::from_secs(60) {
                    pauses = opflow_amqp::connect::session_backoff();
                }
                let pause = pauses.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(error = format!("{error:#}"), retry_in = ?pause, "lost the broker; reconnecting");
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = shutdown.cancelled() => return Ok(Exit::Stopped),
                }
                retry = ConnectRetry::forever();
            }
        }
    }
}

/// One connection's worth of consuming.
struct Session<'a> {
    connection: &'a Connection,
    spec: &'a Arc<OpSpec>,
    heartbeat: Duration,
    stop_grace: Duration,
    cancels: Cancels,
    id: &'a str,
    unsent: Arc<std::sync::Mutex<Vec<Event>>>,
}

impl Session<'_> {
    async fn run(self, shutdown: &CancellationToken) -> SessionEnd {
        // A failed passive declare closes its channel, so check on a throwaway one.
        let checked = async {
            let probe = self.connection.create_channel().await.context("opening a channel")?;
            let checked = topology::check_op_queue(&probe, &self.spec.op).await;
            if checked.is_ok()
                && let Err(error) = probe.close(200, "queue checked".into()).await
            {
                tracing::debug!(%error, "closing the probe channel failed");
            }
            anyhow::Ok(checked)
        };
        match checked.await {
            Ok(Ok(_)) => {}
            Ok(Err(missing @ TopologyError::MissingQueue { .. })) => {
                return SessionEnd::Fatal(
                    anyhow::Error::new(missing).context(format!("starting worker for {}", self.spec.op)),
                );
            }
            Ok(Err(other)) => return SessionEnd::Lost(other.into()),
            Err(error) => return SessionEnd::Lost(error),
        }

        let publisher = match Publisher::open(self.connection).await {
            Ok(publisher) => publisher,
            Err(error) => {
                return SessionEnd::Lost(anyhow::Error::new(error).context("opening the events channel"));
            }
        };
        let reporter_stop = CancellationToken::new();
        let (reporter, reporter_task) = Reporter::spawn(publisher.clone(), reporter_stop.clone());
        let worker = Worker {
            spec: self.spec.clone(),
            heartbeat: self.heartbeat,
            stop_grace: self.stop_grace,
            cancels: self.cancels.clone(),
            id: self.id.to_owned(),
            reporter,
            shutdown: shutdown.clone(),
            unsent: self.unsent.clone(),
        };
        if let Err(error) = worker.publish_unsent().await {
            drop(worker);
            reporter_stop.cancel();
            let _ = reporter_task.await;
            return SessionEnd::Lost(error);
        }

        // Learn every cancel there is before taking a step.
        let follower_stop = CancellationToken::new();
        let follower = self.cancels.follow(self.connection, &publisher, self.id, follower_stop.clone()).await;
        let end = match self.open_consumer().await {
            Ok((channel, consumer)) => {
                let end = worker.consume(&channel, consumer).await;
                // Closing the channel returns any message that was prefetched but not started.
                if let Err(error) = channel.close(200, "worker stopping".into()).await {
                    tracing::debug!(%error, "closing the consume channel failed");
                }
                end
            }
            Err(error) => SessionEnd::Lost(error),
        };

        follower_stop.cancel();
        if let Some(follower) = follower
            && let Err(error) = follower.await
        {
            tracing::warn!(%error, "the cancels follower failed");
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
        end
    }

    async fn open_consumer(&self) -> anyhow::Result<(Channel, Consumer)> {
        let channel = self.connection.create_channel().await.context("opening the consume channel")?;
        // Prefetch 1: see the module docs.
        channel.basic_qos(1, BasicQosOptions::default()).await.context("setting prefetch 1")?;
        let queue_name = queue::op_queue(&self.spec.op);
        let consumer = channel
            .basic_consume(
                queue_name.as_str().into(),
                self.id.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consuming {queue_name}"))?;
        tracing::info!(op = %self.spec.op, queue = %queue_name, worker = %self.id, "consuming");
        Ok((channel, consumer))
    }
}

impl Worker {
    /// Publishes what the previous session could not, before taking new work.
    async fn publish_unsent(&self) -> anyhow::Result<()> {
        let pending = std::mem::take(&mut *self.unsent.lock().expect("never poisoned"));
        let mut pending = pending.into_iter();
        while let Some(event) = pending.next() {
            if let Err(error) = self.reporter.publish_confirmed(event.clone()).await {
                let mut unsent = self.unsent.lock().expect("never poisoned");
                unsent.push(event);
                unsent.extend(pending);
                return Err(
                    anyhow::Error::new(error).context("publishing the reports of the previous session")
                );
            }
        }
        Ok(())
    }

    /// Takes deliveries one at a time until shutdown (finishing the step in hand) or until
    /// the channel or connection fails.
    async fn consume(&self, channel: &Channel, mut consumer: Consumer) -> SessionEnd {
        let queue_name = queue::op_queue(&self.spec.op);
        // A delivery that arrived while the previous step was finishing (the broker sends
        // the next message as soon as it has the ack, before the step's future returns).
        let mut arrived: Option<Delivery> = None;
        loop {
            let delivery = match arrived.take() {
                Some(delivery) => delivery,
                None => tokio::select! {
                    biased;
                    () = self.shutdown.cancelled() => {
                        stop_consuming(channel, &self.id).await;
                        return SessionEnd::Shutdown;
                    }
                    next = consumer.next() => match next {
                        Some(Ok(delivery)) => delivery,
                        Some(Err(error)) => {
                            return SessionEnd::Lost(anyhow::Error::new(error).context(format!("consuming {queue_name}")));
                        }
                        // The broker cancels a consumer whose queue was deleted; a consumer
                        // also ends when its channel closes, which reconnecting cures.
                        None if channel.status().connected() => {
                            return SessionEnd::Fatal(anyhow::anyhow!(
                                "the broker cancelled the consumer of {queue_name}; was the queue deleted? \
                                 Register the op again with `opflow ops add`"
                            ));
                        }
                        None => return SessionEnd::Lost(anyhow::anyhow!("the consume channel of {queue_name} closed")),
                    },
                },
            };

            // While the step runs, keep watching the consumer: an error or its end means
            // the channel is gone (the broker's consumer timeout, or a lost connection),
            // and the step must stop; its message is already back on the queue.
            let (closed_tx, closed_rx) = oneshot::channel();
            let mut closed_tx = Some(closed_tx);
            let mut consuming = true;
            let step = self.handle(delivery, closed_rx);
            tokio::pin!(step);
            let result = loop {
                tokio::select! {
                    result = &mut step => break result,
                    () = self.shutdown.cancelled(), if consuming => {
                        // Stop consuming now so the broker hands the next message to
                        // another replica, then finish the step in hand.
                        stop_consuming(channel, &self.id).await;
                        consuming = false;
                    }
                    next = consumer.next(), if consuming && closed_tx.is_some() && arrived.is_none() => {
                        let reason = match next {
                            Some(Ok(delivery)) => {
                                // The step has acked and the next message is already here.
                                arrived = Some(delivery);
                                continue;
                            }
                            Some(Err(error)) => error.to_string(),
                            None => "the broker cancelled the consumer".to_owned(),
                        };
                        if let Some(tx) = closed_tx.take() {
                            let _ = tx.send(reason);
                        }
                    }
                }
            };
            match result {
                Ok(Settled { recycle: true }) | Err(StepEnd::ChannelClosedRecycle) => {
                    // Close the channel (waiting for the broker's close-ok, so the ack is
                    // through) before the process exits under the runaway handler.
                    if let Err(error) = channel.close(200, "worker recycling".into()).await {
                        tracing::warn!(%error, "closing the consume channel failed");
                    }
                    return SessionEnd::Recycle;
                }
                Ok(Settled { recycle: false }) if consuming => {}
                // Shutdown stopped consuming during the step; a message that arrived in
                // the meantime goes back to the queue when the channel closes.
                Ok(Settled { recycle: false }) => return SessionEnd::Shutdown,
                Err(StepEnd::ChannelClosed(reason)) => {
                    return SessionEnd::Lost(anyhow::anyhow!(
                        "the consume channel closed under a step: {reason}"
                    ));
                }
                Err(StepEnd::Broker(error)) => return SessionEnd::Lost(error),
            }
            // The consumer reported its end during the step, but the step settled first:
            // the channel is gone all the same.
            if closed_tx.is_none() {
                return SessionEnd::Lost(anyhow::anyhow!("the consume channel of {queue_name} closed"));
            }
        }
    }

    /// Runs one delivery to its end: a settled lease, or an error that leaves the message
    /// unacked for redelivery.
    async fn handle(
        &self,
        delivery: Delivery,
        channel_closed: oneshot::Receiver<String>,
    ) -> Result<Settled, StepEnd> {
        let lease = StepLease::new(delivery.acker.clone());
        let message = match StepMessage::decode(&delivery.data) {
            Ok(message) => message,
            Err(error) => {
                tracing::error!(%error, queue = %queue::op_queue(&self.spec.op), "malformed step message; dead-lettering it");
                lease.dead_letter().await.map_err(|e| StepEnd::Broker(e.into()))?;
                return Ok(Settled { recycle: false });
            }
        };
        if message.op != self.spec.op {
            tracing::error!(
                message_op = %message.op,
                run_id = %message.run_id,
                step_id = %message.step_id,
                "step for another op version arrived on this queue; dead-lettering it"
            );
            lease.dead_letter().await.map_err(|e| StepEnd::Broker(e.into()))?;
            return Ok(Settled { recycle: false });
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
        self.run_step(message, lease, delivery.redelivered, deliveries, channel_closed).instrument(span).await
    }

    async fn run_step(
        &self,
        message: StepMessage,
        lease: StepLease,
        redelivered: bool,
        deliveries: Option<i64>,
        mut channel_closed: oneshot::Receiver<String>,
    ) -> Result<Settled, StepEnd> {
        let (run_id, step_id, attempt) = (message.run_id, message.step_id, message.attempt);
        let event = |kind| Event::new(run_id, step_id, attempt, self.id.clone(), kind);
        if self.cancels.is_canceled(run_id) {
            // Never start a step of a canceled run; the record says why it did not run.
            tracing::info!("the step's run was canceled; not running it");
            let error = "canceled: the run was canceled before this step started".to_owned();
            let result = event(EventKind::Failed { error, retryable: false });
            lease.complete(&self.reporter, result).await.map_err(|e| StepEnd::Broker(e.into()))?;
            return Ok(Settled { recycle: false });
        }
        if redelivered {
            tracing::warn!(
                previous_deliveries = deliveries,
                "step was delivered before (a worker died or gave it back); running it again"
            );
        }
        let started = Instant::now();
        let started_at = Utc::now();
        let running = self.cancels.track(run_id);
        let executed = self.execute(message, started_at, running.token(), &mut channel_closed).await;
        drop(running);

        let grace = humantime::format_duration(self.stop_grace);
        let exits = format!(
            "; the handler did not stop within {grace} of being told to, so its worker process exited to stop it \
             (check `ctx.cancelled()` in long work to stop in time)"
        );
        let (kind, recycle) = match executed {
            Executed::Finished(Ok(output)) => match output_size_error(&output) {
                None => (EventKind::Succeeded { output }, false),
                Some(error) => (EventKind::Failed { error, retryable: false }, false),
            },
            Executed::Finished(Err(error)) => (
                EventKind::Failed { retryable: error.is_retryable(), error: error.message().to_owned() },
                false,
            ),
            Executed::Stopped { why: Stop::TimedOut(limit), handler_stopped } => {
                let mut error = format!(
                    "timed out after {}; raise the asset's `timeout` in the plan if the step needs longer",
                    humantime::format_duration(limit)
                );
                if !handler_stopped {
                    error.push_str(&exits);
                }
                (EventKind::Failed { error, retryable: true }, !handler_stopped)
            }
            Executed::Stopped { why: Stop::Canceled, handler_stopped } => {
                let mut error = "canceled: the run was canceled while this step ran".to_owned();
                if !handler_stopped {
                    error.push_str(&exits);
                }
                (EventKind::Failed { error, retryable: false }, !handler_stopped)
            }
            Executed::Stopped { why: Stop::ChannelClosed(reason), handler_stopped } => {
                // The broker has already requeued the message: finishing the step would
                // only run it twice. Say why it stopped, and let the next delivery run it.
                lease.abandon();
                let elapsed = humantime::format_duration(Duration::from_secs(started.elapsed().as_secs()));
                let reason = format!(
                    "the broker closed the worker's channel after {elapsed} ({reason}); if the step runs \
                     longer than the broker's consumer_timeout, raise it (see docs/reliability.md)"
                );
                tracing::warn!(%reason, "step stopped: its message is back on the queue");
                let abandoned = event(EventKind::Abandoned { reason: reason.clone() });
                let told = self.reporter.publish_confirmed(abandoned.clone());
                if !matches!(tokio::time::timeout(Duration::from_secs(5), told).await, Ok(Ok(()))) {
                    tracing::debug!("could not report the abandoned step yet; the next session will");
                    self.unsent.lock().expect("never poisoned").push(abandoned);
                }
                if !handler_stopped {
                    tracing::error!(grace = %grace, "the handler did not stop when told to; exiting to stop it");
                    return Err(StepEnd::ChannelClosedRecycle);
                }
                return Err(StepEnd::ChannelClosed(reason));
            }
        };
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match &kind {
            EventKind::Failed { error, retryable } => {
                tracing::warn!(elapsed_ms, %error, retryable, "step failed")
            }
            _ => tracing::info!(elapsed_ms, "step succeeded"),
        }
        let result = event(kind).with_started_at(started_at);
        lease.complete(&self.reporter, result).await.map_err(|e| StepEnd::Broker(e.into()))?;
        if recycle {
            tracing::error!(grace = %grace, "the handler did not stop when told to; the step is reported, exiting to stop it");
        }
        Ok(Settled { recycle })
    }

    /// Runs the handler in its own task (so a panic is contained), with heartbeats, until
    /// it returns, or until it must stop: its timeout passed, its run was canceled, or the
    /// consume channel closed under it. Then the handler is told to stop (through
    /// `StepContext::cancelled`) and given the stop grace to return by itself.
    async fn execute(
        &self,
        message: StepMessage,
        started_at: DateTime<Utc>,
        run_canceled: &CancellationToken,
        channel_closed: &mut oneshot::Receiver<String>,
    ) -> Executed {
        let timeout = message.timeout_ms.map(Duration::from_millis);
        let stop_step = CancellationToken::new();
        let ctx = StepContext::new(
            message,
            self.reporter.clone(),
            self.id.clone(),
            self.shutdown.child_token(),
            stop_step.clone(),
        );
        let _heartbeat = AbortOnDropHandle::new(self.spawn_heartbeat(&ctx, started_at));
        let mut task = AbortOnDropHandle::new(tokio::spawn((self.spec.handler)(ctx).in_current_span()));
        let deadline = async {
            match timeout {
                Some(limit) => tokio::time::sleep(limit).await,
                None => std::future::pending().await,
            }
        };
        let why = tokio::select! {
            joined = &mut task => return Executed::Finished(handler_result(joined)),
            () = deadline => Stop::TimedOut(timeout.unwrap_or_default()),
            () = run_canceled.cancelled() => Stop::Canceled,
            Ok(reason) = channel_closed => Stop::ChannelClosed(reason),
        };
        stop_step.cancel();
        let handler_stopped = tokio::time::timeout(self.stop_grace, &mut task).await.is_ok();
        Executed::Stopped { why, handler_stopped }
    }

    /// Reports `started` once the step has run for [`REPORT_START_AFTER`], then a heartbeat
    /// every `heartbeat` interval. A step that ends sooner aborts this task before it says
    /// anything: its result carries `started_at`, and the step costs one event, not two.
    fn spawn_heartbeat(&self, ctx: &StepContext, started_at: DateTime<Utc>) -> tokio::task::JoinHandle<()> {
        let (reporter, worker, every) = (self.reporter.clone(), self.id.clone(), self.heartbeat);
        let (run_id, step_id, attempt) = (ctx.run_id(), ctx.step_id(), ctx.attempt());
        let op = self.spec.op.clone();
        tokio::spawn(async move {
            tokio::time::sleep(REPORT_START_AFTER).await;
            let mut started = Event::new(run_id, step_id, attempt, worker.clone(), EventKind::Started { op });
            started.at = started_at;
            reporter.send(started);
            let mut ticks = tokio::time::interval(every);
            ticks.tick().await; // The first tick is immediate; `started` just said we are alive.
            loop {
                ticks.tick().await;
                reporter.send(Event::new(run_id, step_id, attempt, worker.clone(), EventKind::Heartbeat));
            }
        })
    }
}

async fn stop_consuming(channel: &Channel, consumer_tag: &str) {
    if let Err(error) = channel.basic_cancel(consumer_tag.into(), BasicCancelOptions::default()).await {
        tracing::warn!(%error, "cancelling the consumer failed");
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

/// A handler task's outcome as a step result.
fn handler_result(
    joined: Result<Result<Value, StepError>, tokio::task::JoinError>,
) -> Result<Value, StepError> {
    match joined {
        Ok(result) => result,
        Err(error) if error.is_panic() => {
            Err(StepError::Fatal(format!("the handler panicked: {}", panic_message(error.into_panic()))))
        }
        Err(_) => Err(StepError::Retryable("the handler task was cancelled".into())),
    }
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
