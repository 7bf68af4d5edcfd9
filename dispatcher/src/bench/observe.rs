//! Watching benchmark runs: start a run's workers, submit its plan, time it to the store's
//! announcement that it ended (nothing polls while it goes), sample the dispatcher's
//! memory and every component's CPU time, verify that every step succeeded exactly once;
//! and time a worker's cold start.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use opflow_protocol::RunId;
use serde_json::{Value, json};
use tokio::process::Child;
use tokio_util::sync::CancellationToken;

use super::{
    cpu::{self, Component, CpuPerStep, Snapshot},
    memory,
    options::round,
    plans::sweep_plan,
    sandbox::Sandbox,
};
use crate::store::Store;

/// What watching a run needs: the sandbox, its store, and the noop op and queue.
pub struct Bed<'a> {
    pub sandbox: &'a Sandbox,
    pub store: &'a Store,
    pub noop: &'a Path,
    /// The noop op's name: `noop`, or another SDK's (`noop-py`), put in the plans' `op:`.
    pub noop_name: &'a str,
    pub noop_queue: &'a str,
    pub cancel: &'a CancellationToken,
    /// The benchmark's dispatcher, whose CPU time each run reports.
    pub dispatcher_pid: Option<u32>,
}

/// A run of [`Bed::run_side_by_side`]: its plan, its owner, and when it is submitted after
/// the first.
pub struct SideRun<'a> {
    pub plan: &'a str,
    pub owner: &'a str,
    pub after: Duration,
}

/// One finished benchmark run.
pub struct PlanRun {
    pub run_id: RunId,
    pub steps: i64,
    pub wall: Duration,
    /// Of `wall`: compiling and storing the plan.
    pub submit: Duration,
    /// CPU time per step of each component, from submit to the run's end.
    pub cpu: CpuPerStep,
    pub verified: bool,
    /// (fraction of steps done, dispatcher VmRSS in MiB), sampled while the run went on.
    pub dispatcher_rss: Vec<(f64, f64)>,
    /// Peak resident memory of the first worker.
    pub worker_rss_mb: Option<f64>,
}

impl PlanRun {
    pub fn steps_per_s(&self) -> f64 {
        self.steps as f64 / self.wall.as_secs_f64()
    }

    pub fn figures(&self, workload: &str) -> Value {
        json!({
            "workload": workload,
            "steps": self.steps,
            "wall_s": round(self.wall.as_secs_f64(), 3),
            "steps_per_s": round(self.steps_per_s(), 1),
            "verified": self.verified,
        })
    }

    /// `cpu_us_per_step` as printed: µs rounded to one decimal, `null` if not measured.
    pub fn cpu_figures(&self) -> Value {
        let us = |value: Option<f64>| value.map(|us| round(us, 1));
        json!({
            "dispatcher": us(self.cpu.dispatcher),
            "postgres": us(self.cpu.postgres),
            "broker": us(self.cpu.broker),
            "workers": us(self.cpu.workers),
            "total": round(self.cpu.total, 1),
        })
    }
}

impl Bed<'_> {
    /// A benchmark plan (written for `noop`) for this bed's noop op.
    fn for_noop(&self, plan: &str) -> String {
        plan.replace("op: noop@", &format!("op: {}@", self.noop_name))
    }

    /// Starts `workers` noop workers, waits until they consume, submits `plan`, waits for
    /// the run to end, verifies it and stops the workers; samples the memory of the
    /// dispatcher `dispatcher_pid`, if given, as the run goes on.
    pub async fn run_plan(
        &self,
        workers: usize,
        plan: &str,
        dispatcher_pid: Option<u32>,
    ) -> anyhow::Result<PlanRun> {
        let mut children: Vec<Child> = (0..workers)
            .map(|n| self.sandbox.spawn(self.noop, &[], &format!("noop-{n}")))
            .collect::<anyhow::Result<_>>()?;
        self.wait_for_consumers(workers).await?;

        let mut ends = self.store.runs().listen_for_ends().await?;
        let workers_pids: Vec<u32> = children.iter().filter_map(Child::id).collect();
        let components = |postgres: Vec<u32>| {
            [
                ("dispatcher", Component::new(self.dispatcher_pid)),
                ("postgres", Component::new(postgres)),
                ("broker", Component::new(cpu::rabbitmq_node_pids())),
                ("workers", Component::new(workers_pids.iter().copied())),
            ]
        };
        let backends_at_start = self.postgres_backends().await?;
        let cpu_at_start = Snapshot::take(&components(backends_at_start.clone()));
        let started = Instant::now();
        let plan = &self.for_noop(plan);
        let submission = crate::submit::submit_without_reuse(self.store, plan, Path::new("bench.yaml"))
            .await
            .context("submitting the benchmark plan")?;
        let submit = started.elapsed();
        let run = submission.run_id;
        let mut dispatcher_rss = Vec::new();
        let mut sample_every = tokio::time::interval(Duration::from_millis(250));
        let status = loop {
            next_look(&mut ends, &[run], &mut sample_every, self.cancel).await?;
            let progress = self.store.runs().progress(run).await?.context("the benchmark run vanished")?;
            if let Some(pid) = dispatcher_pid
                && let Some(mb) = memory::rss_mb(pid)
            {
                let done = f64::from(progress.steps_succeeded) / f64::from(progress.steps_total.max(1));
                dispatcher_rss.push((done, mb));
            }
            if progress.status.is_finished() {
                break progress.status;
            }
            if started.elapsed() > Duration::from_secs(1800) {
                bail!("the benchmark run did not finish within 30 minutes");
            }
        };
        let wall = started.elapsed();
        // Backends that served the run, whether there at the start or opened since.
        let mut backends = self.postgres_backends().await?;
        for pid in backends_at_start {
            if !backends.contains(&pid) {
                backends.push(pid);
            }
        }
        let cpu_at_end = Snapshot::take(&components(backends));
        let worker_rss_mb = children.first().and_then(Child::id).and_then(memory::peak_rss_mb);
        for child in &mut children {
            crate::up::fleet::drain(child, "noop", Duration::from_secs(30)).await;
        }
        let counted = self.store.checks().exactly_once(run).await?.context("the benchmark run vanished")?;
        let succeeded = status == crate::store::runs::RunStatus::Succeeded;
        let cpu = cpu::per_step(&cpu_at_start, &cpu_at_end, counted.steps.max(0) as u64);
        Ok(PlanRun {
            run_id: run,
            steps: counted.steps,
            wall,
            submit,
            cpu,
            verified: counted.holds() && succeeded,
            dispatcher_rss,
            worker_rss_mb,
        })
    }

    /// Starts `workers` noop workers, submits each of `runs` its delay after the first (for
    /// its owner), and times each from its own submit to its end; verifies each. For w8,
    /// where what matters is how runs of different owners share the workers.
    pub async fn run_side_by_side(
        &self,
        workers: usize,
        runs: &[SideRun<'_>],
    ) -> anyhow::Result<Vec<PlanRun>> {
        let mut children: Vec<Child> = (0..workers)
            .map(|n| self.sandbox.spawn(self.noop, &[], &format!("noop-{n}")))
            .collect::<anyhow::Result<_>>()?;
        self.wait_for_consumers(workers).await?;
        let mut ends = self.store.runs().listen_for_ends().await?;
        let first = Instant::now();
        let mut submitted = Vec::with_capacity(runs.len());
        for side in runs {
            tokio::time::sleep(side.after.saturating_sub(first.elapsed())).await;
            let started = Instant::now();
            let owner =
                crate::store::runs::RunOptions { owner: side.owner, no_reuse: true, ..Default::default() };
            let submission = crate::submit::submit_notifying(
                self.store,
                &self.for_noop(side.plan),
                Path::new("bench.yaml"),
                None,
                None,
                owner,
            )
            .await
            .context("submitting a benchmark plan")?;
            submitted.push((submission.run_id, started, started.elapsed(), None::<Duration>));
        }
        let mut look_every = tokio::time::interval(Duration::from_millis(100));
        while submitted.iter().any(|(_, _, _, ended)| ended.is_none()) {
            // Woken by the end of any run still going: each is timed to its own end.
            let waiting: Vec<RunId> =
                submitted.iter().filter(|(.., ended)| ended.is_none()).map(|(run, ..)| *run).collect();
            next_look(&mut ends, &waiting, &mut look_every, self.cancel).await?;
            for (run, started, _, ended) in submitted.iter_mut().filter(|(.., ended)| ended.is_none()) {
                let progress = self.store.runs().progress(*run).await?.context("a benchmark run vanished")?;
                if progress.status.is_finished() {
                    *ended = Some(started.elapsed());
                }
            }
            if first.elapsed() > Duration::from_secs(1800) {
                bail!("the benchmark runs did not finish within 30 minutes");
            }
        }
        for child in &mut children {
            crate::up::fleet::drain(child, "noop", Duration::from_secs(30)).await;
        }
        let mut finished = Vec::with_capacity(submitted.len());
        for (run, _, submit, wall) in submitted {
            let counted = self.store.checks().exactly_once(run).await?.context("a benchmark run vanished")?;
            let status = self.store.runs().progress(run).await?.context("a benchmark run vanished")?.status;
            finished.push(PlanRun {
                run_id: run,
                steps: counted.steps,
                wall: wall.unwrap_or_default(),
                submit,
                cpu: CpuPerStep::default(),
                verified: counted.holds() && status == crate::store::runs::RunStatus::Succeeded,
                dispatcher_rss: Vec::new(),
                worker_rss_mb: None,
            });
        }
        Ok(finished)
    }

    /// One cold start: submit a one-step plan with no worker running, start a worker (what
    /// `opflow up` or KEDA does), and time submit → the step has started.
    pub async fn cold_start(&self, sample: usize) -> anyhow::Result<(Duration, bool)> {
        let mut ends = self.store.runs().listen_for_ends().await?;
        // The step's `started_at` is the worker's own timestamp of its start (same machine,
        // same clock), so nothing polls while the worker starts.
        let submitted_at = chrono::Utc::now();
        let started = Instant::now();
        let submission = crate::submit::submit_without_reuse(
            self.store,
            &self.for_noop(&sweep_plan("w4", 1, "")),
            Path::new("bench-w4.yaml"),
        )
        .await
        .context("submitting the cold-start plan")?;
        let mut worker = self.sandbox.spawn(self.noop, &[], &format!("noop-cold-{sample}"))?;
        let run = submission.run_id;
        let mut poll_every = tokio::time::interval(Duration::from_millis(250));
        let status = loop {
            next_look(&mut ends, &[run], &mut poll_every, self.cancel).await?;
            let progress = self.store.runs().progress(run).await?.context("the cold-start run vanished")?;
            if progress.status.is_finished() {
                break progress.status;
            }
            if started.elapsed() > Duration::from_secs(120) {
                bail!("the cold-start step did not finish within 2 minutes");
            }
        };
        crate::up::fleet::drain(&mut worker, "noop", Duration::from_secs(30)).await;
        let step_started = self.store.checks().first_step_started_at(run).await?;
        let verified = self.store.checks().exactly_once(run).await?.is_some_and(|c| c.holds());
        let to_start = step_started.context("the step finished without a recorded start")? - submitted_at;
        let to_start =
            to_start.to_std().context("the step started before it was submitted: are the clocks sane?")?;
        Ok((to_start, verified && status == crate::store::runs::RunStatus::Succeeded))
    }

    /// The PostgreSQL client backends connected to the benchmark's database: the
    /// dispatcher's, and the benchmark's own listener and progress reads.
    async fn postgres_backends(&self) -> anyhow::Result<Vec<u32>> {
        let pids = self
            .store
            .checks()
            .client_backends()
            .await
            .context("listing the benchmark database's backends")?;
        Ok(pids.into_iter().filter_map(|pid| u32::try_from(pid).ok()).collect())
    }

    /// Waits until the noop queue has `workers` consumers.
    async fn wait_for_consumers(&self, workers: usize) -> anyhow::Result<()> {
        let connection = lapin::Connection::connect(
            self.sandbox.amqp_url.expose(),
            lapin::ConnectionProperties::default(),
        )
        .await?;
        let started = Instant::now();
        let result = loop {
            let channel = connection.create_channel().await?;
            let inspected = opflow_amqp::topology::inspect_queue(&channel, self.noop_queue).await;
            if let Err(error) = channel.close(200, "checked".into()).await {
                tracing::debug!(%error, "closing a channel failed");
            }
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
                () = self.cancel.cancelled() => break Err(anyhow::anyhow!("cancelled")),
            }
        };
        if let Err(error) = connection.close(200, "checked".into()).await {
            tracing::debug!(%error, "closing the connection failed");
        }
        result
    }
}

/// Waits until one of `runs` is announced as ended, or `every` ticks (a sample is due, or a missed
/// notification is caught up with).
async fn next_look(
    ends: &mut sqlx::postgres::PgListener,
    runs: &[RunId],
    every: &mut tokio::time::Interval,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let runs: Vec<String> = runs.iter().map(RunId::to_string).collect();
    loop {
        tokio::select! {
            notification = ends.recv() => {
                if runs.iter().any(|run| notification.as_ref().is_ok_and(|n| n.payload() == run)) {
                    return Ok(());
                }
                notification?;
            }
            _ = every.tick() => return Ok(()),
            () = cancel.cancelled() => bail!("cancelled"),
        }
    }
}
