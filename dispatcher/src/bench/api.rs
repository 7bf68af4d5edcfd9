//! `api`: how long the HTTP API takes to answer one page against a large store
//! (`store::large_fixture`: a 100,000-step, 10,000-asset run and 10,000 finished runs),
//! endpoint by endpoint, the first page and one in the middle; and how long `opflow watch`
//! takes, from its start, to draw its first frame of that run.
//!
//! The API is served in this process, as the dispatcher serves it but without a leader:
//! nothing publishes, applies or recovers, so the store stays as built while it is timed.
//! Each request is sent over loopback HTTP and timed to its last byte.

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

use opflow_process::SecretUrl;

use super::{
    BenchOptions,
    options::round,
    sandbox::{self, Sandbox},
};
use crate::{
    api::{self, state::ApiState},
    store::{
        Store,
        large_fixture::{self, FixtureSize},
    },
};

/// One timed request: what it asks, and whether it is a first or a middle page.
struct Probe {
    endpoint: &'static str,
    page: &'static str,
    path: String,
    /// An events stream: timed to its `events`-th event, then dropped.
    events: Option<usize>,
}

/// Runs the `api` workload in `sandbox`'s database; its figures.
pub async fn api(
    sandbox: &Sandbox,
    options: &BenchOptions,
    cancel: &CancellationToken,
) -> anyhow::Result<Value> {
    let size = if options.quick {
        FixtureSize { assets: 1_000, steps_per_asset: 10, finished_runs: 1_000 }
    } else {
        FixtureSize::FULL
    };
    // A database of its own: the fixture's runs and op would be in the other workloads' way.
    let url =
        SecretUrl::new(sandbox::with_path(sandbox.database_url.expose(), &format!("{}_api", sandbox.name)));
    let store = Store::connect(&url, cancel).await.context("creating the api database")?;
    let built = Instant::now();
    let fixture = large_fixture::build(&store, size).await.context("building the large store")?;
    let build_s = built.elapsed().as_secs_f64();
    eprintln!(
        "api: stored a run of {} assets and {} steps and {} finished runs in {build_s:.1}s",
        size.assets,
        size.assets * size.steps_per_asset,
        size.finished_runs
    );

    let stop = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding the API's port")?;
    let addr: SocketAddr = listener.local_addr()?;
    let state = ApiState {
        followers: api::followers::Followers::start(store.clone(), stop.clone()),
        store: store.with_own_pool(8, std::time::Duration::from_secs(60)),
        auth_required: false,
        readiness: Default::default(),
        webhooks_allow_private: false,
        metrics: std::sync::Arc::new(api::metrics::Metrics::new()),
        streams: Default::default(),
    };
    // The web UI too, as the dispatcher serves it by default.
    let router = api::router(state.clone()).merge(crate::ui::router(state));
    let server = tokio::spawn({
        let stop = stop.clone();
        async move { axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned()).await }
    });
    let base = format!("http://{addr}");
    let result = measure(&base, &store, &fixture, size, options).await;
    stop.cancel();
    let _ = server.await;
    store.close().await;
    let mut figures = result?;
    figures["build_s"] = json!(round(build_s, 1));
    Ok(figures)
}

async fn measure(
    base: &str,
    store: &Store,
    fixture: &large_fixture::LargeFixture,
    size: FixtureSize,
    options: &BenchOptions,
) -> anyhow::Result<Value> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
    let run = fixture.run;
    let steps = i64::from(size.assets) * i64::from(size.steps_per_asset);
    // The middle of the run list: the cursor of the page that ends half way.
    let half = (size.finished_runs / 2).max(1);
    let runs = store.following().runs(&Default::default(), None, half).await?;
    let middle_runs =
        runs.last().map(|r| format!("{}_{}", r.created_at.timestamp_micros(), r.id)).unwrap_or_default();
    let queue = opflow_protocol::queue::op_queue(&fixture.op);
    let probes = [
        ("runs", "first", "/v1/runs".to_owned()),
        ("runs", "middle", format!("/v1/runs?cursor={middle_runs}")),
        ("runs?status=failed", "first", "/v1/runs?status=failed".to_owned()),
        ("run", "first", format!("/v1/runs/{run}")),
        ("assets", "first", format!("/v1/runs/{run}/assets")),
        ("assets", "middle", format!("/v1/runs/{run}/assets?cursor={}", size.assets / 2)),
        (
            "assets?order=busiest",
            "first",
            format!("/v1/runs/{run}/assets?order=busiest&state=running&limit=10"),
        ),
        ("assets?state=waiting", "first", format!("/v1/runs/{run}/assets?state=waiting")),
        ("steps", "first", format!("/v1/runs/{run}/steps")),
        ("steps", "middle", format!("/v1/runs/{run}/steps?cursor={}", steps / 2)),
        ("steps?status=failed", "first", format!("/v1/runs/{run}/steps?status=failed")),
        ("steps?asset=", "first", format!("/v1/runs/{run}/steps?asset={}", fixture.middle_asset)),
        ("outputs", "first", format!("/v1/runs/{run}/outputs")),
        ("outputs", "middle", format!("/v1/runs/{run}/outputs?cursor={}", steps / 4)),
        ("queues", "first", "/v1/queues".to_owned()),
        ("queues/{queue}", "first", format!("/v1/queues/{queue}")),
        ("ops", "first", "/v1/ops".to_owned()),
        // The web UI's pages of the same store.
        ("ui /", "first", "/".to_owned()),
        ("ui /runs/{id}", "first", format!("/runs/{run}")),
        (
            "ui /runs/{id}",
            "middle",
            format!("/runs/{run}?assets_after={}&cursor={}", size.assets / 2, steps / 2),
        ),
        ("ui /runs/{id}?status=failed", "first", format!("/runs/{run}?status=failed")),
        ("ui /runs/{id}/steps/{s}", "middle", format!("/runs/{run}/steps/{}", steps / 2)),
        ("ui /ops", "first", "/ops".to_owned()),
    ]
    .into_iter()
    .map(|(endpoint, page, path)| Probe { endpoint, page, path, events: None })
    .chain([
        Probe {
            endpoint: "events",
            page: "first",
            path: format!("/v1/runs/{run}/events?follow=false"),
            events: Some(500),
        },
        Probe {
            endpoint: "events",
            page: "middle",
            path: format!("/v1/runs/{run}/events?follow=false&after={}", steps),
            events: Some(500),
        },
        Probe {
            endpoint: "events?kinds=failed",
            page: "first",
            path: format!("/v1/runs/{run}/events?follow=false&kinds=failed"),
            events: Some(10),
        },
    ])
    .collect::<Vec<_>>();
    let samples = if options.quick { 10 } else { 100 };
    let measuring = Instant::now();
    let mut endpoints = Vec::new();
    let mut worst_p99: f64 = 0.0;
    for probe in &probes {
        let url = format!("{base}{}", probe.path);
        // One untimed request first: the connection and the statement's preparation.
        request(&http, &url, probe.events).await.with_context(|| format!("GET {}", probe.path))?;
        let mut times = Vec::with_capacity(samples);
        for _ in 0..samples {
            let started = Instant::now();
            request(&http, &url, probe.events).await.with_context(|| format!("GET {}", probe.path))?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        let p50 = percentile(&times, 0.50);
        let p99 = percentile(&times, 0.99);
        worst_p99 = worst_p99.max(p99);
        eprintln!("api: {:<30} {:<6} p50 {p50:>7.1} ms  p99 {p99:>7.1} ms", probe.endpoint, probe.page);
        endpoints.push(json!({
            "endpoint": probe.endpoint,
            "page": probe.page,
            "p50_ms": round(p50, 1),
            "p99_ms": round(p99, 1),
        }));
    }
    let watch_first_frame_ms =
        watch_first_frame(&options.bin_dir.join("opflow"), base, &run.to_string()).await?;
    eprintln!("api: opflow watch drew its first frame in {watch_first_frame_ms:.0} ms");
    let live = live_cost(&http, base, store, run, options).await?;
    Ok(json!({
        "workload": "api",
        "steps": steps,
        "wall_s": round(measuring.elapsed().as_secs_f64(), 1),
        "assets": size.assets,
        "runs": size.finished_runs + 1,
        "samples": samples,
        // Every request answered (a failed one ends the workload with its error); whether
        // they were fast enough is a figure, not a verdict a loaded machine could flip.
        "verified": true,
        "worst_p99_ms": round(worst_p99, 1),
        "every_p99_under_200_ms": worst_p99 < 200.0,
        "endpoints": endpoints,
        "watch_first_frame_ms": round(watch_first_frame_ms, 0),
        "ui_live": live,
    }))
}

/// Live run pages open on the run at once, for [`live_cost`].
const LIVE_VIEWERS: usize = 20;

/// What the web UI's live run pages cost this process: the run gets events all the time
/// (its event number bumped and the events channel told, ten times a second, as a busy
/// leader does), first with no page open, then with [`LIVE_VIEWERS`] pages following it
/// (`/runs/{id}/live`); the difference in this process's CPU time, per page, in percent of
/// a core. The pages' own HTTP client is in this process too, so the figure is an upper
/// bound.
async fn live_cost(
    http: &reqwest::Client,
    base: &str,
    store: &Store,
    run: opflow_protocol::RunId,
    options: &BenchOptions,
) -> anyhow::Result<Value> {
    let window = if options.quick { Duration::from_secs(5) } else { Duration::from_secs(20) };
    let stop = CancellationToken::new();
    let ticker = tokio::spawn({
        let (store, stop) = (store.clone(), stop.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while !stop.is_cancelled() {
                tick.tick().await;
                large_fixture::record_nothing(&store, run).await?;
            }
            anyhow::Ok(())
        }
    });
    let me = [std::process::id()];
    let cpu_over = |window: Duration| async move {
        let before = super::cpu::micros(&me).unwrap_or(0);
        tokio::time::sleep(window).await;
        super::cpu::micros(&me).unwrap_or(0).saturating_sub(before)
    };
    let idle_micros = cpu_over(window).await;
    let updates = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut viewers = Vec::new();
    for _ in 0..LIVE_VIEWERS {
        let response = http.get(format!("{base}/runs/{run}/live")).send().await?.error_for_status()?;
        let updates = updates.clone();
        viewers.push(tokio::spawn(async move {
            let mut body = response.bytes_stream();
            while let Some(Ok(chunk)) = body.next().await {
                let n = chunk.windows(15).filter(|w| w == b"event: progress").count();
                updates.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    // Past the first update of each.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counted_from = updates.load(std::sync::atomic::Ordering::Relaxed);
    let viewing_micros = cpu_over(window).await;
    let counted = updates.load(std::sync::atomic::Ordering::Relaxed) - counted_from;
    for viewer in viewers {
        viewer.abort();
    }
    stop.cancel();
    ticker.await??;
    let seconds = window.as_secs_f64();
    let per_viewer_pct =
        viewing_micros.saturating_sub(idle_micros) as f64 / 1e6 / seconds / LIVE_VIEWERS as f64 * 100.0;
    let updates_per_s = counted as f64 / seconds / LIVE_VIEWERS as f64;
    eprintln!(
        "api: live run pages: {LIVE_VIEWERS} open, {updates_per_s:.2} updates/s each, \
         {per_viewer_pct:.3} % of a core each ({:.2} % for all {LIVE_VIEWERS})",
        per_viewer_pct * LIVE_VIEWERS as f64
    );
    Ok(json!({
        "viewers": LIVE_VIEWERS,
        "window_s": seconds,
        "updates_per_s_per_viewer": round(updates_per_s, 2),
        "cpu_pct_per_viewer": round(per_viewer_pct, 3),
        "cpu_pct_all_viewers": round(per_viewer_pct * LIVE_VIEWERS as f64, 2),
    }))
}

/// One request, read to its end (or, for an events stream, to its `events`-th event).
async fn request(http: &reqwest::Client, url: &str, events: Option<usize>) -> anyhow::Result<()> {
    let response = http.get(url).send().await?.error_for_status()?;
    let Some(wanted) = events else {
        response.bytes().await?;
        return Ok(());
    };
    let mut seen = 0;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        // Each event ends with an empty line.
        seen += chunk.windows(2).filter(|w| w == b"\n\n").count();
        if seen >= wanted || chunk.windows(10).any(|w| w == b"event: end") {
            return Ok(());
        }
    }
    Ok(())
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Milliseconds from starting `opflow watch <run>` (in a pipe: plain lines) to its first
/// frame, the line with the run's counts; the watch is stopped then (the run never ends).
async fn watch_first_frame(opflow: &Path, server: &str, run: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut child = tokio::process::Command::new(opflow)
        .args(["watch", run, "--server", server])
        .env_remove("OPFLOW_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", opflow.display()))?;
    let stdout = child.stdout.take().context("the watch's stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let read = async {
        while let Some(line) = lines.next_line().await? {
            if line.contains(" steps") && line.contains('/') {
                return Ok::<_, anyhow::Error>(started.elapsed().as_secs_f64() * 1000.0);
            }
        }
        bail!("opflow watch ended before drawing a frame")
    };
    let frame = tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .context("opflow watch drew no frame in 60 s")?;
    let _ = child.kill().await;
    frame
}
