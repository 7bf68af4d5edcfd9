//! One step, from delivery to settled lease: decode it, refuse what no worker of this op
//! could run, skip a step of a canceled run, run the handler in a task of its own (a panic
//! fails the step, not the worker) under its timeout, with heartbeats, stop it when it
//! must stop (timeout, cancel, a channel the broker closed), and report the result before
//! acking (ack-late, through `StepLease`).
//!
//! A handler told to stop sees `StepContext::cancelled()` and has the stop grace to return.
//! One that does not has its step reported, and the worker process exits (`Exit::Recycle`),
//! because nothing else can stop code that does not yield or that runs on blocking threads.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use lapin::{
    Channel,
    message::Delivery,
    types::{AMQPValue, FieldTable, ShortString},
};
use opflow_amqp::trace;
use opflow_protocol::{Event, EventKind, StepMessage, queue};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio_util::{sync::CancellationToken, task::AbortOnDropHandle};
use tracing::Instrument;

use crate::{
    MAX_OUTPUT_BYTES,
    cancel::{Canceled, Cancels},
    context::StepContext,
    error::StepError,
    lease::StepLease,
    op::OpSpec,
    report::Reporter,
    retire::Retirement,
};

/// What every step of one broker session shares.
pub(crate) struct Worker {
    pub(crate) spec: Arc<OpSpec>,
    pub(crate) heartbeat: Duration,
    /// How long a step told to stop (timed out, canceled) has to return by itself before
    /// the worker exits to stop it.
    pub(crate) stop_grace: Duration,
    /// How long a step runs before its custody is handed to the run store (see
    /// `lease::StepLease::hand_over`).
    pub(crate) handover_after: Duration,
    /// The canceled runs this worker knows of, and the step in hand.
    pub(crate) cancels: Cancels,
    /// `name@version/host/pid`: names this worker in events and in the broker's consumer list.
    pub(crate) id: String,
    pub(crate) reporter: Reporter,
    pub(crate) shutdown: CancellationToken,
    /// Reports that could not be published before the session was lost; the next session
    /// publishes them first.
    pub(crate) unsent: Arc<std::sync::Mutex<Vec<Event>>>,
    /// When this worker retires (recycling).
    pub(crate) retirement: Retirement,
    /// The consumer was cancelled to hand a long step over (the broker must not send this
    /// busy worker another message once the step's is acked); the consume loop consumes
    /// again once the step settles.
    pub(crate) consumer_paused: std::sync::atomic::AtomicBool,
}

/// A step still running after this long reports `started`; a quicker one reports only
/// its result (which says when it started). Most steps of a sweep are quicker, and each
/// event saved is a publish, a delivery and a database write saved.
const REPORT_START_AFTER: Duration = Duration::from_millis(100);

/// A step whose message is settled.
pub(crate) struct Settled {
    /// The handler did not stop when told to; see [`Exit::Recycle`].
    pub(crate) recycle: bool,
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
pub(crate) enum StepEnd {
    /// The consume channel closed under the step; the broker has requeued the message.
    ChannelClosed(String),
    /// As `ChannelClosed`, and the handler would not stop: the process must exit.
    ChannelClosedRecycle,
    /// Publishing the result or acking failed; the broker redelivers the message.
    Broker(anyhow::Error),
}

impl Worker {
    /// Runs one delivery to its end: a settled lease, or an error that leaves the message
    /// unacked for redelivery.
    pub(crate) async fn handle(
        &self,
        delivery: Delivery,
        channel: &Channel,
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
        // The step's span covers its execution and its reports (their headers carry its
        // context), and continues the trace of the dispatcher's `publish` span, whose
        // context the message's headers carry.
        let span = step_span(&message, delivery.properties.headers().as_ref());
        let deliveries = delivery_count(delivery.properties.headers().as_ref());
        self.run_step(message, lease, delivery.redelivered, deliveries, channel, channel_closed)
            .instrument(span)
            .await
    }

    async fn run_step(
        &self,
        message: StepMessage,
        lease: StepLease,
        redelivered: bool,
        deliveries: Option<i64>,
        channel: &Channel,
        mut channel_closed: oneshot::Receiver<String>,
    ) -> Result<Settled, StepEnd> {
        let (run_id, step_id, attempt) = (message.run_id, message.step_id, message.attempt);
        let event = |kind| Event::new(run_id, step_id, attempt, self.id.clone(), kind);
        if let Some(canceled) = self.cancels.canceled(run_id, step_id, attempt) {
            // Never start a canceled step; the record says why it did not run.
            tracing::info!(?canceled, "the step was canceled; not running it");
            let error = canceled.error(true);
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
        let running = self.cancels.track(run_id, step_id, attempt);
        let mut lease = lease;
        let executed = self
            .execute(message, started_at, running.token(), channel, &mut channel_closed, &mut lease)
            .await;
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
                let why = self.cancels.canceled(run_id, step_id, attempt).unwrap_or(Canceled::Run);
                let mut error = why.error(false);
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
        // A success is a debug line: the run store records every step's result (`opflow
        // logs`, `opflow status`), and a line per step cost a worker ~10 % of its CPU on a
        // sweep of quick steps (docs/benchmarks.md). A failure is worth a worker's log.
        match &kind {
            EventKind::Failed { error, retryable } => {
                tracing::warn!(elapsed_ms, %error, retryable, "step failed")
            }
            _ => tracing::debug!(elapsed_ms, "step succeeded"),
        }
        let result = event(kind).with_started_at(started_at);
        let handed_over = lease.handed_over();
        if let Err(error) = lease.complete(&self.reporter, result.clone()).await {
            if handed_over {
                // No message to redeliver: the result waits for the next session.
                tracing::warn!(%error, "could not report the handed-over step's result yet; the next session will");
                self.unsent.lock().expect("never poisoned").push(result);
            }
            return Err(StepEnd::Broker(error.into()));
        }
        if recycle {
            tracing::error!(grace = %grace, "the handler did not stop when told to; the step is reported, exiting to stop it");
        }
        Ok(Settled { recycle })
    }

    /// Runs the handler in its own task (so a panic is contained), with heartbeats, until
    /// it returns, or until it must stop: its timeout passed, its run was canceled, or the
    /// consume channel closed under it. Then the handler is told to stop (through
    /// `StepContext::cancelled`) and given the stop grace to return by itself.
    ///
    /// The heartbeats are a timer in this loop rather than a task of their own: a quick
    /// step (most of a sweep) then costs no extra task, spawn and abort, only one timer.
    async fn execute(
        &self,
        message: StepMessage,
        started_at: DateTime<Utc>,
        run_canceled: &CancellationToken,
        channel: &Channel,
        channel_closed: &mut oneshot::Receiver<String>,
        lease: &mut StepLease,
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
        let mut heartbeats = Heartbeats::new(self, &ctx, started_at);
        let watched = ctx.clone();
        let mut task = AbortOnDropHandle::new(tokio::spawn((self.spec.handler)(ctx).in_current_span()));
        let deadline = async {
            match timeout {
                Some(limit) => tokio::time::sleep(limit).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        // The consume loop keeps the sender while it watches the channel; once it drops
        // it, there is nothing more to hear from this branch.
        let mut watching_channel = true;
        let mut handover_at = tokio::time::Instant::now() + self.handover_after;
        let why = loop {
            tokio::select! {
                () = tokio::time::sleep_until(handover_at), if !lease.handed_over() => {
                    if self.hand_over(lease, channel, &heartbeats).await {
                        // The message is settled: the channel closing no longer takes the step away.
                        watching_channel = false;
                    } else {
                        handover_at = tokio::time::Instant::now() + self.heartbeat;
                    }
                }
                joined = &mut task => {
                    self.say_what_was_dropped(&watched).await;
                    return Executed::Finished(handler_result(joined));
                }
                () = &mut deadline => break Stop::TimedOut(timeout.unwrap_or_default()),
                () = run_canceled.cancelled() => break Stop::Canceled,
                closed = &mut *channel_closed, if watching_channel => match closed {
                    Ok(reason) => break Stop::ChannelClosed(reason),
                    Err(_) => watching_channel = false,
                },
                () = tokio::time::sleep_until(heartbeats.next) => heartbeats.beat(),
            }
        };
        stop_step.cancel();
        let handler_stopped = tokio::time::timeout(self.stop_grace, &mut task).await.is_ok();
        self.say_what_was_dropped(&watched).await;
        Executed::Stopped { why, handler_stopped }
    }

    /// Hands a long step's custody to the run store (`StepLease::hand_over`), having stopped
    /// consuming first: once the message is acked, the broker would send this busy worker
    /// the next one, to wait out the step. False if it could not yet (tried again later).
    async fn hand_over(&self, lease: &mut StepLease, channel: &Channel, heartbeats: &Heartbeats) -> bool {
        if !self.consumer_paused.swap(true, std::sync::atomic::Ordering::SeqCst) {
            crate::consume::stop_consuming(channel, &self.id).await;
        }
        match lease.hand_over(&self.reporter, heartbeats.started_event()).await {
            Ok(()) => {
                tracing::info!(after = %humantime::format_duration(self.handover_after),
                    "long step: handed its custody to the run store and acked its message");
                true
            }
            Err(error) => {
                tracing::warn!(%error, "could not hand the long step over yet; trying again");
                false
            }
        }
    }

    /// Sends the materializations and check results that found the event queue full, and
    /// the line saying how many log lines and progress reports the step dropped, if any,
    /// before its result (which follows them on the same ordered queue).
    async fn say_what_was_dropped(&self, ctx: &StepContext) {
        // What must not be dropped first, waiting as long as the publisher runs.
        for event in ctx.take_held_back() {
            self.reporter.send_waiting(event).await;
        }
        if let Some(notice) = ctx.dropped_notice() {
            let waited =
                tokio::time::timeout(Duration::from_secs(5), self.reporter.send_waiting(notice)).await;
            if waited.is_err() {
                tracing::debug!("the line saying what the step dropped could not be queued in time");
            }
        }
    }
}

/// A running step's signs of life: `started` once it has run for [`REPORT_START_AFTER`]
/// (a step that ends sooner says nothing: its result carries `started_at`, and the step
/// costs one event, not two), then a heartbeat every interval. Sent from the step's span,
/// so the events carry its trace context.
struct Heartbeats {
    reporter: Reporter,
    worker: String,
    op: opflow_protocol::OpRef,
    step: (opflow_protocol::RunId, opflow_protocol::StepId, u32),
    started_at: DateTime<Utc>,
    every: Duration,
    /// When the next one is due.
    next: tokio::time::Instant,
    signs: SignsOfLife,
}

/// Which sign of life a running step sends next: `started` until one was queued (one the
/// full event queue dropped is said again at the next beat, or the dispatcher would count
/// the step's held message as lost and run it twice), then heartbeats.
#[derive(Debug, Default)]
struct SignsOfLife {
    started_queued: bool,
}

impl SignsOfLife {
    fn next_is_started(&self) -> bool {
        !self.started_queued
    }

    fn sent(&mut self, started: bool, queued: bool) {
        self.started_queued |= started && queued;
    }
}

impl Heartbeats {
    fn new(worker: &Worker, ctx: &StepContext, started_at: DateTime<Utc>) -> Self {
        Self {
            reporter: worker.reporter.clone(),
            worker: worker.id.clone(),
            op: worker.spec.op.clone(),
            step: (ctx.run_id(), ctx.step_id(), ctx.attempt()),
            started_at,
            every: worker.heartbeat,
            next: tokio::time::Instant::now() + REPORT_START_AFTER,
            signs: SignsOfLife::default(),
        }
    }

    /// A `started` event of this attempt (stamped with its start), as a handover confirms.
    fn started_event(&self) -> Event {
        let (run_id, step_id, attempt) = self.step;
        let mut event = Event::new(
            run_id,
            step_id,
            attempt,
            self.worker.clone(),
            EventKind::Started { op: self.op.clone() },
        );
        event.at = self.started_at;
        event
    }

    fn beat(&mut self) {
        let (run_id, step_id, attempt) = self.step;
        let started = self.signs.next_is_started();
        let kind = if started { EventKind::Started { op: self.op.clone() } } else { EventKind::Heartbeat };
        let mut event = Event::new(run_id, step_id, attempt, self.worker.clone(), kind);
        if started {
            event.at = self.started_at;
        }
        let queued = self.reporter.send(event);
        self.signs.sent(started, queued);
        self.next = tokio::time::Instant::now() + self.every;
    }
}

/// The `step` span of a delivery, continuing the trace its headers carry.
pub(crate) fn step_span(message: &StepMessage, headers: Option<&FieldTable>) -> tracing::Span {
    let span = tracing::info_span!(
        "step",
        run_id = %message.run_id,
        step_id = %message.step_id,
        attempt = message.attempt,
        op = %message.op.name,
        version = %message.op.version,
        step = %message.label(),
    );
    trace::adopt_parent(&span, headers);
    span
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
        Err(error) if error.is_panic() => Err(StepError::Fatal(format!(
            "the handler panicked: {}",
            opflow_process::panic::message(&*error.into_panic())
        ))),
        Err(_) => Err(StepError::Retryable("the handler task was cancelled".into())),
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_started_the_full_queue_dropped_is_said_again_at_the_next_beat() {
        let mut signs = SignsOfLife::default();
        assert!(signs.next_is_started());
        signs.sent(true, false);
        assert!(signs.next_is_started(), "dropped: said again");
        signs.sent(true, true);
        assert!(!signs.next_is_started(), "queued: heartbeats from here on");
        signs.sent(false, false);
        assert!(!signs.next_is_started(), "a dropped heartbeat is only one fewer");
    }

    #[test]
    fn outputs_over_the_limit_are_refused_with_advice() {
        assert_eq!(output_size_error(&json!({"var95": 0.1})), None);
        let big = json!("x".repeat(MAX_OUTPUT_BYTES + 1));
        let error = output_size_error(&big).unwrap();
        assert!(error.contains("64 KiB") && error.contains("reference"), "{error}");
    }
}
