//! Due retries: steps waiting out a retry backoff are queued again once it has elapsed.
//! (Event-driven scheduling, unlocking downstream steps, happens where events are applied:
//! `store::apply`.)

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use super::window::Arrivals;
use crate::store::lease::LeaderStore;

/// Queues due retries every `every` until cancelled, telling the publisher of them.
pub async fn release_retries(
    store: LeaderStore,
    arrivals: Arc<Arrivals>,
    every: Duration,
    cancel: CancellationToken,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticks.tick() => {}
        }
        match store.outbox().release_due_retries().await {
            Ok(rows) if rows.is_empty() => {}
            Ok(rows) => {
                tracing::debug!(steps = rows.len(), "retries due; queued");
                arrivals.tell(&rows, &[], &[], &[], &[]);
            }
            // Nothing is lost: the steps stay `retrying` and are picked up on a later tick.
            Err(error) => tracing::warn!(%error, "queueing due retries failed; trying again"),
        }
    }
}
