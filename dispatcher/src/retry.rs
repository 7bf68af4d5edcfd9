//! Retry timing: exponential backoff with jitter from the asset's base delay, so retries
//! of many steps that failed together do not all come back at the same instant.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// No retry waits longer than this, however many attempts came before.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(10 * 60);

/// The delay before retrying a step whose attempt number `failed_attempt` (from 1) failed:
/// `backoff · 2^(failed_attempt − 1)`, capped, plus up to as much again of random jitter.
pub fn retry_delay(backoff: Duration, failed_attempt: u32) -> Duration {
    let nth = failed_attempt.saturating_sub(1) as usize;
    ExponentialBuilder::default()
        .with_min_delay(backoff)
        .with_factor(2.0)
        .with_max_delay(MAX_RETRY_DELAY)
        .with_jitter()
        .without_max_times()
        .build()
        .nth(nth)
        .unwrap_or(MAX_RETRY_DELAY)
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
    }

    #[test]
    fn a_zero_backoff_retries_at_once() {
        assert_eq!(retry_delay(Duration::ZERO, 3), Duration::ZERO);
    }
}
