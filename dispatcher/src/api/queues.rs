//! The demand of each op version's queue, for KEDA's `metrics-api` trigger (and anyone
//! sizing workers): what the queue holds, what workers hold, and what is about to be
//! queued, from the dispatcher's own knowledge of runs, so a scaler can start workers
//! before the messages exist.

use axum::{
    Json,
    extract::{Path, State},
};

use opflow_api_model::{ErrorBody, Page, QueueDemand};

use super::{error::ApiError, state::ApiState};
use crate::store::Store;

/// `GET /v1/queues`: every registered op version's queue.
#[utoipa::path(get, path = "/v1/queues", operation_id = "list_queues", tag = "queues",
    responses((status = 200, description = "Every registered op version's queue", body = Page<QueueDemand>)))]
pub async fn list(State(state): State<ApiState>) -> Result<Json<Page<QueueDemand>>, ApiError> {
    let mut items = Vec::new();
    for op in state.store.ops().registered().await? {
        items.push(demand(&state.store, &op).await?);
    }
    Ok(Json(Page { items, next_cursor: None }))
}

#[utoipa::path(get, path = "/v1/queues/{queue}", operation_id = "get_queue", tag = "queues",
    params(("queue" = String, Path, description = "A queue name, e.g. `opflow.op.noop.1.1.0`")),
    responses((status = 200, body = QueueDemand), (status = 404, description = "No registered op version has this queue", body = ErrorBody)))]
/// `GET /v1/queues/{queue}`: one queue, e.g. `opflow.op.noop.1.1.0`. KEDA's `metrics-api`
/// trigger reads `demand` (`valueLocation: demand`).
pub async fn one(
    State(state): State<ApiState>,
    Path(queue): Path<String>,
) -> Result<Json<QueueDemand>, ApiError> {
    for op in state.store.ops().registered().await? {
        if opflow_protocol::queue::op_queue(&op) == queue {
            return Ok(Json(demand(&state.store, &op).await?));
        }
    }
    Err(ApiError::NotFound(format!(
        "no registered op version has queue `{queue}`; `GET /v1/queues` lists them"
    )))
}

async fn demand(store: &Store, op: &opflow_protocol::OpRef) -> Result<QueueDemand, ApiError> {
    let in_flight = store.queues().demand(op).await?;
    let ready = in_flight.queued;
    Ok(QueueDemand {
        queue: opflow_protocol::queue::op_queue(op),
        op: op.to_string(),
        ready,
        unacked: in_flight.running,
        forecast: in_flight.forecast,
        demand: ready + in_flight.running + in_flight.forecast,
    })
}
