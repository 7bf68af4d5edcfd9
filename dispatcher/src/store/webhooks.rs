//! Webhooks in PostgreSQL (migration 0012): subscriptions, a run's own notify URL, and the
//! delivery outbox with every attempt. Deliveries are never inserted here: the trigger on
//! `runs` enqueues them as a run ends (see the migration). This module claims due ones
//! (`FOR UPDATE SKIP LOCKED`, under a lease), records attempts, and lists and redelivers.

use std::time::Duration;

use chrono::{DateTime, Utc};
use opflow_protocol::RunId;
use sqlx::{PgConnection, postgres::PgListener};
use uuid::Uuid;

use super::{Store, StoreError};

/// Where the trigger announces new deliveries (and redeliveries are announced).
pub const WEBHOOKS_CHANNEL: &str = "opflow_webhooks";

/// A subscription, without its secret (shown only when created).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WebhookRow {
    pub id: Uuid,
    pub url: String,
    pub events: Vec<String>,
    pub created_at: DateTime<Utc>,
}

/// A run's own notify target, stored with the run.
#[derive(Debug, Clone)]
pub struct RunNotify {
    pub url: String,
    /// `whsec_…`
    pub secret: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "webhook_delivery_status", rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }
}

/// A delivery as listed (no secret, no body).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeliveryRow {
    pub id: Uuid,
    pub seq: i64,
    pub run_id: Uuid,
    pub webhook: Option<Uuid>,
    pub source: String,
    pub event: String,
    pub url: String,
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub last_http_status: Option<i32>,
    pub last_error: Option<String>,
}

const DELIVERY_COLUMNS: &str = "id, seq, run_id, webhook, source, event, url, status, attempts, created_at, \
     next_attempt_at, delivered_at, last_http_status, last_error";

/// One recorded attempt.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AttemptRow {
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub duration_ms: i32,
    pub http_status: Option<i32>,
    pub error: Option<String>,
}

/// A delivery claimed for an attempt: everything needed to send it. (`Debug` leaves the
/// secret out.)
#[derive(Clone, sqlx::FromRow)]
pub struct DueDelivery {
    pub id: Uuid,
    pub run_id: Uuid,
    pub url: String,
    pub secret: String,
    pub body: String,
    /// Attempts made before this one.
    pub attempts: i32,
    pub retry_from: DateTime<Utc>,
}

impl std::fmt::Debug for DueDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DueDelivery")
            .field("id", &self.id)
            .field("run_id", &self.run_id)
            .field("url", &self.url)
            .field("attempts", &self.attempts)
            .field("retry_from", &self.retry_from)
            .finish_non_exhaustive()
    }
}

/// What becomes of a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    Delivered,
    RetryAt(DateTime<Utc>),
    /// Retried for as long as the setting allows: given up.
    Failed,
}

/// One attempt, as recorded.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub started_at: DateTime<Utc>,
    pub duration: Duration,
    pub http_status: Option<u16>,
    pub error: Option<String>,
}

/// What asking for a redelivery did.
#[derive(Debug, Clone)]
pub enum Redelivery {
    NotFound,
    /// It was for a subscription that has since been removed.
    SubscriptionRemoved,
    Queued(Box<DeliveryRow>),
}

impl Store {
    pub async fn add_webhook(
        &self,
        url: &str,
        events: &[String],
        secret: &str,
    ) -> Result<WebhookRow, StoreError> {
        Ok(sqlx::query_as(
            "INSERT INTO webhooks (id, url, events, secret) VALUES ($1, $2, $3, $4)
             RETURNING id, url, events, created_at",
        )
        .bind(Uuid::now_v7())
        .bind(url)
        .bind(events)
        .bind(secret)
        .fetch_one(&self.pool)
        .await?)
    }

    pub async fn list_webhooks(&self) -> Result<Vec<WebhookRow>, StoreError> {
        Ok(sqlx::query_as("SELECT id, url, events, created_at FROM webhooks ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await?)
    }

    /// Removes a subscription; its pending deliveries are given up (failed, saying why),
    /// its past ones kept. False if there was no such subscription.
    pub async fn remove_webhook(&self, id: Uuid) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE webhook_deliveries SET status = 'failed', last_error = 'its subscription was removed'
             WHERE webhook = $1 AND status = 'pending'",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let removed = sqlx::query("DELETE FROM webhooks WHERE id = $1").bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(removed.rows_affected() == 1)
    }

    /// Deliveries newest first, `limit` of them after the cursor `before_seq`; only failed
    /// ones with `failed_only`.
    pub async fn webhook_deliveries(
        &self,
        failed_only: bool,
        before_seq: Option<i64>,
        limit: u32,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        let statement = format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries
             WHERE (NOT $1 OR status = 'failed') AND ($2::bigint IS NULL OR seq < $2)
             ORDER BY seq DESC LIMIT $3"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(statement))
            .bind(failed_only)
            .bind(before_seq)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?)
    }

    /// One delivery and its attempts, oldest first.
    pub async fn webhook_delivery(
        &self,
        id: Uuid,
    ) -> Result<Option<(DeliveryRow, Vec<AttemptRow>)>, StoreError> {
        let statement = format!("SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = $1");
        let Some(row) =
            sqlx::query_as(sqlx::AssertSqlSafe(statement)).bind(id).fetch_optional(&self.pool).await?
        else {
            return Ok(None);
        };
        let attempts = sqlx::query_as(
            "SELECT attempt, started_at, duration_ms, http_status, error FROM webhook_attempts
             WHERE delivery_id = $1 ORDER BY attempt",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(Some((row, attempts)))
    }

    /// Sends a delivery again (same `webhook-id`, same body), now, with a fresh retry window.
    pub async fn redeliver_webhook(&self, id: Uuid) -> Result<Redelivery, StoreError> {
        let mut tx = self.pool.begin().await?;
        let found: Option<(String, Option<Uuid>)> =
            sqlx::query_as("SELECT source, webhook FROM webhook_deliveries WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        match found {
            None => return Ok(Redelivery::NotFound),
            Some((source, None)) if source == "subscription" => return Ok(Redelivery::SubscriptionRemoved),
            Some(_) => {}
        }
        let statement = format!(
            "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = now(), retry_from = now(),
                    delivered_at = NULL
             WHERE id = $1 RETURNING {DELIVERY_COLUMNS}"
        );
        let row = sqlx::query_as(sqlx::AssertSqlSafe(statement)).bind(id).fetch_one(&mut *tx).await?;
        sqlx::query("SELECT pg_notify($1, '')").bind(WEBHOOKS_CHANNEL).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(Redelivery::Queued(Box::new(row)))
    }

    /// Claims up to `limit` due deliveries for an attempt: each is pushed `lease` ahead, so
    /// no other dispatcher takes it meanwhile, and it is due again if this one dies.
    pub async fn claim_due_webhooks(
        &self,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        Ok(sqlx::query_as(
            "UPDATE webhook_deliveries d SET next_attempt_at = now() + make_interval(secs => $2)
             FROM (SELECT id FROM webhook_deliveries
                   WHERE status = 'pending' AND next_attempt_at <= now()
                   ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) due
             WHERE d.id = due.id
             RETURNING d.id, d.run_id, d.url, d.secret, d.body, d.attempts, d.retry_from",
        )
        .bind(limit as i64)
        .bind(lease.as_secs_f64())
        .fetch_all(&self.pool)
        .await?)
    }

    /// Records an attempt and what follows from it, in one statement. An attempt on a
    /// delivery that is no longer pending (its subscription was removed meanwhile) is not
    /// recorded; false then.
    pub async fn record_webhook_attempt(
        &self,
        delivery: Uuid,
        attempt: &AttemptRecord,
        next: NextStep,
    ) -> Result<bool, StoreError> {
        let (status, next_at) = match next {
            NextStep::Delivered => (DeliveryStatus::Delivered, None),
            NextStep::RetryAt(at) => (DeliveryStatus::Pending, Some(at)),
            NextStep::Failed => (DeliveryStatus::Failed, None),
        };
        let recorded = sqlx::query(
            "WITH updated AS (
                 UPDATE webhook_deliveries SET attempts = attempts + 1, status = $2,
                        next_attempt_at = COALESCE($3, next_attempt_at),
                        delivered_at = CASE WHEN $2 = 'delivered'::webhook_delivery_status THEN now() END,
                        last_http_status = $4, last_error = $5
                 WHERE id = $1 AND status = 'pending'
                 RETURNING id, attempts)
             INSERT INTO webhook_attempts (delivery_id, attempt, started_at, duration_ms, http_status, error)
             SELECT id, attempts, $6, $7, $4, $5 FROM updated",
        )
        .bind(delivery)
        .bind(status)
        .bind(next_at)
        .bind(attempt.http_status.map(i32::from))
        .bind(attempt.error.as_deref())
        .bind(attempt.started_at)
        .bind(i32::try_from(attempt.duration.as_millis()).unwrap_or(i32::MAX))
        .execute(&self.pool)
        .await?;
        Ok(recorded.rows_affected() == 1)
    }

    /// A listener told of new deliveries on [`WEBHOOKS_CHANNEL`].
    pub async fn listen_for_webhooks(&self) -> Result<PgListener, StoreError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(WEBHOOKS_CHANNEL).await?;
        Ok(listener)
    }
}

/// Stores a run's notify target, in the transaction that stores the run.
pub(super) async fn insert_run_notify(
    tx: &mut PgConnection,
    run: RunId,
    notify: &RunNotify,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO run_notify (run_id, url, secret) VALUES ($1, $2, $3)")
        .bind(run.as_uuid())
        .bind(&notify.url)
        .bind(&notify.secret)
        .execute(tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{
        plan::{self, RegisteredOp},
        store::testing::TestDb,
    };

    async fn run(db: &TestDb, notify: Option<&RunNotify>) -> RunId {
        let source = "name: p\nassets:\n  - name: a\n    op: noop@^1\n";
        let ops = [RegisteredOp { name: "noop".into(), version: "1.0.0".parse().unwrap() }];
        let plan = plan::compile(source, Path::new("p.yaml"), &ops).unwrap();
        db.store.submit_run_notifying(&plan, "p.yaml", source, None, notify).await.unwrap().run_id
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
        db.store.add_webhook("http://a.example/", &events, "whsec_x").await.unwrap();
        db.store.add_webhook("http://b.example/", &["run.failed".to_owned()], "whsec_y").await.unwrap();
        let notify = RunNotify { url: "http://n.example/".into(), secret: "whsec_n".into() };
        let succeeded = run(&db, Some(&notify)).await;
        let failed = run(&db, None).await;
        end(&db, succeeded, "running").await;
        end(&db, succeeded, "succeeded").await;
        // A terminal status written again enqueues nothing more.
        end(&db, succeeded, "failed").await;
        end(&db, failed, "failed").await;
        let rows = db.store.webhook_deliveries(false, None, 100).await.unwrap();
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
        let due = db.store.claim_due_webhooks(10, Duration::from_secs(60)).await.unwrap();
        assert_eq!(due.len(), 3);
        let due: Vec<&DueDelivery> = due.iter().filter(|d| d.run_id == succeeded.as_uuid()).collect();
        let body: serde_json::Value = serde_json::from_str(&due[0].body).unwrap();
        assert!(body["data"]["links"]["outputs"].as_str().unwrap().ends_with("/outputs"), "{body}");
        assert!(db.store.claim_due_webhooks(10, Duration::from_secs(60)).await.unwrap().is_empty());
        let attempt = AttemptRecord {
            started_at: Utc::now(),
            duration: Duration::from_millis(3),
            http_status: Some(500),
            error: None,
        };
        assert!(
            db.store
                .record_webhook_attempt(due[0].id, &attempt, NextStep::RetryAt(Utc::now()))
                .await
                .unwrap()
        );
        let again = db.store.claim_due_webhooks(10, Duration::from_secs(60)).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].id, again[0].attempts), (due[0].id, 1));
        let ok = AttemptRecord { http_status: Some(204), ..attempt };
        assert!(db.store.record_webhook_attempt(due[0].id, &ok, NextStep::Delivered).await.unwrap());
        let (row, attempts) = db.store.webhook_delivery(due[0].id).await.unwrap().unwrap();
        assert_eq!((row.status, row.attempts, attempts.len()), (DeliveryStatus::Delivered, 2, 2));

        // Retention takes the deliveries and attempts with the run.
        db.store.delete_run(succeeded).await.unwrap();
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
}
