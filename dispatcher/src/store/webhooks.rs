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
pub struct DueDeliveryRow {
    pub id: Uuid,
    pub run_id: Uuid,
    pub url: String,
    pub secret: String,
    pub body: String,
    /// Attempts made before this one.
    pub attempts: i32,
    pub retry_from: DateTime<Utc>,
    /// The URL's host and port (migration 0016): what fairness counts attempts by.
    pub target: Option<String>,
}

impl std::fmt::Debug for DueDeliveryRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DueDeliveryRow")
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

/// Webhook subscriptions and their deliveries, as administrators see them
/// (`store.webhooks()`).
#[derive(Clone, Copy)]
pub struct Webhooks<'a> {
    pub(in crate::store) pool: &'a sqlx::PgPool,
}

impl Store {
    /// Webhook subscriptions and their deliveries.
    pub fn webhooks(&self) -> Webhooks<'_> {
        Webhooks { pool: &self.pool }
    }
}

impl Webhooks<'_> {
    pub async fn add(&self, url: &str, events: &[String], secret: &str) -> Result<WebhookRow, StoreError> {
        Ok(sqlx::query_as(
            "INSERT INTO webhooks (id, url, events, secret) VALUES ($1, $2, $3, $4)
             RETURNING id, url, events, created_at",
        )
        .bind(Uuid::now_v7())
        .bind(url)
        .bind(events)
        .bind(secret)
        .fetch_one(self.pool)
        .await?)
    }

    pub async fn list(&self) -> Result<Vec<WebhookRow>, StoreError> {
        Ok(sqlx::query_as("SELECT id, url, events, created_at FROM webhooks ORDER BY created_at, id")
            .fetch_all(self.pool)
            .await?)
    }

    /// Removes a subscription; its pending deliveries are given up (failed, saying why),
    /// its past ones kept. False if there was no such subscription.
    pub async fn remove(&self, id: Uuid) -> Result<bool, StoreError> {
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
    pub async fn deliveries(
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
            .fetch_all(self.pool)
            .await?)
    }

    /// A run's deliveries, newest first, at most `limit` (`webhook_deliveries_run`).
    pub async fn deliveries_of_run(&self, run: Uuid, limit: u32) -> Result<Vec<DeliveryRow>, StoreError> {
        let statement = format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE run_id = $1 ORDER BY seq DESC LIMIT $2"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(statement))
            .bind(run)
            .bind(i64::from(limit))
            .fetch_all(self.pool)
            .await?)
    }

    /// One delivery and its attempts, oldest first.
    pub async fn delivery(&self, id: Uuid) -> Result<Option<(DeliveryRow, Vec<AttemptRow>)>, StoreError> {
        let statement = format!("SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = $1");
        let Some(row) =
            sqlx::query_as(sqlx::AssertSqlSafe(statement)).bind(id).fetch_optional(self.pool).await?
        else {
            return Ok(None);
        };
        let attempts = sqlx::query_as(
            "SELECT attempt, started_at, duration_ms, http_status, error FROM webhook_attempts
             WHERE delivery_id = $1 ORDER BY attempt",
        )
        .bind(id)
        .fetch_all(self.pool)
        .await?;
        Ok(Some((row, attempts)))
    }

    /// Sends a delivery again (same `webhook-id`, same body), now, with a fresh retry window.
    pub async fn redeliver(&self, id: Uuid) -> Result<Redelivery, StoreError> {
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
}

/// The delivery outbox as the leader's delivery task works it (`leader.webhook_outbox()`):
/// only a `LeaderStore` hands it out.
#[derive(Clone, Copy)]
pub struct WebhookOutbox<'a> {
    pub(in crate::store) pool: &'a sqlx::PgPool,
}

impl WebhookOutbox<'_> {
    /// Claims up to `limit` due deliveries for an attempt, fairly: at most `per_target`
    /// attempts in flight per target, counting `in_flight` (target, attempts now), and
    /// round-robin across targets (every target's first due delivery before any target's
    /// second). Each is pushed `lease` ahead, so no other dispatcher takes it meanwhile,
    /// and it is due again if this one dies.
    pub async fn claim_due(
        &self,
        limit: usize,
        lease: Duration,
        per_target: usize,
        in_flight: &[(String, i32)],
    ) -> Result<Vec<DueDeliveryRow>, StoreError> {
        let (targets, counts): (Vec<&str>, Vec<i32>) =
            in_flight.iter().map(|(t, n)| (t.as_str(), *n)).unzip();
        // Window functions cannot take row locks: the candidates are picked first, then
        // claimed by an UPDATE that checks each is still due (re-checked under its lock).
        Ok(sqlx::query_as(
            "WITH busy AS (SELECT * FROM unnest($3::text[], $4::int[]) AS b (target, in_flight)),
             candidates AS (
                 SELECT id FROM (
                     SELECT d.id, d.next_attempt_at,
                            coalesce(b.in_flight, 0)
                              + row_number() OVER (PARTITION BY d.target ORDER BY d.next_attempt_at) AS nth
                     FROM webhook_deliveries d LEFT JOIN busy b ON b.target = d.target
                     WHERE d.status = 'pending' AND d.next_attempt_at <= now()) ranked
                 WHERE nth <= $5
                 ORDER BY nth, next_attempt_at
                 LIMIT $1)
             UPDATE webhook_deliveries d SET next_attempt_at = now() + make_interval(secs => $2)
             FROM candidates c
             WHERE d.id = c.id AND d.status = 'pending' AND d.next_attempt_at <= now()
             RETURNING d.id, d.run_id, d.url, d.secret, d.body, d.attempts, d.retry_from, d.target",
        )
        .bind(limit as i64)
        .bind(lease.as_secs_f64())
        .bind(targets)
        .bind(counts)
        .bind(per_target as i64)
        .fetch_all(self.pool)
        .await?)
    }

    /// Records an attempt and what follows from it, in one statement. An attempt on a
    /// delivery that is no longer pending (its subscription was removed meanwhile) is not
    /// recorded; false then.
    pub async fn record_attempt(
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
        .execute(self.pool)
        .await?;
        Ok(recorded.rows_affected() == 1)
    }

    /// A listener told of new deliveries on [`WEBHOOKS_CHANNEL`].
    pub async fn listen(&self) -> Result<PgListener, StoreError> {
        let mut listener = PgListener::connect_with(self.pool).await?;
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
