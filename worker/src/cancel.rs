//! Run cancellation, as a worker learns it. The dispatcher appends a record to the
//! cancels stream when a run is canceled (`opflow_protocol::cancel`). Each broker session
//! reads the stream from the start of its retention, appends a marker of its own and reads
//! on until it sees it, so by the time the worker takes a step it knows every cancel that
//! came before; then it follows the stream. A step of a canceled run never starts here,
//! and the step in hand is told to stop the moment its run is canceled.
//!
//! Only the dispatcher cancels a run: a record counts only if its `user_id`, which the
//! broker checks against the publisher's login, is the dispatcher's user. Ops may write to
//! the stream (their markers go there), so another op's forged record reaches every
//! worker, and is ignored by each (the dispatcher counts it: `service::cancels_audit`).
//!
//! A broker without the stream (a dispatcher older than cancellation) is worked with all
//! the same: the worker says once that it cannot see cancels, and runs every step.

use std::{
    num::NonZeroUsize,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::StreamExt;
use lapin::{
    Channel, Connection, Consumer,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use opflow_amqp::{Outgoing, Publisher};
use opflow_protocol::{CancelKind, CancelRecord, RunId, StepId, queue};
use tokio_util::sync::CancellationToken;

/// Canceled runs remembered; older ones are forgotten first (their queued steps are long
/// gone, or run and are ignored).
const REMEMBERED: usize = 100_000;

/// How long a new session reads the stream for its marker before it takes steps anyway.
const CATCH_UP: Duration = Duration::from_secs(5);

/// What this worker knows of canceled runs, and the step it is running. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Cancels {
    state: Arc<Mutex<State>>,
    /// The only user whose records cancel a run.
    dispatcher_user: Arc<str>,
}

struct State {
    canceled: lru::LruCache<RunId, ()>,
    /// Single step attempts canceled (a newer step of their concurrency key replaced them).
    canceled_steps: lru::LruCache<(RunId, StepId, u32), ()>,
    running: Option<((RunId, StepId, u32), CancellationToken)>,
}

/// Why a step is not to run (on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Canceled {
    /// Its run was canceled.
    Run,
    /// The step alone was canceled: a newer step of its concurrency key took its place.
    Step,
}

impl Canceled {
    /// The step's error, `before` it started or while it ran.
    pub(crate) fn error(self, before: bool) -> String {
        let when = if before { "before this step started" } else { "while this step ran" };
        match self {
            Canceled::Run => format!("canceled: the run was canceled {when}"),
            Canceled::Step => format!(
                "canceled: the dispatcher canceled this step {when}: a newer step of its concurrency key took its place"
            ),
        }
    }
}

/// The step in hand; its token is cancelled when its run is. Dropping it ends the tracking.
pub(crate) struct Running {
    cancels: Cancels,
    token: CancellationToken,
}

impl Running {
    pub(crate) fn token(&self) -> &CancellationToken {
        &self.token
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cancels.lock().running = None;
    }
}

impl From<String> for Cancels {
    /// Cancels that only `dispatcher_user` can make.
    fn from(dispatcher_user: String) -> Self {
        let capacity = NonZeroUsize::new(REMEMBERED).expect("a positive capacity");
        Self {
            state: Arc::new(Mutex::new(State {
                canceled: lru::LruCache::new(capacity),
                canceled_steps: lru::LruCache::new(capacity),
                running: None,
            })),
            dispatcher_user: dispatcher_user.into(),
        }
    }
}

impl Cancels {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every critical section is a single insert, lookup or swap: a panic cannot leave
        // the state half-changed, so a poisoned lock is still good.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether attempt `attempt` of `step` in `run` is canceled, and why.
    pub(crate) fn canceled(&self, run: RunId, step: StepId, attempt: u32) -> Option<Canceled> {
        let state = self.lock();
        if state.canceled.contains(&run) {
            Some(Canceled::Run)
        } else if state.canceled_steps.contains(&(run, step, attempt)) {
            Some(Canceled::Step)
        } else {
            None
        }
    }

    /// Tracks the step attempt now in hand.
    pub(crate) fn track(&self, run: RunId, step: StepId, attempt: u32) -> Running {
        let token = CancellationToken::new();
        let mut state = self.lock();
        if state.canceled.contains(&run) || state.canceled_steps.contains(&(run, step, attempt)) {
            token.cancel();
        }
        state.running = Some(((run, step, attempt), token.clone()));
        Running { cancels: self.clone(), token }
    }

    fn cancel(&self, run: RunId) {
        let mut state = self.lock();
        state.canceled.put(run, ());
        if let Some(((running, _, _), token)) = &state.running
            && *running == run
        {
            tracing::info!(run_id = %run, "the run of the step in hand was canceled; telling the step to stop");
            token.cancel();
        }
    }

    fn cancel_step(&self, attempt: (RunId, StepId, u32)) {
        let mut state = self.lock();
        state.canceled_steps.put(attempt, ());
        if let Some((running, token)) = &state.running
            && *running == attempt
        {
            tracing::info!(run_id = %attempt.0, step_id = %attempt.1, "the step in hand was canceled; telling it to stop");
            token.cancel();
        }
    }

    /// Reads the stream on `connection` up to a marker published now (at most
    /// [`CATCH_UP`]), then follows it in a task until `stop` or the channel ends. `None`
    /// when the broker has no cancels stream.
    pub(crate) async fn follow(
        &self,
        connection: &Connection,
        user: &str,
        worker: &str,
        stop: CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let (channel, mut consumer) = match open(connection).await {
            Ok(opened) => opened,
            Err(error) => {
                tracing::warn!(%error, stream = queue::CANCELS_STREAM,
                    "cannot read run cancellations; steps of canceled runs will run (is the dispatcher older than this worker?)");
                return None;
            }
        };
        let nonce = format!("{worker}/{}", uuid::Uuid::new_v4());
        let marker = CancelRecord::marker(&nonce).encode();
        // On a channel of its own: a broker without the cancels exchange closes the channel
        // of a publish to it, and the events channel must not go with it.
        let published = async {
            let publisher = Publisher::open(connection, user).await?;
            let published = publisher
                .publish(Outgoing {
                    exchange: queue::CANCELS_EXCHANGE,
                    routing_key: "",
                    payload: &marker,
                    message_type: queue::CANCEL_MESSAGE_TYPE,
                    headers: FieldTable::default(),
                })
                .await;
            if let Err(error) = publisher.channel().close(200, "marker published".into()).await {
                tracing::debug!(%error, "closing the marker channel failed");
            }
            published.map_err(anyhow::Error::new)
        }
        .await;
        match published {
            Ok(()) => {
                let caught_up = tokio::time::timeout(CATCH_UP, async {
                    while let Some(Ok(delivery)) = consumer.next().await {
                        let mine =
                            self.read(sender(&delivery), &delivery.data).as_deref() == Some(nonce.as_str());
                        ack(&delivery.acker).await;
                        if mine {
                            return true;
                        }
                    }
                    false
                });
                if !matches!(caught_up.await, Ok(true)) {
                    tracing::warn!(timeout = ?CATCH_UP, "did not catch up with run cancellations in time; going on");
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot mark the cancels stream; reading it without waiting")
            }
        }
        let cancels = self.clone();
        Some(tokio::spawn(async move {
            loop {
                let delivery = tokio::select! {
                    () = stop.cancelled() => break,
                    next = consumer.next() => match next {
                        Some(Ok(delivery)) => delivery,
                        // The session notices a lost connection by itself.
                        _ => break,
                    },
                };
                cancels.read(sender(&delivery), &delivery.data);
                ack(&delivery.acker).await;
            }
            if let Err(error) = channel.close(200, "worker stopping".into()).await {
                tracing::debug!(%error, "closing the cancels channel failed");
            }
        }))
    }

    /// Applies one record from `sender` (its `user_id`); returns a marker's nonce.
    fn read(&self, sender: Option<&str>, data: &[u8]) -> Option<String> {
        match CancelRecord::decode(data) {
            Ok(CancelRecord { kind: CancelKind::Run { run_id }, .. }) => {
                if sender == Some(&*self.dispatcher_user) {
                    self.cancel(run_id);
                } else {
                    tracing::warn!(run_id = %run_id, sender = sender.unwrap_or("(none)"),
                        dispatcher = %self.dispatcher_user, "ignoring a cancel record not published by the dispatcher");
                }
                None
            }
            Ok(CancelRecord { kind: CancelKind::Step { run_id, step_id, attempt }, .. }) => {
                if sender == Some(&*self.dispatcher_user) {
                    self.cancel_step((run_id, step_id, attempt));
                } else {
                    tracing::warn!(run_id = %run_id, step_id = %step_id, sender = sender.unwrap_or("(none)"),
                        dispatcher = %self.dispatcher_user, "ignoring a step cancel record not published by the dispatcher");
                }
                None
            }
            Ok(CancelRecord { kind: CancelKind::Marker { nonce }, .. }) => Some(nonce),
            Err(error) => {
                tracing::debug!(%error, "skipping a cancel record this worker cannot read");
                None
            }
        }
    }
}

/// Who published `delivery`, as the broker checked it.
fn sender(delivery: &lapin::message::Delivery) -> Option<&str> {
    delivery.properties.user_id().as_ref().map(ShortString::as_str)
}

async fn open(connection: &Connection) -> Result<(Channel, Consumer), lapin::Error> {
    let channel = connection.create_channel().await?;
    // A stream consumer needs a prefetch and acks; records are tiny.
    channel.basic_qos(256, BasicQosOptions::default()).await?;
    let mut args = FieldTable::default();
    args.insert(ShortString::from("x-stream-offset"), AMQPValue::LongString(LongString::from("first")));
    let consumer = channel
        .basic_consume(queue::CANCELS_STREAM.into(), "".into(), BasicConsumeOptions::default(), args)
        .await?;
    Ok((channel, consumer))
}

async fn ack(acker: &lapin::Acker) {
    if let Err(error) = acker.ack(BasicAckOptions::default()).await {
        tracing::debug!(%error, "acking a cancel record failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DISPATCHER: Option<&str> = Some("opflow");

    fn cancels() -> Cancels {
        Cancels::from("opflow".to_owned())
    }

    #[test]
    fn a_canceled_run_stops_the_step_in_hand_and_no_other() {
        let cancels = cancels();
        let (mine, other) = (RunId::new(), RunId::new());
        let running = cancels.track(mine, StepId(0), 1);
        cancels.read(DISPATCHER, &CancelRecord::run(other).encode());
        assert!(!running.token().is_cancelled());
        assert_eq!(cancels.canceled(other, StepId(0), 1), Some(Canceled::Run));
        assert_eq!(cancels.canceled(mine, StepId(0), 1), None);
        cancels.read(DISPATCHER, &CancelRecord::run(mine).encode());
        assert!(running.token().is_cancelled());
    }

    #[test]
    fn a_step_of_a_run_canceled_before_is_canceled_from_the_start() {
        let cancels = cancels();
        let run = RunId::new();
        cancels.read(DISPATCHER, &CancelRecord::run(run).encode());
        assert!(cancels.track(run, StepId(3), 1).token().is_cancelled());
    }

    #[test]
    fn a_canceled_step_attempt_stops_that_attempt_and_no_other() {
        let cancels = cancels();
        let run = RunId::new();
        let running = cancels.track(run, StepId(1), 1);
        cancels.read(DISPATCHER, &CancelRecord::step(run, StepId(2), 1).encode());
        cancels.read(DISPATCHER, &CancelRecord::step(run, StepId(1), 2).encode());
        assert!(!running.token().is_cancelled(), "another step, another attempt");
        cancels.read(DISPATCHER, &CancelRecord::step(run, StepId(1), 1).encode());
        assert!(running.token().is_cancelled());
        assert_eq!(cancels.canceled(run, StepId(2), 1), Some(Canceled::Step));
        assert_eq!(cancels.canceled(run, StepId(3), 1), None, "the run goes on");
        assert!(cancels.track(run, StepId(2), 1).token().is_cancelled(), "canceled before it started");
    }

    #[test]
    fn only_the_dispatcher_cancels_a_run() {
        let cancels = cancels();
        let run = RunId::new();
        let running = cancels.track(run, StepId(0), 1);
        for sender in [None, Some("opflow-op:/:noop@1.0.0"), Some("opflowx")] {
            cancels.read(sender, &CancelRecord::run(run).encode());
            cancels.read(sender, &CancelRecord::step(run, StepId(0), 1).encode());
        }
        assert!(!running.token().is_cancelled() && cancels.canceled(run, StepId(0), 1).is_none());
    }

    #[test]
    fn markers_are_returned_and_garbage_is_skipped() {
        let cancels = cancels();
        assert_eq!(cancels.read(Some("anyone"), &CancelRecord::marker("n").encode()).as_deref(), Some("n"));
        assert_eq!(cancels.read(DISPATCHER, b"not a record"), None);
    }
}
