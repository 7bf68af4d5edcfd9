//! The outbox publisher: takes queued steps from the outbox, builds their messages (with
//! their upstream outputs), publishes them all, waits for every confirm, and only then
//! commits their removal from the outbox.

use std::{collections::HashMap, sync::Arc, time::Duration};

use opflow_amqp::{Outgoing, PublishError, Publisher, trace};
use opflow_protocol::{RunId, StepInput, queue};
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::dispatcher_failure;
use crate::store::{
    Store, StoreError,
    outbox::{OutboxBatch, OutboxEntry},
    run_plan::{PlanCache, RunPlan, StepRange},
};
use crate::{isolation::Applier, store::storable::StorableEvent};

/// How often the outbox is checked even without a wake-up, in case a notification was
/// missed (e.g. while the listener reconnected).
const POLL_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum PublisherError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// Publishes steps from the outbox.
pub struct StepPublisher {
    pub store: Store,
    pub plans: Arc<PlanCache>,
    /// Applies the failures the publisher decides (unroutable, inputs too large).
    pub applier: Applier,
    pub publisher: Publisher,
    pub batch_size: u32,
    pub max_inputs_bytes: usize,
}

impl StepPublisher {
    /// Publishes until cancelled. Woken by `wake` (this process queued steps), by a
    /// PostgreSQL notification on `opflow_outbox` (another process did), or by a poll.
    pub async fn run(self, wake: Arc<Notify>, cancel: CancellationToken) -> Result<(), PublisherError> {
        let result = self.publish_until_cancelled(wake, cancel).await;
        if let Err(error) = self.publisher.channel().close(200, "dispatcher stopping".into()).await {
            tracing::debug!(%error, "closing the publish channel failed");
        }
        result
    }

    async fn publish_until_cancelled(
        &self,
        wake: Arc<Notify>,
        cancel: CancellationToken,
    ) -> Result<(), PublisherError> {
        let mut listener = match PgListener::connect_with(self.store.pool()).await {
            Ok(mut listener) => match listener.listen("opflow_outbox").await {
                Ok(()) => Some(listener),
                Err(error) => {
                    tracing::warn!(%error, "cannot LISTEN for outbox notifications; polling instead");
                    None
                }
            },
            Err(error) => {
                tracing::warn!(%error, "cannot LISTEN for outbox notifications; polling instead");
                None
            }
        };
        loop {
            while !cancel.is_cancelled() {
                match self.publish_batch(&cancel).await {
                    // A short batch drained the outbox: wait for a wake-up rather than ask an
                    // empty table again (a wake-up that came meanwhile is kept by `Notify`).
                    Ok(taken) if taken < self.batch_size as usize => break,
                    Ok(_) => continue,
                    Err(PublisherError::Store(error)) => {
                        // The batch rolled back; its rows are published on the next round.
                        tracing::warn!(%error, "publishing from the outbox failed; retrying");
                        tokio::select! {
                            () = tokio::time::sleep(POLL_EVERY) => break,
                            () = cancel.cancelled() => break,
                        }
                    }
                    Err(error) => return Err(error),
                }
            }
            let notified = async {
                match listener.as_mut() {
                    Some(listener) => {
                        if let Err(error) = listener.recv().await {
                            tracing::debug!(%error, "outbox listener interrupted");
                            tokio::time::sleep(POLL_EVERY).await;
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = wake.notified() => {}
                () = notified => {}
                () = tokio::time::sleep(POLL_EVERY) => {}
            }
        }
    }

    /// Publishes one outbox batch; returns how many outbox rows it consumed.
    pub async fn publish_batch(&self, cancel: &CancellationToken) -> Result<usize, PublisherError> {
        let mut batch = self.store.take_outbox(self.batch_size).await?;
        if batch.is_empty() {
            return Ok(0);
        }
        let taken = batch.entries.len();
        let entries = batch.still_queued();
        let mut inputs_cache = InputsCache::default();
        let mut failures: Vec<StorableEvent> = Vec::new();
        let mut in_flight = Vec::with_capacity(entries.len());
        for entry in entries {
            let plan = self.plans.get(&self.store, entry.run_id).await?;
            let mut message = plan.message(entry.run_id, entry.step_id, entry.attempt);
            match inputs_cache.inputs_for(&mut batch, &plan, entry, self.max_inputs_bytes).await? {
                Ok(inputs) => message.inputs = inputs,
                Err(too_large) => {
                    failures.push(
                        dispatcher_failure(entry.run_id, entry.step_id, entry.attempt, too_large).into(),
                    );
                    continue;
                }
            }
            let span = tracing::info_span!(
                "publish_step",
                run_id = %entry.run_id,
                step_id = entry.step_id,
                attempt = entry.attempt,
                op = %message.op,
            );
            let routing_key = queue::op_queue(&message.op);
            let payload = message.encode();
            let pending = async {
                self.publisher
                    .send(Outgoing {
                        exchange: queue::STEP_EXCHANGE,
                        routing_key: &routing_key,
                        payload: &payload,
                        message_type: queue::STEP_MESSAGE_TYPE,
                        headers: trace::current_context_headers(),
                    })
                    .await
            }
            .instrument(span)
            .await?;
            in_flight.push((entry, message.op.clone(), pending));
        }
        // The confirm window: every message is in flight before the first confirm is awaited.
        for (entry, op, pending) in in_flight {
            match pending.wait().await {
                Ok(()) => {}
                Err(PublishError::Unroutable { routing_key, .. }) => {
                    let error = format!(
                        "op {op} has no queue `{routing_key}` on the broker, so the step cannot be delivered; \
                         register the op again with `opflow ops add <op binary>`"
                    );
                    tracing::error!(run_id = %entry.run_id, step_id = entry.step_id, %op, "{error}");
                    failures
                        .push(dispatcher_failure(entry.run_id, entry.step_id, entry.attempt, error).into());
                }
                Err(error) => return Err(error.into()),
            }
        }
        // Failures first: if we crash between the two commits, the outbox rows return but
        // their steps are no longer queued, so they are dropped rather than published.
        if !failures.is_empty() && self.applier.apply(&failures, cancel).await.is_none() {
            // Cancelled: the batch rolls back and is published again by the next leader.
            return Ok(0);
        }
        batch.commit().await?;
        Ok(taken)
    }
}

/// Upstream outputs already read in this batch, per (run, range): fan-in steps of the same
/// partition share them.
#[derive(Default)]
struct InputsCache {
    ranges: HashMap<(RunId, StepRange), Arc<RangeInputs>>,
}

/// The outputs of one range of upstream steps, and their total size in bytes.
struct RangeInputs {
    inputs: Vec<StepInput>,
    bytes: usize,
}

impl InputsCache {
    /// The step's inputs, or a message saying they are too large.
    async fn inputs_for(
        &mut self,
        batch: &mut OutboxBatch,
        plan: &RunPlan,
        entry: OutboxEntry,
        max_bytes: usize,
    ) -> Result<Result<Vec<StepInput>, String>, StoreError> {
        let mut inputs = Vec::new();
        let mut bytes = 0usize;
        for (upstream, range) in plan.input_ranges(entry.step_id) {
            let key = (entry.run_id, range);
            let outputs = match self.ranges.get(&key) {
                Some(outputs) => outputs.clone(),
                None => {
                    let rows = batch.outputs(entry.run_id, range).await?;
                    let asset = &plan.asset(upstream).name;
                    let mut size = 0;
                    let inputs: Vec<StepInput> = rows
                        .into_iter()
                        .map(|(step_id, output)| {
                            size += output.to_string().len();
                            let (partition, point) = plan.partition_and_point(step_id);
                            StepInput {
                                asset: asset.clone(),
                                step_id: opflow_protocol::StepId(step_id),
                                partition: partition.map(str::to_owned),
                                point,
                                output,
                            }
                        })
                        .collect();
                    let outputs = Arc::new(RangeInputs { inputs, bytes: size });
                    self.ranges.insert(key, outputs.clone());
                    outputs
                }
            };
            bytes += outputs.bytes;
            inputs.extend(outputs.inputs.iter().cloned());
        }
        if bytes > max_bytes {
            return Ok(Err(format!(
                "step {} needs {} of upstream outputs, over the {} limit (`max_inputs_bytes`); have the upstream \
                 ops store large data themselves and output references to it",
                plan.label(entry.step_id),
                human_bytes(bytes),
                human_bytes(max_bytes)
            )));
        }
        Ok(Ok(inputs))
    }
}

fn human_bytes(n: usize) -> String {
    if n >= 1024 * 1024 {
        format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
    } else {
        format!("{:.1} KiB", n as f64 / 1024.0)
    }
}
