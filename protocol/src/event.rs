//! Events: what a worker tells the dispatcher about one attempt of one step.
//!
//! Every event has its own [`EventId`], so a duplicate delivery is recognisable, and names
//! the attempt it belongs to, so a late event from an attempt the dispatcher has already
//! given up on changes nothing.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    DecodeError, SCHEMA_VERSION,
    codec::{decode, encode},
    ids::{EventId, OpRef, RunId, StepId},
};

/// One event of one attempt of one step, as a worker publishes it to the events exchange.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Event {
    /// Schema version; see [`SCHEMA_VERSION`].
    pub v: u32,
    pub id: EventId,
    pub run_id: RunId,
    pub step_id: StepId,
    pub attempt: u32,
    /// When the worker emitted the event.
    pub at: DateTime<Utc>,
    /// The worker instance that emitted it, e.g. `noop@1.1.0/host/4242`.
    pub worker: String,
    /// When the worker started running this attempt. Set on results: a step that finishes
    /// before its worker reports `started` (see `EventKind::Started`) still records when
    /// it began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    pub kind: EventKind,
}

/// What happened. `Succeeded` and `Failed` are terminal for the attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The worker is running the step. Reported only once a step has run for a moment
    /// (a quick step's result carries `started_at` instead), so a short step costs one
    /// event, not two.
    Started {
        op: OpRef,
    },
    /// How far along the handler is, in `[0, 1]`.
    Progress {
        fraction: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    Log {
        level: LogLevel,
        message: String,
    },
    /// The handler wrote (part of) its asset; metadata describes what was written.
    Materialized {
        metadata: Value,
    },
    /// A data-quality check on the asset.
    CheckResult {
        name: String,
        passed: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// The handler finished; `output` is handed to downstream steps.
    Succeeded {
        output: Value,
    },
    /// The handler failed. `retryable` says whether another attempt may succeed.
    Failed {
        error: String,
        retryable: bool,
    },
    /// The step is still running. Sent periodically during long steps.
    Heartbeat,
    /// The worker stopped running the attempt without settling its message, which the
    /// broker redelivers (e.g. the broker's consumer timeout closed the worker's channel).
    /// Not terminal: the attempt goes on elsewhere; `reason` explains a later dead-letter.
    Abandoned {
        reason: String,
    },
}

/// How serious a log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl EventKind {
    /// Whether this event ends its attempt.
    pub fn is_terminal(&self) -> bool {
        matches!(self, EventKind::Succeeded { .. } | EventKind::Failed { .. })
    }

    /// The event's name, as used in routing keys and the event store.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Started { .. } => "started",
            EventKind::Progress { .. } => "progress",
            EventKind::Log { .. } => "log",
            EventKind::Materialized { .. } => "materialized",
            EventKind::CheckResult { .. } => "check_result",
            EventKind::Succeeded { .. } => "succeeded",
            EventKind::Failed { .. } => "failed",
            EventKind::Heartbeat => "heartbeat",
            EventKind::Abandoned { .. } => "abandoned",
        }
    }
}

impl Event {
    /// A new event, with a fresh id, stamped now.
    pub fn new(
        run_id: RunId,
        step_id: StepId,
        attempt: u32,
        worker: impl Into<String>,
        kind: EventKind,
    ) -> Self {
        Self {
            v: SCHEMA_VERSION,
            id: EventId::new(),
            run_id,
            step_id,
            attempt,
            at: Utc::now(),
            worker: worker.into(),
            started_at: None,
            kind,
        }
    }

    /// The same event, saying when its attempt started.
    pub fn with_started_at(mut self, started_at: DateTime<Utc>) -> Self {
        self.started_at = Some(started_at);
        self
    }

    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode("event", bytes)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event(kind: EventKind) -> Event {
        Event::new(RunId::new(), StepId(3), 2, "noop@1.0.0/host/1", kind)
    }

    #[test]
    fn every_kind_round_trips() {
        let kinds = [
            EventKind::Started { op: "noop@1.0.0".parse().unwrap() },
            EventKind::Progress { fraction: 0.5, message: Some("half".into()) },
            EventKind::Progress { fraction: 1.0, message: None },
            EventKind::Log { level: LogLevel::Warn, message: "careful".into() },
            EventKind::Materialized { metadata: json!({"rows": 10}) },
            EventKind::CheckResult { name: "non_empty".into(), passed: true, detail: None },
            EventKind::Succeeded { output: json!({"var95": 0.1}) },
            EventKind::Failed { error: "boom".into(), retryable: true },
            EventKind::Heartbeat,
            EventKind::Abandoned { reason: "consumer timeout".into() },
        ];
        for kind in kinds {
            let e = event(kind);
            assert_eq!(Event::decode(&e.encode()).unwrap(), e);
        }
        let result = event(EventKind::Succeeded { output: json!(1) }).with_started_at(Utc::now());
        assert_eq!(Event::decode(&result.encode()).unwrap(), result);
    }

    #[test]
    fn started_at_is_left_out_when_unset_and_optional_when_read() {
        let e = event(EventKind::Heartbeat);
        let v: Value = serde_json::from_slice(&e.encode()).unwrap();
        assert!(v.get("started_at").is_none(), "{v}");
        // An event from a worker built before the field existed still decodes.
        assert_eq!(Event::decode(&e.encode()).unwrap().started_at, None);
    }

    #[test]
    fn wire_form_is_readable() {
        let e = event(EventKind::Failed { error: "boom".into(), retryable: false });
        let v: Value = serde_json::from_slice(&e.encode()).unwrap();
        assert_eq!(v["kind"], json!({"failed": {"error": "boom", "retryable": false}}));
        assert_eq!(v["v"], json!(SCHEMA_VERSION));
        let hb: Value = serde_json::from_slice(&event(EventKind::Heartbeat).encode()).unwrap();
        assert_eq!(hb["kind"], json!("heartbeat"));
    }

    #[test]
    fn only_succeeded_and_failed_are_terminal() {
        assert!(EventKind::Succeeded { output: Value::Null }.is_terminal());
        assert!(EventKind::Failed { error: String::new(), retryable: false }.is_terminal());
        assert!(!EventKind::Heartbeat.is_terminal());
        assert!(!EventKind::Abandoned { reason: String::new() }.is_terminal());
    }
}
