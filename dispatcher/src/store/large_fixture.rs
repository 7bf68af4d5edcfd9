//! A large store, built in seconds: one run of 10,000 assets × 10 steps (a chain, 40 %
//! done, one asset running, a few failed steps, the rest waiting) with about 200,000
//! events, and 10,000 finished runs. `opflow bench api` times the API against it, and the
//! bounded-cost tests check that every read of a followed run costs a page against it.
//!
//! The run is submitted as any run is; its progress is then written directly, as a
//! dispatcher that had run it that far would have left it. Finished runs are rows of
//! `runs` only.

use opflow_protocol::RunId;

use super::{Store, StoreError};
use crate::plan::{self, RegisteredOp};

/// How large a fixture to build.
#[derive(Debug, Clone, Copy)]
pub struct FixtureSize {
    /// Assets of the large run, a chain.
    pub assets: u32,
    /// Steps of each asset (a sweep).
    pub steps_per_asset: u32,
    /// Finished runs besides it.
    pub finished_runs: u32,
}

impl FixtureSize {
    /// The size the issue of bounded reads names: 10,000 assets, 100,000 steps, 10,000 runs.
    pub const FULL: FixtureSize = FixtureSize { assets: 10_000, steps_per_asset: 10, finished_runs: 10_000 };
}

/// What was built, for the readers to aim at.
#[derive(Debug, Clone)]
pub struct LargeFixture {
    pub run: RunId,
    pub size: FixtureSize,
    /// The asset in the middle of the chain (done), and the one running.
    pub middle_asset: String,
    pub running_asset: String,
    /// The op every step runs, registered.
    pub op: opflow_protocol::OpRef,
}

/// The name of asset `i` (from 1) of the chain.
pub fn asset_name(i: u32) -> String {
    format!("a{i:05}")
}

/// The chain plan: each asset a sweep of `steps_per_asset`, depending on the one before.
pub fn chain_plan(size: FixtureSize) -> String {
    let mut plan = String::from("name: large\nassets:\n");
    for i in 1..=size.assets {
        plan.push_str(&format!(
            "  - name: {}\n    op: noop@^1\n    sweep: {{i: {{from: 1, to: {}}}}}\n",
            asset_name(i),
            size.steps_per_asset
        ));
        if i > 1 {
            plan.push_str(&format!("    deps: [{}]\n", asset_name(i - 1)));
        }
    }
    plan
}

/// Builds the fixture in `store` (a database of its own: it adds 10,000 runs).
pub async fn build(store: &Store, size: FixtureSize) -> Result<LargeFixture, StoreError> {
    let op = "noop@1.0.0"
        .parse::<opflow_protocol::OpRef>()
        .map_err(|e| StoreError::Corrupt("ops".into(), e.to_string()))?;
    sqlx::query(
        "INSERT INTO ops (name, version, queue, queue_type, delivery_limit, description)
         VALUES ('noop', '1.0.0', 'opflow.op.noop.1.0.0', 'quorum', 5, '{}') ON CONFLICT DO NOTHING",
    )
    .execute(&store.pool)
    .await?;
    let source = chain_plan(size);
    let registered = [RegisteredOp { name: "noop".into(), version: semver::Version::new(1, 0, 0) }];
    let compiled = plan::compile(&source, std::path::Path::new("large.yaml"), &registered)
        .map_err(|e| StoreError::Corrupt("large.yaml".into(), format!("{e:?}")))?;
    let run = store.runs().submit(&compiled, "large.yaml", &source, None).await?.run_id;
    let per = i64::from(size.steps_per_asset);
    let done_steps = i64::from(size.assets) * 4 / 10 * per;
    let running = (done_steps, done_steps + per);
    let mut tx = store.pool.begin().await?;
    // Nothing of it is to be published: no dispatcher runs it.
    sqlx::query("DELETE FROM outbox WHERE run_id = $1").bind(run.as_uuid()).execute(&mut *tx).await?;
    sqlx::query(
        "UPDATE steps SET status = CASE WHEN id % 997 = 5 THEN 'failed'::step_status ELSE 'succeeded' END,
                          output = CASE WHEN id % 997 = 5 THEN NULL ELSE jsonb_build_object('v', id) END,
                          error = CASE WHEN id % 997 = 5 THEN 'the model diverged at iteration ' || id END,
                          pending_upstream = 0, worker = 'noop@1.0.0/bench/1',
                          queued_at = now() - interval '1 hour', started_at = now() - interval '1 hour',
                          finished_at = now() - interval '30 minutes'
         WHERE run_id = $1 AND id < $2",
    )
    .bind(run.as_uuid())
    .bind(done_steps)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE steps SET status = CASE WHEN id < $2 + 5 THEN 'running'::step_status ELSE 'queued' END,
                          pending_upstream = 0, queued_at = now(),
                          started_at = CASE WHEN id < $2 + 5 THEN now() END,
                          worker = CASE WHEN id < $2 + 5 THEN 'noop@1.0.0/bench/' || (id % 4) END
         WHERE run_id = $1 AND id >= $2 AND id < $3",
    )
    .bind(run.as_uuid())
    .bind(running.0)
    .bind(running.1)
    .execute(&mut *tx)
    .await?;
    // Five events per finished step: started, two progress, a log line, the result.
    sqlx::query(
        "INSERT INTO events (id, run_id, step_id, attempt, kind, body, worker, at, seq, applied)
         SELECT gen_random_uuid(), $1, s.id, 1, k.kind,
                CASE k.kind
                    WHEN 'progress' THEN jsonb_build_object('fraction', k.n * 0.4, 'message', 'halfway')
                    WHEN 'log' THEN jsonb_build_object('level', 'info', 'message', 'step ' || s.id)
                    WHEN 'succeeded' THEN jsonb_build_object('output', jsonb_build_object('v', s.id))
                    WHEN 'failed' THEN jsonb_build_object('error', s.error, 'retryable', false)
                    ELSE '{}'::jsonb END,
                'noop@1.0.0/bench/1', now() - interval '1 hour',
                s.id::bigint * 5 + k.n, k.kind IN ('started', 'succeeded', 'failed')
         FROM steps s
         CROSS JOIN LATERAL (VALUES (1, 'started'), (2, 'progress'), (3, 'log'), (4, 'progress'),
                                    (5, CASE WHEN s.status = 'failed' THEN 'failed' ELSE 'succeeded' END))
             AS k(n, kind)
         WHERE s.run_id = $1 AND s.id < $2",
    )
    .bind(run.as_uuid())
    .bind(done_steps)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE runs SET status = 'running', started_at = now() - interval '1 hour', event_seq = $2 * 5,
                         steps_succeeded = (SELECT sum(succeeded) FROM asset_progress WHERE run_id = $1),
                         steps_failed = (SELECT sum(failed) FROM asset_progress WHERE run_id = $1)
         WHERE id = $1",
    )
    .bind(run.as_uuid())
    .bind(done_steps)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO runs (id, key, plan_name, plan_file, plan_source, status, steps_total, steps_succeeded,
                           created_at, started_at, finished_at)
         SELECT gen_random_uuid(), 'nightly-' || g, 'nightly', 'nightly.yaml', '', 
                CASE WHEN g % 50 = 0 THEN 'failed'::run_status ELSE 'succeeded' END, 10, 10,
                now() - g * interval '1 minute', now() - g * interval '1 minute',
                now() - g * interval '1 minute' + interval '20 seconds'
         FROM generate_series(1, $1) g",
    )
    .bind(i64::from(size.finished_runs))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    // As autovacuum leaves a store between bursts: dead row versions of the progress just
    // written cleaned up, statistics fresh.
    sqlx::query("VACUUM (ANALYZE)").execute(&store.pool).await?;
    let middle = size.assets / 5;
    Ok(LargeFixture {
        run,
        size,
        middle_asset: asset_name(middle.max(1)),
        running_asset: asset_name(size.assets * 4 / 10 + 1),
        op,
    })
}

/// Tells the run's followers that it recorded events, as applying a batch does (its event
/// number bumped, the events channel notified), without recording any: what a busy run
/// looks like to a live page, for `opflow bench api`.
pub async fn record_nothing(store: &Store, run: RunId) -> Result<(), StoreError> {
    let mut tx = store.pool().begin().await?;
    sqlx::query("UPDATE runs SET event_seq = event_seq + 1 WHERE id = $1")
        .bind(run.as_uuid())
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(super::EVENTS_CHANNEL)
        .bind(run.to_string())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}
