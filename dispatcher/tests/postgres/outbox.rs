//! The outbox: a step's inputs loaded within their budget.

use opflow_dispatcher::store::run_plan::StepRange;
use opflow_protocol::StepId;
use serde_json::json;

use crate::common::{TestDb, submit};

#[tokio::test]
async fn outputs_are_loaded_only_within_the_budget_and_their_size_always_said() {
    let db = TestDb::new("outputs_within").await;
    let source = "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    sweep: {k: {from: 1, to: 3}}\n";
    let run = submit(&db, source).await;
    // Steps 0 and 2 succeeded with outputs of 8 bytes each (`{"k": 0}`); step 1 is still queued.
    sqlx::query(
        "UPDATE steps SET status = 'succeeded', output = jsonb_build_object('k', id),
                          output_bytes = octet_length(jsonb_build_object('k', id)::text)
         WHERE run_id = $1 AND id <> 1",
    )
    .bind(run.as_uuid())
    .execute(db.store.pool())
    .await
    .unwrap();
    let range = StepRange { first: 0, last: 2 };
    let seqs: Vec<i64> =
        db.leader.outbox().rows_of(run, None, 10).await.unwrap().iter().map(|r| r.seq).collect();
    let mut batch = db.leader.outbox().take(&seqs).await.unwrap();

    let (bytes, outputs) = batch.outputs_within(run, range, 16).await.unwrap();
    assert_eq!(bytes, 16);
    assert_eq!(outputs.unwrap(), [(StepId(0), json!({"k": 0})), (StepId(2), json!({"k": 2}))]);
    let (bytes, outputs) = batch.outputs_within(run, range, 15).await.unwrap();
    assert_eq!((bytes, outputs), (16, None), "over the budget, only the size");
    let (bytes, outputs) = batch.outputs_within(run, StepRange { first: 1, last: 1 }, 0).await.unwrap();
    assert_eq!((bytes, outputs), (0, Some(Vec::new())), "a range with no output yet");
}
