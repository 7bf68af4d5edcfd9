//! The leader's freshness watch: every few seconds, records the cells that went stale by
//! their asset's freshness policy since the last look (`Freshness::record_breaches`), each
//! materialization once, which the database announces as a `freshness.failed` webhook.

use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// How often the watch looks: a breach is announced at most this late.
pub const FRESHNESS_POLL: Duration = Duration::from_secs(2);

/// Records breaches until `cancel`.
pub async fn watch_freshness(store: Store, cancel: CancellationToken) {
    loop {
        match store.freshness().record_breaches(Utc::now()).await {
            Ok(0) => {}
            Ok(recorded) => tracing::info!(recorded, "cells went stale by their freshness policy"),
            Err(error) => tracing::warn!(%error, "looking for stale cells failed; trying again"),
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(FRESHNESS_POLL) => {}
        }
    }
}
