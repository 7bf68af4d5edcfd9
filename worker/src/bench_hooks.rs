//! For `benches/step.rs` only, not an API: the runtime's per-step pieces that the criterion
//! bench measures, reached from outside the crate. The runtime never comes through here,
//! and an op author has no use for any of it; the pieces themselves stay private to their
//! modules.

use lapin::types::FieldTable;
use opflow_protocol::{StepMessage, queue};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    StepContext,
    report::{Command, QUEUE_DEPTH, Reporter},
};

/// A step's context, as the runtime makes it for a delivery.
pub fn step_context(
    message: StepMessage,
    reporter: Reporter,
    worker: String,
    stopping: CancellationToken,
    cancelled: CancellationToken,
) -> StepContext {
    StepContext::new(message, reporter, worker, stopping, cancelled)
}

/// The `step` span of a delivery, continuing the trace its headers carry.
pub fn step_span(message: &StepMessage, headers: Option<&FieldTable>) -> tracing::Span {
    crate::step::step_span(message, headers)
}

/// A [`Reporter`] without a broker, and what it queued.
pub fn detached_reporter() -> (Reporter, Detached) {
    let (commands, receiver) = mpsc::channel(QUEUE_DEPTH);
    (Reporter { commands }, Detached(receiver))
}

/// The events a [`detached_reporter`] queued.
pub struct Detached(mpsc::Receiver<Command>);

impl Detached {
    /// Takes the queued events and encodes each with its routing key, as publishing
    /// would; returns how many bytes.
    pub fn drain(&mut self) -> usize {
        let mut bytes = 0;
        while let Ok(Command::Send(event, _) | Command::Flush(event, _, _)) = self.0.try_recv() {
            bytes += event.encode().len() + queue::event_routing_key(event.kind.name()).len();
        }
        bytes
    }
}
