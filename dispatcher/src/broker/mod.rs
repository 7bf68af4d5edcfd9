//! The dispatcher's side of RabbitMQ: publishing queued steps from the outbox, and
//! consuming the events workers report.
//!
//! - [`publish`]: the outbox publisher; one confirm window per outbox batch.
//! - [`events`]: the events consumer; one database transaction per batch of events, acked
//!   only after it commits.
//! - [`dead_letter`]: fails steps the broker dead-lettered.

pub mod dead_letter;
pub mod events;
pub mod publish;

use opflow_protocol::{Event, EventKind, RunId, StepId};

/// The `worker` field of events the dispatcher makes up itself.
pub const DISPATCHER_WORKER: &str = "dispatcher";

/// A failure decided by the dispatcher (an unroutable step, inputs too large, a refused
/// publish, a lost message), applied through the same path as a worker's failure event.
pub fn dispatcher_failure(
    run_id: RunId,
    step_id: u32,
    attempt: u32,
    error: String,
    retryable: bool,
) -> Event {
    Event::new(run_id, StepId(step_id), attempt, DISPATCHER_WORKER, EventKind::Failed { error, retryable })
}
