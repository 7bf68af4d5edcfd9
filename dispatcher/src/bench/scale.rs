//! w7, scale from zero: `opflow up`'s autoscaler measured in sandboxes of its own. The cold
//! start of a step published to an op at zero replicas (submit → the step started), with
//! the publisher's wake-up and without it (the autoscaler then waits for its next poll);
//! and a chain whose assets alternate between two ops, each at zero when its turn comes,
//! with the demand forecast (the next op's worker starts while the step before it runs)
//! and without it. Every op is set to a cooldown of 0, so each sample starts from zero.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use opflow_protocol::OpRef;
use serde_json::{Value, json};
use tokio::process::Child;
use tokio_util::sync::CancellationToken;

use super::{
    options::{BenchOptions, round},
    plans::sweep_plan,
    sandbox::Sandbox,
};
use crate::{settings::Settings, store::Store};

/// The alternating chain's length, and how long each of its noop steps sleeps.
const CHAIN: usize = 8;
const CHAIN_SLEEP_MS: u64 = 300;

pub async fn w7(
    settings: &Settings,
    options: &BenchOptions,
    cancel: &CancellationToken,
) -> anyhow::Result<Value> {
    let samples = if options.quick { 3 } else { 10 };
    let noop = options.bin_dir.join("noop");
    let paths = options.bin_dir.join("price-paths");
    let mut verified = true;

    let woken = cold_starts(settings, options, &noop, true, samples, cancel).await?;
    let polled = cold_starts(settings, options, &noop, false, samples, cancel).await?;
    let (forecast_s, ok_forecast) = alternating(settings, options, &[&noop, &paths], true, cancel).await?;
    let (plain_s, ok_plain) = alternating(settings, options, &[&noop, &paths], false, cancel).await?;
    verified &= woken.verified && polled.verified && ok_forecast && ok_plain;
    Ok(json!({
        "workload": "w7",
        "steps": samples * 2 + CHAIN * 2,
        "wall_s": round(woken.wall + polled.wall + forecast_s + plain_s, 3),
        "steps_per_s": Value::Null,
        "verified": verified,
        "cold_start_ms_median": round(woken.median_ms, 1),
        "cold_start_ms_max": round(woken.max_ms, 1),
        "cold_start_ms_median_without_wakeup": round(polled.median_ms, 1),
        "cold_start_ms_max_without_wakeup": round(polled.max_ms, 1),
        "alternating_chain_steps": CHAIN,
        "alternating_chain_s": round(forecast_s, 3),
        "alternating_chain_s_without_forecast": round(plain_s, 3),
    }))
}

struct ColdStarts {
    median_ms: f64,
    max_ms: f64,
    wall: f64,
    verified: bool,
}

/// `samples` one-step runs on noop at zero replicas, each measured submit → started.
async fn cold_starts(
    settings: &Settings,
    options: &BenchOptions,
    noop: &Path,
    wakeup: bool,
    samples: usize,
    cancel: &CancellationToken,
) -> anyhow::Result<ColdStarts> {
    let up = Up::start(settings, options, &[noop], wakeup, true, cancel).await?;
    let result = async {
        let started = Instant::now();
        let (mut cold, mut verified) = (Vec::with_capacity(samples), true);
        for _ in 0..samples {
            up.wait_for_zero(cancel).await?;
            let submitted_at = chrono::Utc::now();
            let run = up.run(&sweep_plan("w7", 1, ""), cancel).await?;
            let first =
                up.store.checks().first_step_started_at(run.0).await?.context("the step never started")?;
            cold.push(
                (first - submitted_at)
                    .to_std()
                    .context("the step started before it was submitted")?
                    .as_secs_f64()
                    * 1000.0,
            );
            verified &= run.1;
        }
        cold.sort_by(f64::total_cmp);
        let median = cold[cold.len() / 2];
        anyhow::Ok(ColdStarts {
            median_ms: median,
            max_ms: cold.last().copied().unwrap_or_default(),
            wall: started.elapsed().as_secs_f64(),
            verified,
        })
    }
    .await;
    up.stop().await;
    result
}

/// A chain of [`CHAIN`] assets alternating between the ops of `binaries`; its wall time.
async fn alternating(
    settings: &Settings,
    options: &BenchOptions,
    binaries: &[&Path],
    forecast: bool,
    cancel: &CancellationToken,
) -> anyhow::Result<(f64, bool)> {
    let up = Up::start(settings, options, binaries, true, forecast, cancel).await?;
    let result = async {
        up.wait_for_zero(cancel).await?;
        let mut plan = String::from("name: w7-alternating\nassets:\n");
        for i in 0..CHAIN {
            let step = if i % 2 == 0 {
                format!("    op: noop@^1\n    config: {{sleep_ms: {CHAIN_SLEEP_MS}}}\n")
            } else {
                "    op: price-paths@^1\n    config: {vol: 0.5, seed: 1, paths: 200, horizon_days: 1, steps_per_day: 1}\n".to_owned()
            };
            plan.push_str(&format!("  - name: s{i}\n{step}"));
            if i > 0 {
                plan.push_str(&format!("    deps: [s{}]\n", i - 1));
            }
        }
        let started = Instant::now();
        let (_, verified) = up.run(&plan, cancel).await?;
        anyhow::Ok((started.elapsed().as_secs_f64(), verified))
    }
    .await;
    up.stop().await;
    result
}

/// `opflow up` in a sandbox of its own, its ops set to scale from zero with no cooldown.
struct Up {
    sandbox: Sandbox,
    process: Child,
    store: Store,
    ops: Vec<OpRef>,
}

impl Up {
    async fn start(
        settings: &Settings,
        options: &BenchOptions,
        binaries: &[&Path],
        wakeup: bool,
        forecast: bool,
        cancel: &CancellationToken,
    ) -> anyhow::Result<Self> {
        let sandbox = Sandbox::create(settings).await?;
        let opflow = options.bin_dir.join("opflow");
        let mut ops = Vec::new();
        for (n, binary) in binaries.iter().enumerate() {
            let added = sandbox
                .command(&opflow, &format!("ops-add-{n}"))?
                .args(["ops", "add"])
                .arg(binary)
                .status()
                .await?;
            if !added.success() {
                bail!("registering {} failed; see {}", binary.display(), sandbox.log_dir.display());
            }
            let op = crate::ops::register::describe(binary).await?.op;
            let scaled = sandbox
                .command(&opflow, &format!("ops-scale-{n}"))?
                .args(["ops", "scale", &op.to_string(), "--cooldown", "0s", "--max", "1"])
                .status()
                .await?;
            if !scaled.success() {
                bail!("setting {op}'s scaling failed; see {}", sandbox.log_dir.display());
            }
            ops.push(op);
        }
        let mut command = sandbox.command(&opflow, "up")?;
        command.arg("up").args(binaries.iter().map(|b| b.as_os_str()));
        command
            .env("OPFLOW_AUTOSCALE_WAKEUP", wakeup.to_string())
            .env("OPFLOW_AUTOSCALE_FORECAST", forecast.to_string());
        let process = command.spawn().context("starting opflow up")?;
        let store =
            Store::connect(&sandbox.database_url, cancel).await.context("connecting to the w7 database")?;
        Ok(Self { sandbox, process, store, ops })
    }

    /// Waits until every op has been looked at and runs no worker.
    async fn wait_for_zero(&self, cancel: &CancellationToken) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let ops = self.store.ops().list().await?;
            let idle = ops
                .iter()
                .filter(|op| self.ops.iter().any(|o| o.name.as_str() == op.name))
                .all(|op| op.replicas == Some(0) && op.desired == Some(0));
            if idle {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("the ops did not scale to zero within 60 s; see {}", self.sandbox.log_dir.display());
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
                () = cancel.cancelled() => bail!("cancelled"),
            }
        }
    }

    /// Submits `plan` and waits for it to end; its run and whether it succeeded exactly once.
    async fn run(
        &self,
        plan: &str,
        cancel: &CancellationToken,
    ) -> anyhow::Result<(opflow_protocol::RunId, bool)> {
        let mut ends = self.store.runs().listen_for_ends().await?;
        let run = crate::submit::submit_without_reuse(&self.store, plan, Path::new("bench-w7.yaml"))
            .await
            .context("submitting the w7 plan")?
            .run_id;
        let started = Instant::now();
        loop {
            let progress = self.store.runs().progress(run).await?.context("the w7 run vanished")?;
            if progress.status.is_finished() {
                let counted = self.store.checks().exactly_once(run).await?;
                let verified = counted.is_some_and(|c| c.holds());
                if !verified || progress.status != crate::store::runs::RunStatus::Succeeded {
                    let failures =
                        self.store.runs().summary(run).await?.map(|s| s.failures).unwrap_or_default();
                    let first = failures.first().map(|f| f.error.as_str()).unwrap_or("no failed step");
                    eprintln!("w7: run {run} ended {} ({counted:?}): {first}", progress.status.as_str());
                }
                return Ok((run, verified && progress.status == crate::store::runs::RunStatus::Succeeded));
            }
            if started.elapsed() > Duration::from_secs(120) {
                bail!("the w7 run did not finish within 2 minutes; see {}", self.sandbox.log_dir.display());
            }
            tokio::select! {
                _ = ends.recv() => {}
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
                () = cancel.cancelled() => bail!("cancelled"),
            }
        }
    }

    async fn stop(mut self) {
        crate::up::fleet::drain(&mut self.process, "opflow up", Duration::from_secs(60)).await;
        self.store.close().await;
        self.sandbox.remove(false).await;
    }
}
