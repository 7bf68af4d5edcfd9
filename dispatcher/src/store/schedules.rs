//! Schedules and their ticks (migration 0028): what the API adds, lists, pauses and
//! removes, and what the leader's scheduler reads and records. A tick's decision and the
//! schedule's advance are one transaction, conditional on the schedule still being at that
//! tick: a second leader deciding the same tick changes nothing.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Store, StoreError};

/// A schedule as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ScheduleRow {
    pub name: String,
    pub plan_name: String,
    pub plan_file: String,
    pub plan_source: String,
    /// `None` for a schedule that a change in the catalog triggers (`trigger`).
    pub cron: Option<String>,
    pub tz: String,
    pub overlap: String,
    pub catch_up_secs: i64,
    pub partition_of_tick: bool,
    pub owner: String,
    pub priority: Option<i16>,
    pub paused: bool,
    pub next_tick_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// `cron`, `stale` or `upstream` (migration 0030).
    pub trigger: String,
    /// Its runs take fresh cells from the catalog (`opflow run --missing`).
    pub missing: bool,
    pub debounce_secs: i64,
    /// `upstream`: the newest materialization answered; `stale`: its runs so far.
    pub seen_materialization: i64,
}

/// A new schedule.
#[derive(Debug, Clone)]
pub struct NewSchedule<'a> {
    pub name: &'a str,
    pub plan_name: &'a str,
    pub plan_file: &'a str,
    pub plan_source: &'a str,
    pub cron: Option<&'a str>,
    pub trigger: &'a str,
    pub missing: bool,
    pub debounce_secs: i64,
    pub tz: &'a str,
    pub overlap: &'a str,
    pub catch_up_secs: i64,
    pub partition_of_tick: bool,
    pub owner: &'a str,
    pub priority: Option<i16>,
    pub next_tick_at: Option<DateTime<Utc>>,
}

/// One decided tick (or a skipped range of them).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TickRow {
    pub nominal_at: DateTime<Utc>,
    pub last_at: Option<DateTime<Utc>>,
    pub outcome: String,
    pub run_id: Option<Uuid>,
    pub reason: Option<String>,
    pub decided_at: DateTime<Utc>,
}

/// What became of a tick.
#[derive(Debug, Clone)]
pub enum Outcome<'a> {
    Submitted(Uuid),
    Buffered,
    /// Skipped, with why; `until` ends a skipped range.
    Skipped {
        reason: &'a str,
        until: Option<DateTime<Utc>>,
    },
}

const COLUMNS: &str = "name, plan_name, plan_file, plan_source, cron, tz, overlap::text AS overlap, catch_up_secs, \
     partition_of_tick, owner, priority, paused, next_tick_at, created_at, trigger, missing, debounce_secs, \
     seen_materialization";

/// Schedules (`store.schedules()`).
#[derive(Clone, Copy)]
pub struct Schedules<'a> {
    pool: &'a sqlx::PgPool,
}

impl Store {
    pub fn schedules(&self) -> Schedules<'_> {
        Schedules { pool: &self.pool }
    }
}

impl Schedules<'_> {
    /// Adds a schedule; `false` if one of that name exists.
    pub async fn add(&self, s: &NewSchedule<'_>) -> Result<bool, StoreError> {
        let added = sqlx::query(
            "INSERT INTO schedules (name, plan_name, plan_file, plan_source, cron, tz, overlap, catch_up_secs,
                                    partition_of_tick, owner, priority, next_tick_at, trigger, missing,
                                    debounce_secs, seen_materialization)
             VALUES ($1, $2, $3, $4, $5, $6, $7::schedule_overlap, $8, $9, $10, $11, $12, $13, $14, $15,
                     -- An `upstream` schedule answers what is materialized after it was added.
                     CASE WHEN $13 = 'upstream' THEN (SELECT coalesce(max(id), 0) FROM materializations) ELSE 0 END)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(s.name)
        .bind(s.plan_name)
        .bind(s.plan_file)
        .bind(s.plan_source)
        .bind(s.cron)
        .bind(s.tz)
        .bind(s.overlap)
        .bind(s.catch_up_secs)
        .bind(s.partition_of_tick)
        .bind(s.owner)
        .bind(s.priority)
        .bind(s.next_tick_at)
        .bind(s.trigger)
        .bind(s.missing)
        .bind(s.debounce_secs)
        .execute(self.pool)
        .await?;
        Ok(added.rows_affected() == 1)
    }

    /// Every schedule, by name.
    pub async fn list(&self) -> Result<Vec<ScheduleRow>, StoreError> {
        let statement = format!("SELECT {COLUMNS} FROM schedules ORDER BY name");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(statement)).fetch_all(self.pool).await?)
    }

    pub async fn get(&self, name: &str) -> Result<Option<ScheduleRow>, StoreError> {
        let statement = format!("SELECT {COLUMNS} FROM schedules WHERE name = $1");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(statement)).bind(name).fetch_optional(self.pool).await?)
    }

    /// Pauses a schedule; `false` if there is none of that name.
    pub async fn pause(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE schedules SET paused = true WHERE name = $1")
            .bind(name)
            .execute(self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Resumes a schedule from `next_tick_at` (the ticks of the pause are not run); `false`
    /// if there is none of that name.
    pub async fn resume(&self, name: &str, next_tick_at: Option<DateTime<Utc>>) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE schedules SET paused = false,
                    next_tick_at = CASE WHEN paused THEN $2 ELSE next_tick_at END
             WHERE name = $1",
        )
        .bind(name)
        .bind(next_tick_at)
        .execute(self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Removes a schedule and its ticks (its runs stay); `false` if there is none.
    pub async fn remove(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM schedules WHERE name = $1").bind(name).execute(self.pool).await?;
        Ok(done.rows_affected() == 1)
    }

    /// Schedules with something to do at `now`: a tick due, or a buffered tick. At most
    /// `limit`, the longest due first.
    pub async fn due(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<ScheduleRow>, StoreError> {
        let statement = format!(
            "SELECT {COLUMNS} FROM schedules s
             WHERE NOT paused AND (next_tick_at <= $1 OR trigger <> 'cron'
                   OR EXISTS (SELECT 1 FROM schedule_ticks t WHERE t.schedule = s.name AND t.outcome = 'buffered'))
             ORDER BY next_tick_at NULLS LAST LIMIT $2"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(statement))
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(self.pool)
            .await?)
    }

    /// The earliest tick due among unpaused schedules.
    pub async fn next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(sqlx::query_scalar("SELECT min(next_tick_at) FROM schedules WHERE NOT paused")
            .fetch_one(self.pool)
            .await?)
    }

    /// The schedule's runs still queued or running.
    pub async fn active_runs(&self, name: &str) -> Result<Vec<Uuid>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM runs WHERE schedule = $1 AND status IN ('queued', 'running') ORDER BY created_at",
        )
        .bind(name)
        .fetch_all(self.pool)
        .await?)
    }

    /// The schedule's buffered ticks, oldest first.
    pub async fn buffered(&self, name: &str) -> Result<Vec<DateTime<Utc>>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT nominal_at FROM schedule_ticks WHERE schedule = $1 AND outcome = 'buffered' ORDER BY nominal_at",
        )
        .bind(name)
        .fetch_all(self.pool)
        .await?)
    }

    /// Records what became of tick `tick` and, with `advance`, moves the schedule on to the
    /// tick after it: only if the schedule is still at `tick` (else another leader decided
    /// it, and `false` is returned). A buffered tick is recorded again when submitted.
    pub async fn record(
        &self,
        name: &str,
        tick: DateTime<Utc>,
        outcome: &Outcome<'_>,
        advance: Option<Option<DateTime<Utc>>>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        if let Some(next) = advance {
            let moved =
                sqlx::query("UPDATE schedules SET next_tick_at = $3 WHERE name = $1 AND next_tick_at = $2")
                    .bind(name)
                    .bind(tick)
                    .bind(next)
                    .execute(&mut *tx)
                    .await?;
            if moved.rows_affected() == 0 {
                return Ok(false);
            }
        }
        let (kind, run, reason, until) = match outcome {
            Outcome::Submitted(run) => ("submitted", Some(*run), None, None),
            Outcome::Buffered => ("buffered", None, None, None),
            Outcome::Skipped { reason, until } => ("skipped", None, Some(*reason), *until),
        };
        sqlx::query(
            "INSERT INTO schedule_ticks (schedule, nominal_at, last_at, outcome, run_id, reason)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (schedule, nominal_at) DO UPDATE
                 SET outcome = excluded.outcome, run_id = excluded.run_id, reason = excluded.reason,
                     decided_at = now()
                 WHERE schedule_ticks.outcome = 'buffered'",
        )
        .bind(name)
        .bind(tick)
        .bind(until)
        .bind(kind)
        .bind(run)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
        if let Some(run) = run {
            tie_run(&mut tx, run, name).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// When a triggered schedule last decided: submitted a run, or found its plan would not.
    pub async fn last_decided(&self, name: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(sqlx::query_scalar("SELECT max(nominal_at) FROM schedule_ticks WHERE schedule = $1")
            .bind(name)
            .fetch_one(self.pool)
            .await?)
    }

    /// Records that a triggered schedule submitted `run` at `at`, and what it has answered
    /// since (`seen_materialization`: the newest materialization for `upstream`, its count
    /// of runs for `stale`): only if it had answered `answered` before (else another leader
    /// recorded it, and `false` is returned).
    pub async fn record_fired(
        &self,
        name: &str,
        at: DateTime<Utc>,
        run: Uuid,
        answered: i64,
        seen: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let moved = sqlx::query(
            "UPDATE schedules SET seen_materialization = $3 WHERE name = $1 AND seen_materialization = $2",
        )
        .bind(name)
        .bind(answered)
        .bind(seen)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO schedule_ticks (schedule, nominal_at, outcome, run_id) VALUES ($1, $2, 'submitted', $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(name)
        .bind(at)
        .bind(run)
        .execute(&mut *tx)
        .await?;
        tie_run(&mut tx, run, name).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The schedule's latest `limit` decided ticks, newest first.
    pub async fn ticks(&self, name: &str, limit: u32) -> Result<Vec<TickRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT nominal_at, last_at, outcome, run_id, reason, decided_at FROM schedule_ticks
             WHERE schedule = $1 ORDER BY nominal_at DESC LIMIT $2",
        )
        .bind(name)
        .bind(i64::from(limit))
        .fetch_all(self.pool)
        .await?)
    }
}

/// Marks `run` as the schedule's, so that its overlap and debounce see it.
async fn tie_run(tx: &mut sqlx::PgConnection, run: Uuid, schedule: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE runs SET schedule = $2 WHERE id = $1").bind(run).bind(schedule).execute(tx).await?;
    Ok(())
}

/// A schedule's backfill (migration 0029).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BackfillRow {
    pub id: Uuid,
    pub schedule: String,
    pub from_at: DateTime<Utc>,
    pub to_at: DateTime<Utc>,
    pub next_at: Option<DateTime<Utc>>,
    pub max_in_flight: i32,
    pub submitted: i32,
    pub created_at: DateTime<Utc>,
    pub done_at: Option<DateTime<Utc>>,
}

const BACKFILL_COLUMNS: &str =
    "id, schedule, from_at, to_at, next_at, max_in_flight, submitted, created_at, done_at";

impl Schedules<'_> {
    /// Starts a backfill of `schedule` over `[from, to]`, at its first tick `first`.
    pub async fn add_backfill(
        &self,
        schedule: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        first: DateTime<Utc>,
        max_in_flight: i32,
    ) -> Result<BackfillRow, StoreError> {
        let statement = format!(
            "INSERT INTO schedule_backfills (id, schedule, from_at, to_at, next_at, max_in_flight)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {BACKFILL_COLUMNS}"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(statement))
            .bind(Uuid::now_v7())
            .bind(schedule)
            .bind(from)
            .bind(to)
            .bind(first)
            .bind(max_in_flight)
            .fetch_one(self.pool)
            .await?)
    }

    /// Backfills with ticks left, of schedules not paused, oldest first.
    pub async fn open_backfills(&self, limit: u32) -> Result<Vec<BackfillRow>, StoreError> {
        let statement = format!(
            "SELECT {BACKFILL_COLUMNS} FROM schedule_backfills b
             WHERE next_at IS NOT NULL AND NOT (SELECT paused FROM schedules s WHERE s.name = b.schedule)
             ORDER BY created_at LIMIT $1"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(statement)).bind(i64::from(limit)).fetch_all(self.pool).await?)
    }

    /// A schedule's backfills, newest first.
    pub async fn backfills(&self, schedule: &str) -> Result<Vec<BackfillRow>, StoreError> {
        let statement = format!(
            "SELECT {BACKFILL_COLUMNS} FROM schedule_backfills WHERE schedule = $1 ORDER BY created_at DESC"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(statement)).bind(schedule).fetch_all(self.pool).await?)
    }

    /// The backfill's runs still queued or running.
    pub async fn backfill_in_flight(&self, backfill: Uuid) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM runs WHERE backfill = $1 AND status IN ('queued', 'running')",
        )
        .bind(backfill)
        .fetch_one(self.pool)
        .await?)
    }

    /// Records that the backfill submitted `tick` as a run (or passed over it, saying why)
    /// and moves it to `next` (`None`: done), only if it is still at `tick`; the tick is
    /// listed among the schedule's (unless the schedule decided it itself).
    pub async fn backfilled(
        &self,
        backfill: &BackfillRow,
        tick: DateTime<Utc>,
        run: Result<Uuid, &str>,
        next: Option<DateTime<Utc>>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let moved = sqlx::query(
            "UPDATE schedule_backfills SET next_at = $3, submitted = submitted + 1,
                    done_at = CASE WHEN $3::timestamptz IS NULL THEN now() END
             WHERE id = $1 AND next_at = $2",
        )
        .bind(backfill.id)
        .bind(tick)
        .bind(next)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() == 0 {
            return Ok(false);
        }
        let (outcome, run, reason) = match run {
            Ok(run) => ("submitted", Some(run), "backfill".to_owned()),
            Err(why) => ("skipped", None, format!("backfill: {why}")),
        };
        sqlx::query(
            "INSERT INTO schedule_ticks (schedule, nominal_at, outcome, run_id, reason)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (schedule, nominal_at) DO NOTHING",
        )
        .bind(&backfill.schedule)
        .bind(tick)
        .bind(outcome)
        .bind(run)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
        if let Some(run) = run {
            sqlx::query("UPDATE runs SET schedule = $2, backfill = coalesce(backfill, $3) WHERE id = $1")
                .bind(run)
                .bind(&backfill.schedule)
                .bind(backfill.id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}
