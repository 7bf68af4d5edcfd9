//! The one backoff formula every retry loop of opflow uses ([`exponential`]: doubling from
//! a first pause to a cap, each pause with up to as much again of random jitter), its
//! settings for reaching a peer and restarting a process, and the pacing of reconnects
//! between broker sessions. Waiting out an outage (a broker or database that restarts)
//! must neither busy-loop nor leave a service idle long after its peer is back, and many
//! clients that failed together must not all come back at the same instant.

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

/// The formula: pauses from `first`, doubling up to `max`, each with up to as much again of
/// random jitter (so a pause is at most `2 · max`), without end. Bound the attempts with
/// `with_max_times` where they should end.
pub fn exponential(first: Duration, max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(first)
        .with_factor(2.0)
        .with_max_delay(max.max(first))
        .with_jitter()
        .without_max_times()
}

/// The pause before attempt `n + 1` after `n` failed ones (`n` from 1), by [`exponential`]:
/// `first · 2^(n − 1)`, capped at `max`, plus up to as much again of jitter. For a retry
/// decided once and stored (a step's, a webhook delivery's), where no iterator is kept.
pub fn pause(first: Duration, max: Duration, n: u32) -> Duration {
    // Past 64 doublings any non-zero pause has long reached the cap.
    let nth = n.saturating_sub(1).min(64) as usize;
    let max = max.max(first);
    exponential(first, max).build().nth(nth).unwrap_or(max)
}

/// Pauses between attempts at reaching a peer (a broker, a database, a statement that
/// failed on an outage, the API from the CLI): 0.1 s doubling to 5 s.
pub fn reconnect() -> ExponentialBuilder {
    exponential(Duration::from_millis(100), MAX_DELAY)
}

/// Pauses before restarting a worker process that died: 0.2 s doubling to 30 s. Longer
/// than reconnecting, as a crash loop costs a whole process start each time.
pub fn restart() -> ExponentialBuilder {
    exponential(Duration::from_millis(200), Duration::from_secs(30))
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

    #[test]
    fn the_nth_pause_doubles_from_the_first_to_the_cap_with_bounded_jitter() {
        let (first, max) = (Duration::from_millis(100), Duration::from_secs(1));
        for n in 1..=4u32 {
            let floor = first * 2u32.pow(n - 1);
            let p = pause(first, max, n);
            assert!(p >= floor && p <= floor * 2, "pause {n}: {p:?} not in [{floor:?}, {:?}]", floor * 2);
        }
        for n in [5, 30, u32::MAX] {
            let p = pause(first, max, n);
            assert!(p >= max && p <= max * 2, "pause {n}: {p:?}");
        }
        assert_eq!(pause(Duration::ZERO, max, 3), Duration::ZERO);
        assert!(
            pause(Duration::from_secs(9), max, 1) <= Duration::from_secs(18),
            "a cap below the first pause"
        );
    }

    #[tokio::test]
    async fn a_cancel_ends_the_pause() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        assert!(!Reconnect::default().after_loss("gone", &cancel).await);
    }
}
