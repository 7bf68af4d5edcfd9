//! Runs: submitting one (bulk inserts in one transaction, idempotent by key) and reading
//! its state and outputs.

use chrono::{DateTime, Utc};
use opflow_protocol::{RunId, StepId};
use serde_json::Value;
use uuid::Uuid;

use super::{
    Store, StoreError,
    run_plan::{RunAssetRow, UnlockMode},
};
use crate::plan::{CompiledPlan, Only, backfill::PartitionSelection, graph::PlanGraph};

/// Rows per bulk `INSERT … SELECT FROM UNNEST`: large enough to amortise round trips,
/// small enough to keep each statement's arrays a few megabytes.
const STEP_INSERT_CHUNK: usize = 50_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "run_status", rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
}

impl RunStatus {
    pub fn is_finished(self) -> bool {
        matches!(self, RunStatus::Succeeded | RunStatus::Failed | RunStatus::Canceled)
    }

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "step_status", rename_all = "snake_case")]
pub enum StepStatus {
    Waiting,
    Queued,
    Running,
    Retrying,
    Succeeded,
    Failed,
    Skipped,
    /// Its run was canceled before it finished.
    Canceled,
}

/// How a run is asked for: whose it is (`runs.owner`: the submitting token's team, its
/// name, or what a caller without a token said), the priority it was submitted with
/// (`None`: the plan's), and which of its plan's cells it runs: all but what it may reuse,
/// all (`--no-reuse`), those of some partitions (`--partitions`), or only those the catalog
/// lacks (`--missing`, `--failed`). The compiled plan is cut to these before it is stored.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions<'a> {
    pub owner: &'a str,
    pub priority: Option<u8>,
    pub no_reuse: bool,
    pub partitions: Option<&'a PartitionSelection>,
    pub only: Option<Only>,
}

/// The most steps behind the publish window a run's summary counts; more shows as this.
pub const BEHIND_WINDOW_COUNTED: i64 = 10_001;

/// The owner a run gets from a caller without a token that names none.
pub const DEFAULT_OWNER: &str = "local";

impl Default for RunOptions<'_> {
    fn default() -> Self {
        Self { owner: DEFAULT_OWNER, priority: None, no_reuse: false, partitions: None, only: None }
    }
}

/// An idempotency key, and whose it is: the name of the API token that used it, or `""`
/// for a caller without one (`opflow up --run`, an open loopback API). Two owners' equal
/// keys name two runs (migration 0015).
#[derive(Debug, Clone, Copy)]
pub struct IdempotencyKey<'a> {
    pub owner: &'a str,
    pub key: &'a str,
}

/// The outcome of a submission.
#[derive(Debug, Clone, Copy)]
pub struct Submission {
    pub run_id: RunId,
    /// True when the key named an existing run, which is returned instead of a new one.
    pub existing: bool,
}

/// Step counts by state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
    /// Of `succeeded`, satisfied from the catalog (`runs.steps_reused`; per run only).
    pub reused: i64,
}

/// A run's assets by state (see [`super::following::AssetState`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AssetCounts {
    pub total: i64,
    pub waiting: i64,
    pub running: i64,
    pub done: i64,
    /// Assets with at least one failed step (done or not).
    pub failed: i64,
}

/// A run's steps and assets counted by state: the sums of its `asset_progress` rows.
#[derive(Debug, Clone, Default)]
pub struct AssetTotals {
    pub steps: StepCounts,
    pub assets: AssetCounts,
}

/// Steps of a run waiting for a slot of a concurrency key, as the leading publisher last
/// said (every second).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyWaitRow {
    pub key: String,
    pub waiting: i64,
    /// The key's slots held, over every run, and its cap.
    pub in_flight: i64,
    pub max: i64,
}

/// The most keys a run's summary names.
pub const KEY_WAITS_SHOWN: i64 = 5;

/// A run's state, as `opflow status --json` and `GET /v1/runs/{id}` show it.
#[derive(Debug, Clone)]
pub struct RunSummaryRow {
    pub run_id: RunId,
    pub key: Option<String>,
    pub plan: String,
    pub plan_file: String,
    pub owner: String,
    pub priority: u8,
    pub status: RunStatus,
    pub steps: StepCounts,
    /// Of the queued steps, those waiting in the outbox for room in their op's publish
    /// window, counted up to [`BEHIND_WINDOW_COUNTED`].
    pub behind_window: i64,
    /// Of those, the ones waiting for a slot of a full concurrency key, per key: the keys
    /// with the most first, at most [`KEY_WAITS_SHOWN`].
    pub key_waits: Vec<KeyWaitRow>,
    pub assets: AssetCounts,
    /// The number of its last recorded event.
    pub last_event: i64,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The first failed steps, with their errors.
    pub failures: Vec<StepFailureRow>,
}

#[derive(Debug, Clone)]
pub struct StepFailureRow {
    pub step_id: StepId,
    pub asset: String,
    pub attempt: i32,
    pub error: String,
}

/// The cheap part of a run's state: the counters kept on its row.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub struct RunProgressRow {
    pub status: RunStatus,
    pub steps_total: i32,
    pub steps_succeeded: i32,
    pub steps_failed: i32,
    pub steps_skipped: i32,
    pub steps_canceled: i32,
}

/// What canceling a run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancellation {
    /// The run was going and is now canceled.
    Canceled {
        /// Steps that were queued, waiting or retrying: they never start.
        not_started: i64,
        /// Steps that were running: their workers are told to stop.
        running: i64,
    },
    /// The run had already ended; nothing changed.
    AlreadyFinished(RunStatus),
}

/// One step's result.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StepOutputRow {
    pub step_id: i32,
    pub asset: String,
    /// The asset's position in the plan.
    pub asset_index: i32,
    pub status: StepStatus,
    pub attempt: i32,
    pub worker: Option<String>,
    pub output: Option<Value>,
    pub error: Option<String>,
    /// How many steps the page took before its byte budget cut it: more than the rows
    /// returned when the budget cut the page short (see [`Runs::outputs`]).
    pub page_rows: i64,
}

/// The most bytes of outputs and errors one page of outputs holds (plus at most one step's
/// over it): a thousand 64 KiB outputs would make a 64 MiB answer.
pub const MAX_OUTPUTS_PAGE_BYTES: i64 = 8 * 1024 * 1024;

/// Runs: submitting one and reading its state, outputs and plan (`store.runs()`).
#[derive(Clone, Copy)]
pub struct Runs<'a> {
    pub(super) pool: &'a sqlx::PgPool,
}

impl Store {
    /// Submitting runs and reading their state, outputs and plans.
    pub fn runs(&self) -> Runs<'_> {
        Runs { pool: &self.pool }
    }
}

impl Runs<'_> {
    /// Stores a compiled plan as a new run and queues its ready steps, all in one
    /// transaction. With a `key` that an earlier run used, returns that run instead,
    /// unless the plan text differs, which is a [`StoreError::KeyConflict`].
    pub async fn submit(
        &self,
        plan: &CompiledPlan,
        plan_file: &str,
        plan_source: &str,
        key: Option<&str>,
    ) -> Result<Submission, StoreError> {
        let key = key.map(|key| IdempotencyKey { owner: "", key });
        self.submit_notifying(plan, plan_file, plan_source, key, None, RunOptions::default()).await
    }

    /// As [`Store::submit_run`], storing the run's own webhook target (`notify`) in the
    /// same transaction. A run returned for its key keeps the target it was submitted with.
    pub async fn submit_notifying(
        &self,
        plan: &CompiledPlan,
        plan_file: &str,
        plan_source: &str,
        key: Option<IdempotencyKey<'_>>,
        notify: Option<&super::webhooks::RunNotify>,
        owner: RunOptions<'_>,
    ) -> Result<Submission, StoreError> {
        if let Some(key) = key
            && let Some(existing) = self.by_key(key, plan_source).await?
        {
            return Ok(existing);
        }
        let run_id = RunId::new();
        let mut tx = self.pool.begin().await?;
        let inserted: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO runs (id, key, key_owner, plan_name, plan_file, plan_source, steps_total, dep_groups,
                               owner, priority)
             VALUES ($1, $2, $3, $4, $5, $6, $7, true, $8, $9)
             ON CONFLICT (key_owner, key) DO NOTHING
             RETURNING id",
        )
        .bind(run_id.as_uuid())
        .bind(key.map(|k| k.key))
        .bind(key.map_or("", |k| k.owner))
        .bind(&plan.name)
        .bind(plan_file)
        .bind(plan_source)
        .bind(plan.step_count as i32)
        .bind(owner.owner)
        .bind(i16::from(owner.priority.unwrap_or(plan.priority)))
        .fetch_optional(&mut *tx)
        .await?;
        if inserted.is_none() {
            // Another submission with the same key won the race; return its run.
            tx.rollback().await?;
            let key = key.unwrap_or(IdempotencyKey { owner: "", key: "" });
            return self
                .by_key(key, plan_source)
                .await?
                .ok_or_else(|| StoreError::Corrupt(key.key.to_owned(), "key conflict without a run".into()));
        }
        if let Some(notify) = notify {
            super::webhooks::insert_run_notify(&mut tx, run_id, notify).await?;
        }

        insert_run_assets(&mut tx, run_id, plan).await?;
        super::catalog::declare(&mut tx, plan).await?;
        insert_asset_progress(&mut tx, run_id).await?;

        let graph = PlanGraph::new(plan.clone());
        insert_dep_groups(&mut tx, run_id, &graph).await?;
        let mut ids = Vec::with_capacity(STEP_INSERT_CHUNK);
        let mut assets = Vec::with_capacity(STEP_INSERT_CHUNK);
        let mut pending = Vec::with_capacity(STEP_INSERT_CHUNK);
        for (idx, asset) in plan.assets.iter().enumerate() {
            let waits_on = graph.pending_upstream(idx) as i32;
            for i in 0..asset.step_count() {
                ids.push((asset.first_step + i) as i32);
                assets.push(idx as i32);
                pending.push(waits_on);
                if ids.len() == STEP_INSERT_CHUNK {
                    insert_steps(&mut tx, run_id, &ids, &assets, &pending).await?;
                    ids.clear();
                    assets.clear();
                    pending.clear();
                }
            }
        }
        insert_steps(&mut tx, run_id, &ids, &assets, &pending).await?;
        // The publisher loads the run's rows when told (`service::window`).
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(super::OUTBOX_CHANNEL)
            .bind(run_id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Submission { run_id, existing: false })
    }

    /// What a run was submitted from, to submit it again: its plan file's name, the plan's
    /// text and the run's priority; `None` for an unknown run.
    pub async fn source(&self, run: RunId) -> Result<Option<(String, String, i16)>, StoreError> {
        Ok(sqlx::query_as("SELECT plan_file, plan_source, priority FROM runs WHERE id = $1")
            .bind(run.as_uuid())
            .fetch_optional(self.pool)
            .await?)
    }

    /// The run submitted with `key`, if any; a [`StoreError::KeyConflict`] if it was
    /// submitted with different plan text.
    pub async fn by_key(
        &self,
        key: IdempotencyKey<'_>,
        plan_source: &str,
    ) -> Result<Option<Submission>, StoreError> {
        let row: Option<(Uuid, String)> =
            sqlx::query_as("SELECT id, plan_source FROM runs WHERE key_owner = $1 AND key = $2")
                .bind(key.owner)
                .bind(key.key)
                .fetch_optional(self.pool)
                .await?;
        let key = key.key;
        match row {
            None => Ok(None),
            Some((id, source)) if source == plan_source => {
                Ok(Some(Submission { run_id: RunId::from_uuid(id), existing: true }))
            }
            Some((id, _)) => Err(StoreError::KeyConflict { key: key.to_owned(), run_id: id.to_string() }),
        }
    }

    /// A run's counters, from its row alone: cheap enough to poll.
    pub async fn progress(&self, run: RunId) -> Result<Option<RunProgressRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT status, steps_total, steps_succeeded, steps_failed, steps_skipped, steps_canceled
             FROM runs WHERE id = $1",
        )
        .bind(run.as_uuid())
        .fetch_optional(self.pool)
        .await?)
    }

    /// A run's full state, or `None` for an unknown run.
    pub async fn summary(&self, run: RunId) -> Result<Option<RunSummaryRow>, StoreError> {
        type Row = (
            Option<String>,
            String,
            String,
            RunStatus,
            DateTime<Utc>,
            Option<DateTime<Utc>>,
            Option<DateTime<Utc>>,
            i32,
            i64,
            String,
            i16,
            i32,
        );
        let row: Option<Row> = sqlx::query_as(
            "SELECT key, plan_name, plan_file, status, created_at, started_at, finished_at, steps_total, event_seq,
                    owner, priority, steps_reused
             FROM runs WHERE id = $1",
        )
        .bind(run.as_uuid())
        .fetch_optional(self.pool)
        .await?;
        let Some((
            key,
            plan,
            plan_file,
            status,
            created_at,
            started_at,
            finished_at,
            total,
            last_event,
            owner,
            priority,
            reused,
        )) = row
        else {
            return Ok(None);
        };
        let counts = self.asset_totals(run).await?;
        let steps = StepCounts { total: i64::from(total), reused: i64::from(reused), ..counts.steps };
        let behind_window = if steps.queued > 0 { self.behind_window(run).await? } else { 0 };
        let key_waits: Vec<(String, i32, i32, i32)> = if behind_window > 0 {
            sqlx::query_as(
                "SELECT key, waiting, in_flight, max FROM key_waits WHERE run_id = $1
                 ORDER BY waiting DESC, key LIMIT $2",
            )
            .bind(run.as_uuid())
            .bind(KEY_WAITS_SHOWN)
            .fetch_all(self.pool)
            .await?
        } else {
            Vec::new()
        };
        let failures: Vec<(i32, String, i32, Option<String>)> = sqlx::query_as(
            "SELECT s.id, a.name, s.attempt, s.error FROM steps s
             JOIN run_assets a ON a.run_id = s.run_id AND a.idx = s.asset
             WHERE s.run_id = $1 AND s.status = 'failed' ORDER BY s.id LIMIT 10",
        )
        .bind(run.as_uuid())
        .fetch_all(self.pool)
        .await?;
        Ok(Some(RunSummaryRow {
            run_id: run,
            key,
            plan,
            plan_file,
            owner,
            priority: u8::try_from(priority).unwrap_or(crate::plan::DEFAULT_PRIORITY),
            status,
            steps,
            behind_window,
            key_waits: key_waits
                .into_iter()
                .map(|(key, waiting, in_flight, max)| KeyWaitRow {
                    key,
                    waiting: waiting.into(),
                    in_flight: in_flight.into(),
                    max: max.into(),
                })
                .collect(),
            assets: counts.assets,
            last_event,
            created_at,
            started_at,
            finished_at,
            failures: failures
                .into_iter()
                .map(|(id, asset, attempt, error)| StepFailureRow {
                    step_id: StepId(id as u32),
                    asset,
                    attempt,
                    error: error.unwrap_or_default(),
                })
                .collect(),
        }))
    }

    /// How many of the run's queued steps wait in the outbox for room in their op's publish
    /// window (fair sharing), counted up to [`BEHIND_WINDOW_COUNTED`]: a summary costs that
    /// many index entries at most, whatever the run's size.
    pub async fn behind_window(&self, run: RunId) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM (SELECT 1 FROM outbox WHERE run_id = $1 LIMIT $2) o")
            .bind(run.as_uuid())
            .bind(BEHIND_WINDOW_COUNTED)
            .fetch_one(self.pool)
            .await?)
    }

    /// The run's steps and assets counted by state, from its assets' counts: as many rows
    /// as the run has assets, none of its steps.
    pub async fn asset_totals(&self, run: RunId) -> Result<AssetTotals, StoreError> {
        type Row = (i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64);
        let row: Row = sqlx::query_as(
            "SELECT coalesce(sum(steps), 0)::bigint, coalesce(sum(waiting), 0)::bigint,
                    coalesce(sum(queued), 0)::bigint, coalesce(sum(running), 0)::bigint,
                    coalesce(sum(retrying), 0)::bigint, coalesce(sum(succeeded), 0)::bigint,
                    coalesce(sum(failed), 0)::bigint, coalesce(sum(skipped), 0)::bigint,
                    coalesce(sum(canceled), 0)::bigint,
                    count(*),
                    count(*) FILTER (WHERE queued + running + retrying = 0 AND waiting > 0),
                    count(*) FILTER (WHERE queued + running + retrying > 0),
                    count(*) FILTER (WHERE waiting + queued + running + retrying = 0),
                    count(*) FILTER (WHERE failed > 0)
             FROM asset_progress WHERE run_id = $1",
        )
        .bind(run.as_uuid())
        .fetch_one(self.pool)
        .await?;
        let (total, waiting, queued, running, retrying, succeeded, failed, skipped, canceled) =
            (row.0, row.1, row.2, row.3, row.4, row.5, row.6, row.7, row.8);
        Ok(AssetTotals {
            steps: StepCounts {
                total,
                waiting,
                queued,
                running,
                retrying,
                succeeded,
                failed,
                skipped,
                canceled,
                reused: 0,
            },
            assets: AssetCounts {
                total: row.9,
                waiting: row.10,
                running: row.11,
                done: row.12,
                failed: row.13,
            },
        })
    }

    /// The outputs (or errors) of a run's steps within `[range.0, range.1)` (an asset's
    /// steps, from `following().asset_steps`), or of every step.
    ///
    /// One page: at most `limit` steps, by step id, after step `after` when given.
    pub async fn outputs(
        &self,
        run: RunId,
        range: Option<(i32, i32)>,
        after: Option<u32>,
        limit: u32,
    ) -> Result<Vec<StepOutputRow>, StoreError> {
        let (first, end) = range.unwrap_or((0, i32::MAX));
        let from = after.map_or(i64::from(first), |a| (a as i64 + 1).max(i64::from(first)));
        // The page's steps first (by the index, at most `limit`), then their running size:
        // steps past [`MAX_OUTPUTS_PAGE_BYTES`] are left for the next page.
        Ok(sqlx::query_as(
            "SELECT step_id, asset, asset_index, status, attempt, worker, output, error, page_rows
             FROM (SELECT p.*, sum(p.bytes) OVER (ORDER BY p.step_id) AS upto, count(*) OVER () AS page_rows
                   FROM (SELECT s.id AS step_id, a.name AS asset, s.asset AS asset_index, s.status, s.attempt,
                                s.worker, s.output, s.error,
                                coalesce(s.output_bytes, 0) + coalesce(octet_length(s.error), 0) AS bytes
                         FROM steps s JOIN run_assets a ON a.run_id = s.run_id AND a.idx = s.asset
                         WHERE s.run_id = $1 AND s.id >= $2 AND s.id < $3
                         ORDER BY s.id LIMIT $4) p) sized
             WHERE upto - bytes < $5
             ORDER BY step_id",
        )
        .bind(run.as_uuid())
        .bind(from)
        .bind(i64::from(end))
        .bind(i64::from(limit))
        .bind(MAX_OUTPUTS_PAGE_BYTES)
        .fetch_all(self.pool)
        .await?)
    }

    /// `asset[partition]{point}` of each `(step, asset index)`, from the definitions of
    /// those assets only: a page of outputs costs its assets, not the run's plan.
    pub async fn step_labels(
        &self,
        run: RunId,
        steps: &[(i32, i32)],
    ) -> Result<std::collections::HashMap<i32, String>, StoreError> {
        let mut indexes: Vec<i32> = steps.iter().map(|(_, asset)| *asset).collect();
        indexes.sort_unstable();
        indexes.dedup();
        if indexes.is_empty() {
            return Ok(Default::default());
        }
        let rows: Vec<RunAssetRow> = sqlx::query_as(
            "SELECT idx, name, op_name, op_version, op_requirement, config, partitions, partition_keys, sweep,
                    deps, retry_max, retry_backoff_ms, timeout_ms, concurrency, reuse, backfill, checks, reuse_versions, freshness, first_step, step_count, line
             FROM run_assets WHERE run_id = $1 AND idx = ANY($2)",
        )
        .bind(run.as_uuid())
        .bind(&indexes)
        .fetch_all(self.pool)
        .await?;
        let mut assets = std::collections::HashMap::new();
        for row in rows {
            let idx = row.idx;
            let asset = row.into_asset().map_err(|e| StoreError::Corrupt(run.to_string(), e))?;
            assets.insert(idx, asset);
        }
        Ok(steps
            .iter()
            .filter_map(|&(step, idx)| {
                let asset = assets.get(&idx)?;
                let within = u32::try_from(step).ok()?.checked_sub(asset.first_step)?;
                (within < asset.step_count()).then(|| {
                    let spec = asset.step(within);
                    (step, opflow_protocol::step::step_label(&asset.name, spec.partition, &spec.point))
                })
            })
            .collect())
    }

    /// Cancels a run: its unfinished steps end `canceled` (queued and waiting ones never
    /// start), its unpublished outbox rows go, and the cancel is queued for the cancels
    /// stream, which tells workers to drop its queued messages and stop its running steps.
    /// All in one transaction; a finished run is left as it is. `None` for an unknown run.
    pub async fn cancel(&self, run: RunId) -> Result<Option<Cancellation>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The run's unfinished steps are locked before its row, as the applier takes them
        // (steps, then the run): a cancel that locked the run first deadlocked with a batch
        // holding one of its steps (seen in CI; the batch was retried 185 ms later).
        sqlx::query(
            "SELECT 1 FROM steps WHERE run_id = $1 AND status IN ('waiting', 'queued', 'running', 'retrying')
             ORDER BY id FOR UPDATE",
        )
        .bind(run.as_uuid())
        .execute(&mut *tx)
        .await?;
        let status: Option<RunStatus> =
            sqlx::query_scalar("SELECT status FROM runs WHERE id = $1 FOR UPDATE")
                .bind(run.as_uuid())
                .fetch_optional(&mut *tx)
                .await?;
        let Some(status) = status else { return Ok(None) };
        if status.is_finished() {
            return Ok(Some(Cancellation::AlreadyFinished(status)));
        }
        sqlx::query("DELETE FROM outbox WHERE run_id = $1").bind(run.as_uuid()).execute(&mut *tx).await?;
        let (not_started, running): (i64, i64) = sqlx::query_as(
            "WITH canceled AS (
                 UPDATE steps s SET status = 'canceled', finished_at = now(),
                                    error = 'canceled: its run was canceled', next_attempt_at = NULL
                 FROM (SELECT id, status AS before FROM steps
                       WHERE run_id = $1 AND status IN ('waiting', 'queued', 'running', 'retrying')
                       FOR UPDATE) b
                 WHERE s.run_id = $1 AND s.id = b.id
                 RETURNING b.before
             ), counted AS (
                 SELECT count(*) FILTER (WHERE before <> 'running') AS not_started,
                        count(*) FILTER (WHERE before = 'running') AS running
                 FROM canceled
             ), ended AS (
                 UPDATE runs SET status = 'canceled', finished_at = now(),
                                 steps_canceled = steps_canceled + (SELECT not_started + running FROM counted)
                 WHERE id = $1
                 RETURNING id
             ), announced AS (
                 SELECT pg_notify($2, id::text) FROM ended
             )
             SELECT not_started, running FROM counted, (SELECT count(*) FROM announced) a",
        )
        .bind(run.as_uuid())
        .bind(super::RUNS_CHANNEL)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO cancel_outbox (run_id) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(run.as_uuid())
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT pg_notify($1, '')").bind(super::CANCELS_CHANNEL).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(Some(Cancellation::Canceled { not_started, running }))
    }

    /// A listener told of every run that ends: its id arrives on [`super::RUNS_CHANNEL`].
    pub async fn listen_for_ends(&self) -> Result<sqlx::postgres::PgListener, StoreError> {
        let mut listener = sqlx::postgres::PgListener::connect_with(self.pool).await?;
        listener.listen(super::RUNS_CHANNEL).await?;
        Ok(listener)
    }

    /// Reads a run's compiled plan back from `run_assets`.
    pub async fn load_plan(&self, run: RunId) -> Result<CompiledPlan, StoreError> {
        Ok(self.load_plan_for_dispatch(run).await?.0)
    }

    /// Reads a run's compiled plan back, with how its steps are unlocked and its owner.
    pub async fn load_plan_for_dispatch(
        &self,
        run: RunId,
    ) -> Result<(CompiledPlan, UnlockMode, String), StoreError> {
        let row: Option<(String, bool, i16, String)> =
            sqlx::query_as("SELECT plan_name, dep_groups, priority, owner FROM runs WHERE id = $1")
                .bind(run.as_uuid())
                .fetch_optional(self.pool)
                .await?;
        let (name, groups, priority, owner) =
            row.ok_or_else(|| StoreError::Corrupt(run.to_string(), "no such run".into()))?;
        let priority = u8::try_from(priority).unwrap_or(crate::plan::DEFAULT_PRIORITY);
        let mode = if groups { UnlockMode::Groups } else { UnlockMode::Steps };
        let rows: Vec<RunAssetRow> = sqlx::query_as(
            "SELECT idx, name, op_name, op_version, op_requirement, config, partitions, partition_keys, sweep,
                    deps, retry_max, retry_backoff_ms, timeout_ms, concurrency, reuse, backfill, checks, reuse_versions, freshness, first_step, step_count, line
             FROM run_assets WHERE run_id = $1 ORDER BY idx",
        )
        .bind(run.as_uuid())
        .fetch_all(self.pool)
        .await?;
        let assets = rows
            .into_iter()
            .map(RunAssetRow::into_asset)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::Corrupt(run.to_string(), e))?;
        let step_count = assets.iter().map(|a| a.step_count()).sum();
        Ok((CompiledPlan { name, description: None, priority, assets, step_count }, mode, owner))
    }
}

/// Writes the counters of the run's dependency groups (see `plan::graph`).
async fn insert_dep_groups(
    tx: &mut sqlx::PgConnection,
    run_id: RunId,
    graph: &PlanGraph,
) -> Result<(), StoreError> {
    let groups = graph.dep_groups();
    for chunk in groups.chunks(STEP_INSERT_CHUNK) {
        let upstream: Vec<i32> = chunk.iter().map(|(g, _)| g.upstream as i32).collect();
        let parts: Vec<i32> = chunk.iter().map(|(g, _)| g.partition).collect();
        let sizes: Vec<i32> = chunk.iter().map(|(_, size)| *size as i32).collect();
        sqlx::query(
            "INSERT INTO dep_groups (run_id, upstream, part, remaining)
             SELECT $1, u.upstream, u.part, u.remaining FROM UNNEST($2::int[], $3::int[], $4::int[])
                 AS u(upstream, part, remaining)",
        )
        .bind(run_id.as_uuid())
        .bind(&upstream)
        .bind(&parts)
        .bind(&sizes)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Assets per `run_assets` insert: 22 parameters a row, well under PostgreSQL's 65,535.
const ASSET_INSERT_CHUNK: usize = 1_000;

/// One multi-row insert per chunk of assets: a plan of 10,000 assets (a long chain) is ten
/// statements, not 10,000 round trips.
async fn insert_run_assets(
    tx: &mut sqlx::PgConnection,
    run_id: RunId,
    plan: &CompiledPlan,
) -> Result<(), StoreError> {
    let rows: Vec<RunAssetRow> =
        plan.assets.iter().enumerate().map(|(idx, asset)| RunAssetRow::from_asset(idx, asset)).collect();
    for chunk in rows.chunks(ASSET_INSERT_CHUNK) {
        let mut insert = sqlx::QueryBuilder::<sqlx::Postgres>::new(
            "INSERT INTO run_assets (run_id, idx, name, op_name, op_version, op_requirement, config, partitions, \
             partition_keys, sweep, deps, retry_max, retry_backoff_ms, timeout_ms, concurrency, reuse, backfill, checks, reuse_versions, freshness, first_step, step_count, line) ",
        );
        insert.push_values(chunk, |mut values, row| {
            values
                .push_bind(run_id.as_uuid())
                .push_bind(row.idx)
                .push_bind(&row.name)
                .push_bind(&row.op_name)
                .push_bind(&row.op_version)
                .push_bind(&row.op_requirement)
                .push_bind(&row.config)
                .push_bind(&row.partitions)
                .push_bind(&row.partition_keys)
                .push_bind(&row.sweep)
                .push_bind(&row.deps)
                .push_bind(row.retry_max)
                .push_bind(row.retry_backoff_ms)
                .push_bind(row.timeout_ms)
                .push_bind(&row.concurrency)
                .push_bind(row.reuse)
                .push_bind(&row.backfill)
                .push_bind(&row.checks)
                .push_bind(&row.reuse_versions)
                .push_bind(&row.freshness)
                .push_bind(row.first_step)
                .push_bind(row.step_count)
                .push_bind(row.line);
        });
        // Not kept as a prepared statement: its text depends on the chunk's length.
        insert.build().persistent(false).execute(&mut *tx).await?;
    }
    Ok(())
}

/// One counts row per asset of the run (migration 0014), before its steps: the steps'
/// insert trigger counts them into it. Its downstream counts come from the assets' deps,
/// in one grouped pass.
async fn insert_asset_progress(tx: &mut sqlx::PgConnection, run_id: RunId) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO asset_progress (run_id, asset, op, downstream, steps)
         SELECT a.run_id, a.idx, a.op_name || '@' || a.op_version, coalesce(d.n, 0), a.step_count
         FROM run_assets a
         LEFT JOIN (
             SELECT (dep->>'upstream')::int AS asset, count(DISTINCT b.idx) AS n
             FROM run_assets b, jsonb_array_elements(b.deps) dep
             WHERE b.run_id = $1 GROUP BY 1
         ) d ON d.asset = a.idx
         WHERE a.run_id = $1",
    )
    .bind(run_id.as_uuid())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn insert_steps(
    tx: &mut sqlx::PgConnection,
    run_id: RunId,
    ids: &[i32],
    assets: &[i32],
    pending: &[i32],
) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    // The steps that are ready go to the outbox in the same statement, in step order.
    sqlx::query(
        "WITH inserted AS (
             INSERT INTO steps (run_id, id, asset, status, pending_upstream, queued_at)
             SELECT $1, u.id, u.asset,
                    CASE WHEN u.pending = 0 THEN 'queued'::step_status ELSE 'waiting'::step_status END,
                    u.pending,
                    CASE WHEN u.pending = 0 THEN now() END
             FROM UNNEST($2::int[], $3::int[], $4::int[]) AS u(id, asset, pending)
             RETURNING run_id, id, attempt, status
         )
         INSERT INTO outbox (run_id, step_id, attempt)
         SELECT run_id, id, attempt FROM inserted WHERE status = 'queued' ORDER BY id",
    )
    .bind(run_id.as_uuid())
    .bind(ids)
    .bind(assets)
    .bind(pending)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
