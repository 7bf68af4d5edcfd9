//! The asset catalog as the API shows it: per asset how many cells (partition × sweep point)
//! are materialized, stale, failed or missing; each cell's latest state; each
//! materialization, with what it read and what read it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// One asset in `GET /v1/assets`, `opflow assets list --json`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AssetSummary {
    pub name: String,
    /// The plan of the latest run that declared it.
    pub plan: String,
    /// The op version that computes it, as that run resolved it: `name@version`.
    pub op: String,
    /// Cells (partition × sweep point) that definition asks for.
    pub cells: i64,
    /// Cells whose latest materialization is current: same op version and config, and
    /// nothing it read was replaced by a different output since.
    pub materialized: i64,
    /// Cells materialized under another op version or config, or from inputs replaced since.
    pub stale: i64,
    /// Cells whose latest step failed for good.
    pub failed: i64,
    /// Cells never materialized nor failed.
    pub missing: i64,
    /// When its latest materialization was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_at: Option<DateTime<Utc>>,
    /// Its freshness policy (`freshness` in the plan) and its materialized cells by
    /// freshness under it; absent without a policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freshness: Option<FreshnessSummary>,
}

/// An asset's materialized cells counted by freshness.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FreshnessSummary {
    /// The policy, in words: `max_age 2h, warn after 1h 30m` or `deadline `0 6 * * *` (UTC)`.
    pub policy: String,
    pub fresh: i64,
    /// Older than `warn_after`, or not materialized since the deadline's last tick.
    pub warn: i64,
    /// Older than `max_age`, or missed the deadline's last tick.
    pub stale: i64,
}

/// A materialized cell's freshness under its asset's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FreshnessState {
    Fresh,
    Warn,
    Stale,
}

impl FreshnessState {
    pub fn as_str(self) -> &'static str {
        match self {
            FreshnessState::Fresh => "fresh",
            FreshnessState::Warn => "warn",
            FreshnessState::Stale => "stale",
        }
    }
}

/// What a cell's latest state is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CellStatus {
    Materialized,
    Stale,
    Failed,
}

impl CellStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CellStatus::Materialized => "materialized",
            CellStatus::Stale => "stale",
            CellStatus::Failed => "failed",
        }
    }
}

/// `GET /v1/assets/{asset}/partitions`: which cells, and which page.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CellsQuery {
    /// Only cells in this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<CellStatus>,
    /// Only this partition's cells (every sweep point of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// Only materialized cells of this freshness (an asset with a freshness policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freshness: Option<FreshnessState>,
    /// 1–1000, default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// `next_cursor` of the page before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// One cell's latest state.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CellView {
    /// Its partition key; absent for an unpartitioned asset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// Its sweep point (parameter → value); absent without a sweep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<serde_json::Value>,
    pub status: CellStatus,
    /// Its latest successful materialization (a failed cell may have one from before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub materialization: Option<i64>,
    /// The failure, when the latest step failed: its run, step and error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_run: Option<uuid::Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_step: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub updated_at: DateTime<Utc>,
    /// When its current materialization was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub materialized_at: Option<DateTime<Utc>>,
    /// Its freshness under its asset's policy; absent without a policy or a materialization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freshness: Option<FreshnessState>,
}

/// One materialization: what a successful step produced.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Materialization {
    pub id: i64,
    pub asset: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<serde_json::Value>,
    /// `name@version` of the op that computed it.
    pub op: String,
    /// SHA-256 (hex) of its effective config: the asset's config, partition and point.
    pub config_hash: String,
    /// SHA-256 (hex) of its output.
    pub output_digest: String,
    /// The materializations it read.
    pub inputs: Vec<i64>,
    pub run_id: uuid::Uuid,
    pub step_id: i32,
    pub attempt: i32,
    pub at: DateTime<Utc>,
    /// What its `materialized` events said, in order.
    pub metadata: serde_json::Value,
    /// When its step was satisfied from an earlier materialization with the same memo key
    /// instead of run: that materialization (its output is this one's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused_from: Option<i64>,
}

/// `GET /v1/assets/{asset}/history`: which cell.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// The partition; omit for an unpartitioned asset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// 1–1000, default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// Which way lineage goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LineageDirection {
    /// What it read, and what those read.
    #[default]
    Upstream,
    /// What read it, and what read those.
    Downstream,
}

/// `GET /v1/assets/{asset}/lineage`: from which cells, which way.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LineageQuery {
    /// Start from this partition's latest materializations; omit for every partition's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<LineageDirection>,
}

/// A lineage walk: where it began and what it found, nearest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Lineage {
    /// The materializations it began from.
    pub from: Vec<i64>,
    pub direction: LineageDirection,
    pub items: Vec<LineageItem>,
    /// More were found than the walk returns (1,000 at most, 64 hops deep).
    pub truncated: bool,
}

/// One materialization found by a lineage walk.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LineageItem {
    /// Hops from where the walk began: 1 for a direct input (or reader).
    pub depth: i32,
    pub materialization: Materialization,
}

/// `GET /v1/assets/{asset}/checks`: which cells' checks.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChecksQuery {
    /// Only this partition's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// Only the checks whose newest result failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<bool>,
    /// 1–1000, default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// The newest result of one check of one cell, as an op reported it (`check_result`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CheckView {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// The sweep point, when the asset has a sweep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<serde_json::Value>,
    pub check: String,
    pub passed: bool,
    /// Declared `blocking: true` in the plan of the run that reported it: a failure failed
    /// its step.
    pub blocking: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[schema(value_type = String, format = "uuid")]
    pub run_id: opflow_protocol::RunId,
    pub step_id: u32,
    pub attempt: u32,
    pub at: chrono::DateTime<chrono::Utc>,
}
