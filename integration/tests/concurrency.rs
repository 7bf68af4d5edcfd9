//! Concurrency caps: never more than `max` steps of a key (or of an op version, with
//! `--max-in-flight`) running at once, across runs and owners, while workers are SIGKILLed
//! and while the leading dispatcher is; each strategy does what it says. Every cap is
//! checked from the run store's history (each step's `started_at`–`finished_at`, as its
//! workers reported them), never by timing.

use std::{collections::HashMap, time::Duration};

use anyhow::Context;
use chrono::{DateTime, Utc};
use opflow_integration::{Env, lease_holder, parse_summary, sigkill, wait_for};

/// Only turns a hang into a failure.
const DEADLINE: Duration = Duration::from_secs(180);

/// A plan of one asset with `partitions` × `sweep` steps that sleep `sleep_ms`, capped by
/// `concurrency` (YAML).
fn keyed(name: &str, partitions: &[&str], sweep: u32, sleep_ms: u32, concurrency: &str) -> String {
    let partitions = if partitions.is_empty() {
        String::new()
    } else {
        format!("    partitions: [{}]\n", partitions.join(", "))
    };
    format!(
        "name: {name}\nassets:\n  - name: {name}\n    op: noop@1.1.0\n{partitions}    sweep: {{k: {{from: 1, to: {sweep}}}}}\n    config: {{sleep_ms: {sleep_ms}}}\n    concurrency: {concurrency}\n"
    )
}

async fn submit(env: &Env, name: &str, yaml: &str, owner: &str) -> anyhow::Result<String> {
    let plan = env.plan_file(name, yaml)?;
    let plan = plan.to_str().context("utf-8")?;
    let run = parse_summary(&env.opflow_ok(&["run", plan, "--json", "--owner", owner]).await?)?;
    Ok(run["run_id"].as_str().context("run_id")?.to_owned())
}

async fn count(db: &sqlx::PgPool, run: &str, status: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM steps WHERE run_id = $1::uuid AND status::text = $2")
        .bind(run)
        .bind(status)
        .fetch_one(db)
        .await?)
}

async fn run_status(db: &sqlx::PgPool, run: &str) -> anyhow::Result<String> {
    Ok(sqlx::query_scalar("SELECT status::text FROM runs WHERE id = $1::uuid")
        .bind(run)
        .fetch_one(db)
        .await?)
}

async fn wait_for_end(db: &sqlx::PgPool, run: &str) -> anyhow::Result<String> {
    wait_for("the run to end", DEADLINE, || async {
        let status = run_status(db, run).await?;
        Ok(matches!(status.as_str(), "succeeded" | "failed" | "canceled").then_some(status))
    })
    .await
}

/// Each step that ran: its run, id, and when it started and finished.
type Ran = (String, i32, DateTime<Utc>, DateTime<Utc>);

async fn ran(db: &sqlx::PgPool, runs: &[&str]) -> anyhow::Result<Vec<Ran>> {
    let runs: Vec<String> = runs.iter().map(|r| (*r).to_owned()).collect();
    Ok(sqlx::query_as(
        "SELECT run_id::text, id, started_at, finished_at FROM steps
         WHERE run_id::text = ANY($1) AND started_at IS NOT NULL AND finished_at IS NOT NULL",
    )
    .bind(&runs)
    .fetch_all(db)
    .await?)
}

/// The most steps of each key that were ever running at the same moment. An end and a start
/// at the same instant do not overlap.
fn most_at_once(ran: &[Ran], key_of: impl Fn(&Ran) -> String) -> HashMap<String, usize> {
    let mut moments: HashMap<String, Vec<(DateTime<Utc>, i32)>> = HashMap::new();
    for step in ran {
        let moments = moments.entry(key_of(step)).or_default();
        moments.push((step.2, 1));
        moments.push((step.3, -1));
    }
    moments
        .into_iter()
        .map(|(key, mut moments)| {
            moments.sort();
            let (mut now, mut most) = (0i32, 0i32);
            for (_, change) in moments {
                now += change;
                most = most.max(now);
            }
            (key, most as usize)
        })
        .collect()
}

async fn slots_left(db: &sqlx::PgPool) -> anyhow::Result<()> {
    wait_for("every concurrency slot to be given back", DEADLINE, || async {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM key_slots").fetch_one(db).await?;
        Ok((left == 0).then_some(()))
    })
    .await
}

#[tokio::test]
async fn a_key_shared_by_two_owners_runs_at_most_max_while_workers_are_killed() -> anyhow::Result<()> {
    let mut env = Env::new("keys_sigkill").await?;
    env.register("noop").await?;
    let _dispatcher = env.spawn_dispatcher().await?;
    let db = env.db().await?;
    let concurrency = r#"{key: "shared/{partition}", max: 2}"#;
    let partitions = ["p0", "p1", "p2"];
    let a = submit(&env, "keyed-a", &keyed("keyed-a", &partitions, 8, 150, concurrency), "risk").await?;
    let b = submit(&env, "keyed-b", &keyed("keyed-b", &partitions, 8, 150, concurrency), "ml").await?;
    let mut workers = Vec::new();
    for _ in 0..4 {
        workers.push(env.spawn_worker("noop")?);
    }
    // Kill a worker in the middle of its step twice, replacing it each time: its step is
    // redelivered, and still holds its key's slot.
    for after in [8, 24] {
        wait_for("steps to succeed", DEADLINE, || async {
            Ok((count(&db, &a, "succeeded").await? + count(&db, &b, "succeeded").await? >= after)
                .then_some(()))
        })
        .await?;
        sigkill(&workers.remove(0))?;
        workers.push(env.spawn_worker("noop")?);
    }
    assert_eq!(wait_for_end(&db, &a).await?, "succeeded");
    assert_eq!(wait_for_end(&db, &b).await?, "succeeded");
    let ran = ran(&db, &[&a, &b]).await?;
    assert_eq!(ran.len(), 48);
    // Steps 0–7 are p0, 8–15 p1, 16–23 p2, in both plans: one key per partition.
    let most = most_at_once(&ran, |(_, step, _, _)| partitions[*step as usize / 8].to_owned());
    assert!(most.values().all(|&n| n <= 2), "a key ran over its cap of 2: {most:?}");
    assert_eq!(most.values().max(), Some(&2), "four workers fill each key's two slots: {most:?}");
    slots_left(&db).await?;
    Ok(())
}

#[tokio::test]
async fn a_new_leader_counts_the_slots_its_predecessor_gave_out() -> anyhow::Result<()> {
    let mut env = Env::new("keys_failover").await?;
    env.register("noop").await?;
    let mut first = env.spawn_dispatcher().await?;
    let first_api = std::mem::replace(&mut env.api_addr, "127.0.0.1:0".into());
    let mut second = env.spawn_dispatcher().await?;
    env.api_addr = first_api;
    let db = env.db().await?;
    let run = submit(&env, "keyed", &keyed("keyed", &[], 30, 300, r#"{key: "one-licence", max: 2}"#), "risk")
        .await?;
    let _workers: Vec<_> = (0..4).map(|_| env.spawn_worker("noop")).collect::<Result<_, _>>()?;
    wait_for("a few steps to succeed", DEADLINE, || async {
        Ok((count(&db, &run, "succeeded").await? >= 4).then_some(()))
    })
    .await?;
    // Kill the leader while two steps hold the licence: the standby must count them.
    let leader = lease_holder(&db).await?.context("nobody holds the dispatcher lease")?;
    let survivor = if Some(leader) == first.pid() {
        first.kill()?;
        second
    } else {
        second.kill()?;
        first
    };
    assert_eq!(wait_for_end(&db, &run).await?, "succeeded");
    assert_eq!(lease_holder(&db).await?, survivor.pid(), "the standby took over");
    let ran = ran(&db, &[&run]).await?;
    assert_eq!(ran.len(), 30);
    let most = most_at_once(&ran, |_| "one-licence".to_owned());
    assert_eq!(most["one-licence"], 2, "never more than 2 at once, and 4 workers fill both slots");
    slots_left(&db).await?;
    Ok(())
}

#[tokio::test]
async fn cancel_newest_cancels_the_steps_that_would_go_over() -> anyhow::Result<()> {
    let mut env = Env::new("keys_newest").await?;
    env.register("noop").await?;
    let _dispatcher = env.spawn_dispatcher().await?;
    let _worker = env.spawn_worker("noop")?;
    let db = env.db().await?;
    let plan = keyed("newest", &["p0"], 4, 200, r#"{key: "{partition}", max: 1, strategy: cancel_newest}"#);
    let run = submit(&env, "newest", &plan, "risk").await?;
    assert_eq!(wait_for_end(&db, &run).await?, "failed");
    assert_eq!((count(&db, &run, "succeeded").await?, count(&db, &run, "failed").await?), (1, 3));
    let errors: Vec<(i32, String)> = sqlx::query_as(
        "SELECT id, error FROM steps WHERE run_id = $1::uuid AND status = 'failed' ORDER BY id",
    )
    .bind(&run)
    .fetch_all(&db)
    .await?;
    for (_, error) in &errors {
        assert!(error.contains("concurrency key `p0`") && error.contains("cancel_newest"), "{error}");
    }
    let failed: Vec<i32> = errors.iter().map(|(id, _)| *id).collect();
    let seen_by_workers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE run_id = $1::uuid AND step_id = ANY($2) AND worker <> 'dispatcher'",
    )
    .bind(&run)
    .bind(&failed)
    .fetch_one(&db)
    .await?;
    assert_eq!(seen_by_workers, 0, "a canceled step never reaches a worker");
    slots_left(&db).await?;
    Ok(())
}

#[tokio::test]
async fn cancel_in_progress_stops_the_old_step_before_the_new_one_starts() -> anyhow::Result<()> {
    let mut env = Env::new("keys_in_progress").await?;
    env.register("noop").await?;
    let _dispatcher = env.spawn_dispatcher().await?;
    let _workers = [env.spawn_worker("noop")?, env.spawn_worker("noop")?];
    let db = env.db().await?;
    let rule = r#"{key: "model", max: 1, strategy: cancel_in_progress}"#;
    // The old step would sleep ten minutes: only the cancel ends it within the deadline.
    let old = submit(&env, "old", &keyed("old", &[], 1, 600_000, rule), "risk").await?;
    wait_for("the old step to start", DEADLINE, || async {
        Ok((count(&db, &old, "running").await? == 1).then_some(()))
    })
    .await?;
    let new = submit(&env, "new", &keyed("new", &[], 1, 100, rule), "ml").await?;
    assert_eq!(wait_for_end(&db, &new).await?, "succeeded");
    assert_eq!(wait_for_end(&db, &old).await?, "failed");
    let error: String = sqlx::query_scalar("SELECT error FROM steps WHERE run_id = $1::uuid")
        .bind(&old)
        .fetch_one(&db)
        .await?;
    assert!(error.contains("newer step of concurrency key `model`") && error.contains(&new), "{error}");
    // The old step's worker stopped it and said so; the new one started only after that.
    let (stopped_at, said): (DateTime<Utc>, String) = sqlx::query_as(
        "SELECT at, body->'failed'->>'error' FROM events
         WHERE run_id = $1::uuid AND kind = 'failed' AND worker <> 'dispatcher (concurrency)'",
    )
    .bind(&old)
    .fetch_one(&db)
    .await?;
    assert!(said.contains("a newer step of its concurrency key took its place"), "{said}");
    let started: DateTime<Utc> = sqlx::query_scalar("SELECT started_at FROM steps WHERE run_id = $1::uuid")
        .bind(&new)
        .fetch_one(&db)
        .await?;
    assert!(
        started >= stopped_at,
        "the new step started at {started}, before the old one stopped at {stopped_at}"
    );
    slots_left(&db).await?;
    Ok(())
}

#[tokio::test]
async fn a_canceled_runs_waiting_steps_never_start_and_its_running_one_frees_its_slot() -> anyhow::Result<()>
{
    let mut env = Env::new("keys_cancel").await?;
    env.register("noop").await?;
    let _dispatcher = env.spawn_dispatcher().await?;
    let _workers = [env.spawn_worker("noop")?, env.spawn_worker("noop")?];
    let db = env.db().await?;
    let rule = r#"{key: "db", max: 1}"#;
    let run = submit(&env, "slow", &keyed("slow", &[], 5, 600_000, rule), "risk").await?;
    wait_for("the first step to start", DEADLINE, || async {
        Ok((count(&db, &run, "running").await? == 1).then_some(()))
    })
    .await?;
    // Status says why the other four wait: the key, and who holds its slot.
    let status = wait_for("status to name the key", DEADLINE, || async {
        let status = parse_summary(&env.opflow_ok(&["status", &run, "--json"]).await?)?;
        Ok((status["waiting_for_keys"][0]["waiting"] == 4).then_some(status))
    })
    .await?;
    let wait = &status["waiting_for_keys"][0];
    assert_eq!(
        (wait["key"].as_str(), wait["in_flight"].as_i64(), wait["max"].as_i64()),
        (Some("db"), Some(1), Some(1))
    );
    let human = env.opflow_ok(&["status", &run]).await?;
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(human.contains("4 wait for concurrency key `db`: 1 of max 1 in flight"), "{human}");
    assert!(!human.contains("publish window"), "none waits for the window: {human}");
    env.opflow_ok(&["cancel", &run]).await?;
    assert_eq!(wait_for_end(&db, &run).await?, "canceled");
    // The running step stops, its worker says so, and the slot goes to the next run.
    let next = submit(&env, "next", &keyed("next", &[], 1, 10, rule), "risk").await?;
    assert_eq!(wait_for_end(&db, &next).await?, "succeeded");
    let started: i64 =
        sqlx::query_scalar("SELECT count(*) FROM steps WHERE run_id = $1::uuid AND started_at IS NOT NULL")
            .bind(&run)
            .fetch_one(&db)
            .await?;
    assert_eq!(started, 1, "the waiting steps of a canceled run never start");
    let heard: i64 = sqlx::query_scalar("SELECT count(DISTINCT step_id) FROM events WHERE run_id = $1::uuid")
        .bind(&run)
        .fetch_one(&db)
        .await?;
    assert_eq!(heard, 1, "no worker ever saw the waiting steps");
    slots_left(&db).await?;
    Ok(())
}

#[tokio::test]
async fn an_op_versions_cap_holds_over_every_run() -> anyhow::Result<()> {
    let mut env = Env::new("keys_op_cap").await?;
    env.register("noop").await?;
    env.opflow_ok(&["ops", "scale", "noop@1.1.0", "--max-in-flight", "2"]).await?;
    let listed = env.opflow_ok(&["ops", "list", "--json"]).await?;
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout)?;
    assert_eq!(listed[0]["max_in_flight"], 2, "{listed}");
    let _dispatcher = env.spawn_dispatcher().await?;
    let db = env.db().await?;
    let plain = |name: &str| {
        format!(
            "name: {name}\nassets:\n  - name: {name}\n    op: noop@1.1.0\n    sweep: {{k: {{from: 1, to: 8}}}}\n    config: {{sleep_ms: 150}}\n"
        )
    };
    let a = submit(&env, "a", &plain("a"), "risk").await?;
    let b = submit(&env, "b", &plain("b"), "ml").await?;
    let _workers: Vec<_> = (0..4).map(|_| env.spawn_worker("noop")).collect::<Result<_, _>>()?;
    assert_eq!(wait_for_end(&db, &a).await?, "succeeded");
    assert_eq!(wait_for_end(&db, &b).await?, "succeeded");
    let most = most_at_once(&ran(&db, &[&a, &b]).await?, |_| "noop@1.1.0".to_owned());
    assert_eq!(most["noop@1.1.0"], 2, "four workers, but never more than 2 steps of the op at once");
    slots_left(&db).await?;
    Ok(())
}
