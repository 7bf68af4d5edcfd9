//! Step retries: how often an asset's retryable failures are retried
//! ([`StepRetryPolicy`], from the plan's `retry`), and how long each retry waits: exponential
//! backoff with jitter from the asset's base delay (`opflow_process::backoff`'s formula),
//! so retries of many steps that failed together do not all come back at the same instant.

use std::time::Duration;

/// How a step's retryable failures are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepRetryPolicy {
    /// Retries after the first attempt (so `max_retries + 1` attempts in all).
    pub max_retries: u32,
    /// The delay before the first retry; it doubles for each later one.
    pub backoff: Duration,
}

impl Default for StepRetryPolicy {
    fn default() -> Self {
        Self { max_retries: 2, backoff: Duration::from_secs(1) }
    }
}

/// The exponential part of a retry delay never grows past this, however many attempts came
/// before; with jitter a retry waits at most twice this. A plan's `retry.backoff` may not
/// be longer (`plan::MAX_RETRY_BACKOFF`).
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(10 * 60);

/// The delay before retrying a step whose attempt number `failed_attempt` (from 1) failed:
/// `backoff · 2^(failed_attempt − 1)`, capped at [`MAX_RETRY_DELAY`], plus up to as much
/// again of random jitter. Never more than `2 · MAX_RETRY_DELAY`, whatever `backoff` is.
pub fn retry_delay(backoff: Duration, failed_attempt: u32) -> Duration {
    opflow_process::backoff::pause(backoff.min(MAX_RETRY_DELAY), MAX_RETRY_DELAY, failed_attempt)
        .min(MAX_RETRY_DELAY * 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_with_bounded_jitter() {
        let base = Duration::from_millis(100);
        for attempt in 1..=4u32 {
            let floor = base * 2u32.pow(attempt - 1);
            let d = retry_delay(base, attempt);
            assert!(
                d >= floor && d <= floor * 2,
                "attempt {attempt}: {d:?} not in [{floor:?}, {:?}]",
                floor * 2
            );
        }
    }

    #[test]
    fn delays_are_capped() {
        assert!(retry_delay(Duration::from_secs(60), 30) <= MAX_RETRY_DELAY * 2);
        assert!(retry_delay(Duration::from_secs(60), u32::MAX) <= MAX_RETRY_DELAY * 2);
    }

    #[test]
    fn an_absurd_backoff_is_capped_too() {
        let a_million_years = Duration::from_secs(1_000_000 * 365 * 24 * 3600);
        for attempt in [1, 2, 50] {
            assert!(retry_delay(a_million_years, attempt) <= MAX_RETRY_DELAY * 2);
        }
        assert!(retry_delay(Duration::MAX, 1) <= MAX_RETRY_DELAY * 2);
    }

    #[test]
    fn a_zero_backoff_retries_at_once() {
        assert_eq!(retry_delay(Duration::ZERO, 3), Duration::ZERO);
    }
}
