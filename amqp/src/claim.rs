//! Claiming a vhost for one opflow installation (one database). Two installations on one
//! vhost would consume each other's events and steps; the leading dispatcher claims the
//! vhost with a marker message in a durable queue of its own, and refuses to go on when
//! another installation's marker is there first.

use lapin::{
    BasicProperties, Connection,
    options::{
        BasicGetOptions, BasicPublishOptions, BasicRejectOptions, ConfirmSelectOptions, QueueDeclareOptions,
    },
    types::FieldTable,
};
use opflow_protocol::queue;

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error(
        "this RabbitMQ vhost is used by another opflow installation ({other}); this one is {mine}. Give each \
         installation a vhost of its own (the path of amqp_url, e.g. amqp://user:pass@host:5672/team-a), or point \
         this dispatcher at that installation's database"
    )]
    Claimed { mine: String, other: String },
    #[error("claiming the vhost through queue `{}` failed: {cause}", queue::INSTALLATION_QUEUE)]
    Broker { cause: lapin::Error },
}

impl From<lapin::Error> for ClaimError {
    fn from(source: lapin::Error) -> Self {
        ClaimError::Broker { cause: source }
    }
}

/// Claims the connection's vhost for `installation` (a text naming it, compared whole).
/// Idempotent for the same installation.
pub async fn claim_vhost(connection: &Connection, installation: &str) -> Result<(), ClaimError> {
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    channel.queue_declare(queue::INSTALLATION_QUEUE.into(), durable, FieldTable::default()).await?;
    let mut published = false;
    let outcome = loop {
        // The marker at the head of the queue is the claim; it is read and put back.
        let head =
            channel.basic_get(queue::INSTALLATION_QUEUE.into(), BasicGetOptions { no_ack: false }).await?;
        if let Some(head) = head {
            let claimed_by = String::from_utf8_lossy(&head.delivery.data).into_owned();
            head.delivery.acker.reject(BasicRejectOptions { requeue: true }).await?;
            break if claimed_by == installation {
                Ok(())
            } else {
                Err(ClaimError::Claimed { mine: installation.to_owned(), other: claimed_by })
            };
        }
        if published {
            // Someone emptied the queue between our publish and our read; claim again.
            published = false;
            continue;
        }
        channel
            .basic_publish(
                "".into(),
                queue::INSTALLATION_QUEUE.into(),
                BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
                installation.as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?
            .await?;
        published = true;
    };
    if let Err(error) = channel.close(200, "vhost claimed".into()).await {
        tracing::debug!(%error, "closing the claim channel failed");
    }
    outcome
}
