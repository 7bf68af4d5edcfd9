//! `opflow bench`: the platform measured against the broker's own limit on the same
//! machine, in one invocation. Each workload runs in a sandbox (its own database and vhost,
//! removed afterwards), is verified (every step succeeded exactly once, outputs present)
//! and reported as one JSON object per line. See docs/benchmarks.md for the fields.
//!
//! - [`raw`]: the broker alone, with lapin.
//! - [`sandbox`]: the benchmark's own database and vhost.
//! - [`memory`]: resident memory from `/proc`.

pub mod memory;
pub mod raw;
pub mod sandbox;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use opflow_amqp::QueueKind;
use opflow_process::SecretUrl;
use serde_json::{Value, json};
use tokio::process::Child;
use tokio_util::sync::CancellationToken;

use crate::{config::Settings, store::Store};
use sandbox::Sandbox;

/// The workloads, in the order `all` runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Workload {
    Raw,
    W1,
    W2,
    W3,
    W4,
    W5,
    W6,
}

impl Workload {
    pub const ALL: [Workload; 7] =
        [Workload::Raw, Workload::W1, Workload::W2, Workload::W3, Workload::W4, Workload::W5, Workload::W6];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Raw => "raw",
            Workload::W1 => "w1",
            Workload::W2 => "w2",
            Workload::W3 => "w3",
            Workload::W4 => "w4",
            Workload::W5 => "w5",
            Workload::W6 => "w6",
        }
    }

    /// `raw`, `w1`…, or `all`.
    pub fn parse_list(names: &[String]) -> Result<Vec<Workload>, String> {
        let mut workloads = Vec::new();
        for name in names {
            match name.as_str() {
                "all" => workloads.extend(Self::ALL),
                other => {
                    workloads.push(Self::ALL.into_iter().find(|w| w.name() == other).ok_or_else(|| {
                        format!("unknown workload `{other}`; choose from raw, w1 … w6, or all")
                    })?)
                }
            }
        }
        if workloads.is_empty() {
            workloads.extend(Self::ALL);
        }
        workloads.sort();
        workloads.dedup();
        Ok(workloads)
    }
}

/// How to run the benchmarks.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// A tenth of every size; correctness only.
    pub quick: bool,
    /// The queue type of the op queue (and of `raw`'s queues, so the ratio is like for like).
    pub queue_type: QueueKind,
    /// Keep the processes' logs (their directory is printed).
    pub keep_logs: bool,
    /// Where `opflow` and `noop` are.
    pub bin_dir: PathBuf,
}

impl BenchOptions {
    fn scaled(&self, full: usize) -> usize {
        if self.quick { (full / 10).max(1) } else { full }
    }
}

/// Runs `workloads` in a fresh sandbox and hands each result to `emit` as it is known.
/// Returns false if a workload could not be verified.
pub async fn run(
    workloads: &[Workload],
    options: &BenchOptions,
    settings: &Settings,
    cancel: &CancellationToken,
    mut emit: impl FnMut(&Value),
) -> anyhow::Result<bool> {
    let noop = options.bin_dir.join("noop");
    if !noop.exists() {
        bail!(
            "{} is missing: opflow bench runs the noop op; build it with `cargo build --release -p noop`",
            noop.display()
        );
    }
    let sandbox = Sandbox::create(settings).await?;
    eprintln!("benchmark sandbox: database and vhost {}", sandbox.name);
    let events_queue_type = settings.events_queue_type;
    let result = run_in(&sandbox, workloads, options, events_queue_type, &noop, cancel, &mut emit).await;
    let keep_logs = options.keep_logs || result.is_err();
    if keep_logs {
        eprintln!("benchmark logs: {}", sandbox.log_dir.display());
    }
    sandbox.remove(keep_logs).await;
    result
}

async fn run_in(
    sandbox: &Sandbox,
    workloads: &[Workload],
    options: &BenchOptions,
    events_queue_type: QueueKind,
    noop: &Path,
    cancel: &CancellationToken,
    emit: &mut impl FnMut(&Value),
) -> anyhow::Result<bool> {
    // Every figure is a ratio to the broker's own, measured first, in this invocation.
    let raw = raw::measure(
        sandbox.amqp_url.expose(),
        options.queue_type,
        options.scaled(20_000),
        options.scaled(1_000),
        cancel,
    )
    .await
    .context("measuring the broker alone (raw)")?;
    if workloads.contains(&Workload::Raw) {
        let wall = raw.messages as f64 / raw.publish_per_s + raw.messages as f64 / raw.consume_per_s;
        emit(&json!({
            "workload": "raw",
            "queue_type": raw.queue_type,
            "steps": raw.messages,
            "wall_s": round(wall, 3),
            "steps_per_s": round(raw.consume_per_s, 1),
            "verified": true,
            "publish_per_s": round(raw.publish_per_s, 1),
            "consume_per_s": round(raw.consume_per_s, 1),
            "chain_steps": raw.chain_steps,
            "chain_ms_per_step": round(raw.chain_ms_per_step, 3),
        }));
    }
    let platform: Vec<Workload> = workloads.iter().copied().filter(|w| *w != Workload::Raw).collect();
    if platform.is_empty() {
        return Ok(true);
    }

    let opflow = options.bin_dir.join("opflow");
    let mut dispatcher = sandbox.spawn(&opflow, &["dispatcher"], "dispatcher")?;
    let queue_type = options.queue_type.as_str();
    let registered = sandbox
        .command(&opflow, "ops-add")?
        .args(["ops", "add"])
        .arg(noop)
        .args(["--queue-type", queue_type])
        .status()
        .await?;
    if !registered.success() {
        bail!("registering noop failed; see {}", sandbox.log_dir.join("ops-add.log").display());
    }
    let store = Store::connect(&sandbox.database_url, cancel)
        .await
        .context("connecting to the benchmark database")?;
    let noop_queue = store
        .registered_ops()
        .await?
        .into_iter()
        .find(|op| op.name.to_string() == "noop")
        .map(|op| opflow_protocol::queue::op_queue(&op))
        .context("noop is not in the registry after `opflow ops add`")?;

    let dispatcher_pid = dispatcher.id();
    let mut all_verified = true;
    for workload in platform {
        if let Some(status) = dispatcher.try_wait()? {
            bail!(
                "the dispatcher exited with {status}; see {}",
                sandbox.log_dir.join("dispatcher.log").display()
            );
        }
        let figures = match workload {
            Workload::W1 => {
                let steps = options.scaled(10_000);
                let run =
                    run_plan(sandbox, &store, noop, &noop_queue, 2, &sweep_plan("w1", steps, ""), cancel)
                        .await?;
                let mut figures = run.figures("w1");
                figures["ratio_to_raw_consume"] = json!(round(run.steps_per_s() / raw.consume_per_s, 3));
                figures
            }
            Workload::W2 => {
                let steps = options.scaled(200).max(2);
                let run = run_plan(sandbox, &store, noop, &noop_queue, 1, &chain_plan(steps), cancel).await?;
                let ms_per_step = run.wall.as_secs_f64() * 1000.0 / steps as f64;
                let mut figures = run.figures("w2");
                figures["ms_per_step"] = json!(round(ms_per_step, 2));
                figures["ratio_to_raw_chain"] = json!(round(ms_per_step / raw.chain_ms_per_step, 2));
                figures
            }
            Workload::W3 => {
                let steps = options.scaled(1_000);
                let plan = sweep_plan("w3", steps, "    config: {burn_ms: 10}\n");
                let run = run_plan(sandbox, &store, noop, &noop_queue, 2, &plan, cancel).await?;
                // 10 ms of CPU per step over 2 workers: the ideal wall time.
                let ideal = steps as f64 * 0.010 / 2.0;
                let mut figures = run.figures("w3");
                figures["ideal_s"] = json!(round(ideal, 3));
                figures["efficiency"] = json!(round(ideal / run.wall.as_secs_f64(), 3));
                figures
            }
            Workload::W4 => {
                let samples = if options.quick { 2 } else { 5 };
                let mut cold = Vec::with_capacity(samples);
                let mut verified = true;
                let started = Instant::now();
                for sample in 0..samples {
                    let (to_start, ok) = cold_start(sandbox, &store, noop, sample, cancel).await?;
                    cold.push(to_start.as_secs_f64() * 1000.0);
                    verified &= ok;
                }
                cold.sort_by(f64::total_cmp);
                let median = if cold.len() % 2 == 1 {
                    cold[cold.len() / 2]
                } else {
                    (cold[cold.len() / 2 - 1] + cold[cold.len() / 2]) / 2.0
                };
                let wall = started.elapsed().as_secs_f64();
                json!({
                    "workload": "w4",
                    "steps": samples,
                    "wall_s": round(wall, 3),
                    "steps_per_s": round(samples as f64 / wall, 2),
                    "verified": verified,
                    "cold_start_ms_median": round(median, 1),
                    "cold_start_ms_max": round(cold.last().copied().unwrap_or_default(), 1),
                })
            }
            Workload::W5 => {
                let sizes = [options.scaled(50_000), options.scaled(200_000)];
                for figures in compile_and_store(sandbox, noop, &sizes, cancel).await? {
                    all_verified &= figures["verified"] == true;
                    emit(&figures);
                }
                continue;
            }
            Workload::W6 => {
                let steps = options.scaled(100_000);
                let size_before = database_size(&store).await?;
                let run = run_plan_observed(
                    sandbox,
                    &store,
                    noop,
                    &noop_queue,
                    2,
                    &sweep_plan("w6", steps, ""),
                    dispatcher_pid,
                    cancel,
                )
                .await?;
                let size_after = database_size(&store).await?;
                let mut figures = run.figures("w6");
                let peak = run.dispatcher_rss.iter().map(|(_, mb)| *mb).fold(0.0, f64::max);
                // Memory at a quarter of the run and at its end: equal if it does not grow
                // with completed steps.
                let at = |fraction: f64| {
                    run.dispatcher_rss.iter().find(|(done, _)| *done >= fraction).map(|(_, mb)| round(*mb, 1))
                };
                figures["dispatcher_rss_mb"] = json!(round(peak, 1));
                figures["dispatcher_rss_mb_at_25pct"] = json!(at(0.25));
                figures["dispatcher_rss_mb_at_end"] =
                    json!(run.dispatcher_rss.last().map(|(_, mb)| round(*mb, 1)));
                figures["worker_rss_mb"] = json!(run.worker_rss_mb.map(|mb| round(mb, 1)));
                figures["db_bytes_per_step"] =
                    json!(((size_after - size_before) as f64 / steps as f64).round());
                figures
            }
            Workload::Raw => unreachable!("raw ran first"),
        };
        let mut figures = figures;
        // Like for like: the queue types the steps and the events went through.
        figures["queue_type"] = json!(options.queue_type.as_str());
        figures["events_queue_type"] = json!(events_queue_type.as_str());
        all_verified &= figures["verified"] == true;
        emit(&figures);
    }
    crate::supervise::drain(&mut dispatcher, "dispatcher", Duration::from_secs(30)).await;
    store.pool().close().await;
    Ok(all_verified)
}

/// A plan of `steps` independent noop steps.
fn sweep_plan(name: &str, steps: usize, extra: &str) -> String {
    format!(
        "name: {name}\nassets:\n  - name: work\n    op: noop@^1\n    sweep: {{i: {{from: 1, to: {steps}}}}}\n{extra}"
    )
}

/// A chain: each of `steps` assets depends on the one before.
fn chain_plan(steps: usize) -> String {
    let mut plan = String::from("name: w2\nassets:\n  - name: s1\n    op: noop@^1\n");
    for i in 2..=steps {
        plan.push_str(&format!("  - name: s{i}\n    op: noop@^1\n    deps: [s{}]\n", i - 1));
    }
    plan
}

/// One finished benchmark run.
struct PlanRun {
    steps: i64,
    wall: Duration,
    verified: bool,
    /// (fraction of steps done, dispatcher VmRSS in MiB), sampled while the run went on.
    dispatcher_rss: Vec<(f64, f64)>,
    /// Peak resident memory of the first worker.
    worker_rss_mb: Option<f64>,
}

impl PlanRun {
    fn steps_per_s(&self) -> f64 {
        self.steps as f64 / self.wall.as_secs_f64()
    }

    fn figures(&self, workload: &str) -> Value {
        json!({
            "workload": workload,
            "steps": self.steps,
            "wall_s": round(self.wall.as_secs_f64(), 3),
            "steps_per_s": round(self.steps_per_s(), 1),
            "verified": self.verified,
        })
    }
}

/// Starts `workers` noop workers, waits until they consume, submits `plan`, waits for the
/// run to end, verifies it and stops the workers.
async fn run_plan(
    sandbox: &Sandbox,
    store: &Store,
    noop: &Path,
    noop_queue: &str,
    workers: usize,
    plan: &str,
    cancel: &CancellationToken,
) -> anyhow::Result<PlanRun> {
    run_plan_observed(sandbox, store, noop, noop_queue, workers, plan, None, cancel).await
}

/// [`run_plan`], sampling the memory of the dispatcher `dispatcher_pid` as the run goes on.
#[allow(clippy::too_many_arguments)]
async fn run_plan_observed(
    sandbox: &Sandbox,
    store: &Store,
    noop: &Path,
    noop_queue: &str,
    workers: usize,
    plan: &str,
    dispatcher_pid: Option<u32>,
    cancel: &CancellationToken,
) -> anyhow::Result<PlanRun> {
    let mut children: Vec<Child> = (0..workers)
        .map(|n| sandbox.spawn(noop, &[], &format!("noop-{n}")))
        .collect::<anyhow::Result<_>>()?;
    wait_for_consumers(sandbox.amqp_url.expose(), noop_queue, workers, cancel).await?;

    // The dispatcher announces every run that ends on `opflow_runs`: the run is timed to
    // that notification, not to a polling interval, and no poll competes for the CPU.
    let mut finished = sqlx::postgres::PgListener::connect_with(store.pool()).await?;
    finished.listen("opflow_runs").await?;
    let started = Instant::now();
    let submission = crate::submit::submit(store, plan, Path::new("bench.yaml"), None)
        .await
        .map_err(|e| anyhow::anyhow!("submitting the benchmark plan: {e}"))?;
    let run_id = submission.run_id.as_uuid();
    let mut dispatcher_rss = Vec::new();
    let mut sample_every = tokio::time::interval(Duration::from_millis(250));
    let status = loop {
        next_look(&mut finished, run_id, &mut sample_every, cancel).await?;
        let (status, done, total): (String, i32, i32) =
            sqlx::query_as("SELECT status::text, steps_succeeded, steps_total FROM runs WHERE id = $1")
                .bind(run_id)
                .fetch_one(store.pool())
                .await?;
        if let Some(pid) = dispatcher_pid
            && let Some(mb) = memory::rss_mb(pid)
        {
            dispatcher_rss.push((f64::from(done) / f64::from(total.max(1)), mb));
        }
        if status == "succeeded" || status == "failed" {
            break status;
        }
        if started.elapsed() > Duration::from_secs(1800) {
            bail!("the benchmark run did not finish within 30 minutes");
        }
    };
    let wall = started.elapsed();
    let worker_rss_mb = children.first().and_then(Child::id).and_then(memory::peak_rss_mb);
    for child in &mut children {
        crate::supervise::drain(child, "noop", Duration::from_secs(30)).await;
    }
    let (steps, verified) = verify(store, run_id).await?;
    Ok(PlanRun { steps, wall, verified: verified && status == "succeeded", dispatcher_rss, worker_rss_mb })
}

/// Waits until `run_id` is announced on `opflow_runs` (it ended) or `every` ticks (a
/// sample is due, or a missed notification is caught up with).
async fn next_look(
    finished: &mut sqlx::postgres::PgListener,
    run_id: uuid::Uuid,
    every: &mut tokio::time::Interval,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let run_id = run_id.to_string();
    loop {
        tokio::select! {
            notification = finished.recv() => {
                if notification?.payload() == run_id {
                    return Ok(());
                }
            }
            _ = every.tick() => return Ok(()),
            () = cancel.cancelled() => bail!("cancelled"),
        }
    }
}

/// One cold start: submit a one-step plan with no worker running, start a worker (what
/// `opflow up` or KEDA does), and time submit → the step has started.
async fn cold_start(
    sandbox: &Sandbox,
    store: &Store,
    noop: &Path,
    sample: usize,
    cancel: &CancellationToken,
) -> anyhow::Result<(Duration, bool)> {
    let mut finished = sqlx::postgres::PgListener::connect_with(store.pool()).await?;
    finished.listen("opflow_runs").await?;
    // The step's `started_at` is the worker's own timestamp of its `started` event (same
    // machine, same clock), so nothing polls while the worker starts.
    let submitted_at = chrono::Utc::now();
    let started = Instant::now();
    let submission = crate::submit::submit(store, &sweep_plan("w4", 1, ""), Path::new("bench-w4.yaml"), None)
        .await
        .map_err(|e| anyhow::anyhow!("submitting the cold-start plan: {e}"))?;
    let mut worker = sandbox.spawn(noop, &[], &format!("noop-cold-{sample}"))?;
    let run_id = submission.run_id.as_uuid();
    let mut poll_every = tokio::time::interval(Duration::from_millis(250));
    let (status, step_started) = loop {
        next_look(&mut finished, run_id, &mut poll_every, cancel).await?;
        let (status, step_started): (String, Option<chrono::DateTime<chrono::Utc>>) = sqlx::query_as(
            "SELECT r.status::text, (SELECT min(s.started_at) FROM steps s WHERE s.run_id = r.id)
             FROM runs r WHERE r.id = $1",
        )
        .bind(run_id)
        .fetch_one(store.pool())
        .await?;
        if status == "succeeded" || status == "failed" {
            break (status, step_started);
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("the cold-start step did not finish within 2 minutes");
        }
    };
    crate::supervise::drain(&mut worker, "noop", Duration::from_secs(30)).await;
    let (_, verified) = verify(store, run_id).await?;
    let to_start = step_started.context("the step finished without a recorded start")? - submitted_at;
    let to_start =
        to_start.to_std().context("the step started before it was submitted: are the clocks sane?")?;
    Ok((to_start, verified && status == "succeeded"))
}

/// w5: compiles and stores plans of `sizes` steps (daily partitions × a sweep of 500, fanned
/// in), in a database of their own so that no dispatcher publishes them.
async fn compile_and_store(
    sandbox: &Sandbox,
    noop: &Path,
    sizes: &[usize],
    cancel: &CancellationToken,
) -> anyhow::Result<Vec<Value>> {
    let url =
        SecretUrl::new(sandbox::with_path(sandbox.database_url.expose(), &format!("{}_w5", sandbox.name)));
    let store = Store::connect(&url, cancel).await.context("creating the w5 database")?;
    let description = crate::register::describe(noop).await?;
    store.register_op(&description, opflow_amqp::OpQueueSettings::default()).await?;
    // Compiling reads the op registry: time it with the registry's statement prepared and
    // a connection open, as in a dispatcher that has been running.
    crate::submit::compile(&store, &sweep_plan("w5-warm-up", 1, ""), Path::new("bench-w5.yaml"))
        .await
        .map_err(|e| anyhow::anyhow!("compiling the w5 warm-up plan: {e}"))?;
    let mut results = Vec::new();
    for &size in sizes {
        const SWEEP: usize = 500;
        let days = size.div_ceil(SWEEP).max(1);
        let start = chrono::NaiveDate::from_ymd_opt(2000, 1, 1).expect("a valid date");
        let end = start + chrono::Days::new(days as u64 - 1);
        let plan = format!(
            "name: w5\nassets:\n  - name: cells\n    op: noop@^1\n    partitions: {{daily: {{start: {start}, end: {end}}}}}\n\
             \x20   sweep: {{i: {{from: 1, to: {SWEEP}}}}}\n  - name: total\n    op: noop@^1\n    deps: [cells]\n"
        );
        let measured = memory::reset_own_peak();
        let started = Instant::now();
        let compiled = crate::submit::compile(&store, &plan, Path::new("bench-w5.yaml"))
            .await
            .map_err(|e| anyhow::anyhow!("compiling the w5 plan: {e}"))?;
        let compile = started.elapsed();
        let stored_at = Instant::now();
        let submission = store.submit_run(&compiled, "bench-w5.yaml", &plan, None).await?;
        let store_time = stored_at.elapsed();
        let peak = measured.then(|| memory::peak_rss_mb(std::process::id())).flatten();
        let (steps, queued): (i64, i64) = sqlx::query_as(
            "SELECT r.steps_total::bigint, (SELECT count(*) FROM steps s WHERE s.run_id = r.id) FROM runs r WHERE r.id = $1",
        )
        .bind(submission.run_id.as_uuid())
        .fetch_one(store.pool())
        .await?;
        let wall = compile + store_time;
        results.push(json!({
            "workload": "w5",
            "steps": steps,
            "wall_s": round(wall.as_secs_f64(), 3),
            "steps_per_s": round(steps as f64 / wall.as_secs_f64(), 0),
            "verified": steps == queued && steps as usize == days * SWEEP + 1,
            "compile_s": round(compile.as_secs_f64(), 3),
            "store_s": round(store_time.as_secs_f64(), 3),
            "peak_rss_mb": peak.map(|mb| round(mb, 1)),
        }));
        drop(compiled);
    }
    store.pool().close().await;
    Ok(results)
}

/// The size of the benchmark database, in bytes.
async fn database_size(store: &Store) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT pg_database_size(current_database())").fetch_one(store.pool()).await?)
}

/// Every step succeeded with an output, and exactly one success per step counted.
async fn verify(store: &Store, run_id: uuid::Uuid) -> anyhow::Result<(i64, bool)> {
    let (total, with_output, counted_once): (i64, i64, i64) = sqlx::query_as(
        "SELECT r.steps_total::bigint,
                (SELECT count(*) FROM steps s WHERE s.run_id = r.id AND s.status = 'succeeded' AND s.output IS NOT NULL),
                (SELECT count(*) FROM (SELECT 1 FROM events e WHERE e.run_id = r.id AND e.kind = 'succeeded' AND e.applied
                                       GROUP BY e.step_id HAVING count(*) = 1) once)
         FROM runs r WHERE r.id = $1",
    )
    .bind(run_id)
    .fetch_one(store.pool())
    .await?;
    Ok((total, with_output == total && counted_once == total))
}

/// Waits until the noop queue has `workers` consumers.
async fn wait_for_consumers(
    amqp_url: &str,
    queue: &str,
    workers: usize,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let connection = lapin::Connection::connect(amqp_url, lapin::ConnectionProperties::default()).await?;
    let started = Instant::now();
    let result = loop {
        let channel = connection.create_channel().await?;
        let inspected = opflow_amqp::topology::inspect_queue(&channel, queue).await;
        let _ = channel.close(200, "checked".into()).await;
        if let Ok(counts) = inspected
            && counts.consumers as usize >= workers
        {
            break Ok(());
        }
        if started.elapsed() > Duration::from_secs(60) {
            break Err(anyhow::anyhow!("the noop workers did not start consuming within 60 s"));
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
            () = cancel.cancelled() => break Err(anyhow::anyhow!("cancelled")),
        }
    };
    let _ = connection.close(200, "checked".into()).await;
    result
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_parse_in_order_without_repeats() {
        let names = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            Workload::parse_list(&names(&["w2", "raw", "w2"])).unwrap(),
            vec![Workload::Raw, Workload::W2]
        );
        assert_eq!(Workload::parse_list(&names(&["all"])).unwrap().len(), 7);
        assert_eq!(Workload::parse_list(&[]).unwrap().len(), 7);
        let unknown = Workload::parse_list(&names(&["w9"])).unwrap_err();
        assert!(unknown.contains("unknown workload `w9`"), "{unknown}");
    }

    #[test]
    fn benchmark_plans_compile_to_the_sizes_they_promise() {
        let registered =
            [crate::plan::RegisteredOp { name: "noop".into(), version: semver::Version::new(1, 1, 0) }];
        let compile =
            |source: &str| crate::plan::compile(source, Path::new("bench.yaml"), &registered).unwrap();
        assert_eq!(compile(&sweep_plan("w1", 10_000, "")).step_count, 10_000);
        assert_eq!(compile(&chain_plan(200)).step_count, 200);
        assert_eq!(compile(&sweep_plan("w3", 1_000, "    config: {burn_ms: 10}\n")).step_count, 1_000);
    }
}
