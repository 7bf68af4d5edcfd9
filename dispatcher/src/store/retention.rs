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
pub struct Expired {
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

impl Store {
    /// Up to `limit` finished runs that ended more than `older_than` ago, oldest first.
    pub async fn expired_runs(&self, older_than: Duration, limit: u32) -> Result<Vec<Expired>, StoreError> {
        type Row = (Uuid, String, String, DateTime<Utc>, i32);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, plan_name, status::text, finished_at, steps_total FROM runs
             WHERE status IN ('succeeded', 'failed', 'canceled') AND finished_at <= now() - $1::interval
             ORDER BY finished_at LIMIT $2",
        )
        .bind(interval(older_than))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, plan, status, finished_at, steps)| Expired {
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
    pub async fn delete_run(&self, run: RunId) -> Result<Deleted, StoreError> {
        let finished: Option<bool> = sqlx::query_scalar(
            "SELECT status IN ('succeeded', 'failed', 'canceled') FROM runs WHERE id = $1",
        )
        .bind(run.as_uuid())
        .fetch_optional(&self.pool)
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
                    .execute(&self.pool)
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
            sqlx::query("DELETE FROM runs WHERE id = $1").bind(run.as_uuid()).execute(&self.pool).await?;
        deleted.runs = gone.rows_affected();
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{
        plan::{self, RegisteredOp},
        store::testing::TestDb,
    };

    #[tokio::test]
    async fn only_finished_runs_are_deleted_and_all_their_rows_go() {
        let db = TestDb::new("retention").await;
        let registered = [RegisteredOp { name: "noop".into(), version: "1.0.0".parse().unwrap() }];
        let source = "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    sweep: {k: {from: 1, to: 12000}}\n  \
                      - name: b\n    op: noop@1.0.0\n    deps: [a]\n";
        let plan = plan::compile(source, Path::new("p.yaml"), &registered).unwrap();
        let done = db.store.submit_run(&plan, "p.yaml", source, Some("done")).await.unwrap().run_id;
        let going = db.store.submit_run(&plan, "p.yaml", source, Some("going")).await.unwrap().run_id;
        sqlx::query(
            "UPDATE runs SET status = 'succeeded', finished_at = now() - interval '1 day' WHERE id = $1",
        )
        .bind(done.as_uuid())
        .execute(db.store.pool())
        .await
        .unwrap();
        let expired = db.store.expired_runs(Duration::from_secs(3600), 10).await.unwrap();
        assert_eq!(expired.iter().map(|e| e.run_id).collect::<Vec<_>>(), [done]);
        assert_eq!(
            db.store.delete_run(going).await.unwrap(),
            Deleted::default(),
            "a run still going is kept"
        );
        let deleted = db.store.delete_run(done).await.unwrap();
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
}
