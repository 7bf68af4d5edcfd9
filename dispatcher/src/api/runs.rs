//! The runs resource: submit (idempotent by key), state, outputs; and the op list.

use std::path::PathBuf;

use axum::{
    Json,
    extract::{Path, Query, State, rejection::JsonRejection},
    http::StatusCode,
};
use opflow_protocol::RunId;
use serde::{Deserialize, Serialize};

use super::{ApiState, MAX_BODY_BYTES, error::ApiError};
use crate::store::{
    ops::RegisteredOpRow,
    runs::{Cancellation, RunSummary, StepOutput},
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
}

#[derive(Debug, Serialize)]
pub struct SubmitResponse {
    /// True when the key named an existing run.
    pub existing: bool,
    #[serde(flatten)]
    pub run: RunSummary,
}

/// `POST /v1/runs`: 201 with a new run, 200 with the run an earlier request made.
pub async fn submit(
    State(state): State<ApiState>,
    body: Result<Json<SubmitRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<SubmitResponse>), ApiError> {
    let Json(request) = body.map_err(body_rejection)?;
    let file = PathBuf::from(request.file.as_deref().unwrap_or("request"));
    let submission =
        crate::submit::submit(&state.store, &request.plan, &file, request.key.as_deref()).await?;
    let run = summary(&state, submission.run_id).await?;
    let status = if submission.existing { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(SubmitResponse { existing: submission.existing, run })))
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

/// One page of a list; pass `next_cursor` as `cursor` for the next one (absent on the last).
#[derive(Debug, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

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
    let items = state.store.step_outputs(run, query.asset.as_deref(), after, limit).await?;
    let next_cursor =
        (items.len() == limit as usize).then(|| items.last().map(|o| o.step_id.to_string())).flatten();
    Ok(Json(Page { items, next_cursor }))
}

/// What `POST /v1/runs/{id}/cancel` answers.
#[derive(Debug, Serialize)]
pub struct CancelResponse {
    /// False when the run had already finished: nothing changed.
    pub canceled: bool,
    /// What happened, in words.
    pub message: String,
    /// Steps that will never start (queued, waiting or retrying when canceled).
    pub not_started: i64,
    /// Steps that were running; their workers are told to stop them.
    pub running: i64,
    pub run: RunSummary,
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

impl CancelResponse {
    pub fn new(cancellation: Cancellation, run: RunSummary) -> Self {
        match cancellation {
            Cancellation::Canceled { not_started, running } => Self {
                canceled: true,
                message: format!(
                    "canceled run {}: {not_started} step(s) will never start, {running} running step(s) were told to stop",
                    run.run_id
                ),
                not_started,
                running,
                run,
            },
            Cancellation::AlreadyFinished(status) => Self {
                canceled: false,
                message: format!(
                    "run {} had already finished ({}); nothing changed",
                    run.run_id,
                    status.as_str()
                ),
                not_started: 0,
                running: 0,
                run,
            },
        }
    }
}

/// `GET /v1/ops`.
///
/// Paged: `?limit=` (1–1000, default 100) and `?cursor=` from the last page.
pub async fn list_ops(
    State(state): State<ApiState>,
    Query(paging): Query<Paging>,
) -> Result<Json<Page<RegisteredOpRow>>, ApiError> {
    let limit = paging.limit()? as usize;
    let ops = state.store.list_ops().await?;
    let start = match paging.cursor.as_deref() {
        None => 0,
        Some(cursor) => ops
            .iter()
            .position(|op| format!("{}@{}", op.name, op.version) == cursor)
            .map_or(ops.len(), |i| i + 1),
    };
    let items: Vec<RegisteredOpRow> = ops.into_iter().skip(start).take(limit + 1).collect();
    let more = items.len() > limit;
    let items: Vec<RegisteredOpRow> = items.into_iter().take(limit).collect();
    let next_cursor = more.then(|| items.last().map(|op| format!("{}@{}", op.name, op.version))).flatten();
    Ok(Json(Page { items, next_cursor }))
}

async fn summary(state: &ApiState, run: RunId) -> Result<RunSummary, ApiError> {
    state.store.run_summary(run).await?.ok_or_else(|| ApiError::NotFound(format!("no run {run}")))
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
