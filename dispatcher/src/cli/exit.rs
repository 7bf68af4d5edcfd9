//! How a command ends: its exit code, the same for every command (0 success; 1 the run
//! failed; 2 invalid input, nothing was changed; 3 opflow could not do its work), and the
//! error that marks the user's mistake.

use std::process::ExitCode;

use opflow_api_model::RunStatus;

pub const EXIT_RUN_FAILED: u8 = 1;
pub const EXIT_INVALID_INPUT: u8 = 2;
pub const EXIT_UNAVAILABLE: u8 = 3;

/// A mistake in what the user gave us: a plan, a file, an argument. Exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

/// The exit code of a command that followed a run: 0 if it succeeded, else [`EXIT_RUN_FAILED`].
pub fn exit_code(status: RunStatus) -> ExitCode {
    if status == RunStatus::Succeeded { ExitCode::SUCCESS } else { ExitCode::from(EXIT_RUN_FAILED) }
}
