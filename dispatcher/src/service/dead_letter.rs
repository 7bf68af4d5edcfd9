//! The dead-letter consumer: a step message the broker gave up on (it killed its worker
//! `x-delivery-limit` times, or a worker refused it) must fail its step, or the run would
//! wait for it forever. An event that reached the dead-letter queue (the events queue's
//! own delivery limit, or one the events consumer gave up on) is applied from here, alone:
//! a worker's result is never dropped while its run exists. Anything else that was
//! dead-lettered (malformed messages, events of unknown runs) is logged with its reason
//! and dropped.

use futures_util::StreamExt;
use lapin::{
    Connection,
    message::Delivery,
    options::BasicAckOptions,
    types::{AMQPValue, FieldTable, ShortString},
};
use opflow_protocol::{Event, StepMessage, queue};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::events::{EventsError, open_consumer};
use crate::{
    service::{
        applier::{Applier, dispatcher_failure},
        senders::{self, SenderCheck},
    },
    store::storable::StorableEvent,
};

pub struct DeadLetterConsumer {
    pub applier: Applier,
    /// As the events consumer's: a dead-lettered event counts only from its step's op.
    pub senders: Option<SenderCheck>,
}

/// Why and from where the broker dead-lettered a message, from its `x-death` header.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Death {
    /// `delivery_limit`, `rejected`, `expired` or `maxlen`.
    pub reason: String,
    pub queue: String,
    /// The quorum queue's `x-delivery-count`: deliveries before it was dead-lettered.
    pub deliveries: Option<i64>,
}

impl DeadLetterConsumer {
    /// Consumes until cancelled or the channel fails.
    pub async fn run(self, connection: &Connection, cancel: CancellationToken) -> Result<(), EventsError> {
        let failed = |source| EventsError::Consume { queue: queue::DEAD_LETTER_QUEUE, cause: source };
        let (channel, mut consumer) =
            open_consumer(connection, queue::DEAD_LETTER_QUEUE, "opflow-dispatcher-dead-letters", 16).await?;
        let result = loop {
            let delivery = tokio::select! {
                biased;
                () = cancel.cancelled() => break Ok(()),
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(source)) => break Err(failed(source)),
                    None => break Err(EventsError::Cancelled(queue::DEAD_LETTER_QUEUE)),
                },
            };
            if !self.handle(&delivery, &cancel).await {
                break Ok(());
            }
            if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
                tracing::warn!(%error, "acking a dead letter failed; it will be handled again");
            }
        };
        if let Err(error) = channel.close(200, "dispatcher stopping".into()).await {
            tracing::debug!(%error, "closing the dead-letter channel failed");
        }
        result
    }

    /// Handles one dead letter; false if cancelled before it was (it stays unacked).
    async fn handle(&self, delivery: &Delivery, cancel: &CancellationToken) -> bool {
        let death = death(delivery.properties.headers().as_ref());
        let kind = delivery.properties.kind().as_ref().map(|t| t.as_str().to_owned());
        match kind.as_deref() {
            Some(queue::STEP_MESSAGE_TYPE) => {
                if let Ok(message) = StepMessage::decode(&delivery.data) {
                    let span = tracing::info_span!("dead_letter", run_id = %message.run_id,
                        step_id = %message.step_id, attempt = message.attempt, op = %message.op);
                    return self.fail_step(message, &death, cancel).instrument(span).await;
                }
            }
            Some(queue::EVENT_MESSAGE_TYPE) => {
                if let Ok(event) = Event::decode(&delivery.data) {
                    if let Some(check) = &self.senders {
                        match check.admit(&self.applier, senders::sender(delivery), &event, cancel).await {
                            None => return false,
                            // Dropped: the dead letter is settled.
                            Some(false) => return true,
                            Some(true) => {}
                        }
                    }
                    let span = tracing::info_span!("dead_letter", run_id = %event.run_id,
                        step_id = %event.step_id, attempt = event.attempt, kind = event.kind.name());
                    return self.apply_event(event, &death, cancel).instrument(span).await;
                }
            }
            _ => {}
        }
        let preview = String::from_utf8_lossy(&delivery.data[..delivery.data.len().min(200)]).into_owned();
        tracing::error!(
            reason = %death.reason,
            queue = %death.queue,
            bytes = delivery.data.len(),
            %preview,
            "dropped a dead-lettered message that is neither a step nor an event (malformed)"
        );
        true
    }

    /// Fails the step of a step message the broker gave up on.
    async fn fail_step(&self, message: StepMessage, death: &Death, cancel: &CancellationToken) -> bool {
        let store = &self.applier.store;
        let abandoned = match store.in_flight().last_abandon_reason(&message).await {
            Ok(reason) => reason,
            Err(error) => {
                tracing::debug!(%error, "could not read why workers abandoned the step");
                None
            }
        };
        let delivery_limit = match store.ops().queue_settings(&message.op).await {
            Ok(settings) => settings.map(|s| s.delivery_limit),
            Err(error) => {
                tracing::debug!(%error, "could not read the op's delivery limit");
                None
            }
        };
        let error = failure_message(&message, death, delivery_limit, abandoned.as_deref());
        tracing::error!(reason = %death.reason, "{error}");
        let failure = dispatcher_failure(message.run_id, message.step_id, message.attempt, error, false);
        self.apply_alone(failure, cancel).await
    }

    /// Applies a worker's event that reached the dead-letter queue.
    async fn apply_event(&self, event: Event, death: &Death, cancel: &CancellationToken) -> bool {
        tracing::warn!(reason = %death.reason, queue = %death.queue, "applying a dead-lettered event on its own");
        self.apply_alone(event.into(), cancel).await
    }

    async fn apply_alone(&self, event: StorableEvent, cancel: &CancellationToken) -> bool {
        let Some(applied) = self.applier.apply(std::slice::from_ref(&event), cancel).await else {
            return false;
        };
        if !applied.outcome.unknown_run.is_empty() {
            tracing::error!(run_id = %event.run_id, kind = event.kind.name(),
                "dropped a dead-lettered message for a run this database does not know");
        } else if !applied.given_up.is_empty() {
            tracing::error!(run_id = %event.run_id, kind = event.kind.name(),
                "dropped a dead-lettered message that could not be applied; see the errors above");
        }
        true
    }
}

/// The step's error: what happened, how often, and what to do.
pub fn failure_message(
    message: &StepMessage,
    death: &Death,
    delivery_limit: Option<u32>,
    abandoned: Option<&str>,
) -> String {
    match death.reason.as_str() {
        "delivery_limit" => {
            // A quorum queue dead-letters a message once it has been returned more times
            // than its limit: limit + 1 deliveries. The copy it dead-letters may lack
            // `x-delivery-count` (the returns before the last delivery), so the limit comes first.
            let times = delivery_limit
                .map(|n| i64::from(n) + 1)
                .or(death.deliveries.map(|n| n + 1))
                .map_or_else(|| "too many".into(), |n| n.to_string());
            match abandoned {
                Some(reason) => format!(
                    "step {} was delivered {times} times without a result and was dead-lettered from `{}`; \
                     the last worker said: {reason}",
                    message.label(),
                    death.queue
                ),
                None => format!(
                    "step {} crashed its worker {times} times (the worker process died while running it) and was \
                     dead-lettered from `{}`; see the logs of op {} for the crash",
                    message.label(),
                    death.queue,
                    message.op
                ),
            }
        }
        "rejected" => format!(
            "the worker of op {} refused step {} (it rejected the message from `{}`); see the op's logs for why",
            message.op,
            message.label(),
            death.queue
        ),
        other => format!(
            "the broker dead-lettered step {} from `{}` ({}); check the queue's limits",
            message.label(),
            death.queue,
            if other.is_empty() { "no reason given" } else { other }
        ),
    }
}

/// Reads the first `x-death` entry and `x-delivery-count`.
pub fn death(headers: Option<&FieldTable>) -> Death {
    let mut death = Death::default();
    let Some(headers) = headers else { return death };
    let get = |table: &FieldTable, key: &str| table.inner().get(&ShortString::from(key)).cloned();
    if let Some(AMQPValue::FieldArray(deaths)) = get(headers, "x-death")
        && let Some(AMQPValue::FieldTable(first)) = deaths.as_slice().first()
    {
        death.reason = text(get(first, "reason")).unwrap_or_default();
        death.queue = text(get(first, "queue")).unwrap_or_default();
    }
    if death.reason.is_empty() {
        death.reason = text(get(headers, "x-first-death-reason")).unwrap_or_default();
        death.queue = text(get(headers, "x-first-death-queue")).unwrap_or_default();
    }
    death.deliveries = match get(headers, "x-delivery-count") {
        Some(AMQPValue::LongLongInt(n)) => Some(n),
        Some(AMQPValue::LongInt(n)) => Some(i64::from(n)),
        Some(AMQPValue::ShortInt(n)) => Some(i64::from(n)),
        _ => None,
    };
    death
}

fn text(value: Option<AMQPValue>) -> Option<String> {
    match value? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use lapin::types::{FieldArray, LongString};

    use super::*;

    fn headers(reason: &str, deliveries: i64) -> FieldTable {
        let mut first = FieldTable::default();
        first.insert("reason".into(), AMQPValue::LongString(LongString::from(reason)));
        first.insert("queue".into(), AMQPValue::LongString(LongString::from("opflow.op.noop.1.1.0")));
        first.insert("count".into(), AMQPValue::LongLongInt(1));
        let mut headers = FieldTable::default();
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(first)])),
        );
        headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(deliveries));
        headers
    }

    #[test]
    fn reads_the_reason_queue_and_delivery_count() {
        let d = death(Some(&headers("delivery_limit", 3)));
        assert_eq!(
            d,
            Death {
                reason: "delivery_limit".into(),
                queue: "opflow.op.noop.1.1.0".into(),
                deliveries: Some(3)
            }
        );
        assert_eq!(death(None), Death::default());
    }

    #[test]
    fn messages_say_how_often_and_what_to_do() {
        let message: StepMessage = serde_json::from_value(serde_json::json!({
            "v": 1, "run_id": "0192f1f6-7f5e-7c4b-9a49-2a7d7c1f3e10", "step_id": 7, "attempt": 1,
            "op": "noop@1.1.0", "asset": "poison", "params": {}, "inputs": []
        }))
        .unwrap();
        let crashed = failure_message(&message, &death(Some(&headers("delivery_limit", 3))), Some(2), None);
        assert!(crashed.contains("crashed its worker 3 times"), "{crashed}");
        let unknown_limit =
            failure_message(&message, &death(Some(&headers("delivery_limit", 3))), None, None);
        assert!(unknown_limit.contains("crashed its worker 4 times"), "{unknown_limit}");
        let timed_out = failure_message(
            &message,
            &death(Some(&headers("delivery_limit", 2))),
            None,
            Some("consumer timeout"),
        );
        assert!(
            timed_out.contains("delivered 3 times") && timed_out.contains("consumer timeout"),
            "{timed_out}"
        );
        let refused = failure_message(&message, &death(Some(&headers("rejected", 1))), None, None);
        assert!(refused.contains("refused"), "{refused}");
    }
}
