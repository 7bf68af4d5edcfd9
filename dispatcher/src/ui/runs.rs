//! The runs pages: the list (filtered, paged, newest first), a run (progress per asset,
//! the plan's graph, failures, steps, webhook deliveries, cancel and re-run) and a step
//! (its error, progress, logs and events). They read what the API reads, through its own
//! handlers, so a page never shows what the API would not, nor costs more: every list is
//! one page, and a run's progress is its assets' counts, whatever its number of steps.

use std::path::PathBuf;

use axum::{
    Extension, Form,
    extract::{Path, Query, State},
    response::{IntoResponse, Redirect, Response},
};
use chrono::Utc;
use maud::{Markup, html};
use opflow_api_model::{
    AssetInfo, AssetsQuery, OutputsQuery, RunListItem, RunStatus, RunSummary, RunsQuery, StepCounts,
    StepInfo, StepStatus, StepsQuery,
};
use opflow_protocol::RunId;
use serde::{Deserialize, de::DeserializeOwned};

use super::{
    graph,
    page::{self, PageError, Section, status_label},
    session::Viewer,
};
use crate::{
    api::{self, error::ApiError, params::run_id, state::ApiState},
    store::{following::EventFilter, tokens::Scope},
};

/// Runs on one page of the list.
const RUNS_PER_PAGE: u32 = 50;
/// Assets of a run on one page (each a row with a bar).
pub const ASSETS_PER_PAGE: u32 = 100;
/// Steps on one page of a run's steps table.
const STEPS_PER_PAGE: u32 = 50;
/// A step's events shown on its page; the events stream has them all.
const STEP_EVENTS_SHOWN: u32 = 500;
/// A run's webhook deliveries shown.
const DELIVERIES_SHOWN: u32 = 20;

/// A filter from a form: an empty field is no filter.
fn field(value: Option<String>) -> Option<String> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

/// A status named in a form, as the API's enum; `what` names the field in the error.
fn parse_status<T: DeserializeOwned>(value: Option<&str>, what: &str) -> Result<Option<T>, PageError> {
    let Some(value) = value else { return Ok(None) };
    serde_json::from_value(serde_json::Value::String(value.to_owned())).map(Some).map_err(|_| {
        PageError(ApiError::BadRequest(format!("`{}` is not a {what} status", page::cut_text(value, 64))))
    })
}

fn is_ended(status: RunStatus) -> bool {
    matches!(status, RunStatus::Succeeded | RunStatus::Failed | RunStatus::Canceled)
}

#[derive(Debug, Default, Deserialize)]
pub struct RunsForm {
    status: Option<String>,
    plan: Option<String>,
    owner: Option<String>,
    cursor: Option<String>,
}

const RUN_STATUSES: [&str; 5] = ["queued", "running", "succeeded", "failed", "canceled"];
const STEP_STATUSES: [&str; 8] =
    ["waiting", "queued", "running", "retrying", "succeeded", "failed", "skipped", "canceled"];

fn status_select(name: &str, statuses: &[&str], chosen: Option<&str>) -> Markup {
    html! {
        label { "Status"
            select name=(name) {
                option value="" selected[chosen.is_none()] { "any" }
                @for status in statuses {
                    option value=(status) selected[chosen == Some(*status)] { (status) }
                }
            }
        }
    }
}

/// `GET /`: runs, newest first.
pub async fn list(
    State(state): State<ApiState>,
    Extension(viewer): Extension<Viewer>,
    Query(form): Query<RunsForm>,
) -> Result<Response, PageError> {
    let status = field(form.status);
    let plan = field(form.plan);
    let owner = field(form.owner);
    let query = RunsQuery {
        status: parse_status(status.as_deref(), "run")?,
        plan: plan.clone(),
        owner: owner.clone(),
        limit: Some(RUNS_PER_PAGE),
        cursor: field(form.cursor),
    };
    let axum::Json(runs) = api::runs::list(State(state), Ok(Query(query))).await?;
    let body = html! {
        h1 { "Runs" }
        form class="filters" method="get" action="/" role="search" aria-label="Filter runs" {
            (status_select("status", &RUN_STATUSES, status.as_deref()))
            label { "Plan" input type="text" name="plan" value=[plan.as_deref()] maxlength="64" size="18"; }
            label { "Owner" input type="text" name="owner" value=[owner.as_deref()] maxlength="64" size="14"; }
            button type="submit" { "Filter" }
        }
        @if runs.items.is_empty() {
            p class="none" { "No runs" @if status.is_some() || plan.is_some() || owner.is_some() { " match these filters" } "." }
        } @else {
            table {
                caption class="skip" { "Runs, newest first" }
                thead { tr {
                    th scope="col" { "Plan" } th scope="col" { "Status" } th scope="col" { "Owner" }
                    th scope="col" { "Progress" } th scope="col" class="num" { "Steps" }
                    th scope="col" { "Created" } th scope="col" class="num" { "Took" }
                } }
                tbody {
                    @for run in &runs.items { (run_row(run)) }
                }
            }
        }
        (page::next_page("/", &[("status", status), ("plan", plan), ("owner", owner)], runs.next_cursor.as_deref()))
    };
    Ok(page::shell("Runs", Section::Runs, viewer.caller(), body))
}

fn list_counts(run: &RunListItem) -> StepCounts {
    StepCounts {
        total: i64::from(run.steps_total),
        succeeded: i64::from(run.steps_succeeded),
        failed: i64::from(run.steps_failed),
        skipped: i64::from(run.steps_skipped),
        canceled: i64::from(run.steps_canceled),
        ..Default::default()
    }
}

fn run_row(run: &RunListItem) -> Markup {
    let counts = list_counts(run);
    html! {
        tr data-run=(run.run_id) {
            td {
                a href={ "/runs/" (run.run_id) } { (run.plan) }
                br;
                span class="mono hint" { (run.run_id.to_string().get(..8).unwrap_or_default()) }
            }
            td { (status_label(run.status.as_str())) }
            td { (run.owner) }
            td { (page::progress_bar(&counts, &format!("run of {}", run.plan))) }
            td class="num" { (page::thousands(page::finished(&counts))) " / " (page::thousands(counts.total)) }
            td { (page::time(Some(run.created_at))) }
            td class="num" { (page::elapsed(run.started_at, run.finished_at)) }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct RunForm {
    /// The steps table's filters and page.
    status: Option<String>,
    asset: Option<String>,
    cursor: Option<String>,
    /// The assets table's page.
    assets_after: Option<String>,
}

/// Steps a second and seconds to go, from how many finished since the run started.
pub fn run_pace(summary: &RunSummary) -> (Option<f64>, Option<f64>) {
    let Some(started) = summary.started_at else { return (None, None) };
    let until = summary.finished_at.unwrap_or_else(Utc::now);
    let seconds = (until - started).num_milliseconds() as f64 / 1000.0;
    let done = page::finished(&summary.steps) as f64;
    if seconds <= 0.0 || done <= 0.0 {
        return (None, None);
    }
    let rate = done / seconds;
    let left = (summary.steps.total as f64 - done).max(0.0);
    let eta = (!is_ended(summary.status)).then_some(left / rate);
    (Some(rate), eta)
}

fn asset_done(counts: &StepCounts) -> String {
    format!("{} / {}", page::thousands(page::finished(counts)), page::thousands(counts.total))
}

fn asset_state(asset: &AssetInfo) -> &'static str {
    match asset.state {
        opflow_api_model::AssetState::Waiting => "waiting",
        opflow_api_model::AssetState::Running => "running",
        opflow_api_model::AssetState::Done => "done",
    }
}

/// `GET /runs/{id}`: a run's page.
pub async fn show(
    State(state): State<ApiState>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
    Query(form): Query<RunForm>,
) -> Result<Response, PageError> {
    let run = run_id(&id)?;
    let axum::Json(summary) = api::runs::status(State(state.clone()), Path(id.clone())).await?;
    let assets_after = field(form.assets_after);
    let axum::Json(assets) = api::runs::assets(
        State(state.clone()),
        Path(id.clone()),
        Ok(Query(AssetsQuery {
            limit: Some(ASSETS_PER_PAGE),
            cursor: assets_after.clone(),
            ..Default::default()
        })),
    )
    .await?;
    let step_status = field(form.status);
    let step_asset = field(form.asset);
    let steps_query = StepsQuery {
        asset: step_asset.clone(),
        status: parse_status::<StepStatus>(step_status.as_deref(), "step")?,
        limit: Some(STEPS_PER_PAGE),
        cursor: field(form.cursor),
    };
    let axum::Json(steps) =
        api::runs::steps(State(state.clone()), Path(id.clone()), Ok(Query(steps_query))).await?;
    let graph = run_graph(&state, run, &summary).await?;
    let deliveries = if viewer.may(Scope::Admin) {
        let rows = state.store.webhooks().deliveries_of_run(run.as_uuid(), DELIVERIES_SHOWN).await?;
        Some(rows.into_iter().map(opflow_api_model::DeliveryView::from).collect::<Vec<_>>())
    } else {
        None
    };
    let ended = is_ended(summary.status);
    let (rate, eta) = run_pace(&summary);
    let live_url = match &assets_after {
        Some(after) => format!(
            "/runs/{run}/live?assets_after={}",
            url::form_urlencoded::byte_serialize(after.as_bytes()).collect::<String>()
        ),
        None => format!("/runs/{run}/live"),
    };
    let body = html! {
        div data-live-url=[(!ended).then_some(&live_url)] {
            h1 {
                span { "Run of " (summary.plan) }
                span data-run-status data-status=(summary.status.as_str()) class={ "status status-" (summary.status.as_str()) } {
                    span aria-hidden="true" { (status_symbol(summary.status)) } " " (summary.status.as_str())
                }
                @if !ended { span class="live-dot" aria-live="polite" { "" } }
            }
            div class="summary-grid" {
                section class="panel" aria-labelledby="progress-heading" {
                    h2 id="progress-heading" class="skip" { "Progress" }
                    div id="run-bar" { (big_bar(&summary.steps)) }
                    p id="run-bar-text" class="bar-text" { (page::bar_text(&summary.steps)) }
                    (legend())
                    dl class="facts" {
                        dt { "Rate" } dd id="run-rate" { (page::rate(rate)) }
                        dt { "To go" } dd id="run-eta" { (eta.map_or_else(|| "—".to_owned(), page::duration)) }
                        dt { "Elapsed" } dd id="run-elapsed" { (page::elapsed(summary.started_at, summary.finished_at)) }
                        @if summary.steps.reused > 0 {
                            dt { "Reused" } dd { (page::thousands(summary.steps.reused)) " steps from the catalog" }
                        }
                        @if summary.behind_window > 0 {
                            dt { "Behind the window" } dd { (page::thousands(summary.behind_window)) " queued steps wait their turn" }
                        }
                    }
                }
                section class="panel" aria-label="About this run" {
                    dl class="facts" {
                        dt { "Run" } dd class="mono" { (summary.run_id) }
                        dt { "Plan file" } dd { (summary.plan_file) }
                        dt { "Owner" } dd { (summary.owner) }
                        dt { "Priority" } dd { (summary.priority) }
                        @if let Some(key) = &summary.key { dt { "Key" } dd class="mono" { (key) } }
                        dt { "Created" } dd { (page::time(Some(summary.created_at))) }
                        dt { "Started" } dd { (page::time(summary.started_at)) }
                        dt { "Finished" } dd { (page::time(summary.finished_at)) }
                    }
                }
            }
            @if viewer.may(Scope::Submit) {
                div class="actions" {
                    @if !ended {
                        form method="post" action={ "/runs/" (run) "/cancel" } data-while-running {
                            button type="submit" class="danger" id="cancel-run" { "Cancel run" }
                        }
                    }
                    form method="post" action={ "/runs/" (run) "/rerun" } {
                        button type="submit" id="rerun" { "Re-run" }
                    }
                    @if summary.steps.failed > 0 {
                        form method="post" action={ "/runs/" (run) "/rerun" } {
                            input type="hidden" name="only" value="failed";
                            button type="submit" id="rerun-failed" { "Re-run the failed cells" }
                        }
                    }
                }
            }
            p id="run-ended" class="notice" role="status" hidden {
                "The run has ended. " a href={ "/runs/" (run) } { "Reload" } " for its final steps."
            }
            @if !summary.failures.is_empty() {
                section aria-labelledby="failures-heading" {
                    h2 id="failures-heading" { "Failures" }
                    ul class="failures" {
                        @for failure in &summary.failures {
                            li {
                                a href={ "/runs/" (run) "/steps/" (failure.step_id) } {
                                    "Step " (failure.step_id) " of " (failure.asset)
                                }
                                " (attempt " (failure.attempt) ")"
                                pre class="error-message" { (page::cut(&failure.error, 400)) }
                            }
                        }
                    }
                }
            }
            section aria-labelledby="assets-heading" {
                h2 id="assets-heading" { "Assets (" (page::thousands(summary.assets.total)) ")" }
                table {
                    thead { tr {
                        th scope="col" { "Asset" } th scope="col" { "Op" } th scope="col" { "State" }
                        th scope="col" { "Progress" } th scope="col" class="num" { "Finished" }
                        th scope="col" class="num" { "Rate" } th scope="col" class="num" { "To go" }
                    } }
                    tbody {
                        @for asset in &assets.items {
                            tr data-asset=(asset.index) {
                                th scope="row" {
                                    a href={ "/runs/" (run) "?asset=" (url::form_urlencoded::byte_serialize(asset.name.as_bytes()).collect::<String>()) "#steps" } { (asset.name) }
                                }
                                td class="mono" { (asset.op) }
                                td { span data-asset-state class={ "status status-" (asset_state(asset)) } data-status=(asset_state(asset)) {
                                    span aria-hidden="true" { (state_symbol(asset_state(asset))) } " " (asset_state(asset))
                                } }
                                td { (page::progress_bar(&asset.counts, &format!("asset {}", asset.name))) }
                                td class="num asset-done" { (asset_done(&asset.counts)) }
                                td class="num asset-rate" { "—" }
                                td class="num asset-eta" { "—" }
                            }
                        }
                    }
                }
                @if let Some(next) = &assets.next_cursor {
                    p class="pager" { a href={ "/runs/" (run) "?assets_after=" (next) } { "More assets →" } }
                }
            }
            section aria-labelledby="graph-heading" {
                h2 id="graph-heading" { "Graph" }
                @match graph {
                    Some(svg) => div class="graph" tabindex="0" { (svg) },
                    None => p class="none" { "This plan has " (page::thousands(summary.assets.total)) " assets, more than the " (graph::MAX_DRAWN) " drawn; the table above lists them." },
                }
            }
            section id="steps" aria-labelledby="steps-heading" {
                h2 id="steps-heading" { "Steps" }
                form class="filters" method="get" action={ "/runs/" (run) "#steps" } aria-label="Filter steps" {
                    (status_select("status", &STEP_STATUSES, step_status.as_deref()))
                    label { "Asset" input type="text" name="asset" value=[step_asset.as_deref()] size="18"; }
                    button type="submit" { "Filter" }
                }
                (steps_table(run, &steps.items))
                @if let Some(next) = &steps.next_cursor {
                    @let query = {
                        let mut q = url::form_urlencoded::Serializer::new(String::new());
                        if let Some(s) = &step_status { q.append_pair("status", s); }
                        if let Some(a) = &step_asset { q.append_pair("asset", a); }
                        q.append_pair("cursor", next);
                        q.finish()
                    };
                    p class="pager" { a href={ "/runs/" (run) "?" (query) "#steps" } rel="next" { "More steps →" } }
                }
            }
            @if let Some(deliveries) = deliveries {
                section aria-labelledby="deliveries-heading" {
                    h2 id="deliveries-heading" { "Webhook deliveries" }
                    @if deliveries.is_empty() {
                        p class="none" { "None: nothing subscribed to this run's end, or it has not ended." }
                    } @else {
                        (super::admin::deliveries_table(&deliveries, true))
                    }
                }
            }
        }
    };
    Ok(page::shell(&format!("Run of {}", summary.plan), Section::Runs, viewer.caller(), body))
}

fn big_bar(counts: &StepCounts) -> Markup {
    html! { div class="big-wrap" { (page::progress_bar(counts, "steps of the run")) } }
}

fn legend() -> Markup {
    html! {
        ul class="legend" aria-hidden="true" {
            @for part in page::BAR_PARTS { li class={ "l-" (part) } { (part) } }
            li class="l-waiting" { "waiting" }
        }
    }
}

fn status_symbol(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Succeeded => "✓",
        RunStatus::Failed => "✗",
        RunStatus::Running => "▶",
        RunStatus::Queued => "…",
        RunStatus::Canceled => "⊘",
    }
}

fn state_symbol(state: &str) -> &'static str {
    match state {
        "running" => "▶",
        "done" => "✓",
        _ => "…",
    }
}

fn step_status_str(status: StepStatus) -> &'static str {
    match status {
        StepStatus::Waiting => "waiting",
        StepStatus::Queued => "queued",
        StepStatus::Running => "running",
        StepStatus::Retrying => "retrying",
        StepStatus::Succeeded => "succeeded",
        StepStatus::Failed => "failed",
        StepStatus::Skipped => "skipped",
        StepStatus::Canceled => "canceled",
    }
}

fn steps_table(run: RunId, steps: &[StepInfo]) -> Markup {
    html! {
        @if steps.is_empty() {
            p class="none" { "No steps match." }
        } @else {
            table {
                thead { tr {
                    th scope="col" class="num" { "Step" } th scope="col" { "Asset" } th scope="col" { "Status" }
                    th scope="col" class="num" { "Attempt" } th scope="col" { "Progress" } th scope="col" { "Worker" }
                    th scope="col" class="num" { "Took" } th scope="col" { "Error" }
                } }
                tbody {
                    @for step in steps {
                        tr data-step=(step.step_id) {
                            td class="num" { a href={ "/runs/" (run) "/steps/" (step.step_id) } { (step.step_id) } }
                            td { (step.asset) }
                            td { (status_label(step_status_str(step.status))) }
                            td class="num" { (step.attempt) }
                            td {
                                @if let Some(progress) = step.progress { (format!("{:.0}%", progress * 100.0)) " " }
                                @if let Some(message) = &step.progress_message { (page::cut(message, 60)) }
                            }
                            td class="mono" { @if let Some(worker) = &step.worker { (page::cut(worker, 24)) } }
                            td class="num" { (page::elapsed(step.started_at, step.finished_at)) }
                            td { @if let Some(error) = &step.error {
                                a href={ "/runs/" (run) "/steps/" (step.step_id) } class="error-message" { (page::cut(error, 80)) }
                            } }
                        }
                    }
                }
            }
        }
    }
}

/// The run's assets as a graph, when it has few enough to draw.
async fn run_graph(state: &ApiState, run: RunId, summary: &RunSummary) -> Result<Option<Markup>, PageError> {
    if summary.assets.total <= 0 || summary.assets.total > graph::MAX_DRAWN as i64 {
        return Ok(None);
    }
    let limit = graph::MAX_DRAWN as u32;
    let edges = state.store.following().asset_graph(run, limit).await?;
    let progress = state.store.following().assets(run, Default::default(), None, limit).await?;
    let mut nodes: Vec<graph::Node> = Vec::with_capacity(edges.len());
    for (row, (idx, upstream)) in progress.iter().zip(edges) {
        if row.idx != idx || idx as usize != nodes.len() {
            // The two reads disagree (the run was just deleted): draw nothing rather than wrong.
            return Ok(None);
        }
        let info = AssetInfo::from(row.clone());
        nodes.push(graph::Node {
            index: idx as usize,
            name: info.name.clone(),
            sub: asset_done(&info.counts),
            class: format!(
                "state-{}{}",
                asset_state(&info),
                if info.counts.failed > 0 { " has-failed" } else { "" }
            ),
            href: Some(format!(
                "/runs/{run}?asset={}#steps",
                url::form_urlencoded::byte_serialize(info.name.as_bytes()).collect::<String>()
            )),
            upstream: upstream.into_iter().map(|u| u as usize).collect(),
        });
    }
    Ok(graph::draw(&nodes, &format!("The assets of the run of {} and what each reads", summary.plan)))
}

/// `GET /runs/{id}/steps/{step}`: one step, its error, progress and events.
pub async fn step(
    State(state): State<ApiState>,
    Extension(viewer): Extension<Viewer>,
    Path((id, step)): Path<(String, String)>,
) -> Result<Response, PageError> {
    let run = run_id(&id)?;
    let step: i32 = step
        .parse()
        .ok()
        .filter(|s: &i32| *s >= 0)
        .ok_or_else(|| PageError(ApiError::BadRequest("a step id is a number from 0".into())))?;
    let Some((_, last_event)) = state.store.following().status_and_last_event(run).await? else {
        return Err(PageError(ApiError::NotFound(format!("no run {run}"))));
    };
    let row = state.store.following().steps(run, Some((step, step.saturating_add(1))), None, None, 1).await?;
    let Some(info) = row.into_iter().next().map(StepInfo::from) else {
        return Err(PageError(ApiError::NotFound(format!("run {run} has no step {step}"))));
    };
    let events = state
        .store
        .following()
        .events_between(run, 0, last_event, &EventFilter { kinds: None, step: Some(step) }, STEP_EVENTS_SHOWN)
        .await?;
    let outputs = api::runs::outputs(
        State(state.clone()),
        Path(id.clone()),
        Ok(Query(OutputsQuery {
            asset: None,
            limit: Some(1),
            cursor: step.checked_sub(1).map(|s| s.to_string()),
        })),
    )
    .await
    .ok()
    .and_then(|axum::Json(page)| page.items.into_iter().find(|o| o.step_id == info.step_id));
    let body = html! {
        p { a href={ "/runs/" (run) } { "← Run " (run) } }
        h1 { span { "Step " (info.step_id) " of " (info.asset) } (status_label(step_status_str(info.status))) }
        dl class="facts panel" {
            dt { "Op" } dd class="mono" { (info.op) }
            @if let Some(output) = &outputs { dt { "Cell" } dd { (output.label) } }
            dt { "Attempt" } dd { (info.attempt) }
            dt { "Worker" } dd class="mono" { (info.worker.as_deref().unwrap_or("—")) }
            dt { "Queued" } dd { (page::time(info.queued_at)) }
            dt { "Started" } dd { (page::time(info.started_at)) }
            dt { "Finished" } dd { (page::time(info.finished_at)) }
            dt { "Took" } dd { (page::elapsed(info.started_at, info.finished_at)) }
            @if let Some(progress) = info.progress {
                dt { "Progress" } dd { (format!("{:.0}%", progress * 100.0)) @if let Some(m) = &info.progress_message { " · " (m) } }
            }
        }
        @if let Some(error) = &info.error {
            h2 { "Error" }
            pre class="error-message" id="step-error" { (error) }
        }
        @if let Some(output) = outputs.as_ref().and_then(|o| o.output.as_ref()) {
            h2 { "Output" }
            pre { (page::cut(&serde_json::to_string_pretty(output).unwrap_or_default(), 20_000)) }
        }
        h2 { "Events" }
        @if events.is_empty() {
            p class="none" { "No events recorded for this step yet." }
        } @else {
            table {
                thead { tr {
                    th scope="col" class="num" { "#" } th scope="col" { "At" } th scope="col" class="num" { "Attempt" }
                    th scope="col" { "Kind" } th scope="col" { "What" }
                } }
                tbody {
                    @for event in &events {
                        @let event = crate::api::from_rows::run_event(run, event.clone());
                        tr {
                            td class="num" { (event.seq) }
                            td { (page::time(Some(event.at))) }
                            td class="num" { (event.attempt) }
                            td { (event.kind) }
                            td { (event_text(&event.kind, &event.data)) }
                        }
                    }
                }
            }
            @if events.len() as u32 == STEP_EVENTS_SHOWN {
                p class="hint" { "The first " (STEP_EVENTS_SHOWN) " events; " code { "opflow logs " (run) " --step " (step) } " has them all." }
            }
        }
    };
    Ok(page::shell(&format!("Step {step}"), Section::Runs, viewer.caller(), body))
}

/// What an event says, in a table cell.
fn event_text(kind: &str, data: &serde_json::Value) -> Markup {
    let text = |key: &str| data.get(key).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
    match kind {
        "log" => {
            html! { span class="mono" { "[" (text("level")) "] " } (page::cut(&text("message"), 2_000)) }
        }
        "progress" => html! {
            (data.get("fraction").and_then(|f| f.as_f64()).map_or(String::new(), |f| format!("{:.0}%", f * 100.0)))
            " " (text("message"))
        },
        "failed" => html! { span class="error-message" { (page::cut(&text("error"), 2_000)) } },
        "check_result" => html! {
            (text("name")) ": "
            @if data.get("passed").and_then(|p| p.as_bool()).unwrap_or(false) { (status_label("passed")) } @else { (status_label("failed")) }
            " " (text("detail"))
        },
        "abandoned" => html! { (text("reason")) },
        _ => html! { span class="mono" { (page::cut(&data.to_string(), 300)) } },
    }
}

/// `POST /runs/{id}/cancel`: cancels the run (submit scope), then shows it.
pub async fn cancel(
    State(state): State<ApiState>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    viewer.require(Scope::Submit, "canceling a run")?;
    let run = run_id(&id)?;
    let _canceled = api::runs::cancel(State(state), Path(id)).await?;
    Ok(Redirect::to(&format!("/runs/{run}")).into_response())
}

#[derive(Debug, Default, Deserialize)]
pub struct RerunForm {
    /// `failed`: only the cells whose latest step failed.
    only: Option<String>,
}

/// `POST /runs/{id}/rerun`: submits the run's plan again as a new run of the viewer's
/// (submit scope), then shows the new run.
pub async fn rerun(
    State(state): State<ApiState>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
    Form(form): Form<RerunForm>,
) -> Result<Response, PageError> {
    viewer.require(Scope::Submit, "re-running a run")?;
    let run = run_id(&id)?;
    let (file, source, priority) = state
        .store
        .runs()
        .source(run)
        .await?
        .ok_or_else(|| PageError(ApiError::NotFound(format!("no run {run}"))))?;
    let only = match field(form.only).as_deref() {
        None => None,
        Some("failed") => Some(crate::plan::Only::Failed),
        Some(_) => return Err(PageError(ApiError::BadRequest("`only` is `failed` or absent".into()))),
    };
    let options = crate::store::runs::RunOptions {
        owner: viewer.owner(),
        priority: u8::try_from(priority).ok(),
        no_reuse: false,
        partitions: None,
        only,
    };
    let submitted =
        crate::submit::submit_notifying(&state.store, &source, &PathBuf::from(file), None, None, options)
            .await
            .map_err(ApiError::from)?;
    Ok(Redirect::to(&format!("/runs/{}", submitted.run_id)).into_response())
}
