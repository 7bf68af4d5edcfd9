//! What is in flight, as lost-step recovery (`recovery.rs`) reads it: running steps that
//! stopped showing life, how many published steps of an op should be on its queue, the
//! oldest of them, and runs with nothing left in flight. Each query reads partial indexes
//! of queued, running or retrying steps (migration 0007), never every step of every run.

use std::time::Duration;

use chrono::{DateTime, Utc};
use opflow_protocol::{OpRef, RunId, StepId};
use uuid::Uuid;

use super::{Store, StoreError};

/// One attempt of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StepAttempt {
    pub run_id: RunId,
    pub step_id: StepId,
    pub attempt: u32,
}

/// A running step that has not shown life for a while.
#[derive(Debug, Clone)]
pub struct SilentStep {
    pub step: StepAttempt,
    pub worker: String,
    pub last_seen: DateTime<Utc>,
}

fn attempt(run: Uuid, step: i32, attempt: i32) -> StepAttempt {
    StepAttempt { run_id: RunId::from_uuid(run), step_id: StepId(step as u32), attempt: attempt as u32 }
}

fn interval(d: Duration) -> String {
    format!("{} milliseconds", d.as_millis())
}

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
pub struct QueueDepth {
    pub op: OpRef,
    /// Steps queued and published (no longer in the outbox): on the queue, not yet taken.
    pub ready: u64,
    /// Steps running on a worker of the op (their messages are unacked).
    pub running: u64,
}

impl Store {
    /// Every registered op version's [`QueueDepth`], in one statement: what `/metrics`
    /// reads at each scrape. It counts queued and running steps through their partial
    /// indexes (migration 0007), looking each queued one up in the outbox by its key
    /// (migration 0013), never every step.
    pub async fn queue_depths(&self) -> Result<Vec<QueueDepth>, StoreError> {
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
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(name, version, ready, running)| {
                let op = format!("{name}@{version}")
                    .parse::<OpRef>()
                    .map_err(|e| StoreError::Corrupt("ops".into(), e.to_string()))?;
                Ok(QueueDepth { op, ready: ready.max(0) as u64, running: running.max(0) as u64 })
            })
            .collect()
    }

    /// See [`OpDemand`].
    pub async fn op_demand(&self, op: &OpRef) -> Result<OpDemand, StoreError> {
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
        .fetch_one(&self.pool)
        .await?;
        Ok(OpDemand { running: running.max(0) as u64, busy_workers, forecast: forecast.max(0) as u64 })
    }

    /// Running steps whose last heartbeat (or start) is older than `silent_for`.
    pub async fn silent_running_steps(
        &self,
        silent_for: Duration,
        limit: u32,
    ) -> Result<Vec<SilentStep>, StoreError> {
        type Row = (Uuid, i32, i32, Option<String>, DateTime<Utc>);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT run_id, id, attempt, worker, coalesce(heartbeat_at, started_at, queued_at) FROM steps
             WHERE status = 'running'
               AND coalesce(heartbeat_at, started_at, queued_at) < now() - $1::interval
             LIMIT $2",
        )
        .bind(interval(silent_for))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(run, step, n, worker, last_seen)| SilentStep {
                step: attempt(run, step, n),
                worker: worker.unwrap_or_default(),
                last_seen,
            })
            .collect())
    }

    /// How many steps of `op` are queued and published (not in the outbox), counting no
    /// further than `up_to`: the caller only needs to know whether there are more than
    /// the broker holds. Each queued step is looked up in the outbox by its key
    /// (`outbox_by_step`), so the work is bounded by `up_to` lookups plus the outbox rows
    /// it passes, whatever the tables' statistics say.
    pub async fn published_queued_steps(&self, op: &OpRef, up_to: u64) -> Result<u64, StoreError> {
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
        .fetch_one(&self.pool)
        .await?;
        Ok(published.max(0) as u64)
    }

    /// The `limit` published queued steps of `op` queued longest ago, if before `older_than`.
    pub async fn oldest_published_queued_steps(
        &self,
        op: &OpRef,
        older_than: Duration,
        limit: u64,
    ) -> Result<Vec<StepAttempt>, StoreError> {
        let rows: Vec<(Uuid, i32, i32)> = sqlx::query_as(
            "SELECT s.run_id, s.id, s.attempt FROM steps s
             JOIN run_assets a ON a.run_id = s.run_id AND a.idx = s.asset
             WHERE s.status = 'queued' AND a.op_name = $1 AND a.op_version = $2
               AND s.queued_at < now() - $3::interval
               AND NOT EXISTS (
                   SELECT 1 FROM outbox o WHERE o.run_id = s.run_id AND o.step_id = s.id AND o.attempt = s.attempt
               )
             ORDER BY s.queued_at LIMIT $4",
        )
        .bind(op.name.as_str())
        .bind(op.version.to_string())
        .bind(interval(older_than))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(run, step, n)| attempt(run, step, n)).collect())
    }

    /// Runs still going, older than `older_than`, with no step queued, running or retrying:
    /// nothing can move them any more.
    pub async fn runs_with_nothing_in_flight(&self, older_than: Duration) -> Result<Vec<RunId>, StoreError> {
        let runs: Vec<Uuid> = sqlx::query_scalar(
            "SELECT r.id FROM runs r
             WHERE r.status IN ('queued', 'running') AND r.created_at < now() - $1::interval
               AND NOT EXISTS (SELECT 1 FROM steps s WHERE s.run_id = r.id AND s.status = 'queued')
               AND NOT EXISTS (SELECT 1 FROM steps s WHERE s.run_id = r.id AND s.status = 'running')
               AND NOT EXISTS (SELECT 1 FROM steps s WHERE s.run_id = r.id AND s.status = 'retrying')
             LIMIT 100",
        )
        .bind(interval(older_than))
        .fetch_all(&self.pool)
        .await?;
        Ok(runs.into_iter().map(RunId::from_uuid).collect())
    }

    /// Ends a run that has nothing in flight: its waiting steps (which nothing will unlock
    /// any more) fail with `reason`, its counters are counted again from its steps, and it
    /// ends `failed` or `succeeded`. Does nothing if the run has since moved. Returns
    /// whether it ended the run.
    pub async fn settle_run(&self, run: RunId, reason: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let going: Option<bool> = sqlx::query_scalar(
            "SELECT NOT EXISTS (SELECT 1 FROM steps s WHERE s.run_id = r.id AND s.status IN ('queued', 'running', 'retrying'))
             FROM runs r WHERE r.id = $1 AND r.status IN ('queued', 'running') FOR UPDATE",
        )
        .bind(run.as_uuid())
        .fetch_optional(&mut *tx)
        .await?;
        if going != Some(true) {
            return Ok(false);
        }
        let ended: Option<Uuid> = sqlx::query_scalar(
            "WITH stuck AS (
                 UPDATE steps SET status = 'failed', error = $2, finished_at = now()
                 WHERE run_id = $1 AND status = 'waiting'
                 RETURNING 1
             ), counts AS (
                 SELECT count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
                        count(*) FILTER (WHERE status = 'failed') + (SELECT count(*) FROM stuck) AS failed,
                        count(*) FILTER (WHERE status = 'skipped') AS skipped,
                        count(*) FILTER (WHERE status = 'canceled') AS canceled
                 FROM steps WHERE run_id = $1
             ), ended AS (
                 UPDATE runs r SET steps_succeeded = c.succeeded, steps_failed = c.failed,
                                   steps_skipped = c.skipped, steps_canceled = c.canceled,
                                   status = CASE WHEN c.failed > 0 THEN 'failed'::run_status
                                                 ELSE 'succeeded'::run_status END,
                                   finished_at = now()
                 FROM counts c WHERE r.id = $1
                 RETURNING r.id
             )
             SELECT id FROM (SELECT id, pg_notify($3, id::text) FROM ended) announced",
        )
        .bind(run.as_uuid())
        .bind(super::storable::text(reason))
        .bind(super::RUNS_CHANNEL)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(ended.is_some())
    }
}

impl Store {
    /// Why a worker last gave up on this step attempt without a result (an `abandoned`
    /// event), if one did: it explains a later dead-letter.
    pub async fn last_abandon_reason(
        &self,
        message: &opflow_protocol::StepMessage,
    ) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT body->'abandoned'->>'reason' FROM events
             WHERE run_id = $1 AND step_id = $2 AND attempt = $3 AND kind = 'abandoned'
             ORDER BY at DESC LIMIT 1",
        )
        .bind(message.run_id.as_uuid())
        .bind(message.step_id.0 as i32)
        .bind(message.attempt as i32)
        .fetch_optional(&self.pool)
        .await?
        .flatten())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use opflow_process::SecretUrl;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::{
        plan::{self, RegisteredOp},
        store::testing::TestDb,
    };

    async fn chain(db: &TestDb) -> RunId {
        let registered = [RegisteredOp { name: "noop".into(), version: "1.0.0".parse().unwrap() }];
        let source = "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n  - name: b\n    op: noop@1.0.0\n    deps: [a]\n";
        let plan = plan::compile(source, Path::new("p.yaml"), &registered).unwrap();
        db.store.submit_run(&plan, "p.yaml", source, None).await.unwrap().run_id
    }

    async fn exec(db: &TestDb, sql: &str, run: RunId) {
        sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .bind(run.as_uuid())
            .execute(db.store.pool())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_run_left_with_nothing_in_flight_is_found_and_ended_with_the_reason() {
        let db = TestDb::new("stuck_run").await;
        let run = chain(&db).await;
        assert!(db.store.runs_with_nothing_in_flight(Duration::ZERO).await.unwrap().is_empty());
        // As if the unlock of `b` had been lost: `a` succeeded, `b` still waits.
        exec(&db, "UPDATE steps SET status = 'succeeded' WHERE run_id = $1 AND id = 0", run).await;
        exec(&db, "DELETE FROM outbox WHERE run_id = $1", run).await;
        assert_eq!(db.store.runs_with_nothing_in_flight(Duration::ZERO).await.unwrap(), [run]);
        assert!(db.store.settle_run(run, "stuck for the test").await.unwrap());
        let (status, failed, succeeded): (String, i32, i32) =
            sqlx::query_as("SELECT status::text, steps_failed, steps_succeeded FROM runs WHERE id = $1")
                .bind(run.as_uuid())
                .fetch_one(db.store.pool())
                .await
                .unwrap();
        assert_eq!((status.as_str(), failed, succeeded), ("failed", 1, 1));
        let error: String = sqlx::query_scalar("SELECT error FROM steps WHERE run_id = $1 AND id = 1")
            .bind(run.as_uuid())
            .fetch_one(db.store.pool())
            .await
            .unwrap();
        assert_eq!(error, "stuck for the test");
        assert!(!db.store.settle_run(run, "again").await.unwrap(), "an ended run is left alone");
    }

    #[tokio::test]
    async fn a_running_step_without_heartbeats_is_found_silent() {
        let db = TestDb::new("silent_step").await;
        let run = chain(&db).await;
        exec(
            &db,
            "UPDATE steps SET status = 'running', worker = 'noop@1.0.0/h/7', started_at = now() - interval '2 minutes',
                              heartbeat_at = now() - interval '90 seconds'
             WHERE run_id = $1 AND id = 0",
            run,
        )
        .await;
        let silent = db.store.silent_running_steps(Duration::from_secs(60), 10).await.unwrap();
        assert_eq!(silent.len(), 1);
        assert_eq!((silent[0].step.step_id, silent[0].worker.as_str()), (StepId(0), "noop@1.0.0/h/7"));
        assert!(db.store.silent_running_steps(Duration::from_secs(120), 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn demand_counts_running_steps_their_workers_and_steps_about_to_be_ready() {
        let db = TestDb::new("demand").await;
        let run = chain(&db).await;
        let op: OpRef = "noop@1.0.0".parse().unwrap();
        // `a` is queued, `b` waits on it: `b` is forecast.
        assert_eq!(
            db.store.op_demand(&op).await.unwrap(),
            OpDemand { running: 0, busy_workers: vec![], forecast: 1 }
        );
        exec(
            &db,
            "UPDATE steps SET status = 'running', worker = 'noop@1.0.0/h/9' WHERE run_id = $1 AND id = 0",
            run,
        )
        .await;
        let demand = db.store.op_demand(&op).await.unwrap();
        assert_eq!(demand, OpDemand { running: 1, busy_workers: vec!["noop@1.0.0/h/9".into()], forecast: 1 });
    }

    #[tokio::test]
    async fn queue_depths_name_every_registered_op_and_leave_out_the_outbox() {
        let db = TestDb::new("queue_depths").await;
        for version in ["1.0.0", "2.0.0"] {
            sqlx::query(
                "INSERT INTO ops (name, version, queue, queue_type, delivery_limit, description)
                 VALUES ('noop', $1, 'q', 'quorum', 5, '{}')",
            )
            .bind(version)
            .execute(db.store.pool())
            .await
            .unwrap();
        }
        let depth = |version: &str, ready, running| QueueDepth {
            op: format!("noop@{version}").parse().unwrap(),
            ready,
            running,
        };
        let run = chain(&db).await;
        // `a` is queued but still in the outbox: not on the queue yet.
        assert_eq!(db.store.queue_depths().await.unwrap(), [depth("1.0.0", 0, 0), depth("2.0.0", 0, 0)]);
        exec(&db, "DELETE FROM outbox WHERE run_id = $1", run).await;
        assert_eq!(db.store.queue_depths().await.unwrap(), [depth("1.0.0", 1, 0), depth("2.0.0", 0, 0)]);
        exec(&db, "UPDATE steps SET status = 'running' WHERE run_id = $1 AND id = 0", run).await;
        assert_eq!(db.store.queue_depths().await.unwrap(), [depth("1.0.0", 0, 1), depth("2.0.0", 0, 0)]);
    }

    #[tokio::test]
    async fn published_queued_steps_leave_out_the_outbox() {
        let db = TestDb::new("published").await;
        let run = chain(&db).await;
        let op: OpRef = "noop@1.0.0".parse().unwrap();
        // `a` is queued but still in the outbox: not published.
        assert_eq!(db.store.published_queued_steps(&op, 100).await.unwrap(), 0);
        exec(&db, "DELETE FROM outbox WHERE run_id = $1", run).await;
        assert_eq!(db.store.published_queued_steps(&op, 100).await.unwrap(), 1);
        let oldest = db.store.oldest_published_queued_steps(&op, Duration::ZERO, 10).await.unwrap();
        assert_eq!(oldest, [StepAttempt { run_id: run, step_id: StepId(0), attempt: 1 }]);
    }

    /// Regression: with 20,000 steps just queued (all in the outbox, the tables not yet
    /// analyzed), counting the published ones once joined each outbox row to a scan of the
    /// run's queued steps, 20,000 × 20,000 rows: during a 100,000-step run the lost-step
    /// check's count ran for the whole run, a PostgreSQL core busy and vacuum held back.
    /// The statement timeout turns such a plan into a failure instead of a hang.
    #[tokio::test]
    async fn counting_published_steps_of_a_large_fresh_run_stays_cheap() {
        let db = TestDb::new("published_large").await;
        sqlx::query(
            "INSERT INTO ops (name, version, queue, queue_type, delivery_limit, description)
             VALUES ('noop', '1.0.0', 'q', 'quorum', 5, '{}')",
        )
        .execute(db.store.pool())
        .await
        .unwrap();
        let registered = [RegisteredOp { name: "noop".into(), version: "1.0.0".parse().unwrap() }];
        let source =
            "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    sweep: {k: {from: 1, to: 20000}}\n";
        let plan = plan::compile(source, Path::new("p.yaml"), &registered).unwrap();
        let run = db.store.submit_run(&plan, "p.yaml", source, None).await.unwrap().run_id;
        let url = format!("{}/{}?options=-c%20statement_timeout%3D10000", db.server, db.name);
        let store = Store::connect(&SecretUrl::new(url), &CancellationToken::new()).await.unwrap();
        let op: OpRef = "noop@1.0.0".parse().unwrap();
        assert_eq!(store.published_queued_steps(&op, 30_000).await.unwrap(), 0);
        let ready = |depths: Vec<QueueDepth>| depths.iter().map(|d| d.ready).collect::<Vec<_>>();
        assert_eq!(ready(store.queue_depths().await.unwrap()), [0]);
        let oldest = store.oldest_published_queued_steps(&op, Duration::ZERO, 10).await.unwrap();
        assert!(oldest.is_empty(), "{oldest:?}");
        exec(&db, "DELETE FROM outbox WHERE run_id = $1 AND step_id >= 10000", run).await;
        assert_eq!(store.published_queued_steps(&op, 30_000).await.unwrap(), 10_000);
        assert_eq!(store.published_queued_steps(&op, 100).await.unwrap(), 100);
        assert_eq!(ready(store.queue_depths().await.unwrap()), [10_000]);
        let oldest = store.oldest_published_queued_steps(&op, Duration::ZERO, 10).await.unwrap();
        assert_eq!(oldest.len(), 10);
        assert!(oldest.iter().all(|s| s.step_id.0 >= 10_000), "{oldest:?}");
    }
}
