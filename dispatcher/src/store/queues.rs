//! What each op version's queue holds and what waits for its workers, from the run store:
//! steps queued and not started (ready), steps its workers hold (unacked), and steps
//! about to become ready (the forecast). `/metrics`, `GET /v1/queues`, `opflow up`'s
//! autoscaler and lost-step recovery read it. Counts come from the per-asset counts kept
//! as steps change (migration 0014), so a read costs the assets with work in flight,
//! never the steps of every run.

use opflow_protocol::OpRef;

use super::{Store, StoreError};

/// What an op version's queue does not show by itself: its steps that workers hold, and
/// those about to be queued. For the autoscaler and the demand forecast.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpDemand {
    /// Steps queued: on the queue, or in the outbox about to be published.
    pub queued: u64,
    /// Steps running on a worker of the op (their messages are unacked).
    pub running: u64,
    /// The workers running them (`name@version/host/pid`).
    pub busy_workers: Vec<String>,
    /// Steps waiting whose upstream assets have nothing waiting themselves: their upstream
    /// work is queued or running, so they become ready soon.
    pub forecast: u64,
}

/// What one registered op version's queue holds, as `/metrics` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDepthRow {
    pub op: OpRef,
    /// Steps queued and published (no longer in the outbox): on the queue, not yet taken.
    pub ready: u64,
    /// Steps running on a worker of the op (their messages are unacked).
    pub running: u64,
}

/// What each op version's queue holds and what waits for its workers (`store.queues()`):
/// for `/metrics`, `GET /v1/queues`, the autoscaler and recovery.
#[derive(Clone, Copy)]
pub struct Queues<'a> {
    pub(super) pool: &'a sqlx::PgPool,
}

impl Store {
    /// What each op version's queue holds and what waits for its workers.
    pub fn queues(&self) -> Queues<'_> {
        Queues { pool: &self.pool }
    }
}

impl Queues<'_> {
    /// Every registered op version's [`QueueDepthRow`], in one statement: what `/metrics`
    /// reads at each scrape. It sums the counts of the assets with steps in flight
    /// (`asset_progress_busy_by_op`, migration 0014), never a step. `ready` counts queued
    /// steps on the queue or about to be published from the outbox.
    pub async fn depths(&self) -> Result<Vec<QueueDepthRow>, StoreError> {
        let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
            "SELECT o.name, o.version, coalesce(sum(p.queued), 0)::bigint, coalesce(sum(p.running), 0)::bigint
             FROM ops o
             LEFT JOIN asset_progress p ON p.op = o.name || '@' || o.version
                 AND p.queued + p.running + p.retrying > 0
             GROUP BY o.name, o.version
             ORDER BY o.name, o.version",
        )
        .fetch_all(self.pool)
        .await?;
        rows.into_iter()
            .map(|(name, version, ready, running)| {
                let op = format!("{name}@{version}")
                    .parse::<OpRef>()
                    .map_err(|e| StoreError::Corrupt("ops".into(), e.to_string()))?;
                Ok(QueueDepthRow { op, ready: ready.max(0) as u64, running: running.max(0) as u64 })
            })
            .collect()
    }

    /// See [`OpDemand`]. From the counts of the op's assets with steps in flight (and the
    /// running steps of those, for their workers), and of its assets with waiting steps for
    /// the forecast: bounded by the op's unfinished assets, never by the steps stored.
    pub async fn demand(&self, op: &OpRef) -> Result<OpDemand, StoreError> {
        let (queued, running, busy_workers, forecast): (i64, i64, Vec<String>, i64) = sqlx::query_as(
            "WITH busy AS (
                 SELECT p.run_id, p.asset, p.queued, p.running FROM asset_progress p
                 WHERE p.op = $1 AND p.queued + p.running + p.retrying > 0
             )
             SELECT coalesce((SELECT sum(queued) FROM busy), 0)::bigint,
                    coalesce((SELECT sum(running) FROM busy), 0)::bigint,
                    (SELECT coalesce(array_agg(DISTINCT s.worker) FILTER (WHERE s.worker IS NOT NULL), '{}')
                     FROM busy b JOIN steps s ON s.run_id = b.run_id AND s.status = 'running' AND s.asset = b.asset
                     WHERE b.running > 0),
                    coalesce((SELECT sum(w.waiting) FROM asset_progress w
                     JOIN run_assets ra ON ra.run_id = w.run_id AND ra.idx = w.asset
                     WHERE w.op = $1 AND w.waiting > 0 AND NOT EXISTS (
                         SELECT 1 FROM jsonb_array_elements(ra.deps) d
                         WHERE (SELECT u.waiting FROM asset_progress u
                                WHERE u.run_id = w.run_id AND u.asset = (d->>'upstream')::int) > 0)), 0)::bigint",
        )
        .bind(op.to_string())
        .fetch_one(self.pool)
        .await?;
        Ok(OpDemand {
            queued: queued.max(0) as u64,
            running: running.max(0) as u64,
            busy_workers,
            forecast: forecast.max(0) as u64,
        })
    }

    /// How many steps of `op` are queued and published (not in the outbox), counting no
    /// further than `up_to`: the caller only needs to know whether there are more than
    /// the broker holds. Each queued step is looked up in the outbox by its key
    /// (`outbox_by_step`), so the work is bounded by `up_to` lookups plus the outbox rows
    /// it passes, whatever the tables' statistics say.
    pub async fn published(&self, op: &OpRef, up_to: u64) -> Result<u64, StoreError> {
        let published: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (
                 SELECT 1 FROM steps s JOIN run_assets a ON a.run_id = s.run_id AND a.idx = s.asset
                 WHERE s.status = 'queued' AND a.op_name = $1 AND a.op_version = $2
                   AND NOT EXISTS (
                       SELECT 1 FROM outbox o
                       WHERE o.run_id = s.run_id AND o.step_id = s.id AND o.attempt = s.attempt
                   )
                 LIMIT $3
             ) published",
        )
        .bind(op.name.as_str())
        .bind(op.version.to_string())
        .bind(i64::try_from(up_to).unwrap_or(i64::MAX))
        .fetch_one(self.pool)
        .await?;
        Ok(published.max(0) as u64)
    }
}
