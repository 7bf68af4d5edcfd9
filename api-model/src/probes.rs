//! What `/readyz` answers (200 ready, 503 not): the dispatcher's role and the state of
//! its database and broker, in words.

use serde::{Deserialize, Serialize};

/// `GET /readyz`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadyStatus {
    /// `leader` (publishes and applies) or `standby` (serves the API, waits for the lease).
    pub role: String,
    /// `ok`, or that the database does not answer (why is in the dispatcher's log: anyone
    /// may read this answer).
    pub database: String,
    /// `ok`, that the leader's broker session is down, or that a standby does not use it.
    pub broker: String,
}
