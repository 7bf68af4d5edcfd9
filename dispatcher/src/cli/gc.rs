//! `opflow gc`: deletes finished runs past their retention now, rather than waiting for the
//! dispatcher's background pass (`service::retention`). An administrator's command:
//! it uses the database directly.

use std::{process::ExitCode, time::Duration};

use clap::Args;
use tokio_util::sync::CancellationToken;

use super::exit::InvalidInput;
use chrono::{DateTime, Utc};
use opflow_protocol::RunId;
use serde::Serialize;

use crate::{settings::Settings, store::retention::Deleted};

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Delete runs that finished longer ago than this (e.g. 7d, 12h, 0s) [default: the
    /// `retention` setting, 30d]
    #[arg(long, value_name = "DURATION")]
    pub older_than: Option<String>,
    /// List what would be deleted, and delete nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Print one JSON object (runs, steps, events; or the runs a dry run found)
    #[arg(long)]
    pub json: bool,
}

/// Runs looked at per round.
const BATCH: u32 = 100;
/// The most runs a dry run lists.
const DRY_RUN_LIST: u32 = 10_000;

pub async fn gc(args: GcArgs, settings: &Settings, cancel: &CancellationToken) -> anyhow::Result<ExitCode> {
    let older_than = match &args.older_than {
        Some(text) => humantime::parse_duration(text).map_err(|e| {
            InvalidInput(format!("--older-than `{text}` is not a duration like 7d or 12h: {e}"))
        })?,
        None => settings.retention,
    };
    let store = super::admin::store(settings, cancel).await?;
    let age = humantime::format_duration(Duration::from_secs(older_than.as_secs()));
    if args.dry_run {
        let expired = store.retention().expired(older_than, DRY_RUN_LIST).await?;
        if args.json {
            let expired: Vec<ExpiredRunJson> = expired.iter().cloned().map(ExpiredRunJson::from).collect();
            say!("{}", serde_json::to_string(&serde_json::json!({ "would_delete": expired }))?);
        } else if expired.is_empty() {
            say!("no finished run is older than {age}; nothing would be deleted");
        } else {
            for run in &expired {
                say!(
                    "{}  {}  {}  {} steps  finished {}",
                    run.run_id,
                    run.plan,
                    run.status,
                    run.steps,
                    run.finished_at.format("%Y-%m-%d %H:%M")
                );
            }
            say!("would delete {} run(s) that finished more than {age} ago", expired.len());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut total = Deleted::default();
    loop {
        let expired = store.retention().expired(older_than, BATCH).await?;
        if expired.is_empty() {
            break;
        }
        for run in expired {
            if cancel.is_cancelled() {
                return Err(anyhow::anyhow!("stopped; {} run(s) deleted so far", total.runs));
            }
            let deleted = store.retention().delete(run.run_id).await?;
            if !args.json {
                eprintln!(
                    "deleted run {} ({}, {} steps, {} events)",
                    run.run_id, run.plan, deleted.steps, deleted.events
                );
            }
            total += deleted;
        }
    }
    if args.json {
        say!("{}", serde_json::to_string(&DeletedJson::from(total))?);
    } else {
        say!(
            "deleted {} run(s) that finished more than {age} ago: {} steps, {} events",
            total.runs,
            total.steps,
            total.events
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A finished run retention would delete: `opflow gc --dry-run --json`.
#[derive(Debug, Clone, Serialize)]
struct ExpiredRunJson {
    pub run_id: RunId,
    pub plan: String,
    pub status: String,
    pub finished_at: DateTime<Utc>,
    pub steps: i64,
}

impl From<crate::store::retention::ExpiredRunRow> for ExpiredRunJson {
    fn from(e: crate::store::retention::ExpiredRunRow) -> Self {
        Self { run_id: e.run_id, plan: e.plan, status: e.status, finished_at: e.finished_at, steps: e.steps }
    }
}

/// What `opflow gc --json` deleted.
#[derive(Debug, Clone, Copy, Serialize)]
struct DeletedJson {
    pub runs: u64,
    pub steps: u64,
    pub events: u64,
}

impl From<Deleted> for DeletedJson {
    fn from(d: Deleted) -> Self {
        Self { runs: d.runs, steps: d.steps, events: d.events }
    }
}
