//! `opflow schedules`: plans that run themselves on a cron, each tick once, or on a change
//! in the catalog (`--on stale`, `--on upstream-materialized`), over the HTTP
//! API: add, list, show (next ticks, and each decided tick's run or why none), pause,
//! resume, remove, backfill.

use std::{path::PathBuf, process::ExitCode};

use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Subcommand};
use opflow_api_model::{
    AddScheduleRequest, BackfillRequest, BackfillView, Page, ScheduleDetail, ScheduleView,
};

use super::{
    client::{ServerArgs, path_segment},
    render,
};

#[derive(Debug, Subcommand)]
pub enum SchedulesCommand {
    /// Run a plan on a cron (each tick submits one run, keyed by the schedule and the tick),
    /// or when its cells go stale or what it reads is materialized anew (--on)
    Add(AddArgs),
    /// List the schedules
    List(ListArgs),
    /// Show a schedule: its next ticks, and each recent tick's run or why it has none
    Show(NameArgs),
    /// Pause a schedule: no tick is decided until it is resumed
    Pause(NameArgs),
    /// Resume a schedule from its next tick (the ticks of the pause are not run)
    Resume(NameArgs),
    /// Remove a schedule and its ticks; its runs stay
    Remove(NameArgs),
    /// Run a schedule's ticks over a past range, a few at a time (each tick once: a tick
    /// that ran already is not run again)
    Backfill(BackfillArgs),
}

#[derive(Debug, Args)]
pub struct BackfillArgs {
    /// The schedule's name
    pub name: String,
    /// The range's first moment: RFC 3339 (2026-01-01T00:00:00Z) or a date (its midnight, UTC)
    #[arg(long)]
    pub from: String,
    /// The range's last moment, included (not after now)
    #[arg(long)]
    pub to: String,
    /// Its runs queued or running at once, at most
    #[arg(long, default_value_t = 4)]
    pub max_in_flight: u32,
    /// Print the JSON answer
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// The schedule's name: letters, digits, `-`, `_`, `.`
    pub name: String,
    /// The plan file (YAML)
    pub plan: PathBuf,
    /// When: a cron expression, 5 fields ("0 * * * *": hourly) or 6 with seconds first
    #[arg(long, required_unless_present = "on", conflicts_with = "on")]
    pub cron: Option<String>,
    /// Instead of a cron: run when a cell of the plan's assets goes stale by its freshness
    /// policy (`stale`), or when another run materializes an asset the plan reads
    /// (`upstream-materialized`); such runs take fresh cells from the catalog (--missing)
    #[arg(long, value_parser = ["stale", "upstream-materialized"])]
    pub on: Option<String>,
    /// With --on: at most one run per this long, and (upstream-materialized) this long
    /// after the first new materialization, so that a burst makes one run [default: 30s]
    #[arg(long, requires = "on")]
    pub debounce: Option<String>,
    /// Each tick's run takes from the catalog every cell it holds fresh (as `opflow run
    /// --missing`): only what is missing, failed, changed or stale by its freshness policy runs
    #[arg(long)]
    pub missing: bool,
    /// The cron's time zone, an IANA name ("Europe/Paris") [default: UTC]
    #[arg(long)]
    pub tz: Option<String>,
    /// What a tick does while the schedule's last run still runs
    #[arg(long, value_parser = ["skip", "buffer_one", "buffer_all", "cancel_other", "allow_all"], default_value = "skip")]
    pub overlap: String,
    /// How late a missed tick may still run (a dispatcher down, say); older ones are skipped
    #[arg(long, default_value = "1h")]
    pub catch_up: String,
    /// Run only the tick's own daily partition (its date in the schedule's time zone)
    #[arg(long)]
    pub partition_of_tick: bool,
    /// The runs' priority among their owner's, 1 to 10 [default: the plan's]
    #[arg(long)]
    pub priority: Option<u8>,
    /// Print the JSON answer
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct NameArgs {
    /// The schedule's name
    pub name: String,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

fn time(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(|| "-".to_owned(), |at| at.to_rfc3339_opts(SecondsFormat::Secs, true))
}

fn backfill_line(b: &BackfillView) -> String {
    let state = match (b.done_at, b.next_at) {
        (Some(done), _) => format!("done at {}", time(Some(done))),
        (None, Some(next)) => format!("next tick {}", time(Some(next))),
        (None, None) => "done".to_owned(),
    };
    format!(
        "backfill {} of {} from {} to {}: {} ticks submitted, {} runs at once at most; {state}",
        b.id,
        b.schedule,
        time(Some(b.from)),
        time(Some(b.to)),
        b.submitted,
        b.max_in_flight
    )
}

/// When a schedule runs: its cron in its zone, or its trigger and debounce.
fn when(s: &ScheduleView) -> String {
    match (&s.cron, &s.on) {
        (Some(cron), _) => format!("{cron} {}", s.tz),
        (None, Some(on)) => format!(
            "on {on} (debounce {})",
            humantime::format_duration(std::time::Duration::from_secs(s.debounce_secs.max(0) as u64))
        ),
        (None, None) => "-".into(),
    }
}

fn summary(s: &ScheduleView) -> String {
    let state = if s.paused { "paused" } else { "active" };
    format!(
        "schedule {} ({state}): plan {} ({}), {}, overlap {}, catch-up {}, owner {}{}{}",
        s.name,
        s.plan,
        s.plan_file,
        match &s.cron {
            Some(cron) => format!("cron \"{cron}\" {}", s.tz),
            None => when(s),
        },
        s.overlap,
        humantime::format_duration(std::time::Duration::from_secs(s.catch_up_secs.max(0) as u64)),
        s.owner,
        if s.partition_of_tick { ", the tick's own partition" } else { "" },
        if s.missing { ", only what is missing or stale (--missing)" } else { "" }
    )
}

pub async fn run(command: SchedulesCommand) -> anyhow::Result<ExitCode> {
    match command {
        SchedulesCommand::Add(args) => {
            let plan = render::read_plan(&args.plan)?;
            let body = AddScheduleRequest {
                name: args.name,
                plan,
                file: Some(args.plan.display().to_string()),
                cron: args.cron,
                on: args.on.map(|on| on.replace('-', "_")),
                debounce: args.debounce,
                missing: args.missing,
                tz: args.tz,
                overlap: Some(args.overlap),
                catch_up: Some(args.catch_up),
                partition_of_tick: args.partition_of_tick,
                priority: args.priority,
            };
            let added: ScheduleView = args.server.client()?.post("/v1/schedules", &body, &[]).await?;
            if args.json {
                say!("{}", serde_json::to_string(&added)?);
            } else {
                say!("{}", summary(&added));
                if added.cron.is_some() {
                    say!("first tick: {}", time(added.next_tick_at));
                }
            }
        }
        SchedulesCommand::List(args) => {
            let page: Page<ScheduleView> = args.server.client()?.get("/v1/schedules").await?;
            if args.json {
                say!("{}", serde_json::to_string_pretty(&page.items)?);
            } else {
                let rows: Vec<[String; 7]> = page
                    .items
                    .iter()
                    .map(|s| {
                        [
                            s.name.clone(),
                            s.plan.clone(),
                            when(s),
                            s.overlap.clone(),
                            if s.paused { "paused".into() } else { "active".into() },
                            time(s.next_tick_at),
                            s.owner.clone(),
                        ]
                    })
                    .collect();
                render::table(&["NAME", "PLAN", "WHEN", "OVERLAP", "STATE", "NEXT TICK", "OWNER"], &rows);
            }
        }
        SchedulesCommand::Show(args) => {
            let path = format!("/v1/schedules/{}", path_segment(&args.name));
            let detail: ScheduleDetail = args.server.client()?.get(&path).await?;
            if args.json {
                say!("{}", serde_json::to_string_pretty(&detail)?);
            } else {
                say!("{}", summary(&detail.schedule));
                let upcoming: Vec<String> = detail.upcoming.iter().map(|t| time(Some(*t))).collect();
                say!(
                    "next ticks: {}",
                    if upcoming.is_empty() { "none".to_owned() } else { upcoming.join(", ") }
                );
                let rows: Vec<[String; 4]> = detail
                    .ticks
                    .iter()
                    .map(|t| {
                        let tick = match t.until {
                            Some(until) => format!("{} .. {}", time(Some(t.at)), time(Some(until))),
                            None => time(Some(t.at)),
                        };
                        let run = t.run_id.map_or_else(|| "-".to_owned(), |r| r.to_string());
                        [tick, t.outcome.clone(), run, t.reason.clone().unwrap_or_default()]
                    })
                    .collect();
                render::table(&["TICK", "OUTCOME", "RUN", "WHY"], &rows);
                for b in &detail.backfills {
                    say!("{}", backfill_line(b));
                }
            }
        }
        SchedulesCommand::Pause(args) => {
            let path = format!("/v1/schedules/{}/pause", path_segment(&args.name));
            let schedule: ScheduleView = args.server.client()?.post_empty(&path).await?;
            say!("{}", if args.json { serde_json::to_string(&schedule)? } else { summary(&schedule) });
        }
        SchedulesCommand::Resume(args) => {
            let path = format!("/v1/schedules/{}/resume", path_segment(&args.name));
            let schedule: ScheduleView = args.server.client()?.post_empty(&path).await?;
            if args.json {
                say!("{}", serde_json::to_string(&schedule)?);
            } else {
                say!("{}", summary(&schedule));
                say!("next tick: {}", time(schedule.next_tick_at));
            }
        }
        SchedulesCommand::Backfill(args) => {
            let path = format!("/v1/schedules/{}/backfill", path_segment(&args.name));
            let body =
                BackfillRequest { from: args.from, to: args.to, max_in_flight: Some(args.max_in_flight) };
            let started: BackfillView = args.server.client()?.post(&path, &body, &[]).await?;
            if args.json {
                say!("{}", serde_json::to_string(&started)?);
            } else {
                say!("{}", backfill_line(&started));
                eprintln!("`opflow schedules show {}` follows it", args.name);
            }
        }
        SchedulesCommand::Remove(args) => {
            let client = args.server.client()?;
            client.delete_empty(&format!("/v1/schedules/{}", path_segment(&args.name))).await?;
            say!("removed schedule {}; its runs stay", args.name);
        }
    }
    Ok(ExitCode::SUCCESS)
}
