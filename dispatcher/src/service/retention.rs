//! Retention: finished runs past the `retention` setting are deleted, a few at a time, while
//! this dispatcher leads.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::store::{Store, run_plan::PlanCache};

/// How often retention looks for runs to delete, and how many it deletes each time.
const RETENTION_EVERY: Duration = Duration::from_secs(600);
const RETENTION_RUNS: u32 = 20;

/// Deletes finished runs older than `retention` until cancelled: a few runs every ten
/// minutes, each in small transactions (`store::retention`), so a backlog is worked off
/// without ever loading the database much.
pub async fn apply_retention(
    store: Store,
    plans: Arc<PlanCache>,
    retention: Duration,
    cancel: CancellationToken,
) {
    let mut ticks = tokio::time::interval(RETENTION_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let expired = match store.retention().expired(retention, RETENTION_RUNS).await {
            Ok(expired) => expired,
            Err(error) => {
                tracing::warn!(%error, "looking for runs past their retention failed; trying again later");
                continue;
            }
        };
        for run in expired {
            if cancel.is_cancelled() {
                return;
            }
            match store.retention().delete(run.run_id).await {
                Ok(deleted) => {
                    plans.forget(run.run_id);
                    tracing::info!(run_id = %run.run_id, steps = deleted.steps, events = deleted.events,
                        "deleted a run past its retention");
                }
                Err(error) => {
                    tracing::warn!(run_id = %run.run_id, %error, "deleting a run failed; trying again later")
                }
            }
        }
    }
}
