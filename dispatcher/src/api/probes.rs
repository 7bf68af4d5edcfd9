//! What probes and scrapers call: `/healthz` (the process answers) and `/readyz` (it can
//! do its work), outside the token guard, and `/metrics` (Prometheus), behind it when the
//! API needs tokens or alone on `metrics_addr`. Nothing here names a run or a plan.

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

/// 200 when PostgreSQL answers and, on the leader, the broker session is up; 503 otherwise.
/// A standby is ready: it serves the API while it waits. Anyone may call this, so the answer
/// says which part is down, never why: error texts name hosts, users and addresses. The why
/// goes to the dispatcher's log (the service logs the broker's as it happens).
pub async fn ready(State(state): State<ApiState>) -> (StatusCode, Json<ReadyStatus>) {
    let database = match state.store.ping().await {
        Ok(()) => "ok",
        Err(error) => {
            tracing::warn!(error = %error, "readiness: PostgreSQL does not answer");
            "unavailable; the dispatcher's log says why"
        }
    };
    let (role, broker_down) = state.readiness.snapshot();
    let broker = match (role, broker_down) {
        (Role::Standby, _) => "not used while standing by",
        (Role::Leader, false) => "ok",
        (Role::Leader, true) => "unavailable; the dispatcher's log says why",
    };
    let ready = database == "ok" && (role == Role::Standby || broker == "ok");
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (
        status,
        Json(ReadyStatus {
            role: role.as_str().to_owned(),
            database: database.into(),
            broker: broker.into(),
        }),
    )
}

/// `GET /metrics`: every metric, with the queue depths read now (`api::metrics`).
pub async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    let body = state.metrics.render(&state.store).await;
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], body)
}
