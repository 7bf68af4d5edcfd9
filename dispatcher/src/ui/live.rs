//! `GET /runs/{id}/live`: what a run's open page needs to follow the run, as Server-Sent
//! Events. Woken by the same per-process `LISTEN` as the API's events stream
//! (`api::followers`), it sends the run's aggregates (its totals, and the counts of the
//! assets on the page) at most once a second, and only when the run recorded events
//! since: a run's page costs the same whether the run has ten steps or a million, and an
//! idle run's page costs nothing but the keep-alive.
//!
//! Rates are measured here, over the last [`RATE_WINDOW`] of samples, so every viewer sees
//! the same figures the same way; the texts are formatted here too, so the script only
//! places them.

use std::{
    collections::{HashMap, VecDeque},
    convert::Infallible,
    net::SocketAddr,
    time::{Duration, Instant},
};

use axum::{
    Extension,
    extract::{ConnectInfo, Path, Query, State},
    response::sse::{Event as SseEvent, Sse},
};
use futures_util::Stream;
use opflow_api_model::{AssetInfo, StepCounts};
use opflow_protocol::RunId;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{
    page::{self, BAR_PARTS, PageError},
    runs::ASSETS_PER_PAGE,
    session::Viewer,
};
use crate::{
    api::{
        error::ApiError, events::take_slot, followers::SAFETY_POLL, params::run_id, state::ApiState,
        stream_limits::StreamSlot,
    },
    store::{StoreError, following::LiveState},
};

/// The least time between two updates of one page.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Rates are finished steps over this much of the recent past.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, Default, Deserialize)]
pub struct LiveQuery {
    /// The page of assets the page shows (its `assets_after`).
    assets_after: Option<String>,
}

/// One update: the run's and each shown asset's bar, counts, rate and time to go.
#[derive(Debug, Serialize)]
pub struct Update {
    pub status: &'static str,
    pub finished: i64,
    pub total: i64,
    /// Each bar part's width, in percent.
    pub parts: HashMap<&'static str, f64>,
    pub text: String,
    pub rate: String,
    pub eta: String,
    pub elapsed: String,
    pub assets: Vec<AssetUpdate>,
}

#[derive(Debug, Serialize)]
pub struct AssetUpdate {
    pub index: u32,
    pub state: &'static str,
    pub finished: i64,
    pub failed: i64,
    pub parts: HashMap<&'static str, f64>,
    pub text: String,
    pub done: String,
    pub rate: String,
    pub eta: String,
}

fn parts(counts: &StepCounts) -> HashMap<&'static str, f64> {
    let total = counts.total.max(1) as f64;
    BAR_PARTS
        .iter()
        .map(|&part| {
            let n = match part {
                "succeeded" => counts.succeeded,
                "failed" => counts.failed,
                "skipped" => counts.skipped,
                "canceled" => counts.canceled,
                "running" => counts.running,
                _ => counts.queued + counts.retrying,
            };
            (part, n as f64 * 100.0 / total)
        })
        .collect()
}

/// Finished counts over the recent past, for a rate.
#[derive(Debug, Default)]
pub struct Pace {
    samples: VecDeque<(Instant, i64)>,
}

impl Pace {
    /// Records `finished` at `now`; the rate over the window, once two samples span time.
    pub fn sample(&mut self, now: Instant, finished: i64) -> Option<f64> {
        self.samples.push_back((now, finished));
        while self.samples.len() > 2 && self.samples.front().is_some_and(|(at, _)| now - *at > RATE_WINDOW) {
            self.samples.pop_front();
        }
        let (first_at, first) = *self.samples.front()?;
        let seconds = (now - first_at).as_secs_f64();
        (seconds >= 0.5).then(|| (finished - first).max(0) as f64 / seconds)
    }
}

fn eta(counts: &StepCounts, rate: Option<f64>, ended: bool) -> String {
    let left = counts.total - page::finished(counts);
    match rate {
        _ if ended || left <= 0 => "—".to_owned(),
        Some(rate) if rate > 0.0 => page::duration(left as f64 / rate),
        _ => "—".to_owned(),
    }
}

/// What the page is told, from what was read; `paces` keeps each bar's samples between
/// updates (`None` for the run's own).
fn update(
    live: &LiveState,
    totals: &StepCounts,
    assets: Vec<AssetInfo>,
    paces: &mut HashMap<Option<u32>, Pace>,
    now: Instant,
) -> Update {
    let ended = live.status.is_finished();
    let status = opflow_api_model::RunStatus::from(live.status).as_str();
    let finished = page::finished(totals);
    let mut rate = paces.entry(None).or_default().sample(now, finished);
    if rate.is_none()
        && let Some(started) = live.started_at
    {
        // Until the page has watched for a while: the run's average so far.
        let seconds =
            (live.finished_at.unwrap_or_else(chrono::Utc::now) - started).num_milliseconds() as f64 / 1000.0;
        rate = (seconds > 0.0 && finished > 0).then(|| finished as f64 / seconds);
    }
    let assets = assets
        .into_iter()
        .map(|asset| {
            let finished = page::finished(&asset.counts);
            let rate = paces.entry(Some(asset.index)).or_default().sample(now, finished);
            AssetUpdate {
                index: asset.index,
                state: match asset.state {
                    opflow_api_model::AssetState::Waiting => "waiting",
                    opflow_api_model::AssetState::Running => "running",
                    opflow_api_model::AssetState::Done => "done",
                },
                finished,
                failed: asset.counts.failed,
                parts: parts(&asset.counts),
                text: page::bar_text(&asset.counts),
                done: format!("{} / {}", page::thousands(finished), page::thousands(asset.counts.total)),
                rate: page::rate(rate.filter(|_| !ended)),
                eta: eta(&asset.counts, rate, ended),
            }
        })
        .collect();
    Update {
        status,
        finished,
        total: totals.total,
        parts: parts(totals),
        text: page::bar_text(totals),
        rate: page::rate(rate),
        eta: eta(totals, rate, ended),
        elapsed: page::elapsed(live.started_at, live.finished_at),
        assets,
    }
}

/// `GET /runs/{id}/live`.
pub async fn stream(
    State(state): State<ApiState>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
    Query(query): Query<LiveQuery>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, PageError> {
    let run = run_id(&id)?;
    let after = match query.assets_after.as_deref().filter(|a| !a.is_empty()) {
        Some(after) => Some(
            after
                .parse::<u32>()
                .map_err(|_| ApiError::BadRequest("`assets_after` is an asset's position".into()))?,
        ),
        None => None,
    };
    let slot = take_slot(&state, viewer.caller(), peer.as_ref().map(|Extension(ConnectInfo(peer))| peer))?;
    if state.store.following().status(run).await?.is_none() {
        return Err(PageError(ApiError::NotFound(format!("no run {run}"))));
    }
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(produce(state, run, after, tx, slot));
    Ok(crate::api::events::sse_of(rx))
}

/// Reads what an update needs: the run, its totals, the page's assets.
async fn read(
    state: &ApiState,
    run: RunId,
    after: Option<u32>,
) -> Result<Option<(LiveState, StepCounts, Vec<AssetInfo>)>, StoreError> {
    let Some(live) = state.store.following().live_state(run).await? else { return Ok(None) };
    let totals = state.store.runs().asset_totals(run).await?.steps.into();
    let assets = state
        .store
        .following()
        .assets(run, Default::default(), after, ASSETS_PER_PAGE)
        .await?
        .into_iter()
        .map(AssetInfo::from)
        .collect();
    Ok(Some((live, totals, assets)))
}

/// Sends updates until the run ends (then `end`), the page goes away, or the API stops.
async fn produce(
    state: ApiState,
    run: RunId,
    after: Option<u32>,
    tx: mpsc::Sender<SseEvent>,
    _slot: StreamSlot,
) {
    let followers = state.followers.clone();
    let mut wakeups = followers.watch(run);
    let mut paces: HashMap<Option<u32>, Pace> = HashMap::new();
    let mut sent_seq = None;
    loop {
        let sent_at = Instant::now();
        match read(&state, run, after).await {
            Ok(None) => return, // deleted while followed
            Ok(Some((live, totals, assets))) => {
                let ended = live.status.is_finished();
                if sent_seq != Some(live.event_seq) || ended {
                    let update = update(&live, &totals, assets, &mut paces, sent_at);
                    let event = SseEvent::default().event(if ended { "end" } else { "progress" });
                    let Ok(event) = event.json_data(&update) else { return };
                    if tx.send(event).await.is_err() || ended {
                        return;
                    }
                    sent_seq = Some(live.event_seq);
                }
            }
            Err(error) => tracing::warn!(%error, %run, "reading a run for its live page failed; retrying"),
        }
        // At most one update a second, then the next events of this run.
        tokio::select! {
            () = followers.shutdown().cancelled() => return,
            () = tx.closed() => return,
            () = tokio::time::sleep_until((sent_at + MIN_INTERVAL).into()) => {}
        }
        tokio::select! {
            () = followers.shutdown().cancelled() => return,
            () = tx.closed() => return,
            () = wakeups.next() => {}
            () = tokio::time::sleep(SAFETY_POLL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_is_steps_over_the_recent_window() {
        let mut pace = Pace::default();
        let start = Instant::now();
        assert_eq!(pace.sample(start, 0), None);
        assert_eq!(pace.sample(start + Duration::from_millis(100), 5), None, "too short to say");
        let rate = pace.sample(start + Duration::from_secs(2), 200).unwrap();
        assert!((rate - 100.0).abs() < 1e-9, "{rate}");
        // Long after, only the window counts: 10 steps in the last ~10 s.
        pace.sample(start + Duration::from_secs(30), 1_000);
        let rate = pace.sample(start + Duration::from_secs(40), 1_010).unwrap();
        assert!((rate - 1.0).abs() < 1e-9, "{rate}");
    }

    #[test]
    fn the_time_to_go_is_what_is_left_at_the_rate() {
        let counts = StepCounts { total: 1_000, succeeded: 400, running: 10, ..Default::default() };
        assert_eq!(eta(&counts, Some(100.0), false), "6.0 s");
        assert_eq!(eta(&counts, Some(100.0), true), "—");
        assert_eq!(eta(&counts, None, false), "—");
    }

    #[test]
    fn bar_parts_are_percentages_of_the_total() {
        let counts = StepCounts {
            total: 200,
            succeeded: 100,
            failed: 10,
            queued: 5,
            retrying: 5,
            ..Default::default()
        };
        let parts = parts(&counts);
        assert_eq!(parts["succeeded"], 50.0);
        assert_eq!(parts["failed"], 5.0);
        assert_eq!(parts["queued"], 5.0);
        assert_eq!(parts["running"], 0.0);
    }
}
