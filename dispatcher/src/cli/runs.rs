//! `opflow runs`: the runs the dispatcher knows, newest first, filtered by status, plan and
//! owner, over the HTTP API (`GET /v1/runs`), following its pages up to `--limit`.

use std::process::ExitCode;

use chrono::Utc;
use clap::Args;
use opflow_api_model::{Page, RunListItem, RunsQuery};

use super::{
    client::ServerArgs,
    exit::InvalidInput,
    render::{count, seconds, table},
};

#[derive(Debug, Args)]
pub struct RunsArgs {
    /// Only runs in this state
    #[arg(long, value_parser = ["queued", "running", "succeeded", "failed", "canceled"])]
    status: Option<String>,
    /// Only runs of the plan of this name (its `name:`)
    #[arg(long, value_name = "NAME")]
    plan: Option<String>,
    /// Only this owner's runs
    #[arg(long)]
    owner: Option<String>,
    /// The most runs to print, newest first
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    limit: u32,
    /// Print JSON (the API's `GET /v1/runs` items), one run per line
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

/// The API's largest page.
const PAGE: u32 = 1000;

pub async fn runs(args: RunsArgs) -> anyhow::Result<ExitCode> {
    let client = args.server.client()?;
    let status = args
        .status
        .as_deref()
        .map(|s| serde_json::from_value(serde_json::Value::String(s.to_owned())))
        .transpose()
        .map_err(|e| InvalidInput(format!("--status: {e}")))?;
    let mut query = RunsQuery {
        status,
        plan: args.plan.clone(),
        owner: args.owner.clone(),
        limit: Some(args.limit.min(PAGE)),
        cursor: None,
    };
    let mut runs: Vec<RunListItem> = Vec::new();
    loop {
        let page: Page<RunListItem> = client.get_with("/v1/runs", &query).await?;
        runs.extend(page.items);
        match page.next_cursor {
            Some(cursor) if runs.len() < args.limit as usize => {
                query.limit = Some((args.limit - runs.len() as u32).min(PAGE));
                query.cursor = Some(cursor);
            }
            _ => break,
        }
    }
    runs.truncate(args.limit as usize);
    if args.json {
        for run in &runs {
            say!("{}", serde_json::to_string(run)?);
        }
    } else if runs.is_empty() {
        let filtered = args.status.is_some() || args.plan.is_some() || args.owner.is_some();
        if filtered {
            say!("no runs match; `opflow runs` without filters lists every run");
        } else {
            say!("no runs yet: submit one with `opflow run plan.yaml`");
        }
    } else {
        let rows: Vec<[String; 7]> = runs.iter().map(row).collect();
        table(&["RUN", "STATUS", "PLAN", "OWNER", "STEPS", "CREATED", "TOOK"], &rows);
    }
    Ok(ExitCode::SUCCESS)
}

/// One run as a table row: its steps as succeeded/total with failures named, its age, and
/// how long it ran (so far, while it runs).
fn row(run: &RunListItem) -> [String; 7] {
    let mut steps = format!("{}/{}", count(run.steps_succeeded.into()), count(run.steps_total.into()));
    if run.steps_failed > 0 {
        steps.push_str(&format!(" ({} failed)", count(run.steps_failed.into())));
    }
    let now = Utc::now();
    let age = seconds((now - run.created_at).num_milliseconds() as f64 / 1000.0);
    let took = match (run.started_at, run.finished_at) {
        (Some(start), Some(end)) => seconds((end - start).num_milliseconds() as f64 / 1000.0),
        (Some(start), None) => format!("{}…", seconds((now - start).num_milliseconds() as f64 / 1000.0)),
        _ => "-".to_owned(),
    };
    [
        run.run_id.to_string(),
        run.status.as_str().to_owned(),
        run.plan.clone(),
        run.owner.clone(),
        steps,
        format!("{age} ago"),
        took,
    ]
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use opflow_api_model::RunStatus;

    use super::*;

    #[test]
    fn a_row_says_what_ran_how_far_and_for_how_long() {
        let created = Utc::now() - Duration::seconds(90);
        let mut run = RunListItem {
            run_id: "0192f0c2-7a3b-7c01-8e5f-2b9d4a6c8e10".parse().unwrap(),
            key: None,
            plan: "defi-risk".into(),
            owner: "risk".into(),
            status: RunStatus::Failed,
            steps_total: 12_000,
            steps_succeeded: 11_990,
            steps_failed: 10,
            steps_skipped: 0,
            steps_canceled: 0,
            created_at: created,
            started_at: Some(created),
            finished_at: Some(created + Duration::milliseconds(4_500)),
        };
        let [id, status, plan, owner, steps, age, took] = row(&run);
        assert_eq!(id, "0192f0c2-7a3b-7c01-8e5f-2b9d4a6c8e10");
        assert_eq!((status.as_str(), plan.as_str(), owner.as_str()), ("failed", "defi-risk", "risk"));
        assert_eq!(steps, "11,990/12,000 (10 failed)");
        assert!(age.ends_with(" ago") && age.starts_with("1m3"), "{age}");
        assert_eq!(took, "4.50s");
        run.finished_at = None;
        assert!(row(&run)[6].ends_with('…'), "a running run's time so far");
    }
}
