//! `opflow bench`: the platform measured against the broker's own limit on the same
//! machine, in one invocation. Each workload runs in a sandbox (its own database and vhost,
//! removed afterwards), is verified (every step succeeded exactly once, outputs present)
//! and reported as one JSON object per line. See docs/benchmarks.md for the fields.
//!
//! - [`options`]: what an invocation runs, and how its figures are rounded.
//! - [`raw`]: the broker alone, with lapin.
//! - [`workloads`]: w1–w6, what each runs and reports.
//! - [`plans`]: the plans they submit.
//! - [`observe`]: watching a run: timing, memory, verification, cold starts.
//! - [`scale`]: w7, scale from zero under `opflow up`'s autoscaler.
//! - [`api`]: the HTTP API's answers against a large store.
//! - [`sandbox`]: the benchmark's own database and vhost.
//! - [`memory`]: resident memory from `/proc`.
//! - [`cpu`]: CPU time per step by component, from `/proc`.

pub mod api;
pub mod cpu;
pub mod memory;
pub mod observe;
pub mod options;
pub mod plans;
pub mod raw;
pub mod sandbox;
pub mod scale;
pub mod workloads;

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::{settings::Settings, store::Store};
use observe::Bed;
use options::round;
pub use options::{BenchOptions, Workload};
use sandbox::Sandbox;

/// Runs `workloads` in a fresh sandbox and hands each result to `emit` as it is known.
/// Returns false if a workload could not be verified.
pub async fn run(
    workloads: &[Workload],
    options: &BenchOptions,
    settings: &Settings,
    cancel: &CancellationToken,
    mut emit: impl FnMut(&Value),
) -> anyhow::Result<bool> {
    // Every op binary the chosen workloads need is checked before the first one runs, so a
    // missing one is said at once rather than after minutes of other workloads.
    let noop = options.bin_dir.join("noop");
    let mut needed = vec![("noop", noop.clone())];
    if let Some(other) = &options.noop {
        needed.push(("noop", other.clone()));
    }
    if workloads.contains(&Workload::W7) {
        needed.push(("price-paths", options.bin_dir.join("price-paths")));
    }
    let missing: Vec<&(&str, PathBuf)> = needed.iter().filter(|(_, path)| !path.exists()).collect();
    if !missing.is_empty() {
        let paths: Vec<String> = missing.iter().map(|(_, path)| path.display().to_string()).collect();
        let packages: Vec<String> = missing.iter().map(|(name, _)| format!("-p {name}")).collect();
        bail!(
            "{} {}: the chosen workloads run {}; build with `cargo build --release {}`",
            paths.join(" and "),
            if missing.len() == 1 { "is missing" } else { "are missing" },
            if missing.len() == 1 { "this op" } else { "these ops" },
            packages.join(" ")
        );
    }
    let sandbox = Sandbox::create(settings).await?;
    eprintln!("benchmark sandbox: database and vhost {}", sandbox.name);
    let result = run_in(&sandbox, workloads, options, settings, &noop, cancel, &mut emit).await;
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
    settings: &Settings,
    noop: &Path,
    cancel: &CancellationToken,
    emit: &mut impl FnMut(&Value),
) -> anyhow::Result<bool> {
    // The API's answers need the database only: before anything else runs in it.
    let mut all_verified = true;
    if workloads.contains(&Workload::Api) {
        let figures = api::api(sandbox, options, cancel).await.context("the api workload")?;
        all_verified &= figures["verified"] == true;
        emit(&figures);
        if workloads.iter().all(|w| *w == Workload::Api) {
            return Ok(all_verified);
        }
    }
    // Every figure is a ratio to the broker's own, measured first, in this invocation.
    let raw = raw::measure(
        sandbox.amqp_url.expose(),
        options.queue_type,
        options.scaled(20_000),
        options.scaled(10_000),
        options.scaled(1_000),
        cancel,
    )
    .await
    .context("measuring the broker alone (raw)")?;
    if workloads.contains(&Workload::Raw) {
        let wall = raw.messages as f64 / raw.publish_per_s
            + raw.messages as f64 / raw.consume_per_s
            + raw.cycle_messages as f64 / raw.cycle_per_s
            + raw.cycle_messages as f64 / raw.pipeline_per_s;
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
            "cycle_messages": raw.cycle_messages,
            "cycle_per_s": round(raw.cycle_per_s, 1),
            "pipeline_per_s": round(raw.pipeline_per_s, 1),
            "cycle_cpu_us_per_message": {
                "consumers": raw.cycle_cpu_us_per_message.consumers.map(|us| round(us, 0)),
                "broker": raw.cycle_cpu_us_per_message.broker.map(|us| round(us, 0)),
            },
        }));
    }
    let mut platform: Vec<Workload> =
        workloads.iter().copied().filter(|w| !matches!(w, Workload::Raw | Workload::Api)).collect();
    // w2 last: its 10,000-asset plan leaves memory in the allocators of this process and of
    // the dispatcher, which would show in w5's and w6's resident memory if they came after.
    platform.sort_by_key(|workload| *workload == Workload::W2);
    if platform.is_empty() {
        return Ok(all_verified);
    }

    let opflow = options.bin_dir.join("opflow");
    let mut dispatcher = sandbox.spawn(&opflow, &["dispatcher"], "dispatcher")?;
    // The workers' noop: the Rust one, or another SDK's (whose op has another name).
    let worker_noop = options.noop.as_deref().unwrap_or(noop);
    let noop_name = crate::ops::register::describe(worker_noop)
        .await
        .with_context(|| format!("describing {}", worker_noop.display()))?
        .op
        .name
        .to_string();
    let registered = sandbox
        .command(&opflow, "ops-add")?
        .args(["ops", "add"])
        .arg(worker_noop)
        .args(["--queue-type", options.queue_type.as_str()])
        .status()
        .await?;
    if !registered.success() {
        bail!("registering noop failed; see {}", sandbox.log_dir.join("ops-add.log").display());
    }
    let store = Store::connect(&sandbox.database_url, cancel)
        .await
        .context("connecting to the benchmark database")?;
    let noop_queue = store
        .ops()
        .registered()
        .await?
        .into_iter()
        .find(|op| op.name.to_string() == noop_name)
        .map(|op| opflow_protocol::queue::op_queue(&op))
        .with_context(|| format!("{noop_name} is not in the registry after `opflow ops add`"))?;
    let dispatcher_pid = dispatcher.id();
    let bed = Bed {
        sandbox,
        store: &store,
        noop: worker_noop,
        noop_name: &noop_name,
        noop_queue: &noop_queue,
        cancel,
        dispatcher_pid,
    };

    for workload in platform {
        if let Some(status) = dispatcher.try_wait()? {
            bail!(
                "the dispatcher exited with {status}; see {}",
                sandbox.log_dir.join("dispatcher.log").display()
            );
        }
        let results = match workload {
            Workload::W1 => vec![workloads::w1(&bed, &raw, options).await?],
            Workload::W2 => vec![workloads::w2(&bed, &raw, options).await?],
            Workload::W3 => vec![workloads::w3(&bed, &raw, options).await?],
            Workload::W4 => vec![workloads::w4(&bed, options).await?],
            // Compiling and storing only: no queue is involved.
            Workload::W5 => {
                for figures in workloads::w5(sandbox, noop, options, cancel).await? {
                    all_verified &= figures["verified"] == true;
                    emit(&figures);
                }
                continue;
            }
            Workload::W6 => vec![workloads::w6(&bed, &raw, options, dispatcher_pid).await?],
            // `opflow up` in sandboxes of its own.
            Workload::W7 => vec![scale::w7(settings, options, cancel).await?],
            Workload::W8 => vec![workloads::w8(&bed, options).await?],
            Workload::Raw | Workload::Api => unreachable!("raw and api ran first"),
        };
        for mut figures in results {
            // Like for like: the queue types the steps and the events went through.
            figures["queue_type"] = json!(options.queue_type.as_str());
            figures["events_queue_type"] = json!(settings.events_queue_type.as_str());
            all_verified &= figures["verified"] == true;
            emit(&figures);
        }
    }
    crate::up::fleet::drain(&mut dispatcher, "dispatcher", std::time::Duration::from_secs(30)).await;
    store.close().await;
    Ok(all_verified)
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
        assert_eq!(Workload::parse_list(&names(&["all"])).unwrap().len(), 10);
        assert_eq!(Workload::parse_list(&[]).unwrap().len(), 10);
        let unknown = Workload::parse_list(&names(&["w9"])).unwrap_err();
        assert!(unknown.contains("unknown workload `w9`"), "{unknown}");
    }
}
