//! How many event streams one caller may hold open at once. A stream reads the database
//! each time its run moves, so a client that opened thousands would take the API's few
//! connections from everyone: each token (on an API without tokens, each client address)
//! gets `api_streams_per_token` of them, and the next one is refused with 429.

use super::error::ApiError;
use crate::keyed_counts::{Counted, KeyedCounts};

/// The open streams of every caller. Cheap to clone; clones share the counts.
#[derive(Clone, Debug)]
pub struct StreamLimits {
    per_caller: usize,
    open: KeyedCounts,
}

/// One open stream of a caller: counted until dropped, when the stream ends.
pub type StreamSlot = Counted;

impl Default for StreamLimits {
    fn default() -> Self {
        Self::new(32)
    }
}

impl StreamLimits {
    pub fn new(per_caller: u32) -> Self {
        Self { per_caller: per_caller.max(1) as usize, open: KeyedCounts::default() }
    }

    /// A slot for one more stream of `caller` (`what` names the caller in the refusal).
    pub fn take(&self, caller: &str, what: &str) -> Result<StreamSlot, ApiError> {
        self.open.enter_below(caller, self.per_caller).ok_or_else(|| {
            ApiError::TooManyRequests(format!(
                "{what} already has {} event streams open, the most one caller may hold (the setting \
                 `api_streams_per_token`); close one, or follow several runs with `GET /v1/runs` instead",
                self.per_caller
            ))
        })
    }

    /// How many streams `caller` holds open.
    pub fn open(&self, caller: &str) -> usize {
        self.open.count(caller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_gets_its_limit_of_streams_and_a_slot_back_when_one_ends() {
        let limits = StreamLimits::new(2);
        let first = limits.take("a", "token `a`").unwrap();
        let _second = limits.take("a", "token `a`").unwrap();
        let refused = limits.take("a", "token `a`").unwrap_err().to_string();
        assert!(refused.contains("token `a`") && refused.contains("api_streams_per_token"), "{refused}");
        let _other = limits.take("b", "token `b`").expect("another caller is not counted with `a`");
        drop(first);
        assert_eq!(limits.open("a"), 1);
        let _third = limits.take("a", "token `a`").expect("a slot is back");
    }
}
