//! The wire protocol between the opflow dispatcher and remote ops.
//!
//! Everything that crosses the broker is defined here and nowhere else, so that an op
//! built against one release of this crate keeps talking to a dispatcher built against
//! another as long as [`SCHEMA_VERSION`] matches. This crate is pure values: serde types,
//! their codecs and the names of queues and exchanges. It does no I/O.
//!
//! - [`ids`]: run, step and event identifiers and the `name@version` op reference.
//! - [`step`]: the message a dispatcher publishes for one attempt of one step.
//! - [`event`]: what a worker reports back about a step.
//! - [`describe`]: what an op binary prints for `--describe`.
//! - [`queue`]: queue, exchange and header names.
//! - [`cancel`]: the records of the cancels stream (run cancellation).
//! - [`codec`]: versioned JSON encoding shared by every message type.
//! - [`text`]: how every bounded text is cut.

pub mod cancel;
pub mod codec;
pub mod describe;
pub mod event;
pub mod ids;
pub mod queue;
pub mod step;
pub mod text;

pub use cancel::{CancelKind, CancelRecord};
pub use codec::{DecodeError, SCHEMA_VERSION};
pub use describe::{ConfigField, OpDescription};
pub use event::{Event, EventKind, LogLevel};
pub use ids::{EventId, OpName, OpNameError, OpRef, OpRefError, RunId, StepId};
pub use step::{StepInput, StepMessage};
