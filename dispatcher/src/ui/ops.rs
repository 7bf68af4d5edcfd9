//! The ops page: every registered op version with its replicas (running and desired),
//! its queue's demand and publish window, its scaling settings, and its recent failures.

use std::collections::HashMap;

use axum::{
    Extension,
    extract::{Query, State},
    response::Response,
};
use maud::html;
use opflow_api_model::Paging;

use super::{
    page::{self, PageError, Section},
    session::Viewer,
};
use crate::api::{self, state::ApiState};

/// Runs with failures looked through for recent failures, and failed steps read from each.
const FAILED_RUNS_READ: u32 = 50;
const FAILURES_PER_RUN: u32 = 20;
/// Failures listed per op version.
const FAILURES_SHOWN: usize = 3;

/// `GET /ops`.
pub async fn list(
    State(state): State<ApiState>,
    Extension(viewer): Extension<Viewer>,
) -> Result<Response, PageError> {
    let paging = Paging { limit: Some(opflow_api_model::MAX_PAGE), cursor: None };
    let axum::Json(ops) = api::ops::list(State(state.clone()), Ok(Query(paging))).await?;
    let axum::Json(queues) = api::queues::list(State(state.clone())).await?;
    let demand: HashMap<&str, &opflow_api_model::QueueDemand> =
        queues.items.iter().map(|q| (q.op.as_str(), q)).collect();
    let mut failures: HashMap<String, Vec<crate::store::following::FailureRow>> = HashMap::new();
    for failure in state.store.following().recent_failures(FAILED_RUNS_READ, FAILURES_PER_RUN).await? {
        let list = failures.entry(format!("{}@{}", failure.op_name, failure.op_version)).or_default();
        if list.len() < FAILURES_SHOWN {
            list.push(failure);
        }
    }
    let body = html! {
        h1 { "Ops" }
        @if ops.items.is_empty() {
            p class="none" { "No op is registered: " code { "opflow ops add <binary>" } " registers one." }
        } @else {
            table {
                thead { tr {
                    th scope="col" { "Op version" } th scope="col" class="num" { "Replicas" } th scope="col" class="num" { "Desired" }
                    th scope="col" class="num" { "Ready" } th scope="col" class="num" { "Running" } th scope="col" class="num" { "Forecast" }
                    th scope="col" class="num" { "Window" } th scope="col" { "Scaling" } th scope="col" { "Recent failures" }
                } }
                tbody {
                    @for op in &ops.items {
                        @let name = format!("{}@{}", op.name, op.version);
                        @let queue = demand.get(name.as_str());
                        tr data-op=(name) {
                            th scope="row" {
                                span class="mono" { (name) }
                                @if !op.summary.is_empty() { br; span class="hint" { (page::cut(&op.summary, 80)) } }
                                br; span class="hint mono" { (op.queue) " (" (op.queue_type) ")" }
                            }
                            td class="num" { (op.replicas.map_or_else(|| "—".to_owned(), |r| r.to_string())) }
                            td class="num" { (op.desired.map_or_else(|| "—".to_owned(), |d| d.to_string())) }
                            td class="num" { (queue.map_or_else(|| "—".to_owned(), |q| page::thousands(q.ready as i64))) }
                            td class="num" { (queue.map_or_else(|| "—".to_owned(), |q| page::thousands(q.unacked as i64))) }
                            td class="num" { (queue.map_or_else(|| "—".to_owned(), |q| page::thousands(q.forecast as i64))) }
                            td class="num" { (op.window.map_or_else(|| "default".to_owned(), |w| w.to_string())) }
                            td {
                                (op.min) "–" (op.max) " replicas, " (op.value) " messages each"
                                br;
                                span class="hint" {
                                    "activation " (op.activation) ", poll " (op.polling_secs) " s, cooldown " (op.cooldown_secs) " s"
                                    @if let Some(max) = op.max_in_flight { ", at most " (max) " in flight" }
                                    @if let Some(steps) = op.max_steps { ", " (steps) " steps a worker" }
                                    @if let Some(rss) = op.max_rss_mb { ", " (rss) " MiB a worker" }
                                }
                            }
                            td {
                                @match failures.get(&name) {
                                    None => span class="none" { "none" },
                                    Some(list) => ul {
                                        @for f in list {
                                            li {
                                                a href={ "/runs/" (f.run_id) "/steps/" (f.step_id) } { (f.asset) " step " (f.step_id) }
                                                ": " span class="error-message" { (page::cut(f.error.as_deref().unwrap_or(""), 80)) }
                                            }
                                        }
                                    },
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page::shell("Ops", Section::Ops, viewer.caller(), body))
}
