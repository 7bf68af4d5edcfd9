//! The runs resource: submit (idempotent by key), list, state, steps, assets, outputs,
//! cancel; and the op list.

use std::path::PathBuf;

use axum::{
    Extension, Json,
    extract::{
        Path, Query, State,
        rejection::{JsonRejection, QueryRejection},
    },
    http::{HeaderMap, StatusCode},
};
use chrono::{DateTime, Utc};
use opflow_api_model::{
    AssetInfo, AssetOrder, AssetsQuery, CancelResponse, ErrorBody, IDEMPOTENCY_KEY, OutputsQuery, Page,
    RunListItem, RunSummary, RunsQuery, StepInfo, StepOutput, StepsQuery, SubmitRequest, SubmitResponse,
};
use opflow_protocol::RunId;

use crate::plan::MAX_QUOTED_NAME_BYTES;

use super::{
    auth::Caller,
    error::ApiError,
    from_rows::cancel_response,
    params::{MAX_BODY_BYTES, bad_cursor, number_cursor, page_limit, run_id},
    state::ApiState,
};
use crate::store::{
    self,
    following::{AssetQuery, RunFilter},
    runs::{IdempotencyKey, RunOptions},
};

#[utoipa::path(post, path = "/v1/runs", operation_id = "submit_run", tag = "runs",
    params(("Idempotency-Key" = Option<String>, Header, description = "Submitting the same key again returns the same run")),
    request_body = SubmitRequest,
    responses(
        (status = 201, description = "A new run", body = SubmitResponse),
        (status = 200, description = "The run an earlier request with this key made", body = SubmitResponse),
        (status = 400, description = "A malformed request", body = ErrorBody),
        (status = 403, description = "`owner` names another team than the token's", body = ErrorBody),
        (status = 409, description = "The key was used for a different plan", body = ErrorBody),
        (status = 413, description = "The body is over 4 MiB", body = ErrorBody),
        (status = 422, description = "The plan is invalid; `problems` says where and why", body = ErrorBody),
    ))]
/// `POST /v1/runs`: 201 with a new run, 200 with the run an earlier request made.
///
/// `Idempotency-Key: K` (or `"key": "K"` in the body; both must agree when both are given):
/// a request with a key already used for the same plan returns that run, with a
/// different plan it is 409. A key belongs to the token that used it: another token's
/// equal key makes (or finds) another run. A `notify` target is checked first and stored with the run;
/// a generated secret is answered as `notify_secret` (only for a new run).
pub async fn submit(
    State(state): State<ApiState>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    body: Result<Json<SubmitRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<SubmitResponse>), ApiError> {
    let Json(request) = body.map_err(body_rejection)?;
    let header_key = match headers.get(IDEMPOTENCY_KEY) {
        None => None,
        Some(value) => Some(value.to_str().map_err(|_| {
            ApiError::BadRequest("the Idempotency-Key header is not visible ASCII text".to_owned())
        })?),
    };
    let key = match (header_key, request.key.as_deref()) {
        (Some(header), Some(body)) if header != body => {
            return Err(ApiError::BadRequest(
                "the Idempotency-Key header and the body's key differ; give one".into(),
            ));
        }
        (Some(key), _) | (None, Some(key)) => Some(key),
        (None, None) => None,
    };
    let file = request.file.as_deref().unwrap_or("request");
    if file.len() > MAX_QUOTED_NAME_BYTES {
        // Every problem of the plan would quote it.
        return Err(ApiError::BadRequest(format!(
            "`file` is {} bytes, over the limit of {MAX_QUOTED_NAME_BYTES}; give the plan file's name",
            file.len()
        )));
    }
    let file = PathBuf::from(file);
    let (notify, generated_secret) = match &request.notify {
        Some(notify) => {
            let (notify, generated) = super::webhooks::prepare_notify(&state, notify).await?;
            (Some(notify), generated)
        }
        None => (None, None),
    };
    // A key is the caller's own: another token's equal key names another run.
    let key_owner = caller.as_ref().map_or("", |Extension(caller)| caller.name.as_str());
    let key = key.map(|key| IdempotencyKey { owner: key_owner, key });
    let partitions = match request.partitions.as_deref() {
        Some(text) => Some(
            text.parse::<crate::plan::backfill::PartitionSelection>()
                .map_err(|why| ApiError::BadRequest(format!("`partitions`: {why}")))?,
        ),
        None => None,
    };
    let mut owner = run_owner(caller.as_ref().map(|Extension(caller)| caller), &request)?;
    owner.partitions = partitions.as_ref();
    let submission =
        crate::submit::submit_notifying(&state.store, &request.plan, &file, key, notify.as_ref(), owner)
            .await?;
    let run = summary(&state, submission.run_id).await?;
    let status = if submission.existing { StatusCode::OK } else { StatusCode::CREATED };
    let notify_secret = generated_secret.filter(|_| !submission.existing);
    let left_out = submission
        .left_out
        .iter()
        .map(|l| opflow_api_model::LeftOutAsset { asset: l.asset.clone(), why: l.why.clone() })
        .collect();
    Ok((status, Json(SubmitResponse { existing: submission.existing, notify_secret, left_out, run })))
}

/// Whose the run is and its priority: a token submits as its team (or its name), and may
/// not name another owner; a caller without a token (an API without tokens) names its own,
/// or is `local`.
fn run_owner<'a>(caller: Option<&'a Caller>, request: &'a SubmitRequest) -> Result<RunOptions<'a>, ApiError> {
    if let Some(asked) = request.owner.as_deref() {
        // Checked before any message quotes it.
        crate::submit::check_owner(asked).map_err(|why| ApiError::BadRequest(format!("`owner` {why}")))?;
    }
    let owner = match (caller, request.owner.as_deref()) {
        (Some(caller), Some(asked)) if asked != caller.owner() => {
            return Err(ApiError::Forbidden(format!(
                "`owner` is `{asked}`, but this token submits for `{}`; leave `owner` out, or use a token of that team",
                caller.owner()
            )));
        }
        (Some(caller), _) => caller.owner(),
        (None, Some(asked)) => asked,
        (None, None) => store::runs::DEFAULT_OWNER,
    };
    if let Some(priority) = request.priority
        && !(1..=crate::plan::MAX_PRIORITY).contains(&priority)
    {
        return Err(ApiError::BadRequest(format!(
            "`priority` is {priority}; use 1 to {} (default: the plan's, else {})",
            crate::plan::MAX_PRIORITY,
            crate::plan::DEFAULT_PRIORITY
        )));
    }
    let only = request.only.map(|only| match only {
        opflow_api_model::OnlyCells::Missing => crate::plan::Only::Missing,
        opflow_api_model::OnlyCells::Failed => crate::plan::Only::Failed,
    });
    Ok(RunOptions { owner, priority: request.priority, no_reuse: request.no_reuse, partitions: None, only })
}

#[utoipa::path(get, path = "/v1/runs/{id}", operation_id = "get_run", tag = "runs", params(("id" = String, Path, description = "The run id (a UUID)")),
    responses((status = 200, body = RunSummary), (status = 400, description = "A malformed id, query or cursor", body = ErrorBody), (status = 404, description = "No such run", body = ErrorBody)))]
/// `GET /v1/runs/{id}`.
pub async fn status(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<RunSummary>, ApiError> {
    Ok(Json(summary(&state, run_id(&id)?).await?))
}

/// Refuses a filter no plan or owner name could match (longer than any such name can be)
/// before it reaches the database; the answer does not quote it.
fn check_filter(name: &str, value: Option<&str>, max: usize) -> Result<(), ApiError> {
    match value {
        Some(text) if text.len() > max => Err(ApiError::BadRequest(format!(
            "`{name}` is {} bytes; a {name} name is at most {max}",
            text.len()
        ))),
        _ => Ok(()),
    }
}

#[utoipa::path(get, path = "/v1/runs", operation_id = "list_runs", tag = "runs", params(RunsQuery),
    responses((status = 200, description = "Runs, newest first", body = Page<RunListItem>), (status = 400, description = "A malformed id, query or cursor", body = ErrorBody)))]
/// `GET /v1/runs[?status=][&plan=][&owner=]`: runs newest first, paged (`?limit=`, `?cursor=`).
pub async fn list(
    State(state): State<ApiState>,
    query: Result<Query<RunsQuery>, QueryRejection>,
) -> Result<Json<Page<RunListItem>>, ApiError> {
    let Query(query) = query?;
    let limit = page_limit(query.limit)?;
    let after = query.cursor.as_deref().map(parse_run_cursor).transpose()?;
    check_filter("plan", query.plan.as_deref(), crate::plan::MAX_NAME_LEN)?;
    check_filter("owner", query.owner.as_deref(), crate::submit::MAX_OWNER_BYTES)?;
    let items: Vec<RunListItem> = state
        .store
        .following()
        .runs(
            &RunFilter {
                status: query.status.map(Into::into),
                plan: query.plan.as_deref(),
                owner: query.owner.as_deref(),
            },
            after,
            limit,
        )
        .await?
        .into_iter()
        .map(RunListItem::from)
        .collect();
    let next_cursor = (items.len() == limit as usize)
        .then(|| items.last().map(|r| format!("{}_{}", r.created_at.timestamp_micros(), r.run_id)))
        .flatten();
    Ok(Json(Page { items, next_cursor }))
}

fn parse_run_cursor(cursor: &str) -> Result<(DateTime<Utc>, uuid::Uuid), ApiError> {
    let parsed = cursor.split_once('_').and_then(|(micros, id)| {
        Some((DateTime::from_timestamp_micros(micros.parse().ok()?)?, id.parse().ok()?))
    });
    parsed.ok_or_else(|| bad_cursor(cursor))
}

#[utoipa::path(get, path = "/v1/runs/{id}/steps", operation_id = "list_steps", tag = "runs", params(("id" = String, Path, description = "The run id (a UUID)"), StepsQuery),
    responses((status = 200, description = "The run's steps by id", body = Page<StepInfo>), (status = 400, description = "A malformed id, query or cursor", body = ErrorBody), (status = 404, description = "No such run, or no such asset in it", body = ErrorBody)))]
/// `GET /v1/runs/{id}/steps[?asset=&status=]`: the run's steps by id, paged.
pub async fn steps(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    query: Result<Query<StepsQuery>, QueryRejection>,
) -> Result<Json<Page<StepInfo>>, ApiError> {
    let Query(query) = query?;
    let run = run_id(&id)?;
    let limit = page_limit(query.limit)?;
    let after = number_cursor(query.cursor.as_deref())?;
    exists(&state, run).await?;
    let range = asset_steps(&state, run, query.asset.as_deref()).await?;
    let items: Vec<StepInfo> = state
        .store
        .following()
        .steps(run, range, query.status.map(Into::into), after, limit)
        .await?
        .into_iter()
        .map(StepInfo::from)
        .collect();
    let next_cursor =
        (items.len() == limit as usize).then(|| items.last().map(|s| s.step_id.to_string())).flatten();
    Ok(Json(Page { items, next_cursor }))
}

/// The step ids of `?asset=`, or `None` for every step; 404 when the run has no such asset.
async fn asset_steps(
    state: &ApiState,
    run: RunId,
    asset: Option<&str>,
) -> Result<Option<(i32, i32)>, ApiError> {
    let Some(asset) = asset else { return Ok(None) };
    match state.store.following().asset_steps(run, asset).await? {
        Some(range) => Ok(Some(range)),
        // The name is the caller's text: quoted back at most 1 KiB of it.
        None => Err(ApiError::NotFound(format!(
            "run {run} has no asset `{}`; `GET /v1/runs/{run}/assets` lists its assets",
            crate::store::storable::short_text(asset)
        ))),
    }
}

#[utoipa::path(get, path = "/v1/runs/{id}/assets", operation_id = "list_assets", tag = "runs", params(("id" = String, Path, description = "The run id (a UUID)"), AssetsQuery),
    responses((status = 200, description = "The run's assets with their steps counted by status, in plan order or busiest first", body = Page<AssetInfo>), (status = 400, description = "A malformed id, query or cursor", body = ErrorBody), (status = 404, description = "No such run", body = ErrorBody)))]
/// `GET /v1/runs/{id}/assets[?state=&leaf=&order=]`: the run's assets with their step
/// counts, paged in plan order; `order=busiest` answers one page, busiest first.
pub async fn assets(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    query: Result<Query<AssetsQuery>, QueryRejection>,
) -> Result<Json<Page<AssetInfo>>, ApiError> {
    let Query(query) = query?;
    let run = run_id(&id)?;
    let limit = page_limit(query.limit)?;
    let busiest = query.order == Some(AssetOrder::Busiest);
    let after = number_cursor(query.cursor.as_deref())?;
    if busiest && after.is_some() {
        return Err(ApiError::BadRequest(
            "`order=busiest` answers one page; ask for a larger `limit`, or page in plan order".to_owned(),
        ));
    }
    exists(&state, run).await?;
    let asset_query = AssetQuery { state: query.state.map(Into::into), leaf: query.leaf, busiest };
    let items: Vec<AssetInfo> = state
        .store
        .following()
        .assets(run, asset_query, after, limit)
        .await?
        .into_iter()
        .map(AssetInfo::from)
        .collect();
    let next_cursor = (!busiest && items.len() == limit as usize)
        .then(|| items.last().map(|a| a.index.to_string()))
        .flatten();
    Ok(Json(Page { items, next_cursor }))
}

/// 404 unless the run exists.
async fn exists(state: &ApiState, run: RunId) -> Result<store::runs::RunStatus, ApiError> {
    state.store.following().status(run).await?.ok_or_else(|| ApiError::NotFound(format!("no run {run}")))
}

#[utoipa::path(get, path = "/v1/runs/{id}/outputs", operation_id = "list_outputs", tag = "runs", params(("id" = String, Path, description = "The run id (a UUID)"), OutputsQuery),
    responses((status = 200, description = "The steps' outputs or errors by step id", body = Page<StepOutput>), (status = 400, description = "A malformed id, query or cursor", body = ErrorBody), (status = 404, description = "No such run, or no such asset in it", body = ErrorBody)))]
/// `GET /v1/runs/{id}/outputs[?asset=name]`.
///
/// Paged by step id: `?limit=` (1–1000, default 100) and `?cursor=` from the last page.
/// Labels come from the definitions of the page's assets only, not the whole plan.
pub async fn outputs(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    query: Result<Query<OutputsQuery>, QueryRejection>,
) -> Result<Json<Page<StepOutput>>, ApiError> {
    let Query(query) = query?;
    let run = run_id(&id)?;
    let limit = page_limit(query.limit)?;
    let after = number_cursor(query.cursor.as_deref())?;
    exists(&state, run).await?;
    let range = asset_steps(&state, run, query.asset.as_deref()).await?;
    let rows = state.store.runs().outputs(run, range, after, limit).await?;
    // A full page, or one its byte budget cut short, has a next page.
    let more = rows
        .first()
        .is_some_and(|row| row.page_rows == i64::from(limit) || row.page_rows > rows.len() as i64);
    let steps: Vec<(i32, i32)> = rows.iter().map(|row| (row.step_id, row.asset_index)).collect();
    let mut labels = state.store.runs().step_labels(run, &steps).await?;
    let items: Vec<StepOutput> = rows
        .into_iter()
        .map(|row| {
            let label = labels.remove(&row.step_id);
            let mut output = StepOutput::from(row);
            if let Some(label) = label {
                output.label = label;
            }
            output
        })
        .collect();
    let next_cursor = more.then(|| items.last().map(|o| o.step_id.to_string())).flatten();
    Ok(Json(Page { items, next_cursor }))
}

#[utoipa::path(post, path = "/v1/runs/{id}/cancel", operation_id = "cancel_run", tag = "runs", params(("id" = String, Path, description = "The run id (a UUID)")),
    responses((status = 200, description = "`canceled` says whether anything changed", body = CancelResponse), (status = 400, description = "A malformed id, query or cursor", body = ErrorBody), (status = 404, description = "No such run", body = ErrorBody)))]
/// `POST /v1/runs/{id}/cancel`: 200 either way; `canceled` says whether anything changed.
pub async fn cancel(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<CancelResponse>, ApiError> {
    let run = run_id(&id)?;
    let cancellation =
        state.store.runs().cancel(run).await?.ok_or_else(|| ApiError::NotFound(format!("no run {run}")))?;
    let summary = summary(&state, run).await?;
    Ok(Json(cancel_response(cancellation, summary)))
}

async fn summary(state: &ApiState, run: RunId) -> Result<RunSummary, ApiError> {
    let summary =
        state.store.runs().summary(run).await?.ok_or_else(|| ApiError::NotFound(format!("no run {run}")))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_longer_than_any_name_is_refused_without_quoting_it() {
        assert!(check_filter("plan", None, 64).is_ok());
        assert!(check_filter("plan", Some(&"p".repeat(64)), 64).is_ok());
        let refused = check_filter("owner", Some(&"o".repeat(10_000)), 64).unwrap_err().to_string();
        assert!(refused.contains("10000 bytes") && refused.contains("at most 64"), "{refused}");
        assert!(refused.len() < 100, "{refused}");
    }
}
