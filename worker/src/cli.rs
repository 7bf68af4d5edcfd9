//! The command line every op binary shares (`--describe`, the worker settings) and
//! [`Op::main`], which parses it and runs the worker until it is told to stop.

use std::{process::ExitCode, sync::Arc};

use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::op::{Op, WorkerSettings};

/// An op binary's command line. Every option also reads an `OPFLOW_*` variable.
#[derive(Debug, Parser)]
#[command(
    about = "An opflow remote op: consumes its op version's queue and runs each step it receives",
    long_about = "An opflow remote op. It consumes the RabbitMQ queue of its exact op version \
                  (opflow.op.<name>.<version>) one message at a time, runs the step, reports \
                  progress and the result as events, and acknowledges the message only after the \
                  result is confirmed by the broker. SIGTERM or Ctrl-C finishes the step in hand, \
                  then exits 0.\n\nRegister it once with `opflow ops add <this binary>`."
)]
struct Args {
    /// Print the op's name, version and configuration as JSON, and exit
    #[arg(long)]
    describe: bool,

    #[command(flatten)]
    settings: WorkerSettings,
}

impl Op {
    /// Parses the command line and runs the op until it is told to stop. Exit codes: 0
    /// after a clean stop, 1 when the worker failed, 2 when the op or its arguments are
    /// invalid.
    pub fn main(self) -> ExitCode {
        let args = Args::parse();
        let spec = match self.into_spec() {
            Ok(spec) => spec,
            Err(message) => {
                eprintln!("error: {message}");
                return ExitCode::from(2);
            }
        };
        if args.describe {
            use std::io::Write;
            // A reader that stops early (`| head`) is not an error worth a panic.
            return match writeln!(std::io::stdout(), "{}", spec.description.to_json()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("error: cannot write the description: {error}");
                    ExitCode::FAILURE
                }
            };
        }
        let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(error) => {
                eprintln!("error: cannot start the async runtime: {error}");
                return ExitCode::FAILURE;
            }
        };
        // Exported spans name the op as their service, so each op is its own service in a
        // trace viewer.
        let service = spec.op.name.to_string();
        let exit = runtime.block_on(async move {
            let _telemetry = opflow_process::init(service, args.settings.log_format, "info");
            let shutdown = CancellationToken::new();
            tokio::spawn(opflow_process::cancel_on_signal(shutdown.clone()));
            match crate::session::run(Arc::new(spec), args.settings, shutdown).await {
                Ok(exit) => Ok(exit),
                Err(error) => {
                    tracing::error!(error = format!("{error:#}"), "worker stopped");
                    Err(())
                }
            }
        });
        match exit {
            Ok(crate::session::Exit::Stopped) => ExitCode::SUCCESS,
            Ok(crate::session::Exit::Recycle) => {
                // Not a return through the runtime's drop, which would wait for the very
                // blocking work this exit is meant to stop.
                eprintln!("exiting: a step's handler did not stop when told to (its step is reported)");
                std::process::exit(0)
            }
            Err(()) => ExitCode::FAILURE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let args = Args::try_parse_from(["noop", "--amqp-url", "amqp://guest:s3cr3t@rabbit/%2f"]).unwrap();
        let debug = format!("{args:?}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
        assert!(debug.contains("amqp://guest:***@rabbit/%2f"), "{debug}");
    }
}
