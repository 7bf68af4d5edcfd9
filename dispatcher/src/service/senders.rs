//! Who may say what (`op_identity: required`): an event counts only if the op version that
//! runs its step sent it, and a run is canceled only by the dispatcher.
//!
//! Each op version logs in to RabbitMQ as a user of its own (`queue::op_user`), whose
//! permissions reach its own queue, the events exchange and the cancels exchange, nothing
//! else (`ops::identity`). Every message carries its publisher's login as `user_id`, which
//! the broker checks, so the sender of a delivery is known. An op can still publish an
//! event naming any step of any run, and a cancel record naming any run: [`SenderCheck`]
//! drops an event whose sender is not the op of its step, and [`CancelsAudit`] counts the
//! cancel records on the stream that the dispatcher did not publish (workers ignore them
//! themselves). Both count in `opflow_refused_messages_total{what,reason}`.

use std::{sync::Arc, time::Duration};

use backon::BackoffBuilder;
use futures_util::StreamExt;
use lapin::{
    Connection,
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use opflow_protocol::{CancelKind, CancelRecord, Event, queue};
use tokio_util::sync::CancellationToken;

use crate::{api::metrics::Metrics, service::applier::Applier, store::StoreError};

/// Who published `delivery`, as the broker checked it.
pub fn sender(delivery: &Delivery) -> Option<&str> {
    delivery.properties.user_id().as_ref().map(ShortString::as_str)
}

/// Why an event was refused: the `reason` label of `opflow_refused_messages_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The message says nothing of who sent it (published without `user_id`).
    NoSender,
    /// Sent by someone other than the op version that runs the step.
    NotTheStepsOp,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NoSender => "no_sender",
            Refusal::NotTheStepsOp => "not_the_steps_op",
        }
    }
}

/// Checks the sender of each event against the op version of its step.
#[derive(Clone)]
pub struct SenderCheck {
    /// The installation's vhost, part of every op user's name.
    pub vhost: Arc<str>,
}

impl SenderCheck {
    /// `Some(true)` when `sender` may report on `event`'s step, or when the run is not
    /// known (the applier drops such an event anyway); `Some(false)` when not, the refusal
    /// logged and counted (`what="event"`). `None` when cancelled while the store was
    /// unreachable: the caller leaves the delivery unsettled.
    pub async fn admit(
        &self,
        applier: &Applier,
        sender: Option<&str>,
        event: &Event,
        cancel: &CancellationToken,
    ) -> Option<bool> {
        let verdict = self.verdict(applier, sender, event, cancel).await?;
        if let Err(refusal) = verdict {
            tracing::warn!(run_id = %event.run_id, step_id = %event.step_id, kind = event.kind.name(),
                sender = sender.unwrap_or("(none)"), reason = refusal.as_str(),
                "refused an event not sent by the op of its step");
            applier.metrics.refused("event", refusal.as_str());
        }
        Some(verdict.is_ok())
    }

    async fn verdict(
        &self,
        applier: &Applier,
        sender: Option<&str>,
        event: &Event,
        cancel: &CancellationToken,
    ) -> Option<Result<(), Refusal>> {
        let Some(sender) = sender else {
            return Some(Err(Refusal::NoSender));
        };
        let mut pauses = opflow_process::backoff::reconnect().build();
        let plan = loop {
            match applier.plans.get(&applier.store, event.run_id).await {
                Ok(plan) => break plan,
                // Not a run of this store: the applier says so and dead-letters it.
                Err(StoreError::Corrupt(..)) => return Some(Ok(())),
                Err(error) => {
                    let pause = pauses.next().unwrap_or(Duration::from_secs(5));
                    tracing::warn!(%error, retry_in = ?pause, "reading a run's plan to check an event's sender failed");
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = cancel.cancelled() => return None,
                    }
                }
            }
        };
        let expected = queue::op_user(&self.vhost, plan.op(event.step_id));
        Some(if sender == expected { Ok(()) } else { Err(Refusal::NotTheStepsOp) })
    }
}

/// Follows the cancels stream and counts the run cancellations someone other than the
/// dispatcher published (`what="cancel"`). Workers ignore such records by themselves;
/// this makes them visible. Markers (workers' own records) are not cancellations.
pub struct CancelsAudit {
    /// The dispatcher's own broker user.
    pub dispatcher_user: String,
    pub metrics: Arc<Metrics>,
}

impl CancelsAudit {
    /// Reads the stream from now on until `cancel`. A broker without the stream ends it at
    /// once (logged): the audit is not worth a dispatcher restart.
    pub async fn run(self, connection: &Connection, cancel: CancellationToken) -> Result<(), lapin::Error> {
        let channel = connection.create_channel().await?;
        channel.basic_qos(256, BasicQosOptions::default()).await?;
        let mut args = FieldTable::default();
        args.insert(ShortString::from("x-stream-offset"), AMQPValue::LongString(LongString::from("next")));
        let mut consumer = channel
            .basic_consume(
                queue::CANCELS_STREAM.into(),
                "opflow-dispatcher-cancels-audit".into(),
                BasicConsumeOptions::default(),
                args,
            )
            .await?;
        loop {
            let delivery = tokio::select! {
                () = cancel.cancelled() => break,
                next = consumer.next() => match next {
                    Some(delivery) => delivery?,
                    None => break,
                },
            };
            let canceled = match CancelRecord::decode(&delivery.data) {
                Ok(CancelRecord {
                    kind: CancelKind::Run { run_id } | CancelKind::Step { run_id, .. },
                    ..
                }) => Some(run_id),
                _ => None,
            };
            if let Some(run_id) = canceled {
                let from = sender(&delivery);
                if from != Some(self.dispatcher_user.as_str()) {
                    let reason =
                        if from.is_some() { "not_the_dispatcher" } else { Refusal::NoSender.as_str() };
                    tracing::warn!(%run_id, sender = from.unwrap_or("(none)"),
                        "a cancel record not published by the dispatcher is on the cancels stream; workers ignore it");
                    self.metrics.refused("cancel", reason);
                }
            }
            if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
                tracing::debug!(%error, "acking a cancels stream record failed");
            }
        }
        if let Err(error) = channel.close(200, "dispatcher stopping".into()).await {
            tracing::debug!(%error, "closing the cancels audit channel failed");
        }
        Ok(())
    }
}
