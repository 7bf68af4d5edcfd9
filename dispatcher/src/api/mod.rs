//! The HTTP API: submit a run, read its state and outputs, list ops, and health and
//! readiness for probes. `router` is apart from serving so tests can call it directly.
//!
//! What every request and answer holds is `opflow_api_model`, the contract this module
//! serves and the CLI reads; store rows become those types in [`from_rows`].
//!
//! - [`runs`]: `POST /v1/runs`, `GET /v1/runs`, `GET /v1/runs/{id}`, `…/steps`, `…/assets`,
//!   `…/outputs`, `POST /v1/runs/{id}/cancel`.
//! - [`events`]: `GET /v1/runs/{id}/events`, a run's events as resumable Server-Sent Events,
//!   woken by [`followers`].
//! - [`assets`]: `GET /v1/assets[/{asset}[/partitions|/history|/lineage|/checks]]`, the catalog.
//! - [`ops`]: `GET /v1/ops`; [`queues`]: `GET /v1/queues[/{queue}]`, each op queue's demand.
//! - [`schedules`]: `/v1/schedules[/…]`: plans that run themselves on a cron.
//! - [`webhooks`]: `/v1/webhooks[/…]`: subscriptions, deliveries, redelivery (admin scope).
//! - [`openapi`]: `GET /openapi.json`, generated from the handlers (also `docs/openapi.json`).
//! - [`probes`]: `/healthz`, `/readyz` and `/metrics` (the registry is [`metrics`]).
//! - [`auth`]: API tokens and their scopes; [`params`]: ids, page limits and cursors;
//!   [`stream_limits`]: how many event streams one caller may hold open.
//! - [`state`]: what handlers share; [`error`]: [`error::ApiError`], the one error type.

pub mod assets;
pub mod auth;
pub mod error;
pub mod events;
pub mod followers;
pub mod from_rows;
pub mod metrics;
pub mod openapi;
pub mod ops;
pub mod params;
pub mod probes;
pub mod queues;
pub mod runs;
pub mod schedules;
pub mod state;
pub mod stream_limits;
pub mod webhooks;

use axum::{Router, extract::DefaultBodyLimit, routing::get};

pub use params::MAX_BODY_BYTES;
pub use state::{ApiState, Readiness, Role};

/// Every route. `/metrics` is behind the token guard (`read`) like `/v1/*`: a scraper
/// without a token reads it from [`metrics_router`] on `metrics_addr`.
pub fn router(state: ApiState) -> Router {
    let v1 = Router::new()
        .route("/metrics", get(probes::metrics))
        .route("/v1/ops", get(ops::list))
        .route("/v1/runs", axum::routing::post(runs::submit).get(runs::list))
        .route("/v1/runs/{id}", get(runs::status))
        .route("/v1/runs/{id}/events", get(events::stream))
        .route("/v1/runs/{id}/steps", get(runs::steps))
        .route("/v1/runs/{id}/assets", get(runs::assets))
        .route("/v1/runs/{id}/outputs", get(runs::outputs))
        .route("/v1/runs/{id}/cancel", axum::routing::post(runs::cancel))
        .route("/v1/queues", get(queues::list))
        .route("/v1/queues/{queue}", get(queues::one))
        .route("/v1/assets", get(assets::list))
        .route("/v1/assets/{asset}", get(assets::one))
        .route("/v1/assets/{asset}/partitions", get(assets::cells))
        .route("/v1/assets/{asset}/history", get(assets::history))
        .route("/v1/assets/{asset}/lineage", get(assets::lineage))
        .route("/v1/assets/{asset}/checks", get(assets::checks))
        .route("/v1/schedules", axum::routing::post(schedules::add).get(schedules::list))
        .route("/v1/schedules/{name}", get(schedules::one).delete(schedules::remove))
        .route("/v1/schedules/{name}/pause", axum::routing::post(schedules::pause))
        .route("/v1/schedules/{name}/resume", axum::routing::post(schedules::resume))
        .route("/v1/schedules/{name}/backfill", axum::routing::post(schedules::backfill))
        .merge(webhooks::routes())
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_token));
    Router::new()
        .route("/healthz", get(probes::health))
        .route("/readyz", get(probes::ready))
        .route("/openapi.json", get(openapi::serve))
        .merge(v1)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(params::refuse_nul))
        .with_state(state)
}

/// `/metrics` alone, without a token: what the dispatcher serves on `metrics_addr`, an
/// address of its own that only the scraper's network reaches.
pub fn metrics_router(state: ApiState) -> Router {
    Router::new().route("/metrics", get(probes::metrics)).with_state(state)
}

#[cfg(test)]
mod tests {
    use axum::{
        body::{Body, to_bytes},
        http::{Request, header},
    };
    use std::sync::Arc;

    use axum::http::StatusCode;
    use serde_json::{Value, json};
    use tower::ServiceExt;

    use super::*;
    use crate::store::Store;

    fn app() -> Router {
        router(ApiState {
            store: Store::unconnected(),
            auth_required: false,
            readiness: Readiness::default(),
            followers: followers::Followers::polling_only(Default::default()),
            webhooks_allow_private: false,
            metrics: Arc::default(),
            streams: Default::default(),
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
            followers: followers::Followers::polling_only(Default::default()),
            webhooks_allow_private: false,
            metrics: Arc::default(),
            streams: Default::default(),
        });
        let response =
            app.clone().oneshot(Request::get("/v1/ops").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let bytes = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert!(body["error"].as_str().is_some_and(|m| m.contains("Authorization: Bearer")), "{body}");
        let metrics =
            app.clone().oneshot(Request::get("/metrics").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(metrics.status(), StatusCode::UNAUTHORIZED, "/metrics is behind the token guard");
        let health = app.oneshot(Request::get("/healthz").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(health.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn a_nul_anywhere_in_a_url_is_400_before_any_handler() {
        for uri in [
            "/v1/runs/01a23c52-4289-75da-8d1b-2fee89712c86/steps?asset=a%00b",
            "/v1/runs/01a23c52-4289-75da-8d1b-2fee89712c86/outputs?asset=%00",
            "/v1/queues/opflow.op.x%00",
            "/v1/runs?cursor=1%00",
        ] {
            let response = app().oneshot(Request::get(uri).body(Body::empty()).unwrap()).await.unwrap();
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{uri}");
            let bytes = to_bytes(response.into_body(), 1 << 20).await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap();
            assert!(body["error"].as_str().is_some_and(|m| m.contains("NUL")), "{uri}: {body}");
        }
    }

    #[tokio::test]
    async fn a_malformed_body_is_400_in_the_api_error_shape() {
        let (status, body) = submit(b"{\"plan\": 7}".to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body["error"].as_str().is_some_and(|m| m.contains("plan")), "{body}");
    }
}
