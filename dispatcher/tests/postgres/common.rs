//! A database of its own for each test, on the server the tests use (`OPFLOW_TEST_PG`,
//! default `postgres://postgres@127.0.0.1:5432`), dropped when the test ends.

use std::path::Path;

use opflow_dispatcher::{
    plan::{self, CompiledPlan, RegisteredOp},
    store::{
        Store,
        lease::{LeaderStore, Lease},
    },
};
use opflow_process::SecretUrl;
use opflow_protocol::RunId;
use tokio_util::sync::CancellationToken;

/// The PostgreSQL server the tests use.
pub fn server() -> String {
    std::env::var("OPFLOW_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A fresh database name for `test`.
pub fn database_name(test: &str) -> String {
    format!("opflow_u_{test}_{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

pub struct TestDb {
    pub store: Store,
    /// The same store as this test's leader: its lease is held until the test ends.
    pub leader: LeaderStore,
    _lease: Lease,
    _drop: DropDatabase,
}

impl TestDb {
    pub async fn new(test: &str) -> TestDb {
        Self::with_url_options(test, "").await
    }

    /// As [`TestDb::new`], with `options` (`?…`) on the URL every connection uses.
    pub async fn with_url_options(test: &str, options: &str) -> TestDb {
        let name = database_name(test);
        let drop = DropDatabase(name.clone());
        let url = SecretUrl::new(format!("{}/{name}{options}", server()));
        let store = Store::connect(&url, &CancellationToken::new())
            .await
            .unwrap_or_else(|e| panic!("a test database on {} (is PostgreSQL running?): {e}", server()));
        let lease =
            Lease::acquire(&store, &CancellationToken::new()).await.expect("the lease of a fresh database");
        TestDb { leader: lease.store(), store, _lease: lease, _drop: drop }
    }
}

/// Drops its database when dropped (after the test's connections, declared before it).
pub struct DropDatabase(pub String);

impl Drop for DropDatabase {
    fn drop(&mut self) {
        // Drop runs outside async context: use psql, synchronously.
        let _ = std::process::Command::new("psql")
            .args([&format!("{}/postgres", server()), "-q", "-c"])
            .arg(format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.0))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// The op version every test plan runs.
pub fn noop() -> [RegisteredOp; 1] {
    [RegisteredOp { name: "noop".into(), version: "1.0.0".parse().unwrap() }]
}

/// `source` compiled against [`noop`].
pub fn compile(source: &str) -> CompiledPlan {
    plan::compile(source, Path::new("p.yaml"), &noop()).unwrap()
}

/// Submits `source` as a run.
pub async fn submit(db: &TestDb, source: &str) -> RunId {
    db.store.runs().submit(&compile(source), "p.yaml", source, None).await.unwrap().run_id
}

/// Fails unless every asset's counts (`asset_progress`, kept by triggers on `steps`) are
/// its steps counted by status, for every run of the database: whatever changed a status.
pub async fn assert_counts_kept(db: &TestDb) {
    let wrong: Vec<(uuid::Uuid, i32, String, String)> = sqlx::query_as(
        "WITH counted AS (
             SELECT run_id, asset,
                    jsonb_build_object(
                        'waiting', count(*) FILTER (WHERE status = 'waiting'),
                        'queued', count(*) FILTER (WHERE status = 'queued'),
                        'running', count(*) FILTER (WHERE status = 'running'),
                        'retrying', count(*) FILTER (WHERE status = 'retrying'),
                        'succeeded', count(*) FILTER (WHERE status = 'succeeded'),
                        'failed', count(*) FILTER (WHERE status = 'failed'),
                        'skipped', count(*) FILTER (WHERE status = 'skipped'),
                        'canceled', count(*) FILTER (WHERE status = 'canceled')) AS counts,
                    count(*) AS steps
             FROM steps GROUP BY run_id, asset
         )
         SELECT p.run_id, p.asset, c.counts::text,
                jsonb_build_object('waiting', p.waiting, 'queued', p.queued, 'running', p.running,
                                   'retrying', p.retrying, 'succeeded', p.succeeded, 'failed', p.failed,
                                   'skipped', p.skipped, 'canceled', p.canceled)::text
         FROM asset_progress p JOIN counted c ON c.run_id = p.run_id AND c.asset = p.asset
         WHERE c.counts <> jsonb_build_object('waiting', p.waiting, 'queued', p.queued, 'running', p.running,
                                              'retrying', p.retrying, 'succeeded', p.succeeded,
                                              'failed', p.failed, 'skipped', p.skipped, 'canceled', p.canceled)
            OR c.steps <> p.steps",
    )
    .fetch_all(db.store.pool())
    .await
    .unwrap();
    assert!(wrong.is_empty(), "asset counts (run, asset, counted, kept) differ from the steps: {wrong:?}");
    let missing: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM run_assets a
         WHERE NOT EXISTS (SELECT 1 FROM asset_progress p WHERE p.run_id = a.run_id AND p.asset = a.idx)",
    )
    .fetch_one(db.store.pool())
    .await
    .unwrap();
    assert_eq!(missing, 0, "every asset of every run has its counts");
}
