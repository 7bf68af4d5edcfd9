//! What every chaos scenario shares: a plan of thousands of `noop` steps (instant ones and
//! ones that sleep 5–50 ms, fanned in at the end), a dispatcher and workers to run it, and
//! the checks on the store once it ends. Each scenario only adds its fault.

use std::{
    collections::BTreeMap,
    io::Write,
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use sqlx::PgPool;
use tokio::process::Child;

use crate::{Env, Service, parse_summary, sigkill};

/// Steps per scenario: `OPFLOW_CHAOS_STEPS`, at least 5,000 unless set lower on purpose.
pub fn scenario_steps() -> usize {
    std::env::var("OPFLOW_CHAOS_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(5_000)
}

/// Only turns a hang into a failure; never times the work.
pub const DEADLINE: Duration = Duration::from_secs(600);

/// The sleeps the steps sweep over: a third instant, a third short, a third longer.
const SLEEPS_MS: [u64; 3] = [0, 5, 50];

/// A plan of at least `steps` work steps (`i` × `sleep_ms`) and one fan-in step after all,
/// of the noop op named `op` (`noop`, or the Python SDK's `noop-py`).
pub fn plan_yaml(steps: usize, op: &str) -> String {
    let per_sleep = steps.div_ceil(SLEEPS_MS.len());
    format!(
        "name: chaos\n\
         assets:\n\
         \x20 - name: work\n\
         \x20   op: {op}@^1\n\
         \x20   sweep:\n\
         \x20     i: {{from: 1, to: {per_sleep}}}\n\
         \x20     sleep_ms: {SLEEPS_MS:?}\n\
         \x20 - name: total\n\
         \x20   op: {op}@^1\n\
         \x20   deps: [work]\n"
    )
}

/// One scenario in progress: its env, dispatcher, workers and run.
pub struct Scenario {
    pub name: &'static str,
    /// The noop op the workers run: `noop`, or the Python SDK's `noop-py`.
    pub op: &'static str,
    pub dispatcher: Service,
    pub workers: Vec<Child>,
    pub run_id: String,
    pub steps_total: i64,
    pub started: Instant,
    /// Last, so the processes above are killed before their database and vhost go.
    pub env: Env,
}

impl Scenario {
    /// Registers noop, starts a dispatcher and `workers` workers, and submits the plan.
    pub async fn start(name: &'static str, workers: usize) -> anyhow::Result<Self> {
        Self::start_with(name, workers, "noop").await
    }

    /// As [`Scenario::start`], with the workers of the noop op `op` (e.g. `noop-py`).
    pub async fn start_with(name: &'static str, workers: usize, op: &'static str) -> anyhow::Result<Self> {
        let mut env = Env::new(name).await?;
        // A fixed port, so the scenario can ask the dispatcher's /readyz. Probing for a free
        // port races with other tests, but the chaos suite runs alone.
        env.api_addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.to_string();
        env.register(op).await?;
        let dispatcher = env.spawn_dispatcher().await?;
        let workers = (0..workers).map(|_| env.spawn_worker(op)).collect::<anyhow::Result<Vec<_>>>()?;
        let plan = env.plan_file("chaos", &plan_yaml(scenario_steps(), op))?;
        let run =
            parse_summary(&env.opflow_ok(&["run", plan.to_str().context("utf-8 path")?, "--json"]).await?)?;
        let run_id = run["run_id"].as_str().context("run_id in the summary")?.to_owned();
        let steps_total = run["steps"]["total"].as_i64().context("steps.total in the summary")?;
        Ok(Self { name, op, env, dispatcher, workers, run_id, steps_total, started: Instant::now() })
    }

    /// The HTTP status of the dispatcher's `/readyz`; `None` when it does not answer.
    pub async fn readyz(&self) -> Option<u16> {
        http_status(&self.env.api_addr, "/readyz").await
    }

    /// Steps succeeded so far; `None` while the database does not answer.
    pub async fn succeeded(&mut self) -> Option<i64> {
        let db = self.env.db().await.ok()?;
        sqlx::query_scalar("SELECT steps_succeeded::bigint FROM runs WHERE id = $1::uuid")
            .bind(&self.run_id)
            .fetch_one(&db)
            .await
            .ok()
    }

    /// Waits until at least `fraction` of the steps succeeded.
    pub async fn wait_progress(&mut self, fraction: f64) -> anyhow::Result<()> {
        let target = (self.steps_total as f64 * fraction) as i64;
        let start = Instant::now();
        while self.succeeded().await.unwrap_or(0) < target {
            self.dispatcher.check_alive()?;
            ensure!(
                start.elapsed() < DEADLINE,
                "{}: gave up waiting for {target} steps to succeed",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// The run's status once it is no longer queued or running; database errors (a
    /// restarting server) are waited out.
    pub async fn finished(&mut self) -> anyhow::Result<Option<String>> {
        let Ok(db) = self.env.db().await else { return Ok(None) };
        let status: Option<String> = sqlx::query_scalar("SELECT status::text FROM runs WHERE id = $1::uuid")
            .bind(&self.run_id)
            .fetch_one(&db)
            .await
            .ok();
        Ok(status.filter(|s| s == "succeeded" || s == "failed"))
    }

    /// Waits for the run to end, calling `between` (the fault injector) every 100 ms until
    /// then.
    pub async fn run_to_end<F>(&mut self, mut between: F) -> anyhow::Result<String>
    where
        F: AsyncFnMut(&mut Scenario) -> anyhow::Result<()>,
    {
        let start = Instant::now();
        loop {
            if let Some(status) = self.finished().await? {
                return Ok(status);
            }
            ensure!(start.elapsed() < DEADLINE, "{}: the run did not finish within {DEADLINE:?}", self.name);
            between(self).await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILLs worker `index` and starts a replacement in its place.
    pub fn replace_worker(&mut self, index: usize) -> anyhow::Result<()> {
        sigkill(&self.workers[index]).ok();
        self.workers[index] = self.env.spawn_worker(self.op)?;
        Ok(())
    }

    /// Checks the store and returns the scenario's report line.
    pub async fn verify(&mut self, status: &str, faults: usize) -> anyhow::Result<Report> {
        let wall = self.started.elapsed();
        ensure!(status == "succeeded", "{}: the run ended {status}", self.name);
        let db = fresh_pool(&self.env.database_url).await?;
        let checked = check_store(&db, &self.run_id).await;
        db.close().await;
        let counts = checked.with_context(|| format!("{}: checking the store", self.name))?;
        let report = Report { scenario: self.name, steps: self.steps_total, faults, counts, wall };
        report.record();
        Ok(report)
    }
}

/// `GET path` over plain HTTP/1.1; the status code of the answer.
async fn http_status(addr: &str, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(5), exchange).await.ok().flatten()
}

/// A pool opened now: one opened before a PostgreSQL restart may hold dead connections.
async fn fresh_pool(url: &str) -> anyhow::Result<PgPool> {
    Ok(sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(url).await?)
}

/// What the store says about a finished run.
#[derive(Debug)]
pub struct Counts {
    /// Steps without a succeeded status.
    pub lost: i64,
    /// Steps with more than one *applied* success (must be 0).
    pub applied_twice: i64,
    /// Steps whose success was reported more than once (they ran again after a fault, or
    /// a copy was injected); every result after the first was recognised and ignored.
    pub results_ignored: i64,
}

/// The checks every scenario makes; see the module docs of the chaos tests.
pub async fn check_store(db: &PgPool, run_id: &str) -> anyhow::Result<Counts> {
    let (total, succeeded_rows): (i32, i64) = sqlx::query_as(
        "SELECT r.steps_total,
                (SELECT count(*) FROM steps s WHERE s.run_id = r.id AND s.status = 'succeeded')
         FROM runs r WHERE r.id = $1::uuid",
    )
    .bind(run_id)
    .fetch_one(db)
    .await?;
    let lost = i64::from(total) - succeeded_rows;

    // Exactly one applied success per step, and none missing.
    let applied: Vec<(i32, i64, i64)> = sqlx::query_as(
        "SELECT step_id, count(*) FILTER (WHERE applied), count(*)
         FROM events WHERE run_id = $1::uuid AND kind = 'succeeded' GROUP BY step_id",
    )
    .bind(run_id)
    .fetch_all(db)
    .await?;
    let applied_twice = applied.iter().filter(|(_, a, _)| *a > 1).count() as i64;
    let applied_once = applied.iter().filter(|(_, a, _)| *a == 1).count() as i64;
    let results_ignored = applied.iter().filter(|(_, _, all)| *all > 1).count() as i64;
    ensure!(lost == 0, "{lost} of {total} steps did not succeed");
    ensure!(applied_twice == 0, "{applied_twice} steps have more than one applied success");
    ensure!(
        applied_once == i64::from(total),
        "{} of {total} steps have no applied success event",
        i64::from(total) - applied_once
    );

    // The fan-in started only after every upstream step succeeded.
    // (`steps.started_at` is the worker's own start time, from `started` or from the result.)
    let ordered: bool = sqlx::query_scalar(
        "SELECT (SELECT min(s.started_at) FROM steps s WHERE s.run_id = $1::uuid AND s.asset = 1)
             >= (SELECT max(e.at) FROM events e JOIN steps s ON s.run_id = e.run_id AND s.id = e.step_id
                 WHERE e.run_id = $1::uuid AND e.kind = 'succeeded' AND e.applied AND s.asset = 0)",
    )
    .bind(run_id)
    .fetch_one(db)
    .await?;
    ensure!(ordered, "the fan-in step started before all of its upstream steps had succeeded");

    // Each worker's events for a step are in a consistent order: a `started` first (unless
    // the step was quick enough to report only its result), then heartbeats, progress or
    // logs, then a result; the same again if the worker got the step again (its ack was
    // lost). Injected copies of a result may repeat it.
    let events: Vec<(i32, String, String)> = sqlx::query_as(
        "SELECT step_id, worker, kind FROM events WHERE run_id = $1::uuid
         ORDER BY step_id, worker, at, received_at",
    )
    .bind(run_id)
    .fetch_all(db)
    .await?;
    let mut by_worker: BTreeMap<(i32, &str), Vec<&str>> = BTreeMap::new();
    for (step, worker, kind) in &events {
        by_worker.entry((*step, worker.as_str())).or_default().push(kind.as_str());
    }
    for ((step, worker), kinds) in &by_worker {
        ensure!(
            consistent_order(kinds),
            "step {step}, worker {worker}: events in an inconsistent order: {kinds:?}"
        );
    }
    // The applied start of a step precedes its applied success.
    let backwards: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events s JOIN events d
           ON d.run_id = s.run_id AND d.step_id = s.step_id AND d.kind = 'succeeded' AND d.applied
         WHERE s.run_id = $1::uuid AND s.kind = 'started' AND s.applied AND s.at > d.at",
    )
    .bind(run_id)
    .fetch_one(db)
    .await?;
    ensure!(backwards == 0, "{backwards} steps have their applied success before their applied start");
    Ok(Counts { lost, applied_twice, results_ignored })
}

/// `started`, then in-progress events, then results, or a result alone (a step too quick
/// to report `started`); see [`check_store`].
pub fn consistent_order(kinds: &[&str]) -> bool {
    #[derive(PartialEq)]
    enum State {
        Before,
        Running,
        Done,
    }
    let mut state = State::Before;
    for kind in kinds {
        state = match (*kind, state) {
            ("started", _) => State::Running,
            // A worker that lost its channel mid-step says so; its `started` may have been
            // lost with the connection. The next delivery starts over.
            ("abandoned", _) => State::Before,
            ("succeeded" | "failed", _) => State::Done,
            (_, State::Running) if !matches!(*kind, "succeeded" | "failed") => State::Running,
            _ => return false,
        };
    }
    true
}

/// One line of the chaos table in docs/reliability.md.
#[derive(Debug)]
pub struct Report {
    pub scenario: &'static str,
    pub steps: i64,
    pub faults: usize,
    pub counts: Counts,
    pub wall: Duration,
}

impl Report {
    /// Prints the row, and appends it to `OPFLOW_CHAOS_REPORT` when that is set.
    pub fn record(&self) {
        let row = format!(
            "| {} | {} | {} | {} | {} | {} | {:.1} s |",
            self.scenario,
            self.steps,
            self.faults,
            self.counts.lost,
            self.counts.applied_twice,
            self.counts.results_ignored,
            self.wall.as_secs_f64()
        );
        eprintln!("chaos: {row}");
        if let Ok(path) = std::env::var("OPFLOW_CHAOS_REPORT")
            && let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path)
        {
            let _ = writeln!(file, "{row}");
        }
    }
}

/// Runs a shell command that changes a shared service, failing with its output.
pub async fn service_command(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let output = tokio::process::Command::new(program).args(args).output().await?;
    if !output.status.success() {
        bail!(
            "{program} {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::consistent_order;

    #[test]
    fn a_step_starts_before_it_reports_and_ends() {
        assert!(consistent_order(&["started", "heartbeat", "progress", "succeeded"]));
        assert!(consistent_order(&["started", "succeeded", "started", "succeeded"]), "a lost ack: run again");
        assert!(consistent_order(&["abandoned", "started", "succeeded"]), "a lost start, then a redelivery");
        assert!(consistent_order(&["succeeded"]), "a quick step reports only its result");
        assert!(consistent_order(&["succeeded", "succeeded"]), "a lost ack, quick both times");
        assert!(!consistent_order(&["heartbeat", "started"]));
        assert!(!consistent_order(&["started", "succeeded", "heartbeat"]), "progress after the result");
    }
}
