//! The webhook trigger: one delivery per matching subscription and notify target.

use std::time::Duration;

use chrono::Utc;
use opflow_dispatcher::store::webhooks::{
    AttemptRecord, DeliveryStatus, DueDeliveryRow, NextStep, RunNotify,
};
use opflow_protocol::RunId;
use uuid::Uuid;

use crate::common::{TestDb, compile};

async fn run(db: &TestDb, notify: Option<&RunNotify>) -> RunId {
    let source = "name: p\nassets:\n  - name: a\n    op: noop@^1\n";
    let plan = compile(source);
    db.store
        .runs()
        .submit_notifying(&plan, "p.yaml", source, None, notify, Default::default())
        .await
        .unwrap()
        .run_id
}

async fn end(db: &TestDb, run: RunId, status: &str) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE runs SET status = '{status}', finished_at = now() WHERE id = $1"
    )))
    .bind(run.as_uuid())
    .execute(db.store.pool())
    .await
    .unwrap();
}

#[tokio::test]
async fn webhook_trigger_enqueues_matching_subscriptions_and_notify_once_per_run_end() {
    let db = TestDb::new("webhook_trigger").await;
    let events = ["run.succeeded".to_owned(), "run.canceled".to_owned()];
    db.store.webhooks().add("http://a.example/", &events, "whsec_x").await.unwrap();
    db.store.webhooks().add("http://b.example/", &["run.failed".to_owned()], "whsec_y").await.unwrap();
    let notify = RunNotify { url: "http://n.example/".into(), secret: "whsec_n".into() };
    let succeeded = run(&db, Some(&notify)).await;
    let failed = run(&db, None).await;
    end(&db, succeeded, "running").await;
    end(&db, succeeded, "succeeded").await;
    // A terminal status written again enqueues nothing more.
    end(&db, succeeded, "failed").await;
    end(&db, failed, "failed").await;
    let rows = db.store.webhooks().deliveries(false, None, 100).await.unwrap();
    let mut seen: Vec<(Uuid, &str, &str)> =
        rows.iter().map(|r| (r.run_id, r.url.as_str(), r.event.as_str())).collect();
    seen.sort();
    let mut expected = vec![
        (succeeded.as_uuid(), "http://a.example/", "run.succeeded"),
        (succeeded.as_uuid(), "http://n.example/", "run.succeeded"),
        (failed.as_uuid(), "http://b.example/", "run.failed"),
    ];
    expected.sort();
    assert_eq!(seen, expected);

    // Claimed once (the lease hides it from a second claim), retried, delivered.
    let due = db.leader.webhook_outbox().claim_due(10, Duration::from_secs(60), 4, &[]).await.unwrap();
    assert_eq!(due.len(), 3);
    let due: Vec<&DueDeliveryRow> = due.iter().filter(|d| d.run_id == succeeded.as_uuid()).collect();
    let body: serde_json::Value = serde_json::from_str(&due[0].body).unwrap();
    assert!(body["data"]["links"]["outputs"].as_str().unwrap().ends_with("/outputs"), "{body}");
    assert!(
        db.leader.webhook_outbox().claim_due(10, Duration::from_secs(60), 4, &[]).await.unwrap().is_empty()
    );
    let attempt = AttemptRecord {
        started_at: Utc::now(),
        duration: Duration::from_millis(3),
        http_status: Some(500),
        error: None,
    };
    assert!(
        db.leader
            .webhook_outbox()
            .record_attempt(due[0].id, &attempt, NextStep::RetryAt(Utc::now()))
            .await
            .unwrap()
    );
    let again = db.leader.webhook_outbox().claim_due(10, Duration::from_secs(60), 4, &[]).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].id, again[0].attempts), (due[0].id, 1));
    let ok = AttemptRecord { http_status: Some(204), ..attempt };
    assert!(db.leader.webhook_outbox().record_attempt(due[0].id, &ok, NextStep::Delivered).await.unwrap());
    let (row, attempts) = db.store.webhooks().delivery(due[0].id).await.unwrap().unwrap();
    assert_eq!((row.status, row.attempts, attempts.len()), (DeliveryStatus::Delivered, 2, 2));

    // Retention takes the deliveries and attempts with the run.
    db.store.retention().delete(succeeded).await.unwrap();
    let left: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM webhook_deliveries WHERE run_id = $1)
              + (SELECT count(*) FROM run_notify WHERE run_id = $1)
              + (SELECT count(*) FROM webhook_attempts)",
    )
    .bind(succeeded.as_uuid())
    .fetch_one(db.store.pool())
    .await
    .unwrap();
    assert_eq!(left, 0);
}

/// Due deliveries are claimed round-robin across targets, at most `per_target` in flight
/// to one: 20 deliveries to a dead host claimed first in time do not take the slots of the
/// 2 to another host, and a host at its limit gets none until one of its attempts ends.
#[tokio::test]
async fn webhook_claims_are_fair_across_targets() {
    let db = TestDb::new("webhook_fair_claims").await;
    let run = run(&db, None).await;
    let deliver = |url: String, age_secs: i32| {
        let pool = db.store.pool().clone();
        async move {
            sqlx::query(
                "INSERT INTO webhook_deliveries (id, run_id, source, event, url, secret, body, next_attempt_at)
                 VALUES (gen_random_uuid(), $1, 'notify', 'run.succeeded', $2, 'whsec_x', '{}',
                         now() - make_interval(secs => $3))",
            )
            .bind(run.as_uuid())
            .bind(url)
            .bind(f64::from(age_secs))
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    for i in 0..20 {
        deliver(format!("http://dead.example:8080/hook/{i}"), 100 + i).await;
    }
    deliver("https://live.example/a".into(), 1).await;
    deliver("https://live.example/b".into(), 1).await;
    let outbox = db.leader.webhook_outbox();
    let targets = |due: &[DueDeliveryRow]| {
        let mut targets: Vec<String> = due.iter().map(|d| d.target.clone().unwrap_or_default()).collect();
        targets.sort();
        targets
    };
    let due = outbox.claim_due(32, Duration::from_secs(60), 2, &[]).await.unwrap();
    assert_eq!(
        targets(&due),
        ["dead.example:8080", "dead.example:8080", "live.example", "live.example"],
        "two per target, whatever the order in time"
    );
    // The dead host still has its two in flight: it gets no more; nor does the live one,
    // whose due deliveries are all claimed.
    let in_flight = [("dead.example:8080".to_owned(), 2)];
    assert!(outbox.claim_due(32, Duration::from_secs(60), 2, &in_flight).await.unwrap().is_empty());
    let in_flight = [("dead.example:8080".to_owned(), 1)];
    let due = outbox.claim_due(32, Duration::from_secs(60), 2, &in_flight).await.unwrap();
    assert_eq!(targets(&due), ["dead.example:8080"], "one slot of the dead host freed");
}
