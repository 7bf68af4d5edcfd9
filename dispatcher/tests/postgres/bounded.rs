//! Every read of a followed run costs a page, not the run: each statement behind the API's
//! reads, against a store of a 100,000-step, 10,000-asset run and 10,000 finished runs
//! (`store::large_fixture`), reads at most a bound of rows — table rows and index entries,
//! as PostgreSQL's statistics count them — far below the 100,000 a scan of the run's steps
//! would. Rows, not milliseconds: the count does not depend on how busy the machine is, and
//! a statement whose plan turns into a scan fails here however fast it ran.

use std::future::Future;

use opflow_dispatcher::store::{
    Store, StoreError,
    following::{AssetQuery, AssetState, EventFilter, RunFilter},
    large_fixture::{self, FixtureSize, LargeFixture},
    runs::{RunStatus, StepStatus},
};

use super::common::TestDb;

/// Rows (table rows and index entries) a read passed, and what it answered. `store` must
/// have a single connection: the statistics flushed are that backend's.
async fn rows_read<T>(store: &Store, read: impl Future<Output = Result<T, StoreError>>) -> (T, i64) {
    let pool = store.pool();
    let run = |sql: &'static str| sqlx::query(sql).execute(pool);
    // Whatever this connection did before is counted before the reset, not after.
    run("SELECT pg_stat_force_next_flush()").await.unwrap();
    run("SELECT 1").await.unwrap();
    run("SELECT pg_stat_reset()").await.unwrap();
    let answer = read.await.unwrap();
    run("SELECT pg_stat_force_next_flush()").await.unwrap();
    run("SELECT 1").await.unwrap();
    let rows: i64 = sqlx::query_scalar(
        "SELECT (SELECT coalesce(sum(seq_tup_read), 0) FROM pg_stat_user_tables)::bigint
              + (SELECT coalesce(sum(idx_tup_read), 0) FROM pg_stat_user_indexes)::bigint",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    (answer, rows)
}

/// Fails when `rows` is over `bound`, naming the read.
fn within(what: &str, rows: i64, bound: i64) {
    println!("{what:<48} {rows:>7} rows read (bound {bound})");
    assert!(rows <= bound, "{what} read {rows} rows, over its bound of {bound}: a statement scans");
}

/// The fixture, once per test (a few seconds to build).
async fn fixture(test: &str) -> (TestDb, Store, LargeFixture) {
    let db = TestDb::new(test).await;
    let fixture = large_fixture::build(&db.store, FixtureSize::FULL).await.unwrap();
    let single = db.store.with_own_pool(1, std::time::Duration::from_secs(600));
    (db, single, fixture)
}

#[tokio::test]
async fn every_read_of_a_followed_run_costs_a_page_not_the_run() {
    let (_db, store, f) = fixture("bounded_reads").await;
    let run = f.run;
    let following = store.following();
    let page = 100;

    // A scan would read every step: the fixture is large enough for the bounds to mean it.
    let (_, scan) = rows_read(&store, async {
        Ok(sqlx::query_scalar::<_, i64>("SELECT count(*) FROM steps WHERE run_id = $1 AND output IS NULL")
            .bind(run.as_uuid())
            .fetch_one(store.pool())
            .await?)
    })
    .await;
    assert!(scan >= 100_000, "a scan of the run's steps read {scan} rows; the fixture is too small");

    // The run's summary: its row, its assets' counts (one narrow row per asset), the
    // first failures.
    let (summary, rows) = rows_read(&store, store.runs().summary(run)).await;
    let summary = summary.unwrap();
    assert_eq!(summary.steps.total, 100_000);
    assert_eq!((summary.assets.total, summary.assets.done, summary.assets.running), (10_000, 4_000, 1));
    assert_eq!(summary.steps.waiting, 100_000 - 40_010);
    assert_eq!(summary.failures.len(), 10);
    within("summary", rows, 10_000 + 200);

    // Assets: pages in plan order, of each state, the busiest, the leaves.
    let plan_order = AssetQuery::default();
    let (assets, rows) = rows_read(&store, following.assets(run, plan_order, None, page)).await;
    assert_eq!(assets.len(), 100);
    within("assets, first page", rows, 4 * i64::from(page));
    let (assets, rows) = rows_read(&store, following.assets(run, plan_order, Some(5_000), page)).await;
    assert_eq!(assets[0].idx, 5_001);
    within("assets, a middle page", rows, 4 * i64::from(page));
    for state in [AssetState::Running, AssetState::Waiting, AssetState::Done] {
        let query = AssetQuery { state: Some(state), ..AssetQuery::default() };
        let (assets, rows) = rows_read(&store, following.assets(run, query, None, page)).await;
        assert!(assets.iter().all(|a| a.state() == state), "{state:?}");
        assert!(!assets.is_empty(), "{state:?}");
        within(&format!("assets, {state:?}"), rows, 4 * i64::from(page));
        let (_, rows) = rows_read(&store, following.assets(run, query, Some(7_000), page)).await;
        within(&format!("assets, {state:?}, a middle page"), rows, 4 * i64::from(page));
    }
    let busiest = AssetQuery { state: Some(AssetState::Running), busiest: true, ..AssetQuery::default() };
    let (assets, rows) = rows_read(&store, following.assets(run, busiest, None, 10)).await;
    assert_eq!(assets.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), [f.running_asset.as_str()]);
    within("assets, busiest", rows, 100);
    let leaves = AssetQuery { leaf: Some(true), ..AssetQuery::default() };
    let (assets, rows) = rows_read(&store, following.assets(run, leaves, None, 10)).await;
    assert_eq!(assets.len(), 1);
    within("assets, leaves", rows, 100);

    // Steps: by id, of one asset, of one status, both.
    let (steps, rows) = rows_read(&store, following.steps(run, None, None, None, page)).await;
    assert_eq!(steps.len(), 100);
    within("steps, first page", rows, 4 * i64::from(page));
    let (steps, rows) = rows_read(&store, following.steps(run, None, None, Some(60_000), page)).await;
    assert_eq!(steps[0].step_id, 60_001);
    within("steps, a middle page", rows, 4 * i64::from(page));
    let (range, rows) = rows_read(&store, following.asset_steps(run, &f.middle_asset)).await;
    let range = range.expect("the middle asset");
    within("an asset's steps", rows, 10);
    let (steps, rows) = rows_read(&store, following.steps(run, Some(range), None, None, page)).await;
    assert_eq!(steps.len(), 10);
    within("steps of an asset", rows, 100);
    let failed = Some(StepStatus::Failed);
    let (steps, rows) = rows_read(&store, following.steps(run, None, failed, None, page)).await;
    assert_eq!(steps.len(), 41, "every 997th of the 40,000 done steps failed");
    within("steps, failed", rows, 4 * i64::from(page));
    let running = Some(StepStatus::Running);
    let (steps, rows) = rows_read(&store, following.steps(run, None, running, Some(20_000), page)).await;
    assert_eq!(steps.len(), 5);
    within("steps, running, after a middle one", rows, 100);
    let (_, rows) = rows_read(&store, following.steps(run, Some(range), failed, None, page)).await;
    within("steps of an asset, failed", rows, 100);

    // Outputs and their labels.
    let (outputs, rows) = rows_read(&store, store.runs().outputs(run, None, Some(30_000), page)).await;
    assert_eq!(outputs.len(), 100);
    within("outputs, a middle page", rows, 4 * i64::from(page));
    let steps: Vec<(i32, i32)> = outputs.iter().map(|o| (o.step_id, o.asset_index)).collect();
    let (labels, rows) = rows_read(&store, store.runs().step_labels(run, &steps)).await;
    assert_eq!(labels.len(), 100);
    within("labels of a page of outputs", rows, 100);

    // Events: a page from the start, from the middle, and filters that match few.
    let (last, rows) = rows_read(&store, following.status_and_last_event(run)).await;
    let (_, last) = last.unwrap();
    assert_eq!(last, 200_000);
    within("the last event's number", rows, 5);
    let all = EventFilter::default();
    let (events, rows) = rows_read(&store, following.events_between(run, 0, 5_000, &all, 500)).await;
    assert_eq!(events.len(), 500);
    within("events, first page", rows, 4 * 500);
    let (events, rows) = rows_read(&store, following.events_between(run, 100_000, 105_000, &all, 500)).await;
    assert_eq!(events[0].seq, 100_001);
    within("events, a middle page", rows, 4 * 500);
    let failures = EventFilter { kinds: Some(vec!["failed".into()]), step: None };
    let (_, rows) = rows_read(&store, following.events_between(run, 100_000, 105_000, &failures, 500)).await;
    within("events, failures only, one window", rows, 5_000 + 100);
    let one_step = EventFilter { kinds: None, step: Some(30_000) };
    let (events, rows) = rows_read(&store, following.events_between(run, 0, 5_000, &one_step, 500)).await;
    assert!(events.is_empty());
    within("events, one step, a window before it", rows, 5_000 + 100);

    // Runs: newest first, of one status among 10,000 finished, a middle page.
    let status = |status| RunFilter { status: Some(status), ..RunFilter::default() };
    let (runs, rows) = rows_read(&store, following.runs(&RunFilter::default(), None, page)).await;
    assert_eq!(runs[0].id, run.as_uuid());
    within("runs, first page", rows, 2 * i64::from(page));
    let (runs, rows) = rows_read(&store, following.runs(&status(RunStatus::Running), None, page)).await;
    assert_eq!(runs.len(), 1);
    within("runs, running", rows, 2 * i64::from(page));
    let (runs, rows) = rows_read(&store, following.runs(&status(RunStatus::Failed), None, page)).await;
    assert_eq!(runs.len(), 100);
    let after = runs.last().map(|r| (r.created_at, r.id));
    let (_, rows_middle) = rows_read(&store, following.runs(&status(RunStatus::Failed), after, page)).await;
    within("runs, failed", rows, 2 * i64::from(page));
    within("runs, failed, the next page", rows_middle, 2 * i64::from(page));
    // One plan's runs, and an owner with none, among the 10,000 of another plan.
    let large = RunFilter { plan: Some("large"), ..RunFilter::default() };
    let (runs, rows) = rows_read(&store, following.runs(&large, None, page)).await;
    assert_eq!(runs.len(), 1);
    within("runs, one plan's", rows, 2 * i64::from(page));
    let nobody = RunFilter { owner: Some("nobody"), ..RunFilter::default() };
    let (runs, rows) = rows_read(&store, following.runs(&nobody, None, page)).await;
    assert!(runs.is_empty());
    within("runs, an owner with none", rows, 2 * i64::from(page));

    // The queues' demand and depths: the assets with work in flight, not the waiting steps.
    let (demand, rows) = rows_read(&store, store.queues().demand(&f.op)).await;
    assert_eq!((demand.queued, demand.running, demand.busy_workers.len()), (5, 5, 4));
    assert_eq!(demand.forecast, 10, "the asset after the running one");
    // The forecast looks at each asset with waiting steps (6,000 here) and its upstream.
    within("a queue's demand", rows, 4 * 6_000 + 200);
    let (depths, rows) = rows_read(&store, store.queues().depths()).await;
    assert_eq!((depths[0].ready, depths[0].running), (5, 5));
    within("every queue's depth", rows, 100);
}
