//! The asset catalog: every cell (asset × partition × sweep point) any run materialized or
//! failed, across runs, with what each materialization read (migration 0020).
//!
//! Written only by the applier, in the transaction that ends the steps ([`record`]): a
//! success adds a materialization and points its cell at it; a final failure marks the cell
//! failed and keeps its last good materialization. A replaced materialization whose output
//! differs from its successor's marks the cells that read it `upstream_changed`, which makes
//! them stale. Read by `opflow assets` and `GET /v1/assets…` ([`Catalog`]).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use opflow_protocol::{Event, EventKind, StepId};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Store, StoreError, freshness::ThresholdColumns, run_plan::RunPlan};
use crate::plan::{
    CompiledPlan,
    backfill::{CellFacts, MaterializedBy},
    fingerprint::{Fingerprint, point_key},
};

/// What a batch adds to the catalog, as the columns of its bulk statements.
#[derive(Debug, Default)]
pub struct CatalogColumns {
    // Successes, one row each.
    runs: Vec<Uuid>,
    steps: Vec<i32>,
    attempts: Vec<i32>,
    assets: Vec<String>,
    partitions: Vec<String>,
    points: Vec<String>,
    op_names: Vec<String>,
    op_versions: Vec<String>,
    definitions: Vec<Vec<u8>>,
    config_hashes: Vec<Vec<u8>>,
    output_digests: Vec<Vec<u8>>,
    ats: Vec<DateTime<Utc>>,
    /// Satisfied from an earlier materialization (`REUSED_BY_DISPATCHER`), not run.
    reused: Vec<bool>,
    /// How many upstream steps each success read: with fewer materializations found, it
    /// has no memo key.
    expected_reads: Vec<i32>,
    /// The upstream step ranges each success read.
    reads: ReadColumns,
    // Final failures, one row each.
    failed_runs: Vec<Uuid>,
    failed_steps: Vec<i32>,
    failed_assets: Vec<String>,
    failed_partitions: Vec<String>,
    failed_points: Vec<String>,
    failed_errors: Vec<String>,
    /// Each (run, asset index)'s definition fingerprint, computed once per batch.
    definitions_seen: HashMap<(Uuid, usize), Fingerprint>,
    /// Check results, one row each.
    checks: CheckColumns,
}

/// The check results of a batch (`catalog_checks`, migration 0024).
#[derive(Debug, Default)]
struct CheckColumns {
    assets: Vec<String>,
    partitions: Vec<String>,
    points: Vec<String>,
    names: Vec<String>,
    passed: Vec<bool>,
    blocking: Vec<bool>,
    details: Vec<Option<String>>,
    runs: Vec<Uuid>,
    steps: Vec<i32>,
    attempts: Vec<i32>,
    ats: Vec<DateTime<Utc>>,
}

impl CatalogColumns {
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty() && self.failed_runs.is_empty() && self.checks.runs.is_empty()
    }

    /// Adds a `check_result` event of a step of `plan`'s run, if the plan declares the
    /// check: what an op reports beyond that is in the run's events only, so an op cannot
    /// grow the catalog (or send webhooks) by inventing check names.
    pub fn check(&mut self, plan: &RunPlan, event: &Event) {
        let EventKind::CheckResult { name, passed, detail } = &event.kind else { return };
        let asset = &plan.plan().assets[plan.asset_index(event.step_id)];
        if !asset.checks.iter().any(|c| &c.name == name) {
            return;
        }
        let (partition, point) = plan.partition_and_point(event.step_id);
        let checks = &mut self.checks;
        checks.assets.push(asset.name.clone());
        checks.partitions.push(partition.unwrap_or_default().to_owned());
        checks.points.push(point_key(&point));
        checks.names.push(name.clone());
        checks.passed.push(*passed);
        checks.blocking.push(plan.is_blocking(event.step_id, name));
        checks.details.push(detail.clone());
        checks.runs.push(event.run_id.as_uuid());
        checks.steps.push(event.step_id.0 as i32);
        checks.attempts.push(event.attempt as i32);
        checks.ats.push(event.at.min(Utc::now()));
    }

    /// Adds the success `event` of `step` (its settled result) as a materialization.
    pub fn succeeded(&mut self, run: Uuid, plan: &RunPlan, step: StepId, event: &Event) {
        let EventKind::Succeeded { output } = &event.kind else { return };
        let reused = event.worker == REUSED_BY_DISPATCHER;
        let index = plan.asset_index(step);
        let asset = &plan.plan().assets[index];
        let (partition, point) = plan.partition_and_point(step);
        let definition = *self.definitions_seen.entry((run, index)).or_insert_with(|| {
            Fingerprint::of_definition(&asset.op_name, &asset.op_version.to_string(), &asset.config)
        });
        let expected = self.reads.push(self.runs.len() as i32, plan, step);
        self.expected_reads.push(expected);
        self.reused.push(reused);
        self.runs.push(run);
        self.steps.push(step.0 as i32);
        self.attempts.push(event.attempt as i32);
        self.assets.push(asset.name.clone());
        self.partitions.push(partition.unwrap_or_default().to_owned());
        self.points.push(point_key(&point));
        self.op_names.push(asset.op_name.clone());
        self.op_versions.push(asset.op_version.to_string());
        self.definitions.push(definition.as_bytes().to_vec());
        self.config_hashes
            .push(Fingerprint::of_effective_config(&asset.config, partition, &point).as_bytes().to_vec());
        self.output_digests.push(Fingerprint::of_json(output).as_bytes().to_vec());
        self.ats.push(event.at.min(Utc::now()));
    }

    /// Adds a final failure of `step`.
    pub fn failed(&mut self, run: Uuid, plan: &RunPlan, step: StepId, error: &str) {
        let asset = &plan.plan().assets[plan.asset_index(step)];
        let (partition, point) = plan.partition_and_point(step);
        self.failed_runs.push(run);
        self.failed_steps.push(step.0 as i32);
        self.failed_assets.push(asset.name.clone());
        self.failed_partitions.push(partition.unwrap_or_default().to_owned());
        self.failed_points.push(point_key(&point));
        self.failed_errors.push(super::storable::text(error));
    }
}

/// The upstream step ranges of a statement's rows (row from 0, first step, last step): what
/// `reads()` joins to `materializations`.
#[derive(Debug, Default)]
struct ReadColumns {
    rows: Vec<i32>,
    first: Vec<i32>,
    last: Vec<i32>,
}

impl ReadColumns {
    /// Adds the ranges `step` reads, as row `row`; returns how many steps they hold.
    fn push(&mut self, row: i32, plan: &RunPlan, step: StepId) -> i32 {
        let mut steps = 0;
        for (_, range) in plan.input_ranges(step) {
            self.rows.push(row);
            self.first.push(range.first as i32);
            self.last.push(range.last as i32);
            steps += (range.last - range.first + 1) as i32;
        }
        steps
    }
}

/// Writes a batch's catalog rows; see the module docs. Runs after the batch's events are
/// recorded, so that the `materialized` events of the succeeded attempts are found.
pub async fn record(tx: &mut PgConnection, cols: &CatalogColumns) -> Result<(), StoreError> {
    if cols.runs.len() + cols.failed_runs.len() > CUSTOM_PLAN_ROWS {
        // The rest of the transaction is the catalog's: plan it for these arrays, not with the
        // cached plans made for a worker batch's few rows.
        sqlx::query("SET LOCAL plan_cache_mode = force_custom_plan").execute(&mut *tx).await?;
    }
    if !cols.runs.is_empty() {
        // One statement: the materializations, then each cell pointed at its newest one.
        // What a cell pointed at before comes back when its output differs, so that the
        // cells that read it can be marked.
        let replaced: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "WITH made AS (
                 SELECT * FROM UNNEST($1::uuid[], $2::int[], $3::int[], $4::text[], $5::text[], $6::text[],
                                      $7::text[], $8::text[], $9::bytea[], $10::bytea[], $11::bytea[],
                                      $12::timestamptz[], $16::int[], $17::bool[])
                     WITH ORDINALITY AS u(run_id, step_id, attempt, asset, partition, point, op_name, op_version,
                                         definition, config_hash, output_digest, at, expected, reused, row)
             ), {reads}, keyed AS (
                 SELECT made.*, coalesce(reads.ids, '{{}}') AS inputs, {MEMO_KEY} AS memo_key
                 FROM made LEFT JOIN reads ON reads.row + 1 = made.row
             ), sourced AS (
                 -- What a reused step reused: the newest original with its memo key, or what
                 -- a backfill took, its cell's current materialization.
                 SELECT k.*, CASE WHEN k.reused THEN coalesce(
                     (SELECT coalesce(o.reused_from, o.id) FROM materializations o
                      WHERE o.memo_key = k.memo_key AND o.output_digest = k.output_digest
                      ORDER BY o.id DESC LIMIT 1),
                     (SELECT coalesce(o.reused_from, o.id) FROM catalog_cells c
                      JOIN materializations o ON o.id = c.materialization
                      WHERE c.asset = k.asset AND c.partition = k.partition AND c.point = k.point)) END AS src
                 FROM keyed k
             ), inserted AS (
                 -- A reuse is what it reused: its op, version, config and memo key are the
                 -- original's, so that a stale cell taken by `--failed` stays stale and its
                 -- key never names what the step would compute now.
                 INSERT INTO materializations (asset, partition, point, op_name, op_version, definition, config_hash,
                                           inputs, run_id, step_id, attempt, at, output_digest, metadata,
                                           memo_key, reused_from)
             SELECT k.asset, k.partition, k.point, coalesce(o.op_name, k.op_name), coalesce(o.op_version, k.op_version),
                    coalesce(o.definition, k.definition), coalesce(o.config_hash, k.config_hash),
                    k.inputs, k.run_id, k.step_id, k.attempt, k.at, k.output_digest,
                    coalesce((SELECT jsonb_agg(e.body->'materialized'->'metadata' ORDER BY e.at, e.seq)
                              FROM events e
                              WHERE e.run_id = k.run_id AND e.step_id = k.step_id
                                AND e.attempt = k.attempt AND e.kind = 'materialized'), '[]'),
                    CASE WHEN k.src IS NULL THEN k.memo_key ELSE o.memo_key END,
                    k.src
             FROM sourced k LEFT JOIN materializations o ON o.id = k.src
             ORDER BY k.row
             ON CONFLICT (run_id, step_id) DO NOTHING
             RETURNING id, run_id, step_id, asset, partition, point, definition, output_digest, at, memo_key
             ), newest AS (
                 SELECT DISTINCT ON (asset, partition, point) * FROM inserted
                 ORDER BY asset, partition, point, id DESC
             ), before AS (
                 SELECT c.materialization AS id, m.output_digest <> n.output_digest AS changed
                 FROM newest n
                 JOIN catalog_cells c USING (asset, partition, point)
                 JOIN materializations m ON m.id = c.materialization
                 WHERE c.materialization < n.id
             ), upsert AS (
                 -- A reuse under another key than its original's (a stale cell taken as it
                 -- is) keeps the cell's `upstream_changed`; anything else clears it.
                 INSERT INTO catalog_cells (asset, partition, point, status, materialization, definition,
                                            upstream_changed, updated_at, materialized_at)
                 -- A reuse's data is as old as what it reused: its freshness is the original's.
                 SELECT n.asset, n.partition, n.point, 'materialized', n.id, n.definition,
                        k.src IS NOT NULL AND k.memo_key IS DISTINCT FROM n.memo_key, n.at,
                        coalesce((SELECT o.at FROM materializations o WHERE o.id = k.src), n.at)
                 FROM newest n JOIN sourced k ON k.run_id = n.run_id AND k.step_id = n.step_id
                 ON CONFLICT (asset, partition, point) DO UPDATE
                     SET status = 'materialized', materialization = EXCLUDED.materialization,
                         definition = EXCLUDED.definition, materialized_at = EXCLUDED.materialized_at,
                         upstream_changed = EXCLUDED.upstream_changed AND catalog_cells.upstream_changed,
                         failed_run = NULL, failed_step = NULL, error = NULL,
                         updated_at = EXCLUDED.updated_at
                     WHERE catalog_cells.materialization IS NULL
                        OR catalog_cells.materialization < EXCLUDED.materialization
             )
             SELECT id FROM before WHERE changed",
            reads = reads(13, 14, 15)
        )))
        .bind(&cols.runs)
        .bind(&cols.steps)
        .bind(&cols.attempts)
        .bind(&cols.assets)
        .bind(&cols.partitions)
        .bind(&cols.points)
        .bind(&cols.op_names)
        .bind(&cols.op_versions)
        .bind(&cols.definitions)
        .bind(&cols.config_hashes)
        .bind(&cols.output_digests)
        .bind(&cols.ats)
        .bind(&cols.reads.rows)
        .bind(&cols.reads.first)
        .bind(&cols.reads.last)
        .bind(&cols.expected_reads)
        .bind(&cols.reused)
        .fetch_all(&mut *tx)
        .await?;
        if !replaced.is_empty() {
            sqlx::query(
                "UPDATE catalog_cells c SET upstream_changed = true
                 FROM materializations r
                 WHERE r.inputs && $1::bigint[] AND c.materialization = r.id AND NOT c.upstream_changed",
            )
            .bind(&replaced)
            .execute(&mut *tx)
            .await?;
        }
    }
    if !cols.checks.runs.is_empty() {
        let checks = &cols.checks;
        // The newest result of each check of each cell; the same result again (a
        // redelivered event, same time) changes nothing, and so sends no second webhook.
        sqlx::query(
            "INSERT INTO catalog_checks (asset, partition, point, name, passed, blocking, detail,
                                         run_id, step_id, attempt, at)
             SELECT DISTINCT ON (asset, partition, point, name) *
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bool[], $6::bool[], $7::text[],
                         $8::uuid[], $9::int[], $10::int[], $11::timestamptz[])
                 AS u(asset, partition, point, name, passed, blocking, detail, run_id, step_id, attempt, at)
             ORDER BY asset, partition, point, name, at DESC
             ON CONFLICT (asset, partition, point, name) DO UPDATE
                 SET passed = EXCLUDED.passed, blocking = EXCLUDED.blocking, detail = EXCLUDED.detail,
                     run_id = EXCLUDED.run_id, step_id = EXCLUDED.step_id, attempt = EXCLUDED.attempt,
                     at = EXCLUDED.at
                 WHERE catalog_checks.at < EXCLUDED.at",
        )
        .bind(&checks.assets)
        .bind(&checks.partitions)
        .bind(&checks.points)
        .bind(&checks.names)
        .bind(&checks.passed)
        .bind(&checks.blocking)
        .bind(&checks.details)
        .bind(&checks.runs)
        .bind(&checks.steps)
        .bind(&checks.attempts)
        .bind(&checks.ats)
        .execute(&mut *tx)
        .await?;
    }
    if !cols.failed_runs.is_empty() {
        sqlx::query(
            "INSERT INTO catalog_cells (asset, partition, point, status, failed_run, failed_step, error, updated_at)
             SELECT DISTINCT ON (asset, partition, point) asset, partition, point, 'failed', run_id, step_id, error, now()
             FROM UNNEST($1::uuid[], $2::int[], $3::text[], $4::text[], $5::text[], $6::text[])
                 AS u(run_id, step_id, asset, partition, point, error)
             ORDER BY asset, partition, point
             ON CONFLICT (asset, partition, point) DO UPDATE
                 SET status = 'failed', failed_run = EXCLUDED.failed_run, failed_step = EXCLUDED.failed_step,
                     error = EXCLUDED.error, updated_at = EXCLUDED.updated_at",
        )
        .bind(&cols.failed_runs)
        .bind(&cols.failed_steps)
        .bind(&cols.failed_assets)
        .bind(&cols.failed_partitions)
        .bind(&cols.failed_points)
        .bind(&cols.failed_errors)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Over this many rows, a catalog statement is planned for its own arrays: a plan cached
/// for a batch of a few worker results (which PostgreSQL turns generic after five runs)
/// took 550–600 ms to look up 4,096 steps that its own plan looks up in 30 ms.
const CUSTOM_PLAN_ROWS: usize = 64;

/// The worker name of a success the dispatcher made from an earlier materialization: the
/// step was satisfied from the catalog, not run (`service::publisher`'s memo look).
pub const REUSED_BY_DISPATCHER: &str = "dispatcher (reused)";

/// The `reads` CTE over `made` (a step per row, `row` from 1, with `run_id`) and the
/// ranges in parameters `$rows`, `$first`, `$last` (row from 0): per row, the
/// materializations of the upstream steps it read, how many, and their signature for the
/// memo key: each cell and output digest, in cell order (byte order, whatever the
/// database's collation).
fn reads(rows: u8, first: u8, last: u8) -> String {
    format!(
        "reads AS (
         SELECT r.row, array_agg(m.id ORDER BY m.id) AS ids, count(*) AS n,
                string_agg(m.asset || E'\\x1f' || m.partition || E'\\x1f' || m.point || E'\\x1f'
                               || encode(m.output_digest, 'hex'), E'\\x1e'
                           ORDER BY m.asset COLLATE \"C\", m.partition COLLATE \"C\", m.point COLLATE \"C\") AS sig
         FROM UNNEST(${rows}::int[], ${first}::int[], ${last}::int[]) AS r(row, first, last)
         JOIN made ON made.row = r.row + 1
         JOIN materializations m ON m.run_id = made.run_id AND m.step_id BETWEEN r.first AND r.last
         GROUP BY r.row
     )"
    )
}

/// A row's memo key, over `made` (`asset`, `op_name`, `op_version`, `config_hash`,
/// `expected`: everything a step's message carries but its inputs, which are named by
/// their cells and output digests) and
/// its `reads`: NULL when fewer materializations were found than it read steps (fail
/// closed). The one definition of the key: recording and looking up both use it.
const MEMO_KEY: &str = "CASE WHEN coalesce(reads.n, 0) = made.expected THEN
         sha256(convert_to(made.asset || E'\\x1f' || made.op_name || E'\\x1f' || made.op_version || E'\\x1f', 'UTF8')
                || made.config_hash
                || convert_to(coalesce(reads.sig, ''), 'UTF8'))
     END";

/// Ready steps to look up in the catalog, as the columns of one statement.
#[derive(Debug, Default)]
pub struct MemoQuery {
    runs: Vec<Uuid>,
    assets: Vec<String>,
    op_names: Vec<String>,
    op_versions: Vec<String>,
    config_hashes: Vec<Vec<u8>>,
    expected_reads: Vec<i32>,
    reads: ReadColumns,
    /// Other op versions each step reuses as its own (`reuse_from`): (row from 0, version).
    other_rows: Vec<i32>,
    other_versions: Vec<String>,
}

impl MemoQuery {
    /// Adds `step` of `run`; its position is the number of steps added before.
    pub fn push(&mut self, run: Uuid, plan: &RunPlan, step: StepId) {
        let asset = &plan.plan().assets[plan.asset_index(step)];
        let (partition, point) = plan.partition_and_point(step);
        let row = self.runs.len() as i32;
        let expected = self.reads.push(row, plan, step);
        for version in &asset.reuse_versions {
            self.other_rows.push(row);
            self.other_versions.push(version.to_string());
        }
        self.runs.push(run);
        self.assets.push(asset.name.clone());
        self.op_names.push(asset.op_name.clone());
        self.op_versions.push(asset.op_version.to_string());
        self.config_hashes
            .push(Fingerprint::of_effective_config(&asset.config, partition, &point).as_bytes().to_vec());
        self.expected_reads.push(expected);
    }

    pub fn len(&self) -> usize {
        self.runs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }
}

/// A ready step's memo key, and the earlier materialization it can be satisfied from: the
/// one that computed it, and its output as a retained run's step holds it.
#[derive(Debug, Clone)]
pub struct MemoAnswer {
    /// The step's position in its [`MemoQuery`].
    pub position: usize,
    /// `None` when a materialization it reads is not in the catalog (no key, no reuse).
    pub key: Option<Vec<u8>>,
    pub hit: Option<MemoHit>,
}

/// An earlier materialization with a step's memo key.
#[derive(Debug, Clone)]
pub struct MemoHit {
    pub materialization: i64,
    pub output: serde_json::Value,
}

impl Catalog<'_> {
    /// The memo keys of `query`'s steps and the earlier materializations with them, in one
    /// statement, one answer per step.
    pub async fn memo_answers(&self, query: &MemoQuery) -> Result<Vec<MemoAnswer>, StoreError> {
        if query.is_empty() {
            return Ok(Vec::new());
        }
        // Each key is one probe of `materializations_by_memo_key`, whatever the statistics
        // say: a catalog filled a moment ago has none yet, and a planner that takes the
        // table for empty may scan it once per key. At most 4,096 probes is the right plan
        // for any size of the table.
        // (A few keys keep their cached plan and one round trip: a chain's next step.)
        let large = query.len() > CUSTOM_PLAN_ROWS;
        let statement = sqlx::query_as::<_, (i64, Option<Vec<u8>>, Option<i64>, Option<serde_json::Value>)>(
            sqlx::AssertSqlSafe(format!(
                "WITH made AS (
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::int[], $9::text[])
                     WITH ORDINALITY AS u(run_id, op_name, op_version, config_hash, expected, asset, row)
             ), {reads}, versions AS (
                 -- Each step under its own op version, and under each it reuses as its own.
                 SELECT made.*, true AS own FROM made
                 UNION ALL
                 SELECT made.run_id, made.op_name, o.version, made.config_hash, made.expected, made.asset,
                        made.row, false
                 FROM UNNEST($10::int[], $11::text[]) AS o(row, version) JOIN made ON made.row = o.row + 1
             ), keyed AS (
                 SELECT made.row, made.own, {MEMO_KEY} AS memo_key
                 FROM versions AS made LEFT JOIN reads ON reads.row + 1 = made.row
             ), hits AS (
                 SELECT DISTINCT ON (k.row) k.row, hit.id, hit.output FROM keyed k
                 JOIN LATERAL (SELECT coalesce(o.reused_from, o.id) AS id, s.output FROM materializations o
                               JOIN steps s ON s.run_id = o.run_id AND s.id = o.step_id
                               WHERE o.memo_key = k.memo_key AND s.status = 'succeeded' AND s.output IS NOT NULL
                               ORDER BY o.id DESC LIMIT 1) hit ON true
                 WHERE k.memo_key IS NOT NULL
                 ORDER BY k.row, k.own DESC, hit.id DESC
             )
             SELECT k.row, k.memo_key, hits.id, hits.output FROM keyed k
             LEFT JOIN hits ON hits.row = k.row
             WHERE k.own",
                reads = reads(6, 7, 8)
            )),
        )
        .persistent(query.len() <= CUSTOM_PLAN_ROWS)
        .bind(&query.runs)
        .bind(&query.op_names)
        .bind(&query.op_versions)
        .bind(&query.config_hashes)
        .bind(&query.expected_reads)
        .bind(&query.reads.rows)
        .bind(&query.reads.first)
        .bind(&query.reads.last)
        .bind(&query.assets)
        .bind(&query.other_rows)
        .bind(&query.other_versions);
        let rows = if large {
            let mut tx = self.pool.begin().await?;
            sqlx::query("SET LOCAL enable_seqscan = off").execute(&mut *tx).await?;
            let rows = statement.fetch_all(&mut *tx).await?;
            tx.commit().await?;
            rows
        } else {
            statement.fetch_all(self.pool).await?
        };
        Ok(rows
            .into_iter()
            .map(|(row, key, materialization, output)| MemoAnswer {
                position: (row - 1) as usize,
                key,
                hit: materialization
                    .zip(output)
                    .map(|(materialization, output)| MemoHit { materialization, output }),
            })
            .collect())
    }
}

/// Ready steps of backfill runs (`--missing`, `--failed`) to decide, as the columns of
/// one statement: their cells and the upstream steps they read.
#[derive(Debug)]
pub struct CellQuery {
    runs: Vec<Uuid>,
    assets: Vec<String>,
    partitions: Vec<String>,
    points: Vec<String>,
    stale_before: Vec<Option<DateTime<Utc>>>,
    reads: ReadColumns,
    /// The moment freshness is judged at.
    now: DateTime<Utc>,
}

impl Default for CellQuery {
    fn default() -> Self {
        Self {
            runs: Vec::new(),
            assets: Vec::new(),
            partitions: Vec::new(),
            points: Vec::new(),
            stale_before: Vec::new(),
            reads: ReadColumns::default(),
            now: Utc::now(),
        }
    }
}

impl CellQuery {
    /// Adds `step` of `run`; its position is the number of steps added before.
    pub fn push(&mut self, run: Uuid, plan: &RunPlan, step: StepId) {
        let asset = &plan.plan().assets[plan.asset_index(step)];
        let (partition, point) = plan.partition_and_point(step);
        self.reads.push(self.runs.len() as i32, plan, step);
        self.runs.push(run);
        self.assets.push(asset.name.clone());
        self.partitions.push(partition.unwrap_or_default().to_owned());
        self.points.push(point_key(&point));
        // Older than this, by its asset's freshness policy (in this run's plan), it is stale.
        self.stale_before
            .push(asset.freshness.as_ref().and_then(|p| p.thresholds(self.now)).map(|t| t.stale_before));
    }

    pub fn len(&self) -> usize {
        self.runs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }
}

/// What the catalog holds of a ready step's cell ([`CellQuery`]), and whether a step it
/// reads ran in its run: what `plan::backfill::why_run` decides by.
#[derive(Debug, Clone)]
pub struct CellAnswer {
    /// The step's position in its query.
    pub position: usize,
    /// `None`: the catalog has no such cell.
    pub facts: Option<CellFacts>,
    /// The cell's current materialization's output, while its run is retained.
    pub output: Option<serde_json::Value>,
    pub upstream_runs: bool,
}

/// The columns a cell's facts are read from ([`CellFactRow`]): `c` is `catalog_cells`, `m`
/// its current materialization (both may be NULL), `s` the step that holds its output.
/// `f.stale_before` is the freshness threshold of the cell's asset (NULL without a policy).
const CELL_FACT_COLUMNS: &str = "c.asset IS NOT NULL AS known, c.status = 'failed' AS failed, \
     c.upstream_changed, m.id IS NOT NULL AS materialized, m.op_name, m.op_version, m.config_hash, \
     s.output IS NOT NULL AS retained, coalesce(c.materialized_at < f.stale_before, false) AS expired";

/// A cell's facts as read ([`CELL_FACT_COLUMNS`]); `known` is false when the catalog has no
/// such cell.
#[derive(Debug, sqlx::FromRow)]
struct CellFactRow {
    known: bool,
    failed: Option<bool>,
    upstream_changed: Option<bool>,
    materialized: bool,
    op_name: Option<String>,
    op_version: Option<String>,
    config_hash: Option<Vec<u8>>,
    retained: bool,
    expired: bool,
}

impl CellFactRow {
    fn facts(self) -> Option<CellFacts> {
        self.known.then(|| CellFacts {
            failed: self.failed.unwrap_or(false),
            upstream_changed: self.upstream_changed.unwrap_or(false),
            expired: self.expired,
            materialized: self.materialized.then(|| MaterializedBy {
                op_name: self.op_name.unwrap_or_default(),
                op_version: self.op_version.unwrap_or_default(),
                config_hash: self.config_hash.unwrap_or_default(),
                retained: self.retained,
            }),
        })
    }
}

/// A ready step's cell, as [`Catalog::cells_of`] reads it.
#[derive(Debug, sqlx::FromRow)]
struct AskedCellRow {
    row: i64,
    output: Option<serde_json::Value>,
    upstream_runs: bool,
    #[sqlx(flatten)]
    cell: CellFactRow,
}

/// A cell of an asset, as [`Catalog::cells_of_assets`] reads it.
#[derive(Debug, sqlx::FromRow)]
struct AssetCellRow {
    asset: String,
    partition: String,
    point: String,
    #[sqlx(flatten)]
    cell: CellFactRow,
}

impl Catalog<'_> {
    /// What the catalog holds of each step's cell in `query`, in one statement.
    pub async fn cells_of(&self, query: &CellQuery) -> Result<Vec<CellAnswer>, StoreError> {
        if query.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<AskedCellRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "WITH asked AS (
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $8::timestamptz[])
                     WITH ORDINALITY AS u(run_id, asset, partition, point, stale_before, row)
             ), ran AS (
                 SELECT DISTINCT r.row + 1 AS row
                 FROM UNNEST($5::int[], $6::int[], $7::int[]) AS r(row, first, last)
                 JOIN asked ON asked.row = r.row + 1
                 WHERE EXISTS (SELECT 1 FROM materializations u
                               WHERE u.run_id = asked.run_id AND u.step_id BETWEEN r.first AND r.last
                                 AND u.reused_from IS NULL)
             )
             SELECT a.row, s.output, ran.row IS NOT NULL AS upstream_runs, {CELL_FACT_COLUMNS}
             FROM asked a
             CROSS JOIN LATERAL (SELECT a.stale_before) f
             LEFT JOIN ran ON ran.row = a.row
             LEFT JOIN catalog_cells c ON c.asset = a.asset AND c.partition = a.partition AND c.point = a.point
             LEFT JOIN materializations m ON m.id = c.materialization
             LEFT JOIN steps s ON s.run_id = m.run_id AND s.id = m.step_id AND s.status = 'succeeded'"
        )))
        .persistent(query.len() <= CUSTOM_PLAN_ROWS)
        .bind(&query.runs)
        .bind(&query.assets)
        .bind(&query.partitions)
        .bind(&query.points)
        .bind(&query.reads.rows)
        .bind(&query.reads.first)
        .bind(&query.reads.last)
        .bind(&query.stale_before)
        .fetch_all(self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| CellAnswer {
                position: (r.row - 1) as usize,
                facts: r.cell.facts(),
                output: r.output,
                upstream_runs: r.upstream_runs,
            })
            .collect())
    }

    /// What the catalog holds of every cell of `assets`, keyed by (asset, partition,
    /// point): what `opflow plan check --missing` walks a plan against.
    /// `stale_before`: each asset's freshness threshold, by the plan's policies.
    pub async fn cells_of_assets(
        &self,
        assets: &[String],
        stale_before: &[Option<DateTime<Utc>>],
    ) -> Result<HashMap<(String, String, String), CellFacts>, StoreError> {
        let rows: Vec<AssetCellRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT c.asset, c.partition, c.point, {CELL_FACT_COLUMNS}
             FROM UNNEST($1::text[], $2::timestamptz[]) AS f(asset, stale_before)
             JOIN catalog_cells c ON c.asset = f.asset
             LEFT JOIN materializations m ON m.id = c.materialization
             LEFT JOIN steps s ON s.run_id = m.run_id AND s.id = m.step_id AND s.status = 'succeeded'"
        )))
        .bind(assets)
        .bind(stale_before)
        .fetch_all(self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| r.cell.facts().map(|facts| ((r.asset, r.partition, r.point), facts)))
            .collect())
    }
}

/// The newest result of one check of one cell (`catalog_checks`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CheckRow {
    pub partition: String,
    pub point: String,
    pub name: String,
    pub passed: bool,
    pub blocking: bool,
    pub detail: Option<String>,
    pub run_id: Uuid,
    pub step_id: i32,
    pub attempt: i32,
    pub at: DateTime<Utc>,
}

impl Catalog<'_> {
    /// An asset's check results (of one partition, or only the failed ones), failed first,
    /// then in cell and check order; at most `limit`.
    pub async fn checks(
        &self,
        asset: &str,
        partition: Option<&str>,
        failed_only: bool,
        limit: i64,
    ) -> Result<Vec<CheckRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT partition, point, name, passed, blocking, detail, run_id, step_id, attempt, at
             FROM catalog_checks
             WHERE asset = $1 AND ($2::text IS NULL OR partition = $2) AND (NOT $3 OR NOT passed)
             ORDER BY passed, partition, point, name
             LIMIT $4",
        )
        .bind(asset)
        .bind(partition)
        .bind(failed_only)
        .bind(limit)
        .fetch_all(self.pool)
        .await?)
    }
}

/// Declares a run's assets in the catalog, as this run defines them (in the submit's
/// transaction): the cells each asks for and the fingerprint of what computes them.
pub async fn declare(tx: &mut PgConnection, plan: &CompiledPlan) -> Result<(), StoreError> {
    let mut names = Vec::new();
    let mut op_names = Vec::new();
    let mut op_versions = Vec::new();
    let mut definitions = Vec::new();
    let mut cells = Vec::new();
    let mut partitions = Vec::new();
    let mut sweeps = Vec::new();
    let mut freshness = Vec::new();
    for asset in &plan.assets {
        let row = super::run_plan::RunAssetRow::from_asset(0, asset);
        names.push(asset.name.clone());
        op_names.push(asset.op_name.clone());
        op_versions.push(asset.op_version.to_string());
        definitions.push(
            Fingerprint::of_definition(&asset.op_name, &asset.op_version.to_string(), &asset.config)
                .as_bytes()
                .to_vec(),
        );
        cells.push(i64::from(asset.step_count()));
        partitions.push(row.partitions);
        sweeps.push(row.sweep);
        freshness.push(row.freshness);
    }
    sqlx::query(
        "INSERT INTO catalog_assets (name, plan_name, op_name, op_version, definition, cells, partitions, sweep,
                                     freshness)
         SELECT u.name, $1, u.op_name, u.op_version, u.definition, u.cells, u.partitions, u.sweep, u.freshness
         FROM UNNEST($2::text[], $3::text[], $4::text[], $5::bytea[], $6::bigint[], $7::jsonb[], $8::jsonb[],
                     $9::jsonb[])
             AS u(name, op_name, op_version, definition, cells, partitions, sweep, freshness)
         ORDER BY u.name
         ON CONFLICT (name) DO UPDATE
             SET plan_name = EXCLUDED.plan_name, op_name = EXCLUDED.op_name, op_version = EXCLUDED.op_version,
                 definition = EXCLUDED.definition, cells = EXCLUDED.cells, partitions = EXCLUDED.partitions,
                 sweep = EXCLUDED.sweep, updated_at = now(), freshness = EXCLUDED.freshness,
                 -- Another policy: its breaches are looked for afresh (each still recorded once).
                 freshness_checked_until = CASE WHEN catalog_assets.freshness IS NOT DISTINCT FROM EXCLUDED.freshness
                                                THEN catalog_assets.freshness_checked_until END",
    )
    .bind(&plan.name)
    .bind(&names)
    .bind(&op_names)
    .bind(&op_versions)
    .bind(&definitions)
    .bind(&cells)
    .bind(&partitions)
    .bind(&sweeps)
    .bind(&freshness)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// An asset's state in the catalog, counted over its cells.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AssetSummaryRow {
    pub name: String,
    pub plan_name: String,
    pub op_name: String,
    pub op_version: String,
    /// Cells its latest definition asks for.
    pub cells: i64,
    /// Materialized under its current definition, with unchanged inputs.
    pub fresh: i64,
    /// Materialized, but under another definition or from inputs replaced since.
    pub stale: i64,
    pub failed: i64,
    /// Cells in the catalog at all (to tell how many are missing).
    pub known: i64,
    pub latest_at: Option<DateTime<Utc>>,
    /// Its freshness policy, and its materialized cells counted by freshness under it.
    #[sqlx(skip)]
    pub freshness: Option<FreshnessCounts>,
}

/// An asset's materialized cells by freshness, under its policy.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct FreshnessCounts {
    #[sqlx(skip)]
    pub policy: String,
    pub fresh: i64,
    pub warn: i64,
    pub stale: i64,
}

/// One cell's latest state.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CellRow {
    pub partition: String,
    pub point: String,
    /// `materialized`, `stale` or `failed`.
    pub status: String,
    pub materialization: Option<i64>,
    pub failed_run: Option<Uuid>,
    pub failed_step: Option<i32>,
    pub error: Option<String>,
    pub updated_at: DateTime<Utc>,
    /// When its current materialization was made: what its freshness is judged by.
    pub materialized_at: Option<DateTime<Utc>>,
}

/// Cells whose current materialization was made in `[from, until)` (either end open when
/// `None`): a freshness state, as [`crate::plan::freshness::Thresholds`] bound it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MadeBetween {
    pub from: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// One materialization.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MaterializationRow {
    pub id: i64,
    pub asset: String,
    pub partition: String,
    pub point: String,
    pub op_name: String,
    pub op_version: String,
    pub config_hash: Vec<u8>,
    pub inputs: Vec<i64>,
    pub run_id: Uuid,
    pub step_id: i32,
    pub attempt: i32,
    pub at: DateTime<Utc>,
    pub output_digest: Vec<u8>,
    pub metadata: serde_json::Value,
    /// The materialization this step was satisfied from, when it was reused.
    pub reused_from: Option<i64>,
}

/// One materialization in a lineage walk, and how many hops it is from where the walk began.
#[derive(Debug, Clone)]
pub struct LineageRow {
    pub depth: i32,
    pub materialization: MaterializationRow,
}

/// Which status of cells to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellFilter {
    Any,
    Materialized,
    Stale,
    Failed,
}

/// Which way a lineage walk goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// What it read, and what those read.
    Upstream,
    /// What read it, and what read those.
    Downstream,
}

/// The most materializations a lineage walk returns.
pub const MAX_LINEAGE_ROWS: i64 = 1_000;
/// The most hops a lineage walk takes.
pub const MAX_LINEAGE_DEPTH: i32 = 64;

const MATERIALIZATION_COLUMNS: &str = "m.id, m.asset, m.partition, m.point, m.op_name, m.op_version, \
     m.config_hash, m.inputs, m.run_id, m.step_id, m.attempt, m.at, m.output_digest, m.metadata, m.reused_from";

/// Reading the catalog (`store.catalog()`).
#[derive(Clone, Copy)]
pub struct Catalog<'a> {
    pool: &'a sqlx::PgPool,
}

impl Store {
    /// The asset catalog.
    pub fn catalog(&self) -> Catalog<'_> {
        Catalog { pool: &self.pool }
    }
}

impl Catalog<'_> {
    /// Every asset's summary (or only `name`'s), by name. Each is one range of
    /// `catalog_cells`' primary key.
    pub async fn summaries(&self, name: Option<&str>) -> Result<Vec<AssetSummaryRow>, StoreError> {
        let mut rows = self.summaries_without_freshness(name).await?;
        let named = name.map(|n| vec![n.to_owned()]);
        let policies =
            super::freshness::Freshness { pool: self.pool }.policies(named.as_deref(), Utc::now()).await?;
        if policies.is_empty() {
            return Ok(rows);
        }
        let cols = ThresholdColumns::of(&policies);
        let counts: Vec<(String, i64, i64, i64)> = sqlx::query_as(
            "SELECT f.asset,
                    count(c.asset) FILTER (WHERE c.materialized_at >= f.warn_before) AS fresh,
                    count(c.asset) FILTER (WHERE c.materialized_at >= f.stale_before
                                             AND c.materialized_at < f.warn_before) AS warn,
                    count(c.asset) FILTER (WHERE c.materialized_at < f.stale_before) AS stale
             FROM UNNEST($1::text[], $2::timestamptz[], $3::timestamptz[]) AS f(asset, stale_before, warn_before)
             LEFT JOIN catalog_cells c ON c.asset = f.asset AND c.materialized_at IS NOT NULL
             GROUP BY f.asset",
        )
        .bind(&cols.assets)
        .bind(&cols.stale_before)
        .bind(&cols.warn_before)
        .fetch_all(self.pool)
        .await?;
        for policy in policies {
            let Some(row) = rows.iter_mut().find(|r| r.name == policy.asset) else { continue };
            let (fresh, warn, stale) = counts
                .iter()
                .find(|c| c.0 == policy.asset)
                .map_or((0, 0, 0), |&(_, fresh, warn, stale)| (fresh, warn, stale));
            row.freshness = Some(FreshnessCounts { policy: policy.policy.to_string(), fresh, warn, stale });
        }
        Ok(rows)
    }

    /// Whether a run declared asset `name`: one primary-key lookup.
    pub async fn declared(&self, name: &str) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM catalog_assets WHERE name = $1)")
            .bind(name)
            .fetch_one(self.pool)
            .await?)
    }

    async fn summaries_without_freshness(
        &self,
        name: Option<&str>,
    ) -> Result<Vec<AssetSummaryRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT a.name, a.plan_name, a.op_name, a.op_version, a.cells,
                    coalesce(s.fresh, 0) AS fresh, coalesce(s.stale, 0) AS stale,
                    coalesce(s.failed, 0) AS failed, coalesce(s.known, 0) AS known, s.latest_at
             FROM catalog_assets a
             LEFT JOIN LATERAL (
                 SELECT count(*) FILTER (WHERE c.status = 'materialized' AND c.definition = a.definition
                                               AND NOT c.upstream_changed) AS fresh,
                        count(*) FILTER (WHERE c.status = 'materialized' AND (c.definition <> a.definition
                                               OR c.upstream_changed)) AS stale,
                        count(*) FILTER (WHERE c.status = 'failed') AS failed,
                        count(*) AS known,
                        max(c.updated_at) FILTER (WHERE c.status = 'materialized') AS latest_at
                 FROM catalog_cells c WHERE c.asset = a.name
             ) s ON true
             WHERE $1::text IS NULL OR a.name = $1
             ORDER BY a.name",
        )
        .bind(name)
        .fetch_all(self.pool)
        .await?)
    }

    /// A page of an asset's cells in (partition, point) order, after `after`.
    pub async fn cells(
        &self,
        asset: &str,
        filter: CellFilter,
        partition: Option<&str>,
        made: Option<MadeBetween>,
        after: Option<(&str, &str)>,
        limit: u32,
    ) -> Result<Vec<CellRow>, StoreError> {
        let (after_partition, after_point) = after.unzip();
        Ok(sqlx::query_as(
            "SELECT c.partition, c.point,
                    CASE WHEN c.status = 'failed' THEN 'failed'
                         WHEN c.definition <> a.definition OR c.upstream_changed THEN 'stale'
                         ELSE 'materialized' END AS status,
                    c.materialization, c.failed_run, c.failed_step, c.error, c.updated_at, c.materialized_at
             FROM catalog_cells c JOIN catalog_assets a ON a.name = c.asset
             WHERE c.asset = $1
               AND ($2::text IS NULL OR c.partition = $2)
               AND ($3::text IS NULL OR (c.partition, c.point) > ($3, $4::text))
               AND CASE $5::text
                     WHEN 'failed' THEN c.status = 'failed'
                     WHEN 'stale' THEN c.status = 'materialized' AND (c.definition <> a.definition OR c.upstream_changed)
                     WHEN 'materialized' THEN c.status = 'materialized' AND c.definition = a.definition
                                              AND NOT c.upstream_changed
                     ELSE true END
               AND (NOT $7 OR (c.materialized_at IS NOT NULL
                               AND c.materialized_at >= coalesce($8, '-infinity'::timestamptz)
                               AND c.materialized_at < coalesce($9, 'infinity'::timestamptz)))
             ORDER BY c.partition, c.point
             LIMIT $6",
        )
        .bind(asset)
        .bind(partition)
        .bind(after_partition)
        .bind(after_point)
        .bind(match filter {
            CellFilter::Any => "any",
            CellFilter::Materialized => "materialized",
            CellFilter::Stale => "stale",
            CellFilter::Failed => "failed",
        })
        .bind(i64::from(limit))
        .bind(made.is_some())
        .bind(made.and_then(|m| m.from))
        .bind(made.and_then(|m| m.until))
        .fetch_all(self.pool)
        .await?)
    }

    /// A cell's materializations, newest first, at most `limit`; `point` `None` for every
    /// point of the partition.
    pub async fn history(
        &self,
        asset: &str,
        partition: &str,
        point: Option<&str>,
        limit: u32,
    ) -> Result<Vec<MaterializationRow>, StoreError> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {MATERIALIZATION_COLUMNS} FROM materializations m
             WHERE m.asset = $1 AND m.partition = $2 AND ($3::text IS NULL OR m.point = $3)
             ORDER BY m.id DESC LIMIT $4"
        )))
        .bind(asset)
        .bind(partition)
        .bind(point)
        .bind(i64::from(limit))
        .fetch_all(self.pool)
        .await?)
    }

    /// The latest materializations of an asset's cells in `partition` (every partition when
    /// `None`), at most `limit`.
    pub async fn latest(
        &self,
        asset: &str,
        partition: Option<&str>,
        limit: u32,
    ) -> Result<Vec<MaterializationRow>, StoreError> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {MATERIALIZATION_COLUMNS} FROM catalog_cells c JOIN materializations m ON m.id = c.materialization
             WHERE c.asset = $1 AND ($2::text IS NULL OR c.partition = $2)
             ORDER BY c.partition, c.point LIMIT $3"
        )))
        .bind(asset)
        .bind(partition)
        .bind(i64::from(limit))
        .fetch_all(self.pool)
        .await?)
    }

    /// What `from` read (upstream) or what read them (downstream), transitively, nearest
    /// first: at most [`MAX_LINEAGE_ROWS`] materializations within [`MAX_LINEAGE_DEPTH`] hops.
    pub async fn lineage(&self, from: &[i64], direction: Direction) -> Result<Vec<LineageRow>, StoreError> {
        let step = match direction {
            Direction::Upstream => {
                "JOIN materializations p ON p.id = w.id JOIN materializations m ON m.id = ANY(p.inputs)"
            }
            Direction::Downstream => "JOIN materializations m ON m.inputs @> ARRAY[w.id]",
        };
        let rows: Vec<LineageDbRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "WITH RECURSIVE walk(id, depth) AS (
                 SELECT unnest($1::bigint[]), 0
                 UNION
                 SELECT m.id, w.depth + 1 FROM walk w {step} WHERE w.depth < $2
             ), nearest AS (
                 SELECT id, min(depth) AS depth FROM walk WHERE depth > 0 GROUP BY id
             )
             SELECT n.depth, {MATERIALIZATION_COLUMNS} FROM nearest n JOIN materializations m ON m.id = n.id
             ORDER BY n.depth, m.asset, m.partition, m.point, m.id LIMIT $3"
        )))
        .bind(from)
        .bind(MAX_LINEAGE_DEPTH)
        .bind(MAX_LINEAGE_ROWS)
        .fetch_all(self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| LineageRow { depth: row.depth, materialization: row.materialization })
            .collect())
    }
}

#[derive(sqlx::FromRow)]
struct LineageDbRow {
    depth: i32,
    #[sqlx(flatten)]
    materialization: MaterializationRow,
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use opflow_protocol::RunId;
    use serde_json::json;

    use super::*;
    use crate::{
        plan::{self, RegisteredOp},
        store::run_plan::UnlockMode,
    };

    fn run_plan(source: &str) -> RunPlan {
        let registered = [RegisteredOp { name: "noop".into(), version: "1.0.0".parse().unwrap() }];
        let plan = plan::compile(source, Path::new("p.yaml"), &registered).unwrap();
        RunPlan::new(plan, UnlockMode::Groups).unwrap()
    }

    const PLAN: &str = "name: p
assets:
  - name: prices
    op: noop@1.0.0
    partitions: [aave, compound]
    sweep: {vol: [0.2, 0.4]}
    config: {n: 1}
  - name: report
    op: noop@1.0.0
    deps: [prices]
    partitions: [aave, compound]
";

    #[test]
    fn only_declared_checks_enter_the_catalog() {
        let plan = run_plan(
            "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    checks:\n      - {name: rows, blocking: true}\n",
        );
        let check = |name: &str| {
            Event::new(
                RunId::new(),
                StepId(0),
                1,
                "w",
                EventKind::CheckResult { name: name.into(), passed: false, detail: None },
            )
        };
        let mut cols = CatalogColumns::default();
        cols.check(&plan, &check("rows"));
        cols.check(&plan, &check("invented-by-the-op"));
        assert_eq!(cols.checks.names, ["rows"]);
        assert_eq!(cols.checks.blocking, [true]);
    }

    fn success(step: u32, output: serde_json::Value) -> Event {
        Event::new(RunId::new(), StepId(step), 1, "w", EventKind::Succeeded { output })
    }

    #[test]
    fn a_success_is_keyed_by_its_cell_and_reads_its_upstream_steps() {
        let plan = run_plan(PLAN);
        let run = Uuid::new_v4();
        let mut cols = CatalogColumns::default();
        // Step 1: prices[aave]{vol: 0.4}; step 4: report[aave], which reads steps 0 and 1.
        cols.succeeded(run, &plan, StepId(1), &success(1, json!({"x": 1})));
        cols.succeeded(run, &plan, StepId(4), &success(4, json!({"x": 1})));
        assert_eq!(cols.assets, ["prices", "report"]);
        assert_eq!(cols.partitions, ["aave", "aave"]);
        assert_eq!(cols.points, [r#"{"vol":0.4}"#, ""]);
        assert_eq!(cols.op_versions, ["1.0.0", "1.0.0"]);
        assert_eq!(
            (cols.reads.rows.as_slice(), cols.reads.first.as_slice(), cols.reads.last.as_slice()),
            (&[1][..], &[0][..], &[1][..])
        );
        // Same output, same digest; other cells, other effective configs.
        assert_eq!(cols.output_digests[0], cols.output_digests[1]);
        assert_ne!(cols.config_hashes[0], cols.config_hashes[1]);
        assert!(!cols.is_empty());
    }

    #[test]
    fn a_definition_is_the_assets_not_the_steps() {
        let plan = run_plan(PLAN);
        let run = Uuid::new_v4();
        let mut cols = CatalogColumns::default();
        cols.succeeded(run, &plan, StepId(0), &success(0, json!(1)));
        cols.succeeded(run, &plan, StepId(3), &success(3, json!(2)));
        assert_eq!(cols.definitions[0], cols.definitions[1], "two cells of one asset, one definition");
        assert_ne!(cols.config_hashes[0], cols.config_hashes[1]);
        assert_ne!(cols.output_digests[0], cols.output_digests[1]);
    }

    #[test]
    fn a_failure_names_its_cell_and_a_storable_error() {
        let plan = run_plan(PLAN);
        let mut cols = CatalogColumns::default();
        cols.failed(Uuid::new_v4(), &plan, StepId(5), "boom\0");
        assert_eq!(cols.failed_assets, ["report"]);
        assert_eq!(cols.failed_partitions, ["compound"]);
        assert_eq!(cols.failed_points, [""]);
        assert!(!cols.failed_errors[0].contains('\0'), "{:?}", cols.failed_errors);
        assert!(cols.runs.is_empty() && !cols.is_empty());
    }

    #[test]
    fn only_a_success_is_a_materialization() {
        let plan = run_plan(PLAN);
        let mut cols = CatalogColumns::default();
        let failed = Event::new(
            RunId::new(),
            StepId(0),
            1,
            "w",
            EventKind::Failed { error: "e".into(), retryable: false },
        );
        cols.succeeded(Uuid::new_v4(), &plan, StepId(0), &failed);
        assert!(cols.is_empty());
    }
}
