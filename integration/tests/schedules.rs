//! Schedules end to end: a real dispatcher's scheduler submits each tick of a
//! seconds-resolution cron once, keyed by the schedule and the tick; pauses, overlaps and
//! a dispatcher that was down are handled as the schedule says.

use std::time::Duration;

use anyhow::Context;
use opflow_integration::{Env, wait_for};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(60);

/// Adds schedule `name` of a one-step noop plan, with `args` (`--cron`, `--overlap`, …).
async fn add_quick(env: &Env, name: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let plan = env.plan_file("quick", "name: quick\nassets:\n  - name: a\n    op: noop@1.1.0\n")?;
    let mut command = vec!["schedules", "add", name, plan.to_str().context("utf-8")?];
    command.extend_from_slice(args);
    env.opflow_ok(&command).await
}

/// `opflow schedules show <name> --json`.
async fn show(env: &Env, name: &str) -> anyhow::Result<Value> {
    let output = env.opflow_ok(&["schedules", "show", name, "--json"]).await?;
    Ok(serde_json::from_slice(&output.stdout)?)
}

fn ticks<'a>(detail: &'a Value, outcome: &str) -> Vec<&'a Value> {
    detail["ticks"].as_array().into_iter().flatten().filter(|t| t["outcome"] == outcome).collect()
}

/// The runs the schedule submitted: (key, status), and how many runs share each key.
async fn runs_of(env: &mut Env, name: &str) -> anyhow::Result<Vec<(String, String)>> {
    let db = env.db().await?;
    Ok(sqlx::query_as("SELECT key, status::text FROM runs WHERE schedule = $1 ORDER BY key")
        .bind(name)
        .fetch_all(&db)
        .await?)
}

#[tokio::test]
async fn a_schedule_submits_each_tick_once_and_pauses_resumes_and_goes() -> anyhow::Result<()> {
    let mut env = Env::new("schedules_ticks").await?;
    env.register("noop").await?;
    let _dispatcher = env.spawn_dispatcher().await?;
    let _worker = env.spawn_worker("noop")?;
    let added = add_quick(&env, "every2s", &["--cron", "*/2 * * * * *", "--overlap", "allow_all"]).await?;
    let said = String::from_utf8_lossy(&added.stdout);
    assert!(said.contains("schedule every2s (active)") && said.contains("first tick:"), "{said}");
    let detail = wait_for("three ticks submitted", DEADLINE, || async {
        let detail = show(&env, "every2s").await?;
        Ok((ticks(&detail, "submitted").len() >= 3).then_some(detail))
    })
    .await?;
    assert_eq!(detail["upcoming"].as_array().map(Vec::len), Some(5), "{detail}");
    // Each tick's run carries the schedule and the tick as its key: one run per tick.
    let runs = runs_of(&mut env, "every2s").await?;
    let mut keys: Vec<&str> = runs.iter().map(|(key, _)| key.as_str()).collect();
    let before = keys.len();
    keys.dedup();
    assert_eq!(keys.len(), before, "one run per tick: {runs:?}");
    for tick in ticks(&detail, "submitted") {
        let at: chrono::DateTime<chrono::Utc> = tick["at"].as_str().context("at")?.parse()?;
        let key = format!("every2s@{}", at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        assert!(keys.contains(&key.as_str()), "{key} in {keys:?}");
        assert_eq!(at.timestamp() % 2, 0, "ticks are the cron's: {at}");
    }

    // Paused: no tick is decided.
    env.opflow_ok(&["schedules", "pause", "every2s"]).await?;
    let paused_at = ticks(&show(&env, "every2s").await?, "submitted").len();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let detail = show(&env, "every2s").await?;
    assert_eq!(ticks(&detail, "submitted").len(), paused_at, "no tick while paused: {detail}");
    assert_eq!(detail["paused"], true);
    assert_eq!(detail["upcoming"].as_array().map(Vec::len), Some(0), "{detail}");
    // Resumed: from the next tick, the paused ones not run.
    env.opflow_ok(&["schedules", "resume", "every2s"]).await?;
    wait_for("a tick after resuming", DEADLINE, || async {
        Ok((ticks(&show(&env, "every2s").await?, "submitted").len() > paused_at).then_some(()))
    })
    .await?;
    let listed = env.opflow_ok(&["schedules", "list"]).await?;
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains("every2s") && listed.contains("*/2 * * * * * UTC") && listed.contains("active"),
        "{listed}"
    );
    // The web UI lists it, and shows its ticks with their runs.
    let (status, page) =
        opflow_integration::http_text(&env.api_addr, "GET", "/schedules", None, None).await?;
    assert!(
        status == 200 && page.contains("/schedules/every2s") && page.contains("*/2 * * * * * (UTC)"),
        "{page}"
    );
    let (status, page) =
        opflow_integration::http_text(&env.api_addr, "GET", "/schedules/every2s", None, None).await?;
    assert!(
        status == 200 && page.contains("data-tick-outcome=\"submitted\"") && page.contains("href=\"/runs/"),
        "{page}"
    );
    assert!(page.contains("Next ticks"), "{page}");
    let (status, _) =
        opflow_integration::http_text(&env.api_addr, "GET", "/schedules/nope", None, None).await?;
    assert_eq!(status, 404);
    // Removed: its runs stay.
    let runs = runs_of(&mut env, "every2s").await?.len();
    env.opflow_ok(&["schedules", "remove", "every2s"]).await?;
    let gone = env.opflow(&["schedules", "show", "every2s"]).await?;
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("no schedule `every2s`"));
    assert!(runs_of(&mut env, "every2s").await?.len() >= runs, "the runs stay");
    Ok(())
}

#[tokio::test]
async fn a_bad_schedule_is_refused_saying_why() -> anyhow::Result<()> {
    let env = Env::new("schedules_refused").await?;
    env.register("noop").await?;
    let _dispatcher = env.spawn_dispatcher().await?;
    let plan = env.plan_file("quick", "name: quick\nassets:\n  - name: a\n    op: noop@1.1.0\n")?;
    let plan = plan.to_str().context("utf-8")?;
    let missing = env.plan_file("missing", "name: missing\nassets:\n  - name: a\n    op: nothing@1\n")?;
    for (args, why) in [
        (vec!["schedules", "add", "s", plan, "--cron", "61 * * * *"], "cron `61 * * * *`"),
        (vec!["schedules", "add", "s", plan, "--cron", "0 * * * *", "--tz", "Mars/Olympus"], "Mars/Olympus"),
        (vec!["schedules", "add", "two words", plan, "--cron", "0 * * * *"], "use letters, digits"),
        (vec!["schedules", "add", "s", plan, "--cron", "0 * * * *", "--catch-up", "soon"], "catch_up"),
        (vec!["schedules", "add", "s", missing.to_str().context("utf-8")?, "--cron", "0 * * * *"], "nothing"),
    ] {
        let output = env.opflow(&args).await?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(why), "{args:?}: `{why}` missing from {stderr}");
    }
    env.opflow_ok(&["schedules", "add", "s", plan, "--cron", "0 * * * *"]).await?;
    let again = env.opflow(&["schedules", "add", "s", plan, "--cron", "0 * * * *"]).await?;
    assert!(String::from_utf8_lossy(&again.stderr).contains("a schedule named `s` exists"));
    Ok(())
}

#[tokio::test]
async fn overlapping_ticks_are_skipped_or_buffered_as_the_schedule_says() -> anyhow::Result<()> {
    let mut env = Env::new("schedules_overlap").await?;
    env.register("noop").await?;
    let _dispatcher = env.spawn_dispatcher().await?;
    let _workers = [env.spawn_worker("noop")?, env.spawn_worker("noop")?];
    let slow = env.plan_file(
        "slow",
        "name: slow\nassets:\n  - name: a\n    op: noop@1.1.0\n    config: {sleep_ms: 3500}\n",
    )?;
    let slow = slow.to_str().context("utf-8")?;
    env.opflow_ok(&["schedules", "add", "skipper", slow, "--cron", "* * * * * *", "--overlap", "skip"])
        .await?;
    env.opflow_ok(&[
        "schedules",
        "add",
        "buffered",
        slow,
        "--cron",
        "* * * * * *",
        "--overlap",
        "buffer_one",
    ])
    .await?;
    let (skipper, buffered) = wait_for("skipped ticks and a buffered tick run", DEADLINE, || async {
        let (skipper, buffered) = (show(&env, "skipper").await?, show(&env, "buffered").await?);
        let done = ticks(&skipper, "submitted").len() >= 2 && ticks(&buffered, "submitted").len() >= 2;
        Ok(done.then_some((skipper, buffered)))
    })
    .await?;
    let skipped = ticks(&skipper, "skipped");
    assert!(!skipped.is_empty(), "{skipper}");
    assert!(
        skipped.iter().all(|t| t["reason"].as_str().is_some_and(|r| r.contains("still running"))),
        "{skipper}"
    );
    // buffer_one: at most one tick waits at a time; the others are skipped, saying so.
    assert!(ticks(&buffered, "buffered").len() <= 1, "{buffered}");
    assert!(
        ticks(&buffered, "skipped")
            .iter()
            .all(|t| t["reason"].as_str().is_some_and(|r| r.contains("buffer_one"))),
        "{buffered}"
    );
    // Never two runs of a skip schedule at once: each started after the one before ended.
    let db = env.db().await?;
    let overlapping: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM runs a JOIN runs b ON a.schedule = b.schedule AND a.id < b.id
         WHERE a.schedule = 'skipper' AND b.created_at < coalesce(a.finished_at, now())",
    )
    .fetch_one(&db)
    .await?;
    assert_eq!(overlapping, 0, "skip never overlaps runs");
    Ok(())
}

#[tokio::test]
async fn ticks_missed_while_down_run_within_the_catch_up_window_and_older_ones_are_skipped()
-> anyhow::Result<()> {
    let mut env = Env::new("schedules_catch_up").await?;
    env.register("noop").await?;
    let mut dispatcher = env.spawn_dispatcher().await?;
    let _worker = env.spawn_worker("noop")?;
    add_quick(&env, "secondly", &["--cron", "* * * * * *", "--overlap", "allow_all", "--catch-up", "4s"])
        .await?;
    wait_for("a first tick", DEADLINE, || async {
        Ok((!ticks(&show(&env, "secondly").await?, "submitted").is_empty()).then_some(()))
    })
    .await?;
    // Down for 10 s: the ticks of its last 4 s are still run, the older ones are not.
    dispatcher.kill()?;
    let down_at = chrono::Utc::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let _dispatcher = env.spawn_dispatcher().await?;
    let up_at = chrono::Utc::now();
    let detail = wait_for("ticks after the restart", DEADLINE, || async {
        let detail = show(&env, "secondly").await?;
        let after = ticks(&detail, "submitted")
            .iter()
            .filter(|t| {
                t["at"]
                    .as_str()
                    .and_then(|a| a.parse::<chrono::DateTime<chrono::Utc>>().ok())
                    .is_some_and(|a| a > up_at)
            })
            .count();
        Ok((after >= 2).then_some(detail))
    })
    .await?;
    let skipped = ticks(&detail, "skipped");
    assert_eq!(skipped.len(), 1, "the ticks older than the window are one skipped range: {detail}");
    let range = skipped[0];
    assert!(range["until"].is_string(), "{range}");
    assert!(range["reason"].as_str().is_some_and(|r| r.contains("catch-up window of 4s")), "{range}");
    // Every tick of the window before the restart ran, once.
    let submitted: Vec<chrono::DateTime<chrono::Utc>> = ticks(&detail, "submitted")
        .iter()
        .filter_map(|t| t["at"].as_str()?.parse().ok())
        .filter(|at| *at > down_at && *at <= up_at)
        .collect();
    assert!(submitted.len() >= 3, "caught up: {submitted:?} in {detail}");
    let runs = runs_of(&mut env, "secondly").await?;
    let mut keys: Vec<&str> = runs.iter().map(|(k, _)| k.as_str()).collect();
    let before = keys.len();
    keys.dedup();
    assert_eq!(keys.len(), before, "one run per tick");
    Ok(())
}

#[tokio::test]
async fn each_tick_runs_once_while_the_leader_is_killed_again_and_again() -> anyhow::Result<()> {
    use rand::RngExt as _;
    let mut env = Env::new("schedules_sigkill").await?;
    env.register("noop").await?;
    let home_api = env.api_addr.clone();
    let mut first = env.spawn_dispatcher().await?;
    // A standby on a port of its own choosing.
    env.api_addr = "127.0.0.1:0".into();
    let mut second = env.spawn_dispatcher().await?;
    env.api_addr = home_api.clone();
    let _worker = env.spawn_worker("noop")?;
    add_quick(&env, "secondly", &["--cron", "* * * * * *", "--overlap", "allow_all", "--catch-up", "1h"])
        .await?;
    let db = env.db().await?;
    // 8 kills over about 12 s here; the figure (200 kills over 1,000 ticks) is this
    // test with OPFLOW_LEADER_KILLS=200 OPFLOW_LEADER_KILL_SECONDS=1000 (docs/schedules.md).
    let wanted: u32 = std::env::var("OPFLOW_LEADER_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(8);
    let seconds: u64 =
        std::env::var("OPFLOW_LEADER_KILL_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(12);
    // Pauses drawn evenly around the mean that spreads the kills over `seconds`.
    let mean_ms = (seconds * 1_000 / u64::from(wanted.max(1))).max(200);
    let give_up = std::time::Instant::now() + Duration::from_secs(seconds * 3);
    let mut kills = 0;
    while kills < wanted && std::time::Instant::now() < give_up {
        let pause = rand::rng().random_range(mean_ms / 5..mean_ms * 9 / 5);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let Some(leader) = opflow_integration::lease_holder(&db).await? else { continue };
        // Kill the leader, and start it again (as its supervisor would): the other leads.
        if Some(leader) == first.pid() {
            first.kill()?;
            env.api_addr = home_api.clone();
            first = env.spawn_dispatcher().await?;
        } else if Some(leader) == second.pid() {
            second.kill()?;
            env.api_addr = "127.0.0.1:0".into();
            second = env.spawn_dispatcher().await?;
            env.api_addr = home_api.clone();
        } else {
            continue;
        }
        kills += 1;
    }
    assert!(kills >= wanted / 2, "only {kills} kills of {wanted}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    sqlx::query("UPDATE schedules SET paused = true WHERE name = 'secondly'").execute(&db).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ticks: Vec<(chrono::DateTime<chrono::Utc>, String, Option<uuid::Uuid>)> = sqlx::query_as(
        "SELECT nominal_at, outcome, run_id FROM schedule_ticks WHERE schedule = 'secondly' ORDER BY nominal_at",
    )
    .fetch_all(&db)
    .await?;
    assert!(ticks.len() >= 10, "{ticks:?}");
    // Every second from the first tick to the last one has its tick, submitted.
    for pair in ticks.windows(2) {
        assert_eq!((pair[1].0 - pair[0].0).num_seconds(), 1, "a gap between {:?} and {:?}", pair[0], pair[1]);
    }
    assert!(ticks.iter().all(|(_, outcome, run)| outcome == "submitted" && run.is_some()), "{ticks:?}");
    // One run per tick: as many keyed runs as ticks, each tick's run the run of its key.
    let runs: Vec<(String, uuid::Uuid)> =
        sqlx::query_as("SELECT key, id FROM runs WHERE key_owner = 'opflow schedule' ORDER BY key")
            .fetch_all(&db)
            .await?;
    assert_eq!(runs.len(), ticks.len(), "runs {runs:?} for ticks {ticks:?}");
    for (at, _, run) in &ticks {
        let key = format!("secondly@{}", at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        assert!(runs.iter().any(|(k, id)| *k == key && Some(*id) == *run), "tick {key}: {run:?} in {runs:?}");
    }
    eprintln!("{} ticks, {kills} leader kills: one run each", ticks.len());
    Ok(())
}

#[tokio::test]
async fn a_backfill_runs_each_past_tick_once_a_few_at_a_time_beside_another() -> anyhow::Result<()> {
    let mut env = Env::new("schedules_backfill").await?;
    env.register("noop").await?;
    let _dispatcher = env.spawn_dispatcher().await?;
    let _workers = [env.spawn_worker("noop")?, env.spawn_worker("noop")?];
    add_quick(&env, "hourly", &["--cron", "0 * * * *"]).await?;
    add_quick(&env, "daily", &["--cron", "0 0 * * *"]).await?;
    // Two days of hourly ticks, and ten days of daily ones, side by side.
    let out = env
        .opflow_ok(&[
            "schedules",
            "backfill",
            "hourly",
            "--from",
            "2026-01-01",
            "--to",
            "2026-01-02T23:59:59Z",
            "--max-in-flight",
            "3",
        ])
        .await?;
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("backfill") && said.contains("next tick 2026-01-01T00:00:00Z"), "{said}");
    env.opflow_ok(&[
        "schedules",
        "backfill",
        "daily",
        "--from",
        "2026-01-01",
        "--to",
        "2026-01-10",
        "--max-in-flight",
        "2",
    ])
    .await?;
    let db = env.db().await?;
    let at_once = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    wait_for("both backfills to finish", Duration::from_secs(120), || async {
        // Never more runs of a backfill in flight than it allows.
        let in_flight: i64 = sqlx::query_scalar(
            "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM runs r JOIN schedule_backfills b ON b.id = r.backfill
             WHERE b.schedule = 'hourly' AND r.status IN ('queued', 'running') GROUP BY b.id) c",
        )
        .fetch_one(&db)
        .await?;
        at_once.fetch_max(in_flight, std::sync::atomic::Ordering::Relaxed);
        let open: i64 = sqlx::query_scalar("SELECT count(*) FROM schedule_backfills WHERE done_at IS NULL")
            .fetch_one(&db)
            .await?;
        Ok((open == 0).then_some(()))
    })
    .await?;
    assert!(at_once.load(std::sync::atomic::Ordering::Relaxed) <= 3, "more than 3 hourly runs at once");
    // (The schedules' own ticks, should the test cross an hour, are not the range's.)
    let in_range = |runs: Vec<(String, String)>, prefix: &str| -> Vec<String> {
        runs.into_iter().map(|(key, _)| key).filter(|key| key.starts_with(prefix)).collect()
    };
    let hourly = in_range(runs_of(&mut env, "hourly").await?, "hourly@2026-01-");
    assert_eq!(hourly.len(), 48, "one run per hourly tick of two days: {hourly:?}");
    let daily = in_range(runs_of(&mut env, "daily").await?, "daily@2026-01-");
    assert_eq!(daily.len(), 10, "{daily:?}");
    // Backfilled again over an overlapping range: the ticks that ran are found, not rerun.
    env.opflow_ok(&["schedules", "backfill", "daily", "--from", "2026-01-05", "--to", "2026-01-12"]).await?;
    wait_for("the second backfill to finish", DEADLINE, || async {
        let open: i64 = sqlx::query_scalar("SELECT count(*) FROM schedule_backfills WHERE done_at IS NULL")
            .fetch_one(&db)
            .await?;
        Ok((open == 0).then_some(()))
    })
    .await?;
    let daily = in_range(runs_of(&mut env, "daily").await?, "daily@2026-01-");
    assert_eq!(daily.len(), 12, "two new days, the six shared ones not rerun: {daily:?}");
    let detail = show(&env, "daily").await?;
    assert_eq!(detail["backfills"].as_array().map(Vec::len), Some(2), "{detail}");
    Ok(())
}

#[tokio::test]
async fn a_year_of_hourly_ticks_backfills_in_bounded_memory_beside_another() -> anyhow::Result<()> {
    let mut env = Env::new("schedules_year").await?;
    env.register("noop").await?;
    let dispatcher = env.spawn_dispatcher().await?;
    let pid = dispatcher.pid().context("the dispatcher runs")?;
    let _workers = [env.spawn_worker("noop")?, env.spawn_worker("noop")?];
    add_quick(&env, "hourly", &["--cron", "0 * * * *"]).await?;
    add_quick(&env, "daily", &["--cron", "0 0 * * *"]).await?;
    // 8,760 hourly ticks, and 365 daily ones beside them.
    for (name, to, at_once) in [("hourly", "2025-12-31T23:59:59Z", "8"), ("daily", "2025-12-31", "2")] {
        env.opflow_ok(&[
            "schedules",
            "backfill",
            name,
            "--from",
            "2025-01-01",
            "--to",
            to,
            "--max-in-flight",
            at_once,
        ])
        .await?;
    }
    let db = env.db().await?;
    // 20 s here; docs/schedules.md's figure watched it for 300 s
    // (OPFLOW_BACKFILL_WATCH_SECONDS=300).
    let watch: u64 =
        std::env::var("OPFLOW_BACKFILL_WATCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let started = std::time::Instant::now();
    let mut halfway: Option<(i64, i64)> = None;
    let mut rss_mib: Vec<u64> = Vec::new();
    while started.elapsed() < Duration::from_secs(watch) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let in_flight: Vec<(String, i32, i64)> = sqlx::query_as(
            "SELECT b.schedule, b.max_in_flight, count(r.id) FROM schedule_backfills b
             LEFT JOIN runs r ON r.backfill = b.id AND r.status IN ('queued', 'running')
             GROUP BY b.id, b.schedule, b.max_in_flight",
        )
        .fetch_all(&db)
        .await?;
        for (schedule, max, n) in &in_flight {
            assert!(*n <= i64::from(*max), "{schedule}: {n} runs in flight, more than {max}");
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rss = status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1));
        rss_mib.push(rss.and_then(|kib| kib.parse::<u64>().ok()).unwrap_or(0) / 1024);
        if halfway.is_none() && started.elapsed() >= Duration::from_secs(watch / 2) {
            halfway = Some(submitted(&db).await?);
        }
    }
    let (hourly, daily) = submitted(&db).await?;
    let (hourly_half, daily_half) = halfway.context("watched past halfway")?;
    let peak = opflow_integration::peak_rss_kib(pid)? / 1024;
    eprintln!(
        "after {watch} s: hourly {hourly} of 8760 ticks submitted ({hourly_half} halfway), daily {daily} of 365 \
         ({daily_half} halfway); dispatcher RSS {} MiB at first, {} MiB at last, peak {peak} MiB",
        rss_mib.first().copied().unwrap_or(0),
        rss_mib.last().copied().unwrap_or(0)
    );
    assert!(hourly > hourly_half && daily > daily_half, "both backfills move, side by side");
    // A cursor per backfill, never a list of its ticks: the year costs one row.
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM schedule_backfills").fetch_one(&db).await?;
    assert_eq!(rows, 2);
    // A tick row per tick submitted, none ahead, read in one snapshot as the backfills go
    // on. (The schedules' own ticks, should the test cross an hour, are not the range's.)
    let (ticks, counted): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM schedule_ticks WHERE nominal_at < '2026-01-01'),
                (SELECT sum(submitted)::bigint FROM schedule_backfills)",
    )
    .fetch_one(&db)
    .await?;
    assert_eq!(ticks, counted, "a tick row per tick submitted, none ahead");
    assert!(peak < 256, "the dispatcher's peak RSS is {peak} MiB");
    Ok(())
}

/// Ticks submitted so far by the hourly and the daily backfills.
async fn submitted(db: &sqlx::PgPool) -> anyhow::Result<(i64, i64)> {
    let rows: Vec<(String, i32)> =
        sqlx::query_as("SELECT schedule, submitted FROM schedule_backfills").fetch_all(db).await?;
    let of = |name: &str| rows.iter().find(|(s, _)| s == name).map_or(0, |(_, n)| i64::from(*n));
    Ok((of("hourly"), of("daily")))
}
