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

    /// Reports that (part of) the asset was written, with metadata describing it.
    pub fn materialized(&self, metadata: Value) {
        self.emit(EventKind::Materialized { metadata });
    }

    /// Reports the result of a data-quality check.
    pub fn check(&self, name: impl Into<String>, passed: bool, detail: Option<String>) {
        self.emit(EventKind::CheckResult { name: name.into(), passed, detail });
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
