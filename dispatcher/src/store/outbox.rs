//! The transactional outbox: a step is marked queued and its row written here in the same
//! transaction, so a crash between "decided" and "published" loses nothing. The publisher
//! deletes a batch of rows in a transaction it commits only after the broker confirmed
//! every message; if it dies first, the rows come back and are published again (the
//! worker side tolerates the duplicate).

use opflow_protocol::{RunId, StepId};
use serde_json::Value;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::{Store, StoreError, run_plan::StepRange};

/// One step attempt to publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxEntry {
    pub run_id: RunId,
    pub step_id: StepId,
    pub attempt: u32,
}

/// A batch taken from the outbox, held in an open transaction until [`OutboxBatch::commit`].
pub struct OutboxBatch {
    tx: Transaction<'static, Postgres>,
    pub entries: Vec<OutboxEntry>,
    /// Per entry: its step is still queued at that attempt.
    current: Vec<bool>,
}

impl Store {
    /// Takes up to `limit` rows, oldest first, skipping rows another publisher holds, and
    /// learns in the same statement which of them are still current.
    pub async fn take_outbox(&self, limit: u32) -> Result<OutboxBatch, StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<(Uuid, i32, i32, bool)> = sqlx::query_as(
            "DELETE FROM outbox o WHERE seq IN (
                 SELECT seq FROM outbox ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED
             )
             RETURNING o.run_id, o.step_id, o.attempt, EXISTS (
                 SELECT 1 FROM steps s
                 WHERE s.run_id = o.run_id AND s.id = o.step_id AND s.attempt = o.attempt AND s.status = 'queued'
             )",
        )
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        let (entries, current) = rows
            .into_iter()
            .map(|(run, step, attempt, current)| {
                let entry = OutboxEntry {
                    run_id: RunId::from_uuid(run),
                    step_id: StepId(step as u32),
                    attempt: attempt as u32,
                };
                (entry, current)
            })
            .unzip();
        Ok(OutboxBatch { tx, entries, current })
    }
}

impl OutboxBatch {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries whose step is still queued at that attempt. The others are stale (the
    /// step was published before a crash and has since started or finished) and are
    /// dropped with the batch.
    pub fn still_queued(&self) -> Vec<OutboxEntry> {
        self.entries.iter().zip(&self.current).filter(|(_, current)| **current).map(|(e, _)| *e).collect()
    }

    /// The total size in bytes of the outputs of the succeeded steps in `range`, without
    /// loading them: what the inputs limit is checked against first.
    pub async fn outputs_size(&mut self, run: RunId, range: StepRange) -> Result<u64, StoreError> {
        let bytes: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(coalesce(output_bytes, octet_length(output::text))), 0)::bigint FROM steps
             WHERE run_id = $1 AND id BETWEEN $2 AND $3 AND status = 'succeeded'",
        )
        .bind(run.as_uuid())
        .bind(range.first as i32)
        .bind(range.last as i32)
        .fetch_one(&mut *self.tx)
        .await?;
        Ok(bytes.max(0) as u64)
    }

    /// The outputs of the succeeded steps in `range`, by step id.
    pub async fn outputs(
        &mut self,
        run: RunId,
        range: StepRange,
    ) -> Result<Vec<(StepId, Value)>, StoreError> {
        let rows: Vec<(i32, Option<Value>)> = sqlx::query_as(
            "SELECT id, output FROM steps
             WHERE run_id = $1 AND id BETWEEN $2 AND $3 AND status = 'succeeded'
             ORDER BY id",
        )
        .bind(run.as_uuid())
        .bind(range.first as i32)
        .bind(range.last as i32)
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(rows.into_iter().map(|(id, output)| (StepId(id as u32), output.unwrap_or(Value::Null))).collect())
    }

    /// Makes the batch's removal from the outbox permanent.
    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }
}

/// Cancels taken from the cancel outbox, held in an open transaction until
/// [`CancelBatch::commit`].
pub struct CancelBatch {
    tx: Transaction<'static, Postgres>,
    pub runs: Vec<RunId>,
}

impl CancelBatch {
    /// Makes the batch's removal from the cancel outbox permanent.
    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }
}

impl Store {
    /// Takes up to `limit` cancels to append to the cancels stream, oldest first.
    pub async fn take_cancels(&self, limit: u32) -> Result<CancelBatch, StoreError> {
        let mut tx = self.pool.begin().await?;
        let runs: Vec<Uuid> = sqlx::query_scalar(
            "DELETE FROM cancel_outbox WHERE run_id IN (
                 SELECT run_id FROM cancel_outbox ORDER BY requested_at LIMIT $1 FOR UPDATE SKIP LOCKED
             )
             RETURNING run_id",
        )
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        Ok(CancelBatch { tx, runs: runs.into_iter().map(RunId::from_uuid).collect() })
    }

    /// Queues every retry whose backoff has elapsed; returns how many.
    pub async fn release_due_retries(&self) -> Result<u64, StoreError> {
        let queued: i64 = sqlx::query_scalar(
            "WITH due AS (
                 UPDATE steps SET status = 'queued', queued_at = now(), next_attempt_at = NULL
                 WHERE status = 'retrying' AND next_attempt_at <= now()
                 RETURNING run_id, id, attempt
             ), queued AS (
                 INSERT INTO outbox (run_id, step_id, attempt)
                 SELECT run_id, id, attempt FROM due ORDER BY run_id, id
                 RETURNING 1
             )
             SELECT count(*) FROM queued",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(queued as u64)
    }
}
