//! Ack-late as a type. A [`StepLease`] owns the delivery's acker: [`StepLease::complete`]
//! publishes the terminal event with a confirm and *then* acks, so the message leaves the
//! queue only once its result is safely with the broker. A lease dropped without an
//! outcome is a bug; it says so at error level and gives the message back to the queue.
//!
//! A step longer than the broker's `consumer_timeout` would be taken away mid-run, so a
//! long step's custody is handed over ([`StepLease::hand_over`]): once the step's start is
//! confirmed (so the run store has it running, watched by its heartbeats), the message is
//! acked. From then on the run store holds the step: if its heartbeats stop (the worker is
//! killed, hangs or loses the broker), lost-step recovery retries it; its result is
//! published with a confirm, with no message left to ack.

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
    /// The message is acked and the run store holds the step ([`StepLease::hand_over`]).
    handed_over: bool,
}

impl StepLease {
    pub fn new(acker: Acker) -> Self {
        Self { acker: Some(acker), handed_over: false }
    }

    /// Whether the step's custody was handed over to the run store.
    pub fn handed_over(&self) -> bool {
        self.handed_over
    }

    /// Hands the step's custody to the run store: publishes `started` (confirmed, after
    /// every earlier event of this worker, so the dispatcher will have the step running and
    /// watch its heartbeats) and then acks the message. If the publish or the ack fails,
    /// the lease still holds the message, as before.
    pub async fn hand_over(&mut self, reporter: &Reporter, started: Event) -> Result<(), LeaseError> {
        debug_assert!(matches!(started.kind, opflow_protocol::EventKind::Started { .. }));
        let Some(acker) = &self.acker else { return Ok(()) };
        reporter.publish_confirmed(started).await?;
        acker.ack(BasicAckOptions::default()).await.map_err(LeaseError::Ack)?;
        self.acker = None;
        self.handed_over = true;
        Ok(())
    }

    /// Publishes `terminal` (confirmed, after every earlier event of this worker) and then
    /// acks. If the publish fails the message is given back to the queue; after a handover
    /// there is none, and the caller keeps the result to publish again.
    pub async fn complete(mut self, reporter: &Reporter, terminal: Event) -> Result<(), LeaseError> {
        debug_assert!(terminal.kind.is_terminal(), "complete() takes a succeeded or failed event");
        if let Err(error) = reporter.publish_confirmed(terminal).await {
            self.release().await;
            return Err(error.into());
        }
        if self.handed_over {
            return Ok(());
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
