//! The HTTP API: submit a run, read its state and outputs, list ops, and health and
//! readiness for probes. `router` is apart from serving so tests can call it directly.
//!
//! - [`runs`]: `POST /v1/runs`, `GET /v1/runs/{id}`, `GET /v1/runs/{id}/outputs`.
//! - [`error`]: [`error::ApiError`], the one error type every handler returns.

pub mod error;
pub mod runs;

use std::sync::Arc;

use axum::{Json, Router, extract::DefaultBodyLimit, extract::State, http::StatusCode, routing::get};
use lapin::Connection;
use serde_json::{Value, json};

use crate::store::Store;

/// Largest request body: a plan of a few megabytes is already a very large plan.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// What handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    /// For readiness: the dispatcher is ready only while its broker connection is up.
    pub broker: Arc<Connection>,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/v1/ops", get(runs::list_ops))
        .route("/v1/runs", axum::routing::post(runs::submit))
        .route("/v1/runs/{id}", get(runs::status))
        .route("/v1/runs/{id}/outputs", get(runs::outputs))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// 200 when both PostgreSQL and RabbitMQ answer, 503 (saying which does not) otherwise.
async fn ready(State(state): State<ApiState>) -> (StatusCode, Json<Value>) {
    let database = state.store.ping().await.map_err(|e| e.to_string());
    let broker = if state.broker.status().connected() { Ok(()) } else { Err("not connected".to_owned()) };
    let status =
        if database.is_ok() && broker.is_ok() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let show = |r: Result<(), String>| r.err().unwrap_or_else(|| "ok".into());
    (status, Json(json!({ "database": show(database), "broker": show(broker) })))
}
