//! Runs: submitting a plan (idempotent by key), listing runs, a run's state, steps,
//! assets, outputs and events, and canceling it.

use chrono::{DateTime, Utc};
use opflow_protocol::{RunId, StepId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::webhooks::NotifyRequest;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// The plan, as YAML text.
    pub plan: String,
    /// A name for the plan in messages; defaults to `request`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Idempotency key: the same key returns the same run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Where to send a webhook when this run ends (`{"url", "secret"?}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<NotifyRequest>,
    /// Whose run it is, on an API without tokens (default `local`). With a token the run
    /// is its team's (or its name's); naming another owner is refused (403).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// How much of its owner's share the run asks for, 1 to 10, against the owner's other
    /// runs; default: the plan's `priority`, else 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// Run every step, reusing no earlier materialization (as if every asset said
    /// `reuse: never`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_reuse: bool,
    /// Run only these partitions: a range `2026-01-01..2026-03-31` (keys compared as
    /// text) or a list `aave,compound`. Assets that read every partition of a cut asset
    /// are left out (`left_out` in the answer says which and why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<String>,
    /// A backfill: run only the cells the catalog lacks (`missing`: missing, failed or
    /// stale; `failed`: failed or never materialized) and what reads them; every other cell
    /// is taken from the catalog. Not with `no_reuse`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub only: Option<OnlyCells>,
}

/// Which cells a backfill runs (`only` in [`SubmitRequest`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnlyCells {
    Missing,
    Failed,
}

/// An asset a `partitions` run left out of its plan, and why.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LeftOutAsset {
    pub asset: String,
    pub why: String,
}

/// The header that makes a submit idempotent, as the body's `key` does.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// What `POST /v1/runs` answers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SubmitResponse {
    /// True when the key named an existing run.
    pub existing: bool,
    /// The secret the run's own notification (`notify`) is signed with, when the request
    /// gave a URL and no secret: shown this once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_secret: Option<String>,
    /// The assets of the plan a `partitions` run left out, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<LeftOutAsset>,
    #[serde(flatten)]
    pub run: RunSummary,
}

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

/// Step counts by status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
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
    /// Of `succeeded`, the steps satisfied from an earlier materialization with the same
    /// memo key instead of run (docs/catalog.md). Counted per run; 0 per asset.
    #[serde(default)]
    pub reused: i64,
}

/// A run's state: `GET /v1/runs/{id}`, `opflow status --json`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunSummary {
    #[schema(value_type = String, format = "uuid")]
    pub run_id: RunId,
    pub key: Option<String>,
    pub plan: String,
    pub plan_file: String,
    /// Whose run it is: the team of the token that submitted it (or its name), or what a
    /// caller without a token said (`local` by default).
    #[serde(default)]
    pub owner: String,
    /// Its weight among its owner's runs, 1 to 10.
    #[serde(default)]
    pub priority: u8,
    pub status: RunStatus,
    pub steps: StepCounts,
    /// Of the `queued` steps, those waiting in the run store for room in their op's publish
    /// window, where steps of every owner take turns (fair sharing); counted up to 10,001,
    /// so 10,001 means more than 10,000.
    #[serde(default)]
    pub behind_window: i64,
    /// Of the `behind_window` steps, those waiting for a slot of a full concurrency key, per
    /// key (the five with the most), as the leading dispatcher last said (each second).
    #[serde(default)]
    pub waiting_for_keys: Vec<KeyWait>,
    #[serde(default)]
    pub assets: AssetCounts,
    /// The number (`seq`) of the run's last recorded event: follow its events stream with
    /// `?after=` this to see only what happens next.
    #[serde(default)]
    pub last_event: i64,
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

#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunsQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RunStatus>,
    /// Only the runs of the plan of this name (the plan's `name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// Only the runs of this owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// 1–1000, default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// `next_cursor` of the page before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// A run in `GET /v1/runs`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunListItem {
    #[schema(value_type = String, format = "uuid")]
    pub run_id: RunId,
    pub key: Option<String>,
    pub plan: String,
    /// Whose run it is (see [`RunSummary::owner`]).
    #[serde(default)]
    pub owner: String,
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

#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StepsQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<StepStatus>,
    /// 1–1000, default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// `next_cursor` of the page before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
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

/// An asset of a run with its steps counted by status: `GET /v1/runs/{id}/assets`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AssetInfo {
    pub name: String,
    /// Its position in the plan, from 0.
    pub index: u32,
    /// The op version that runs its steps, `name@version`.
    pub op: String,
    /// How many steps it has.
    pub steps: i64,
    /// Nothing in the plan depends on it: its outputs are the run's results.
    pub leaf: bool,
    pub state: AssetState,
    pub counts: StepCounts,
}

/// Where an asset of a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AssetState {
    /// Nothing queued, running or retrying; its steps wait on upstream work.
    Waiting,
    /// Some step is queued, running or retrying.
    Running,
    /// Every step finished: succeeded, failed, skipped or canceled.
    Done,
}

/// The order of `GET /v1/runs/{id}/assets`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AssetOrder {
    /// Plan order, paged.
    Plan,
    /// Most running steps first, then most queued or retrying: one page (no cursor), as
    /// what is busiest changes from one moment to the next.
    Busiest,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AssetsQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<AssetState>,
    /// Only the leaves (`true`), or only the others (`false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaf: Option<bool>,
    /// `plan` (the default) or `busiest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<AssetOrder>,
    /// 1–1000, default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// `next_cursor` of the page before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// Steps of a run waiting for a slot of a full concurrency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeyWait {
    /// The key, as its rule's template rendered it (e.g. `prices/2026-01-03`).
    pub key: String,
    /// This run's steps waiting for it.
    pub waiting: i64,
    /// Its slots held, by steps of every run, and its cap.
    pub in_flight: i64,
    pub max: i64,
}

/// A run's assets counted by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AssetCounts {
    pub total: i64,
    pub waiting: i64,
    pub running: i64,
    pub done: i64,
    /// Assets with at least one failed step, done or not.
    pub failed: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OutputsQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset: Option<String>,
    /// 1–1000, default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// `next_cursor` of the page before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
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

/// The kinds a client may ask for with `?kinds=`.
pub const EVENT_KINDS: [&str; 8] =
    ["started", "progress", "log", "materialized", "check_result", "succeeded", "failed", "abandoned"];

#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Comma-separated kinds to send (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kinds: Option<String>,
    /// Only this step's events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
    /// Start after this sequence number (as `Last-Event-ID`, which wins when both are given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<i64>,
    /// `false`: send what is recorded now and end, even if the run goes on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow: Option<bool>,
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
