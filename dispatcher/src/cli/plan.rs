//! `opflow plan check`: compile a plan against the registry and show its steps per asset.

use std::{path::PathBuf, process::ExitCode};

use clap::Subcommand;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{exit::InvalidInput, render};
use crate::{plan::Partitions, settings::Settings, submit};

#[derive(Debug, Subcommand)]
pub enum PlanCommand {
    /// Compile a plan and print its steps per asset; exit 2 if it is invalid
    Check {
        /// The plan file (YAML)
        file: PathBuf,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(
    command: PlanCommand,
    settings: &Settings,
    cancel: &CancellationToken,
) -> anyhow::Result<ExitCode> {
    let PlanCommand::Check { file, json } = command;
    let source = render::read_plan(&file)?;
    let store = super::admin::store(settings, cancel).await?;
    let plan = match submit::compile(&store, &source, &file).await {
        Ok(plan) => plan,
        Err(submit::SubmitError::Plan(errors)) => return Err(InvalidInput(errors.to_string()).into()),
        Err(other) => return Err(other.into()),
    };
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
