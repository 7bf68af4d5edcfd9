//! `GET /v1/ops`: the registered op versions, with their scaling settings and replicas.

use axum::{
    Json,
    extract::{Query, State, rejection::QueryRejection},
};

use opflow_api_model::{ErrorBody, OpVersion, Page, Paging};

use super::{error::ApiError, params::page_limit, state::ApiState};

#[utoipa::path(get, path = "/v1/ops", operation_id = "list_ops", tag = "ops", params(Paging),
    responses((status = 200, description = "Registered op versions", body = Page<OpVersion>), (status = 400, description = "A malformed id, query or cursor", body = ErrorBody)))]
/// `GET /v1/ops`.
///
/// Paged: `?limit=` (1–1000, default 100) and `?cursor=` from the last page.
pub async fn list(
    State(state): State<ApiState>,
    paging: Result<Query<Paging>, QueryRejection>,
) -> Result<Json<Page<OpVersion>>, ApiError> {
    let Query(paging) = paging?;
    let limit = page_limit(paging.limit)? as usize;
    let ops = state.store.ops().list().await?;
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
