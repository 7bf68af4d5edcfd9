//! The outbox publisher: keeps each op version's queue filled to its window
//! (`service::window`) from the outbox, in a fair order across owners and runs; builds each
//! step's message (with its upstream outputs), publishes a round, waits for every confirm,
//! and only then commits the round's removal from the outbox.

use std::{
    collections::{HashMap, HashSet},
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::FutureExt;
use lapin::Connection;
use opflow_amqp::{Outgoing, PublishError, Publisher, topology::QueueProbe, trace};
use opflow_protocol::{CancelRecord, OpRef, RunId, StepInput, queue};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{
    applier::{Applier, dispatcher_failure},
    window::{Arrivals, HOLD_PER_RUN, PublishWindow, Round, WindowSize},
};
use crate::store::{
    CANCELS_CHANNEL, StoreError,
    key_slots::{HeldSlot, KeyWait, SUPERSEDED_BY_DISPATCHER},
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
    /// The setting `publish_window_ms` (see `window::WindowSize::at`).
    pub window_intake: Duration,
}

/// What the publisher's loop has still to do besides publishing.
struct Due {
    cancels: bool,
    /// Read every run's rows from the outbox: at the start, after a missed notification,
    /// and now and then in case a row was never told of.
    all_rows: bool,
    /// Runs submitted (by any process) whose rows are to be read.
    runs: HashSet<RunId>,
    /// Read the ops' window settings.
    sizes: bool,
}

/// Every this many polls, every run's rows are read again (see [`Due::all_rows`]).
const READ_ALL_EVERY: u32 = 60;

/// Every this many polls, the ops' window settings are read again.
const SIZES_EVERY: u32 = 5;

impl StepPublisher {
    /// Publishes until cancelled. Woken by `arrivals` (this process queued steps, or a
    /// worker took one), by a PostgreSQL notification on `OUTBOX_CHANNEL` (a run was
    /// submitted), or by a poll.
    pub async fn run(
        self,
        connection: &Connection,
        arrivals: Arc<Arrivals>,
        cancel: CancellationToken,
    ) -> Result<(), PublisherError> {
        let mut probe = QueueProbe::new(connection);
        let result = self.publish_until_cancelled(&mut probe, &arrivals, cancel).await;
        probe.close().await;
        if let Err(error) = self.publisher.channel().close(200, "dispatcher stopping".into()).await {
            tracing::debug!(%error, "closing the publish channel failed");
        }
        result
    }

    async fn publish_until_cancelled(
        &self,
        probe: &mut QueueProbe<'_>,
        arrivals: &Arrivals,
        cancel: CancellationToken,
    ) -> Result<(), PublisherError> {
        let mut listener = match self.store.outbox().listen().await {
            Ok(listener) => Some(listener),
            Err(error) => {
                tracing::warn!(%error, "cannot LISTEN for outbox notifications; polling instead");
                None
            }
        };
        let mut window = PublishWindow::new(self.window_intake);
        // The slots held by what earlier leaders published, before anything is published:
        // without them a cap would be over-admitted.
        loop {
            match self.store.key_slots().held().await {
                Ok(slots) => {
                    if !slots.is_empty() {
                        tracing::info!(
                            slots = slots.len(),
                            "concurrency slots held by published steps restored"
                        );
                    }
                    window.hold_slots(slots);
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot read the concurrency slots held; retrying before publishing");
                    tokio::select! {
                        () = tokio::time::sleep(POLL_EVERY) => {}
                        () = cancel.cancelled() => return Ok(()),
                    }
                }
            }
        }
        let mut due = Due { cancels: true, all_rows: true, runs: HashSet::new(), sizes: true };
        let mut polls = tokio::time::interval(POLL_EVERY);
        polls.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut last_poll, mut poll_count) = (Instant::now(), 0u32);
        // What `key_waits` was last told; `None` until this leader first said it.
        let mut key_waits_said: Option<Vec<KeyWait>> = None;
        while !cancel.is_cancelled() {
            if due.cancels {
                match self.publish_cancels(&mut window).await {
                    Ok(()) => due.cancels = false,
                    Err(PublisherError::Store(error)) => {
                        tracing::warn!(%error, "publishing cancels failed; retrying on the next round")
                    }
                    Err(error) => return Err(error),
                }
            }
            let mut pause = false;
            match self.learn(&mut window, arrivals, &mut due, &cancel).await {
                Ok(()) => {
                    while let Some(round) = window.next_round(self.batch_size) {
                        let decided = !(round.rejected.is_empty() && round.superseded.is_empty());
                        if decided && !self.cancel_for_keys(&round, &cancel).await {
                            return Ok(());
                        }
                        match self.publish_round(&round, &cancel).await {
                            Ok(published) => window.published(&round, &published),
                            Err(PublisherError::Store(error)) => {
                                // The batch rolled back; its rows go out on the next round.
                                tracing::warn!(%error, "publishing from the outbox failed; retrying");
                                window.put_back(round, |run| self.plans.cached(run));
                                pause = true;
                                break;
                            }
                            Err(error) => return Err(error),
                        }
                        if cancel.is_cancelled() {
                            return Ok(());
                        }
                    }
                }
                Err(error) => {
                    // What was heard is read again from the outbox.
                    tracing::warn!(%error, "reading the outbox failed; retrying");
                    due.all_rows = true;
                    pause = true;
                }
            }
            if pause {
                tokio::select! {
                    () = tokio::time::sleep(POLL_EVERY) => continue,
                    () = cancel.cancelled() => return Ok(()),
                }
            }
            let notified = async {
                match listener.as_mut() {
                    Some(listener) => match listener.recv().await {
                        Ok(notification) => Some(notification),
                        Err(error) => {
                            tracing::debug!(%error, "outbox listener interrupted");
                            tokio::time::sleep(POLL_EVERY).await;
                            None
                        }
                    },
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = arrivals.notified() => {}
                notification = notified => match notification {
                    Some(n) if n.channel() == CANCELS_CHANNEL => due.cancels = true,
                    Some(n) => match n.payload().parse::<RunId>() {
                        Ok(run) => { due.runs.insert(run); }
                        Err(_) => due.all_rows = true,
                    },
                    // Notifications may have been missed while the listener reconnected.
                    None => due.all_rows = true,
                },
                _ = polls.tick() => {
                    due.cancels = true;
                    poll_count = poll_count.wrapping_add(1);
                    due.all_rows |= poll_count % READ_ALL_EVERY == 0;
                    due.sizes |= poll_count % SIZES_EVERY == 0;
                    window.tick(last_poll.elapsed());
                    last_poll = Instant::now();
                    self.count_queues(&mut window, probe).await;
                    let waits = window.key_waits();
                    if key_waits_said.as_ref() != Some(&waits) {
                        match self.store.key_slots().record_waits(&waits).await {
                            Ok(()) => key_waits_said = Some(waits),
                            Err(error) => tracing::debug!(%error, "could not record why steps wait for keys"),
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Takes in what the publisher heard of and reads what it has to from the outbox and
    /// the op registry: rows of submitted runs, rows past what is held of a run, the ops'
    /// window settings. A store error leaves the rest for later (`due`).
    async fn learn(
        &self,
        window: &mut PublishWindow,
        arrivals: &Arrivals,
        due: &mut Due,
        cancel: &CancellationToken,
    ) -> Result<(), StoreError> {
        let heard = arrivals.take();
        // What waited for an identical step that ended is looked up again, with the new rows.
        window.identical.ended(&heard.ended);
        let mut queued = window.identical.take_released();
        // A batch's rows and steps come mostly from a few runs: each plan is looked up once.
        let mut plans: HashMap<RunId, Option<Arc<RunPlan>>> = HashMap::new();
        for row in heard.queued {
            if let Some(plan) = self.plan_once(&mut plans, row.run_id).await? {
                queued.push((row, plan));
            }
        }
        for (row, plan) in self.reuse(window, queued, cancel).await? {
            window.hold(row, &plan);
        }
        for (run, step) in heard.started {
            if let Some(plan) = self.plan_once(&mut plans, run).await? {
                window.started(plan.op(step), run, step);
            }
        }
        for (run, step) in heard.settled {
            if let Some(plan) = self.plan_once(&mut plans, run).await? {
                window.settled(plan.op(step), run, step);
            }
        }
        window.results(&heard.results);
        let released = window.take_released();
        if let Err(error) = self.store.key_slots().release(&released).await {
            // The next leader drops them by their results in `events`; this one holds no
            // slot for them any more.
            tracing::debug!(%error, "could not remove freed concurrency slots from the store");
        }
        let outbox = self.store.outbox();
        if due.all_rows {
            let (rows, totals) = outbox.all_rows(HOLD_PER_RUN).await?;
            let mut by_run: HashMap<RunId, Vec<_>> = HashMap::new();
            for row in rows {
                by_run.entry(row.run_id).or_default().push(row);
            }
            for (run, total) in totals {
                if let Some(plan) = self.plan(run).await? {
                    let rows = by_run.remove(&run).unwrap_or_default();
                    let read = rows.len() as u64;
                    let rows = self.reuse_rows(window, rows, &plan, cancel).await?;
                    window.loaded_all(&plan, run, &rows, total.saturating_sub(read - rows.len() as u64));
                }
            }
            due.all_rows = false;
            due.runs.clear();
        }
        while let Some(run) = due.runs.iter().next().copied() {
            if let Some(plan) = self.plan(run).await? {
                let rows = outbox.rows_of(run, None, HOLD_PER_RUN).await?;
                let more_after = more_after(&rows, HOLD_PER_RUN);
                let rows = self.reuse_rows(window, rows, &plan, cancel).await?;
                window.loaded(&plan, run, &rows, more_after);
            }
            due.runs.remove(&run);
        }
        for (run, after, limit) in window.refills() {
            match self.plan(run).await? {
                Some(plan) => {
                    let rows = outbox.rows_of(run, after, limit).await?;
                    let more_after = more_after(&rows, limit);
                    let rows = self.reuse_rows(window, rows, &plan, cancel).await?;
                    window.loaded(&plan, run, &rows, more_after);
                }
                None => window.forget_run(run),
            }
        }
        if due.sizes || window.sizes_unknown() {
            for op in self.store.ops().list().await? {
                if let Ok(op_ref) = format!("{}@{}", op.name, op.version).parse::<OpRef>() {
                    window.set_size(&op_ref, WindowSize::of(&op.scaling));
                    window.set_max_in_flight(&op_ref, op.scaling.max_in_flight.map(|m| m.max(1) as u32));
                }
            }
            window.sizes_read();
            due.sizes = false;
        }
        Ok(())
    }

    /// [`StepPublisher::reuse`] for rows of one run.
    async fn reuse_rows(
        &self,
        window: &mut PublishWindow,
        rows: Vec<OutboxRow>,
        plan: &Arc<RunPlan>,
        cancel: &CancellationToken,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let rows = rows.into_iter().map(|row| (row, plan.clone())).collect();
        Ok(self.reuse(window, rows, cancel).await?.into_iter().map(|(row, _)| row).collect())
    }

    /// Satisfies from the catalog what it can of `rows` (`service::reuse`); returns the
    /// rows still to publish.
    async fn reuse(
        &self,
        window: &mut PublishWindow,
        rows: Vec<(OutboxRow, Arc<RunPlan>)>,
        cancel: &CancellationToken,
    ) -> Result<Vec<(OutboxRow, Arc<RunPlan>)>, StoreError> {
        super::reuse::satisfy(&self.store, &self.applier, window, rows, cancel).await
    }

    /// A run's plan; `None` when the run is gone (deleted by retention or by hand), so that
    /// its rows are dropped.
    async fn plan(&self, run: RunId) -> Result<Option<Arc<RunPlan>>, StoreError> {
        match self.plans.get(&self.store, run).await {
            Ok(plan) => Ok(Some(plan)),
            Err(error) if error.is_transient() => Err(error),
            Err(error) => {
                tracing::debug!(run_id = %run, %error, "dropping outbox rows of a run whose plan cannot be read");
                Ok(None)
            }
        }
    }

    /// [`StepPublisher::plan`], remembered in `plans` for the rest of a `learn`.
    async fn plan_once(
        &self,
        plans: &mut HashMap<RunId, Option<Arc<RunPlan>>>,
        run: RunId,
    ) -> Result<Option<Arc<RunPlan>>, StoreError> {
        if let Some(plan) = plans.get(&run) {
            return Ok(plan.clone());
        }
        let plan = self.plan(run).await?;
        plans.insert(run, plan.clone());
        Ok(plan)
    }

    /// Sets each backlogged op's count of ready messages to the broker's: what the window
    /// estimates from publishes and starts drifts when a message is redelivered or dropped
    /// by a worker without a start.
    async fn count_queues(&self, window: &mut PublishWindow, probe: &mut QueueProbe<'_>) {
        for op in window.backlogged() {
            match probe.counts(&queue::op_queue(&op)).await {
                Ok(Some(counts)) => window.resync(&op, counts.ready),
                // A missing queue fails the steps published to it (unroutable).
                Ok(None) => {}
                Err(error) => {
                    tracing::debug!(%op, %error, "cannot read a queue's count; keeping the estimate")
                }
            }
        }
    }

    /// Appends the runs canceled since the last call to the cancels stream, and removes
    /// them from the cancel outbox once the broker confirmed them.
    async fn publish_cancels(&self, window: &mut PublishWindow) -> Result<(), PublisherError> {
        let batch = self.store.outbox().take_cancels(CANCELS_PER_ROUND).await?;
        if batch.runs.is_empty() {
            return Ok(());
        }
        let mut pending = Vec::with_capacity(batch.runs.len());
        for run in &batch.runs {
            let sent = self.send_cancel(&CancelRecord::run(*run)).await?;
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
        let canceled = batch.runs.clone();
        batch.commit().await?;
        for run in canceled {
            window.forget_run(run);
        }
        Ok(())
    }

    /// Sends a record to the cancels stream; its confirm is to be awaited.
    async fn send_cancel(&self, record: &CancelRecord) -> Result<opflow_amqp::PendingConfirm, PublishError> {
        let record = record.encode();
        self.publisher
            .send(Outgoing {
                exchange: queue::CANCELS_EXCHANGE,
                routing_key: "",
                payload: &record,
                message_type: queue::CANCEL_MESSAGE_TYPE,
                headers: trace::current_context_headers(),
            })
            .await
    }

    /// Publishes one round; returns the rows whose messages the broker confirmed.
    ///
    /// A step whose message cannot be built (its inputs over the limit, its plan
    /// unreadable, a panic) or that the broker refuses (unroutable, or nacked by a queue
    /// policy) is failed on its own; only a store outage or a lost channel fails the batch,
    /// which then rolls back and is taken again.
    async fn publish_round(
        &self,
        round: &Round,
        cancel: &CancellationToken,
    ) -> Result<Vec<OutboxRow>, PublisherError> {
        // Rows canceled by their key go with the round: no longer queued, they are dropped.
        let seqs: Vec<i64> = round
            .rows
            .iter()
            .map(|row| row.seq)
            .chain(round.rejected.iter().map(|(row, _)| row.seq))
            .collect();
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let mut batch = self.store.outbox().take(&seqs).await?;
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let entries = batch.still_queued();
        let mut published = Vec::with_capacity(entries.len());
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
                window
                    .settle(
                        &mut failures,
                        &mut published,
                        &(fail_confirm as FailConfirm),
                        self.wakeups.as_deref(),
                    )
                    .await?;
            }
        }
        window
            .settle(&mut failures, &mut published, &(fail_confirm as FailConfirm), self.wakeups.as_deref())
            .await?;
        // Failures first: if we crash between the two commits, the outbox rows return but
        // their steps are no longer queued, so they are dropped rather than published.
        if !failures.is_empty() && self.applier.apply(&failures, cancel).await.is_none() {
            // Cancelled: the batch rolls back and is published again by the next leader.
            return Ok(Vec::new());
        }
        if !round.slots.is_empty() {
            let sent: HashSet<(RunId, opflow_protocol::StepId)> =
                published.iter().map(|row| (row.run_id, row.step_id)).collect();
            let slots: Vec<HeldSlot> = round
                .slots
                .iter()
                .filter(|(run, step, _, _)| sent.contains(&(*run, *step)))
                .cloned()
                .collect();
            batch.hold_slots(&slots).await?;
        }
        batch.commit().await?;
        Ok(published)
    }

    /// Carries out what a round's concurrency caps decided before it is published: steps a
    /// full `cancel_newest` key rejects are failed (their rows then go with the round as no
    /// longer queued), and steps a `cancel_in_progress` key replaces are failed and their
    /// workers told to stop them. Their slots stay held until those workers' results come
    /// back. Returns false when cancelled.
    async fn cancel_for_keys(&self, round: &Round, cancel: &CancellationToken) -> bool {
        let mut failures: Vec<StorableEvent> = round
            .rejected
            .iter()
            .map(|(row, reason)| {
                dispatcher_failure(row.run_id, row.step_id, row.attempt, reason.clone(), false)
            })
            .collect();
        failures.extend(round.superseded.iter().map(|((run, step, attempt), reason)| {
            opflow_protocol::Event::new(
                *run,
                *step,
                *attempt,
                SUPERSEDED_BY_DISPATCHER,
                opflow_protocol::EventKind::Failed { error: reason.clone(), retryable: false },
            )
            .into()
        }));
        if self.applier.apply(&failures, cancel).await.is_none() {
            return false;
        }
        let mut pending = Vec::new();
        for &(run, step, attempt) in round.superseded.iter().map(|(victim, _)| victim) {
            let sent = self.send_cancel(&CancelRecord::step(run, step, attempt)).await;
            pending.push(((run, step), sent));
        }
        for ((run, step), sent) in pending {
            let confirmed = match sent {
                Ok(sent) => sent.wait().await,
                Err(error) => Err(error),
            };
            match confirmed {
                Ok(()) => {
                    tracing::info!(run_id = %run, step_id = %step, "told workers to stop a step a newer one of its key replaces")
                }
                // Its slots stay held until it ends by itself: the cap holds all the same.
                Err(error) => tracing::warn!(run_id = %run, step_id = %step, %error,
                    "could not tell workers to stop a replaced step; it runs to its end"),
            }
        }
        true
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

/// Where a read of a run's rows limited to `limit` stopped, if it was cut there.
fn more_after(rows: &[OutboxRow], limit: u32) -> Option<i64> {
    if (rows.len() as u64) < u64::from(limit) {
        None
    } else {
        rows.iter().map(|r| i64::from(r.step_id.0)).max()
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
        published: &mut Vec<OutboxRow>,
        fail: &FailConfirm,
        wakeups: Option<&Wakeups>,
    ) -> Result<(), PublisherError> {
        self.bytes = 0;
        for (entry, op, pending) in self.pending.drain(..) {
            let Err(error) = pending.wait().await else {
                if let Some(wakeups) = wakeups {
                    wakeups.published(&op);
                }
                published.push(entry);
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
