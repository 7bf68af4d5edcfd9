//! Store rows into the API's JSON (`opflow_api_model`), at this one edge: a column renamed
//! in the store is not an API change, and the contract depends on nothing of the store.

use opflow_api_model::{
    AssetCounts, AssetInfo, AssetState, AttemptView, CancelResponse, DeliveryView, OpVersion, RunEvent,
    RunListItem, RunStatus, RunSummary, StepCounts, StepFailure, StepInfo, StepOutput, StepStatus,
    WebhookView,
};
use opflow_protocol::{RunId, StepId};
use serde_json::Value;

use crate::store::{self, runs::Cancellation};

/// `?status=` of `GET /v1/runs`: the API's name, the store's value.
impl From<RunStatus> for store::runs::RunStatus {
    fn from(status: RunStatus) -> Self {
        use store::runs::RunStatus as S;
        match status {
            RunStatus::Queued => S::Queued,
            RunStatus::Running => S::Running,
            RunStatus::Succeeded => S::Succeeded,
            RunStatus::Failed => S::Failed,
            RunStatus::Canceled => S::Canceled,
        }
    }
}

impl From<store::runs::RunStatus> for RunStatus {
    fn from(status: store::runs::RunStatus) -> Self {
        use store::runs::RunStatus as S;
        match status {
            S::Queued => RunStatus::Queued,
            S::Running => RunStatus::Running,
            S::Succeeded => RunStatus::Succeeded,
            S::Failed => RunStatus::Failed,
            S::Canceled => RunStatus::Canceled,
        }
    }
}

/// `?status=` of `GET /v1/runs/{id}/steps`: the API's name, the store's value.
impl From<StepStatus> for store::runs::StepStatus {
    fn from(status: StepStatus) -> Self {
        use store::runs::StepStatus as S;
        match status {
            StepStatus::Waiting => S::Waiting,
            StepStatus::Queued => S::Queued,
            StepStatus::Running => S::Running,
            StepStatus::Retrying => S::Retrying,
            StepStatus::Succeeded => S::Succeeded,
            StepStatus::Failed => S::Failed,
            StepStatus::Skipped => S::Skipped,
            StepStatus::Canceled => S::Canceled,
        }
    }
}

impl From<store::runs::StepStatus> for StepStatus {
    fn from(status: store::runs::StepStatus) -> Self {
        use store::runs::StepStatus as S;
        match status {
            S::Waiting => StepStatus::Waiting,
            S::Queued => StepStatus::Queued,
            S::Running => StepStatus::Running,
            S::Retrying => StepStatus::Retrying,
            S::Succeeded => StepStatus::Succeeded,
            S::Failed => StepStatus::Failed,
            S::Skipped => StepStatus::Skipped,
            S::Canceled => StepStatus::Canceled,
        }
    }
}

impl From<store::runs::RunSummaryRow> for RunSummary {
    fn from(s: store::runs::RunSummaryRow) -> Self {
        let c = s.steps;
        Self {
            run_id: s.run_id,
            key: s.key,
            plan: s.plan,
            plan_file: s.plan_file,
            owner: s.owner,
            priority: s.priority,
            status: s.status.into(),
            steps: c.into(),
            behind_window: s.behind_window,
            waiting_for_keys: s
                .key_waits
                .into_iter()
                .map(|w| opflow_api_model::KeyWait {
                    key: w.key,
                    waiting: w.waiting,
                    in_flight: w.in_flight,
                    max: w.max,
                })
                .collect(),
            assets: AssetCounts {
                total: s.assets.total,
                waiting: s.assets.waiting,
                running: s.assets.running,
                done: s.assets.done,
                failed: s.assets.failed,
            },
            last_event: s.last_event,
            created_at: s.created_at,
            started_at: s.started_at,
            finished_at: s.finished_at,
            failures: s
                .failures
                .into_iter()
                .map(|f| StepFailure {
                    step_id: f.step_id,
                    asset: f.asset,
                    attempt: f.attempt,
                    error: f.error,
                })
                .collect(),
        }
    }
}

impl From<store::runs::StepOutputRow> for StepOutput {
    fn from(o: store::runs::StepOutputRow) -> Self {
        Self {
            step_id: StepId(o.step_id.max(0) as u32),
            label: o.asset.clone(),
            asset: o.asset,
            status: o.status.into(),
            attempt: o.attempt,
            worker: o.worker,
            output: o.output,
            error: o.error,
        }
    }
}

impl From<store::ops::RegisteredOpRow> for OpVersion {
    fn from(r: store::ops::RegisteredOpRow) -> Self {
        let s = r.scaling;
        Self {
            name: r.name,
            version: r.version,
            queue: r.queue,
            queue_type: r.queue_type,
            delivery_limit: r.delivery_limit,
            summary: r.summary,
            registered_at: r.registered_at,
            replicas: r.replicas,
            desired: r.desired,
            min: s.min_replicas,
            max: s.max_replicas,
            value: s.target_value,
            activation: s.activation_value,
            polling_secs: s.polling_secs,
            cooldown_secs: s.cooldown_secs,
            max_steps: s.max_steps,
            max_rss_mb: s.max_rss_mb,
            window: s.publish_window,
            max_in_flight: s.max_in_flight,
        }
    }
}

/// What `POST /v1/runs/{id}/cancel` answers for what the store did.
pub fn cancel_response(cancellation: Cancellation, run: RunSummary) -> CancelResponse {
    match cancellation {
        Cancellation::Canceled { not_started, running } => CancelResponse {
            canceled: true,
            message: format!(
                "canceled run {}: {not_started} step(s) will never start, {running} running step(s) were told to stop",
                run.run_id
            ),
            not_started,
            running,
            run,
        },
        Cancellation::AlreadyFinished(status) => CancelResponse {
            canceled: false,
            message: format!(
                "run {} had already finished ({}); nothing changed",
                run.run_id,
                status.as_str()
            ),
            not_started: 0,
            running: 0,
            run,
        },
    }
}

/// A recorded event as the events stream sends it.
pub fn run_event(run_id: RunId, e: store::following::EventRow) -> RunEvent {
    // Stored as the protocol's externally tagged enum: `{"<kind>": {fields}}`.
    let data = match e.body {
        Value::Object(mut tagged) if tagged.len() == 1 && tagged.contains_key(&e.kind) => {
            tagged.remove(&e.kind).unwrap_or(Value::Null)
        }
        other => other,
    };
    RunEvent {
        seq: e.seq,
        run_id,
        step_id: StepId(e.step_id.max(0) as u32),
        asset: e.asset,
        attempt: e.attempt,
        kind: e.kind,
        at: e.at,
        worker: e.worker,
        applied: e.applied,
        data,
    }
}

impl From<store::following::RunRow> for RunListItem {
    fn from(r: store::following::RunRow) -> Self {
        Self {
            run_id: RunId::from_uuid(r.id),
            key: r.key,
            plan: r.plan_name,
            owner: r.owner,
            status: r.status.into(),
            steps_total: r.steps_total,
            steps_succeeded: r.steps_succeeded,
            steps_failed: r.steps_failed,
            steps_skipped: r.steps_skipped,
            steps_canceled: r.steps_canceled,
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
        }
    }
}

impl From<store::runs::StepCounts> for StepCounts {
    fn from(c: store::runs::StepCounts) -> Self {
        Self {
            total: c.total,
            waiting: c.waiting,
            queued: c.queued,
            running: c.running,
            retrying: c.retrying,
            succeeded: c.succeeded,
            failed: c.failed,
            skipped: c.skipped,
            canceled: c.canceled,
            reused: c.reused,
        }
    }
}

impl From<store::following::StepRow> for StepInfo {
    fn from(s: store::following::StepRow) -> Self {
        Self {
            step_id: StepId(s.step_id.max(0) as u32),
            asset: s.asset,
            op: format!("{}@{}", s.op_name, s.op_version),
            status: s.status.into(),
            attempt: s.attempt,
            progress: s.progress,
            progress_message: s.progress_message,
            worker: s.worker,
            error: s.error,
            queued_at: s.queued_at,
            started_at: s.started_at,
            finished_at: s.finished_at,
        }
    }
}

impl From<store::following::AssetProgressRow> for AssetInfo {
    fn from(a: store::following::AssetProgressRow) -> Self {
        use store::following::AssetState as S;
        let state = match a.state() {
            S::Waiting => AssetState::Waiting,
            S::Running => AssetState::Running,
            S::Done => AssetState::Done,
        };
        let n = i64::from;
        Self {
            index: a.idx.max(0) as u32,
            op: a.op,
            steps: n(a.steps),
            leaf: a.downstream == 0,
            state,
            counts: StepCounts {
                total: n(a.steps),
                waiting: n(a.waiting),
                queued: n(a.queued),
                running: n(a.running),
                retrying: n(a.retrying),
                succeeded: n(a.succeeded),
                failed: n(a.failed),
                skipped: n(a.skipped),
                canceled: n(a.canceled),
                reused: 0,
            },
            name: a.name,
        }
    }
}

/// `?state=` of `GET /v1/runs/{id}/assets`: the API's name, the store's value.
impl From<AssetState> for store::following::AssetState {
    fn from(state: AssetState) -> Self {
        match state {
            AssetState::Waiting => Self::Waiting,
            AssetState::Running => Self::Running,
            AssetState::Done => Self::Done,
        }
    }
}

impl From<store::webhooks::WebhookRow> for WebhookView {
    fn from(row: store::webhooks::WebhookRow) -> Self {
        Self { id: row.id, url: row.url, events: row.events, created_at: row.created_at }
    }
}

impl From<store::webhooks::DeliveryRow> for DeliveryView {
    fn from(row: store::webhooks::DeliveryRow) -> Self {
        let pending = row.status == store::webhooks::DeliveryStatus::Pending;
        Self {
            id: row.id,
            webhook_id: crate::webhooks::sign::message_id(row.id),
            run_id: row.run_id,
            subscription: row.webhook,
            source: row.source,
            event: row.event,
            url: row.url,
            status: row.status.as_str().to_owned(),
            attempts: row.attempts,
            created_at: row.created_at,
            next_attempt_at: pending.then_some(row.next_attempt_at),
            delivered_at: row.delivered_at,
            last_http_status: row.last_http_status,
            last_error: row.last_error,
        }
    }
}

impl From<store::webhooks::AttemptRow> for AttemptView {
    fn from(row: store::webhooks::AttemptRow) -> Self {
        Self {
            attempt: row.attempt,
            started_at: row.started_at,
            duration_ms: row.duration_ms,
            http_status: row.http_status,
            error: row.error,
        }
    }
}
