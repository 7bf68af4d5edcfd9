//! Ack-late as a type. A [`StepLease`] owns the delivery's acker: [`StepLease::complete`]
//! publishes the terminal event with a confirm and *then* acks, so the message leaves the
//! queue only once its result is safely with the broker. A lease dropped without an
//! outcome is a bug; it says so at error level and gives the message back to the queue.

use lapin::{
    Acker,
    options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions},
};
use opflow_amqp::PublishError;
use opflow_protocol::Event;

use crate::report::Reporter;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("the terminal event was not confirmed, so the step stays unacked and will be redelivered: {0}")]
    Report(PublishError),
    #[error(
        "acking the step failed; the broker will redeliver it and the duplicate result will be ignored: {0}"
    )]
    Ack(lapin::Error),
    #[error("rejecting a message failed: {0}")]
    Reject(lapin::Error),
}

impl From<PublishError> for LeaseError {
    fn from(error: PublishError) -> Self {
        LeaseError::Report(error)
    }
}

/// The right to settle one delivery. See the module docs.
pub struct StepLease {
    acker: Option<Acker>,
}

impl StepLease {
    pub fn new(acker: Acker) -> Self {
        Self { acker: Some(acker) }
    }

    /// Publishes `terminal` (confirmed, after every earlier event of this worker) and then
    /// acks. If the publish fails the message is given back to the queue.
    pub async fn complete(mut self, reporter: &Reporter, terminal: Event) -> Result<(), LeaseError> {
        debug_assert!(terminal.kind.is_terminal(), "complete() takes a succeeded or failed event");
        if let Err(error) = reporter.publish_confirmed(terminal).await {
            self.release().await;
            return Err(error.into());
        }
        let acker = self.acker.take().expect("a lease holds its acker until it is settled");
        acker.ack(BasicAckOptions::default()).await.map_err(LeaseError::Ack)?;
        Ok(())
    }

    /// Rejects the message without requeueing it, so the broker dead-letters it. For
    /// messages no worker of this op could ever run (malformed, wrong op version).
    pub async fn dead_letter(mut self) -> Result<(), LeaseError> {
        let acker = self.acker.take().expect("a lease holds its acker until it is settled");
        acker.reject(BasicRejectOptions { requeue: false }).await.map_err(LeaseError::Reject)?;
        Ok(())
    }

    /// Lets go of a delivery whose channel the broker already closed: the broker has
    /// requeued the message itself, and there is nothing left to settle.
    pub fn abandon(mut self) {
        self.acker = None;
    }

    /// Gives the message back to the queue for another attempt by any worker.
    async fn release(&mut self) {
        if let Some(acker) = self.acker.take()
            && let Err(error) = acker.nack(BasicNackOptions { requeue: true, multiple: false }).await
        {
            // The channel is most likely gone, and with it the delivery: the broker
            // requeues every unacked message of a closed channel by itself.
            tracing::warn!(%error, "could not give the step back; the broker requeues it when the channel closes");
        }
    }
}

impl Drop for StepLease {
    fn drop(&mut self) {
        let Some(acker) = self.acker.take() else { return };
        tracing::error!("a step lease was dropped without an outcome; requeueing the message");
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = acker.nack(BasicNackOptions { requeue: true, multiple: false }).await {
                    tracing::warn!(%error, "requeueing a dropped lease failed; the broker requeues it when the channel closes");
                }
            });
        }
    }
}
