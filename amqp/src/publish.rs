//! Confirmed publishing. Every message is persistent and `mandatory`, and every publish is
//! awaited until the broker confirms it. An unroutable mandatory message comes back from
//! lapin as `Confirmation::Ack(Some(returned))`, an *ack*, so checking `is_ack()` alone
//! would silently drop it; [`PendingConfirm::wait`] turns it into [`PublishError::Unroutable`].
//!
//! Every message also carries its publisher's login as `user_id`. The broker refuses a
//! message whose `user_id` is not the connection's own user, so a reader can trust it: it
//! is how the dispatcher knows which op version sent an event, and a worker that a cancel
//! record came from the dispatcher.

use lapin::{
    BasicProperties, Channel, Confirmation, Connection, PublisherConfirm,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{FieldTable, ShortString},
};

/// Delivery mode 2: the broker writes the message to disk.
const PERSISTENT: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("no queue is bound for routing key `{routing_key}` on exchange `{exchange}` ({reply})")]
    Unroutable { exchange: String, routing_key: String, reply: String },
    #[error("the broker refused (nacked) a message for routing key `{routing_key}` on exchange `{exchange}`")]
    Nacked { exchange: String, routing_key: String },
    #[error("publishing to `{routing_key}` on exchange `{exchange}` failed: {cause}")]
    Broker { exchange: String, routing_key: String, cause: Box<lapin::Error> },
}

/// One message to publish.
#[derive(Debug)]
pub struct Outgoing<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub payload: &'a [u8],
    /// The AMQP `type` property, e.g. `opflow.step`.
    pub message_type: &'static str,
    pub headers: FieldTable,
}

/// A channel in confirm mode. Clone it freely: clones share the channel.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    /// The connection's login, stamped on every message as its `user_id`.
    user: ShortString,
}

impl Publisher {
    /// Opens a new channel on `connection`, which logged in as `user`, and puts it in
    /// confirm mode. A `user` other than the connection's own makes every publish fail
    /// (the broker closes the channel).
    pub async fn open(connection: &Connection, user: &str) -> Result<Self, lapin::Error> {
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Self { channel, user: ShortString::from(user) })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Sends a message and returns its pending confirm, so that many publishes can be in
    /// flight at once (a confirm window) before any is awaited.
    pub async fn send(&self, message: Outgoing<'_>) -> Result<PendingConfirm, PublishError> {
        let properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_content_type(ShortString::from("application/json"))
            .with_type(ShortString::from(message.message_type))
            .with_user_id(self.user.clone())
            .with_headers(message.headers);
        let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
        let confirm = self
            .channel
            .basic_publish(
                message.exchange.into(),
                message.routing_key.into(),
                options,
                message.payload,
                properties,
            )
            .await
            .map_err(|source| PublishError::Broker {
                exchange: message.exchange.to_owned(),
                routing_key: message.routing_key.to_owned(),
                cause: Box::new(source),
            })?;
        Ok(PendingConfirm {
            confirm,
            exchange: message.exchange.to_owned(),
            routing_key: message.routing_key.to_owned(),
        })
    }

    /// Sends a message and waits until the broker has confirmed it.
    pub async fn publish(&self, message: Outgoing<'_>) -> Result<(), PublishError> {
        self.send(message).await?.wait().await
    }
}

/// A message the broker has not confirmed yet.
pub struct PendingConfirm {
    confirm: PublisherConfirm,
    exchange: String,
    routing_key: String,
}

impl PendingConfirm {
    pub fn routing_key(&self) -> &str {
        &self.routing_key
    }

    /// Waits for the broker's confirm. A returned (unroutable) message is an error even
    /// though the broker acked it.
    pub async fn wait(self) -> Result<(), PublishError> {
        let Self { confirm, exchange, routing_key } = self;
        match confirm.await {
            Ok(Confirmation::Ack(None)) => Ok(()),
            Ok(Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned))) => {
                Err(PublishError::Unroutable {
                    exchange,
                    routing_key,
                    reply: returned.reply_text.to_string(),
                })
            }
            Ok(Confirmation::Nack(None)) => Err(PublishError::Nacked { exchange, routing_key }),
            // The channel was opened in confirm mode by `Publisher::open`; a confirm that was
            // not requested means someone built a Publisher around the wrong channel.
            Ok(Confirmation::NotRequested) => Err(PublishError::Broker {
                exchange,
                routing_key,
                cause: Box::new(lapin::Error::from(std::io::Error::other("channel is not in confirm mode"))),
            }),
            Err(source) => Err(PublishError::Broker { exchange, routing_key, cause: Box::new(source) }),
        }
    }
}
