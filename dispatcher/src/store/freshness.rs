//! Freshness in the catalog (migration 0030): each asset's policy, as its latest definition
//! declares it; the thresholds it gives now; the breaches (a cell's materialization gone
//! stale), each recorded once, which the database turns into `freshness.failed` webhooks;
//! and what the schedules that run on freshness or on new upstream materializations ask.

use chrono::{DateTime, Utc};

use super::{Store, StoreError};
use crate::plan::freshness::{FreshnessPolicy, Thresholds};

/// An asset's policy and what it gives at one moment.
#[derive(Debug, Clone)]
pub struct AssetFreshness {
    pub asset: String,
    pub policy: FreshnessPolicy,
    /// `None` while a deadline has not ticked twice yet: nothing is due.
    pub thresholds: Option<Thresholds>,
}

/// The policies' thresholds as statement parameters: `UNNEST($n::text[], $n+1::timestamptz[],
/// $n+2::timestamptz[]) AS f(asset, stale_before, warn_before)`.
#[derive(Debug, Default)]
pub struct ThresholdColumns {
    pub assets: Vec<String>,
    pub stale_before: Vec<DateTime<Utc>>,
    pub warn_before: Vec<DateTime<Utc>>,
}

impl ThresholdColumns {
    pub fn of(policies: &[AssetFreshness]) -> Self {
        let mut cols = Self::default();
        for p in policies {
            if let Some(t) = p.thresholds {
                cols.assets.push(p.asset.clone());
                cols.stale_before.push(t.stale_before);
                cols.warn_before.push(t.warn_before);
            }
        }
        cols
    }
}

/// The catalog's freshness (`store.freshness()`).
#[derive(Clone, Copy)]
pub struct Freshness<'a> {
    pub(in crate::store) pool: &'a sqlx::PgPool,
}

impl Store {
    pub fn freshness(&self) -> Freshness<'_> {
        Freshness { pool: &self.pool }
    }
}

impl Freshness<'_> {
    /// The policies of the assets that declare one (of `assets` only, when given), and
    /// their thresholds at `now`. A policy stored by a later version that this one cannot
    /// read is left out, with a warning.
    pub async fn policies(
        &self,
        assets: Option<&[String]>,
        now: DateTime<Utc>,
    ) -> Result<Vec<AssetFreshness>, StoreError> {
        let rows: Vec<(String, serde_json::Value)> = sqlx::query_as(
            "SELECT name, freshness FROM catalog_assets
             WHERE freshness IS NOT NULL AND ($1::text[] IS NULL OR name = ANY($1))
             ORDER BY name",
        )
        .bind(assets)
        .fetch_all(self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(asset, json)| match serde_json::from_value::<FreshnessPolicy>(json) {
                Ok(policy) => Some(AssetFreshness { thresholds: policy.thresholds(now), asset, policy }),
                Err(error) => {
                    tracing::warn!(%asset, %error, "an asset's stored freshness policy does not read; ignoring it");
                    None
                }
            })
            .collect())
    }

    /// Records each cell that went stale since the last pass (its materialization older
    /// than its policy's threshold at `now`), once per materialization whatever the number
    /// of passes or leaders; the database enqueues a `freshness.failed` webhook for each
    /// recorded. Returns how many were recorded.
    pub async fn record_breaches(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut recorded = 0;
        for asset in self.policies(None, now).await? {
            let Some(thresholds) = asset.thresholds else { continue };
            // When it went stale: `max_age` after it was made, or (a deadline) at the
            // deadline it missed.
            let (max_age_secs, deadline_missed) = match &asset.policy {
                FreshnessPolicy::MaxAge { max_age_secs, .. } => (Some(*max_age_secs as f64), None),
                FreshnessPolicy::Deadline { .. } => (None, Some(thresholds.warn_before)),
            };
            let mut tx = self.pool.begin().await?;
            // One pass per asset at a time: a second leader's pass waits, then finds the
            // range done.
            let checked: Option<Option<DateTime<Utc>>> = sqlx::query_scalar(
                "SELECT freshness_checked_until FROM catalog_assets WHERE name = $1 FOR UPDATE",
            )
            .bind(&asset.asset)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(checked) = checked else { continue };
            if checked.is_some_and(|c| c >= thresholds.stale_before) {
                continue;
            }
            let inserted = sqlx::query(
                "INSERT INTO freshness_breaches (asset, partition, point, materialization, run_id, owner,
                                                 materialized_at, policy, stale_since)
                 SELECT c.asset, c.partition, c.point, c.materialization, m.run_id, coalesce(r.owner, ''),
                        c.materialized_at, $4,
                        coalesce(c.materialized_at + make_interval(secs => $5::float8), $6, $3)
                 FROM catalog_cells c
                 JOIN materializations m ON m.id = c.materialization
                 LEFT JOIN runs r ON r.id = m.run_id
                 WHERE c.asset = $1
                   AND c.materialized_at >= coalesce($2, '-infinity'::timestamptz)
                   AND c.materialized_at < $3
                 ON CONFLICT DO NOTHING",
            )
            .bind(&asset.asset)
            .bind(checked)
            .bind(thresholds.stale_before)
            .bind(asset.policy.to_string())
            .bind(max_age_secs)
            .bind(deadline_missed)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE catalog_assets SET freshness_checked_until = $2 WHERE name = $1")
                .bind(&asset.asset)
                .bind(thresholds.stale_before)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            recorded += inserted.rows_affected();
        }
        Ok(recorded)
    }

    /// How many cells of `assets` are stale by their policies at `now`.
    pub async fn stale_cells(&self, assets: &[String], now: DateTime<Utc>) -> Result<i64, StoreError> {
        let cols = ThresholdColumns::of(&self.policies(Some(assets), now).await?);
        if cols.assets.is_empty() {
            return Ok(0);
        }
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM UNNEST($1::text[], $2::timestamptz[]) AS f(asset, stale_before)
             JOIN catalog_cells c ON c.asset = f.asset AND c.materialized_at < f.stale_before",
        )
        .bind(&cols.assets)
        .bind(&cols.stale_before)
        .fetch_one(self.pool)
        .await?)
    }

    /// The materializations of `assets` after `seen` that runs other than `schedule`'s made
    /// (not reuses): the first one's id and time, and the newest id. `None` when none.
    pub async fn unseen_materializations(
        &self,
        assets: &[String],
        seen: i64,
        schedule: &str,
    ) -> Result<Option<Unseen>, StoreError> {
        let row: (Option<i64>, Option<DateTime<Utc>>, Option<i64>) = sqlx::query_as(
            "WITH unseen AS (
                 SELECT m.id, m.at FROM materializations m
                 JOIN runs r ON r.id = m.run_id
                 WHERE m.asset = ANY($1) AND m.id > $2 AND m.reused_from IS NULL
                   AND r.schedule IS DISTINCT FROM $3
             )
             SELECT (SELECT id FROM unseen ORDER BY id LIMIT 1),
                    (SELECT at FROM unseen ORDER BY id LIMIT 1),
                    (SELECT max(id) FROM unseen)",
        )
        .bind(assets)
        .bind(seen)
        .bind(schedule)
        .fetch_one(self.pool)
        .await?;
        Ok(match row {
            (Some(first), Some(first_at), Some(newest)) => Some(Unseen { first, first_at, newest }),
            _ => None,
        })
    }
}

/// What [`Freshness::unseen_materializations`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unseen {
    pub first: i64,
    pub first_at: DateTime<Utc>,
    pub newest: i64,
}
