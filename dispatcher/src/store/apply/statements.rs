//! The statements that write a batch's decisions, one bulk statement each (`UNNEST` of the
//! columns in `columns`), all guarded by each step's attempt and status so that a
//! duplicate, late or reordered event matches no row and changes nothing.

use std::collections::{BTreeMap, HashMap};

use opflow_protocol::{Event, RunId, StepId};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{
    columns::{EventRows, ProgressColumns, ResultColumns, RetryColumns, StepColumns},
    decide::{RunCounters, RunDelta},
};
use crate::store::{
    EVENTS_CHANNEL, RUNS_CHANNEL, StoreError,
    outbox::{self, OutboxRow},
    run_plan::{DepGroup, StepRange},
    runs::RunStatus,
};

/// A step row a guarded statement moved to a terminal state: run, step, the event that
/// did it, and how long its attempt ran (`finished_at − started_at`) when the worker said
/// when it started.
pub struct Moved {
    pub run: Uuid,
    pub step: StepId,
    pub event: Uuid,
    pub succeeded: bool,
    pub seconds: Option<f64>,
}

/// Marks queued steps running; returns each step's run, its id and the event that did it. The
/// start is stamped with the dispatcher's clock, as are heartbeats (below): a step's
/// liveness never rests on a worker's clock, fast, slow or forged.
pub async fn started(
    tx: &mut PgConnection,
    cols: &StepColumns,
) -> Result<Vec<(Uuid, i32, Uuid)>, StoreError> {
    if cols.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_as(
        "UPDATE steps s SET status = 'running', started_at = now(), heartbeat_at = NULL, worker = u.worker
         FROM UNNEST($1::uuid[], $2::int[], $3::int[], $4::timestamptz[], $5::text[], $6::uuid[])
              AS u(run_id, step_id, attempt, at, worker, event_id)
         WHERE s.run_id = u.run_id AND s.id = u.step_id AND s.attempt = u.attempt AND s.status = 'queued'
         RETURNING s.run_id, s.id, u.event_id",
    )
    .bind(&cols.runs)
    .bind(&cols.steps)
    .bind(&cols.attempts)
    .bind(&cols.ats)
    .bind(&cols.workers)
    .bind(&cols.ids)
    .fetch_all(&mut *tx)
    .await?)
}

/// Progress and heartbeats: the latest of each step's events in the batch wins; the step
/// showed life now, by the dispatcher's clock (a heartbeat stamped `9999-12-31` by its
/// worker keeps it alive no longer than one stamped with the true time).
pub async fn progress(tx: &mut PgConnection, cols: &ProgressColumns) -> Result<(), StoreError> {
    if cols.steps.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE steps s SET progress = coalesce(u.fraction, s.progress),
                            progress_message = coalesce(u.message, s.progress_message),
                            heartbeat_at = now()
         FROM UNNEST($1::uuid[], $2::int[], $3::int[], $4::timestamptz[], $5::real[], $6::text[])
              AS u(run_id, step_id, attempt, at, fraction, message)
         WHERE s.run_id = u.run_id AND s.id = u.step_id AND s.attempt = u.attempt
           AND s.status IN ('queued', 'running')",
    )
    .bind(&cols.steps.runs)
    .bind(&cols.steps.steps)
    .bind(&cols.steps.attempts)
    .bind(&cols.steps.ats)
    .bind(&cols.fractions)
    .bind(&cols.messages)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Ends steps with their settled results, successes and final failures in one statement:
/// a success keeps its output and clears the error; a failure keeps its error.
pub async fn results(tx: &mut PgConnection, cols: &ResultColumns) -> Result<Vec<Moved>, StoreError> {
    if cols.steps.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<(Uuid, i32, Uuid, bool, Option<f64>)> = sqlx::query_as(
        "UPDATE steps s SET status = u.status::step_status,
                            output = u.output, output_bytes = octet_length(u.output::text),
                            error = u.error,
                            progress = CASE WHEN u.status = 'succeeded' THEN 1 ELSE s.progress END,
                            finished_at = least(u.at, now()), worker = u.worker,
                            started_at = least(coalesce(u.started_at, s.started_at, u.at), now())
         FROM UNNEST($1::uuid[], $2::int[], $3::int[], $4::timestamptz[], $5::text[], $6::text[], $7::jsonb[],
                     $8::text[], $9::uuid[], $10::timestamptz[])
              AS u(run_id, step_id, attempt, at, worker, status, output, error, event_id, started_at)
         WHERE s.run_id = u.run_id AND s.id = u.step_id AND s.attempt = u.attempt
           AND s.status IN ('queued', 'running')
         RETURNING s.run_id, s.id, u.event_id, u.status = 'succeeded',
                   -- How long the attempt ran, if a worker said when it started.
                   CASE WHEN u.started_at IS NOT NULL
                        THEN extract(epoch FROM s.finished_at - s.started_at)::float8 END",
    )
    .bind(&cols.steps.runs)
    .bind(&cols.steps.steps)
    .bind(&cols.steps.attempts)
    .bind(&cols.steps.ats)
    .bind(&cols.steps.workers)
    .bind(&cols.statuses)
    .bind(&cols.outputs)
    .bind(&cols.errors)
    .bind(&cols.steps.ids)
    .bind(&cols.steps.started_ats)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(run, step, event, succeeded, seconds)| Moved {
            run,
            step: StepId(step as u32),
            event,
            succeeded,
            seconds,
        })
        .collect())
}

/// Puts failed steps back for their next attempt at its time; returns each step's run, its
/// id and the event that did it. The attempt's start and last heartbeat go with it: the next
/// attempt inherited them, and was found silent before its first heartbeat.
pub async fn retries(
    tx: &mut PgConnection,
    cols: &RetryColumns,
) -> Result<Vec<(Uuid, i32, Uuid)>, StoreError> {
    if cols.steps.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_as(
        "UPDATE steps s SET status = 'retrying', attempt = s.attempt + 1, next_attempt_at = u.next_at,
                            error = u.error, progress = NULL, progress_message = NULL,
                            heartbeat_at = NULL, started_at = NULL
         FROM UNNEST($1::uuid[], $2::int[], $3::int[], $4::timestamptz[], $5::text[], $6::uuid[])
              AS u(run_id, step_id, attempt, next_at, error, event_id)
         WHERE s.run_id = u.run_id AND s.id = u.step_id AND s.attempt = u.attempt
           AND s.status IN ('queued', 'running')
         RETURNING s.run_id, s.id, u.event_id",
    )
    .bind(&cols.steps.runs)
    .bind(&cols.steps.steps)
    .bind(&cols.steps.attempts)
    .bind(&cols.next_ats)
    .bind(&cols.errors)
    .bind(&cols.steps.ids)
    .fetch_all(&mut *tx)
    .await?)
}

/// Has the statements after it in this transaction planned for their own arrays: called
/// once, before the first of the statements that join a batch's *ranges* to `steps`
/// (unlock, skip) or its groups to `dep_groups` (count-down). A cached generic plan cannot
/// know how few ranges a batch names, estimates each `BETWEEN` to match a share of the
/// whole table, and so hash-joined every chain link to a full scan of its run's steps,
/// which grows with the run: a 10,000-step chain spent 1.8–2.6 ms of each link there and
/// cost twice the 200-step chain per link (docs/benchmarks.md, w2). A custom plan sees the
/// arrays and probes the primary key. The per-event statements before them keep their
/// cached plans, so a batch with nothing to unlock (a sweep) plans nothing.
pub async fn plan_for_these_arrays(tx: &mut PgConnection) -> Result<(), StoreError> {
    sqlx::query("SET LOCAL plan_cache_mode = force_custom_plan").execute(&mut *tx).await?;
    Ok(())
}

/// Counts the groups down by their successes; returns the groups that emptied.
pub async fn count_down(
    tx: &mut PgConnection,
    groups: &BTreeMap<(Uuid, DepGroup), i32>,
) -> Result<Vec<(Uuid, DepGroup)>, StoreError> {
    if groups.is_empty() {
        return Ok(Vec::new());
    }
    let (mut runs, mut upstream, mut parts, mut counts) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((run, group), count) in groups {
        runs.push(*run);
        upstream.push(group.upstream as i32);
        parts.push(group.partition);
        counts.push(*count);
    }
    let rows: Vec<(Uuid, i32, i32, bool)> = sqlx::query_as(
        "UPDATE dep_groups g SET remaining = g.remaining - d.k
         FROM UNNEST($1::uuid[], $2::int[], $3::int[], $4::int[]) AS d(run_id, upstream, part, k)
         WHERE g.run_id = d.run_id AND g.upstream = d.upstream AND g.part = d.part
         RETURNING g.run_id, g.upstream, g.part, g.remaining = 0",
    )
    .bind(&runs)
    .bind(&upstream)
    .bind(&parts)
    .bind(&counts)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .filter(|(_, _, _, emptied)| *emptied)
        .map(|(run, upstream, part, _)| (run, DepGroup { upstream: upstream as u32, partition: part }))
        .collect())
}

/// Decrements `pending_upstream` over each range by its count, queues the steps that reach
/// zero and writes them to the outbox. Returns their outbox rows.
pub async fn unlock(
    tx: &mut PgConnection,
    unlocks: &BTreeMap<(Uuid, StepRange), i32>,
) -> Result<Vec<OutboxRow>, StoreError> {
    if unlocks.is_empty() {
        return Ok(Vec::new());
    }
    let (mut runs, mut firsts, mut lasts, mut counts) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((run, range), count) in unlocks {
        runs.push(*run);
        firsts.push(range.first as i32);
        lasts.push(range.last as i32);
        counts.push(*count);
    }
    let queued: Vec<(i64, Uuid, i32, i32)> = sqlx::query_as(
        "WITH d AS (
             SELECT s.run_id, s.id, sum(d.k)::int AS k
             FROM UNNEST($1::uuid[], $2::int[], $3::int[], $4::int[]) AS d(run_id, lo, hi, k)
             JOIN steps s ON s.run_id = d.run_id AND s.id BETWEEN d.lo AND d.hi
             GROUP BY s.run_id, s.id
         ), unlocked AS (
             UPDATE steps s
             SET pending_upstream = s.pending_upstream - d.k,
                 status = CASE WHEN s.pending_upstream = d.k AND s.status = 'waiting'
                               THEN 'queued'::step_status ELSE s.status END,
                 queued_at = CASE WHEN s.pending_upstream = d.k AND s.status = 'waiting'
                                  THEN now() ELSE s.queued_at END
             FROM d
             WHERE s.run_id = d.run_id AND s.id = d.id
             RETURNING s.run_id, s.id, s.attempt, s.status, s.pending_upstream
         )
         INSERT INTO outbox (run_id, step_id, attempt)
         SELECT run_id, id, attempt FROM unlocked WHERE pending_upstream = 0 AND status = 'queued'
         ORDER BY run_id, id
         RETURNING seq, run_id, step_id, attempt",
    )
    .bind(&runs)
    .bind(&firsts)
    .bind(&lasts)
    .bind(&counts)
    .fetch_all(&mut *tx)
    .await?;
    Ok(queued.into_iter().map(|(seq, run, step, attempt)| outbox::row(seq, run, step, attempt)).collect())
}

/// Skips waiting steps in the given ranges, each with its reason; returns every step skipped.
pub async fn skip(
    tx: &mut PgConnection,
    skips: &[(Uuid, StepRange, String)],
) -> Result<Vec<(Uuid, StepId)>, StoreError> {
    if skips.is_empty() {
        return Ok(Vec::new());
    }
    let (mut runs, mut firsts, mut lasts, mut reasons) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (run, range, reason) in skips {
        runs.push(*run);
        firsts.push(range.first as i32);
        lasts.push(range.last as i32);
        reasons.push(reason.as_str());
    }
    let skipped: Vec<(Uuid, i32)> = sqlx::query_as(
        "UPDATE steps s SET status = 'skipped', finished_at = now(), error = r.reason
         FROM UNNEST($1::uuid[], $2::int[], $3::int[], $4::text[]) AS r(run_id, lo, hi, reason)
         WHERE s.run_id = r.run_id AND s.id BETWEEN r.lo AND r.hi AND s.status = 'waiting'
         RETURNING s.run_id, s.id",
    )
    .bind(&runs)
    .bind(&firsts)
    .bind(&lasts)
    .bind(&reasons)
    .fetch_all(&mut *tx)
    .await?;
    Ok(skipped.into_iter().map(|(run, step)| (run, StepId(step as u32))).collect())
}

/// What [`record`] did.
pub struct Recorded {
    /// Each run the batch touched, with its counters as they now are.
    pub runs: Vec<(Uuid, RunCounters)>,
    /// Events newly recorded (a duplicate, same id, is recorded once).
    pub inserted: usize,
}

/// The batch's statement on each run it touched: adds its counts to the run, stamps when
/// it started, numbers its events and appends those not recorded before. One statement,
/// so the run's row is updated once per batch for its counters and its event numbers;
/// how the run moves is decided from what this returns (`decide::run_moves`).
///
/// Each run's `event_seq` is bumped by its number of events and the events numbered after
/// the old value, in batch order. The bump locks the run's row until commit, so a reader
/// sees a run's numbers appear in order (migration 0011), and the counters returned are the
/// run's own until then. A duplicate (same id, already recorded) leaves a gap, which
/// readers never rely on. Runs whose events were recorded are announced on
/// `EVENTS_CHANNEL` (for the events stream).
pub async fn record(
    tx: &mut PgConnection,
    deltas: &HashMap<Uuid, RunDelta>,
    events: &EventRows,
) -> Result<Recorded, StoreError> {
    if deltas.is_empty() && events.ids.is_empty() {
        return Ok(Recorded { runs: Vec::new(), inserted: 0 });
    }
    let (mut runs, mut succeeded, mut failed, mut skipped, mut started, mut reused) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (run, d) in deltas {
        runs.push(*run);
        succeeded.push(d.succeeded);
        reused.push(d.reused);
        failed.push(d.failed);
        skipped.push(d.skipped);
        started.push(d.started);
    }
    type Row =
        (Option<Uuid>, Option<RunStatus>, Option<i32>, Option<i32>, Option<i32>, Option<i32>, Option<i64>);
    let rows: Vec<Row> = sqlx::query_as(
        "WITH d AS (
             SELECT * FROM UNNEST($1::uuid[], $2::int[], $3::int[], $4::int[], $5::bool[], $16::int[])
                 AS d(run_id, succeeded, failed, skipped, started, reused)
         ), e AS (
             SELECT * FROM UNNEST($6::uuid[], $7::uuid[], $8::int[], $9::int[], $10::text[], $11::jsonb[],
                                  $12::text[], $13::timestamptz[], $14::bool[])
                 WITH ORDINALITY AS e(id, run_id, step_id, attempt, kind, body, worker, at, applied, ord)
         ), counts AS (
             SELECT run_id, count(*)::int AS n FROM e GROUP BY run_id
         ), u AS (
             SELECT coalesce(d.run_id, c.run_id) AS run_id,
                    coalesce(d.succeeded, 0) AS succeeded, coalesce(d.failed, 0) AS failed,
                    coalesce(d.skipped, 0) AS skipped, coalesce(d.started, false) AS started,
                    coalesce(d.reused, 0) AS reused,
                    coalesce(c.n, 0) AS n
             FROM d FULL JOIN counts c ON c.run_id = d.run_id
         ), changed AS (
             UPDATE runs r
             SET steps_succeeded = r.steps_succeeded + u.succeeded,
                 steps_failed = r.steps_failed + u.failed,
                 steps_skipped = r.steps_skipped + u.skipped,
                 steps_reused = r.steps_reused + u.reused,
                 started_at = CASE WHEN r.started_at IS NULL AND u.started THEN now() ELSE r.started_at END,
                 event_seq = r.event_seq + u.n
             FROM u
             WHERE r.id = u.run_id
             RETURNING r.id, r.status, r.steps_total, r.steps_succeeded, r.steps_failed, r.steps_skipped,
                       r.event_seq - u.n AS base, u.n
         ), events_announced AS (
             SELECT pg_notify($15, CASE WHEN count(*) <= 100 THEN string_agg(id::text, ',') ELSE '' END)
             FROM changed WHERE n > 0 HAVING count(*) > 0
         ), inserted AS (
             INSERT INTO events (id, run_id, step_id, attempt, kind, body, worker, at, applied, seq)
             SELECT e.id, e.run_id, e.step_id, e.attempt, e.kind, e.body, e.worker, e.at, e.applied,
                    b.base + row_number() OVER (PARTITION BY e.run_id ORDER BY e.ord)
             FROM e JOIN changed b ON b.id = e.run_id
             -- Referenced so that it runs (a SELECT in WITH runs only when used).
             WHERE (SELECT count(*) FROM events_announced) >= 0
             ON CONFLICT (id) DO NOTHING
             RETURNING 1
         )
         SELECT id, status, steps_total, steps_succeeded, steps_failed, steps_skipped, NULL::bigint FROM changed
         UNION ALL
         SELECT NULL::uuid, NULL::run_status, NULL::int, NULL::int, NULL::int, NULL::int, count(*) FROM inserted",
    )
    .bind(&runs)
    .bind(&succeeded)
    .bind(&failed)
    .bind(&skipped)
    .bind(&started)
    .bind(&events.ids)
    .bind(&events.runs)
    .bind(&events.steps)
    .bind(&events.attempts)
    .bind(&events.kinds)
    .bind(&events.bodies)
    .bind(&events.workers)
    .bind(&events.ats)
    .bind(&events.applied)
    .bind(EVENTS_CHANNEL)
    .bind(&reused)
    .fetch_all(&mut *tx)
    .await?;
    let mut recorded = Recorded { runs: Vec::new(), inserted: 0 };
    for row in rows {
        match row {
            (Some(run), Some(status), Some(total), Some(succeeded), Some(failed), Some(skipped), _) => {
                recorded.runs.push((run, RunCounters { status, total, succeeded, failed, skipped }))
            }
            (_, _, _, _, _, _, Some(inserted)) => recorded.inserted = inserted as usize,
            _ => {}
        }
    }
    Ok(recorded)
}

/// Moves runs to the statuses decided for them (`decide::run_moves`), if they are still
/// going; a run that ends gets its `finished_at` (this transaction's `now()`) and is
/// announced on `RUNS_CHANNEL`, once, as it can end only once. Returns the runs that ended.
pub async fn move_runs(
    tx: &mut PgConnection,
    moves: &[(Uuid, RunStatus)],
) -> Result<Vec<(RunId, RunStatus)>, StoreError> {
    if moves.is_empty() {
        return Ok(Vec::new());
    }
    let runs: Vec<Uuid> = moves.iter().map(|(run, _)| *run).collect();
    let statuses: Vec<&str> = moves.iter().map(|(_, status)| status.as_str()).collect();
    let ended: Vec<(Uuid, RunStatus)> = sqlx::query_as(
        "WITH moved AS (
             UPDATE runs r
             SET status = u.status::run_status,
                 finished_at = CASE WHEN u.status IN ('succeeded', 'failed') THEN now() ELSE r.finished_at END
             FROM UNNEST($1::uuid[], $2::text[]) AS u(run_id, status)
             WHERE r.id = u.run_id AND r.status IN ('queued', 'running')
             RETURNING r.id, r.status, u.status IN ('succeeded', 'failed') AS ended
         ), ended AS (
             -- A volatile output is never pruned: each ended run is announced once.
             SELECT id, status, pg_notify($3, id::text) AS announced FROM moved WHERE ended
         )
         SELECT id, status FROM ended",
    )
    .bind(&runs)
    .bind(&statuses)
    .bind(RUNS_CHANNEL)
    .fetch_all(&mut *tx)
    .await?;
    Ok(ended.into_iter().map(|(run, status)| (RunId::from_uuid(run), status)).collect())
}

/// The failed check results recorded for the step attempts of `successes`.
pub(super) async fn failed_checks(
    tx: &mut PgConnection,
    successes: &[&Event],
) -> Result<Vec<super::decide::FailedCheck>, StoreError> {
    let runs: Vec<Uuid> = successes.iter().map(|e| e.run_id.as_uuid()).collect();
    let steps: Vec<i32> = successes.iter().map(|e| e.step_id.0 as i32).collect();
    let attempts: Vec<i32> = successes.iter().map(|e| e.attempt as i32).collect();
    let rows: Vec<(Uuid, i32, i32, String, Option<String>)> = sqlx::query_as(
        "SELECT e.run_id, e.step_id, e.attempt, e.body->'check_result'->>'name', e.body->'check_result'->>'detail'
         FROM UNNEST($1::uuid[], $2::int[], $3::int[]) AS u(run_id, step_id, attempt)
         JOIN events e ON e.run_id = u.run_id AND e.step_id = u.step_id AND e.attempt = u.attempt
         WHERE e.kind = 'check_result' AND (e.body->'check_result'->>'passed')::boolean = false",
    )
    .bind(&runs)
    .bind(&steps)
    .bind(&attempts)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(run, step, attempt, name, detail)| super::decide::FailedCheck {
            run,
            step: step as u32,
            attempt: attempt as u32,
            name,
            detail,
        })
        .collect())
}
