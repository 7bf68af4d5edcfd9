//! The publish window: an op version's queue holds at most a window of ready messages,
//! enough to keep its workers busy, and the steps beyond it wait in the outbox, where they
//! cost the broker nothing and can still be sent in a fair order (`fair_share`). Without
//! it the broker serves a queue first in, first out, and one team's 100,000-step backfill
//! stands in front of every other team's steps for the same op.
//!
//! The leader's publisher owns a [`PublishWindow`]: the outbox rows it holds in memory,
//! per op version and run, and its estimate of each queue's ready messages. It hears of new
//! rows and of messages taken through [`Arrivals`] (the applier and the retry scheduler
//! tell it, in this process) and of runs submitted elsewhere by a notification; it never
//! counts rows in the database to decide a round. The estimate is corrected from the
//! broker's own count (a passive declare) every second while an op has steps waiting, so
//! redeliveries and steps dropped by workers cannot skew it for long.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use opflow_protocol::{OpRef, RunId, StepId};
use tokio::sync::Notify;

use super::{
    fair_share::{self, Candidate},
    identical::IdenticalSteps,
    key_slots::{Admission, Attempt, KeySlots, StepKey},
};
use crate::{
    plan::concurrency::Strategy,
    store::{
        key_slots::{HeldSlot, KeyWait},
        ops::ScaleSettings,
        outbox::OutboxRow,
        run_plan::RunPlan,
    },
};

/// The smallest default window.
pub const MIN_WINDOW: u32 = 8;

/// The most outbox rows of one run held in memory; the rest are read when these run low.
pub const HOLD_PER_RUN: u32 = 4096;

/// The most started steps remembered while they run (see [`PublishWindow::started`]).
const MAX_RUNNING_REMEMBERED: usize = 100_000;

/// What the publisher must hear of, from wherever it happens in this process: steps written
/// to the outbox, steps whose message a worker took (it said it started, or it gave a
/// result without saying so, as a quick step does), and every result that came back,
/// applied or not (it frees the attempt's concurrency slots).
#[derive(Debug, Default)]
pub struct Arrivals {
    heard: Mutex<Heard>,
    notify: Notify,
}

/// What [`Arrivals`] collected since the publisher last looked.
#[derive(Debug, Default)]
pub struct Heard {
    pub queued: Vec<OutboxRow>,
    pub started: Vec<(RunId, StepId)>,
    pub settled: Vec<(RunId, StepId)>,
    /// Steps that ended with a result (see `service::reuse`).
    pub ended: Vec<(RunId, StepId)>,
    /// Step attempts a result came back for (see `service::key_slots`).
    pub results: Vec<Attempt>,
}

impl Arrivals {
    /// Tells the publisher of rows written to the outbox, of steps started and of steps
    /// given a result (all committed), of the attempts a result came back for, and wakes it.
    pub fn tell(
        &self,
        queued: &[OutboxRow],
        started: &[(RunId, StepId)],
        settled: &[(RunId, StepId)],
        ended: &[(RunId, StepId)],
        results: &[Attempt],
    ) {
        if queued.is_empty()
            && started.is_empty()
            && settled.is_empty()
            && ended.is_empty()
            && results.is_empty()
        {
            return;
        }
        {
            let mut heard = self.lock();
            heard.queued.extend_from_slice(queued);
            heard.started.extend_from_slice(started);
            heard.settled.extend_from_slice(settled);
            heard.ended.extend_from_slice(ended);
            heard.results.extend_from_slice(results);
        }
        self.notify.notify_one();
    }

    /// Takes what was heard since the last take.
    pub fn take(&self) -> Heard {
        std::mem::take(&mut *self.lock())
    }

    /// Waits for an [`Arrivals::tell`] not yet waited for.
    pub async fn notified(&self) {
        self.notify.notified().await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Heard> {
        // Appends and takes only: a poisoned list is still a list.
        self.heard.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// How large an op version's window is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSize {
    /// Set by `opflow ops scale --window`: exactly this.
    pub fixed: Option<u32>,
    /// Otherwise at least this: `2 × max_replicas × value` (never less than [`MIN_WINDOW`]),
    /// so that KEDA's `QueueLength` trigger can still ask for every replica.
    pub base: u32,
}

impl Default for WindowSize {
    fn default() -> Self {
        Self { fixed: None, base: MIN_WINDOW }
    }
}

impl WindowSize {
    pub fn of(settings: &ScaleSettings) -> Self {
        let base = 2u64 * settings.max_replicas.max(1) as u64 * settings.target_value.max(1) as u64;
        Self {
            fixed: settings.publish_window.map(|w| w.max(1) as u32),
            base: u32::try_from(base).unwrap_or(u32::MAX).max(MIN_WINDOW),
        }
    }

    /// The window when its workers take `rate` messages a second: widened to what they take
    /// in `intake` (the setting `publish_window_ms`), so that rounds are large enough to be
    /// cheap and land before the queue empties.
    pub fn at(&self, rate: f64, intake: Duration) -> u32 {
        self.fixed.unwrap_or_else(|| {
            let widened = (rate * intake.as_secs_f64()).ceil();
            self.base.max(if widened.is_finite() { widened.min(f64::from(u32::MAX)) as u32 } else { 0 })
        })
    }
}

/// A step attempt held for publishing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    seq: i64,
    step: StepId,
    attempt: u32,
}

/// One run as the window sees it.
#[derive(Debug)]
struct RunLine {
    owner: Arc<str>,
    priority: u8,
    /// Its plan, when it declares concurrency caps: rounds render its steps' keys.
    capped: Option<Arc<RunPlan>>,
    /// Rows held, over every op.
    held: u32,
    /// `Some(after)`: the run may have rows in the outbox with a step id over `after` (-1:
    /// any) that are not held; they are read once the held ones run low.
    unheld_after: Option<i64>,
}

impl RunLine {
    /// A run with nothing held yet.
    fn of(plan: &Arc<RunPlan>) -> Self {
        let capped = plan.plan().assets.iter().any(|a| !a.concurrency.is_empty()).then(|| plan.clone());
        Self { owner: plan.owner().clone(), priority: plan.priority(), capped, held: 0, unheld_after: None }
    }
}

/// One op version's window.
#[derive(Debug, Default)]
struct OpLine {
    /// The setting `publish_window_ms`.
    intake: Duration,
    size: WindowSize,
    size_known: bool,
    /// `opflow ops scale --max-in-flight`: a cap over every step of the op version.
    max_in_flight: Option<u32>,
    /// Ready messages on its queue, estimated.
    on_queue: u32,
    /// The same per run (for the fair order); dropped when the queue is seen empty.
    on_queue_by_run: HashMap<RunId, u32>,
    /// Held rows per run, in the order they came.
    waiting: BTreeMap<RunId, VecDeque<Held>>,
    waiting_total: u32,
    /// Messages taken since the last tick, and the intake rate they give (per second).
    taken: u32,
    rate: f64,
    /// Each owner's recent usage of the op: steps published, decayed (`fair_share`).
    usage: HashMap<Arc<str>, f64>,
}

impl OpLine {
    fn window(&self) -> u32 {
        self.size.at(self.rate, self.intake)
    }

    fn room(&self) -> u32 {
        self.window().saturating_sub(self.on_queue)
    }
}

/// What one op's window looks like, for tests.
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowView {
    pub op: OpRef,
    pub window: u32,
    pub on_queue: u32,
    pub waiting: u32,
}

/// A round: rows of one op version to publish, in order, and what concurrency caps decided
/// on the way.
#[derive(Debug)]
pub struct Round {
    pub op: OpRef,
    pub rows: Vec<OutboxRow>,
    /// The slots the rows take, to record with the round (`store::key_slots`).
    pub slots: Vec<HeldSlot>,
    /// Rows whose steps a full `cancel_newest` key cancels, with the reason.
    pub rejected: Vec<(OutboxRow, String)>,
    /// Steps in flight that a full `cancel_in_progress` key cancels, with the reason.
    pub superseded: Vec<(Attempt, String)>,
}

/// Rows waiting for a slot of a full key.
#[derive(Debug, Default)]
struct Parked {
    /// The key's cap, as the last row parked here saw it.
    max: u32,
    rows: VecDeque<(OpRef, RunId, Held)>,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct PublishWindow {
    /// The setting `publish_window_ms`.
    intake: Duration,
    ops: HashMap<OpRef, OpLine>,
    runs: HashMap<RunId, RunLine>,
    held: HashSet<i64>,
    /// Steps that said they started and have no result yet.
    running: HashSet<(RunId, StepId)>,
    /// The concurrency slots held, and the rows waiting for one, per key.
    slots: KeySlots,
    parked: HashMap<Arc<str>, Parked>,
    /// Attempts whose slots were freed and are still to be removed from the store.
    released: Vec<Attempt>,
    /// Rotates the ops a round looks at first, and the owners that tie.
    op_turn: usize,
    owner_turn: usize,
    /// Rows waiting for an identical step to end instead of held (`service::identical`).
    pub identical: IdenticalSteps,
}

impl PublishWindow {
    /// A window widened to what an op's workers take in `intake` (see [`WindowSize::at`]).
    pub fn new(intake: Duration) -> Self {
        Self { intake, ..Self::default() }
    }

    fn line(&mut self, op: &OpRef) -> &mut OpLine {
        let intake = self.intake;
        self.ops.entry(op.clone()).or_insert_with(|| OpLine { intake, ..OpLine::default() })
    }
    /// Whether the row `seq` is held (waiting, or parked on a key).
    pub fn holds(&self, seq: i64) -> bool {
        self.held.contains(&seq)
    }

    /// Holds an outbox row of `plan`'s run (once, whatever how often it is told of).
    pub fn hold(&mut self, row: OutboxRow, plan: &Arc<RunPlan>) {
        if self.held.contains(&row.seq) {
            return;
        }
        let run = self.runs.entry(row.run_id).or_insert_with(|| RunLine::of(plan));
        let step = i64::from(row.step_id.0);
        match run.unheld_after {
            // Read later, in step order, with the rest past `after`.
            Some(after) if step > after => return,
            Some(_) => {}
            None if run.held >= HOLD_PER_RUN => {
                run.unheld_after = Some(step - 1);
                return;
            }
            None => {}
        }
        run.held += 1;
        self.held.insert(row.seq);
        let line = self.line(plan.op(row.step_id));
        line.waiting.entry(row.run_id).or_default().push_back(Held {
            seq: row.seq,
            step: row.step_id,
            attempt: row.attempt,
        });
        line.waiting_total += 1;
    }

    /// Holds the rows read for a run past `after` (see [`PublishWindow::refills`]);
    /// `more_after`: the read stopped at its limit, at this step id, so more may wait.
    pub fn loaded(&mut self, plan: &Arc<RunPlan>, run: RunId, rows: &[OutboxRow], more_after: Option<i64>) {
        if let Some(line) = self.runs.get_mut(&run) {
            // Read past `after` in step order: hold them whatever the limit said before.
            line.unheld_after = None;
        }
        for row in rows {
            self.hold(*row, plan);
        }
        if let Some(line) = self.runs.get_mut(&run) {
            line.unheld_after = more_after;
        } else if let Some(after) = more_after {
            // Every row read was satisfied from the catalog: the rest are read all the same.
            let mut line = RunLine::of(plan);
            line.unheld_after = Some(after);
            self.runs.insert(run, line);
        }
    }

    /// Says that a run has `total` rows in the outbox, of which `rows` were read, first by
    /// step id (a new leader's start, or a periodic look for anything not told of).
    pub fn loaded_all(&mut self, plan: &Arc<RunPlan>, run: RunId, rows: &[OutboxRow], total: u64) {
        for row in rows {
            self.hold(*row, plan);
        }
        if total > rows.len() as u64
            && let Some(line) = self.runs.get_mut(&run)
            && line.unheld_after.is_none()
        {
            line.unheld_after = rows.iter().map(|r| i64::from(r.step_id.0)).max().or(Some(-1));
        }
    }

    /// Runs whose held rows run low while more wait in the outbox: for each, read up to
    /// the limit of its rows with a step id over `after`, and give them to
    /// [`PublishWindow::loaded`].
    pub fn refills(&self) -> Vec<(RunId, Option<StepId>, u32)> {
        self.runs
            .iter()
            .filter_map(|(run, line)| {
                let after = line.unheld_after?;
                (line.held < HOLD_PER_RUN / 2).then(|| {
                    let after = u32::try_from(after).ok().map(StepId);
                    (*run, after, HOLD_PER_RUN - line.held)
                })
            })
            .collect()
    }

    /// Says that a step of `op` in `run` started: its message was taken from its queue.
    pub fn started(&mut self, op: &OpRef, run: RunId, step: StepId) {
        if self.running.len() >= MAX_RUNNING_REMEMBERED {
            // Steps whose result this leader never saw (a failover, a lost step): forgetting
            // them costs at most a few messages over the window until the next count.
            self.running.clear();
        }
        if self.running.insert((run, step)) {
            self.left_queue(op, run);
        }
    }

    /// Says that a step of `op` in `run` got a result: its message was taken from its
    /// queue, unless it said it started.
    pub fn settled(&mut self, op: &OpRef, run: RunId, step: StepId) {
        if !self.running.remove(&(run, step)) {
            self.left_queue(op, run);
        }
    }

    fn left_queue(&mut self, op: &OpRef, run: RunId) {
        let Some(line) = self.ops.get_mut(op) else { return };
        line.on_queue = line.on_queue.saturating_sub(1);
        if let Some(count) = line.on_queue_by_run.get_mut(&run) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                line.on_queue_by_run.remove(&run);
            }
        }
        line.taken = line.taken.saturating_add(1);
    }

    /// Sets an op version's window size (from its scaling settings).
    pub fn set_size(&mut self, op: &OpRef, size: WindowSize) {
        if let Some(line) = self.ops.get_mut(op) {
            line.size = size;
            line.size_known = true;
        }
    }

    /// Sets an op version's cap on steps in flight, over every run.
    pub fn set_max_in_flight(&mut self, op: &OpRef, max: Option<u32>) {
        if let Some(line) = self.ops.get_mut(op) {
            line.max_in_flight = max;
        }
    }

    /// Records slots held by published attempts (a new leader's start, from the store).
    pub fn hold_slots(&mut self, slots: Vec<HeldSlot>) {
        let mut by_attempt: HashMap<Attempt, Vec<Arc<str>>> = HashMap::new();
        let mut order = Vec::new();
        for (run, step, attempt, key) in slots {
            let keys = by_attempt.entry((run, step, attempt)).or_insert_with(|| {
                order.push((run, step, attempt));
                Vec::new()
            });
            keys.push(key);
        }
        for attempt in order {
            let keys = by_attempt.remove(&attempt).unwrap_or_default();
            self.slots.hold(attempt, keys);
        }
    }

    /// Results came back for these attempts: their slots are free, and a row waiting for
    /// each freed key is given its chance.
    pub fn results(&mut self, attempts: &[Attempt]) {
        for &attempt in attempts {
            if self.free(attempt) {
                self.released.push(attempt);
            }
        }
    }

    /// Frees `attempt`'s slots, and gives a row waiting for each freed key its chance;
    /// whether it held any.
    fn free(&mut self, attempt: Attempt) -> bool {
        let freed = self.slots.release(attempt);
        for key in &freed {
            self.unpark(key, 1);
        }
        !freed.is_empty()
    }

    /// Attempts whose slots were freed since the last call, to remove from the store.
    pub fn take_released(&mut self) -> Vec<Attempt> {
        std::mem::take(&mut self.released)
    }

    /// Puts up to `n` rows waiting for `key` back in line, first.
    fn unpark(&mut self, key: &Arc<str>, n: usize) {
        let Some(parked) = self.parked.get_mut(key) else { return };
        let mut back = Vec::new();
        for _ in 0..n {
            match parked.rows.pop_front() {
                Some(row) => back.push(row),
                None => break,
            }
        }
        if parked.rows.is_empty() {
            self.parked.remove(key);
        }
        for (op, run, held) in back.into_iter().rev() {
            let line = self.line(&op);
            line.waiting.entry(run).or_default().push_front(held);
            line.waiting_total += 1;
        }
    }

    /// Puts back rows waiting for keys that have free slots: the rows a release put back
    /// may have gone to wait on another key, leaving a slot nobody was told of.
    fn unpark_free(&mut self) {
        let free: Vec<(Arc<str>, usize)> = self
            .parked
            .iter()
            .filter_map(|(key, parked)| {
                let free = parked.max.saturating_sub(self.slots.in_flight(key)) as usize;
                (free > 0).then(|| (key.clone(), free))
            })
            .collect();
        for (key, free) in free {
            self.unpark(&key, free);
        }
    }

    /// Steps waiting for a slot of a full key, per run and key, with the key's slots held
    /// and its cap; the most waiting first.
    pub fn key_waits(&self) -> Vec<KeyWait> {
        let mut counts: HashMap<(RunId, &Arc<str>), u32> = HashMap::new();
        for (key, parked) in &self.parked {
            for (_, run, _) in &parked.rows {
                *counts.entry((*run, key)).or_default() += 1;
            }
        }
        let mut waits: Vec<KeyWait> = counts
            .into_iter()
            .map(|((run_id, key), waiting)| KeyWait {
                run_id,
                key: key.clone(),
                waiting,
                in_flight: self.slots.in_flight(key),
                max: self.parked[key].max,
            })
            .collect();
        waits.sort_by(|a, b| b.waiting.cmp(&a.waiting).then_with(|| a.key.cmp(&b.key)));
        waits
    }

    /// Whether an op with rows held has no size from its settings yet.
    pub fn sizes_unknown(&self) -> bool {
        self.ops.values().any(|line| !line.size_known && line.waiting_total > 0)
    }

    /// Says that the settings were read: an op they did not name (no longer registered)
    /// keeps the default size rather than having them read again at every round.
    pub fn sizes_read(&mut self) {
        for line in self.ops.values_mut() {
            line.size_known = true;
        }
    }

    /// Sets an op's count of ready messages to what the broker says.
    pub fn resync(&mut self, op: &OpRef, ready: u32) {
        let Some(line) = self.ops.get_mut(op) else { return };
        line.on_queue = ready;
        if ready == 0 {
            line.on_queue_by_run.clear();
        } else if line.on_queue_by_run.values().map(|n| u64::from(*n)).sum::<u64>() > u64::from(ready) {
            // Runs that were canceled or failed leave counts nothing takes away.
            let waiting = &line.waiting;
            line.on_queue_by_run.retain(|run, _| waiting.contains_key(run));
        }
    }

    /// Updates each op's intake rate from what was taken over the last `elapsed`.
    pub fn tick(&mut self, elapsed: Duration) {
        self.unpark_free();
        let seconds = elapsed.as_secs_f64().max(0.001);
        for line in self.ops.values_mut() {
            for usage in line.usage.values_mut() {
                *usage = fair_share::decayed(*usage, elapsed);
            }
            line.usage.retain(|_, usage| *usage >= 0.5);
            let now = f64::from(line.taken) / seconds;
            line.rate = if line.rate == 0.0 { now } else { 0.5 * line.rate + 0.5 * now };
            line.taken = 0;
        }
        // Forget ops with nothing held nor on their queue (their size is read again).
        self.ops.retain(|_, line| {
            line.waiting_total > 0 || line.on_queue > 0 || line.rate > 0.01 || !line.usage.is_empty()
        });
    }

    /// The ops with steps waiting: their queues are worth a look at the broker's count.
    pub fn backlogged(&self) -> Vec<OpRef> {
        self.ops.iter().filter(|(_, line)| line.waiting_total > 0).map(|(op, _)| op.clone()).collect()
    }

    /// The next round worth publishing, of at most `max` rows: an op with held rows and
    /// room, when all its held rows fit (a chain's next step goes at once) or a quarter of
    /// its window is free (a backlog is sent in rounds, not one message at a time).
    pub fn next_round(&mut self, max: u32) -> Option<Round> {
        let mut ops: Vec<&OpRef> = self.ops.keys().collect();
        ops.sort_unstable();
        let count = ops.len();
        let start = self.op_turn % count.max(1);
        let op = (0..count).map(|k| ops[(start + k) % count]).find(|op| {
            let line = &self.ops[*op];
            let room = line.room();
            line.waiting_total > 0
                && room > 0
                && (line.waiting_total <= room || room >= (line.window() / 4).max(1))
        })?;
        let op = op.clone();
        self.op_turn = self.op_turn.wrapping_add(1);
        let line = self.ops.get_mut(&op).expect("found above");
        let room = line.room().min(max.max(1));
        let runs: Vec<RunId> = line.waiting.keys().copied().collect();
        let candidates: Vec<Candidate<'_>> = runs
            .iter()
            .map(|run| {
                let meta = &self.runs[run];
                Candidate {
                    owner: &meta.owner,
                    priority: meta.priority,
                    on_queue: line.on_queue_by_run.get(run).copied().unwrap_or(0),
                    waiting: line.waiting[run].len() as u32,
                }
            })
            .collect();
        let usage = &line.usage;
        let order = fair_share::allocate(
            &candidates,
            room,
            |owner| usage.get(owner).copied().unwrap_or(0.0),
            &mut self.owner_turn,
        );
        let op_cap = line.max_in_flight.map(|max| StepKey {
            key: Arc::from(format!("max_in_flight of {op}")),
            max,
            strategy: Strategy::Queue,
        });
        let mut round = Round {
            op: op.clone(),
            rows: Vec::new(),
            slots: Vec::new(),
            rejected: Vec::new(),
            superseded: Vec::new(),
        };
        for index in order {
            let run = runs[index];
            let line = self.ops.get_mut(&op).expect("found above");
            let queue = line.waiting.get_mut(&run).expect("a candidate's run waits");
            let held = queue.pop_front().expect("allocated within what waits");
            if queue.is_empty() {
                line.waiting.remove(&run);
            }
            line.waiting_total -= 1;
            let row = OutboxRow { seq: held.seq, run_id: run, step_id: held.step, attempt: held.attempt };
            let meta = self.runs.get(&run);
            let mut keys = match meta.and_then(|m| m.capped.as_ref()) {
                Some(plan) => plan.step_keys(run, held.step),
                None => Vec::new(),
            };
            keys.extend(op_cap.clone());
            match self.slots.admit((run, held.step, held.attempt), &keys) {
                Admission::Go => {
                    round.slots.extend(keys.into_iter().map(|k| (run, held.step, held.attempt, k.key)));
                    round.rows.push(row);
                    if let Some(meta) = meta {
                        let line = self.ops.get_mut(&op).expect("found above");
                        *line.usage.entry(meta.owner.clone()).or_default() += 1.0;
                    }
                }
                Admission::Wait { key } => {
                    let max = keys.iter().find(|k| k.key == key).map_or(1, |k| k.max);
                    self.park(key, max, &op, run, held);
                    continue;
                }
                Admission::Reject { key, max } => {
                    let label = meta.and_then(|m| m.capped.as_ref()).map(|p| p.label(held.step));
                    round.rejected.push((row, rejection(&key, max, label.as_deref())));
                }
                Admission::Supersede { key, victims } => {
                    let max = keys.iter().find(|k| k.key == key).map_or(1, |k| k.max);
                    let label = meta.and_then(|m| m.capped.as_ref()).map(|p| p.label(held.step));
                    let reason = supersession(&key, run, label.as_deref());
                    round.superseded.extend(victims.into_iter().map(|v| (v, reason.clone())));
                    self.park(key, max, &op, run, held);
                    continue;
                }
            }
            self.held.remove(&held.seq);
            if let Some(meta) = self.runs.get_mut(&run) {
                meta.held -= 1;
            }
        }
        self.forget_idle_runs();
        Some(round)
    }

    /// Sets a row aside until a slot of `key` frees.
    fn park(&mut self, key: Arc<str>, max: u32, op: &OpRef, run: RunId, held: Held) {
        let parked = self.parked.entry(key).or_default();
        parked.max = max;
        parked.rows.push_back((op.clone(), run, held));
    }

    /// Says that of `round`'s rows, `rows` are on its op's queue: the others (their step no
    /// longer queued, or failed) give their slots back.
    pub fn published(&mut self, round: &Round, rows: &[OutboxRow]) {
        if !round.slots.is_empty() {
            let sent: HashSet<i64> = rows.iter().map(|r| r.seq).collect();
            for row in round.rows.iter().filter(|r| !sent.contains(&r.seq)) {
                self.free((row.run_id, row.step_id, row.attempt));
            }
        }
        let op = &round.op;
        let line = self.line(op);
        line.on_queue = line.on_queue.saturating_add(rows.len() as u32);
        for row in rows {
            *line.on_queue_by_run.entry(row.run_id).or_default() += 1;
        }
    }

    /// Puts a round that could not be published back, first in line; its slots are given
    /// back and its cancels are decided again.
    pub fn put_back(&mut self, round: Round, plan_of: impl Fn(RunId) -> Option<Arc<RunPlan>>) {
        for row in &round.rows {
            self.free((row.run_id, row.step_id, row.attempt));
        }
        let rows: Vec<OutboxRow> =
            round.rows.iter().copied().chain(round.rejected.iter().map(|(row, _)| *row)).collect();
        for row in rows.iter().rev() {
            let Some(plan) = plan_of(row.run_id) else { continue };
            if !self.held.insert(row.seq) {
                continue;
            }
            let run = self.runs.entry(row.run_id).or_insert_with(|| RunLine::of(&plan));
            run.held += 1;
            let line = self.line(&round.op);
            line.waiting.entry(row.run_id).or_default().push_front(Held {
                seq: row.seq,
                step: row.step_id,
                attempt: row.attempt,
            });
            line.waiting_total += 1;
        }
    }

    /// Drops everything held of a run (canceled: its rows are gone from the outbox). Its
    /// slots stay held until its steps' results come back: a canceled step runs on until
    /// its worker stops it.
    pub fn forget_run(&mut self, run: RunId) {
        self.identical.forget_run(run);
        self.runs.remove(&run);
        self.running.retain(|(of, _)| *of != run);
        for parked in self.parked.values_mut() {
            parked.rows.retain(|(_, of, held)| {
                if *of == run {
                    self.held.remove(&held.seq);
                }
                *of != run
            });
        }
        self.parked.retain(|_, parked| !parked.rows.is_empty());
        for line in self.ops.values_mut() {
            line.on_queue_by_run.remove(&run);
            if let Some(rows) = line.waiting.remove(&run) {
                line.waiting_total -= rows.len() as u32;
                for held in rows {
                    self.held.remove(&held.seq);
                }
            }
        }
    }

    /// Each op's window, messages on its queue and steps waiting.
    #[cfg(test)]
    pub fn views(&self) -> Vec<WindowView> {
        let mut views: Vec<WindowView> = self
            .ops
            .iter()
            .map(|(op, line)| WindowView {
                op: op.clone(),
                window: line.window(),
                on_queue: line.on_queue,
                waiting: line.waiting_total,
            })
            .collect();
        views.sort_by(|a, b| a.op.cmp(&b.op));
        views
    }

    fn forget_idle_runs(&mut self) {
        self.runs.retain(|_, line| line.held > 0 || line.unheld_after.is_some());
    }
}

#[cfg(test)]
mod tests;

/// The error of a step that a full `cancel_newest` key cancels.
fn rejection(key: &str, max: u32, label: Option<&str>) -> String {
    format!(
        "canceled before it started: concurrency key `{key}` already had {max} of max {max} steps in flight, and \
         its rule's strategy is cancel_newest{}",
        label.map(|l| format!(" (step {l})")).unwrap_or_default()
    )
}

/// The error of a step in flight that a newer step of a full `cancel_in_progress` key replaces.
fn supersession(key: &str, run: RunId, label: Option<&str>) -> String {
    format!(
        "canceled: a newer step of concurrency key `{key}` ({}run {run}) took its place, and the key's rule's \
         strategy is cancel_in_progress",
        label.map(|l| format!("{l} of ")).unwrap_or_default()
    )
}
