//! Following a run from its events stream: `opflow watch`, `opflow run --wait`, `opflow
//! events` and `opflow logs`. The live view is a bar per asset (done / total, rate, ETA),
//! the latest progress message, failures as they happen and the elapsed time; plain lines
//! when stdout is not a terminal; with `--json`, one event per line.
//!
//! Everything here reads the stream (`GET /v1/runs/{id}/events`) through
//! [`ApiClient::events`], which resumes a dropped connection where it left off, so a long
//! run can be watched across network blips, and watched again later from the start.

use std::{
    collections::{HashMap, HashSet},
    io::IsTerminal,
    process::ExitCode,
    time::{Duration, Instant},
};

use clap::Args;
use futures_util::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use opflow_api_model::{AssetInfo, EventsQuery, RunEvent, RunSummary};

use super::{
    client::{ApiClient, ServerArgs, StreamItem, path_segment},
    exit::exit_code,
    render,
};

/// How often plain (non-terminal) output prints a progress line.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The run id
    pub run: String,
    /// Print one JSON event per line (then the run's final state) instead of the live view
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// The run id
    pub run: String,
    /// Keep following until the run ends (otherwise print what is recorded now)
    #[arg(long, short)]
    pub follow: bool,
    /// Only these kinds, comma-separated: started, progress, log, materialized,
    /// check_result, succeeded, failed, abandoned
    #[arg(long)]
    pub kinds: Option<String>,
    /// Start after this event number (the `seq` of the last event seen)
    #[arg(long, default_value_t = 0)]
    pub after: i64,
    /// Print one JSON object per event
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The run id
    pub run: String,
    /// Only this step's log lines
    #[arg(long)]
    pub step: Option<u32>,
    /// Keep following until the run ends
    #[arg(long, short)]
    pub follow: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// How [`follow`] shows what happens.
#[derive(Debug, Clone, Copy)]
pub struct WatchOptions {
    /// One JSON event per line on stdout.
    pub json_events: bool,
    /// Nothing at all (the caller prints the result).
    pub quiet: bool,
}

/// `opflow watch <run>`: exits as `run --wait` does (0 succeeded, 1 otherwise).
pub async fn watch(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let client = args.server.client()?;
    let run = path_segment(&args.run);
    let summary = follow(&client, &run, WatchOptions { json_events: args.json, quiet: false }).await?;
    if args.json {
        say!("{}", serde_json::to_string(&summary)?);
    } else {
        render::summary(&summary);
    }
    Ok(exit_code(summary.status))
}

/// Follows the run's events until it ends, showing them as `options` says; its final state.
pub async fn follow(client: &ApiClient, run: &str, options: WatchOptions) -> anyhow::Result<RunSummary> {
    let start: RunSummary = client.get(&format!("/v1/runs/{run}")).await?;
    let assets: Vec<AssetInfo> = client.get(&format!("/v1/runs/{run}/assets")).await?;
    let mut view = if options.quiet || options.json_events {
        None
    } else if std::io::stdout().is_terminal() {
        Some(View::Live(LiveView::new(&start, &assets)))
    } else {
        Some(View::Plain(PlainView::new(&start, &assets)))
    };
    let mut events = Box::pin(client.events(run, EventsQuery::default()));
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        let item = tokio::select! {
            item = events.next() => item,
            _ = tick.tick() => {
                if let Some(view) = view.as_mut() {
                    view.tick();
                }
                continue;
            }
        };
        match item {
            Some(Ok(StreamItem::Event(event))) => {
                if options.json_events {
                    say!("{}", serde_json::to_string(&event)?);
                }
                if let Some(view) = view.as_mut() {
                    view.event(&event);
                }
            }
            Some(Ok(StreamItem::End(summary))) => {
                if let Some(view) = view.take() {
                    view.finish(&summary);
                }
                return Ok(*summary);
            }
            Some(Err(error)) => {
                if let Some(view) = view.take() {
                    view.abandon();
                }
                return Err(error.context(format!("following run {run}")));
            }
            None => {
                // The stream ended without its end (it never does on its own): ask.
                if let Some(view) = view.take() {
                    view.abandon();
                }
                return client.get(&format!("/v1/runs/{run}")).await;
            }
        }
    }
}

/// `opflow events <run>`.
pub async fn events(args: EventsArgs) -> anyhow::Result<ExitCode> {
    let client = args.server.client()?;
    let run = path_segment(&args.run);
    let query = EventsQuery {
        kinds: args.kinds.clone(),
        after: Some(args.after),
        follow: Some(args.follow),
        ..EventsQuery::default()
    };
    let mut events = Box::pin(client.events(&run, query));
    while let Some(item) = events.next().await {
        match item? {
            StreamItem::Event(event) if args.json => say!("{}", serde_json::to_string(&event)?),
            StreamItem::Event(event) => say!(
                "{:>6}  {}  {:<12} {} step {} attempt {}  {}",
                event.seq,
                event.at.format("%H:%M:%S%.3f"),
                event.kind,
                event.asset,
                event.step_id,
                event.attempt,
                compact(&event.data)
            ),
            StreamItem::End(_) => break,
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `opflow logs <run>`: the log lines ops wrote, oldest first.
pub async fn logs(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let client = args.server.client()?;
    let run = path_segment(&args.run);
    let query = EventsQuery {
        kinds: Some("log".to_owned()),
        step: args.step,
        follow: Some(args.follow),
        ..EventsQuery::default()
    };
    let mut events = Box::pin(client.events(&run, query));
    while let Some(item) = events.next().await {
        match item? {
            StreamItem::Event(event) => say!(
                "{} {:<5} {} step {}: {}",
                event.at.format("%H:%M:%S%.3f"),
                event.data["level"].as_str().unwrap_or("info"),
                event.asset,
                event.step_id,
                event.data["message"].as_str().unwrap_or_default()
            ),
            StreamItem::End(_) => break,
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// An event's fields on one line.
fn compact(data: &Value) -> String {
    match data {
        Value::Object(map) if map.is_empty() => String::new(),
        Value::Null => String::new(),
        other => {
            let text = other.to_string();
            if text.chars().count() > 200 {
                format!("{}…", text.chars().take(200).collect::<String>())
            } else {
                text
            }
        }
    }
}

/// Counts done steps per asset from the events: a step is done once its success (or final
/// failure) was applied; a step counts once however many times the stream shows it.
struct Tally {
    /// Asset name → its index in the view.
    index: HashMap<String, usize>,
    totals: Vec<u64>,
    done: Vec<HashSet<u32>>,
}

/// What one event changed.
enum Change {
    None,
    Done { asset: usize },
    Failed { final_failure: bool },
    Progress,
}

impl Tally {
    fn new(assets: &[AssetInfo]) -> Self {
        Self {
            index: assets.iter().enumerate().map(|(i, a)| (a.name.clone(), i)).collect(),
            totals: assets.iter().map(|a| a.steps.max(0) as u64).collect(),
            done: vec![HashSet::new(); assets.len()],
        }
    }

    fn apply(&mut self, event: &RunEvent) -> Change {
        let Some(&asset) = self.index.get(&event.asset) else { return Change::None };
        match event.kind.as_str() {
            "succeeded" if event.applied => {
                self.done[asset].insert(event.step_id.0);
                Change::Done { asset }
            }
            "failed" if event.applied => {
                let final_failure = event.data["retryable"] == Value::Bool(false);
                if final_failure {
                    self.done[asset].insert(event.step_id.0);
                }
                Change::Failed { final_failure }
            }
            "progress" => Change::Progress,
            _ => Change::None,
        }
    }

    fn done(&self, asset: usize) -> u64 {
        self.done[asset].len() as u64
    }
}

/// The two ways of showing a run to a person.
enum View {
    Live(LiveView),
    Plain(PlainView),
}

impl View {
    fn event(&mut self, event: &RunEvent) {
        match self {
            View::Live(v) => v.event(event),
            View::Plain(v) => v.event(event),
        }
    }

    fn tick(&mut self) {
        match self {
            View::Live(v) => v.tick(),
            View::Plain(v) => v.tick(),
        }
    }

    fn finish(self, summary: &RunSummary) {
        match self {
            View::Live(v) => v.finish(summary),
            View::Plain(v) => v.finish(summary),
        }
    }

    fn abandon(self) {
        if let View::Live(v) = self {
            v.multi.clear().ok();
        }
    }
}

/// A failure as one line.
fn failure_line(event: &RunEvent, final_failure: bool) -> String {
    let error = event.data["error"].as_str().unwrap_or("failed");
    let what = if final_failure { "failed" } else { "failed (will retry)" };
    format!("✗ {} step {} attempt {} {what}: {error}", event.asset, event.step_id, event.attempt)
}

/// The latest progress as one line.
fn progress_line(event: &RunEvent) -> String {
    let fraction = event.data["fraction"].as_f64().unwrap_or(0.0);
    let message = event.data["message"].as_str().unwrap_or_default();
    format!("{} step {}: {:.0}% {message}", event.asset, event.step_id, fraction * 100.0)
}

/// Bars on a terminal (indicatif).
struct LiveView {
    multi: MultiProgress,
    header: ProgressBar,
    bars: Vec<ProgressBar>,
    latest: ProgressBar,
    tally: Tally,
    run: String,
    created_at: chrono::DateTime<chrono::Utc>,
}

impl LiveView {
    fn new(start: &RunSummary, assets: &[AssetInfo]) -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let header = multi.add(ProgressBar::new_spinner());
        header.set_style(
            ProgressStyle::with_template("{spinner} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        let width = assets.iter().map(|a| a.name.chars().count()).max().unwrap_or(5).min(32);
        let style = ProgressStyle::with_template(&format!(
            "  {{prefix:<{width}}} {{bar:30.cyan/blue}} {{pos:>7}}/{{len:<7}} {{rate:>9}}  ETA {{eta:>3}} {{msg}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key("rate", |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.1}/s", state.per_sec());
        })
        .progress_chars("█▉▊▋▌▍▎▏ ");
        let bars = assets
            .iter()
            .map(|asset| {
                let bar = multi.add(ProgressBar::new(asset.steps.max(0) as u64));
                bar.set_style(style.clone());
                bar.set_prefix(asset.name.clone());
                bar
            })
            .collect();
        let latest = multi.add(ProgressBar::new_spinner());
        latest.set_style(
            ProgressStyle::with_template("  {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        let view = Self {
            multi,
            header,
            bars,
            latest,
            tally: Tally::new(assets),
            run: start.run_id.to_string(),
            created_at: start.created_at,
        };
        view.tick();
        view
    }

    fn event(&mut self, event: &RunEvent) {
        match self.tally.apply(event) {
            Change::Done { asset } => self.bars[asset].set_position(self.tally.done(asset)),
            Change::Failed { final_failure } => {
                if let Some(&asset) = self.tally.index.get(&event.asset) {
                    self.bars[asset].set_position(self.tally.done(asset));
                }
                let _ = self.multi.println(failure_line(event, final_failure));
            }
            Change::Progress => self.latest.set_message(progress_line(event)),
            Change::None => {}
        }
    }

    fn tick(&self) {
        let elapsed = (chrono::Utc::now() - self.created_at).num_milliseconds().max(0) as f64 / 1000.0;
        self.header.set_message(format!("run {}  {}", self.run, render::seconds(elapsed)));
        self.header.tick();
    }

    fn finish(self, _summary: &RunSummary) {
        for bar in &self.bars {
            bar.abandon();
        }
        self.latest.finish_and_clear();
        // The summary printed next says how the run ended.
        self.header.finish_and_clear();
    }
}

/// Lines for logs and pipes: failures as they happen, an asset when it completes, and a
/// progress line every few seconds.
struct PlainView {
    tally: Tally,
    names: Vec<String>,
    started: Instant,
    last_line: Instant,
    changed: bool,
}

impl PlainView {
    fn new(start: &RunSummary, assets: &[AssetInfo]) -> Self {
        say!("following run {} ({}): {} steps", start.run_id, start.plan, start.steps.total);
        Self {
            tally: Tally::new(assets),
            names: assets.iter().map(|a| a.name.clone()).collect(),
            started: Instant::now(),
            last_line: Instant::now(),
            changed: false,
        }
    }

    fn event(&mut self, event: &RunEvent) {
        match self.tally.apply(event) {
            Change::Done { asset } => {
                self.changed = true;
                let done = self.tally.done(asset);
                if done == self.tally.totals[asset] {
                    say!(
                        "{:>8}  done {} {done}/{done}",
                        render::seconds(self.started.elapsed().as_secs_f64()),
                        self.names[asset]
                    );
                }
            }
            Change::Failed { final_failure } => {
                self.changed = true;
                say!(
                    "{:>8}  {}",
                    render::seconds(self.started.elapsed().as_secs_f64()),
                    failure_line(event, final_failure)
                );
            }
            Change::Progress | Change::None => {}
        }
    }

    fn tick(&mut self) {
        if self.changed && self.last_line.elapsed() >= PLAIN_EVERY {
            self.progress_line();
        }
    }

    fn progress_line(&mut self) {
        let parts: Vec<String> = (0..self.names.len())
            .map(|i| format!("{} {}/{}", self.names[i], self.tally.done(i), self.tally.totals[i]))
            .collect();
        say!("{:>8}  {}", render::seconds(self.started.elapsed().as_secs_f64()), parts.join("  "));
        self.last_line = Instant::now();
        self.changed = false;
    }

    fn finish(mut self, _summary: &RunSummary) {
        self.progress_line();
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use opflow_protocol::{RunId, StepId};
    use serde_json::json;

    use super::*;

    fn event(kind: &str, step: u32, applied: bool, data: Value) -> RunEvent {
        RunEvent {
            seq: 1,
            run_id: RunId::new(),
            step_id: StepId(step),
            asset: "prices".into(),
            attempt: 1,
            kind: kind.into(),
            at: Utc::now(),
            worker: "w".into(),
            applied,
            data,
        }
    }

    #[test]
    fn a_step_is_counted_done_once_and_only_when_its_result_was_applied() {
        let mut tally = Tally::new(&[AssetInfo { name: "prices".into(), steps: 3, leaf: true }]);
        tally.apply(&event("succeeded", 0, true, json!({"output": 1})));
        tally.apply(&event("succeeded", 0, true, json!({"output": 1})));
        tally.apply(&event("succeeded", 1, false, json!({"output": 1})));
        tally.apply(&event("failed", 2, true, json!({"error": "x", "retryable": true})));
        assert_eq!(tally.done(0), 1);
        tally.apply(&event("failed", 2, true, json!({"error": "x", "retryable": false})));
        assert_eq!(tally.done(0), 2);
    }

    #[test]
    fn lines_name_the_step_and_what_happened() {
        let failed = event("failed", 7, true, json!({"error": "boom", "retryable": true}));
        assert_eq!(failure_line(&failed, false), "✗ prices step 7 attempt 1 failed (will retry): boom");
        let progress = event("progress", 7, false, json!({"fraction": 0.42, "message": "paths"}));
        assert_eq!(progress_line(&progress), "prices step 7: 42% paths");
    }
}
