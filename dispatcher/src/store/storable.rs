//! The one boundary where what an op sends becomes storable. PostgreSQL refuses a NUL
//! character in `text` and `\u0000` in `jsonb`, and timestamps outside its range; a
//! hostile or merely careless op (a subprocess's raw stderr) can send any of them, and one
//! refused row would refuse the whole batch it travels in. A [`StorableEvent`] can only be
//! made here, and the store applies nothing else, so every text and JSON value an op sends
//! passes through [`StorableEvent::new`] before it can reach a statement.
//!
//! Nothing is dropped silently: a NUL becomes `␀` (U+2400, the symbol for NUL), a text
//! over its limit is cut at a character boundary and says how long it was, and an output
//! over the output limit turns the success into a failure saying so.

use std::ops::Deref;

use chrono::{DateTime, Datelike, Utc};
use opflow_protocol::{Event, EventKind};
use serde_json::Value;

/// What a NUL character becomes.
pub const NUL_REPLACEMENT: char = '\u{2400}';

/// The longest error, log line, check detail or abandonment reason kept, in bytes.
pub const MAX_TEXT_BYTES: usize = 16 * 1024;
/// The longest progress message, check name or worker name kept, in bytes.
pub const MAX_SHORT_TEXT_BYTES: usize = 1024;
/// The largest output of a step, as JSON: the worker SDK's own limit, enforced again here
/// for ops that do not use it.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;
/// The largest materialization metadata kept, as JSON.
pub const MAX_METADATA_BYTES: usize = 64 * 1024;

/// An event whose every text and JSON value PostgreSQL accepts. See the module docs.
#[derive(Debug, Clone, PartialEq)]
pub struct StorableEvent(Event);

impl StorableEvent {
    /// Makes `event` storable; see the module docs.
    pub fn new(mut event: Event) -> Self {
        event.worker = short_text(&event.worker);
        event.at = timestamp(event.at);
        event.started_at = event.started_at.map(timestamp);
        let kind = std::mem::replace(&mut event.kind, EventKind::Heartbeat);
        event.kind = storable_kind(kind);
        Self(event)
    }

    pub fn into_inner(self) -> Event {
        self.0
    }
}

impl From<Event> for StorableEvent {
    fn from(event: Event) -> Self {
        Self::new(event)
    }
}

impl Deref for StorableEvent {
    type Target = Event;

    fn deref(&self) -> &Event {
        &self.0
    }
}

fn storable_kind(kind: EventKind) -> EventKind {
    match kind {
        EventKind::Progress { fraction, message } => EventKind::Progress {
            // NaN cannot arrive as JSON, but an infinity can overflow `real` to one.
            fraction: if fraction.is_finite() { fraction.clamp(0.0, 1.0) } else { 0.0 },
            message: message.map(|m| short_text(&m)),
        },
        EventKind::Log { level, message } => EventKind::Log { level, message: text(&message) },
        EventKind::Materialized { metadata } => EventKind::Materialized { metadata: metadata_json(metadata) },
        EventKind::CheckResult { name, passed, detail } => {
            EventKind::CheckResult { name: short_text(&name), passed, detail: detail.map(|d| text(&d)) }
        }
        EventKind::Succeeded { output } => {
            let output = json(output);
            let bytes = json_bytes(&output);
            if bytes > MAX_OUTPUT_BYTES {
                EventKind::Failed {
                    error: format!(
                        "the step's output is {bytes} bytes, over the {} KiB limit; store large data yourself \
                         (a file, a table, an object store) and return a reference to it",
                        MAX_OUTPUT_BYTES / 1024
                    ),
                    retryable: false,
                }
            } else {
                EventKind::Succeeded { output }
            }
        }
        EventKind::Failed { error, retryable } => EventKind::Failed { error: text(&error), retryable },
        EventKind::Abandoned { reason } => EventKind::Abandoned { reason: text(&reason) },
        kind @ (EventKind::Started { .. } | EventKind::Heartbeat) => kind,
    }
}

/// A text of at most [`MAX_TEXT_BYTES`] without NUL characters.
pub fn text(text: &str) -> String {
    limited(text, MAX_TEXT_BYTES)
}

/// A text of at most [`MAX_SHORT_TEXT_BYTES`] without NUL characters.
pub fn short_text(text: &str) -> String {
    limited(text, MAX_SHORT_TEXT_BYTES)
}

fn limited(text: &str, limit: usize) -> String {
    let clean = without_nul(text);
    match opflow_protocol::text::cut(&clean, limit) {
        std::borrow::Cow::Borrowed(_) => clean,
        std::borrow::Cow::Owned(cut) => cut,
    }
}

fn without_nul(text: &str) -> String {
    if text.contains('\0') { text.replace('\0', &NUL_REPLACEMENT.to_string()) } else { text.to_owned() }
}

/// A JSON value without NUL characters in any string or key.
pub fn json(value: Value) -> Value {
    match value {
        Value::String(s) if s.contains('\0') => Value::String(without_nul(&s)),
        Value::Array(items) => Value::Array(items.into_iter().map(json).collect()),
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (without_nul(&k), json(v))).collect())
        }
        other => other,
    }
}

fn metadata_json(metadata: Value) -> Value {
    let metadata = json(metadata);
    let bytes = json_bytes(&metadata);
    if bytes > MAX_METADATA_BYTES {
        serde_json::json!({
            "opflow_dropped": format!(
                "the metadata was {bytes} bytes, over the {} KiB limit; report a summary instead",
                MAX_METADATA_BYTES / 1024
            )
        })
    } else {
        metadata
    }
}

fn json_bytes(value: &Value) -> usize {
    // A `Value` always serializes; its size is what the store and the wire carry.
    serde_json::to_vec(value).map_or(usize::MAX, |bytes| bytes.len())
}

/// A timestamp PostgreSQL can store. A worker's clock may be wrong, but not by millennia:
/// a time outside years 1–9999 is replaced by the time it was received.
fn timestamp(at: DateTime<Utc>) -> DateTime<Utc> {
    if (1..=9999).contains(&at.year()) { at } else { Utc::now() }
}

#[cfg(test)]
mod tests {
    use opflow_protocol::{LogLevel, RunId, StepId};
    use serde_json::json;

    use super::*;

    fn storable(kind: EventKind) -> EventKind {
        StorableEvent::new(Event::new(RunId::new(), StepId(1), 1, "noop@1.0.0/h/1", kind)).kind.clone()
    }

    #[test]
    fn an_error_loses_its_nul_but_not_its_text() {
        let kind = storable(EventKind::Failed { error: "bad\0stderr".into(), retryable: true });
        assert_eq!(kind, EventKind::Failed { error: "bad␀stderr".into(), retryable: true });
    }

    #[test]
    fn an_output_loses_its_nuls_in_strings_and_keys() {
        let kind = storable(EventKind::Succeeded { output: json!({"k\0": ["a\0b", 1, {"x": "\0"}]}) });
        assert_eq!(kind, EventKind::Succeeded { output: json!({"k␀": ["a␀b", 1, {"x": "␀"}]}) });
    }

    #[test]
    fn a_log_line_loses_its_nul() {
        let kind = storable(EventKind::Log { level: LogLevel::Error, message: "\0\0".into() });
        assert_eq!(kind, EventKind::Log { level: LogLevel::Error, message: "␀␀".into() });
    }

    #[test]
    fn a_progress_message_loses_its_nul_and_its_fraction_is_bounded() {
        let kind = storable(EventKind::Progress { fraction: f64::INFINITY, message: Some("50%\0".into()) });
        assert_eq!(kind, EventKind::Progress { fraction: 0.0, message: Some("50%␀".into()) });
        let kind = storable(EventKind::Progress { fraction: 7.0, message: None });
        assert_eq!(kind, EventKind::Progress { fraction: 1.0, message: None });
    }

    #[test]
    fn materialization_metadata_loses_its_nuls() {
        let kind = storable(EventKind::Materialized { metadata: json!({"path": "/tmp/\0x"}) });
        assert_eq!(kind, EventKind::Materialized { metadata: json!({"path": "/tmp/␀x"}) });
    }

    #[test]
    fn check_results_abandonments_and_worker_names_lose_their_nuls() {
        let kind = storable(EventKind::CheckResult {
            name: "n\0".into(),
            passed: false,
            detail: Some("d\0".into()),
        });
        assert_eq!(
            kind,
            EventKind::CheckResult { name: "n␀".into(), passed: false, detail: Some("d␀".into()) }
        );
        assert_eq!(
            storable(EventKind::Abandoned { reason: "r\0".into() }),
            EventKind::Abandoned { reason: "r␀".into() }
        );
        let event = StorableEvent::new(Event::new(RunId::new(), StepId(1), 1, "w\0", EventKind::Heartbeat));
        assert_eq!(event.worker, "w␀");
    }

    #[test]
    fn long_texts_are_cut_saying_how_long_they_were() {
        let long = "é".repeat(MAX_TEXT_BYTES);
        let EventKind::Failed { error, .. } = storable(EventKind::Failed { error: long, retryable: false })
        else {
            panic!("still a failure")
        };
        assert!(error.len() <= MAX_TEXT_BYTES, "{}", error.len());
        assert!(error.ends_with(&format!("… (cut from {} bytes)", MAX_TEXT_BYTES * 2)), "{error}");
    }

    #[test]
    fn an_oversized_output_fails_the_step_with_advice() {
        let kind = storable(EventKind::Succeeded { output: json!("x".repeat(MAX_OUTPUT_BYTES)) });
        let EventKind::Failed { error, retryable: false } = kind else { panic!("{kind:?}") };
        assert!(error.contains("64 KiB limit") && error.contains("reference"), "{error}");
    }

    #[test]
    fn oversized_metadata_is_replaced_by_a_note() {
        let kind = storable(EventKind::Materialized { metadata: json!("x".repeat(MAX_METADATA_BYTES)) });
        let EventKind::Materialized { metadata } = kind else { panic!("{kind:?}") };
        assert!(metadata["opflow_dropped"].as_str().is_some_and(|m| m.contains("over the 64 KiB limit")));
    }

    #[test]
    fn timestamps_outside_postgres_range_become_now() {
        let mut event = Event::new(RunId::new(), StepId(1), 1, "w", EventKind::Heartbeat);
        event.at = DateTime::<Utc>::MIN_UTC;
        event.started_at = Some(DateTime::<Utc>::MAX_UTC);
        let event = StorableEvent::new(event);
        assert!((Utc::now() - event.at).num_seconds().abs() < 60);
        assert!(event.started_at.is_some_and(|s| s.year() <= 9999));
    }
}
