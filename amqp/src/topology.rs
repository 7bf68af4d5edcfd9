//! Queue and exchange declarations. The dispatcher declares the topology and `opflow ops
//! add` declares an op version's queue; workers only check that their queue exists, so the
//! queue arguments live in exactly one place: here.

use lapin::{
    Channel, Connection, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use opflow_protocol::{OpRef, queue};

/// RabbitMQ's queue types, as far as opflow uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueKind {
    /// Replicated and fsynced, with a delivery limit that dead-letters a message that keeps
    /// killing its workers. The default.
    #[default]
    Quorum,
    /// About three times the throughput on one node, but no delivery limit on RabbitMQ
    /// 3.10: a message that crashes every worker is redelivered forever.
    Classic,
}

impl QueueKind {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueKind::Quorum => "quorum",
            QueueKind::Classic => "classic",
        }
    }
}

impl std::str::FromStr for QueueKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "quorum" => Ok(QueueKind::Quorum),
            "classic" => Ok(QueueKind::Classic),
            other => Err(format!("unknown queue type `{other}`; use `quorum` or `classic`")),
        }
    }
}

/// How one op version's queue is declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpQueueSettings {
    pub kind: QueueKind,
    /// Deliveries of one message before it is dead-lettered (quorum queues only). Set
    /// explicitly: RabbitMQ 4.x defaults to 20 and 3.10 to unlimited.
    pub delivery_limit: u32,
}

impl Default for OpQueueSettings {
    fn default() -> Self {
        Self { kind: QueueKind::Quorum, delivery_limit: 5 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("queue `{queue}` does not exist; register the op with `opflow ops add <op binary>` first")]
    MissingQueue { queue: String },
    #[error("declaring `{name}` failed: {cause}")]
    Declare { name: String, cause: lapin::Error },
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() }
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// The arguments of a queue of `kind`. Quorum queues dead-letter *at least once*, which
/// RabbitMQ only honours together with `overflow: reject-publish`; with the default
/// `drop-head` it silently falls back to at-most-once.
fn queue_arguments(kind: QueueKind, delivery_limit: Option<u32>, dead_letter: bool) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(ShortString::from("x-queue-type"), text(kind.as_str()));
    if dead_letter {
        args.insert(ShortString::from("x-dead-letter-exchange"), text(queue::DEAD_LETTER_EXCHANGE));
    }
    if kind == QueueKind::Quorum {
        if let Some(limit) = delivery_limit {
            args.insert(ShortString::from("x-delivery-limit"), AMQPValue::LongLongInt(i64::from(limit)));
        }
        if dead_letter {
            args.insert(ShortString::from("x-dead-letter-strategy"), text("at-least-once"));
            args.insert(ShortString::from("x-overflow"), text("reject-publish"));
        }
    }
    args
}

/// Declares the durable queue of one op version. Idempotent for identical settings; the
/// broker refuses (PRECONDITION_FAILED) a redeclaration with different ones.
pub async fn declare_op_queue(
    channel: &Channel,
    op: &OpRef,
    settings: OpQueueSettings,
) -> Result<(), TopologyError> {
    let name = queue::op_queue(op);
    let args = queue_arguments(settings.kind, Some(settings.delivery_limit), true);
    channel
        .queue_declare(name.as_str().into(), durable(), args)
        .await
        .map_err(|source| TopologyError::Declare { name: name.clone(), cause: source })?;
    Ok(())
}

/// What a passive declare tells about a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueCounts {
    /// Messages ready for delivery (not counting unacked ones).
    pub ready: u32,
    pub consumers: u32,
}

/// Looks at a queue without creating it. A missing queue is [`TopologyError::MissingQueue`];
/// a failed check closes `channel` (AMQP closes it on NOT_FOUND).
pub async fn inspect_queue(channel: &Channel, name: &str) -> Result<QueueCounts, TopologyError> {
    let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
    match channel.queue_declare(name.into(), passive, FieldTable::default()).await {
        Ok(q) => Ok(QueueCounts { ready: q.message_count(), consumers: q.consumer_count() }),
        Err(source) if is_not_found(&source) => Err(TopologyError::MissingQueue { queue: name.to_owned() }),
        Err(source) => Err(TopologyError::Declare { name: name.to_owned(), cause: source }),
    }
}

/// Checks that an op version's queue exists, without creating it. Returns the number of
/// ready messages. A failed check closes `channel` (AMQP closes it on NOT_FOUND).
pub async fn check_op_queue(channel: &Channel, op: &OpRef) -> Result<u32, TopologyError> {
    Ok(inspect_queue(channel, &queue::op_queue(op)).await?.ready)
}

/// A channel for passive declares, opened again after a missing queue closed it: how the
/// dispatcher looks at queues it did not make (they may be deleted under it).
pub struct QueueProbe<'a> {
    connection: &'a Connection,
    channel: Option<Channel>,
}

/// Why a [`QueueProbe`] could not look at a queue.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot open a channel to look at queues: {0}")]
    Channel(lapin::Error),
    #[error("cannot read queue `{queue}`: {cause}")]
    Inspect { queue: String, cause: TopologyError },
}

impl<'a> QueueProbe<'a> {
    pub fn new(connection: &'a Connection) -> Self {
        Self { connection, channel: None }
    }

    /// A queue's counts; `None` when it does not exist.
    pub async fn counts(&mut self, queue: &str) -> Result<Option<QueueCounts>, ProbeError> {
        let channel = match &self.channel {
            Some(channel) if channel.status().connected() => channel.clone(),
            _ => {
                let channel = self.connection.create_channel().await.map_err(ProbeError::Channel)?;
                self.channel = Some(channel.clone());
                channel
            }
        };
        match inspect_queue(&channel, queue).await {
            Ok(counts) => Ok(Some(counts)),
            Err(TopologyError::MissingQueue { .. }) => {
                self.channel = None;
                Ok(None)
            }
            Err(cause) => Err(ProbeError::Inspect { queue: queue.to_owned(), cause }),
        }
    }

    /// Closes the probe's channel.
    pub async fn close(&mut self) {
        if let Some(channel) = self.channel.take()
            && channel.status().connected()
            && let Err(error) = channel.close(200, "closing a queue probe".into()).await
        {
            tracing::debug!(%error, "closing a queue probe's channel failed");
        }
    }
}

fn is_not_found(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(e) if e.get_id() == 404)
}

/// How long the cancels stream keeps a record. A queued step of a canceled run is dropped
/// by any worker that takes it within this time of the cancel; later, it runs and its
/// result is ignored.
pub const CANCELS_RETENTION: &str = "1D";

/// The cancels stream's arguments: small segments, so retention (which drops whole
/// segments) keeps close to [`CANCELS_RETENTION`].
fn cancels_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(ShortString::from("x-queue-type"), text("stream"));
    args.insert(ShortString::from("x-max-age"), text(CANCELS_RETENTION));
    args.insert(ShortString::from("x-stream-max-segment-size-bytes"), AMQPValue::LongLongInt(1_000_000));
    args
}

/// How many times the dispatcher may be handed one event and fail to settle it (its channel
/// closed under it: a crash, a lost connection) before the broker dead-letters it; the
/// dispatcher then applies it from the dead-letter queue, alone, so nothing is dropped.
pub const EVENTS_DELIVERY_LIMIT: u32 = 20;

/// Declares what every op queue and the dispatcher rely on: the events exchange and the
/// dispatcher's events and telemetry queues, the dead-letter exchange and queue, and the
/// cancels stream with its exchange.
/// Returns warnings about what exists but differs (an events queue declared by an older
/// release, without a delivery limit): it is used as it is.
pub async fn declare_shared(
    connection: &Connection,
    events_queue: QueueKind,
) -> Result<Vec<String>, TopologyError> {
    let opened = |source| TopologyError::Declare { name: "a channel".to_owned(), cause: source };
    let channel = connection.create_channel().await.map_err(opened)?;
    let exchange = |channel: &Channel, name: &'static str, kind: ExchangeKind| {
        let channel = channel.clone();
        async move {
            channel
                .exchange_declare(
                    name.into(),
                    kind,
                    ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() },
                    FieldTable::default(),
                )
                .await
                .map_err(|source| TopologyError::Declare { name: name.to_owned(), cause: source })
        }
    };
    let bind = |channel: &Channel, queue_name: &'static str, exchange_name: &'static str, key: String| {
        let channel = channel.clone();
        async move {
            channel
                .queue_bind(
                    queue_name.into(),
                    exchange_name.into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|source| TopologyError::Declare { name: queue_name.to_owned(), cause: source })
        }
    };
    let mut warnings = Vec::new();

    exchange(&channel, queue::DEAD_LETTER_EXCHANGE, ExchangeKind::Fanout).await?;
    channel
        .queue_declare(
            queue::DEAD_LETTER_QUEUE.into(),
            durable(),
            queue_arguments(QueueKind::Quorum, None, false),
        )
        .await
        .map_err(|source| TopologyError::Declare {
            name: queue::DEAD_LETTER_QUEUE.to_owned(),
            cause: source,
        })?;
    bind(&channel, queue::DEAD_LETTER_QUEUE, queue::DEAD_LETTER_EXCHANGE, String::new()).await?;
    channel
        .queue_declare(queue::CANCELS_STREAM.into(), durable(), cancels_arguments())
        .await
        .map_err(|source| TopologyError::Declare { name: queue::CANCELS_STREAM.to_owned(), cause: source })?;
    exchange(&channel, queue::CANCELS_EXCHANGE, ExchangeKind::Fanout).await?;
    bind(&channel, queue::CANCELS_STREAM, queue::CANCELS_EXCHANGE, String::new()).await?;

    exchange(&channel, queue::EVENTS_EXCHANGE, ExchangeKind::Topic).await?;
    let events_args = queue_arguments(events_queue, Some(EVENTS_DELIVERY_LIMIT), true);
    let channel = match channel
        .queue_declare(queue::DISPATCHER_EVENTS_QUEUE.into(), durable(), events_args)
        .await
    {
        Ok(_) => channel,
        Err(source) if is_precondition_failed(&source) => {
            // The queue exists with other arguments; a failed declare closed the channel.
            warnings.push(format!(
                "queue `{}` exists without the delivery limit this release gives it ({source}); it is used as it \
                 is, so an event that keeps failing the dispatcher is redelivered without end. To add the limit, \
                 set a policy: rabbitmqctl set_policy -p <vhost> --apply-to queues opflow-events \
                 '^opflow\\.dispatcher\\.events$' '{{\"delivery-limit\": {EVENTS_DELIVERY_LIMIT}}}'",
                queue::DISPATCHER_EVENTS_QUEUE
            ));
            let channel = connection.create_channel().await.map_err(opened)?;
            inspect_queue(&channel, queue::DISPATCHER_EVENTS_QUEUE).await?;
            channel
        }
        Err(source) => {
            return Err(TopologyError::Declare {
                name: queue::DISPATCHER_EVENTS_QUEUE.to_owned(),
                cause: source,
            });
        }
    };
    // The events queue takes the events that move steps, the telemetry queue what steps
    // say while they run (releases before this one bound every event to the events queue:
    // that binding is removed, and what it brought stays queued and is applied).
    for kind in queue::LIFECYCLE_EVENTS {
        bind(
            &channel,
            queue::DISPATCHER_EVENTS_QUEUE,
            queue::EVENTS_EXCHANGE,
            queue::event_routing_key(kind),
        )
        .await?;
    }
    channel
        .queue_unbind(
            queue::DISPATCHER_EVENTS_QUEUE.into(),
            queue::EVENTS_EXCHANGE.into(),
            "#".into(),
            FieldTable::default(),
        )
        .await
        .map_err(|source| TopologyError::Declare {
            name: queue::DISPATCHER_EVENTS_QUEUE.to_owned(),
            cause: source,
        })?;
    channel
        .queue_declare(
            queue::DISPATCHER_TELEMETRY_QUEUE.into(),
            durable(),
            queue_arguments(events_queue, Some(EVENTS_DELIVERY_LIMIT), true),
        )
        .await
        .map_err(|source| TopologyError::Declare {
            name: queue::DISPATCHER_TELEMETRY_QUEUE.to_owned(),
            cause: source,
        })?;
    for kind in queue::TELEMETRY_EVENTS {
        bind(
            &channel,
            queue::DISPATCHER_TELEMETRY_QUEUE,
            queue::EVENTS_EXCHANGE,
            queue::event_routing_key(kind),
        )
        .await?;
    }
    if let Err(error) = channel.close(200, "topology declared".into()).await {
        tracing::debug!(%error, "closing the topology channel failed");
    }
    Ok(warnings)
}

fn is_precondition_failed(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(e) if e.get_id() == 406)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arg<'a>(args: &'a FieldTable, key: &str) -> Option<&'a AMQPValue> {
        args.inner().get(&ShortString::from(key))
    }

    #[test]
    fn quorum_op_queues_dead_letter_at_least_once() {
        let args = queue_arguments(QueueKind::Quorum, Some(5), true);
        assert_eq!(arg(&args, "x-queue-type"), Some(&text("quorum")));
        assert_eq!(arg(&args, "x-delivery-limit"), Some(&AMQPValue::LongLongInt(5)));
        assert_eq!(arg(&args, "x-dead-letter-strategy"), Some(&text("at-least-once")));
        // Without reject-publish the broker silently downgrades to at-most-once.
        assert_eq!(arg(&args, "x-overflow"), Some(&text("reject-publish")));
        assert_eq!(arg(&args, "x-dead-letter-exchange"), Some(&text(queue::DEAD_LETTER_EXCHANGE)));
    }

    #[test]
    fn the_events_queue_dead_letters_an_event_that_keeps_failing_the_dispatcher() {
        let args = queue_arguments(QueueKind::Quorum, Some(EVENTS_DELIVERY_LIMIT), true);
        assert_eq!(arg(&args, "x-delivery-limit"), Some(&AMQPValue::LongLongInt(20)));
        assert_eq!(arg(&args, "x-dead-letter-strategy"), Some(&text("at-least-once")));
        assert_eq!(arg(&args, "x-dead-letter-exchange"), Some(&text(queue::DEAD_LETTER_EXCHANGE)));
    }

    #[test]
    fn classic_queues_carry_no_quorum_only_arguments() {
        let args = queue_arguments(QueueKind::Classic, Some(5), true);
        assert_eq!(arg(&args, "x-queue-type"), Some(&text("classic")));
        for quorum_only in ["x-delivery-limit", "x-dead-letter-strategy", "x-overflow"] {
            assert_eq!(arg(&args, quorum_only), None, "{quorum_only}");
        }
    }
}
