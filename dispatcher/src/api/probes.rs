//! What probes and scrapers call, outside the token guard: `/healthz` (the process
//! answers), `/readyz` (it can do its work) and `/metrics` (Prometheus). Nothing here names
//! a run or a plan.

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
};
use opflow_api_model::ReadyStatus;

use super::{
    metrics::CONTENT_TYPE,
    state::{ApiState, Role},
};

/// `GET /healthz`: 200 while the process answers.
pub async fn health() -> &'static str {
    "ok"
}

/// 200 when PostgreSQL answers and, on the leader, the broker session is up; 503 (saying
/// what is wrong) otherwise. A standby is ready: it serves the API while it waits.
pub async fn ready(State(state): State<ApiState>) -> (StatusCode, Json<ReadyStatus>) {
    let database = state.store.ping().await.map_err(|e| e.to_string());
    let (role, broker_problem) = state.readiness.snapshot();
    let broker = match (role, broker_problem) {
        (Role::Standby, _) => "not used while standing by".to_owned(),
        (Role::Leader, None) => "ok".to_owned(),
        (Role::Leader, Some(problem)) => problem,
    };
    let ready = database.is_ok() && (role == Role::Standby || broker == "ok");
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let database = database.err().unwrap_or_else(|| "ok".into());
    (status, Json(ReadyStatus { role: role.as_str().to_owned(), database, broker }))
}

/// `GET /metrics`: every metric, with the queue depths read now (`api::metrics`).
pub async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    let body = state.metrics.render(&state.store).await;
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], body)
}
