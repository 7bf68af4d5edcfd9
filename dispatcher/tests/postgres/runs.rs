//! Submitting runs: plans of many assets stored whole.

use opflow_dispatcher::store::run_plan::PlanCache;
use opflow_protocol::StepId;

use crate::common::{TestDb, compile};

#[tokio::test]
async fn a_plan_of_more_assets_than_one_insert_takes_is_stored_whole_and_reads_back() {
    let db = TestDb::new("many_assets").await;
    let mut source = "name: p\nassets:\n  - name: a0\n    op: noop@1.0.0\n".to_owned();
    for i in 1..2_500 {
        source.push_str(&format!("  - name: a{i}\n    op: noop@1.0.0\n    deps: [a{}]\n", i - 1));
    }
    let compiled = compile(&source);
    let run = db.store.runs().submit(&compiled, "p.yaml", &source, None).await.unwrap().run_id;
    let (assets, last): (i64, i32) =
        sqlx::query_as("SELECT count(*), max(idx) FROM run_assets WHERE run_id = $1")
            .bind(run.as_uuid())
            .fetch_one(db.store.pool())
            .await
            .unwrap();
    assert_eq!((assets, last), (2_500, 2_499));
    let stored = PlanCache::default().get(&db.store, run).await.unwrap();
    assert_eq!(stored.label(StepId(2_499)), compiled.assets[2_499].name);
    assert_eq!(stored.asset(2_499).deps.len(), 1);
}
