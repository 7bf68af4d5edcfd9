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

/// Which runs a list holds; every field that is set must match.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunFilter<'a> {
    pub status: Option<RunStatus>,
    /// The plan's `name`.
    pub plan: Option<&'a str>,
    pub owner: Option<&'a str>,
}

/// A run's status, last event and times, as a live page follows it.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub struct LiveState {
    pub status: RunStatus,
    pub event_seq: i64,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A failed step, for an op's recent failures.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FailureRow {
    pub run_id: Uuid,
    pub step_id: i32,
    pub asset: String,
    pub op_name: String,
    pub op_version: String,
    pub error: Option<String>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A run in a list.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunRow {
    pub id: Uuid,
    pub key: Option<String>,
    pub plan_name: String,
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

/// An asset of a run with its step counts, for progress bars: one `asset_progress` row
/// (migration 0014), kept as its steps change.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AssetProgressRow {
    /// Its position in the plan, from 0.
    pub idx: i32,
    pub name: String,
    /// `name@version` of the op that runs it.
    pub op: String,
    /// Assets of the run that read it; 0 for a leaf.
    pub downstream: i32,
    pub steps: i32,
    pub waiting: i32,
    pub queued: i32,
    pub running: i32,
    pub retrying: i32,
    pub succeeded: i32,
    pub failed: i32,
    pub skipped: i32,
    pub canceled: i32,
}

impl AssetProgressRow {
    pub fn state(&self) -> AssetState {
        if self.queued + self.running + self.retrying > 0 {
            AssetState::Running
        } else if self.waiting > 0 {
            AssetState::Waiting
        } else {
            AssetState::Done
        }
    }
}

/// Where an asset of a run is, from its step counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssetState {
    /// Nothing queued, running or retrying; steps wait on upstream work.
    Waiting,
    /// Some step queued, running or retrying.
    Running,
    /// Every step finished (succeeded, failed, skipped or canceled).
    Done,
}

/// Which assets of a run to list, and in which order.
#[derive(Debug, Clone, Copy, Default)]
pub struct AssetQuery {
    pub state: Option<AssetState>,
    /// Only the leaves (`Some(true)`) or only the others.
    pub leaf: Option<bool>,
    /// Busiest first (most running, then most queued or retrying) instead of plan order;
    /// one page, as busyness changes between pages.
    pub busiest: bool,
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

    /// The run's status and the number of its last recorded event, or `None` for an
    /// unknown run. Every event numbered up to it is visible once this is read: the number
    /// is bumped in the transaction that records them.
    pub async fn status_and_last_event(&self, run: RunId) -> Result<Option<(RunStatus, i64)>, StoreError> {
        Ok(sqlx::query_as("SELECT status, event_seq FROM runs WHERE id = $1")
            .bind(run.as_uuid())
            .fetch_optional(self.pool)
            .await?)
    }

    /// What a live page needs of the run itself: its status, the number of its last event,
    /// and when it started and finished; `None` for an unknown run.
    pub async fn live_state(&self, run: RunId) -> Result<Option<LiveState>, StoreError> {
        Ok(sqlx::query_as("SELECT status, event_seq, started_at, finished_at FROM runs WHERE id = $1")
            .bind(run.as_uuid())
            .fetch_optional(self.pool)
            .await?)
    }

    /// Up to `limit` of the run's events numbered after `after` and up to `upto`, in order.
    /// The caller bounds `upto - after` (a window of numbers): with a filter that matches
    /// few events, a read passes at most that many, never the run's whole history.
    pub async fn events_between(
        &self,
        run: RunId,
        after: i64,
        upto: i64,
        filter: &EventFilter,
        limit: u32,
    ) -> Result<Vec<EventRow>, StoreError> {
        let mut sql = sqlx::QueryBuilder::<sqlx::Postgres>::new(
            "SELECT e.seq, e.step_id, a.name AS asset, e.attempt, e.kind, e.body, e.worker, e.at, e.applied
             FROM events e
             JOIN steps s ON s.run_id = e.run_id AND s.id = e.step_id
             JOIN run_assets a ON a.run_id = s.run_id AND a.idx = s.asset
             WHERE e.run_id = ",
        );
        sql.push_bind(run.as_uuid());
        sql.push(" AND e.seq > ").push_bind(after);
        sql.push(" AND e.seq <= ").push_bind(upto);
        if let Some(kinds) = &filter.kinds {
            sql.push(" AND e.kind = ANY(").push_bind(kinds.clone()).push(")");
        }
        if let Some(step) = filter.step {
            sql.push(" AND e.step_id = ").push_bind(step);
        }
        sql.push(" ORDER BY e.seq LIMIT ").push_bind(i64::from(limit));
        Ok(sql.build_query_as().fetch_all(self.pool).await?)
    }

    /// A listener told of every batch of recorded events, on [`super::EVENTS_CHANNEL`].
    pub async fn listen(&self) -> Result<sqlx::postgres::PgListener, StoreError> {
        let mut listener = sqlx::postgres::PgListener::connect_with(self.pool).await?;
        listener.listen(super::EVENTS_CHANNEL).await?;
        Ok(listener)
    }

    /// Runs newest first, optionally of one status; one page after `after` (the
    /// `(created_at, id)` of the last run of the page before). Each filter has a statement
    /// of its own, so the planner reads the index that serves it (`runs_by_status` or
    /// `runs_by_created`), not one plan for both.
    pub async fn runs(
        &self,
        filter: &RunFilter<'_>,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: u32,
    ) -> Result<Vec<RunRow>, StoreError> {
        let mut sql = sqlx::QueryBuilder::<sqlx::Postgres>::new(
            "SELECT id, key, plan_name, owner, status, steps_total, steps_succeeded, steps_failed,
                    steps_skipped, steps_canceled, created_at, started_at, finished_at
             FROM runs WHERE true",
        );
        if let Some(status) = filter.status {
            sql.push(" AND status = ").push_bind(status);
        }
        if let Some(plan) = filter.plan {
            sql.push(" AND plan_name = ").push_bind(plan);
        }
        if let Some(owner) = filter.owner {
            sql.push(" AND owner = ").push_bind(owner);
        }
        if let Some((at, id)) = after {
            sql.push(" AND (created_at, id) < (").push_bind(at).push(", ").push_bind(id).push(")");
        }
        sql.push(" ORDER BY created_at DESC, id DESC LIMIT ").push_bind(i64::from(limit));
        Ok(sql.build_query_as().fetch_all(self.pool).await?)
    }

    /// A run's steps by id within `[range.0, range.1)` (an asset's, from
    /// [`Self::asset_steps`], or every step), optionally of one status; one page after step
    /// `after`. A status is read from `steps_by_status`: a page of failed steps is found
    /// without passing the run's other steps.
    pub async fn steps(
        &self,
        run: RunId,
        range: Option<(i32, i32)>,
        status: Option<StepStatus>,
        after: Option<u32>,
        limit: u32,
    ) -> Result<Vec<StepRow>, StoreError> {
        let (first, end) = range.unwrap_or((0, i32::MAX));
        let from = after.map_or(i64::from(first), |a| (a as i64 + 1).max(i64::from(first)));
        let mut sql = sqlx::QueryBuilder::<sqlx::Postgres>::new(
            "SELECT s.id AS step_id, a.name AS asset, a.op_name, a.op_version, s.status, s.attempt,
                    s.progress, s.progress_message, s.worker, s.error, s.queued_at, s.started_at,
                    s.finished_at
             FROM steps s JOIN run_assets a ON a.run_id = s.run_id AND a.idx = s.asset
             WHERE s.run_id = ",
        );
        sql.push_bind(run.as_uuid());
        if let Some(status) = status {
            sql.push(" AND s.status = ").push_bind(status);
        }
        sql.push(" AND s.id >= ").push_bind(from);
        sql.push(" AND s.id < ").push_bind(i64::from(end));
        sql.push(" ORDER BY s.id LIMIT ").push_bind(i64::from(limit));
        Ok(sql.build_query_as().fetch_all(self.pool).await?)
    }

    /// A page of the run's assets with their step counts: in plan order after asset
    /// `after`, or the busiest. Each state and the leaves are read from their own partial
    /// index (migration 0014), so a page costs a page whatever the other assets are doing.
    pub async fn assets(
        &self,
        run: RunId,
        query: AssetQuery,
        after: Option<u32>,
        limit: u32,
    ) -> Result<Vec<AssetProgressRow>, StoreError> {
        // The page is taken from `asset_progress` first, then each of its assets' names
        // looked up, one by one (the `LIMIT 1` keeps the lookup from being flattened into a
        // join): joined before the limit, the planner merged the whole of the run's
        // `run_assets` into a middle page (5,301 rows read for 100).
        let mut sql = sqlx::QueryBuilder::<sqlx::Postgres>::new(
            "SELECT p.asset AS idx, a.name, p.op, p.downstream, p.steps, p.waiting, p.queued, p.running,
                    p.retrying, p.succeeded, p.failed, p.skipped, p.canceled
             FROM (SELECT * FROM asset_progress p WHERE p.run_id = ",
        );
        sql.push_bind(run.as_uuid());
        // The conditions are the partial indexes' predicates, written as they are.
        sql.push(match query.state {
            None => "",
            Some(AssetState::Running) => " AND p.queued + p.running + p.retrying > 0",
            Some(AssetState::Waiting) => " AND p.queued + p.running + p.retrying = 0 AND p.waiting > 0",
            Some(AssetState::Done) => " AND p.waiting + p.queued + p.running + p.retrying = 0",
        });
        sql.push(match query.leaf {
            None => "",
            Some(true) => " AND p.downstream = 0",
            Some(false) => " AND p.downstream > 0",
        });
        let order = if query.busiest {
            " ORDER BY p.running DESC, p.queued + p.retrying DESC, p.asset"
        } else {
            sql.push(" AND p.asset > ").push_bind(after.map_or(-1, i64::from));
            " ORDER BY p.asset"
        };
        sql.push(order).push(" LIMIT ").push_bind(i64::from(limit));
        sql.push(
            ") p CROSS JOIN LATERAL (
                 SELECT a.name FROM run_assets a WHERE a.run_id = p.run_id AND a.idx = p.asset LIMIT 1
             ) a",
        );
        sql.push(order);
        Ok(sql.build_query_as().fetch_all(self.pool).await?)
    }

    /// The first `limit` assets of a run in plan order, each with the positions of the
    /// assets it reads (`run_assets.deps`): the plan's graph.
    pub async fn asset_graph(&self, run: RunId, limit: u32) -> Result<Vec<(i32, Vec<i32>)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT idx, coalesce(
                        (SELECT array_agg((d->>'upstream')::int) FROM jsonb_array_elements(deps) d),
                        '{}'::int[])
             FROM run_assets WHERE run_id = $1 ORDER BY idx LIMIT $2",
        )
        .bind(run.as_uuid())
        .bind(i64::from(limit))
        .fetch_all(self.pool)
        .await?)
    }

    /// Failed steps of the `runs` latest runs with failures, up to `per_run` of each, newest
    /// run first: recent failures by op version, read a bounded number of rows whatever the
    /// history holds (`runs_by_created`, then each run's `steps_by_status`).
    pub async fn recent_failures(&self, runs: u32, per_run: u32) -> Result<Vec<FailureRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT r.id AS run_id, f.step_id, f.asset, f.op_name, f.op_version, f.error, f.finished_at
             FROM (SELECT id, created_at FROM runs WHERE steps_failed > 0 ORDER BY created_at DESC LIMIT $1) r
             CROSS JOIN LATERAL (
                 SELECT s.id AS step_id, a.name AS asset, a.op_name, a.op_version, s.error, s.finished_at
                 FROM steps s JOIN run_assets a ON a.run_id = s.run_id AND a.idx = s.asset
                 WHERE s.run_id = r.id AND s.status = 'failed' ORDER BY s.id LIMIT $2
             ) f
             ORDER BY r.created_at DESC, f.step_id",
        )
        .bind(i64::from(runs))
        .bind(i64::from(per_run))
        .fetch_all(self.pool)
        .await?)
    }

    /// The step ids of the run's asset `name`, `[first, end)`: steps of an asset are the id
    /// range it was compiled to. `None` when the run has no such asset.
    pub async fn asset_steps(&self, run: RunId, name: &str) -> Result<Option<(i32, i32)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT first_step, first_step + step_count FROM run_assets WHERE run_id = $1 AND name = $2",
        )
        .bind(run.as_uuid())
        .bind(name)
        .fetch_optional(self.pool)
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asset(waiting: i32, queued: i32, running: i32, retrying: i32, succeeded: i32) -> AssetProgressRow {
        AssetProgressRow {
            idx: 0,
            name: "a".into(),
            op: "noop@1.0.0".into(),
            downstream: 0,
            steps: waiting + queued + running + retrying + succeeded,
            waiting,
            queued,
            running,
            retrying,
            succeeded,
            failed: 0,
            skipped: 0,
            canceled: 0,
        }
    }

    #[test]
    fn an_asset_runs_while_any_step_is_in_flight_waits_while_any_waits_and_is_done_after() {
        assert_eq!(asset(5, 0, 1, 0, 4).state(), AssetState::Running);
        assert_eq!(asset(5, 1, 0, 0, 0).state(), AssetState::Running);
        assert_eq!(asset(5, 0, 0, 1, 0).state(), AssetState::Running);
        assert_eq!(asset(5, 0, 0, 0, 4).state(), AssetState::Waiting);
        assert_eq!(asset(0, 0, 0, 0, 4).state(), AssetState::Done);
        assert_eq!(asset(0, 0, 0, 0, 0).state(), AssetState::Done);
    }
}
