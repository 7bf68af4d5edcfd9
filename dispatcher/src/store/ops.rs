//! The op registry: which op versions exist, how their queues are declared, and how their
//! workers scale. Plans resolve `name@requirement` against it.

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
    #[sqlx(flatten)]
    pub scaling: ScaleSettings,
    /// Workers running and wanted, as the autoscaler last saw and decided (`None` before it
    /// ever ran), and when.
    pub replicas: Option<i32>,
    pub desired: Option<i32>,
    pub scaled_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// How an op version's workers scale, by KEDA's RabbitMQ scaler's rule (QueueLength mode),
/// and when a worker recycles itself. See `autoscale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct ScaleSettings {
    /// `minReplicaCount`.
    pub min_replicas: i32,
    /// `maxReplicaCount`.
    pub max_replicas: i32,
    /// `value`: messages per replica.
    pub target_value: i32,
    /// `activationValue`: more messages than this wake an op at zero.
    pub activation_value: i32,
    /// `pollingInterval`, seconds.
    pub polling_secs: i32,
    /// `cooldownPeriod`, seconds: idle this long before scaling to zero (and the window
    /// over which a scale-down waits for demand to stay low).
    pub cooldown_secs: i32,
    /// A worker exits after this many steps (and is replaced).
    pub max_steps: Option<i32>,
    /// A worker exits once its resident memory passes this many MiB (and is replaced).
    pub max_rss_mb: Option<i32>,
    /// The most ready messages kept in its queue; `None` for the default (see
    /// `service::window::WindowSize`).
    pub publish_window: Option<i32>,
    /// The most of its steps in flight at once, over every run; `None` for no cap.
    pub max_in_flight: Option<i32>,
}

impl Default for ScaleSettings {
    fn default() -> Self {
        Self {
            min_replicas: 0,
            max_replicas: 4,
            target_value: 1,
            activation_value: 0,
            polling_secs: 5,
            cooldown_secs: 300,
            max_steps: None,
            max_rss_mb: None,
            publish_window: None,
            max_in_flight: None,
        }
    }
}

/// What registering did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    New,
    /// The version was registered before; its description was refreshed.
    Updated,
}

/// The op registry (`store.ops()`).
#[derive(Clone, Copy)]
pub struct Ops<'a> {
    pub(super) pool: &'a sqlx::PgPool,
}

impl Store {
    /// The op registry: op versions, their queues and scaling settings.
    pub fn ops(&self) -> Ops<'_> {
        Ops { pool: &self.pool }
    }
}

impl Ops<'_> {
    /// Records an op version. Re-registering a version refreshes its description but keeps
    /// its queue settings: a durable queue cannot change type in place.
    pub async fn register(
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
        .fetch_one(self.pool)
        .await?;
        Ok(if inserted { Registration::New } else { Registration::Updated })
    }

    /// The queue settings an op version was registered with.
    pub async fn queue_settings(&self, op: &OpRef) -> Result<Option<OpQueueSettings>, StoreError> {
        let row: Option<(String, i32)> =
            sqlx::query_as("SELECT queue_type, delivery_limit FROM ops WHERE name = $1 AND version = $2")
                .bind(op.name.as_str())
                .bind(op.version.to_string())
                .fetch_optional(self.pool)
                .await?;
        row.map(|(kind, limit)| {
            let kind: QueueKind = kind.parse().map_err(|e| StoreError::Corrupt(op.to_string(), e))?;
            Ok(OpQueueSettings { kind, delivery_limit: limit.max(0) as u32 })
        })
        .transpose()
    }

    /// An op version's scaling settings; `None` if it is not registered.
    pub async fn scale_settings(&self, op: &OpRef) -> Result<Option<ScaleSettings>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT min_replicas, max_replicas, target_value, activation_value, polling_secs, cooldown_secs,
                    max_steps, max_rss_mb, publish_window, max_in_flight
             FROM ops WHERE name = $1 AND version = $2",
        )
        .bind(op.name.as_str())
        .bind(op.version.to_string())
        .fetch_optional(self.pool)
        .await?)
    }

    /// Stores an op version's scaling settings; false if it is not registered.
    pub async fn set_scale_settings(&self, op: &OpRef, s: ScaleSettings) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE ops SET min_replicas = $3, max_replicas = $4, target_value = $5, activation_value = $6,
                            polling_secs = $7, cooldown_secs = $8, max_steps = $9, max_rss_mb = $10,
                            publish_window = $11, max_in_flight = $12
             WHERE name = $1 AND version = $2",
        )
        .bind(op.name.as_str())
        .bind(op.version.to_string())
        .bind(s.min_replicas)
        .bind(s.max_replicas)
        .bind(s.target_value)
        .bind(s.activation_value)
        .bind(s.polling_secs)
        .bind(s.cooldown_secs)
        .bind(s.max_steps)
        .bind(s.max_rss_mb)
        .bind(s.publish_window)
        .bind(s.max_in_flight)
        .execute(self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// Records what the autoscaler saw and decided for an op version.
    pub async fn record_scale(&self, op: &OpRef, replicas: u32, desired: u32) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE ops SET replicas = $3, desired = $4, scaled_at = now() WHERE name = $1 AND version = $2",
        )
        .bind(op.name.as_str())
        .bind(op.version.to_string())
        .bind(replicas as i32)
        .bind(desired as i32)
        .execute(self.pool)
        .await?;
        Ok(())
    }

    /// Every registered op version, by name then version.
    pub async fn list(&self) -> Result<Vec<RegisteredOpRow>, StoreError> {
        let mut rows: Vec<RegisteredOpRow> = sqlx::query_as(
            "SELECT name, version, queue, queue_type, delivery_limit,
                    coalesce(description->>'summary', '') AS summary, registered_at,
                    min_replicas, max_replicas, target_value, activation_value, polling_secs, cooldown_secs,
                    max_steps, max_rss_mb, publish_window, max_in_flight, replicas, desired, scaled_at
             FROM ops",
        )
        .fetch_all(self.pool)
        .await?;
        rows.sort_by(|a, b| {
            let version = |v: &str| semver::Version::parse(v).ok();
            a.name.cmp(&b.name).then_with(|| version(&a.version).cmp(&version(&b.version)))
        });
        Ok(rows)
    }

    /// Every registered op version as an `OpRef`, for resolving plans.
    /// Every registered op version with the `reuse_from` requirement its description
    /// declares, as written (checked when it was registered).
    pub async fn reuse_from(&self) -> Result<Vec<(OpRef, Option<String>)>, StoreError> {
        let rows: Vec<(String, String, Option<String>)> =
            sqlx::query_as("SELECT name, version, description->>'reuse_from' FROM ops")
                .fetch_all(self.pool)
                .await?;
        rows.into_iter()
            .map(|(name, version, reuse_from)| {
                let op = format!("{name}@{version}")
                    .parse::<OpRef>()
                    .map_err(|e| StoreError::Corrupt("ops".into(), e.to_string()))?;
                Ok((op, reuse_from))
            })
            .collect()
    }

    pub async fn registered(&self) -> Result<Vec<OpRef>, StoreError> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT name, version FROM ops").fetch_all(self.pool).await?;
        rows.into_iter()
            .map(|(name, version)| {
                format!("{name}@{version}")
                    .parse::<OpRef>()
                    .map_err(|e| StoreError::Corrupt("ops".into(), e.to_string()))
            })
            .collect()
    }
}
