//! Retention: finished runs older than the `retention` setting are deleted with every row
//! they own (steps, events, outbox and dependency counters, assets), a few thousand rows
//! per transaction, so that a large run never holds locks or bloats one transaction. The
//! run's own row goes last: a deletion cut short is finished by the next one.
//!
//! Runs still going are never touched, whatever their age.

use std::time::Duration;

use chrono::{DateTime, Utc};
use opflow_protocol::RunId;
use uuid::Uuid;

use super::{Store, StoreError};

/// Rows deleted per statement (and transaction).
const CHUNK: i64 = 5_000;

/// A finished run that retention would delete.
#[derive(Debug, Clone)]
pub struct ExpiredRunRow {
    pub run_id: RunId,
    pub plan: String,
    pub status: String,
    pub finished_at: DateTime<Utc>,
    pub steps: i64,
}

/// What deleting runs removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deleted {
    pub runs: u64,
    pub steps: u64,
    pub events: u64,
}

impl std::ops::AddAssign for Deleted {
    fn add_assign(&mut self, more: Self) {
        self.runs += more.runs;
        self.steps += more.steps;
        self.events += more.events;
    }
}

fn interval(d: Duration) -> String {
    format!("{} milliseconds", d.as_millis())
}

/// Finished runs past their retention (`store.retention()`): the leader's background pass
/// and `opflow gc` both delete them.
#[derive(Clone, Copy)]
pub struct Retention<'a> {
    pub(super) pool: &'a sqlx::PgPool,
}

impl Store {
    /// Finished runs past their retention.
    pub fn retention(&self) -> Retention<'_> {
        Retention { pool: &self.pool }
    }
}

impl Retention<'_> {
    /// Up to `limit` finished runs that ended more than `older_than` ago, oldest first.
    pub async fn expired(&self, older_than: Duration, limit: u32) -> Result<Vec<ExpiredRunRow>, StoreError> {
        type Row = (Uuid, String, String, DateTime<Utc>, i32);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, plan_name, status::text, finished_at, steps_total FROM runs
             WHERE status IN ('succeeded', 'failed', 'canceled') AND finished_at <= now() - $1::interval
             ORDER BY finished_at LIMIT $2",
        )
        .bind(interval(older_than))
        .bind(i64::from(limit))
        .fetch_all(self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, plan, status, finished_at, steps)| ExpiredRunRow {
                run_id: RunId::from_uuid(id),
                plan,
                status,
                finished_at,
                steps: i64::from(steps),
            })
            .collect())
    }

    /// Deletes a finished run and everything it owns, in chunks; see the module docs. A run
    /// that is still going (or gone) is left alone, with nothing deleted.
    pub async fn delete(&self, run: RunId) -> Result<Deleted, StoreError> {
        let finished: Option<bool> = sqlx::query_scalar(
            "SELECT status IN ('succeeded', 'failed', 'canceled') FROM runs WHERE id = $1",
        )
        .bind(run.as_uuid())
        .fetch_optional(self.pool)
        .await?;
        if finished != Some(true) {
            return Ok(Deleted::default());
        }
        let mut deleted = Deleted::default();
        for (table, count) in [
            ("events", Some(&mut deleted.events)),
            ("steps", Some(&mut deleted.steps)),
            ("outbox", None),
            ("dep_groups", None),
            ("cancel_outbox", None),
        ] {
            let statement = format!(
                "DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table} WHERE run_id = $1 LIMIT $2))"
            );
            let mut total = 0;
            loop {
                let gone = sqlx::query(sqlx::AssertSqlSafe(statement.clone()))
                    .bind(run.as_uuid())
                    .bind(CHUNK)
                    .execute(self.pool)
                    .await?
                    .rows_affected();
                total += gone;
                if gone < CHUNK as u64 {
                    break;
                }
            }
            if let Some(count) = count {
                *count = total;
            }
        }
        // The run's assets go with it (their foreign key cascades).
        let gone =
            sqlx::query("DELETE FROM runs WHERE id = $1").bind(run.as_uuid()).execute(self.pool).await?;
        deleted.runs = gone.rows_affected();
        Ok(deleted)
    }
}
