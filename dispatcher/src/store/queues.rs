//! What each op version's queue holds and what waits for its workers, from the run store:
//! steps published and not started (ready), steps its workers hold (unacked), and steps
//! about to become ready (the forecast). `/metrics`, `GET /v1/queues`, `opflow up`'s
//! autoscaler and lost-step recovery read it. Each query reads partial indexes of queued,
//! running or waiting steps (migration 0007), never every step of every run.

use opflow_protocol::OpRef;

use super::{Store, StoreError};

/// What an op version's queue does not show by itself: its steps that workers hold, and
/// those about to be queued. For the autoscaler and the demand forecast.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpDemand {
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
    /// reads at each scrape. It counts queued and running steps through their partial
    /// indexes (migration 0007), looking each queued one up in the outbox by its key
    /// (migration 0013), never every step.
    pub async fn depths(&self) -> Result<Vec<QueueDepthRow>, StoreError> {
        let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
            "WITH active AS (
                 SELECT a.op_name, a.op_version,
                        count(*) FILTER (
                            WHERE s.status = 'queued' AND NOT EXISTS (
                                SELECT 1 FROM outbox o
                                WHERE o.run_id = s.run_id AND o.step_id = s.id AND o.attempt = s.attempt
                            )
                        ) AS ready,
                        count(*) FILTER (WHERE s.status = 'running') AS running
                 FROM steps s JOIN run_assets a ON a.run_id = s.run_id AND a.idx = s.asset
                 WHERE s.status IN ('queued', 'running')
                 GROUP BY a.op_name, a.op_version
             )
             SELECT o.name, o.version, coalesce(a.ready, 0)::bigint, coalesce(a.running, 0)::bigint
             FROM ops o
             LEFT JOIN active a ON a.op_name = o.name AND a.op_version = o.version
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

    /// See [`OpDemand`].
    pub async fn demand(&self, op: &OpRef) -> Result<OpDemand, StoreError> {
        let (running, busy_workers, forecast): (i64, Vec<String>, i64) = sqlx::query_as(
            "WITH running AS (
                 SELECT s.worker FROM steps s JOIN run_assets a ON a.run_id = s.run_id AND a.idx = s.asset
                 WHERE s.status = 'running' AND a.op_name = $1 AND a.op_version = $2
             ), waiting AS (
                 SELECT run_id, asset, count(*) AS n FROM steps WHERE status = 'waiting' GROUP BY run_id, asset
             )
             SELECT (SELECT count(*) FROM running),
                    (SELECT coalesce(array_agg(DISTINCT worker) FILTER (WHERE worker IS NOT NULL), '{}') FROM running),
                    (SELECT coalesce(sum(w.n), 0)::bigint FROM waiting w
                     JOIN run_assets a ON a.run_id = w.run_id AND a.idx = w.asset
                     WHERE a.op_name = $1 AND a.op_version = $2
                       AND NOT EXISTS (
                           SELECT 1 FROM jsonb_array_elements(a.deps) d
                           JOIN waiting u ON u.run_id = w.run_id AND u.asset = (d->>'upstream')::int))",
        )
        .bind(op.name.as_str())
        .bind(op.version.to_string())
        .fetch_one(self.pool)
        .await?;
        Ok(OpDemand { running: running.max(0) as u64, busy_workers, forecast: forecast.max(0) as u64 })
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
