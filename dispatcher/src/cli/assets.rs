//! `opflow assets`: the asset catalog across runs, over the HTTP API: which cells of each
//! asset are materialized, stale, failed or missing; a partition's history; lineage.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use opflow_api_model::{
    AssetSummary, CellStatus, CellView, CellsQuery, CheckView, ChecksQuery, FreshnessState, HistoryQuery,
    Lineage, LineageDirection, LineageQuery, Materialization, Page,
};

use super::client::{ServerArgs, path_segment};
use super::render::table;

#[derive(Debug, Subcommand)]
pub enum AssetsCommand {
    /// Every asset with its cells (partition × sweep point) counted: materialized, stale,
    /// failed, missing
    List(ListArgs),
    /// One asset: its counts and its cells' latest state; with --partition and --history, the
    /// partition's every materialization
    Show(ShowArgs),
    /// What an asset's latest materializations read, across runs (--upstream, the default),
    /// or what read them (--downstream)
    Lineage(LineageArgs),
    /// The newest result of each check the op reported of each cell, failed first
    Checks(ChecksArgs),
}

#[derive(Debug, Args)]
pub struct ChecksArgs {
    /// The asset's name
    asset: String,
    /// Only this partition's
    #[arg(long, value_name = "KEY")]
    partition: Option<String>,
    /// Only the checks whose newest result failed
    #[arg(long)]
    failed: bool,
    /// The most results to print
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: u32,
    /// Print JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Also each partition's freshness (fresh, warn, stale), for every asset with a
    /// freshness policy: the stalest first, at most --limit per asset
    #[arg(long)]
    freshness: bool,
    /// With --freshness: the most partitions to print per asset
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: u32,
    /// Print JSON (the API's `GET /v1/assets` items), one asset per line
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The asset's name
    asset: String,
    /// Only this partition's cells
    #[arg(long, value_name = "KEY")]
    partition: Option<String>,
    /// Only cells in this state
    #[arg(long, value_parser = ["materialized", "stale", "failed"])]
    status: Option<String>,
    /// Only materialized cells of this freshness, under the asset's freshness policy
    #[arg(long, value_parser = ["fresh", "warn", "stale"])]
    freshness: Option<String>,
    /// Every materialization of the partition (of every sweep point), newest first
    #[arg(long)]
    history: bool,
    /// The most cells (or materializations) to print
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: u32,
    /// Print JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct LineageArgs {
    /// The asset's name
    asset: String,
    /// Start from this partition's latest materializations (default: every partition's)
    #[arg(long, value_name = "KEY")]
    partition: Option<String>,
    /// What they read, and what those read (the default)
    #[arg(long, conflicts_with = "downstream")]
    upstream: bool,
    /// What read them, and what read those
    #[arg(long)]
    downstream: bool,
    /// Print JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

pub async fn run(command: AssetsCommand) -> anyhow::Result<ExitCode> {
    match command {
        AssetsCommand::List(args) => {
            let page: Page<AssetSummary> = args.server.client()?.get("/v1/assets").await?;
            if args.json {
                for asset in &page.items {
                    say!("{}", serde_json::to_string(asset)?);
                }
            } else if page.items.is_empty() {
                say!("no assets yet: the catalog fills as runs materialize them (`opflow run plan.yaml`)");
            } else {
                let rows: Vec<[String; 9]> = page.items.iter().map(summary_row).collect();
                table(
                    &[
                        "ASSET",
                        "OP",
                        "CELLS",
                        "MATERIALIZED",
                        "STALE",
                        "FAILED",
                        "MISSING",
                        "FRESHNESS",
                        "LATEST",
                    ],
                    &rows,
                );
                if args.freshness {
                    freshness_by_partition(&args, &page.items).await?;
                }
            }
        }
        AssetsCommand::Show(args) => show(args).await?,
        AssetsCommand::Checks(args) => {
            let client = args.server.client()?;
            let query = ChecksQuery {
                partition: args.partition.clone(),
                failed: args.failed.then_some(true),
                limit: Some(args.limit),
            };
            let path = format!("/v1/assets/{}/checks", path_segment(&args.asset));
            let checks: Vec<CheckView> = client.get_with(&path, &query).await?;
            if args.json {
                say!("{}", serde_json::to_string(&checks)?);
            } else if checks.is_empty() {
                say!("no check results of `{}`{}", args.asset, if args.failed { " that failed" } else { "" });
            } else {
                let rows: Vec<[String; 6]> = checks
                    .iter()
                    .map(|c| {
                        [
                            cell_label(&args.asset, c.partition.as_deref(), c.point.as_ref()),
                            c.check.clone(),
                            if c.passed { "passed".into() } else { "FAILED".into() },
                            if c.blocking { "blocking".into() } else { "-".into() },
                            c.detail.clone().unwrap_or_default(),
                            c.run_id.to_string(),
                        ]
                    })
                    .collect();
                table(&["CELL", "CHECK", "RESULT", "KIND", "DETAIL", "RUN"], &rows);
            }
        }
        AssetsCommand::Lineage(args) => {
            let client = args.server.client()?;
            let query = LineageQuery {
                partition: args.partition.clone(),
                direction: Some(if args.downstream {
                    LineageDirection::Downstream
                } else {
                    LineageDirection::Upstream
                }),
            };
            let path = format!("/v1/assets/{}/lineage", path_segment(&args.asset));
            let lineage: Lineage = client.get_with(&path, &query).await?;
            if args.json {
                say!("{}", serde_json::to_string(&lineage)?);
            } else {
                let way = if args.downstream { "read by" } else { "read" };
                say!("{} materializations of {} {way}:", lineage.items.len(), args.asset);
                let rows: Vec<[String; 6]> = lineage
                    .items
                    .iter()
                    .map(|item| {
                        let m = &item.materialization;
                        [
                            item.depth.to_string(),
                            cell_label(&m.asset, m.partition.as_deref(), m.point.as_ref()),
                            m.id.to_string(),
                            m.op.clone(),
                            m.run_id.to_string(),
                            m.at.format("%Y-%m-%d %H:%M:%S").to_string(),
                        ]
                    })
                    .collect();
                table(&["DEPTH", "CELL", "ID", "OP", "RUN", "AT"], &rows);
                if lineage.truncated {
                    say!("(more not shown: a walk returns at most 1,000 materializations)");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn show(args: ShowArgs) -> anyhow::Result<()> {
    let client = args.server.client()?;
    let asset = path_segment(&args.asset);
    if args.history {
        let query = HistoryQuery { partition: args.partition.clone(), limit: Some(args.limit) };
        let history: Vec<Materialization> =
            client.get_with(&format!("/v1/assets/{asset}/history"), &query).await?;
        if args.json {
            say!("{}", serde_json::to_string(&history)?);
            return Ok(());
        }
        let rows: Vec<[String; 7]> = history
            .iter()
            .map(|m| {
                [
                    m.id.to_string(),
                    cell_label(&m.asset, m.partition.as_deref(), m.point.as_ref()),
                    m.op.clone(),
                    m.output_digest[..12.min(m.output_digest.len())].to_owned(),
                    m.inputs.len().to_string(),
                    m.run_id.to_string(),
                    m.at.format("%Y-%m-%d %H:%M:%S").to_string(),
                ]
            })
            .collect();
        table(&["ID", "CELL", "OP", "OUTPUT", "READ", "RUN", "AT"], &rows);
        return Ok(());
    }
    let summary: AssetSummary = client.get(&format!("/v1/assets/{asset}")).await?;
    let query = CellsQuery {
        status: args.status.as_deref().map(|s| match s {
            "stale" => CellStatus::Stale,
            "failed" => CellStatus::Failed,
            _ => CellStatus::Materialized,
        }),
        partition: args.partition.clone(),
        freshness: args.freshness.as_deref().map(freshness_state),
        limit: Some(args.limit),
        cursor: None,
    };
    let cells: Page<CellView> = client.get_with(&format!("/v1/assets/{asset}/partitions"), &query).await?;
    if args.json {
        say!(
            "{}",
            serde_json::json!({ "asset": summary, "cells": cells.items, "more": cells.next_cursor.is_some() })
        );
        return Ok(());
    }
    let row = summary_row(&summary);
    say!(
        "{} ({}, plan {}): {} cells: {} materialized, {} stale, {} failed, {} missing",
        summary.name,
        summary.op,
        summary.plan,
        row[2],
        row[3],
        row[4],
        row[5],
        row[6]
    );
    if let Some(f) = &summary.freshness {
        say!("freshness ({}): {}", f.policy, row[7]);
    }
    let rows: Vec<[String; 5]> = cells
        .items
        .iter()
        .map(|c| {
            [
                cell_label(&summary.name, c.partition.as_deref(), c.point.as_ref()),
                c.status.as_str().to_owned(),
                c.freshness.map_or("-", FreshnessState::as_str).to_owned(),
                c.materialization.map_or_else(|| "-".to_owned(), |id| id.to_string()),
                match (&c.error, c.status) {
                    (Some(error), CellStatus::Failed) => error.lines().next().unwrap_or_default().to_owned(),
                    _ => c.updated_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                },
            ]
        })
        .collect();
    if !rows.is_empty() {
        table(&["CELL", "STATUS", "FRESHNESS", "MATERIALIZATION", "AT / ERROR"], &rows);
    }
    if cells.next_cursor.is_some() {
        say!(
            "(more cells: raise --limit, filter with --status or --partition, or page `GET /v1/assets/{asset}/partitions`)"
        );
    }
    Ok(())
}

fn freshness_state(word: &str) -> FreshnessState {
    match word {
        "stale" => FreshnessState::Stale,
        "warn" => FreshnessState::Warn,
        _ => FreshnessState::Fresh,
    }
}

/// `opflow assets list --freshness`: each partition of each asset with a policy, by its
/// stalest cell (a partition's sweep points are its cells), the stalest partitions first.
async fn freshness_by_partition(args: &ListArgs, assets: &[AssetSummary]) -> anyhow::Result<()> {
    let client = args.server.client()?;
    let mut rows: Vec<[String; 4]> = Vec::new();
    for asset in assets.iter().filter(|a| a.freshness.is_some()) {
        let mut partitions: Vec<(String, FreshnessState, String)> = Vec::new();
        for state in [FreshnessState::Stale, FreshnessState::Warn, FreshnessState::Fresh] {
            let query =
                CellsQuery { freshness: Some(state), limit: Some(args.limit), ..CellsQuery::default() };
            let path = format!("/v1/assets/{}/partitions", path_segment(&asset.name));
            let cells: Page<CellView> = client.get_with(&path, &query).await?;
            for cell in cells.items {
                let partition = cell.partition.unwrap_or_else(|| "-".into());
                if partitions.len() < args.limit as usize && !partitions.iter().any(|p| p.0 == partition) {
                    let at = cell.materialized_at.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string());
                    partitions.push((partition, state, at.unwrap_or_default()));
                }
            }
        }
        rows.extend(
            partitions
                .into_iter()
                .map(|(partition, state, at)| [asset.name.clone(), partition, state.as_str().to_owned(), at]),
        );
    }
    if !rows.is_empty() {
        say!("");
        table(&["ASSET", "PARTITION", "FRESHNESS", "MATERIALIZED"], &rows);
    }
    Ok(())
}

fn summary_row(a: &AssetSummary) -> [String; 9] {
    [
        a.name.clone(),
        a.op.clone(),
        a.cells.to_string(),
        a.materialized.to_string(),
        a.stale.to_string(),
        a.failed.to_string(),
        a.missing.to_string(),
        a.freshness.as_ref().map_or_else(
            || "-".to_owned(),
            |f| format!("{} fresh, {} warn, {} stale", f.fresh, f.warn, f.stale),
        ),
        a.latest_at.map_or_else(|| "-".to_owned(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string()),
    ]
}

/// `asset[partition]{point}`, as run labels write a step.
fn cell_label(asset: &str, partition: Option<&str>, point: Option<&serde_json::Value>) -> String {
    let mut label = asset.to_owned();
    if let Some(partition) = partition {
        label.push_str(&format!("[{partition}]"));
    }
    if let Some(point) = point {
        label.push_str(&point.to_string());
    }
    label
}
