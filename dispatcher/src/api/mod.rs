//! The HTTP API: submit a run, read its state and outputs, list ops, and health and
//! readiness for probes. `router` is apart from serving so tests can call it directly.
//!
//! - [`runs`]: `POST /v1/runs`, `GET /v1/runs`, `GET /v1/runs/{id}`, `…/steps`, `…/assets`,
//!   `…/outputs`, `POST /v1/runs/{id}/cancel`.
//! - [`events`]: `GET /v1/runs/{id}/events`, a run's events as resumable Server-Sent Events.
//! - [`queues`]: `GET /v1/queues[/{queue}]`: each op queue's demand, with a forecast.
//! - [`openapi`]: `GET /openapi.json`, generated from the handlers (also `docs/openapi.json`).
//! - [`webhooks`]: `/v1/webhooks[/…]`: subscriptions, deliveries, redelivery (admin scope).
//! - [`auth`]: API tokens and their scopes.
//! - [`error`]: [`error::ApiError`], the one error type every handler returns.
//! - [`types`]: the JSON the API answers (and the CLI prints): its own types, not the store's rows.

pub mod auth;
pub mod error;
pub mod events;
pub mod openapi;
pub mod queues;
pub mod runs;
pub mod types;
pub mod webhooks;

use std::sync::{Arc, Mutex};

use axum::{Json, Router, extract::DefaultBodyLimit, extract::State, http::StatusCode, routing::get};
use serde_json::{Value, json};

use crate::store::Store;

/// Largest request body: a plan of a few megabytes is already a very large plan.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// What handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// On a pool of the API's own: however many requests come, they cannot take the
    /// connections that publishing steps and applying events need.
    pub store: Store,
    /// Whether `/v1/*` needs a token (the `api_auth` setting, resolved for the address).
    pub auth_required: bool,
    /// For readiness: whether this dispatcher leads, and whether its broker session is up.
    pub readiness: Readiness,
    /// Wakes the events streams when their runs get events; ends them on shutdown.
    pub followers: events::Followers,
    /// The `webhooks_allow_private` setting: whether webhook targets may be internal addresses.
    pub webhooks_allow_private: bool,
    /// What `/metrics` serves; shared with the parts of the service that count.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// What `/readyz` reports besides the database: set by the service as it takes or loses
/// the lease and its broker connection. Cheap to clone; clones share the state.
#[derive(Clone, Default)]
pub struct Readiness(Arc<Mutex<ReadinessState>>);

#[derive(Default)]
struct ReadinessState {
    role: Role,
    /// `None` while connected; otherwise why not.
    broker_problem: Option<String>,
}

/// Whether this dispatcher publishes and applies (the leader) or stands by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    #[default]
    Standby,
    Leader,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Standby => "standby",
            Role::Leader => "leader",
        }
    }
}

impl Readiness {
    fn with<T>(&self, f: impl FnOnce(&mut ReadinessState) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    pub fn set_role(&self, role: Role) {
        self.with(|state| {
            state.role = role;
            if role == Role::Standby {
                state.broker_problem = None;
            }
        });
    }

    pub fn broker_up(&self) {
        self.with(|state| state.broker_problem = None);
    }

    pub fn broker_down(&self, why: impl Into<String>) {
        let why = why.into();
        self.with(|state| state.broker_problem = Some(why));
    }

    fn snapshot(&self) -> (Role, Option<String>) {
        self.with(|state| (state.role, state.broker_problem.clone()))
    }
}

pub fn router(state: ApiState) -> Router {
    let v1 = Router::new()
        .route("/v1/ops", get(runs::list_ops))
        .route("/v1/runs", axum::routing::post(runs::submit).get(runs::list))
        .route("/v1/runs/{id}", get(runs::status))
        .route("/v1/runs/{id}/events", get(events::stream))
        .route("/v1/runs/{id}/steps", get(runs::steps))
        .route("/v1/runs/{id}/assets", get(runs::assets))
        .route("/v1/runs/{id}/outputs", get(runs::outputs))
        .route("/v1/runs/{id}/cancel", axum::routing::post(runs::cancel))
        .route("/v1/queues", get(queues::list))
        .route("/v1/queues/{queue}", get(queues::one))
        .merge(webhooks::routes())
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/openapi.json", get(openapi::serve))
        .route("/metrics", get(crate::metrics::scrape))
        .merge(v1)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// 200 when PostgreSQL answers and, on the leader, the broker session is up; 503 (saying
/// what is wrong) otherwise. A standby is ready: it serves the API while it waits.
async fn ready(State(state): State<ApiState>) -> (StatusCode, Json<Value>) {
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
    (status, Json(json!({ "role": role.as_str(), "database": database, "broker": broker })))
}

#[cfg(test)]
mod tests {
    use axum::{
        body::{Body, to_bytes},
        http::{Request, header},
    };
    use tower::ServiceExt;

    use super::*;

    fn app() -> Router {
        router(ApiState {
            store: Store::unconnected(),
            auth_required: false,
            readiness: Readiness::default(),
            followers: events::Followers::polling_only(Default::default()),
            webhooks_allow_private: false,
            metrics: Arc::default(),
        })
    }

    /// Posts `body` to `/v1/runs`; the status and the JSON answer.
    async fn submit(body: Vec<u8>) -> (StatusCode, Value) {
        let request = Request::post("/v1/runs")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap();
        let response = app().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        let json = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
        (status, json)
    }

    #[tokio::test]
    async fn an_oversized_body_is_413_in_the_api_error_shape() {
        let plan = "x".repeat(MAX_BODY_BYTES);
        let (status, body) = submit(serde_json::to_vec(&json!({ "plan": plan })).unwrap()).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        let message = body["error"].as_str().unwrap_or_else(|| panic!("no error message in {body}"));
        for part in [&MAX_BODY_BYTES.to_string(), "partitions and sweeps", "opflow run"] {
            assert!(message.contains(part), "`{part}` missing from: {message}");
        }
    }

    #[tokio::test]
    async fn without_a_token_a_guarded_api_is_401_and_health_stays_open() {
        let app = router(ApiState {
            store: Store::unconnected(),
            auth_required: true,
            readiness: Readiness::default(),
            followers: events::Followers::polling_only(Default::default()),
            webhooks_allow_private: false,
            metrics: Arc::default(),
        });
        let response =
            app.clone().oneshot(Request::get("/v1/ops").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let bytes = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert!(body["error"].as_str().is_some_and(|m| m.contains("Authorization: Bearer")), "{body}");
        let health = app.oneshot(Request::get("/healthz").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(health.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn a_malformed_body_is_400_in_the_api_error_shape() {
        let (status, body) = submit(b"{\"plan\": 7}".to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body["error"].as_str().is_some_and(|m| m.contains("plan")), "{body}");
    }
}
