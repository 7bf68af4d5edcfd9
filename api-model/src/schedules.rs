//! Schedules: plans that run themselves on a cron, each tick once, or when the catalog
//! says a cell is stale or an asset they read was materialized anew.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// `POST /v1/schedules`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddScheduleRequest {
    /// One word: letters, digits, `-`, `_`, `.`; at most 64 bytes.
    pub name: String,
    /// The plan's YAML, as `POST /v1/runs` takes it.
    pub plan: String,
    /// The plan file's name, for messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// A cron expression: 5 fields (`0 * * * *`), or 6 with seconds first. Give it or `on`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// Instead of a cron, what in the catalog triggers a run: `stale` (a cell of the plan's
    /// assets is older than its freshness policy) or `upstream_materialized` (another run
    /// materialized an asset the plan reads). Such runs take fresh cells from the catalog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<String>,
    /// With `on`: at most one run per this long (`30s` by default), and for
    /// `upstream_materialized`, this long after the first new materialization, so that a
    /// burst of them makes one run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debounce: Option<String>,
    /// Each run takes from the catalog every cell it holds fresh, as `opflow run --missing`
    /// does: only what is missing, failed, changed or stale runs. Always so with `on`.
    #[serde(default)]
    pub missing: bool,
    /// An IANA time zone (`Europe/Paris`); UTC by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tz: Option<String>,
    /// `skip` (default), `buffer_one`, `buffer_all`, `cancel_other` or `allow_all`: what a
    /// tick does while the schedule's last run still runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<String>,
    /// How late a missed tick may still run (`6h`, `30m`); older ones are skipped. 1h by
    /// default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up: Option<String>,
    /// Run only the tick's own daily partition (its date in the schedule's time zone).
    #[serde(default)]
    pub partition_of_tick: bool,
    /// The runs' priority, 1 to 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
}

/// A schedule.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScheduleView {
    pub name: String,
    pub plan: String,
    pub plan_file: String,
    /// Absent for a schedule triggered `on` the catalog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// `stale` or `upstream_materialized`; absent for a cron schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<String>,
    /// Its runs take fresh cells from the catalog (`--missing`).
    #[serde(default)]
    pub missing: bool,
    /// With `on`: its debounce.
    #[serde(default)]
    pub debounce_secs: i64,
    pub tz: String,
    pub overlap: String,
    pub catch_up_secs: i64,
    pub partition_of_tick: bool,
    /// Whose its runs are.
    pub owner: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    pub paused: bool,
    /// The next tick not decided yet (absent when the cron never matches again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_tick_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// `GET /v1/schedules/{name}`: the schedule, its next ticks and its latest decided ones.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScheduleDetail {
    #[serde(flatten)]
    pub schedule: ScheduleView,
    /// The next five ticks.
    pub upcoming: Vec<DateTime<Utc>>,
    /// The latest decided ticks, newest first.
    pub ticks: Vec<TickView>,
    /// Its backfills, newest first.
    #[serde(default)]
    pub backfills: Vec<BackfillView>,
}

/// `POST /v1/schedules/{name}/backfill`: run the schedule's ticks over a past range.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackfillRequest {
    /// The first moment of the range: RFC 3339 (`2026-01-01T00:00:00Z`) or a date (its
    /// midnight, UTC).
    pub from: String,
    /// The last moment of the range, included; not after now.
    pub to: String,
    /// Its runs queued or running at once, at most (1 to 1000; 4 by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
}

/// A backfill and how far it is.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BackfillView {
    pub id: Uuid,
    pub schedule: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// The next tick it submits; absent once it submitted them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_at: Option<DateTime<Utc>>,
    pub max_in_flight: i32,
    /// Ticks submitted so far (or passed over, when their plan did not submit).
    pub submitted: i32,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_at: Option<DateTime<Utc>>,
}

/// A decided tick: its run, or why it has none.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TickView {
    /// The tick's nominal time.
    pub at: DateTime<Utc>,
    /// A skipped range of ticks ends here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    /// `submitted`, `buffered` (behind a running run) or `skipped`.
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub decided_at: DateTime<Utc>,
}
