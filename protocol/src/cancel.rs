//! Run cancellation on the wire: what the dispatcher appends to the cancels stream
//! ([`crate::queue::CANCELS_STREAM`]) when a run is canceled, and the markers a worker
//! appends to learn that it has read everything before them.
//!
//! Every worker reads the stream from the start of its retention when it connects, then
//! follows it: a step of a canceled run never starts on it, and a running one is told to
//! stop. A stream rather than a fanout so that a worker started after the cancel (scaled
//! up from zero, say) still learns of it before it takes a queued step of that run.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    DecodeError, SCHEMA_VERSION,
    codec::{decode, encode},
    ids::{RunId, StepId},
};

/// One record of the cancels stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CancelRecord {
    /// Schema version; see [`SCHEMA_VERSION`].
    pub v: u32,
    pub at: DateTime<Utc>,
    pub kind: CancelKind,
}

/// What a cancel record cancels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CancelKind {
    /// Every step of the run is canceled: queued ones must not start, running ones stop.
    Run { run_id: RunId },
    /// One attempt of one step is canceled (a newer step of its concurrency key replaces
    /// it): if queued it must not start, if running it stops. A worker that cannot read
    /// this kind runs the step to its end, which the dispatcher waits for all the same.
    Step { run_id: RunId, step_id: StepId, attempt: u32 },
    /// A worker's own marker: once it reads it back, it has read every cancel before it.
    Marker { nonce: String },
}

impl CancelRecord {
    pub fn run(run_id: RunId) -> Self {
        Self { v: SCHEMA_VERSION, at: Utc::now(), kind: CancelKind::Run { run_id } }
    }

    pub fn step(run_id: RunId, step_id: StepId, attempt: u32) -> Self {
        Self { v: SCHEMA_VERSION, at: Utc::now(), kind: CancelKind::Step { run_id, step_id, attempt } }
    }

    pub fn marker(nonce: impl Into<String>) -> Self {
        Self { v: SCHEMA_VERSION, at: Utc::now(), kind: CancelKind::Marker { nonce: nonce.into() } }
    }

    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode("cancel record", bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        for record in [
            CancelRecord::run(RunId::new()),
            CancelRecord::step(RunId::new(), StepId(7), 2),
            CancelRecord::marker("w/1"),
        ] {
            assert_eq!(CancelRecord::decode(&record.encode()).unwrap(), record);
        }
    }
}
