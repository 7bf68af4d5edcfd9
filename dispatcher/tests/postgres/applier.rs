//! The applier: a refused event fails only its own step.

use std::sync::Arc;

use opflow_dispatcher::{
    api::metrics::Metrics,
    service::applier::Applier,
    store::{run_plan::PlanCache, storable::StorableEvent},
};
use opflow_protocol::{Event, EventKind, LogLevel, RunId, StepId};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::common::{TestDb, submit};

async fn run_of_five(db: &TestDb) -> RunId {
    let source = "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    sweep: {k: {from: 0, to: 4}}\n";
    submit(db, source).await
}

fn event(run: RunId, step: u32, kind: EventKind) -> StorableEvent {
    Event::new(run, StepId(step), 1, "noop@1.0.0/test/1", kind).into()
}

#[tokio::test]
async fn a_refused_event_fails_only_its_own_step() {
    let db = TestDb::new("refused_event").await;
    let run = run_of_five(&db).await;
    // The store refuses one log line, as it would a value it cannot hold.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
             IF NEW.kind = 'log' AND NEW.body::text LIKE '%poison%' THEN
                 RAISE EXCEPTION 'refusing the poison';
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER refuse BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .execute(db.store.pool())
    .await
    .unwrap();
    let ok = || EventKind::Succeeded { output: json!({"ok": true}) };
    let events = vec![
        event(run, 0, ok()),
        event(run, 1, ok()),
        event(run, 3, EventKind::Log { level: LogLevel::Info, message: "poison".into() }),
        event(run, 2, ok()),
        event(run, 4, ok()),
    ];
    let metrics = Arc::new(Metrics::new());
    let applier = Applier {
        store: db.leader.clone(),
        plans: Arc::new(PlanCache::default()),
        metrics: metrics.clone(),
        arrivals: Arc::default(),
    };
    let applied = applier.apply(&events, &CancellationToken::new()).await.unwrap();
    assert!(applied.given_up.is_empty());
    // The refused halves rolled back and were applied again: each step counts once.
    let text = metrics.render(&db.store).await;
    let mut steps: Vec<&str> = text.lines().filter(|l| l.starts_with("opflow_steps_total")).collect();
    steps.sort();
    assert_eq!(
        steps,
        [
            "opflow_steps_total{op=\"noop\",version=\"1.0.0\",status=\"failed\"} 1",
            "opflow_steps_total{op=\"noop\",version=\"1.0.0\",status=\"succeeded\"} 4",
        ],
        "{text}"
    );

    let steps: Vec<(i32, String, Option<String>)> =
        sqlx::query_as("SELECT id, status::text, error FROM steps WHERE run_id = $1 ORDER BY id")
            .bind(run.as_uuid())
            .fetch_all(db.store.pool())
            .await
            .unwrap();
    for (id, status, error) in &steps {
        if *id == 3 {
            assert_eq!(status, "failed");
            let error = error.as_deref().unwrap_or_default();
            assert!(
                error.contains("could not apply a `log` event") && error.contains("refusing the poison"),
                "{error}"
            );
            assert!(error.contains("poison"), "the event's own text is kept: {error}");
        } else {
            assert_eq!(status, "succeeded", "step {id}");
        }
    }
    assert_eq!(applied.outcome.finished.len(), 1, "the run ended: {:?}", applied.outcome);
}
