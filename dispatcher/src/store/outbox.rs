//! The transactional outbox: a step is marked queued and its row written here in the same
//! transaction, so a crash between "decided" and "published" loses nothing. A row waits
//! here until its op version's publish window has room (`service::window`); the publisher
//! then deletes a batch of rows in a transaction it commits only after the broker
//! confirmed every message; if it dies first, the rows come back and are published again
//! (the worker side tolerates the duplicate).

use std::collections::HashMap;

use opflow_protocol::{RunId, StepId};
use serde_json::Value;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use sqlx::postgres::PgListener;

use super::{StoreError, run_plan::StepRange};

/// One step attempt to publish, and its row's place in the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxRow {
    pub seq: i64,
    pub run_id: RunId,
    pub step_id: StepId,
    pub attempt: u32,
}

/// A batch taken from the outbox, held in an open transaction until [`OutboxBatch::commit`].
pub struct OutboxBatch {
    tx: Transaction<'static, Postgres>,
    pub entries: Vec<OutboxRow>,
    /// Per entry: its step is still queued at that attempt.
    current: Vec<bool>,
}

/// The outbox as the leader's publisher and retry scheduler work it (`leader.outbox()`):
/// only a `LeaderStore` hands it out.
#[derive(Clone, Copy)]
pub struct Outbox<'a> {
    pub(in crate::store) pool: &'a sqlx::PgPool,
}

impl Outbox<'_> {
    /// A listener on the outbox's notifications: steps written to it (`OUTBOX_CHANNEL`) and
    /// cancels to append to the cancels stream (`CANCELS_CHANNEL`).
    pub async fn listen(&self) -> Result<PgListener, StoreError> {
        let mut listener = PgListener::connect_with(self.pool).await?;
        listener.listen_all([super::CANCELS_CHANNEL, super::OUTBOX_CHANNEL]).await?;
        Ok(listener)
    }

    /// Takes the rows `seqs` (those still there: a canceled run's rows are gone), and
    /// learns in the same statement which of them are still current. Entries come back in
    /// the order of `seqs`, the order the window chose.
    ///
    /// The batch commits without waiting for its WAL flush (`synchronous_commit = off`):
    /// losing its removal to a database crash only means its steps are published again,
    /// which the outbox exists to tolerate (a step no longer queued is dropped, a repeated
    /// attempt is applied once), and anything later that must be durable, such as the
    /// step's result, flushes the WAL past it. A chain of steps waits for one flush per step
    /// instead of two.
    ///
    /// The statement is planned for each round (`force_custom_plan`): a plan cached while the
    /// tables were nearly empty checks each row against a hash of *every* queued step, a
    /// scan of the steps table per round (2.7 ms a round in w1, most of the round's cost);
    /// planned with the tables as they are, it probes the primary key. Each row's step is
    /// read by its primary key and its status compared after: with `status = 'queued'` in
    /// the lookup, the planner took the partial index of a run's queued steps
    /// (`steps_queued`) and walked every queued step of the run for each row (2.1 ms a round
    /// of 25 rows in a 10,000-step w1).
    pub async fn take(&self, seqs: &[i64]) -> Result<OutboxBatch, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "SELECT set_config('synchronous_commit', 'off', true), set_config('plan_cache_mode', 'force_custom_plan', true)",
        )
        .execute(&mut *tx)
        .await?;
        let rows: Vec<(i64, Uuid, i32, i32, bool)> = sqlx::query_as(
            "DELETE FROM outbox o WHERE seq = ANY($1)
             RETURNING o.seq, o.run_id, o.step_id, o.attempt, coalesce((
                 SELECT s.status = 'queued' AND s.attempt = o.attempt FROM steps s
                 WHERE s.run_id = o.run_id AND s.id = o.step_id
             ), false)",
        )
        .bind(seqs)
        .fetch_all(&mut *tx)
        .await?;
        let place: HashMap<i64, usize> = seqs.iter().enumerate().map(|(i, seq)| (*seq, i)).collect();
        let mut rows: Vec<(OutboxRow, bool)> = rows
            .into_iter()
            .map(|(seq, run, step, attempt, current)| (row(seq, run, step, attempt), current))
            .collect();
        rows.sort_by_key(|(row, _)| place.get(&row.seq).copied().unwrap_or(usize::MAX));
        let (entries, current) = rows.into_iter().unzip();
        Ok(OutboxBatch { tx, entries, current })
    }

    /// Removes rows whose steps need no message (satisfied from the catalog). A row left
    /// behind is dropped when a round takes it: its step is no longer queued.
    pub async fn forget(&self, seqs: &[i64]) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM outbox WHERE seq = ANY($1)").bind(seqs).execute(self.pool).await?;
        Ok(())
    }

    /// Up to `limit` of a run's rows with a step id after `after` (all of them for `None`),
    /// by step id: what the publisher holds of a run beyond what it was told of.
    pub async fn rows_of(
        &self,
        run: RunId,
        after: Option<StepId>,
        limit: u32,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let rows: Vec<(i64, Uuid, i32, i32)> = sqlx::query_as(
            "SELECT seq, run_id, step_id, attempt FROM outbox
             WHERE run_id = $1 AND step_id > $2 ORDER BY step_id LIMIT $3",
        )
        .bind(run.as_uuid())
        .bind(after.map_or(-1, |s| s.0 as i32))
        .bind(i64::from(limit))
        .fetch_all(self.pool)
        .await?;
        Ok(rows.into_iter().map(|(seq, run, step, attempt)| row(seq, run, step, attempt)).collect())
    }

    /// Every run's first `per_run` rows by step id, and how many rows each run has in all:
    /// what a new leader's publisher starts from.
    pub async fn all_rows(&self, per_run: u32) -> Result<(Vec<OutboxRow>, HashMap<RunId, u64>), StoreError> {
        let rows: Vec<(i64, Uuid, i32, i32, i64)> = sqlx::query_as(
            "SELECT seq, run_id, step_id, attempt, total FROM (
                 SELECT seq, run_id, step_id, attempt,
                        row_number() OVER (PARTITION BY run_id ORDER BY step_id) AS n,
                        count(*) OVER (PARTITION BY run_id) AS total
                 FROM outbox
             ) o WHERE n <= $1",
        )
        .bind(i64::from(per_run))
        .fetch_all(self.pool)
        .await?;
        let mut totals = HashMap::new();
        let rows = rows
            .into_iter()
            .map(|(seq, run, step, attempt, total)| {
                totals.insert(RunId::from_uuid(run), total.max(0) as u64);
                row(seq, run, step, attempt)
            })
            .collect();
        Ok((rows, totals))
    }

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

    /// Queues every retry whose backoff has elapsed; returns their outbox rows.
    pub async fn release_due_retries(&self) -> Result<Vec<OutboxRow>, StoreError> {
        let rows: Vec<(i64, Uuid, i32, i32)> = sqlx::query_as(
            "WITH due AS (
                 UPDATE steps SET status = 'queued', queued_at = now(), next_attempt_at = NULL
                 WHERE status = 'retrying' AND next_attempt_at <= now()
                 RETURNING run_id, id, attempt
             )
             INSERT INTO outbox (run_id, step_id, attempt)
             SELECT run_id, id, attempt FROM due ORDER BY run_id, id
             RETURNING seq, run_id, step_id, attempt",
        )
        .fetch_all(self.pool)
        .await?;
        Ok(rows.into_iter().map(|(seq, run, step, attempt)| row(seq, run, step, attempt)).collect())
    }
}

/// An outbox row from its columns.
pub(in crate::store) fn row(seq: i64, run: Uuid, step: i32, attempt: i32) -> OutboxRow {
    OutboxRow { seq, run_id: RunId::from_uuid(run), step_id: StepId(step as u32), attempt: attempt as u32 }
}

impl OutboxBatch {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries whose step is still queued at that attempt. The others are stale (the
    /// step was published before a crash and has since started or finished) and are
    /// dropped with the batch.
    pub fn still_queued(&self) -> Vec<OutboxRow> {
        self.entries.iter().zip(&self.current).filter(|(_, current)| **current).map(|(e, _)| *e).collect()
    }

    /// The total size in bytes of the outputs of the succeeded steps in `range`, and the
    /// outputs themselves (by step id) only when that size is within `budget`: the inputs
    /// limit is checked before anything large is loaded, in one round trip.
    pub async fn outputs_within(
        &mut self,
        run: RunId,
        range: StepRange,
        budget: u64,
    ) -> Result<(u64, Option<Vec<(StepId, Value)>>), StoreError> {
        let rows: Vec<(i64, Option<i32>, Option<Value>)> = sqlx::query_as(
            "WITH size AS (
                 SELECT coalesce(sum(coalesce(output_bytes, octet_length(output::text))), 0)::bigint AS bytes
                 FROM steps WHERE run_id = $1 AND id BETWEEN $2 AND $3 AND status = 'succeeded'
             )
             SELECT size.bytes, s.id, s.output FROM size
             LEFT JOIN steps s ON size.bytes <= $4
                  AND s.run_id = $1 AND s.id BETWEEN $2 AND $3 AND s.status = 'succeeded'
             ORDER BY s.id",
        )
        .bind(run.as_uuid())
        .bind(range.first as i32)
        .bind(range.last as i32)
        .bind(i64::try_from(budget).unwrap_or(i64::MAX))
        .fetch_all(&mut *self.tx)
        .await?;
        let bytes = rows.first().map_or(0, |(bytes, _, _)| (*bytes).max(0) as u64);
        if bytes > budget {
            return Ok((bytes, None));
        }
        let outputs = rows
            .into_iter()
            .filter_map(|(_, id, output)| Some((StepId(id? as u32), output.unwrap_or(Value::Null))))
            .collect();
        Ok((bytes, Some(outputs)))
    }

    /// Makes the batch's removal from the outbox permanent.
    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }

    /// The batch's transaction, for what is written with it (`key_slots`).
    pub(in crate::store) fn transaction(&mut self) -> &mut sqlx::PgConnection {
        &mut self.tx
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
