//! `opflow plan check`: compile a plan against the registry and show its steps per asset,
//! or with `--missing`/`--failed` what a backfill would run and why.

use std::{path::PathBuf, process::ExitCode};

use clap::Subcommand;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{exit::InvalidInput, render};
use crate::{
    plan::{
        CompiledPlan, Only, Partitions,
        backfill::{LeftOut, PartitionSelection, plan_backfill},
        graph::PlanGraph,
    },
    settings::Settings,
    store::{Store, runs::RunOptions},
    submit,
};

/// `opflow plan check --missing|--failed`: the catalog's cells of the plan's assets read in
/// one statement, the plan walked against them (`plan::backfill::plan_backfill`).
async fn backfill(
    store: &Store,
    plan: CompiledPlan,
    only: Only,
    left_out: Vec<LeftOut>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let names: Vec<String> = plan.assets.iter().map(|a| a.name.clone()).collect();
    let now = chrono::Utc::now();
    let stale_before: Vec<_> = plan
        .assets
        .iter()
        .map(|a| a.freshness.as_ref().and_then(|p| p.thresholds(now)).map(|t| t.stale_before))
        .collect();
    let cells = store.catalog().cells_of_assets(&names, &stale_before).await?;
    let (name, steps) = (plan.name.clone(), plan.step_count);
    let graph = PlanGraph::new(plan);
    let report = tokio::task::spawn_blocking(move || {
        plan_backfill(&graph, only, |asset, partition, point| {
            cells.get(&(asset.to_owned(), partition.to_owned(), point.to_owned()))
        })
    })
    .await?;
    if json {
        say!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "plan": name, "steps": steps, "runs": report.runs(), "taken": report.taken(),
                "assets": report.assets, "left_out": left_out,
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    say!(
        "plan `{name}`: a backfill would run {} of {steps} cells and take {} from the catalog",
        report.runs(),
        report.taken()
    );
    let rows: Vec<[String; 4]> = report
        .assets
        .iter()
        .map(|a| {
            let runs: u64 = a.runs.values().map(|r| r.cells).sum();
            let why = a
                .runs
                .iter()
                .map(|(why, r)| format!("{why} {} (e.g. {})", r.cells, r.examples.join(", ")))
                .collect::<Vec<_>>()
                .join("; ");
            [
                a.asset.clone(),
                runs.to_string(),
                a.taken.to_string(),
                if why.is_empty() { "-".into() } else { why },
            ]
        })
        .collect();
    render::table(&["asset", "runs", "taken", "why it runs"], &rows);
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Subcommand)]
pub enum PlanCommand {
    /// Compile a plan and print its steps per asset; exit 2 if it is invalid
    Check {
        /// The plan file (YAML)
        file: PathBuf,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
        /// Cut the plan to these partitions, as `opflow run --partitions` would
        #[arg(long, value_name = "A..B|A,B,…")]
        partitions: Option<String>,
        /// Say, per asset, which cells `opflow run --missing` would run and why, and how many
        /// it would take from the catalog; runs nothing
        #[arg(long, conflicts_with = "failed")]
        missing: bool,
        /// As --missing, for `opflow run --failed`
        #[arg(long)]
        failed: bool,
    },
}

pub async fn run(
    command: PlanCommand,
    settings: &Settings,
    cancel: &CancellationToken,
) -> anyhow::Result<ExitCode> {
    let PlanCommand::Check { file, json, partitions, missing, failed } = command;
    let source = render::read_plan(&file)?;
    let store = super::admin::store(settings, cancel).await?;
    let mut plan = match submit::compile(&store, &source, &file).await {
        Ok(plan) => plan,
        Err(submit::SubmitError::Plan(errors)) => return Err(InvalidInput(errors.to_string()).into()),
        Err(other) => return Err(other.into()),
    };
    let selection = match partitions.as_deref().map(str::parse::<PartitionSelection>) {
        Some(Err(why)) => return Err(InvalidInput(format!("--partitions: {why}")).into()),
        Some(Ok(selection)) => Some(selection),
        None => None,
    };
    let only = match (missing, failed) {
        (true, _) => Some(Only::Missing),
        (_, true) => Some(Only::Failed),
        _ => None,
    };
    let options = RunOptions { partitions: selection.as_ref(), only, ..RunOptions::default() };
    let left_out = match submit::cut(&mut plan, &options) {
        Ok(left_out) => left_out,
        Err(error) => return Err(InvalidInput(error.to_string()).into()),
    };
    if !json {
        for l in &left_out {
            eprintln!("left out `{}`: {}", l.asset, l.why);
        }
    }
    if let Some(only) = only {
        return backfill(&store, plan, only, left_out, json).await;
    }
    if json {
        let assets: Vec<_> = plan
            .assets
            .iter()
            .map(|a| {
                json!({
                    "name": a.name,
                    "op": format!("{}@{}", a.op_name, a.op_version),
                    "requirement": a.op_requirement,
                    "partitions": a.partition_count(),
                    "sweep_size": a.sweep_size(),
                    "steps": a.step_count(),
                    "deps": a.deps.iter().map(|d| json!({
                        "asset": plan.assets[d.upstream].name,
                        "partition_mapped": d.partition_mapped,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        say!(
            "{}",
            serde_json::to_string_pretty(
                &json!({ "plan": plan.name, "steps": plan.step_count, "assets": assets })
            )?
        );
        return Ok(ExitCode::SUCCESS);
    }
    say!("plan `{}` ({}): {} steps, valid", plan.name, file.display(), plan.step_count);
    let rows: Vec<[String; 6]> = plan
        .assets
        .iter()
        .map(|a| {
            let partitions = match &a.partitions {
                Partitions::None => "-".to_owned(),
                _ => a.partition_count().to_string(),
            };
            let deps = if a.deps.is_empty() {
                "-".to_owned()
            } else {
                a.deps
                    .iter()
                    .map(|d| {
                        let name = &plan.assets[d.upstream].name;
                        if d.partition_mapped {
                            format!("{name} (per partition)")
                        } else {
                            format!("{name} (all)")
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            [
                a.name.clone(),
                format!("{}@{} ({})", a.op_name, a.op_version, a.op_requirement),
                partitions,
                a.sweep_size().to_string(),
                a.step_count().to_string(),
                deps,
            ]
        })
        .collect();
    render::table(&["asset", "op (as written)", "partitions", "sweep", "steps", "waits on"], &rows);
    Ok(ExitCode::SUCCESS)
}
