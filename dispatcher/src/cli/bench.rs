//! `opflow bench`: runs the benchmark workloads and prints their figures.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use opflow_amqp::QueueKind;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::exit::InvalidInput;
use crate::{
    bench::{self, BenchOptions, Workload},
    settings::Settings,
};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Workloads: raw (the broker alone), w1 (10,000 independent steps), w2 (chains of 200 and 10,000 steps),
    /// w3 (1,000 steps of 10 ms CPU), w4 (cold start), w5 (compile and store 50,000 and 200,000
    /// steps), w6 (100,000 steps, memory and database size), w7 (scale from zero), w8 (fair sharing:
    /// a 100-step run of one owner behind a 100,000-step run of another; then concurrency caps,
    /// 10,000 steps over 1,000 keys of max 2), api (the HTTP
    /// API's p50/p99 per endpoint against a 100,000-step, 10,000-asset run and 10,000 runs),
    /// or all
    #[arg(value_name = "WORKLOAD", default_value = "all")]
    workloads: Vec<String>,
    /// One JSON object per workload per line
    #[arg(long)]
    json: bool,
    /// A tenth of every size: checks correctness quickly (CI runs this)
    #[arg(long)]
    quick: bool,
    /// Queue type of the op queue and of raw's queues
    #[arg(long, default_value = "quorum", value_parser = ["quorum", "classic"])]
    queue_type: String,
    /// Keep the logs of the processes the benchmark starts
    #[arg(long)]
    keep_logs: bool,
    /// The noop op whose workers run w1–w4, w6 and w8's steps [default: the Rust noop next to
    /// opflow]; another SDK's noop measures that SDK, e.g. the Python SDK's
    /// "$(scripts/python-ops.sh)/noop-py"
    #[arg(long, value_name = "COMMAND")]
    noop: Option<std::path::PathBuf>,
}

pub async fn bench(
    args: BenchArgs,
    settings: &Settings,
    cancel: &CancellationToken,
) -> anyhow::Result<ExitCode> {
    let workloads = Workload::parse_list(&args.workloads).map_err(InvalidInput)?;
    let queue_type: QueueKind = args.queue_type.parse().map_err(InvalidInput)?;
    let bin_dir = std::env::current_exe()
        .context("locating the opflow binary")?
        .parent()
        .context("the opflow binary has a directory")?
        .to_path_buf();
    let options =
        BenchOptions { quick: args.quick, queue_type, keep_logs: args.keep_logs, bin_dir, noop: args.noop };
    tokio::spawn(opflow_process::cancel_on_signal(cancel.clone()));
    let json = args.json;
    let verified = bench::run(&workloads, &options, settings, cancel, |figures| print(figures, json)).await?;
    Ok(if verified { ExitCode::SUCCESS } else { ExitCode::from(super::exit::EXIT_RUN_FAILED) })
}

fn print(figures: &Value, json: bool) {
    if json {
        say!("{figures}");
        return;
    }
    let Value::Object(fields) = figures else { return };
    let mut line = format!("{:<4}", fields.get("workload").and_then(Value::as_str).unwrap_or("?"));
    push_fields(&mut line, "", fields);
    say!("{line}");
}

/// `  key=value` for each field but the workload's name; a nested object's fields as
/// `  key.field=value` (`cpu_us_per_step.broker=…`, `deep.ms_per_step=…`).
fn push_fields(line: &mut String, prefix: &str, fields: &serde_json::Map<String, Value>) {
    for (key, value) in fields.iter().filter(|(k, _)| !(prefix.is_empty() && k.as_str() == "workload")) {
        match value {
            Value::Object(nested) => push_fields(line, &format!("{prefix}{key}."), nested),
            value => line.push_str(&format!("  {prefix}{key}={value}")),
        }
    }
}
