//! The op registry: which op versions exist and how their queues are declared. Plans
//! resolve `name@requirement` against it.

use opflow_amqp::{OpQueueSettings, QueueKind};
use opflow_protocol::{OpDescription, OpRef, queue};

use super::{Store, StoreError};

/// One registered op version, as listed by `opflow ops list`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RegisteredOpRow {
    pub name: String,
    pub version: String,
    pub queue: String,
    pub queue_type: String,
    pub delivery_limit: i32,
    pub summary: String,
    pub registered_at: chrono::DateTime<chrono::Utc>,
}

/// What registering did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    New,
    /// The version was registered before; its description was refreshed.
    Updated,
}

impl Store {
    /// Records an op version. Re-registering a version refreshes its description but keeps
    /// its queue settings: a durable queue cannot change type in place.
    pub async fn register_op(
        &self,
        description: &OpDescription,
        settings: OpQueueSettings,
    ) -> Result<Registration, StoreError> {
        let op = &description.op;
        let json = serde_json::to_value(description)
            .map_err(|e| StoreError::Corrupt(op.to_string(), e.to_string()))?;
        let inserted: bool = sqlx::query_scalar(
            "INSERT INTO ops (name, version, queue, queue_type, delivery_limit, description)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (name, version) DO UPDATE SET description = EXCLUDED.description
             RETURNING (xmax = 0)",
        )
        .bind(op.name.as_str())
        .bind(op.version.to_string())
        .bind(queue::op_queue(op))
        .bind(settings.kind.as_str())
        .bind(settings.delivery_limit as i32)
        .bind(json)
        .fetch_one(&self.pool)
        .await?;
        Ok(if inserted { Registration::New } else { Registration::Updated })
    }

    /// The queue settings an op version was registered with.
    pub async fn op_queue_settings(&self, op: &OpRef) -> Result<Option<OpQueueSettings>, StoreError> {
        let row: Option<(String, i32)> =
            sqlx::query_as("SELECT queue_type, delivery_limit FROM ops WHERE name = $1 AND version = $2")
                .bind(op.name.as_str())
                .bind(op.version.to_string())
                .fetch_optional(&self.pool)
                .await?;
        row.map(|(kind, limit)| {
            let kind: QueueKind = kind.parse().map_err(|e| StoreError::Corrupt(op.to_string(), e))?;
            Ok(OpQueueSettings { kind, delivery_limit: limit.max(0) as u32 })
        })
        .transpose()
    }

    /// Every registered op version, by name then version.
    pub async fn list_ops(&self) -> Result<Vec<RegisteredOpRow>, StoreError> {
        let mut rows: Vec<RegisteredOpRow> = sqlx::query_as(
            "SELECT name, version, queue, queue_type, delivery_limit,
                    coalesce(description->>'summary', '') AS summary, registered_at
             FROM ops",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.sort_by(|a, b| {
            let version = |v: &str| semver::Version::parse(v).ok();
            a.name.cmp(&b.name).then_with(|| version(&a.version).cmp(&version(&b.version)))
        });
        Ok(rows)
    }

    /// Every registered op version as an `OpRef`, for resolving plans.
    pub async fn registered_ops(&self) -> Result<Vec<OpRef>, StoreError> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT name, version FROM ops").fetch_all(&self.pool).await?;
        rows.into_iter()
            .map(|(name, version)| {
                format!("{name}@{version}")
                    .parse::<OpRef>()
                    .map_err(|e| StoreError::Corrupt("ops".into(), e.to_string()))
            })
            .collect()
    }
}
