//! The concurrency slots held, as the run store keeps them (migration 0019): one row per key
//! of a published step attempt with a cap. The publisher writes them in the transaction
//! that takes the attempt's outbox row ([`OutboxBatch::hold_slots`]), so a slot exists
//! once its message does; it removes them once a result of the attempt came back. A new
//! leader starts from what is here, less the rows whose result is already recorded in
//! `events` (a leader that stopped before removing them), so caps hold through a failover.
//! The leader's copy, which decides, is `service::key_slots`.

use std::sync::Arc;

use opflow_protocol::{RunId, StepId};
use uuid::Uuid;

use super::{StoreError, outbox::OutboxBatch};

/// The worker name of the dispatcher's own failure of a step that a newer step of its key
/// replaces (`cancel_in_progress`): unlike every other result, it does not free the step's
/// slots, since the step may still be running until its worker stops it.
pub const SUPERSEDED_BY_DISPATCHER: &str = "dispatcher (concurrency)";

/// A slot's step attempt and key.
pub type HeldSlot = (RunId, StepId, u32, Arc<str>);

/// The slots as the leader works them (`leader.key_slots()`).
#[derive(Clone, Copy)]
pub struct KeySlotRows<'a> {
    pub(in crate::store) pool: &'a sqlx::PgPool,
}

impl KeySlotRows<'_> {
    /// Every slot still held, oldest first, after removing those whose attempt has a
    /// result recorded (from a worker, or from the dispatcher other than a replacement).
    pub async fn held(&self) -> Result<Vec<HeldSlot>, StoreError> {
        sqlx::query(
            "DELETE FROM key_slots k WHERE EXISTS (
                 SELECT 1 FROM events e
                 WHERE e.run_id = k.run_id AND e.step_id = k.step_id AND e.attempt = k.attempt
                   AND e.kind IN ('succeeded', 'failed') AND e.worker <> $1
             )",
        )
        .bind(SUPERSEDED_BY_DISPATCHER)
        .execute(self.pool)
        .await?;
        let rows: Vec<(Uuid, i32, i32, String)> =
            sqlx::query_as("SELECT run_id, step_id, attempt, key FROM key_slots ORDER BY seq")
                .fetch_all(self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(run, step, attempt, key)| {
                (RunId::from_uuid(run), StepId(step.max(0) as u32), attempt.max(0) as u32, Arc::from(key))
            })
            .collect())
    }

    /// Removes the slots of step attempts whose result came back.
    pub async fn release(&self, attempts: &[(RunId, StepId, u32)]) -> Result<(), StoreError> {
        if attempts.is_empty() {
            return Ok(());
        }
        let runs: Vec<Uuid> = attempts.iter().map(|(run, _, _)| run.as_uuid()).collect();
        let steps: Vec<i32> = attempts.iter().map(|(_, step, _)| step.0 as i32).collect();
        let numbers: Vec<i32> = attempts.iter().map(|(_, _, attempt)| *attempt as i32).collect();
        sqlx::query(
            "DELETE FROM key_slots k USING UNNEST($1::uuid[], $2::int[], $3::int[]) AS r(run_id, step_id, attempt)
             WHERE k.run_id = r.run_id AND k.step_id = r.step_id AND k.attempt = r.attempt",
        )
        .bind(&runs)
        .bind(&steps)
        .bind(&numbers)
        .execute(self.pool)
        .await?;
        Ok(())
    }
}

/// Steps of a run waiting for a slot of a key, as the publisher sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyWait {
    pub run_id: RunId,
    pub key: Arc<str>,
    pub waiting: u32,
    pub in_flight: u32,
    pub max: u32,
}

/// The most `key_waits` rows written: the runs and keys with the most steps waiting.
pub const KEY_WAITS_KEPT: usize = 10_000;

impl KeySlotRows<'_> {
    /// Replaces what `key_waits` says with `waits` (the first [`KEY_WAITS_KEPT`] of them).
    pub async fn record_waits(&self, waits: &[KeyWait]) -> Result<(), StoreError> {
        let waits = &waits[..waits.len().min(KEY_WAITS_KEPT)];
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM key_waits").execute(&mut *tx).await?;
        if !waits.is_empty() {
            let runs: Vec<Uuid> = waits.iter().map(|w| w.run_id.as_uuid()).collect();
            let keys: Vec<&str> = waits.iter().map(|w| &*w.key).collect();
            let count = |f: fn(&KeyWait) -> u32| -> Vec<i32> {
                waits.iter().map(|w| f(w).min(i32::MAX as u32) as i32).collect()
            };
            sqlx::query(
                "INSERT INTO key_waits (run_id, key, waiting, in_flight, max)
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::int[], $4::int[], $5::int[])
                 ON CONFLICT DO NOTHING",
            )
            .bind(&runs)
            .bind(&keys)
            .bind(count(|w| w.waiting))
            .bind(count(|w| w.in_flight))
            .bind(count(|w| w.max))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

impl OutboxBatch {
    /// Records, with the batch, the slots its published attempts hold.
    pub async fn hold_slots(&mut self, slots: &[HeldSlot]) -> Result<(), StoreError> {
        if slots.is_empty() {
            return Ok(());
        }
        let runs: Vec<Uuid> = slots.iter().map(|(run, _, _, _)| run.as_uuid()).collect();
        let steps: Vec<i32> = slots.iter().map(|(_, step, _, _)| step.0 as i32).collect();
        let attempts: Vec<i32> = slots.iter().map(|(_, _, attempt, _)| *attempt as i32).collect();
        let keys: Vec<&str> = slots.iter().map(|(_, _, _, key)| &**key).collect();
        sqlx::query(
            "INSERT INTO key_slots (run_id, step_id, attempt, key)
             SELECT * FROM UNNEST($1::uuid[], $2::int[], $3::int[], $4::text[])
             ON CONFLICT (run_id, step_id, key) DO UPDATE SET attempt = EXCLUDED.attempt",
        )
        .bind(&runs)
        .bind(&steps)
        .bind(&attempts)
        .bind(&keys)
        .execute(self.transaction())
        .await?;
        Ok(())
    }
}
