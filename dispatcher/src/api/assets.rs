//! `GET /v1/assets…`: the asset catalog across runs (`store::catalog`): each asset's cells
//! by state, a cell's history, and lineage between materializations.

use axum::{
    Json,
    extract::{Path, Query, State, rejection::QueryRejection},
};

use opflow_api_model::{
    AssetSummary, CellStatus, CellView, CellsQuery, CheckView, ChecksQuery, ErrorBody, FreshnessState,
    FreshnessSummary, HistoryQuery, Lineage, LineageDirection, LineageItem, LineageQuery, Materialization,
    Page,
};

use super::{error::ApiError, params::page_limit, state::ApiState};
use crate::{
    plan::freshness::{Freshness, Thresholds},
    store::catalog::{
        AssetSummaryRow, CellFilter, CellRow, Direction, MAX_LINEAGE_ROWS, MadeBetween, MaterializationRow,
    },
};

#[utoipa::path(get, path = "/v1/assets", operation_id = "list_catalog_assets", tag = "assets",
    responses((status = 200, description = "Every asset in the catalog, by name", body = Page<AssetSummary>)))]
/// `GET /v1/assets`: every asset any run declared, with its cells counted by state.
pub async fn list(State(state): State<ApiState>) -> Result<Json<Page<AssetSummary>>, ApiError> {
    let items = state.store.catalog().summaries(None).await?.into_iter().map(summary).collect();
    Ok(Json(Page { items, next_cursor: None }))
}

#[utoipa::path(get, path = "/v1/assets/{asset}", operation_id = "get_catalog_asset", tag = "assets",
    params(("asset" = String, Path, description = "An asset's name")),
    responses((status = 200, body = AssetSummary), (status = 404, description = "No run declared this asset", body = ErrorBody)))]
/// `GET /v1/assets/{asset}`: one asset's cells counted by state.
pub async fn one(
    State(state): State<ApiState>,
    Path(asset): Path<String>,
) -> Result<Json<AssetSummary>, ApiError> {
    let row = state.store.catalog().summaries(Some(&asset)).await?.into_iter().next();
    row.map(|row| Json(summary(row))).ok_or_else(|| not_found(&asset))
}

#[utoipa::path(get, path = "/v1/assets/{asset}/partitions", operation_id = "list_asset_cells", tag = "assets",
    params(("asset" = String, Path, description = "An asset's name"), CellsQuery),
    responses((status = 200, description = "The asset's cells in (partition, point) order", body = Page<CellView>),
        (status = 400, description = "A malformed query or cursor", body = ErrorBody),
        (status = 404, description = "No run declared this asset", body = ErrorBody)))]
/// `GET /v1/assets/{asset}/partitions`: the asset's cells (partition × sweep point) with
/// their latest state, paged; `?status=` keeps one state, `?partition=` one partition.
pub async fn cells(
    State(state): State<ApiState>,
    Path(asset): Path<String>,
    query: Result<Query<CellsQuery>, QueryRejection>,
) -> Result<Json<Page<CellView>>, ApiError> {
    let Query(query) = query?;
    let limit = page_limit(query.limit)?;
    let after: Option<(String, String)> = match query.cursor.as_deref() {
        None => None,
        Some(cursor) => Some(serde_json::from_str(cursor).map_err(|_| {
            ApiError::BadRequest(format!(
                "cursor `{}` is not one this list gave; pass `next_cursor` as it came",
                quoted(cursor)
            ))
        })?),
    };
    let filter = match query.status {
        None => CellFilter::Any,
        Some(CellStatus::Materialized) => CellFilter::Materialized,
        Some(CellStatus::Stale) => CellFilter::Stale,
        Some(CellStatus::Failed) => CellFilter::Failed,
    };
    let catalog = state.store.catalog();
    if !catalog.declared(&asset).await? {
        return Err(not_found(&asset));
    }
    let thresholds = state
        .store
        .freshness()
        .policies(Some(std::slice::from_ref(&asset)), chrono::Utc::now())
        .await?
        .into_iter()
        .next()
        .and_then(|p| p.thresholds);
    let made = match (query.freshness, thresholds) {
        (None, _) => None,
        (Some(state), Some(t)) => Some(match state {
            FreshnessState::Stale => MadeBetween { from: None, until: Some(t.stale_before) },
            FreshnessState::Warn => MadeBetween { from: Some(t.stale_before), until: Some(t.warn_before) },
            FreshnessState::Fresh => MadeBetween { from: Some(t.warn_before), until: None },
        }),
        // No policy (or a deadline not due yet): every materialized cell is fresh.
        (Some(FreshnessState::Fresh), None) => Some(MadeBetween::default()),
        (Some(_), None) => {
            Some(MadeBetween { from: None, until: Some(chrono::DateTime::<chrono::Utc>::MIN_UTC) })
        }
    };
    let rows = catalog
        .cells(
            &asset,
            filter,
            query.partition.as_deref(),
            made,
            after.as_ref().map(|(p, q)| (p.as_str(), q.as_str())),
            limit + 1,
        )
        .await?;
    let more = rows.len() > limit as usize;
    let rows: Vec<CellRow> = rows.into_iter().take(limit as usize).collect();
    let next_cursor =
        more.then(|| rows.last().map(|r| serde_json::json!([r.partition, r.point]).to_string())).flatten();
    Ok(Json(Page { items: rows.into_iter().map(|row| cell(row, thresholds)).collect(), next_cursor }))
}

#[utoipa::path(get, path = "/v1/assets/{asset}/history", operation_id = "asset_history", tag = "assets",
    params(("asset" = String, Path, description = "An asset's name"), HistoryQuery),
    responses((status = 200, description = "A partition's materializations, newest first", body = Vec<Materialization>),
        (status = 400, description = "A malformed query", body = ErrorBody)))]
/// `GET /v1/assets/{asset}/history?partition=`: a partition's materializations (every sweep
/// point's), newest first.
pub async fn history(
    State(state): State<ApiState>,
    Path(asset): Path<String>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<Vec<Materialization>>, ApiError> {
    let Query(query) = query?;
    let limit = page_limit(query.limit)?;
    let rows = state
        .store
        .catalog()
        .history(&asset, query.partition.as_deref().unwrap_or_default(), None, limit)
        .await?;
    Ok(Json(rows.into_iter().map(materialization).collect()))
}

#[utoipa::path(get, path = "/v1/assets/{asset}/lineage", operation_id = "asset_lineage", tag = "assets",
    params(("asset" = String, Path, description = "An asset's name"), LineageQuery),
    responses((status = 200, description = "What the asset's latest materializations read, or what read them", body = Lineage),
        (status = 400, description = "A malformed query", body = ErrorBody),
        (status = 404, description = "Nothing of the asset (or partition) is materialized", body = ErrorBody)))]
/// `GET /v1/assets/{asset}/lineage?partition=&direction=upstream|downstream`: from the latest
/// materializations of the asset (or of one partition), what they read, across runs, or
/// what read them.
pub async fn lineage(
    State(state): State<ApiState>,
    Path(asset): Path<String>,
    query: Result<Query<LineageQuery>, QueryRejection>,
) -> Result<Json<Lineage>, ApiError> {
    let Query(query) = query?;
    let direction = query.direction.unwrap_or_default();
    let catalog = state.store.catalog();
    let from: Vec<i64> = catalog
        .latest(&asset, query.partition.as_deref(), opflow_api_model::MAX_PAGE)
        .await?
        .into_iter()
        .map(|m| m.id)
        .collect();
    if from.is_empty() {
        let asset = quoted(&asset);
        return Err(ApiError::NotFound(match query.partition.as_deref().map(quoted) {
            Some(p) => format!(
                "asset `{asset}` has no materialization of partition `{p}`; `opflow assets show {asset}` lists its cells"
            ),
            None => format!("asset `{asset}` has no materialization; `opflow assets list` shows what has"),
        }));
    }
    let walk = catalog
        .lineage(
            &from,
            match direction {
                LineageDirection::Upstream => Direction::Upstream,
                LineageDirection::Downstream => Direction::Downstream,
            },
        )
        .await?;
    let truncated = walk.len() as i64 >= MAX_LINEAGE_ROWS;
    let items = walk
        .into_iter()
        .map(|row| LineageItem { depth: row.depth, materialization: materialization(row.materialization) })
        .collect();
    Ok(Json(Lineage { from, direction, items, truncated }))
}

#[utoipa::path(get, path = "/v1/assets/{asset}/checks", operation_id = "asset_checks", tag = "assets",
    params(("asset" = String, Path, description = "An asset's name"), ChecksQuery),
    responses((status = 200, description = "The newest result of each check of each cell, failed first", body = Vec<CheckView>),
        (status = 400, description = "A malformed query", body = ErrorBody)))]
/// `GET /v1/assets/{asset}/checks?partition=&failed=true`: the newest result of each check
/// the op reported of each cell, failed first.
pub async fn checks(
    State(state): State<ApiState>,
    Path(asset): Path<String>,
    query: Result<Query<ChecksQuery>, QueryRejection>,
) -> Result<Json<Vec<CheckView>>, ApiError> {
    let Query(query) = query?;
    let limit = page_limit(query.limit)?;
    let rows = state
        .store
        .catalog()
        .checks(&asset, query.partition.as_deref(), query.failed.unwrap_or(false), i64::from(limit))
        .await?;
    Ok(Json(
        rows.into_iter()
            .map(|row| CheckView {
                partition: (!row.partition.is_empty()).then_some(row.partition),
                point: (!row.point.is_empty()).then(|| serde_json::from_str(&row.point).ok()).flatten(),
                check: row.name,
                passed: row.passed,
                blocking: row.blocking,
                detail: row.detail,
                run_id: opflow_protocol::RunId::from_uuid(row.run_id),
                step_id: row.step_id.max(0) as u32,
                attempt: row.attempt.max(0) as u32,
                at: row.at,
            })
            .collect(),
    ))
}

fn not_found(asset: &str) -> ApiError {
    ApiError::NotFound(format!(
        "no run declared asset `{}`; `opflow assets list` shows the catalog",
        quoted(asset)
    ))
}

/// A caller's text as an answer quotes it: at most [`MAX_QUOTED_BYTES`].
fn quoted(text: &str) -> std::borrow::Cow<'_, str> {
    opflow_protocol::text::cut(text, MAX_QUOTED_BYTES)
}

/// The most bytes of a caller's asset, partition or cursor an answer quotes.
const MAX_QUOTED_BYTES: usize = 256;

fn summary(row: AssetSummaryRow) -> AssetSummary {
    AssetSummary {
        missing: (row.cells - row.known).max(0),
        name: row.name,
        plan: row.plan_name,
        op: format!("{}@{}", row.op_name, row.op_version),
        cells: row.cells,
        materialized: row.fresh,
        stale: row.stale,
        failed: row.failed,
        latest_at: row.latest_at,
        freshness: row.freshness.map(|f| FreshnessSummary {
            policy: f.policy,
            fresh: f.fresh,
            warn: f.warn,
            stale: f.stale,
        }),
    }
}

/// A stored partition or point ('' for none) as the API shows it.
fn partition_of(partition: String) -> Option<String> {
    (!partition.is_empty()).then_some(partition)
}

fn point_of(point: &str) -> Option<serde_json::Value> {
    (!point.is_empty())
        .then(|| serde_json::from_str(point).unwrap_or_else(|_| serde_json::Value::String(point.into())))
}

fn cell(row: CellRow, thresholds: Option<Thresholds>) -> CellView {
    CellView {
        freshness: thresholds.zip(row.materialized_at).map(|(t, at)| match t.of(at) {
            Freshness::Fresh => FreshnessState::Fresh,
            Freshness::Warn => FreshnessState::Warn,
            Freshness::Stale => FreshnessState::Stale,
        }),
        materialized_at: row.materialized_at,
        point: point_of(&row.point),
        partition: partition_of(row.partition),
        status: match row.status.as_str() {
            "failed" => CellStatus::Failed,
            "stale" => CellStatus::Stale,
            _ => CellStatus::Materialized,
        },
        materialization: row.materialization,
        failed_run: row.failed_run,
        failed_step: row.failed_step,
        error: row.error,
        updated_at: row.updated_at,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn materialization(row: MaterializationRow) -> Materialization {
    Materialization {
        id: row.id,
        point: point_of(&row.point),
        partition: partition_of(row.partition),
        asset: row.asset,
        op: format!("{}@{}", row.op_name, row.op_version),
        config_hash: hex(&row.config_hash),
        output_digest: hex(&row.output_digest),
        inputs: row.inputs,
        run_id: row.run_id,
        step_id: row.step_id,
        attempt: row.attempt,
        at: row.at,
        metadata: row.metadata,
        reused_from: row.reused_from,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_quotes_at_most_a_bounded_part_of_what_it_was_asked() {
        let long = "a".repeat(100_000);
        let ApiError::NotFound(message) = not_found(&long) else { panic!("not a 404") };
        assert!(message.len() < MAX_QUOTED_BYTES + 200, "{} bytes", message.len());
        assert!(not_found("prices").to_string().contains("`prices`"));
    }
}
