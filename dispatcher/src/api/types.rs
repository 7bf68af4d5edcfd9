//! The JSON the HTTP API answers and the CLI prints with `--json`: a contract of its own.
//! Store rows are converted here, at the boundary, so that a column renamed in the store is
//! not an API change, and an API change is made in this one file, on purpose.

use chrono::{DateTime, Utc};
use opflow_protocol::{RunId, StepId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::store::{self, runs::Cancellation};

/// A run's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Canceled => "canceled",
        }
    }
}

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

/// A step's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Waiting,
    Queued,
    Running,
    Retrying,
    Succeeded,
    Failed,
    Skipped,
    Canceled,
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

/// Step counts by status.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StepCounts {
    pub total: i64,
    pub waiting: i64,
    pub queued: i64,
    pub running: i64,
    pub retrying: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub skipped: i64,
    pub canceled: i64,
}

/// A run's state: `GET /v1/runs/{id}`, `opflow status --json`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunSummary {
    #[schema(value_type = String, format = "uuid")]
    pub run_id: RunId,
    pub key: Option<String>,
    pub plan: String,
    pub plan_file: String,
    pub status: RunStatus,
    pub steps: StepCounts,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The first failed steps, with their errors.
    pub failures: Vec<StepFailure>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StepFailure {
    #[schema(value_type = u32)]
    pub step_id: StepId,
    pub asset: String,
    pub attempt: i32,
    pub error: String,
}

impl From<store::runs::RunSummary> for RunSummary {
    fn from(s: store::runs::RunSummary) -> Self {
        let c = s.steps;
        Self {
            run_id: s.run_id,
            key: s.key,
            plan: s.plan,
            plan_file: s.plan_file,
            status: s.status.into(),
            steps: StepCounts {
                total: c.total,
                waiting: c.waiting,
                queued: c.queued,
                running: c.running,
                retrying: c.retrying,
                succeeded: c.succeeded,
                failed: c.failed,
                skipped: c.skipped,
                canceled: c.canceled,
            },
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

/// One step's result: `GET /v1/runs/{id}/outputs`, `opflow outputs --json`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StepOutput {
    #[schema(value_type = u32)]
    pub step_id: StepId,
    pub asset: String,
    /// `asset[partition]{sweep point}`: which step this is, for people.
    #[serde(default)]
    pub label: String,
    pub status: StepStatus,
    pub attempt: i32,
    pub worker: Option<String>,
    pub output: Option<Value>,
    pub error: Option<String>,
}

impl From<store::runs::StepOutput> for StepOutput {
    fn from(o: store::runs::StepOutput) -> Self {
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

/// One registered op version: `GET /v1/ops`, `opflow ops list --json`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OpVersion {
    pub name: String,
    pub version: String,
    pub queue: String,
    pub queue_type: String,
    pub delivery_limit: i32,
    pub summary: String,
    pub registered_at: DateTime<Utc>,
    /// Workers running, as the autoscaler last saw (absent before it ever ran).
    pub replicas: Option<i32>,
    /// Workers the autoscaler last decided on.
    pub desired: Option<i32>,
    /// minReplicaCount and maxReplicaCount.
    pub min: i32,
    pub max: i32,
    /// value: messages per replica.
    pub value: i32,
    /// activationValue.
    pub activation: i32,
    pub polling_secs: i32,
    pub cooldown_secs: i32,
    pub max_steps: Option<i32>,
    pub max_rss_mb: Option<i32>,
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
        }
    }
}

/// One page of a list; pass `next_cursor` as `cursor` for the next one (absent on the last).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// What `POST /v1/runs` answers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SubmitResponse {
    /// True when the key named an existing run.
    pub existing: bool,
    /// The secret the run's own notification (`notify`) is signed with, when the request
    /// gave a URL and no secret: shown this once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_secret: Option<String>,
    #[serde(flatten)]
    pub run: RunSummary,
}

/// What `POST /v1/runs/{id}/cancel` and `opflow cancel --json` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CancelResponse {
    /// False when the run had already finished: nothing changed.
    pub canceled: bool,
    /// What happened, in words.
    pub message: String,
    /// Steps that will never start (queued, waiting or retrying when canceled).
    pub not_started: i64,
    /// Steps that were running; their workers are told to stop them.
    pub running: i64,
    pub run: RunSummary,
}

impl CancelResponse {
    pub fn new(cancellation: Cancellation, run: RunSummary) -> Self {
        match cancellation {
            Cancellation::Canceled { not_started, running } => Self {
                canceled: true,
                message: format!(
                    "canceled run {}: {not_started} step(s) will never start, {running} running step(s) were told to stop",
                    run.run_id
                ),
                not_started,
                running,
                run,
            },
            Cancellation::AlreadyFinished(status) => Self {
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
}

/// An API token, never its secret: `opflow tokens list --json`.
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    pub name: String,
    pub scope: &'static str,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<store::tokens::TokenInfo> for TokenInfo {
    fn from(t: store::tokens::TokenInfo) -> Self {
        Self {
            name: t.name,
            scope: t.scope.as_str(),
            created_at: t.created_at,
            last_used_at: t.last_used_at,
            revoked_at: t.revoked_at,
        }
    }
}

/// A finished run retention would delete: `opflow gc --dry-run --json`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExpiredRun {
    #[schema(value_type = String, format = "uuid")]
    pub run_id: RunId,
    pub plan: String,
    pub status: String,
    pub finished_at: DateTime<Utc>,
    pub steps: i64,
}

impl From<store::retention::Expired> for ExpiredRun {
    fn from(e: store::retention::Expired) -> Self {
        Self { run_id: e.run_id, plan: e.plan, status: e.status, finished_at: e.finished_at, steps: e.steps }
    }
}

/// What `opflow gc --json` deleted.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
pub struct Deleted {
    pub runs: u64,
    pub steps: u64,
    pub events: u64,
}

impl From<store::retention::Deleted> for Deleted {
    fn from(d: store::retention::Deleted) -> Self {
        Self { runs: d.runs, steps: d.steps, events: d.events }
    }
}

/// One op version's queue and what waits for its workers: `GET /v1/queues[/{queue}]`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueueDemand {
    pub queue: String,
    pub op: String,
    /// Steps published and not started (the queue's ready messages, as the store knows them).
    pub ready: u64,
    /// Steps running on a worker (its unacknowledged messages).
    pub unacked: u64,
    /// Steps waiting whose upstream work is queued or running: about to be published.
    pub forecast: u64,
    /// All three: what KEDA's `metrics-api` trigger reads (`valueLocation: demand`).
    pub demand: u64,
}

/// One event of a run: the `data` of each Server-Sent Event of `GET /v1/runs/{id}/events`,
/// and a line of `opflow events --json`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunEvent {
    /// Its number within the run (the SSE `id:`); resume after it with `Last-Event-ID`.
    pub seq: i64,
    #[schema(value_type = String, format = "uuid")]
    pub run_id: RunId,
    #[schema(value_type = u32)]
    pub step_id: StepId,
    pub asset: String,
    pub attempt: i32,
    /// `started`, `progress`, `log`, `materialized`, `check_result`, `succeeded`, `failed`
    /// or `abandoned` (also the SSE `event:` name).
    pub kind: String,
    /// When the worker emitted it.
    pub at: DateTime<Utc>,
    pub worker: String,
    /// Whether it changed its step: false for a late event of an attempt already retried.
    pub applied: bool,
    /// The kind's fields: `{"fraction": 0.5, "message": "…"}` for progress, `{"level":
    /// "info", "message": "…"}` for a log line, `{"output": …}` for a success, `{"error":
    /// "…", "retryable": false}` for a failure.
    pub data: Value,
}

impl RunEvent {
    pub fn from_recorded(run_id: RunId, e: store::following::RecordedEvent) -> Self {
        // Stored as the protocol's externally tagged enum: `{"<kind>": {fields}}`.
        let data = match e.body {
            Value::Object(mut tagged) if tagged.len() == 1 && tagged.contains_key(&e.kind) => {
                tagged.remove(&e.kind).unwrap_or(Value::Null)
            }
            other => other,
        };
        Self {
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
}

/// A run in `GET /v1/runs`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunListItem {
    #[schema(value_type = String, format = "uuid")]
    pub run_id: RunId,
    pub key: Option<String>,
    pub plan: String,
    pub status: RunStatus,
    pub steps_total: i32,
    pub steps_succeeded: i32,
    pub steps_failed: i32,
    pub steps_skipped: i32,
    pub steps_canceled: i32,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<store::following::RunListItem> for RunListItem {
    fn from(r: store::following::RunListItem) -> Self {
        Self {
            run_id: RunId::from_uuid(r.id),
            key: r.key,
            plan: r.plan_name,
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

/// A step in `GET /v1/runs/{id}/steps`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StepInfo {
    #[schema(value_type = u32)]
    pub step_id: StepId,
    pub asset: String,
    /// The op version that runs it, `name@version`.
    pub op: String,
    pub status: StepStatus,
    pub attempt: i32,
    /// The last progress its worker reported, in `[0, 1]`, and its message.
    pub progress: Option<f32>,
    pub progress_message: Option<String>,
    pub worker: Option<String>,
    pub error: Option<String>,
    pub queued_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
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

/// An asset of a run and its number of steps: `GET /v1/runs/{id}/assets`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AssetInfo {
    pub name: String,
    pub steps: i64,
    /// Nothing in the plan depends on it: its outputs are the run's results.
    pub leaf: bool,
}

impl From<store::following::AssetSize> for AssetInfo {
    fn from(a: store::following::AssetSize) -> Self {
        Self { name: a.name, steps: a.steps, leaf: a.leaf }
    }
}
