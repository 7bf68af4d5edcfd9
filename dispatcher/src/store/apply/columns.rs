//! A batch's events as the columns its bulk statements bind (`UNNEST` of one array per
//! column): which events each statement takes, and in what shape. Pure, so the CPU each
//! batch spends here is measured on its own (`benches/apply.rs`).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use opflow_protocol::{Event, EventKind};
use serde_json::Value;
use uuid::Uuid;

use super::decide::Outcome;

/// The columns every per-step statement binds.
#[derive(Debug, Default)]
pub struct StepColumns {
    pub ids: Vec<Uuid>,
    pub runs: Vec<Uuid>,
    pub steps: Vec<i32>,
    pub attempts: Vec<i32>,
    pub ats: Vec<DateTime<Utc>>,
    pub workers: Vec<String>,
    /// When the attempt started, as its result says.
    pub started_ats: Vec<Option<DateTime<Utc>>>,
}

impl StepColumns {
    fn push(&mut self, e: &Event) {
        self.ids.push(e.id.as_uuid());
        self.runs.push(e.run_id.as_uuid());
        self.steps.push(e.step_id.0 as i32);
        self.attempts.push(e.attempt as i32);
        self.ats.push(e.at);
        self.workers.push(e.worker.clone());
        self.started_ats.push(e.started_at);
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }
}

/// The `started` statement's columns: the batch's `started` events.
pub fn started(events: &[&Event]) -> StepColumns {
    let mut cols = StepColumns::default();
    for e in events.iter().filter(|e| matches!(e.kind, EventKind::Started { .. })) {
        cols.push(e);
    }
    cols
}

/// The progress statement's columns: the latest progress (or heartbeat) of each step
/// attempt in the batch, keeping the fraction and message of an earlier progress when a
/// later heartbeat carries none.
#[derive(Debug, Default)]
pub struct ProgressColumns {
    pub steps: StepColumns,
    pub fractions: Vec<Option<f32>>,
    pub messages: Vec<Option<String>>,
}

/// The newest progress of one step attempt within a batch.
struct LatestProgress<'a> {
    event: &'a Event,
    fraction: Option<f64>,
    message: Option<&'a str>,
}

pub fn progress(events: &[&Event]) -> ProgressColumns {
    let mut latest: HashMap<(Uuid, u32, u32), LatestProgress> = HashMap::new();
    for e in events {
        let (fraction, message) = match &e.kind {
            EventKind::Progress { fraction, message } => (Some(*fraction), message.as_deref()),
            EventKind::Heartbeat => (None, None),
            _ => continue,
        };
        let key = (e.run_id.as_uuid(), e.step_id.0, e.attempt);
        let entry = latest.entry(key).or_insert(LatestProgress { event: e, fraction, message });
        if e.at >= entry.event.at {
            *entry = LatestProgress {
                event: e,
                fraction: fraction.or(entry.fraction),
                message: message.or(entry.message),
            };
        }
    }
    let mut cols = ProgressColumns {
        fractions: Vec::with_capacity(latest.len()),
        messages: Vec::with_capacity(latest.len()),
        ..ProgressColumns::default()
    };
    for latest in latest.values() {
        cols.steps.push(latest.event);
        cols.fractions.push(latest.fraction.map(|f| f as f32));
        cols.messages.push(latest.message.map(str::to_owned));
    }
    cols
}

/// The results statement's columns: each settled success or final failure, with its
/// status, output (successes) and error (failures).
#[derive(Debug, Default)]
pub struct ResultColumns {
    pub steps: StepColumns,
    /// `succeeded` or `failed`.
    pub statuses: Vec<&'static str>,
    pub outputs: Vec<Option<Value>>,
    pub errors: Vec<Option<String>>,
}

/// The retry statement's columns: each settled failure that is tried again.
#[derive(Debug, Default)]
pub struct RetryColumns {
    pub steps: StepColumns,
    pub next_ats: Vec<DateTime<Utc>>,
    pub errors: Vec<String>,
}

/// Splits settled results into the two statements that write them.
pub fn results(settled: &[(&Event, Outcome)]) -> (ResultColumns, RetryColumns) {
    let (mut results, mut retries) = (ResultColumns::default(), RetryColumns::default());
    for (event, outcome) in settled {
        match outcome {
            Outcome::Succeeded => {
                let output = match &event.kind {
                    EventKind::Succeeded { output } => Some(output.clone()),
                    _ => None,
                };
                results.steps.push(event);
                results.statuses.push("succeeded");
                results.outputs.push(output);
                results.errors.push(None);
            }
            Outcome::Failed { error } => {
                results.steps.push(event);
                results.statuses.push("failed");
                results.outputs.push(None);
                results.errors.push(Some(error.clone()));
            }
            Outcome::Retry { at, error } => {
                retries.steps.push(event);
                retries.next_ats.push(*at);
                retries.errors.push(error.clone());
            }
        }
    }
    (results, retries)
}

/// The `events` insert's columns, one row per event: each event as recorded, and whether
/// it changed its step (`applied`).
#[derive(Debug, Default)]
pub struct EventRows {
    pub ids: Vec<Uuid>,
    pub runs: Vec<Uuid>,
    pub steps: Vec<i32>,
    pub attempts: Vec<i32>,
    pub kinds: Vec<String>,
    pub bodies: Vec<Value>,
    pub workers: Vec<String>,
    pub ats: Vec<DateTime<Utc>>,
    pub applied: Vec<bool>,
}

/// Every event but heartbeats, which only move `steps.heartbeat_at` (a long step must not
/// add a row every few seconds).
pub fn event_rows(events: &[&Event], applied: &HashSet<Uuid>) -> EventRows {
    let recorded = events.iter().filter(|e| !matches!(e.kind, EventKind::Heartbeat));
    let mut rows = EventRows::default();
    for e in recorded {
        rows.ids.push(e.id.as_uuid());
        rows.runs.push(e.run_id.as_uuid());
        rows.steps.push(e.step_id.0 as i32);
        rows.attempts.push(e.attempt as i32);
        rows.kinds.push(e.kind.name().to_owned());
        rows.bodies.push(serde_json::to_value(&e.kind).unwrap_or(Value::Null));
        rows.workers.push(e.worker.clone());
        rows.ats.push(e.at);
        rows.applied.push(applied.contains(&e.id.as_uuid()));
    }
    rows
}

#[cfg(test)]
mod tests {
    use opflow_protocol::{RunId, StepId};
    use serde_json::json;

    use super::*;

    #[test]
    fn a_batch_is_grouped_into_the_columns_its_statements_bind() {
        let run = RunId::new();
        let at = |step, kind| Event::new(run, StepId(step), 1, "w", kind);
        let started_event = at(0, EventKind::Started { op: "noop@1.0.0".parse().unwrap() });
        let progress_event = at(1, EventKind::Progress { fraction: 0.5, message: Some("half".into()) });
        let mut heartbeat = at(1, EventKind::Heartbeat);
        heartbeat.at = progress_event.at + chrono::Duration::seconds(1);
        let succeeded = at(2, EventKind::Succeeded { output: json!({"x": 1}) });
        let failed = at(4, EventKind::Failed { error: "boom".into(), retryable: false });
        let log = at(3, EventKind::Log { level: opflow_protocol::LogLevel::Info, message: "hi".into() });
        let batch = [&started_event, &progress_event, &heartbeat, &succeeded, &log];

        assert_eq!(started(&batch).steps, [0]);
        // The heartbeat is later and wins, keeping the progress's fraction and message.
        let cols = progress(&batch);
        assert_eq!((cols.steps.steps, cols.steps.ats), (vec![1], vec![heartbeat.at]));
        assert_eq!((cols.fractions, cols.messages), (vec![Some(0.5)], vec![Some("half".to_owned())]));

        let at_retry = chrono::Utc::now();
        let settled = [
            (&succeeded, Outcome::Succeeded),
            (&failed, Outcome::Failed { error: "final".into() }),
            (&heartbeat, Outcome::Retry { at: at_retry, error: "again".into() }),
        ];
        let (results, retries) = results(&settled);
        assert_eq!(results.steps.steps, [2, 4]);
        assert_eq!(results.statuses, ["succeeded", "failed"]);
        assert_eq!(results.outputs, [Some(json!({"x": 1})), None]);
        assert_eq!(results.errors, [None, Some("final".to_owned())]);
        assert_eq!(
            (retries.steps.steps, retries.next_ats, retries.errors),
            (vec![1], vec![at_retry], vec!["again".to_owned()])
        );

        let applied = HashSet::from([succeeded.id.as_uuid()]);
        let rows = event_rows(&[&started_event, &heartbeat, &succeeded, &log], &applied);
        assert_eq!(rows.kinds, ["started", "succeeded", "log"], "heartbeats are not recorded");
        assert_eq!(rows.applied, [false, true, false]);
        assert_eq!(rows.bodies[1], serde_json::to_value(&succeeded.kind).unwrap());
    }
}
