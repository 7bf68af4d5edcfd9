//! Following a run: `opflow watch`, `opflow run --wait`, `opflow events` and `opflow logs`.
//! The live view is a header (elapsed time, steps done), a bar per asset (done / total,
//! rate, ETA) for runs of a few assets, or for the busiest assets of a large run with the
//! rest summed up on one line (`… and 9,990 more assets: 9,120 done, 870 waiting`), the
//! latest progress message, and failures as they happen; plain lines when stdout is not a
//! terminal; with `--json`, one event per line.
//!
//! The counts come from the API's per-asset counts, polled a page at a time, so a view of a
//! 100,000-step run costs what one of a 10-step run does. Failures and progress messages
//! come from the events stream (`GET /v1/runs/{id}/events`) from the moment the watch
//! starts, through [`ApiClient::events`], which resumes a dropped connection where it left
//! off. A slow or failed read is asked again ([`ApiClient::get_patiently`]): the watch ends
//! when the run does, and exits as the run ended.

use std::{
    collections::HashSet,
    io::IsTerminal,
    process::ExitCode,
    time::{Duration, Instant},
};

use clap::Args;
use futures_util::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use opflow_api_model::{
    AssetInfo, AssetOrder, AssetState, AssetsQuery, EventsQuery, Page, RunEvent, RunSummary, StepCounts,
};
use tokio::sync::watch as latest;

use super::{
    client::{ApiClient, ServerArgs, StreamItem, path_segment},
    exit::exit_code,
    out::clean,
    render,
};

/// How often plain (non-terminal) output prints a progress line.
const PLAIN_EVERY: Duration = Duration::from_secs(5);
/// Bars drawn at most: a run with more assets shows its busiest and sums up the rest.
const MAX_BARS: u32 = 10;
/// How often a view asks the API for the run's counts.
const POLL: Duration = Duration::from_millis(500);

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

/// Follows the run until it ends, showing it as `options` says; its final state.
pub async fn follow(client: &ApiClient, run: &str, options: WatchOptions) -> anyhow::Result<RunSummary> {
    let start: RunSummary = client.get_patiently(&format!("/v1/runs/{run}"), &()).await?;
    let mut view = if options.quiet || options.json_events {
        None
    } else if std::io::stdout().is_terminal() {
        Some(View::Live(LiveView::new(&start)))
    } else {
        Some(View::Plain(PlainView::new(&start)))
    };
    // With --json every event from the first; otherwise what happens from now on that the
    // counts do not show: failures and progress messages.
    let query = if options.json_events {
        EventsQuery::default()
    } else {
        EventsQuery {
            kinds: Some("failed,progress".to_owned()),
            after: Some(start.last_event),
            ..EventsQuery::default()
        }
    };
    let mut events = Box::pin(client.events(run, query));
    // The counts are polled in a task of their own: a slow answer holds up neither the
    // stream nor the spinner.
    let (snapshots_tx, mut snapshots) = latest::channel(None);
    let poller = view.is_some().then(|| tokio::spawn(poll(client.clone(), run.to_owned(), snapshots_tx)));
    let _poller = poller.map(AbortOnDrop);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        let item = tokio::select! {
            item = events.next() => item,
            changed = snapshots.changed(), if view.is_some() => {
                let snapshot = snapshots.borrow_and_update().clone();
                if let (Ok(()), Some(snapshot), Some(view)) = (changed, snapshot, view.as_mut()) {
                    view.snapshot(&snapshot);
                }
                continue;
            }
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
                if let Some(mut view) = view.take() {
                    // The counts as the run ended, not as last polled.
                    if let Ok(last) = snapshot(client, run).await {
                        view.snapshot(&last);
                    }
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
                return client.get_patiently(&format!("/v1/runs/{run}"), &()).await;
            }
        }
    }
}

/// What a view draws, as last read: the run's counts, and the assets to draw bars for
/// (all of them, or the busiest), in plan order.
#[derive(Debug, Clone)]
struct Snapshot {
    summary: RunSummary,
    assets: Vec<AssetInfo>,
}

/// Reads a [`Snapshot`]: two requests of one page each, whatever the run's size.
async fn snapshot(client: &ApiClient, run: &str) -> anyhow::Result<Snapshot> {
    let summary: RunSummary = client.get_patiently(&format!("/v1/runs/{run}"), &()).await?;
    let query = bars_query(summary.assets.total);
    let page: Page<AssetInfo> = client.get_patiently(&format!("/v1/runs/{run}/assets"), &query).await?;
    let mut assets = page.items;
    assets.sort_by_key(|a| a.index);
    Ok(Snapshot { summary, assets })
}

/// Which assets get bars: all of a run of at most [`MAX_BARS`] assets, in plan order;
/// otherwise the busiest of those running.
fn bars_query(assets: i64) -> AssetsQuery {
    if assets <= i64::from(MAX_BARS) {
        AssetsQuery { limit: Some(MAX_BARS), ..AssetsQuery::default() }
    } else {
        AssetsQuery {
            state: Some(AssetState::Running),
            order: Some(AssetOrder::Busiest),
            limit: Some(MAX_BARS),
            ..AssetsQuery::default()
        }
    }
}

/// Reads a snapshot every [`POLL`] until the view goes away. A read that failed after its
/// retries is tried again at the next poll: the events stream decides when to give up.
async fn poll(client: ApiClient, run: String, snapshots: latest::Sender<Option<Snapshot>>) {
    loop {
        match snapshot(&client, &run).await {
            Ok(read) => {
                if snapshots.send(Some(read)).is_err() {
                    return;
                }
            }
            Err(error) => tracing::debug!(%error, %run, "reading the run's counts failed; asking again"),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Aborts a task when dropped: the poller ends with the watch, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
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

/// Steps finished, whichever way.
fn done(counts: &StepCounts) -> i64 {
    counts.succeeded + counts.failed + counts.skipped + counts.canceled
}

/// The header's line: elapsed time and steps done.
fn header_line(run: &str, elapsed: f64, summary: Option<&RunSummary>) -> String {
    let mut line = format!("run {run}  {}", render::seconds(elapsed));
    if let Some(s) = summary {
        line.push_str(&format!("  {}/{} steps", render::count(done(&s.steps)), render::count(s.steps.total)));
        if s.steps.failed > 0 {
            line.push_str(&format!(", {} failed", render::count(s.steps.failed)));
        }
        // Waiting in the run store (docs/fair-sharing.md): for a full concurrency key, or
        // for their turn in their op's publish window.
        let for_keys: i64 = s.waiting_for_keys.iter().map(|w| w.waiting).sum();
        if s.behind_window > for_keys {
            line.push_str(&format!(", {} behind the window", render::count(s.behind_window - for_keys)));
        }
        if for_keys > 0 {
            line.push_str(&format!(", {} waiting for keys", render::count(for_keys)));
        }
    }
    line
}

/// The assets without a bar, summed up: `… and 9,990 more assets: 9,120 done, 870
/// waiting`; `None` when every asset has a bar.
fn rest_line(snapshot: &Snapshot) -> Option<String> {
    let all = snapshot.summary.assets;
    let shown = snapshot.assets.len() as i64;
    if all.total <= shown {
        return None;
    }
    let shown_in = |state: AssetState| snapshot.assets.iter().filter(|a| a.state == state).count() as i64;
    let parts: Vec<String> = [
        (all.done - shown_in(AssetState::Done), "done"),
        (all.running - shown_in(AssetState::Running), "running"),
        (all.waiting - shown_in(AssetState::Waiting), "waiting"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{} {what}", render::count(n)))
    .collect();
    let more = if shown == 0 { "" } else { " more" };
    Some(format!("… and {}{more} assets: {}", render::count(all.total - shown), parts.join(", ")))
}

/// What a bar says beside its counts: running and failed steps.
fn bar_message(asset: &AssetInfo) -> String {
    let c = &asset.counts;
    let mut parts = Vec::new();
    if c.running > 0 {
        parts.push(format!("{} running", render::count(c.running)));
    }
    if c.failed > 0 {
        parts.push(format!("✗ {} failed", render::count(c.failed)));
    }
    parts.join(", ")
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

    fn snapshot(&mut self, snapshot: &Snapshot) {
        match self {
            View::Live(v) => v.snapshot(snapshot),
            View::Plain(v) => v.snapshot(snapshot),
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
    failure_text(&event.asset, event.step_id, event.attempt, what, error)
}

/// A failure from before the watch started, as the run's summary lists it.
fn earlier_failure_line(failure: &opflow_api_model::StepFailure) -> String {
    failure_text(&failure.asset, failure.step_id, failure.attempt, "failed", &failure.error)
}

fn failure_text(asset: &str, step: impl std::fmt::Display, attempt: i32, what: &str, error: &str) -> String {
    format!("✗ {asset} step {step} attempt {attempt} {what}: {}", clean(error))
}

/// Whether a `failed` event ended its step (it will not be retried).
fn is_final_failure(event: &RunEvent) -> bool {
    event.data["retryable"] == Value::Bool(false)
}

/// The latest progress as one line.
fn progress_line(event: &RunEvent) -> String {
    let fraction = event.data["fraction"].as_f64().unwrap_or(0.0);
    let message = event.data["message"].as_str().unwrap_or_default();
    format!("{} step {}: {:.0}% {}", event.asset, event.step_id, fraction * 100.0, clean(message))
}

/// Bars on a terminal (indicatif).
struct LiveView {
    multi: MultiProgress,
    header: ProgressBar,
    /// The assets drawn as bars, in plan order, by their index.
    bars: Vec<(u32, ProgressBar)>,
    style: ProgressStyle,
    rest: ProgressBar,
    latest: ProgressBar,
    run: String,
    created_at: chrono::DateTime<chrono::Utc>,
    summary: Option<RunSummary>,
}

impl LiveView {
    fn new(start: &RunSummary) -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let line =
            || ProgressStyle::with_template("  {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner());
        let header = multi.add(ProgressBar::new_spinner());
        header.set_style(
            ProgressStyle::with_template("{spinner} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        let style = ProgressStyle::with_template(
            "  {prefix:<24} {bar:30.cyan/blue} {pos:>7}/{len:<7} {rate:>9}  ETA {eta:>3} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key("rate", |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.1}/s", state.per_sec());
        })
        .progress_chars("█▉▊▋▌▍▎▏ ");
        let rest = multi.add(ProgressBar::new_spinner());
        rest.set_style(line());
        let latest = multi.add(ProgressBar::new_spinner());
        latest.set_style(line());
        let view = Self {
            multi,
            header,
            bars: Vec::new(),
            style,
            rest,
            latest,
            run: start.run_id.to_string(),
            created_at: start.created_at,
            summary: Some(start.clone()),
        };
        for failure in &start.failures {
            let _ = view.multi.println(earlier_failure_line(failure));
        }
        view.tick();
        view
    }

    fn event(&mut self, event: &RunEvent) {
        match event.kind.as_str() {
            "failed" if event.applied => {
                let _ = self.multi.println(failure_line(event, is_final_failure(event)));
            }
            "progress" => self.latest.set_message(progress_line(event)),
            _ => {}
        }
    }

    fn snapshot(&mut self, snapshot: &Snapshot) {
        let wanted: Vec<u32> = snapshot.assets.iter().map(|a| a.index).collect();
        // Bars of assets no longer shown go; new ones are placed in plan order.
        self.bars.retain(|(index, bar)| {
            let keep = wanted.contains(index);
            if !keep {
                self.multi.remove(bar);
            }
            keep
        });
        for asset in &snapshot.assets {
            let position = self.bars.iter().position(|(index, _)| *index >= asset.index);
            let bar = match position {
                Some(i) if self.bars[i].0 == asset.index => self.bars[i].1.clone(),
                _ => {
                    let before = position.map_or(&self.rest, |i| &self.bars[i].1);
                    let bar = self.multi.insert_before(before, ProgressBar::new(asset.steps.max(0) as u64));
                    bar.set_style(self.style.clone());
                    bar.set_prefix(truncate(&asset.name, 24));
                    bar.set_position(done(&asset.counts).max(0) as u64);
                    // Its rate counts from now, not from the run's start.
                    bar.reset_eta();
                    self.bars.insert(position.unwrap_or(self.bars.len()), (asset.index, bar.clone()));
                    bar
                }
            };
            bar.set_length(asset.steps.max(0) as u64);
            bar.set_position(done(&asset.counts).max(0) as u64);
            bar.set_message(bar_message(asset));
        }
        self.rest.set_message(rest_line(snapshot).unwrap_or_default());
        self.summary = Some(snapshot.summary.clone());
        self.tick();
    }

    fn tick(&self) {
        let elapsed = (chrono::Utc::now() - self.created_at).num_milliseconds().max(0) as f64 / 1000.0;
        self.header.set_message(header_line(&self.run, elapsed, self.summary.as_ref()));
        self.header.tick();
    }

    fn finish(self, _summary: &RunSummary) {
        for (_, bar) in &self.bars {
            bar.abandon();
        }
        if self.rest.message().is_empty() {
            self.rest.finish_and_clear();
        } else {
            self.rest.abandon();
        }
        self.latest.finish_and_clear();
        // The summary printed next says how the run ended.
        self.header.finish_and_clear();
    }
}

/// `name` cut to `width` characters, with `…` when cut.
fn truncate(name: &str, width: usize) -> String {
    if name.chars().count() <= width {
        return name.to_owned();
    }
    let mut cut: String = name.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Lines for logs and pipes: failures as they happen, an asset when it completes (runs of
/// a few assets), and a progress line every few seconds.
struct PlainView {
    started: Instant,
    last_line: Instant,
    changed: bool,
    latest: Option<Snapshot>,
    /// Assets already reported done, by index.
    reported: HashSet<u32>,
}

impl PlainView {
    fn new(start: &RunSummary) -> Self {
        say!(
            "following run {} ({}): {} steps, {} assets",
            start.run_id,
            start.plan,
            render::count(start.steps.total),
            render::count(start.assets.total)
        );
        for failure in &start.failures {
            say!("  {}", earlier_failure_line(failure));
        }
        Self {
            started: Instant::now(),
            last_line: Instant::now(),
            changed: false,
            latest: None,
            reported: HashSet::new(),
        }
    }

    fn elapsed(&self) -> String {
        render::seconds(self.started.elapsed().as_secs_f64())
    }

    fn event(&mut self, event: &RunEvent) {
        if event.kind == "failed" && event.applied {
            self.changed = true;
            say!("{:>8}  {}", self.elapsed(), failure_line(event, is_final_failure(event)));
        }
    }

    fn snapshot(&mut self, snapshot: &Snapshot) {
        let every_asset = snapshot.summary.assets.total <= snapshot.assets.len() as i64;
        for asset in &snapshot.assets {
            if every_asset && asset.state == AssetState::Done && self.reported.insert(asset.index) {
                let n = render::count(asset.steps);
                say!("{:>8}  done {} {}/{n}", self.elapsed(), asset.name, render::count(done(&asset.counts)));
            }
        }
        let first = self.latest.is_none();
        let moved = self
            .latest
            .as_ref()
            .is_none_or(|last| done(&last.summary.steps) != done(&snapshot.summary.steps));
        self.changed |= moved;
        self.latest = Some(snapshot.clone());
        // The first frame at once: where the run stands, without waiting for a change.
        if first {
            self.progress_line();
        }
    }

    fn tick(&mut self) {
        if self.changed && self.last_line.elapsed() >= PLAIN_EVERY {
            self.progress_line();
        }
    }

    fn progress_line(&mut self) {
        let Some(snapshot) = &self.latest else { return };
        let steps = &snapshot.summary.steps;
        let mut line = format!(
            "{:>8}  {}/{} steps",
            self.elapsed(),
            render::count(done(steps)),
            render::count(steps.total)
        );
        for asset in &snapshot.assets {
            line.push_str(&format!(
                "  {} {}/{}",
                asset.name,
                render::count(done(&asset.counts)),
                render::count(asset.steps)
            ));
        }
        if let Some(rest) = rest_line(snapshot) {
            line.push_str("  ");
            line.push_str(&rest);
        }
        say!("{line}");
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
    use opflow_api_model::{AssetCounts, RunStatus};
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

    fn counts(total: i64, succeeded: i64, running: i64) -> StepCounts {
        StepCounts {
            total,
            succeeded,
            running,
            waiting: total - succeeded - running,
            ..StepCounts::default()
        }
    }

    fn asset(index: u32, state: AssetState, counts: StepCounts) -> AssetInfo {
        AssetInfo {
            name: format!("a{index}"),
            index,
            op: "noop@1.0.0".into(),
            steps: counts.total,
            leaf: false,
            state,
            counts,
        }
    }

    fn summary(assets: AssetCounts) -> RunSummary {
        RunSummary {
            run_id: RunId::new(),
            key: None,
            plan: "p".into(),
            plan_file: "p.yaml".into(),
            owner: "local".into(),
            priority: 1,
            status: RunStatus::Running,
            steps: counts(100_000, 91_200, 10),
            behind_window: 0,
            waiting_for_keys: Vec::new(),
            assets,
            last_event: 0,
            created_at: Utc::now(),
            started_at: None,
            finished_at: None,
            failures: Vec::new(),
        }
    }

    #[test]
    fn a_large_run_shows_its_busiest_assets_and_sums_up_the_rest() {
        let all = AssetCounts { total: 10_000, waiting: 870, running: 10, done: 9_120, failed: 0 };
        let shown: Vec<AssetInfo> =
            (0..10).map(|i| asset(9_120 + i, AssetState::Running, counts(10, 5, 1))).collect();
        let snapshot = Snapshot { summary: summary(all), assets: shown };
        assert_eq!(rest_line(&snapshot).unwrap(), "… and 9,990 more assets: 9,120 done, 870 waiting");
    }

    #[test]
    fn a_run_whose_assets_all_have_bars_has_no_rest_line() {
        let all = AssetCounts { total: 2, waiting: 1, running: 1, done: 0, failed: 0 };
        let shown = vec![
            asset(0, AssetState::Running, counts(10, 5, 1)),
            asset(1, AssetState::Waiting, counts(1, 0, 0)),
        ];
        assert_eq!(rest_line(&Snapshot { summary: summary(all), assets: shown }), None);
        // Nothing running in a large run: no bars, every asset summed up.
        let all = AssetCounts { total: 10_000, waiting: 0, running: 0, done: 10_000, failed: 0 };
        let snapshot = Snapshot { summary: summary(all), assets: Vec::new() };
        assert_eq!(rest_line(&snapshot).unwrap(), "… and 10,000 assets: 10,000 done");
    }

    #[test]
    fn a_small_run_has_a_bar_per_asset_and_a_large_one_for_its_busiest() {
        let small = bars_query(10);
        assert_eq!((small.state, small.order, small.limit), (None, None, Some(MAX_BARS)));
        let large = bars_query(11);
        assert_eq!(
            (large.state, large.order, large.limit),
            (Some(AssetState::Running), Some(AssetOrder::Busiest), Some(MAX_BARS))
        );
    }

    #[test]
    fn the_header_says_how_many_steps_wait_behind_the_window() {
        let mut s = summary(AssetCounts::default());
        s.behind_window = 1_200;
        assert!(
            header_line("r", 1.0, Some(&s)).ends_with(", 1,200 behind the window"),
            "{}",
            header_line("r", 1.0, Some(&s))
        );
    }

    #[test]
    fn the_header_tells_steps_waiting_for_keys_from_those_behind_the_window() {
        let mut s = summary(AssetCounts::default());
        s.behind_window = 1_200;
        s.waiting_for_keys = vec![opflow_api_model::KeyWait {
            key: "prices/2026-01-03".into(),
            waiting: 200,
            in_flight: 2,
            max: 2,
        }];
        let line = header_line("r", 1.0, Some(&s));
        assert!(line.ends_with(", 1,000 behind the window, 200 waiting for keys"), "{line}");
    }

    #[test]
    fn the_header_counts_steps_done_and_failed() {
        let mut s = summary(AssetCounts::default());
        assert_eq!(header_line("r", 2.5, Some(&s)), "run r  2.50s  91,200/100,000 steps");
        s.steps.failed = 3;
        assert_eq!(header_line("r", 2.5, Some(&s)), "run r  2.50s  91,203/100,000 steps, 3 failed");
    }

    #[test]
    fn lines_name_the_step_and_what_happened() {
        let failed = event("failed", 7, true, json!({"error": "boom", "retryable": true}));
        assert!(!is_final_failure(&failed));
        assert_eq!(failure_line(&failed, false), "✗ prices step 7 attempt 1 failed (will retry): boom");
        let progress = event("progress", 7, false, json!({"fraction": 0.42, "message": "paths"}));
        assert_eq!(progress_line(&progress), "prices step 7: 42% paths");
        assert_eq!(truncate("a_very_long_asset_name_indeed", 10), "a_very_lo…");
        let bar = asset(0, AssetState::Running, StepCounts { failed: 2, ..counts(10, 5, 3) });
        assert_eq!(bar_message(&bar), "3 running, ✗ 2 failed");
    }
}
