//! The `opflow` command line: one module per command group, each a thin layer over the
//! library (compile, store, register, serve) that adds context to errors and formats output.
//!
//! Two kinds of commands: a user's (`run`, `status`, `outputs`, `cancel`, `watch`,
//! `events`, `logs`, `webhooks`) are clients of the dispatcher's HTTP API ([`client`]) and
//! need no database credentials; an administrator's (`up`, `dispatcher`, `ops`, `tokens`,
//! `gc`, `bench`) use the database and the broker directly.
//!
//! Exit codes, for every command: 0 success; 1 the run failed (`run --wait`, `up --run`);
//! 2 invalid input (a bad plan, file or argument; nothing was changed); 3 opflow could not
//! do its work (a service unreachable, an internal error).

/// `println!` for the CLI's output: a closed stdout (`opflow ops list | head`) ends the
/// command quietly, exit 0, as it would any Unix tool (see [`out`]).
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::cli::out::line(format_args!($($arg)*))
    };
}

mod admin;
mod assets;
mod bench;
pub mod client;
pub mod exit;
mod gc;
mod ops;
mod out;
mod plan;
mod render;
mod run;
mod runs;
mod schedules;
mod tokens;
mod up;
mod watch;
mod webhooks;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use opflow_process::LogFormat;
use tokio_util::sync::CancellationToken;

use exit::{EXIT_INVALID_INPUT, EXIT_UNAVAILABLE, InvalidInput};

use crate::settings::Settings;

#[derive(Debug, Parser)]
#[command(
    name = "opflow",
    version,
    about = "Queue-driven workers for asset plans: a dispatcher, RabbitMQ, PostgreSQL and remote ops",
    long_about = "opflow compiles asset plans (YAML DAGs of data assets with partitions and parameter \
                  sweeps) into steps, publishes them to one RabbitMQ queue per op version, and tracks \
                  runs in PostgreSQL while remote op workers execute them.\n\n\
                  Quick start on one machine:\n  \
                  opflow up --run examples/defi-risk.yaml\n\n\
                  With a dispatcher running (opflow up, or opflow dispatcher), users submit and follow \
                  runs over its HTTP API: opflow run plan.yaml --wait, opflow watch RUN, opflow logs RUN \
                  (--server / OPFLOW_SERVER, default http://127.0.0.1:7600; OPFLOW_TOKEN when it needs one).\n\n\
                  Settings come from built-in defaults, then --config FILE, then OPFLOW_* variables \
                  (OPFLOW_AMQP_URL, OPFLOW_DATABASE_URL, OPFLOW_API_ADDR, ...).\n\n\
                  Exit codes: 0 success; 1 the run failed; 2 invalid input (nothing was changed); \
                  3 opflow could not do its work (a service is unreachable)."
)]
pub struct Cli {
    /// Config file (TOML or YAML) with settings such as amqp_url and database_url
    #[arg(long, global = true, env = "OPFLOW_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Log line format on stderr
    #[arg(long, global = true, env = "OPFLOW_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the dispatcher and workers for the ops on this machine; Ctrl-C drains and stops
    Up(up::UpArgs),
    /// Run the dispatcher service alone (publisher, events consumer, retries, HTTP API)
    Dispatcher,
    /// Register and list op versions
    #[command(subcommand)]
    Ops(ops::OpsCommand),
    /// Check plans without running them
    #[command(subcommand)]
    Plan(plan::PlanCommand),
    /// Submit a plan as a run, optionally waiting for it to finish (over the HTTP API)
    Run(run::RunArgs),
    /// List runs, newest first: by status, plan and owner
    Runs(runs::RunsArgs),
    /// Follow a run live: a bar per asset, progress messages, failures as they happen
    Watch(watch::WatchArgs),
    /// Show a run's state
    Status(run::StatusArgs),
    /// Show the outputs (or errors) of a run's steps
    Outputs(run::OutputsArgs),
    /// Print a run's events (progress, logs, results), optionally following it
    Events(watch::EventsArgs),
    /// Print the log lines a run's ops wrote, optionally following it
    Logs(watch::LogsArgs),
    /// Cancel a run: queued and waiting steps never start, running ones are told to stop
    Cancel(run::CancelArgs),
    /// The asset catalog across runs: which cells are materialized, stale, failed or missing;
    /// history; lineage
    #[command(subcommand)]
    Assets(assets::AssetsCommand),
    /// Tell URLs when runs end (signed webhooks): add, list, remove, deliveries, redeliver
    #[command(subcommand)]
    Webhooks(webhooks::WebhooksCommand),
    /// Run plans on a cron, each tick once: add, list, show, pause, resume, remove, backfill
    #[command(subcommand)]
    Schedules(schedules::SchedulesCommand),
    /// Delete finished runs past their retention now (administrators; uses the database)
    Gc(gc::GcArgs),
    /// Create, list and revoke API tokens (administrators; uses the database)
    #[command(subcommand)]
    Tokens(tokens::TokensCommand),
    /// Measure throughput and latency against the broker's own limit, in a sandbox
    #[command(
        long_about = "Measure throughput and latency against the broker's own limit, in a sandbox.\n\n\
        Each invocation creates its own database and RabbitMQ vhost (with rabbitmqctl, so run it on the \
        broker's machine), starts its own dispatcher and noop workers (noop must sit next to opflow: \
        `cargo build --release -p opflow-dispatcher -p noop`), verifies every run (each step succeeded \
        exactly once, outputs present) and removes everything afterwards. `raw` is always measured \
        first: every other figure is also given as a ratio to it. The events queue's type follows \
        the `events_queue_type` setting (OPFLOW_EVENTS_QUEUE_TYPE). Fields, figures and what bounds \
        them: docs/benchmarks.md."
    )]
    Bench(bench::BenchArgs),
}

/// Parses the command line, runs the command, and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    match runtime.block_on(run_command(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            if error.chain().any(|cause| cause.is::<InvalidInput>()) {
                ExitCode::from(EXIT_INVALID_INPUT)
            } else {
                ExitCode::from(EXIT_UNAVAILABLE)
            }
        }
    }
}

async fn run_command(cli: Cli) -> anyhow::Result<ExitCode> {
    let long_running = matches!(cli.command, Command::Up(_) | Command::Dispatcher);
    let _telemetry =
        opflow_process::init("opflow", cli.log_format, if long_running { "info" } else { "warn" });
    let settings = Settings::load(cli.config.as_deref()).map_err(|e| InvalidInput(e.to_string()))?;
    let cancel = CancellationToken::new();
    match cli.command {
        Command::Up(args) => up::up(args, settings, cli.log_format).await,
        Command::Dispatcher => {
            tokio::spawn(opflow_process::cancel_on_signal(cancel.clone()));
            crate::service::run(settings, cancel).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Ops(command) => ops::run(command, &settings, &cancel).await,
        Command::Plan(command) => plan::run(command, &settings, &cancel).await,
        Command::Run(args) => run::run(args).await,
        Command::Watch(args) => watch::watch(args).await,
        Command::Status(args) => run::status(args).await,
        Command::Runs(args) => runs::runs(args).await,
        Command::Outputs(args) => run::outputs(args).await,
        Command::Events(args) => watch::events(args).await,
        Command::Logs(args) => watch::logs(args).await,
        Command::Cancel(args) => run::cancel(args).await,
        Command::Assets(command) => assets::run(command).await,
        Command::Webhooks(command) => webhooks::run(command).await,
        Command::Schedules(command) => schedules::run(command).await,
        Command::Tokens(command) => tokens::run(command, &settings, &cancel).await,
        Command::Gc(args) => {
            // Ctrl-C stops between runs, never in the middle of one.
            tokio::spawn(opflow_process::cancel_on_signal(cancel.clone()));
            gc::gc(args, &settings, &cancel).await
        }
        Command::Bench(args) => bench::bench(args, &settings, &cancel).await,
    }
}
