//! Retention: only finished runs are deleted, with every row.

use std::time::Duration;

use opflow_dispatcher::store::retention::Deleted;

use crate::common::{TestDb, compile};

#[tokio::test]
async fn only_finished_runs_are_deleted_and_all_their_rows_go() {
    let db = TestDb::new("retention").await;
    let source = "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    sweep: {k: {from: 1, to: 12000}}\n  \
                  - name: b\n    op: noop@1.0.0\n    deps: [a]\n";
    let plan = compile(source);
    let done = db.store.runs().submit(&plan, "p.yaml", source, Some("done")).await.unwrap().run_id;
    let going = db.store.runs().submit(&plan, "p.yaml", source, Some("going")).await.unwrap().run_id;
    sqlx::query("UPDATE runs SET status = 'succeeded', finished_at = now() - interval '1 day' WHERE id = $1")
        .bind(done.as_uuid())
        .execute(db.store.pool())
        .await
        .unwrap();
    let expired = db.store.retention().expired(Duration::from_secs(3600), 10).await.unwrap();
    assert_eq!(expired.iter().map(|e| e.run_id).collect::<Vec<_>>(), [done]);
    assert_eq!(
        db.store.retention().delete(going).await.unwrap(),
        Deleted::default(),
        "a run still going is kept"
    );
    let deleted = db.store.retention().delete(done).await.unwrap();
    assert_eq!((deleted.runs, deleted.steps), (1, 12_001));
    for table in ["runs", "run_assets", "steps", "outbox", "dep_groups", "events"] {
        let column = if table == "runs" { "id" } else { "run_id" };
        let left: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {table} WHERE {column} = $1"
        )))
        .bind(done.as_uuid())
        .fetch_one(db.store.pool())
        .await
        .unwrap();
        assert_eq!(left, 0, "{table} rows of the deleted run");
    }
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM steps WHERE run_id = $1")
        .bind(going.as_uuid())
        .fetch_one(db.store.pool())
        .await
        .unwrap();
    assert_eq!(kept, 12_001);
}
