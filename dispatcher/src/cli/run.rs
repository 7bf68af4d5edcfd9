//! `opflow run`, `opflow status` and `opflow outputs`.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::Args;
use opflow_protocol::{RunId, StepId};
use tokio_util::sync::CancellationToken;

use super::{EXIT_RUN_FAILED, InvalidInput, render};
use crate::{
    config::Settings,
    store::{
        Store,
        run_plan::{RunPlan, UnlockMode},
        runs::{RunStatus, RunSummary},
    },
    submit::{self, SubmitError},
};

/// How often `--wait` reads the run's counters.
const POLL: Duration = Duration::from_millis(200);
/// Leaf assets with at most this many steps have their outputs printed after `--wait`.
const SHOW_OUTPUTS_UP_TO: u32 = 20;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The plan file (YAML)
    pub file: PathBuf,
    /// Idempotency key: submitting the same key again returns the existing run
    #[arg(long)]
    pub key: Option<String>,
    /// Wait until the run finishes; exit 0 if it succeeded, 1 if it failed
    #[arg(long)]
    pub wait: bool,
    /// Print one JSON object (run_id, status, steps counts, …) instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The run id
    pub run: String,
    /// Print one JSON object instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The run id
    pub run: String,
    /// Print one JSON object (canceled, message, not_started, running, run) instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct OutputsArgs {
    /// The run id
    pub run: String,
    /// Only this asset's steps
    #[arg(long)]
    pub asset: Option<String>,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: RunArgs, settings: &Settings, cancel: &CancellationToken) -> anyhow::Result<ExitCode> {
    let source = render::read_plan(&args.file)?;
    let store = super::store(settings, cancel).await?;
    let submission = match submit::submit(&store, &source, &args.file, args.key.as_deref()).await {
        Ok(submission) => submission,
        Err(SubmitError::Plan(errors)) => return Err(InvalidInput(errors.to_string()).into()),
        Err(error @ SubmitError::BadKey(_)) => return Err(InvalidInput(error.to_string()).into()),
        Err(SubmitError::Store(error @ crate::store::StoreError::KeyConflict { .. })) => {
            return Err(InvalidInput(error.to_string()).into());
        }
        Err(other) => return Err(other.into()),
    };
    let run_id = submission.run_id;
    if !args.json {
        if submission.existing {
            eprintln!("run {run_id} already exists for this key; showing it instead of submitting again");
        } else {
            eprintln!("submitted run {run_id}");
        }
    }
    if !args.wait {
        let summary = summary_of(&store, run_id).await?;
        print_summary(&summary, args.json)?;
        return Ok(ExitCode::SUCCESS);
    }
    let summary = wait_for(&store, run_id, args.json).await?;
    print_summary(&summary, args.json)?;
    if !args.json && summary.status == RunStatus::Succeeded {
        print_leaf_outputs(&store, run_id).await?;
    }
    Ok(exit_code(summary.status))
}

/// Waits until the run ends, showing progress unless `quiet`.
pub async fn wait_for(store: &Store, run: RunId, quiet: bool) -> anyhow::Result<RunSummary> {
    let mut progress = render::Progress::new(quiet);
    loop {
        let Some(p) = store.run_progress(run).await? else {
            return Err(InvalidInput(format!("no run {run}")).into());
        };
        progress.update(&p, quiet);
        if p.status.is_finished() {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    progress.finish();
    summary_of(store, run).await
}

pub fn exit_code(status: RunStatus) -> ExitCode {
    if status == RunStatus::Succeeded { ExitCode::SUCCESS } else { ExitCode::from(EXIT_RUN_FAILED) }
}

pub async fn status(
    args: StatusArgs,
    settings: &Settings,
    cancel: &CancellationToken,
) -> anyhow::Result<ExitCode> {
    let run = parse_run_id(&args.run)?;
    let store = super::store(settings, cancel).await?;
    print_summary(&summary_of(&store, run).await?, args.json)?;
    Ok(ExitCode::SUCCESS)
}

/// `opflow cancel`: queued and waiting steps never start, running ones are told to stop.
/// Exits 0 whether the run was going or had already finished (which it says).
pub async fn cancel(
    args: CancelArgs,
    settings: &Settings,
    cancel: &CancellationToken,
) -> anyhow::Result<ExitCode> {
    let run = parse_run_id(&args.run)?;
    let store = super::store(settings, cancel).await?;
    let cancellation = store.cancel_run(run).await?.ok_or_else(|| InvalidInput(format!("no run {run}")))?;
    let summary = crate::api::types::RunSummary::from(summary_of(&store, run).await?);
    let response = crate::api::types::CancelResponse::new(cancellation, summary);
    if args.json {
        println!("{}", serde_json::to_string(&response)?);
    } else {
        println!("{}", response.message);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn outputs(
    args: OutputsArgs,
    settings: &Settings,
    cancel: &CancellationToken,
) -> anyhow::Result<ExitCode> {
    let run = parse_run_id(&args.run)?;
    let store = super::store(settings, cancel).await?;
    summary_of(&store, run).await?;
    let mut rows = Vec::new();
    loop {
        let after = rows.last().map(|row: &crate::store::runs::StepOutput| row.step_id as u32);
        let page = store.step_outputs(run, args.asset.as_deref(), after, crate::api::runs::MAX_PAGE).await?;
        let done = page.len() < crate::api::runs::MAX_PAGE as usize;
        rows.extend(page);
        if done {
            break;
        }
    }
    if let Some(asset) = &args.asset
        && rows.is_empty()
    {
        return Err(InvalidInput(format!("run {run} has no asset `{asset}`")).into());
    }
    if args.json {
        let rows: Vec<crate::api::types::StepOutput> = rows.into_iter().map(Into::into).collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    let plan =
        RunPlan::new(store.load_run_plan(run).await?, UnlockMode::Groups).map_err(anyhow::Error::msg)?;
    for row in rows {
        let label = plan.label(StepId(row.step_id as u32));
        match (&row.output, &row.error) {
            (Some(output), _) => println!("{label}  {}", render::output_line(output)),
            (None, Some(error)) => println!("{label}  [{:?}] {error}", row.status),
            (None, None) => println!("{label}  [{:?}]", row.status),
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn summary_of(store: &Store, run: RunId) -> anyhow::Result<RunSummary> {
    store.run_summary(run).await?.ok_or_else(|| InvalidInput(format!("no run {run}")).into())
}

fn print_summary(summary: &RunSummary, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(&crate::api::types::RunSummary::from(summary.clone()))?);
    } else {
        render::summary(summary);
    }
    Ok(())
}

/// Prints the outputs of the plan's final assets (those nothing depends on), when small.
pub async fn print_leaf_outputs(store: &Store, run: RunId) -> anyhow::Result<()> {
    let plan =
        RunPlan::new(store.load_run_plan(run).await?, UnlockMode::Groups).map_err(anyhow::Error::msg)?;
    let assets = &plan.plan().assets;
    let is_upstream: std::collections::HashSet<usize> =
        assets.iter().flat_map(|a| a.deps.iter().map(|d| d.upstream)).collect();
    for (index, asset) in assets.iter().enumerate() {
        if is_upstream.contains(&index) || asset.step_count() > SHOW_OUTPUTS_UP_TO {
            continue;
        }
        println!("outputs of `{}`:", asset.name);
        for row in store.step_outputs(run, Some(&asset.name), None, SHOW_OUTPUTS_UP_TO).await? {
            let output = row.output.as_ref().map(render::output_line).unwrap_or_default();
            println!("  {}  {output}", plan.label(StepId(row.step_id as u32)));
        }
    }
    Ok(())
}

fn parse_run_id(text: &str) -> Result<RunId, InvalidInput> {
    text.parse().map_err(|_| InvalidInput(format!("`{text}` is not a run id (a UUID)")))
}
