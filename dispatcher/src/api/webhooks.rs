//! The webhooks resource (admin scope): subscribe a URL to how runs end, list and remove
//! subscriptions, list deliveries (with their attempts) and send one again. Also the
//! `notify` part of `POST /v1/runs` (a run's own target).
//!
//! - `POST /v1/webhooks` `{"url", "events": [...], "secret"?}`: 201; the secret (given or
//!   generated) is in this answer only.
//! - `GET /v1/webhooks`, `DELETE /v1/webhooks/{id}`.
//! - `GET /v1/webhooks/deliveries?failed=true&limit=&cursor=`: newest first.
//! - `GET /v1/webhooks/deliveries/{id}`: one delivery with every attempt.
//! - `POST /v1/webhooks/deliveries/{id}/redeliver`: the same message (same `webhook-id`,
//!   same body) again, now, with a fresh retry window.

use axum::{
    Json, Router,
    extract::{Path, Query, State, rejection::JsonRejection},
    http::StatusCode,
    routing::{delete, get, post},
};
use opflow_api_model::{
    AddWebhookRequest, AttemptView, CreatedWebhook, DeliveriesQuery, DeliveryDetail, DeliveryView, ErrorBody,
    NotifyRequest, Page, WebhookView,
};

use super::{
    error::ApiError,
    params::{self, number_cursor, page_limit},
    state::ApiState,
};
use crate::{
    store::webhooks::{Redelivery, RunNotify},
    webhooks::{
        EVENTS,
        sign::{Secret, SecretError},
        target,
    },
};

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/webhooks", post(add).get(list))
        .route("/v1/webhooks/deliveries", get(deliveries))
        .route("/v1/webhooks/deliveries/{id}", get(delivery))
        .route("/v1/webhooks/deliveries/{id}/redeliver", post(redeliver))
        .route("/v1/webhooks/{id}", delete(remove))
}

/// A run's notify target, checked (URL and addresses, secret), and the secret to answer
/// if it was generated.
pub async fn prepare_notify(
    state: &ApiState,
    notify: &NotifyRequest,
) -> Result<(RunNotify, Option<String>), ApiError> {
    let url = target::check_url(&notify.url, state.webhooks_allow_private, target::Lookup::AtDelivery)
        .await
        .map_err(|e| ApiError::BadRequest(format!("notify: {e}")))?;
    let (secret, generated) = secret_or_generated(notify.secret.as_deref())
        .map_err(|e| ApiError::BadRequest(format!("notify: {e}")))?;
    Ok((
        RunNotify { url: url.to_string(), secret: secret.expose().to_owned() },
        generated.then(|| secret.expose().to_owned()),
    ))
}

fn secret_or_generated(given: Option<&str>) -> Result<(Secret, bool), SecretError> {
    match given {
        Some(text) => Ok((Secret::parse(text)?, false)),
        None => Ok((Secret::generate(), true)),
    }
}

fn body_rejection(rejection: JsonRejection) -> ApiError {
    ApiError::BadRequest(rejection.body_text())
}

#[utoipa::path(post, path = "/v1/webhooks", operation_id = "add_webhook", tag = "webhooks", request_body = AddWebhookRequest,
    responses((status = 201, description = "The subscription and, this once, its secret", body = CreatedWebhook), (status = 400, description = "A malformed request", body = ErrorBody), (status = 401, description = "No valid token", body = ErrorBody), (status = 403, description = "The token lacks the admin scope", body = ErrorBody)))]
/// `POST /v1/webhooks`.
pub async fn add(
    State(state): State<ApiState>,
    body: Result<Json<AddWebhookRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedWebhook>), ApiError> {
    let Json(request) = body.map_err(body_rejection)?;
    let mut events = Vec::new();
    for event in &request.events {
        if !EVENTS.contains(&event.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "unknown event `{event}`; subscribe to any of {}",
                EVENTS.join(", ")
            )));
        }
        if !events.contains(event) {
            events.push(event.clone());
        }
    }
    if events.is_empty() {
        return Err(ApiError::BadRequest(format!("no events; subscribe to any of {}", EVENTS.join(", "))));
    }
    let url = target::check_url(&request.url, state.webhooks_allow_private, target::Lookup::Now)
        .await
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let (secret, _) =
        secret_or_generated(request.secret.as_deref()).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let row = state.store.webhooks().add(url.as_str(), &events, secret.expose()).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedWebhook { webhook: row.into(), secret: secret.expose().to_owned() }),
    ))
}

#[utoipa::path(get, path = "/v1/webhooks", operation_id = "list_webhooks", tag = "webhooks",
    responses((status = 200, description = "Every subscription", body = Page<WebhookView>), (status = 400, description = "A malformed request", body = ErrorBody), (status = 401, description = "No valid token", body = ErrorBody), (status = 403, description = "The token lacks the admin scope", body = ErrorBody)))]
/// `GET /v1/webhooks`.
pub async fn list(State(state): State<ApiState>) -> Result<Json<Page<WebhookView>>, ApiError> {
    let items = state.store.webhooks().list().await?.into_iter().map(WebhookView::from).collect();
    Ok(Json(Page { items, next_cursor: None }))
}

#[utoipa::path(delete, path = "/v1/webhooks/{id}", operation_id = "remove_webhook", tag = "webhooks", params(("id" = String, Path, description = "The subscription id")),
    responses((status = 204, description = "Removed; its pending deliveries are given up"), (status = 404, description = "No such subscription", body = ErrorBody), (status = 400, description = "A malformed request", body = ErrorBody), (status = 401, description = "No valid token", body = ErrorBody), (status = 403, description = "The token lacks the admin scope", body = ErrorBody)))]
/// `DELETE /v1/webhooks/{id}`: 204; its pending deliveries are given up.
pub async fn remove(State(state): State<ApiState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let id = params::uuid(&id, "webhook")?;
    if state.store.webhooks().remove(id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("no webhook {id}; `GET /v1/webhooks` lists them")))
    }
}

#[utoipa::path(get, path = "/v1/webhooks/deliveries", operation_id = "list_deliveries", tag = "webhooks", params(DeliveriesQuery),
    responses((status = 200, description = "Deliveries, newest first", body = Page<DeliveryView>), (status = 400, description = "A malformed request", body = ErrorBody), (status = 401, description = "No valid token", body = ErrorBody), (status = 403, description = "The token lacks the admin scope", body = ErrorBody)))]
/// `GET /v1/webhooks/deliveries?failed=true&limit=&cursor=`.
pub async fn deliveries(
    State(state): State<ApiState>,
    query: Result<Query<DeliveriesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page<DeliveryView>>, ApiError> {
    let Query(query) = query?;
    let limit = page_limit(query.limit)?;
    let before = number_cursor::<i64>(query.cursor.as_deref())?;
    let rows = state.store.webhooks().deliveries(query.failed, before, limit).await?;
    let next_cursor =
        (rows.len() == limit as usize).then(|| rows.last().map(|r| r.seq.to_string())).flatten();
    Ok(Json(Page { items: rows.into_iter().map(DeliveryView::from).collect(), next_cursor }))
}

#[utoipa::path(get, path = "/v1/webhooks/deliveries/{id}", operation_id = "get_delivery", tag = "webhooks", params(("id" = String, Path, description = "The delivery id")),
    responses((status = 200, description = "The delivery with every attempt", body = DeliveryDetail), (status = 404, description = "No such delivery", body = ErrorBody), (status = 400, description = "A malformed request", body = ErrorBody), (status = 401, description = "No valid token", body = ErrorBody), (status = 403, description = "The token lacks the admin scope", body = ErrorBody)))]
/// `GET /v1/webhooks/deliveries/{id}`.
pub async fn delivery(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<DeliveryDetail>, ApiError> {
    let id = params::uuid(&id, "delivery")?;
    let (row, attempts) = state
        .store
        .webhooks()
        .delivery(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no delivery {id}")))?;
    Ok(Json(DeliveryDetail {
        delivery: row.into(),
        attempt_log: attempts.into_iter().map(AttemptView::from).collect(),
    }))
}

#[utoipa::path(post, path = "/v1/webhooks/deliveries/{id}/redeliver", operation_id = "redeliver", tag = "webhooks", params(("id" = String, Path, description = "The delivery id")),
    responses((status = 200, description = "Queued again, with the same webhook-id and body", body = DeliveryView), (status = 404, description = "No such delivery", body = ErrorBody), (status = 409, description = "Its subscription was removed", body = ErrorBody), (status = 400, description = "A malformed request", body = ErrorBody), (status = 401, description = "No valid token", body = ErrorBody), (status = 403, description = "The token lacks the admin scope", body = ErrorBody)))]
/// `POST /v1/webhooks/deliveries/{id}/redeliver`.
pub async fn redeliver(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<DeliveryView>, ApiError> {
    let id = params::uuid(&id, "delivery")?;
    match state.store.webhooks().redeliver(id).await? {
        Redelivery::Queued(row) => Ok(Json((*row).into())),
        Redelivery::NotFound => Err(ApiError::NotFound(format!("no delivery {id}"))),
        Redelivery::SubscriptionRemoved => Err(ApiError::Conflict(format!(
            "delivery {id} was for a subscription that has been removed; subscribe the URL again"
        ))),
    }
}
