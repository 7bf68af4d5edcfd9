//! Op versions as the API lists them, and the demand on their queues.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One registered op version: `GET /v1/ops`, `opflow ops list --json`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OpVersion {
    pub name: String,
    pub version: String,
    pub queue: String,
    pub queue_type: String,
    pub delivery_limit: i32,
    pub summary: String,
    pub registered_at: DateTime<Utc>,
    /// Workers running, as the autoscaler last saw (absent before it ever ran).
    pub replicas: Option<i32>,
    /// Workers the autoscaler last decided on.
    pub desired: Option<i32>,
    /// minReplicaCount and maxReplicaCount.
    pub min: i32,
    pub max: i32,
    /// value: messages per replica.
    pub value: i32,
    /// activationValue.
    pub activation: i32,
    pub polling_secs: i32,
    pub cooldown_secs: i32,
    pub max_steps: Option<i32>,
    pub max_rss_mb: Option<i32>,
    /// The most ready messages the dispatcher keeps in the queue, when set (`opflow ops
    /// scale --window`); by default `2 × max × value`, at least 8, widened to
    /// `publish_window_ms` of the workers' intake.
    pub window: Option<i32>,
    /// The most steps of this op version in flight at once, over every run, when set
    /// (`opflow ops scale --max-in-flight`).
    #[serde(default)]
    pub max_in_flight: Option<i32>,
}

/// One op version's queue and what waits for its workers: `GET /v1/queues[/{queue}]`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueueDemand {
    pub queue: String,
    pub op: String,
    /// Steps queued and not started: the queue's ready messages, and those about to be
    /// published from the outbox.
    pub ready: u64,
    /// Steps running on a worker (its unacknowledged messages).
    pub unacked: u64,
    /// Steps waiting whose upstream work is queued or running: about to be published.
    pub forecast: u64,
    /// All three: what KEDA's `metrics-api` trigger reads (`valueLocation: demand`).
    pub demand: u64,
}
