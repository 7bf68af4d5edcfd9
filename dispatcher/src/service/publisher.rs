//! The outbox publisher: takes queued steps from the outbox, builds their messages (with
//! their upstream outputs), publishes them all, waits for every confirm, and only then
//! commits their removal from the outbox.

use std::{
    collections::{HashMap, HashSet},
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::FutureExt;
use opflow_amqp::{Outgoing, PublishError, Publisher, trace};
use opflow_protocol::{CancelRecord, OpRef, RunId, StepInput, queue};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::applier::{Applier, dispatcher_failure};
use crate::store::{
    CANCELS_CHANNEL, StoreError,
    lease::LeaderStore,
    outbox::{OutboxBatch, OutboxRow},
    run_plan::{PlanCache, RunPlan, StepRange},
    storable::StorableEvent,
};

/// How often the outbox is checked even without a wake-up, in case a notification was
/// missed (e.g. while the listener reconnected).
const POLL_EVERY: Duration = Duration::from_secs(1);

/// Cancels published per round, at most.
const CANCELS_PER_ROUND: u32 = 100;

#[derive(Debug, thiserror::Error)]
pub enum PublisherError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// Ops the outbox publisher has just published to, for whoever sizes their workers in this
/// process (`opflow up`'s autoscaler), so it looks at them at once.
#[derive(Debug, Default)]
pub struct Wakeups {
    ops: Mutex<HashSet<OpRef>>,
    notify: Notify,
}

impl Wakeups {
    /// Says that steps were just published to `op`.
    pub fn published(&self, op: &OpRef) {
        let fresh = self.lock().insert(op.clone());
        if fresh {
            self.notify.notify_one();
        }
    }

    /// Takes the ops published to since the last take.
    pub fn take(&self) -> HashSet<OpRef> {
        std::mem::take(&mut *self.lock())
    }

    /// Waits until an op is published to that was not yet taken.
    pub async fn notified(&self) {
        self.notify.notified().await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<OpRef>> {
        // Inserts and takes only: a poisoned set is still a set.
        self.ops.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Publishes steps from the outbox.
pub struct StepPublisher {
    pub store: LeaderStore,
    pub plans: Arc<PlanCache>,
    /// Told of every op published to, when an autoscaler runs in this process.
    pub wakeups: Option<Arc<Wakeups>>,
    /// Applies the failures the publisher decides (unroutable, inputs too large).
    pub applier: Applier,
    pub publisher: Publisher,
    pub batch_size: u32,
    pub max_inputs_bytes: usize,
}

impl StepPublisher {
    /// Publishes until cancelled. Woken by `wake` (this process queued steps), by a
    /// PostgreSQL notification on `OUTBOX_CHANNEL` (another process did), or by a poll.
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
        let mut listener = match self.store.outbox().listen().await {
            Ok(listener) => Some(listener),
            Err(error) => {
                tracing::warn!(%error, "cannot LISTEN for outbox notifications; polling instead");
                None
            }
        };
        // Cancels are looked for when announced, and on every poll in case one was missed.
        let mut cancels_due = true;
        loop {
            if cancels_due && !cancel.is_cancelled() {
                match self.publish_cancels().await {
                    Ok(()) => cancels_due = false,
                    Err(PublisherError::Store(error)) => {
                        tracing::warn!(%error, "publishing cancels failed; retrying on the next round")
                    }
                    Err(error) => return Err(error),
                }
            }
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
                    Some(listener) => match listener.recv().await {
                        Ok(notification) => notification.channel() == CANCELS_CHANNEL,
                        Err(error) => {
                            tracing::debug!(%error, "outbox listener interrupted");
                            tokio::time::sleep(POLL_EVERY).await;
                            true
                        }
                    },
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = wake.notified() => {}
                cancels = notified => cancels_due |= cancels,
                () = tokio::time::sleep(POLL_EVERY) => cancels_due = true,
            }
        }
    }

    /// Appends the runs canceled since the last call to the cancels stream, and removes
    /// them from the cancel outbox once the broker confirmed them.
    async fn publish_cancels(&self) -> Result<(), PublisherError> {
        let batch = self.store.outbox().take_cancels(CANCELS_PER_ROUND).await?;
        if batch.runs.is_empty() {
            return Ok(());
        }
        let mut pending = Vec::with_capacity(batch.runs.len());
        for run in &batch.runs {
            let record = CancelRecord::run(*run).encode();
            let sent = self
                .publisher
                .send(Outgoing {
                    exchange: queue::CANCELS_EXCHANGE,
                    routing_key: "",
                    payload: &record,
                    message_type: queue::CANCEL_MESSAGE_TYPE,
                    headers: trace::current_context_headers(),
                })
                .await?;
            pending.push((*run, sent));
        }
        for (run, sent) in pending {
            match sent.wait().await {
                Ok(()) => tracing::info!(run_id = %run, "told workers the run is canceled"),
                // The stream is declared with the topology, so this is an operator deleting
                // it: workers cannot be told, but the run is canceled all the same (its
                // steps' results are ignored). Retrying would not help.
                Err(error @ (PublishError::Unroutable { .. } | PublishError::Nacked { .. })) => {
                    tracing::error!(run_id = %run, %error, "cannot tell workers the run is canceled; its queued steps may still run, and their results are ignored")
                }
                Err(error) => return Err(error.into()),
            }
        }
        batch.commit().await?;
        Ok(())
    }

    /// Publishes one outbox batch; returns how many outbox rows it consumed.
    ///
    /// A step whose message cannot be built (its inputs over the limit, its plan
    /// unreadable, a panic) or that the broker refuses (unroutable, or nacked by a queue
    /// policy) is failed on its own; only a store outage or a lost channel fails the batch,
    /// which then rolls back and is taken again.
    pub async fn publish_batch(&self, cancel: &CancellationToken) -> Result<usize, PublisherError> {
        let mut batch = self.store.outbox().take(self.batch_size).await?;
        if batch.is_empty() {
            return Ok(0);
        }
        let taken = batch.entries.len();
        let entries = batch.still_queued();
        let mut inputs_cache = InputsCache::default();
        let mut failures: Vec<StorableEvent> = Vec::new();
        let mut window = ConfirmWindow::default();
        for entry in entries {
            let fail = |error: String, retryable: bool| {
                tracing::error!(run_id = %entry.run_id, step_id = %entry.step_id, %error, "step not published");
                dispatcher_failure(entry.run_id, entry.step_id, entry.attempt, error, retryable)
            };
            let built =
                AssertUnwindSafe(self.build(&mut batch, &mut inputs_cache, entry)).catch_unwind().await;
            let (op, payload) = match built {
                Ok(Ok(Ok(built))) => built,
                Ok(Ok(Err(refused))) => {
                    failures.push(fail(refused, false));
                    continue;
                }
                Ok(Err(error)) if error.is_transient() => return Err(error.into()),
                Ok(Err(error)) => {
                    failures.push(fail(
                        format!("the dispatcher cannot build this step's message: {error}"),
                        false,
                    ));
                    continue;
                }
                Err(panic) => {
                    let panic = opflow_process::panic::message(&*panic);
                    failures.push(fail(
                        format!("the dispatcher panicked building this step's message (a bug): {panic}"),
                        false,
                    ));
                    continue;
                }
            };
            // One span per step message, the root of that step's trace: the headers are
            // built inside it, so the message carries this span's context and the worker's
            // `step` span becomes its child. (It covers the send; confirms are awaited for
            // the whole window at once, see `ConfirmWindow`.)
            let span = tracing::info_span!(
                "publish",
                run_id = %entry.run_id,
                step_id = %entry.step_id,
                attempt = entry.attempt,
                op = %op.name,
                version = %op.version,
            );
            let routing_key = queue::op_queue(&op);
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
            window.push(entry, op, payload.len(), pending);
            inputs_cache.keep_within(MAX_WINDOW_BYTES);
            // Memory stays bounded: a window of large messages is confirmed before more
            // are built.
            if window.bytes > MAX_WINDOW_BYTES {
                window.settle(&mut failures, &(fail_confirm as FailConfirm), self.wakeups.as_deref()).await?;
            }
        }
        window.settle(&mut failures, &(fail_confirm as FailConfirm), self.wakeups.as_deref()).await?;
        // Failures first: if we crash between the two commits, the outbox rows return but
        // their steps are no longer queued, so they are dropped rather than published.
        if !failures.is_empty() && self.applier.apply(&failures, cancel).await.is_none() {
            // Cancelled: the batch rolls back and is published again by the next leader.
            return Ok(0);
        }
        batch.commit().await?;
        Ok(taken)
    }

    /// The op and the encoded message for one outbox entry, or why it cannot be sent.
    async fn build(
        &self,
        batch: &mut OutboxBatch,
        inputs_cache: &mut InputsCache,
        entry: OutboxRow,
    ) -> Result<Result<(OpRef, Vec<u8>), String>, StoreError> {
        let plan = self.plans.get(&self.store, entry.run_id).await?;
        let mut message = plan.message(entry.run_id, entry.step_id, entry.attempt);
        match inputs_cache.inputs_for(batch, &plan, entry, self.max_inputs_bytes).await? {
            Ok(inputs) => message.inputs = inputs,
            Err(too_large) => return Ok(Err(too_large)),
        }
        let payload = message.encode();
        if payload.len() > MAX_MESSAGE_BYTES {
            return Ok(Err(format!(
                "step {}'s message is {}, over the {} the broker is sent at most; lower `max_inputs_bytes` \
                 or have upstream ops output references instead of data",
                plan.label(entry.step_id),
                human_bytes(payload.len()),
                human_bytes(MAX_MESSAGE_BYTES)
            )));
        }
        Ok(Ok((message.op, payload)))
    }
}

/// The most message bytes in flight (sent, not yet confirmed) before the publisher waits
/// for their confirms; with the inputs cache, this bounds a batch's memory.
const MAX_WINDOW_BYTES: usize = 32 * 1024 * 1024;

/// The largest step message sent: below RabbitMQ's default `max_message_size` (128 MiB),
/// over which the broker closes the channel (and the batch would be retried forever).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Sent messages whose confirms are still to come.
#[derive(Default)]
struct ConfirmWindow {
    pending: Vec<(OutboxRow, OpRef, opflow_amqp::PendingConfirm)>,
    bytes: usize,
}

/// The failure of a step the broker refused, or `None` when the refusal is not about
/// the step (a lost channel: the whole batch is retried).
type FailConfirm = fn(&OpRef, &PublishError) -> Option<(String, bool)>;

impl ConfirmWindow {
    fn push(&mut self, entry: OutboxRow, op: OpRef, bytes: usize, pending: opflow_amqp::PendingConfirm) {
        self.bytes += bytes;
        self.pending.push((entry, op, pending));
    }

    /// Waits for every confirm; a step the broker refused becomes a failure.
    async fn settle(
        &mut self,
        failures: &mut Vec<StorableEvent>,
        fail: &FailConfirm,
        wakeups: Option<&Wakeups>,
    ) -> Result<(), PublisherError> {
        self.bytes = 0;
        for (entry, op, pending) in self.pending.drain(..) {
            let Err(error) = pending.wait().await else {
                if let Some(wakeups) = wakeups {
                    wakeups.published(&op);
                }
                continue;
            };
            let Some((reason, retryable)) = fail(&op, &error) else {
                return Err(error.into());
            };
            tracing::error!(run_id = %entry.run_id, step_id = %entry.step_id, %op, "{reason}");
            failures.push(dispatcher_failure(entry.run_id, entry.step_id, entry.attempt, reason, retryable));
        }
        Ok(())
    }
}

/// What a refused publish does to its step: unroutable fails it for good (its op has no
/// queue); a nack (a queue policy refused it, e.g. `max-length` with `reject-publish`)
/// fails it retryably, so it is tried again after the asset's backoff and fails for good
/// only after its retries.
fn fail_confirm(op: &OpRef, error: &PublishError) -> Option<(String, bool)> {
    match error {
        PublishError::Unroutable { routing_key, .. } => Some((
            format!(
                "op {op} has no queue `{routing_key}` on the broker, so the step cannot be delivered; \
                 register the op again with `opflow ops add <op binary>`"
            ),
            false,
        )),
        PublishError::Nacked { routing_key, .. } => Some((
            format!(
                "the broker refused the step's message for queue `{routing_key}` of op {op} (a nack: the queue is \
                 full or a policy such as `max-length` with `overflow: reject-publish` refuses it); check the \
                 queue's policies with `rabbitmqctl list_policies`"
            ),
            true,
        )),
        PublishError::Broker { .. } => None,
    }
}
/// Upstream outputs already read in this batch, per (run, range): fan-in steps of the same
/// partition share them. A range's size is learned with its outputs, which are loaded only
/// while the step's inputs so far are within the limit.
#[derive(Default)]
struct InputsCache {
    sizes: HashMap<(RunId, StepRange), u64>,
    ranges: HashMap<(RunId, StepRange), Arc<Vec<StepInput>>>,
    /// Bytes of outputs held in `ranges`.
    held: u64,
}

impl InputsCache {
    /// The step's inputs, or a message saying they are too large.
    async fn inputs_for(
        &mut self,
        batch: &mut OutboxBatch,
        plan: &RunPlan,
        entry: OutboxRow,
        max_bytes: usize,
    ) -> Result<Result<Vec<StepInput>, String>, StoreError> {
        let ranges = plan.input_ranges(entry.step_id);
        let mut bytes = 0u64;
        for (upstream, range) in &ranges {
            let key = (entry.run_id, *range);
            let size = match self.sizes.get(&key) {
                Some(size) => *size,
                None => {
                    let budget = (max_bytes as u64).saturating_sub(bytes);
                    let (size, rows) = batch.outputs_within(entry.run_id, *range, budget).await?;
                    self.sizes.insert(key, size);
                    if let Some(rows) = rows {
                        self.keep(key, plan, *upstream, rows, size);
                    }
                    size
                }
            };
            bytes = bytes.saturating_add(size);
        }
        if bytes > max_bytes as u64 {
            return Ok(Err(format!(
                "step {} needs {} of upstream outputs, over the {} limit (`max_inputs_bytes`); have the upstream \
                 ops store large data themselves and output references to it",
                plan.label(entry.step_id),
                human_bytes(usize::try_from(bytes).unwrap_or(usize::MAX)),
                human_bytes(max_bytes)
            )));
        }
        let mut inputs = Vec::new();
        for (upstream, range) in ranges {
            let key = (entry.run_id, range);
            let outputs = match self.ranges.get(&key) {
                Some(outputs) => outputs.clone(),
                // Forgotten by `keep_within` since its size was learned.
                None => {
                    let (size, rows) = batch.outputs_within(entry.run_id, range, u64::MAX).await?;
                    self.keep(key, plan, upstream, rows.unwrap_or_default(), size)
                }
            };
            inputs.extend(outputs.iter().cloned());
        }
        Ok(Ok(inputs))
    }

    /// Keeps a range's outputs, as inputs naming their asset, partition and point.
    fn keep(
        &mut self,
        key: (RunId, StepRange),
        plan: &RunPlan,
        upstream: usize,
        rows: Vec<(opflow_protocol::StepId, serde_json::Value)>,
        size: u64,
    ) -> Arc<Vec<StepInput>> {
        let asset = &plan.asset(upstream).name;
        let outputs: Vec<StepInput> = rows
            .into_iter()
            .map(|(step_id, output)| {
                let (partition, point) = plan.partition_and_point(step_id);
                StepInput {
                    asset: asset.clone(),
                    step_id,
                    partition: partition.map(str::to_owned),
                    point,
                    output,
                }
            })
            .collect();
        self.held += size;
        let outputs = Arc::new(outputs);
        self.ranges.insert(key, outputs.clone());
        outputs
    }

    /// Forgets the loaded outputs once they hold more than `limit` bytes (sizes are kept).
    fn keep_within(&mut self, limit: usize) {
        if self.held > limit as u64 {
            self.ranges.clear();
            self.held = 0;
        }
    }
}

fn human_bytes(n: usize) -> String {
    if n >= 1024 * 1024 {
        format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
    } else {
        format!("{:.1} KiB", n as f64 / 1024.0)
    }
}
