//! The SDK and runtime every opflow remote op links.
//!
//! An op binary is a handler plus a few lines of `main`:
//!
//! ```no_run
//! use opflow_worker::{Op, StepContext, StepError};
//! use serde_json::{Value, json};
//!
//! async fn double(ctx: StepContext) -> Result<Value, StepError> {
//!     #[derive(serde::Deserialize)]
//!     struct Params { x: f64 }
//!     let p: Params = ctx.params()?;
//!     ctx.progress(1.0, "done");
//!     Ok(json!({ "y": p.x * 2.0 }))
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     Op::new("double", opflow_worker::op_version!())
//!         .summary("Doubles x")
//!         .config_field("x", "number", "The number to double", Value::Null)
//!         .handler(double)
//!         .main()
//! }
//! ```
//!
//! The runtime consumes the op version's queue with prefetch 1, runs the handler under the
//! step's timeout, turns an error or a panic into a failed event, publishes the terminal
//! event with a confirm and only then acks the message (ack-late). SIGTERM or Ctrl-C stops
//! consuming, finishes the step in hand, acks it and exits 0. A step past its timeout, or
//! whose run was canceled, is told to stop through [`StepContext::cancelled`]; a handler
//! that does not return within the stop grace has its step reported and its process exit
//! (code 0), so that nothing it started runs on beside a retry.
//!
//! - [`op`]: the [`Op`] builder and the worker settings.
//! - `cli`: the command line of an op binary and [`Op::main`].
//! - [`context`]: what a handler sees ([`StepContext`]).
//! - [`error`]: [`StepError`], whose variant carries the retry decision.
//! - `retire`: worker recycling after so many steps or so much memory.
//! - `cancel`: run cancellation as the worker learns it (the cancels stream).
//! - `session`: broker sessions, one connection at a time, reconnecting.
//! - `consume`: the consume loop, one delivery at a time.
//! - `step`: one step, from delivery to settled lease: timeouts, cancels, panics.
//! - [`lease`]: [`lease::StepLease`], ack-late as a type.
//! - [`report`]: publishing events in order, with confirms.
//! - [`log_budget`]: what one attempt may send of log lines and progress reports.

#[doc(hidden)]
pub mod bench_hooks;
mod cancel;
mod cli;
mod consume;
pub mod context;
pub mod error;
pub mod lease;
pub mod log_budget;
pub mod op;
pub mod report;
mod retire;
mod session;
mod step;

pub use context::StepContext;
pub use error::StepError;
pub use op::{Op, WorkerSettings};
pub use opflow_protocol::{LogLevel, StepInput};

/// The largest output a step may return. Outputs travel inside downstream step messages
/// and live in the run store; large data belongs in the op's own storage, referenced here.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// The op's version: `OPFLOW_OP_VERSION` at build time if set, else the crate's own
/// Cargo.toml version. The override lets one crate be built as two versions side by side.
#[macro_export]
macro_rules! op_version {
    () => {
        match option_env!("OPFLOW_OP_VERSION") {
            Some(version) => version,
            None => env!("CARGO_PKG_VERSION"),
        }
    };
}
