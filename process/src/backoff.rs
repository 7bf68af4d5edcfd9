//! The one set of backoff settings every retry loop of opflow uses, and the pacing of
//! reconnects between broker sessions. Waiting out an outage (a broker or database that
//! restarts) must neither busy-loop nor leave a service idle long after its peer is back.

use std::{
    fmt,
    time::{Duration, Instant},
};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

/// The longest pause between two attempts at reaching a peer.
pub const MAX_DELAY: Duration = Duration::from_secs(5);

/// A session that lasted this long was healthy: the pauses after it start over.
const HEALTHY_SESSION: Duration = Duration::from_secs(60);

/// Pauses between attempts at reaching a peer (a broker, a database, a statement that
/// failed on an outage): 0.1 s doubling to 5 s, each with up to as much again of random
/// jitter, without end. Bound the attempts with `with_max_times` where it should end.
pub fn reconnect() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(MAX_DELAY)
        .with_jitter()
        .without_max_times()
}

/// Pauses before restarting a worker process that died: 0.2 s doubling to 30 s, jittered.
/// Longer than reconnecting, as a crash loop costs a whole process start each time.
pub fn restart() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times()
}

/// Paces broker sessions: a session that ends soon after it started is followed by a
/// growing pause ([`reconnect`]); one that lasted starts the pauses over. Each loss is
/// logged once, with its cause and the pause.
pub struct Reconnect {
    pauses: ExponentialBackoff,
    started: Instant,
}

impl Default for Reconnect {
    fn default() -> Self {
        Self { pauses: reconnect().build(), started: Instant::now() }
    }
}

impl Reconnect {
    /// Marks the start of a session.
    pub fn session_started(&mut self) {
        self.started = Instant::now();
    }

    /// After a lost session: logs `why`, then waits out the pause. False when `cancel`
    /// fired first (stop, do not reconnect).
    pub async fn after_loss(&mut self, why: impl fmt::Display, cancel: &CancellationToken) -> bool {
        if self.started.elapsed() > HEALTHY_SESSION {
            self.pauses = reconnect().build();
        }
        let pause = self.pauses.next().unwrap_or(MAX_DELAY);
        tracing::warn!(error = %why, retry_in = ?pause, "lost the broker; reconnecting");
        tokio::select! {
            () = tokio::time::sleep(pause) => true,
            () = cancel.cancelled() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_pauses_grow_to_the_cap_and_never_end() {
        let pauses: Vec<Duration> = reconnect().build().take(20).collect();
        assert_eq!(pauses.len(), 20);
        assert!(pauses[0] >= Duration::from_millis(100) && pauses[0] <= Duration::from_millis(200));
        assert!(pauses.iter().all(|p| *p <= MAX_DELAY * 2), "{pauses:?}");
    }

    #[tokio::test]
    async fn a_cancel_ends_the_pause() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        assert!(!Reconnect::default().after_loss("gone", &cancel).await);
    }
}
