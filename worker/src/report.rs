//! Publishing events. One task per worker owns the events channel, so events leave in the
//! order the handler emitted them; progress, logs and heartbeats are fire-and-forget with
//! their confirms collected in the background, and a terminal event is only reported as
//! published once it *and every event before it* are confirmed.

use futures_util::{StreamExt, stream::FuturesUnordered};
use lapin::types::FieldTable;
use opflow_amqp::{Outgoing, PublishError, Publisher, trace};
use opflow_protocol::{Event, queue};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Non-terminal events queued beyond this are dropped (and logged): a handler that reports
/// progress in a tight loop must not grow memory without bound.
pub(crate) const QUEUE_DEPTH: usize = 1024;

pub(crate) enum Command {
    /// Publish, collect the confirm in the background.
    Send(Event, FieldTable),
    /// Publish, then answer once it and everything before it are confirmed.
    Flush(Event, FieldTable, oneshot::Sender<Result<(), PublishError>>),
}

/// A cheap handle for queueing events; see the module docs.
#[derive(Clone)]
pub struct Reporter {
    pub(crate) commands: mpsc::Sender<Command>,
}

impl Reporter {
    /// Starts the publishing task. It ends when every `Reporter` clone is dropped or
    /// `stop` is cancelled.
    pub fn spawn(publisher: Publisher, stop: CancellationToken) -> (Self, tokio::task::JoinHandle<()>) {
        let (commands, receiver) = mpsc::channel(QUEUE_DEPTH);
        let task = tokio::spawn(publish_loop(publisher, receiver, stop));
        (Self { commands }, task)
    }

    /// Queues a non-terminal event without waiting; false if it was dropped because the
    /// queue is full or the publisher is gone (the step counts what it drops and says so
    /// when it ends: `StepContext::dropped_notice`).
    pub fn send(&self, event: Event) -> bool {
        match self.commands.try_send(Command::Send(event, trace::current_context_headers())) {
            Ok(()) => true,
            Err(error) => {
                tracing::debug!(%error, "event dropped: the event queue is full or closed");
                false
            }
        }
    }

    /// Queues a non-terminal event, waiting for room: for the one line that must not be
    /// dropped (what a step dropped). Still published in order, before what follows.
    pub async fn send_waiting(&self, event: Event) {
        let command = Command::Send(event, trace::current_context_headers());
        if self.commands.send(command).await.is_err() {
            tracing::debug!("event dropped: the publisher has stopped");
        }
    }

    /// Publishes an event (a terminal one, or an abandonment) and waits until the broker
    /// has confirmed it and every event queued before it.
    pub async fn publish_confirmed(&self, event: Event) -> Result<(), PublishError> {
        let routing_key = queue::event_routing_key(event.kind.name());
        let stopped = || PublishError::Broker {
            exchange: queue::EVENTS_EXCHANGE.to_owned(),
            routing_key: routing_key.clone(),
            cause: Box::new(lapin::Error::from(std::io::Error::other("the event publisher has stopped"))),
        };
        let (done, confirmed) = oneshot::channel();
        let headers = trace::current_context_headers();
        if self.commands.send(Command::Flush(event, headers, done)).await.is_err() {
            return Err(stopped());
        }
        confirmed.await.unwrap_or_else(|_| Err(stopped()))
    }
}

async fn publish_loop(publisher: Publisher, mut commands: mpsc::Receiver<Command>, stop: CancellationToken) {
    let mut in_flight = FuturesUnordered::new();
    loop {
        let command = tokio::select! {
            command = commands.recv() => match command {
                Some(command) => command,
                None => break,
            },
            Some(result) = in_flight.next(), if !in_flight.is_empty() => {
                log_background_failure(result);
                continue;
            }
            () = stop.cancelled() => break,
        };
        match command {
            Command::Send(event, headers) => match send(&publisher, &event, headers).await {
                Ok(pending) => in_flight.push(pending.wait()),
                Err(error) => tracing::warn!(%error, event = event.kind.name(), "could not publish an event"),
            },
            Command::Flush(event, headers, done) => {
                let result = match send(&publisher, &event, headers).await {
                    Ok(pending) => {
                        // Everything before the terminal event must be confirmed before we
                        // let the caller ack: its events are part of the step's record.
                        while let Some(earlier) = in_flight.next().await {
                            log_background_failure(earlier);
                        }
                        pending.wait().await
                    }
                    Err(error) => Err(error),
                };
                // The step runner may have given up waiting (shutdown); nothing to tell.
                let _ = done.send(result);
            }
        }
    }
    while let Some(result) = in_flight.next().await {
        log_background_failure(result);
    }
}

/// Publishes `event` with `headers`: the trace context of the step that reported it, taken
/// when it was queued (this task runs outside every step's span).
async fn send(
    publisher: &Publisher,
    event: &Event,
    headers: FieldTable,
) -> Result<opflow_amqp::PendingConfirm, PublishError> {
    let payload = event.encode();
    let routing_key = queue::event_routing_key(event.kind.name());
    publisher
        .send(Outgoing {
            exchange: queue::EVENTS_EXCHANGE,
            routing_key: &routing_key,
            payload: &payload,
            message_type: queue::EVENT_MESSAGE_TYPE,
            headers,
        })
        .await
}

fn log_background_failure(result: Result<(), PublishError>) {
    if let Err(error) = result {
        tracing::warn!(%error, "a progress, log or heartbeat event was not confirmed");
    }
}
