//! How a handler fails. The variant is the retry decision: the dispatcher retries a
//! retryable failure per the asset's policy and fails the step at once on a fatal one.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepError {
    /// Another attempt may succeed: a flaky upstream, a timeout, a lost connection.
    Retryable(String),
    /// Another attempt would fail the same way: bad parameters, invalid input data.
    Fatal(String),
}

impl StepError {
    pub fn retryable(error: impl fmt::Display) -> Self {
        StepError::Retryable(error.to_string())
    }

    pub fn fatal(error: impl fmt::Display) -> Self {
        StepError::Fatal(error.to_string())
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, StepError::Retryable(_))
    }

    pub fn message(&self) -> &str {
        match self {
            StepError::Retryable(m) | StepError::Fatal(m) => m,
        }
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for StepError {}
