//! Reading runs as a client follows them: a run's recorded events by sequence number (the
//! events stream), runs newest first, and a run's steps — each one page at a time, so that
//! no request reads an unbounded number of rows.

use chrono::{DateTime, Utc};
use opflow_protocol::RunId;
use serde_json::Value;
use uuid::Uuid;

use super::{
    Store, StoreError,
    runs::{RunStatus, StepStatus},
};

/// One recorded event of a run, with its asset.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventRow {
    /// Its number within the run, from 1; increasing in the order events were recorded.
    pub seq: i64,
    pub step_id: i32,
    pub asset: String,
    pub attempt: i32,
    pub kind: String,
    /// The kind's fields (`{"succeeded": {"output": …}}`), as the worker sent them.
    pub body: Value,
    pub worker: String,
    pub at: DateTime<Utc>,
    /// Whether it changed its step (a start or a result of the current attempt).
    pub applied: bool,
}

/// Which events of a run to read.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only these kinds (`succeeded`, `progress`, …); all when `None`.
    pub kinds: Option<Vec<String>>,
    /// Only this step's.
    pub step: Option<i32>,
}

/// A run in a list.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunRow {
    pub id: Uuid,
    pub key: Option<String>,
    pub plan_name: String,
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

/// One step of a run, as a list shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StepRow {
    pub step_id: i32,
    pub asset: String,
    pub op_name: String,
    pub op_version: String,
    pub status: StepStatus,
    pub attempt: i32,
    pub progress: Option<f32>,
    pub progress_message: Option<String>,
    pub worker: Option<String>,
    pub error: Option<String>,
    pub queued_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// How many steps an asset of a run has, for progress bars.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AssetStepsRow {
    pub name: String,
    pub steps: i64,
    /// No asset of the run depends on it.
    pub leaf: bool,
}

/// What clients read as they follow runs (`store.following()`).
#[derive(Clone, Copy)]
pub struct Following<'a> {
    pub(super) pool: &'a sqlx::PgPool,
}

impl Store {
    /// What clients read as they follow runs: events by number, runs and steps paged.
    pub fn following(&self) -> Following<'_> {
        Following { pool: &self.pool }
    }
}

impl Following<'_> {
    /// The run's status, or `None` for an unknown run.
    pub async fn status(&self, run: RunId) -> Result<Option<RunStatus>, StoreError> {
        Ok(sqlx::query_scalar("SELECT status FROM runs WHERE id = $1")
            .bind(run.as_uuid())
            .fetch_optional(self.pool)
            .await?)
    }

    /// Up to `limit` of the run's events numbered after `after`, in order.
    pub async fn events_after(
        &self,
        run: RunId,
        after: i64,
        filter: &EventFilter,
        limit: u32,
    ) -> Result<Vec<EventRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT e.seq, e.step_id, a.name AS asset, e.attempt, e.kind, e.body, e.worker, e.at, e.applied
             FROM events e
             JOIN steps s ON s.run_id = e.run_id AND s.id = e.step_id
             JOIN run_assets a ON a.run_id = s.run_id AND a.idx = s.asset
             WHERE e.run_id = $1 AND e.seq > $2
               AND ($3::text[] IS NULL OR e.kind = ANY($3))
               AND ($4::int IS NULL OR e.step_id = $4)
             ORDER BY e.seq LIMIT $5",
        )
        .bind(run.as_uuid())
        .bind(after)
        .bind(filter.kinds.as_deref())
        .bind(filter.step)
        .bind(i64::from(limit))
        .fetch_all(self.pool)
        .await?)
    }

    /// A listener told of every batch of recorded events, on [`super::EVENTS_CHANNEL`].
    pub async fn listen(&self) -> Result<sqlx::postgres::PgListener, StoreError> {
        let mut listener = sqlx::postgres::PgListener::connect_with(self.pool).await?;
        listener.listen(super::EVENTS_CHANNEL).await?;
        Ok(listener)
    }

    /// Runs newest first, optionally of one status; one page after `after` (the
    /// `(created_at, id)` of the last run of the page before).
    pub async fn runs(
        &self,
        status: Option<RunStatus>,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: u32,
    ) -> Result<Vec<RunRow>, StoreError> {
        let (after_at, after_id) = after.unzip();
        Ok(sqlx::query_as(
            "SELECT id, key, plan_name, status, steps_total, steps_succeeded, steps_failed,
                    steps_skipped, steps_canceled, created_at, started_at, finished_at
             FROM runs
             WHERE ($1::run_status IS NULL OR status = $1)
               AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
             ORDER BY created_at DESC, id DESC LIMIT $4",
        )
        .bind(status)
        .bind(after_at)
        .bind(after_id)
        .bind(i64::from(limit))
        .fetch_all(self.pool)
        .await?)
    }

    /// A run's steps by id, optionally of one asset and one status; one page after step `after`.
    pub async fn steps(
        &self,
        run: RunId,
        asset: Option<&str>,
        status: Option<StepStatus>,
        after: Option<u32>,
        limit: u32,
    ) -> Result<Vec<StepRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT s.id AS step_id, a.name AS asset, a.op_name, a.op_version, s.status, s.attempt,
                    s.progress, s.progress_message, s.worker, s.error, s.queued_at, s.started_at,
                    s.finished_at
             FROM steps s JOIN run_assets a ON a.run_id = s.run_id AND a.idx = s.asset
             WHERE s.run_id = $1 AND ($2::text IS NULL OR a.name = $2)
               AND ($3::step_status IS NULL OR s.status = $3) AND s.id > $4
             ORDER BY s.id LIMIT $5",
        )
        .bind(run.as_uuid())
        .bind(asset)
        .bind(status)
        .bind(after.map_or(-1, |a| a as i64))
        .bind(i64::from(limit))
        .fetch_all(self.pool)
        .await?)
    }

    /// Each asset of a run with its number of steps, in plan order.
    pub async fn assets(&self, run: RunId) -> Result<Vec<AssetStepsRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT a.name, a.step_count::bigint AS steps,
                    NOT EXISTS (SELECT 1 FROM run_assets b, jsonb_array_elements(b.deps) d
                                WHERE b.run_id = a.run_id AND (d->>'upstream')::int = a.idx) AS leaf
             FROM run_assets a WHERE a.run_id = $1 ORDER BY a.idx",
        )
        .bind(run.as_uuid())
        .fetch_all(self.pool)
        .await?)
    }
}
