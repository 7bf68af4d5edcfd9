//! The runs resource: submit (idempotent by key), state, outputs; and the op list.

use std::path::PathBuf;

use axum::{
    Json,
    extract::{Path, Query, State, rejection::JsonRejection},
    http::StatusCode,
};
use opflow_protocol::RunId;
use serde::Deserialize;

use super::{
    ApiState, MAX_BODY_BYTES,
    error::ApiError,
    types::{CancelResponse, OpVersion, Page, RunSummary, StepOutput, SubmitResponse},
    webhooks::SubmitAnswer,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// The plan, as YAML text.
    pub plan: String,
    /// A name for the plan in messages; defaults to `request`.
    #[serde(default)]
    pub file: Option<String>,
    /// Idempotency key: the same key returns the same run.
    #[serde(default)]
    pub key: Option<String>,
    /// Where to send a webhook when this run ends (`{"url", "secret"?}`).
    #[serde(default)]
    pub notify: Option<super::webhooks::NotifyRequest>,
}

/// `POST /v1/runs`: 201 with a new run, 200 with the run an earlier request made. A
/// `notify` target is checked first and stored with the run; a generated secret is
/// answered as `notify_secret` (only for a new run).
pub async fn submit(
    State(state): State<ApiState>,
    body: Result<Json<SubmitRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<SubmitAnswer>), ApiError> {
    let Json(request) = body.map_err(body_rejection)?;
    let file = PathBuf::from(request.file.as_deref().unwrap_or("request"));
    let (notify, generated_secret) = match &request.notify {
        Some(notify) => {
            let (notify, generated) = super::webhooks::prepare_notify(&state, notify).await?;
            (Some(notify), generated)
        }
        None => (None, None),
    };
    let submission = crate::submit::submit_notifying(
        &state.store,
        &request.plan,
        &file,
        request.key.as_deref(),
        notify.as_ref(),
    )
    .await?;
    let run = summary(&state, submission.run_id).await?;
    let status = if submission.existing { StatusCode::OK } else { StatusCode::CREATED };
    let notify_secret = generated_secret.filter(|_| !submission.existing);
    Ok((
        status,
        Json(SubmitAnswer { response: SubmitResponse { existing: submission.existing, run }, notify_secret }),
    ))
}

/// `GET /v1/runs/{id}`.
pub async fn status(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<RunSummary>, ApiError> {
    Ok(Json(summary(&state, parse_run_id(&id)?).await?))
}

/// The most items a page may hold, and how many it holds without `limit`.
pub const MAX_PAGE: u32 = 1000;
pub const DEFAULT_PAGE: u32 = 100;

/// `limit` and `cursor` of a paged list.
#[derive(Debug, Deserialize)]
pub struct Paging {
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

impl Paging {
    fn limit(&self) -> Result<u32, ApiError> {
        match self.limit {
            None => Ok(DEFAULT_PAGE),
            Some(n @ 1..=MAX_PAGE) => Ok(n),
            Some(n) => Err(ApiError::BadRequest(format!("limit {n} is not between 1 and {MAX_PAGE}"))),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct OutputsQuery {
    pub asset: Option<String>,
    #[serde(flatten)]
    pub paging: Paging,
}

/// `GET /v1/runs/{id}/outputs[?asset=name]`.
///
/// Paged by step id: `?limit=` (1–1000, default 100) and `?cursor=` from the last page.
pub async fn outputs(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(query): Query<OutputsQuery>,
) -> Result<Json<Page<StepOutput>>, ApiError> {
    let run = parse_run_id(&id)?;
    let limit = query.paging.limit()?;
    let after = match query.paging.cursor.as_deref() {
        None => None,
        Some(cursor) => Some(cursor.parse::<u32>().map_err(|_| {
            ApiError::BadRequest(format!("cursor `{cursor}` is not one this API gave out; start without one"))
        })?),
    };
    summary(&state, run).await?;
    let items: Vec<StepOutput> = state
        .store
        .step_outputs(run, query.asset.as_deref(), after, limit)
        .await?
        .into_iter()
        .map(StepOutput::from)
        .collect();
    let next_cursor =
        (items.len() == limit as usize).then(|| items.last().map(|o| o.step_id.to_string())).flatten();
    Ok(Json(Page { items, next_cursor }))
}

/// `POST /v1/runs/{id}/cancel`: 200 either way; `canceled` says whether anything changed.
pub async fn cancel(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<CancelResponse>, ApiError> {
    let run = parse_run_id(&id)?;
    let cancellation =
        state.store.cancel_run(run).await?.ok_or_else(|| ApiError::NotFound(format!("no run {run}")))?;
    let summary = summary(&state, run).await?;
    Ok(Json(CancelResponse::new(cancellation, summary)))
}

/// `GET /v1/ops`.
///
/// Paged: `?limit=` (1–1000, default 100) and `?cursor=` from the last page.
pub async fn list_ops(
    State(state): State<ApiState>,
    Query(paging): Query<Paging>,
) -> Result<Json<Page<OpVersion>>, ApiError> {
    let limit = paging.limit()? as usize;
    let ops = state.store.list_ops().await?;
    let start = match paging.cursor.as_deref() {
        None => 0,
        Some(cursor) => ops
            .iter()
            .position(|op| format!("{}@{}", op.name, op.version) == cursor)
            .map_or(ops.len(), |i| i + 1),
    };
    let items: Vec<OpVersion> = ops.into_iter().skip(start).take(limit + 1).map(OpVersion::from).collect();
    let more = items.len() > limit;
    let items: Vec<OpVersion> = items.into_iter().take(limit).collect();
    let next_cursor = more.then(|| items.last().map(|op| format!("{}@{}", op.name, op.version))).flatten();
    Ok(Json(Page { items, next_cursor }))
}

async fn summary(state: &ApiState, run: RunId) -> Result<RunSummary, ApiError> {
    let summary =
        state.store.run_summary(run).await?.ok_or_else(|| ApiError::NotFound(format!("no run {run}")))?;
    Ok(summary.into())
}

/// A body that is not a submit request, as an error in the API's JSON shape (axum's own
/// rejections are plain text). An oversized body is 413 and says what to do instead.
fn body_rejection(rejection: JsonRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::PayloadTooLarge(format!(
            "the request body is over the limit of {MAX_BODY_BYTES} bytes; describe many steps with \
             partitions and sweeps instead of listing them, or submit the plan file with `opflow run <plan>`"
        ));
    }
    ApiError::BadRequest(rejection.body_text())
}

fn parse_run_id(id: &str) -> Result<RunId, ApiError> {
    id.parse().map_err(|_| ApiError::BadRequest(format!("`{id}` is not a run id (a UUID)")))
}
