//! What a handler sees: the step's identity, parameters and inputs, and ways to report
//! progress, logs, materializations and checks while it runs.

use std::sync::Arc;

use opflow_protocol::{Event, EventKind, LogLevel, RunId, StepId, StepInput, StepMessage};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::{error::StepError, log_budget::LogBudget, report::Reporter};

/// The handle a handler gets for one attempt of one step. Cheap to clone; reporting
/// methods never block, so they may be called from `spawn_blocking` code too.
#[derive(Clone)]
pub struct StepContext {
    inner: Arc<Inner>,
}

struct Inner {
    message: StepMessage,
    params: Value,
    reporter: Reporter,
    worker: String,
    stopping: CancellationToken,
    cancelled: CancellationToken,
    /// What the attempt's log lines and progress reports spent and dropped.
    budget: LogBudget,
    /// Materializations and check results that found the event queue full: the runtime
    /// sends them, waiting for room, before the step's result. They are never dropped: a
    /// lost failed check of a blocking kind would let its step succeed.
    held_back: std::sync::Mutex<Vec<EventKind>>,
}

/// The longest log line or progress message sent, in bytes (the dispatcher keeps 16 KiB of
/// a log line and 1 KiB of a progress message); longer ones are cut here, before they
/// travel.
pub const MAX_LOG_LINE_BYTES: usize = 16 * 1024;

impl StepContext {
    /// The runtime makes a step's context (and `bench_hooks`, for the criterion bench).
    pub(crate) fn new(
        message: StepMessage,
        reporter: Reporter,
        worker: String,
        stopping: CancellationToken,
        cancelled: CancellationToken,
    ) -> Self {
        let params = message.params();
        Self {
            inner: Arc::new(Inner {
                message,
                params,
                reporter,
                worker,
                stopping,
                cancelled,
                budget: LogBudget::default(),
                held_back: std::sync::Mutex::default(),
            }),
        }
    }

    pub fn run_id(&self) -> RunId {
        self.inner.message.run_id
    }

    pub fn step_id(&self) -> StepId {
        self.inner.message.step_id
    }

    /// 1 for the first attempt, incremented by each retry.
    pub fn attempt(&self) -> u32 {
        self.inner.message.attempt
    }

    pub fn asset(&self) -> &str {
        &self.inner.message.asset
    }

    pub fn partition(&self) -> Option<&str> {
        self.inner.message.partition.as_deref()
    }

    /// The sweep point of this step (empty without a sweep).
    pub fn point(&self) -> &Map<String, Value> {
        &self.inner.message.point
    }

    /// The outputs of the upstream steps this step waited for.
    pub fn inputs(&self) -> &[StepInput] {
        &self.inner.message.inputs
    }

    /// `asset[partition]{point}`, for log lines.
    pub fn label(&self) -> String {
        self.inner.message.label()
    }

    /// The raw parameters: the plan's `config` with the sweep point laid over it.
    pub fn raw_params(&self) -> &Value {
        &self.inner.params
    }

    /// The parameters, deserialized. A mismatch is a fatal error: retrying the same
    /// parameters cannot help.
    pub fn params<T: DeserializeOwned>(&self) -> Result<T, StepError> {
        // `null` (no config at all) reads as an empty object, so all-default structs work.
        let params = match &self.inner.params {
            Value::Null => Value::Object(Map::new()),
            other => other.clone(),
        };
        serde_json::from_value(params).map_err(|error| {
            StepError::Fatal(format!(
                "invalid parameters for asset `{}` (op {}): {error}; fix the asset's `config` or `sweep` in the plan",
                self.inner.message.asset, self.inner.message.op
            ))
        })
    }

    /// Set when the worker has been asked to stop. The runtime lets the step finish either
    /// way; a long handler may check this to stop early with a retryable error.
    pub fn stopping(&self) -> &CancellationToken {
        &self.inner.stopping
    }

    /// Set when this step must stop now: it ran past its `timeout`, or its run was
    /// canceled. Its result no longer counts. A handler should check it (or `select!` on
    /// `cancelled().cancelled()`) in long work and return promptly; one that has not
    /// returned within the worker's stop grace (`--stop-grace`, 5 s by default) is stopped
    /// by the worker process exiting, after it reports the step, so that nothing it
    /// started (blocking threads, busy loops) runs on beside the step's retry. The op's
    /// supervisor (`opflow up`, Kubernetes) starts a fresh process.
    pub fn cancelled(&self) -> &CancellationToken {
        &self.inner.cancelled
    }

    /// Reports progress in `[0, 1]` (clamped) with a short message. Counts against the
    /// step's log budget ([`crate::log_budget`]).
    pub fn progress(&self, fraction: f64, message: impl Into<String>) {
        let fraction = if fraction.is_nan() { 0.0 } else { fraction.clamp(0.0, 1.0) };
        let message = Some(cut(message.into())).filter(|m| !m.is_empty());
        if self.inner.budget.admit(message.as_ref().map_or(0, String::len)) {
            self.emit_counted(EventKind::Progress { fraction, message });
        }
    }

    /// Reports a log line, cut to [`MAX_LOG_LINE_BYTES`]. Counts against the step's log
    /// budget ([`crate::log_budget`]).
    pub fn log(&self, level: LogLevel, message: impl Into<String>) {
        let message = cut(message.into());
        if self.inner.budget.admit(message.len()) {
            self.emit_counted(EventKind::Log { level, message });
        }
    }

    /// Sends a log line or progress report, counting it dropped if the worker's queue of
    /// events is full.
    fn emit_counted(&self, kind: EventKind) {
        if !self.emit(kind) {
            self.inner.budget.lost();
        }
    }

    /// The one line that says what the step dropped, if it dropped anything: sent by the
    /// runtime, waiting for room, before the step's result.
    pub(crate) fn dropped_notice(&self) -> Option<Event> {
        let message = self.inner.budget.notice()?;
        let m = &self.inner.message;
        Some(Event::new(
            m.run_id,
            m.step_id,
            m.attempt,
            self.inner.worker.clone(),
            EventKind::Log { level: LogLevel::Warn, message },
        ))
    }

    /// Reports that (part of) the asset was written, with metadata describing it. Never
    /// dropped (see [`StepContext::check`]).
    pub fn materialized(&self, metadata: Value) {
        self.emit_or_hold_back(EventKind::Materialized { metadata });
    }

    /// Reports the result of a data-quality check. Never dropped: when the worker's queue
    /// of events is full, it is sent before the step's result, waiting for room (a plan may
    /// declare the check blocking: its failure fails the step).
    pub fn check(&self, name: impl Into<String>, passed: bool, detail: Option<String>) {
        self.emit_or_hold_back(EventKind::CheckResult { name: name.into(), passed, detail });
    }

    fn emit_or_hold_back(&self, kind: EventKind) {
        if !self.emit(kind.clone()) {
            self.inner.held_back.lock().unwrap_or_else(|p| p.into_inner()).push(kind);
        }
    }

    /// The materializations and check results held back, taken: the runtime sends them,
    /// waiting for room, before the step's result.
    pub(crate) fn take_held_back(&self) -> Vec<Event> {
        let kinds = std::mem::take(&mut *self.inner.held_back.lock().unwrap_or_else(|p| p.into_inner()));
        let m = &self.inner.message;
        kinds
            .into_iter()
            .map(|kind| Event::new(m.run_id, m.step_id, m.attempt, self.inner.worker.clone(), kind))
            .collect()
    }

    fn emit(&self, kind: EventKind) -> bool {
        let m = &self.inner.message;
        self.inner.reporter.send(Event::new(m.run_id, m.step_id, m.attempt, self.inner.worker.clone(), kind))
    }
}

/// `text` cut to [`MAX_LOG_LINE_BYTES`], saying how long it was.
fn cut(text: String) -> String {
    match opflow_protocol::text::cut(&text, MAX_LOG_LINE_BYTES) {
        std::borrow::Cow::Borrowed(_) => text,
        std::borrow::Cow::Owned(cut) => cut,
    }
}

#[cfg(test)]
mod tests {
    use opflow_protocol::OpRef;
    use tokio::sync::mpsc;

    use super::*;
    use crate::report::Command;

    /// A full event queue drops log lines (counted), never a check result or a
    /// materialization: those wait for the runtime to send them before the result.
    #[test]
    fn a_full_queue_holds_back_checks_and_materializations() {
        let (commands, mut queued) = mpsc::channel(1);
        let reporter = Reporter { commands };
        let op: OpRef = "noop@1.0.0".parse().unwrap();
        let message = StepMessage::new(RunId::new(), StepId(3), 1, op, "a");
        let ctx = StepContext::new(
            message,
            reporter,
            "w".into(),
            CancellationToken::new(),
            CancellationToken::new(),
        );
        ctx.log(LogLevel::Info, "fills the queue");
        ctx.log(LogLevel::Info, "dropped");
        ctx.check("rows", false, Some("3 rows".into()));
        ctx.materialized(serde_json::json!({"path": "/x"}));
        let held: Vec<EventKind> = ctx.take_held_back().into_iter().map(|e| e.kind).collect();
        assert_eq!(
            held,
            [
                EventKind::CheckResult { name: "rows".into(), passed: false, detail: Some("3 rows".into()) },
                EventKind::Materialized { metadata: serde_json::json!({"path": "/x"}) },
            ]
        );
        assert!(ctx.take_held_back().is_empty(), "taken once");
        assert!(ctx.dropped_notice().is_some(), "the dropped log line is counted");
        assert!(matches!(queued.try_recv(), Ok(Command::Send(..))));
    }
}
