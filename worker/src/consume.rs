//! Consuming: prefetch 1, one delivery at a time, until shutdown or the channel's end. Each
//! delivery is run to a settled lease by `step`.
//!
//! Prefetch 1 because a long step must not hold queued messages that another replica
//! could run, and because KEDA then sees exactly one unacked message per busy worker.

use futures_util::StreamExt;
use std::sync::atomic::Ordering;

use lapin::{
    Channel, Consumer,
    message::Delivery,
    options::{BasicCancelOptions, BasicConsumeOptions},
    types::FieldTable,
};
use opflow_protocol::queue;
use tokio::sync::oneshot;

use crate::step::{Settled, StepEnd, Worker};

/// How one broker session ended.
pub(crate) enum SessionEnd {
    /// Shutdown was requested and the step in hand (if any) is settled.
    Shutdown,
    /// See `Exit::Recycle`; the step is settled and the consume channel closed.
    Recycle,
    /// The broker connection or a channel failed; connect again and go on.
    Lost(anyhow::Error),
    /// Reconnecting would not help (the op's queue does not exist).
    Fatal(anyhow::Error),
}

impl Worker {
    /// Publishes what the previous session could not, before taking new work.
    pub(crate) async fn publish_unsent(&self) -> anyhow::Result<()> {
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
    pub(crate) async fn consume(&self, channel: &Channel, mut consumer: Consumer) -> SessionEnd {
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
            let step = self.handle(delivery, channel, closed_rx);
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
                        if next.is_none() && self.consumer_paused.load(Ordering::SeqCst) {
                            // The step cancelled the consumer to hand itself over: not an end.
                            consuming = false;
                            continue;
                        }
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
                            // The step may have ended meanwhile; then nobody needs telling.
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
                Ok(Settled { recycle: false })
                    if consuming
                        || (self.consumer_paused.load(Ordering::SeqCst) && !self.shutdown.is_cancelled()) =>
                {
                    if let Some(why) = self.retirement.step_settled() {
                        tracing::info!(%why, "retiring: no more steps for this worker; its supervisor starts a fresh one");
                        stop_consuming(channel, &self.id).await;
                        return SessionEnd::Shutdown;
                    }
                }
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
            // A handed-over step cancelled the consumer; consume again for the next step.
            if self.consumer_paused.swap(false, Ordering::SeqCst) {
                consumer = match channel
                    .basic_consume(
                        queue_name.as_str().into(),
                        self.id.as_str().into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                {
                    Ok(consumer) => consumer,
                    Err(error) => {
                        return SessionEnd::Lost(
                            anyhow::Error::new(error).context(format!("consuming {queue_name} again")),
                        );
                    }
                };
            }
        }
    }
}

pub(crate) async fn stop_consuming(channel: &Channel, consumer_tag: &str) {
    if let Err(error) = channel.basic_cancel(consumer_tag.into(), BasicCancelOptions::default()).await {
        tracing::warn!(%error, "cancelling the consumer failed");
    }
}
