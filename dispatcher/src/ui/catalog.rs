//! The catalog pages: every asset with its cells counted by state, and one asset with its
//! partition × status grid, latest materializations, checks, lineage (drawn as a graph
//! of assets) and a partition's history. Read through the API's handlers, one page each.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use axum::{
    Extension,
    extract::{Path, Query, State},
    response::Response,
};
use maud::{Markup, html};
use opflow_api_model::{
    AssetSummary, CellStatus, CellView, CellsQuery, ChecksQuery, HistoryQuery, LineageDirection,
    LineageQuery, Materialization,
};
use serde::Deserialize;

use super::{
    graph,
    page::{self, PageError, Section, status_label},
    session::Viewer,
};
use crate::api::{self, error::ApiError, state::ApiState};

/// Cells on one page of an asset's grid.
const CELLS_PER_PAGE: u32 = 200;
/// Materializations of a partition's history shown.
const HISTORY_SHOWN: u32 = 20;
/// Checks shown, failed first.
const CHECKS_SHOWN: u32 = 50;

fn encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn asset_href(name: &str) -> String {
    format!("/assets/{}", percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC))
}

/// `GET /assets`: the catalog.
pub async fn list(
    State(state): State<ApiState>,
    Extension(viewer): Extension<Viewer>,
) -> Result<Response, PageError> {
    let axum::Json(assets) = api::assets::list(State(state)).await?;
    let body = html! {
        h1 { "Assets" }
        @if assets.items.is_empty() {
            p class="none" { "The catalog is empty: no run has declared an asset yet." }
        } @else {
            table {
                thead { tr {
                    th scope="col" { "Asset" } th scope="col" { "Plan" } th scope="col" { "Op" }
                    th scope="col" { "Cells" } th scope="col" class="num" { "Materialized" } th scope="col" class="num" { "Stale" }
                    th scope="col" class="num" { "Failed" } th scope="col" class="num" { "Missing" } th scope="col" { "Freshness" }
                    th scope="col" { "Latest" }
                } }
                tbody {
                    @for asset in &assets.items {
                        tr data-asset-name=(asset.name) {
                            th scope="row" { a href=(asset_href(&asset.name)) { (asset.name) } }
                            td { (asset.plan) }
                            td class="mono" { (asset.op) }
                            td { (cells_bar(asset)) }
                            td class="num" { (page::thousands(asset.materialized)) }
                            td class="num" { (page::thousands(asset.stale)) }
                            td class="num" { (page::thousands(asset.failed)) }
                            td class="num" { (page::thousands(asset.missing)) }
                            td { (freshness_text(asset)) }
                            td { (page::time(asset.latest_at)) }
                        }
                    }
                }
            }
        }
    };
    Ok(page::shell("Assets", Section::Assets, viewer.caller(), body))
}

/// An asset's materialized cells by freshness, in words; a dash without a policy.
fn freshness_text(asset: &AssetSummary) -> String {
    match &asset.freshness {
        None => "—".into(),
        Some(f) => format!(
            "{} fresh, {} warn, {} stale",
            page::thousands(f.fresh),
            page::thousands(f.warn),
            page::thousands(f.stale)
        ),
    }
}

/// The cells of an asset as a bar: materialized, stale, failed; missing is the rest.
fn cells_bar(asset: &AssetSummary) -> Markup {
    let total = asset.cells.max(1) as f64;
    let pct = |n: i64| format!("width:{:.3}%", n as f64 * 100.0 / total);
    let text = format!(
        "{} cells: {} materialized, {} stale, {} failed, {} missing",
        page::thousands(asset.cells),
        page::thousands(asset.materialized),
        page::thousands(asset.stale),
        page::thousands(asset.failed),
        page::thousands(asset.missing)
    );
    html! {
        div class="bar" role="img" aria-label=(text) title=(text) {
            span class="seg seg-succeeded" style=(pct(asset.materialized)) {}
            span class="seg seg-skipped" style=(pct(asset.stale)) {}
            span class="seg seg-failed" style=(pct(asset.failed)) {}
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct AssetForm {
    /// The grid's filter and page.
    status: Option<String>,
    cursor: Option<String>,
    /// The partition whose history and lineage to show.
    partition: Option<String>,
}

fn point_text(point: Option<&serde_json::Value>) -> String {
    match point {
        Some(serde_json::Value::Object(map)) => {
            map.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
        }
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

/// `GET /assets/{asset}`: one asset.
pub async fn show(
    State(state): State<ApiState>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
    Query(form): Query<AssetForm>,
) -> Result<Response, PageError> {
    let axum::Json(asset) = api::assets::one(State(state.clone()), Path(name.clone())).await?;
    let status: Option<CellStatus> = match form.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| {
            ApiError::BadRequest(format!("`{}` is not a cell status", page::cut_text(s, 64)))
        })?),
    };
    let partition = form.partition.filter(|p| !p.is_empty());
    let axum::Json(cells) = api::assets::cells(
        State(state.clone()),
        Path(name.clone()),
        Ok(Query(CellsQuery {
            status,
            partition: None,
            freshness: None,
            limit: Some(CELLS_PER_PAGE),
            cursor: form.cursor.filter(|c| !c.is_empty()),
        })),
    )
    .await?;
    let partitioned = cells.items.iter().any(|c| c.partition.is_some());
    // The history of the chosen partition, or of the asset when it has none.
    let history_of = partition.clone().or_else(|| (!partitioned).then(String::new));
    let history = match &history_of {
        Some(p) => {
            let query = HistoryQuery {
                partition: Some(p.clone()).filter(|p| !p.is_empty()),
                limit: Some(HISTORY_SHOWN),
            };
            api::assets::history(State(state.clone()), Path(name.clone()), Ok(Query(query))).await?.0
        }
        None => Vec::new(),
    };
    let checks_query = ChecksQuery { partition: partition.clone(), failed: None, limit: Some(CHECKS_SHOWN) };
    let axum::Json(checks) =
        api::assets::checks(State(state.clone()), Path(name.clone()), Ok(Query(checks_query))).await?;
    let lineage = lineage_graph(&state, &name, partition.as_deref()).await?;
    let body = html! {
        p { a href="/assets" { "← Assets" } }
        h1 { span { (asset.name) } }
        div class="summary-grid" {
            section class="panel" aria-label="Cells" {
                (cells_bar(&asset))
                p class="bar-text" {
                    (page::thousands(asset.cells)) " cells: "
                    (page::thousands(asset.materialized)) " materialized, " (page::thousands(asset.stale)) " stale, "
                    (page::thousands(asset.failed)) " failed, " (page::thousands(asset.missing)) " missing"
                }
            }
            section class="panel" aria-label="About this asset" {
                dl class="facts" {
                    dt { "Plan" } dd { a href={ "/?plan=" (encode(&asset.plan)) } { (asset.plan) } }
                    dt { "Op" } dd class="mono" { (asset.op) }
                    dt { "Latest" } dd { (page::time(asset.latest_at)) }
                    @if let Some(freshness) = &asset.freshness {
                        dt { "Freshness" } dd { (freshness.policy) ": " (freshness_text(&asset)) }
                    }
                }
            }
        }
        section aria-labelledby="cells-heading" {
            h2 id="cells-heading" { "Cells" }
            form class="filters" method="get" action=(asset_href(&name)) aria-label="Filter cells" {
                label { "Status"
                    select name="status" {
                        option value="" selected[status.is_none()] { "any" }
                        @for s in ["materialized", "stale", "failed"] {
                            option value=(s) selected[status.map(CellStatus::as_str) == Some(s)] { (s) }
                        }
                    }
                }
                button type="submit" { "Filter" }
            }
            @if cells.items.is_empty() {
                p class="none" { "No cells recorded" @if status.is_some() { " in this state" } "." }
            } @else {
                ul class="grid-cells" {
                    @for cell in &cells.items { (cell_item(&name, cell)) }
                }
                @if let Some(next) = &cells.next_cursor {
                    p class="pager" {
                        a rel="next" href={ (asset_href(&name)) "?cursor=" (encode(next))
                            @if let Some(s) = status { "&status=" (s.as_str()) } } { "More cells →" }
                    }
                }
            }
        }
        section aria-labelledby="lineage-heading" {
            h2 id="lineage-heading" { "Lineage" @if let Some(p) = &partition { " of partition " (p) } }
            @match lineage {
                Some(svg) => div class="graph" tabindex="0" { (svg) },
                None => p class="none" { "Nothing materialized yet to trace." },
            }
        }
        section aria-labelledby="checks-heading" {
            h2 id="checks-heading" { "Checks" }
            @if checks.is_empty() {
                p class="none" { "No check results." }
            } @else {
                table {
                    thead { tr { th scope="col" { "Check" } th scope="col" { "Cell" } th scope="col" { "Result" } th scope="col" { "Detail" } th scope="col" { "Run" } th scope="col" { "At" } } }
                    tbody {
                        @for check in &checks {
                            tr {
                                td { (check.check) @if check.blocking { " " span class="hint" { "(blocking)" } } }
                                td { (check.partition.as_deref().unwrap_or("")) " " (point_text(check.point.as_ref())) }
                                td { (status_label(if check.passed { "passed" } else { "failed" })) }
                                td { (page::cut(check.detail.as_deref().unwrap_or(""), 120)) }
                                td { a href={ "/runs/" (check.run_id) "/steps/" (check.step_id) } { "step " (check.step_id) } }
                                td { (page::time(Some(check.at))) }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="history-heading" {
            h2 id="history-heading" { "History" @if let Some(p) = partition.as_deref() { " of partition " (p) } }
            @if history_of.is_none() {
                p class="none" { "Choose a cell above to see its partition's history." }
            } @else if history.is_empty() {
                p class="none" { "No materializations." }
            } @else {
                (history_table(&history))
            }
        }
    };
    Ok(page::shell(&asset.name, Section::Assets, viewer.caller(), body))
}

fn cell_item(asset: &str, cell: &CellView) -> Markup {
    let status = cell.status.as_str();
    let partition = cell.partition.as_deref().unwrap_or("");
    let label = if partition.is_empty() { "(unpartitioned)".to_owned() } else { partition.to_owned() };
    let point = point_text(cell.point.as_ref());
    html! {
        li class={ "cell-" (status) } data-cell-status=(status) {
            a href={ (asset_href(asset)) "?partition=" (encode(partition)) "#history-heading" } { (page::cut(&label, 20)) }
            @if !point.is_empty() { br; span class="hint" { (page::cut(&point, 24)) } }
            br;
            (status_label(status))
            @if let Some(freshness) = cell.freshness {
                " " span class="hint" data-cell-freshness=(freshness.as_str()) { (freshness.as_str()) }
            }
            @if let (Some(run), Some(step)) = (cell.failed_run, cell.failed_step) {
                " " a href={ "/runs/" (run) "/steps/" (step) } title=(cell.error.as_deref().unwrap_or("")) { "why" }
            }
        }
    }
}

fn history_table(history: &[Materialization]) -> Markup {
    html! {
        table {
            thead { tr {
                th scope="col" class="num" { "#" } th scope="col" { "At" } th scope="col" { "Op" } th scope="col" { "Point" }
                th scope="col" { "Output" } th scope="col" { "Run" } th scope="col" { "Reused" }
            } }
            tbody {
                @for m in history {
                    tr {
                        td class="num" { (m.id) }
                        td { (page::time(Some(m.at))) }
                        td class="mono" { (m.op) }
                        td { (point_text(m.point.as_ref())) }
                        td class="mono" { (m.output_digest.get(..12).unwrap_or(&m.output_digest)) }
                        td { a href={ "/runs/" (m.run_id) "/steps/" (m.step_id) } { "step " (m.step_id) } }
                        td { @if let Some(from) = m.reused_from { "from #" (from) } }
                    }
                }
            }
        }
    }
}

/// The asset's lineage as a graph of assets: what its latest materializations read and
/// what read them, each asset once, an edge where one's materialization read another's.
async fn lineage_graph(
    state: &ApiState,
    name: &str,
    partition: Option<&str>,
) -> Result<Option<Markup>, PageError> {
    let mut asset_of: HashMap<i64, String> = HashMap::new();
    // Each materialization found, with what it read.
    let mut readers: Vec<(String, Vec<i64>)> = Vec::new();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    edges.entry(name.to_owned()).or_default();
    for direction in [LineageDirection::Upstream, LineageDirection::Downstream] {
        let query = LineageQuery { partition: partition.map(str::to_owned), direction: Some(direction) };
        let walk =
            match api::assets::lineage(State(state.clone()), Path(name.to_owned()), Ok(Query(query))).await {
                Ok(axum::Json(walk)) => walk,
                Err(ApiError::NotFound(_)) => return Ok(None),
                Err(error) => return Err(error.into()),
            };
        for id in walk.from {
            asset_of.insert(id, name.to_owned());
        }
        for item in walk.items {
            let m = item.materialization;
            if direction == LineageDirection::Upstream && item.depth == 1 && m.asset != name {
                // Read by the materializations the walk began from.
                edges.entry(name.to_owned()).or_default().insert(m.asset.clone());
            }
            asset_of.insert(m.id, m.asset.clone());
            readers.push((m.asset, m.inputs));
        }
    }
    for (reader, inputs) in &readers {
        let entry = edges.entry(reader.clone()).or_default();
        for input in inputs {
            if let Some(upstream) = asset_of.get(input).filter(|u| *u != reader) {
                entry.insert(upstream.clone());
            }
        }
    }
    let names: Vec<String> = edges.keys().cloned().collect();
    let index: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
    let nodes: Vec<graph::Node> = names
        .iter()
        .enumerate()
        .map(|(i, asset)| graph::Node {
            index: i,
            name: asset.clone(),
            sub: if asset == name { "this asset".to_owned() } else { String::new() },
            class: if asset == name { "state-running".to_owned() } else { "state-done".to_owned() },
            href: Some(asset_href(asset)),
            upstream: edges[asset].iter().filter_map(|u| index.get(u.as_str()).copied()).collect(),
        })
        .collect();
    Ok(graph::draw(&nodes, &format!("Lineage of {name}: the assets it read and the assets that read it")))
}
