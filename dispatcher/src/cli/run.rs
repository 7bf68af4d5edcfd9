//! `opflow run`, `status`, `outputs` and `cancel`: clients of the dispatcher's HTTP API.

use std::{path::PathBuf, process::ExitCode};

use clap::Args;
use opflow_api_model::{
    AssetInfo, AssetsQuery, CancelResponse, IDEMPOTENCY_KEY, MAX_PAGE, NotifyRequest, OnlyCells,
    OutputsQuery, Page, RunStatus, RunSummary, StepOutput, SubmitRequest, SubmitResponse,
};

use super::{
    client::{ApiClient, ServerArgs, path_segment},
    render,
    watch::{self, WatchOptions},
};

/// Leaf assets with at most this many steps have their outputs printed after `--wait`.
const SHOW_OUTPUTS_UP_TO: i64 = 20;
/// The outputs of at most this many leaf assets are printed (a plan may have thousands).
const SHOW_LEAVES: u32 = 10;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The plan file (YAML)
    pub file: PathBuf,
    /// Idempotency key: submitting the same key again returns the existing run
    #[arg(long)]
    pub key: Option<String>,
    /// Wait until the run finishes, showing its progress live; exit 0 if it succeeded, 1 if not
    #[arg(long)]
    pub wait: bool,
    /// Print one JSON object (run_id, status, steps counts, …) instead of text; with
    /// --wait, the run's final state
    #[arg(long)]
    pub json: bool,
    /// Tell this URL when the run ends (a signed webhook; see docs/webhooks.md)
    #[arg(long, value_name = "URL")]
    pub notify: Option<String>,
    /// Whose run it is, on an API without tokens (default `local`); with a token the run is
    /// its team's, and naming another is refused
    #[arg(long, value_name = "TEAM")]
    pub owner: Option<String>,
    /// Its weight among its owner's runs, 1 to 10 [default: the plan's `priority`, else 1]
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=10))]
    pub priority: Option<u8>,
    /// Run every step, reusing no earlier materialization (a forced recompute)
    #[arg(long, conflicts_with_all = ["missing", "failed"])]
    pub no_reuse: bool,
    /// Run only these partitions: a range `2026-01-01..2026-03-31` or a list `aave,compound`
    /// (assets that read every partition are left out, and said so)
    #[arg(long, value_name = "A..B|A,B,…")]
    pub partitions: Option<String>,
    /// A backfill: run only the cells without a current materialization (missing, failed, or
    /// stale: op version, config or inputs changed) and what reads them; take the rest from
    /// the catalog. `opflow plan check --missing` shows what it would run
    #[arg(long, conflicts_with = "failed")]
    pub missing: bool,
    /// A backfill: run only the cells whose last attempt failed (or that were never
    /// materialized) and what reads them; take the rest from the catalog
    #[arg(long)]
    pub failed: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The run id
    pub run: String,
    /// Print one JSON object instead of text
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The run id
    pub run: String,
    /// Print one JSON object (canceled, message, not_started, running, run) instead of text
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
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
    #[command(flatten)]
    pub server: ServerArgs,
}

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let client = args.server.client()?;
    let plan = render::read_plan(&args.file)?;
    let body = SubmitRequest {
        plan,
        file: Some(args.file.display().to_string()),
        key: None,
        notify: args.notify.clone().map(|url| NotifyRequest { url, secret: None }),
        owner: args.owner.clone(),
        priority: args.priority,
        no_reuse: args.no_reuse,
        partitions: args.partitions.clone(),
        only: match (args.missing, args.failed) {
            (true, _) => Some(OnlyCells::Missing),
            (_, true) => Some(OnlyCells::Failed),
            _ => None,
        },
    };
    let mut headers = Vec::new();
    if let Some(key) = &args.key {
        headers.push((IDEMPOTENCY_KEY, key.as_str()));
    }
    let submitted: SubmitResponse = client.post("/v1/runs", &body, &headers).await?;
    let run_id = submitted.run.run_id.to_string();
    // On stderr even with --json: the JSON answer (`left_out`) is the run's summary.
    for left_out in &submitted.left_out {
        eprintln!("left out `{}`: {}", left_out.asset, left_out.why);
    }
    if !args.json {
        if submitted.existing {
            eprintln!("run {run_id} already exists for this key; showing it instead of submitting again");
        } else {
            eprintln!("submitted run {run_id}");
        }
        eprintln!("its page: {}", client.page(&format!("/runs/{run_id}")));
        if let Some(secret) = &submitted.notify_secret {
            eprintln!(
                "notifications to {} are signed with {secret} (shown once)",
                args.notify.as_deref().unwrap_or("")
            );
        }
    }
    if !args.wait {
        print_summary(&submitted.run, args.json)?;
        return Ok(ExitCode::SUCCESS);
    }
    let options = WatchOptions { json_events: false, quiet: args.json };
    let summary = watch::follow(&client, &run_id, options).await?;
    print_summary(&summary, args.json)?;
    if !args.json && summary.status == RunStatus::Succeeded {
        print_leaf_outputs(&client, &run_id).await?;
    }
    Ok(super::exit::exit_code(summary.status))
}

pub async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let client = args.server.client()?;
    let summary: RunSummary = client.get(&format!("/v1/runs/{}", path_segment(&args.run))).await?;
    print_summary(&summary, args.json)?;
    Ok(ExitCode::SUCCESS)
}

/// `opflow cancel`: queued and waiting steps never start, running ones are told to stop.
/// Exits 0 whether the run was going or had already finished (which it says).
pub async fn cancel(args: CancelArgs) -> anyhow::Result<ExitCode> {
    let client = args.server.client()?;
    let response: CancelResponse =
        client.post_empty(&format!("/v1/runs/{}/cancel", path_segment(&args.run))).await?;
    if args.json {
        say!("{}", serde_json::to_string(&response)?);
    } else {
        say!("{}", response.message);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn outputs(args: OutputsArgs) -> anyhow::Result<ExitCode> {
    let client = args.server.client()?;
    let run = path_segment(&args.run);
    let rows = all_outputs(&client, &run, args.asset.as_deref()).await?;
    if let Some(asset) = &args.asset
        && rows.is_empty()
    {
        return Err(super::exit::InvalidInput(format!("run {run} has no asset `{asset}`")).into());
    }
    if args.json {
        say!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    for row in rows {
        let label = &row.label;
        match (&row.output, &row.error) {
            (Some(output), _) => say!("{label}  {}", render::output_line(output)),
            (None, Some(error)) => say!("{label}  [{:?}] {error}", row.status),
            (None, None) => say!("{label}  [{:?}]", row.status),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Every output of a run (of one asset), page after page.
async fn all_outputs(client: &ApiClient, run: &str, asset: Option<&str>) -> anyhow::Result<Vec<StepOutput>> {
    let mut rows = Vec::new();
    let mut query = OutputsQuery { asset: asset.map(str::to_owned), limit: Some(MAX_PAGE), cursor: None };
    loop {
        let page: Page<StepOutput> = client.get_with(&format!("/v1/runs/{run}/outputs"), &query).await?;
        rows.extend(page.items);
        match page.next_cursor {
            Some(next) => query.cursor = Some(next),
            None => return Ok(rows),
        }
    }
}

fn print_summary(summary: &RunSummary, json: bool) -> anyhow::Result<()> {
    if json {
        say!("{}", serde_json::to_string(summary)?);
    } else {
        render::summary(summary);
    }
    Ok(())
}

/// Prints the outputs of the plan's final assets (those nothing depends on), when small:
/// of the first [`SHOW_LEAVES`] leaves.
pub async fn print_leaf_outputs(client: &ApiClient, run: &str) -> anyhow::Result<()> {
    let leaves = AssetsQuery { leaf: Some(true), limit: Some(SHOW_LEAVES), ..AssetsQuery::default() };
    let assets: Page<AssetInfo> = client.get_with(&format!("/v1/runs/{run}/assets"), &leaves).await?;
    for asset in assets.items.iter().filter(|a| a.steps <= SHOW_OUTPUTS_UP_TO) {
        say!("outputs of `{}`:", asset.name);
        let query = OutputsQuery {
            asset: Some(asset.name.clone()),
            limit: Some(SHOW_OUTPUTS_UP_TO as u32),
            cursor: None,
        };
        let page: Page<StepOutput> = client.get_with(&format!("/v1/runs/{run}/outputs"), &query).await?;
        for row in page.items {
            let output = row.output.as_ref().map(render::output_line).unwrap_or_default();
            say!("  {}  {output}", row.label);
        }
    }
    Ok(())
}
