//! The body of every error answer, whatever the status.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What was wrong and what to do.
    pub error: String,
    /// For an invalid plan: each problem, with the file, line and asset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problems: Option<Vec<String>>,
}

impl ErrorBody {
    /// An error without a list of problems.
    pub fn new(error: impl Into<String>) -> Self {
        Self { error: error.into(), problems: None }
    }
}
