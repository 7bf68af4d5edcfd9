//! `opflow ops add`, `scale`, `credentials` and `list`.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::Subcommand;
use opflow_amqp::{OpQueueSettings, QueueKind, connect::ConnectRetry};
use opflow_protocol::{OpRef, queue};
use tokio_util::sync::CancellationToken;

use super::{exit::InvalidInput, render};
use crate::{
    ops::{
        consumer_timeout,
        identity::BrokerUsers,
        register::{self, OpSource, RegisterError},
    },
    settings::Settings,
    store::ops::{Registration, ScaleSettings},
};

#[derive(Debug, Subcommand)]
pub enum OpsCommand {
    /// Register an op version and declare its queue: runs `<op command> --describe` (a Rust op
    /// binary, or a Python op's command), or reads the description file it wrote
    #[command(after_help = "Examples:\n  opflow ops add target/release/price-paths\n  \
        opflow ops add ~/.cache/opflow/python-ops/bin/loss-aggregate\n  \
        opflow ops add -- python3 -m my_op\n  \
        opflow ops add --description loss-aggregate.json   # written by `loss-aggregate --describe`")]
    Add {
        /// The op's command: its binary, or a program and its arguments (after `--`), e.g.
        /// target/debug/noop or `-- python3 -m my_op`; run with `--describe` added
        #[arg(required_unless_present = "description", conflicts_with = "description", num_args = 1..)]
        command: Vec<std::ffi::OsString>,
        /// Register from this file instead of running the op: what the op printed for
        /// `--describe` (for an op whose runtime this machine lacks)
        #[arg(long, value_name = "FILE")]
        description: Option<PathBuf>,
        /// Queue type: quorum (replicated, with a delivery limit) or classic (faster, no limit)
        #[arg(long, default_value = "quorum", value_parser = ["quorum", "classic"])]
        queue_type: String,
        /// Deliveries of one step before it is dead-lettered (quorum queues)
        #[arg(long, default_value_t = OpQueueSettings::default().delivery_limit)]
        delivery_limit: u32,
    },
    /// Set how an op version's workers scale from zero (KEDA's RabbitMQ scaler's rule and
    /// names; `opflow up` applies them, and the Helm chart renders them) and recycle
    Scale {
        /// The op version, e.g. noop@1.1.0
        op: String,
        /// minReplicaCount: workers kept even when idle
        #[arg(long, value_parser = clap::value_parser!(u32).range(0..=1_000))]
        min: Option<u32>,
        /// maxReplicaCount
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000))]
        max: Option<u32>,
        /// value: ready + unacknowledged messages per replica
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        value: Option<u32>,
        /// activationValue: more messages than this wake the op at zero
        #[arg(long, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
        activation: Option<u32>,
        /// pollingInterval, e.g. 5s (1s to 1h)
        #[arg(long, value_parser = polling)]
        polling: Option<Duration>,
        /// cooldownPeriod: idle this long before scaling to zero, e.g. 5m (at most 7d)
        #[arg(long, value_parser = cooldown)]
        cooldown: Option<Duration>,
        /// A worker exits (and is replaced) after this many steps; 0 clears it
        #[arg(long, value_parser = clap::value_parser!(u32).range(0..=i32::MAX as i64))]
        max_steps: Option<u32>,
        /// A worker exits (and is replaced) once its resident memory passes this many MiB; 0 clears it
        #[arg(long, value_parser = clap::value_parser!(u32).range(0..=1_048_576))]
        max_rss_mb: Option<u32>,
        /// The most ready messages kept in the op's queue; the rest wait in the run store
        /// and are sent in a fair order across teams and runs. 0 restores the default:
        /// 2 × max × value, at least 8, widened to what the workers take in
        /// publish_window_ms (100 ms by default)
        #[arg(long, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
        window: Option<u32>,
        /// The most steps of this op version in flight (published and not yet done) at
        /// once, over every run and team, exactly; 0 clears it. Plans cap steps per key
        /// with `concurrency` (docs/fair-sharing.md)
        #[arg(long, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
        max_in_flight: Option<u32>,
    },
    /// Give an op version's broker user a new password and print the RabbitMQ URL its
    /// workers log in with (OPFLOW_AMQP_URL). Workers already connected stay connected; a
    /// reconnecting one needs the new URL. Made through RabbitMQ's management API
    /// (broker_management_url)
    Credentials {
        /// The op version, e.g. noop@1.1.0
        op: String,
        /// Set this password, read from standard input (one line), rather than a random one
        #[arg(long)]
        password_stdin: bool,
    },
    /// List registered op versions, their scaling settings, and their workers
    List {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(
    command: OpsCommand,
    settings: &Settings,
    cancel: &CancellationToken,
) -> anyhow::Result<ExitCode> {
    match command {
        OpsCommand::Add { command, description, queue_type, delivery_limit } => {
            let kind: QueueKind = queue_type.parse().map_err(InvalidInput)?;
            let source = op_source(command, description)?;
            let store = super::admin::store(settings, cancel).await?;
            let connection =
                opflow_amqp::connect(&settings.amqp_url, "opflow-cli", ConnectRetry::default(), cancel)
                    .await
                    .context("connecting to RabbitMQ")?;
            // The shared exchanges first: the op queue dead-letters into one, and its workers
            // publish events to another, possibly before any dispatcher has started.
            for warning in opflow_amqp::topology::declare_shared(&connection, settings.events_queue_type)
                .await
                .context("declaring the shared exchanges and queues")?
            {
                eprintln!("warning: {warning}");
            }
            let channel = connection.create_channel().await.context("opening a channel")?;
            let outcome =
                register::register(&store, &channel, &source, OpQueueSettings { kind, delivery_limit }).await;
            let (description, registration) = outcome.map_err(|error| match error {
                RegisterError::Store(_) | RegisterError::Queue { .. } => anyhow::Error::new(error),
                invalid => InvalidInput(invalid.to_string()).into(),
            })?;
            if let Some(longest) = description.longest_step_ms.map(std::time::Duration::from_millis) {
                let fallback = std::time::Duration::from_millis(settings.consumer_timeout_ms);
                let (timeout, source) =
                    consumer_timeout::consumer_timeout(settings.amqp_url.expose(), fallback).await;
                if let Some(warning) =
                    consumer_timeout::warning(&description.op.to_string(), longest, timeout, source)
                {
                    eprintln!("warning: {warning}");
                }
            }
            let identity = if settings.op_identity.required(false) {
                let users = BrokerUsers::new(settings)?;
                let user = users.ensure(&description.op).await.context("making the op's broker user")?;
                Some(user)
            } else {
                None
            };
            let settings = store.ops().queue_settings(&description.op).await?.unwrap_or_default();
            let verb = match registration {
                Registration::New => "registered",
                Registration::Updated => "already registered; description refreshed:",
            };
            say!(
                "{verb} {} (queue {}, {}, delivery limit {})",
                description.op,
                queue::op_queue(&description.op),
                settings.kind.as_str(),
                settings.delivery_limit
            );
            if let Some(user) = identity {
                say!(
                    "its workers log in to RabbitMQ as {user}; `opflow ops credentials {}` prints their URL",
                    description.op
                );
            }
            if let Err(error) = connection.close(200, "done".into()).await {
                tracing::debug!(%error, "closing the connection failed");
            }
            Ok(ExitCode::SUCCESS)
        }
        OpsCommand::Credentials { op, password_stdin } => {
            let op: OpRef = op.parse().map_err(|e| InvalidInput(format!("`{op}`: {e}")))?;
            let store = super::admin::store(settings, cancel).await?;
            if store.ops().queue_settings(&op).await?.is_none() {
                return Err(InvalidInput(format!(
                    "op {op} is not registered; register it with `opflow ops add <binary>` first"
                ))
                .into());
            }
            let password = if password_stdin {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line).context("reading the password from standard input")?;
                let password = line.trim_end_matches(['\r', '\n']).to_owned();
                if password.is_empty() {
                    return Err(
                        InvalidInput("--password-stdin: standard input holds no password".into()).into()
                    );
                }
                Some(password)
            } else {
                None
            };
            let users = BrokerUsers::new(settings)?;
            let credentials = users.issue(&op, password).await.context("setting the op's broker password")?;
            eprintln!(
                "{op}'s workers log in as {}; give them this URL as OPFLOW_AMQP_URL:",
                credentials.user
            );
            say!("{}", credentials.amqp_url.expose());
            Ok(ExitCode::SUCCESS)
        }
        OpsCommand::Scale {
            op,
            min,
            max,
            value,
            activation,
            polling,
            cooldown,
            max_steps,
            max_rss_mb,
            window,
            max_in_flight,
        } => {
            let op: OpRef = op.parse().map_err(|e| InvalidInput(format!("`{op}`: {e}")))?;
            let store = super::admin::store(settings, cancel).await?;
            let Some(mut scaling) = store.ops().scale_settings(&op).await? else {
                return Err(InvalidInput(format!(
                    "op {op} is not registered; `opflow ops list` shows the registered versions"
                ))
                .into());
            };
            let set = |value: Option<u32>, into: &mut i32| {
                if let Some(value) = value {
                    *into = value.min(i32::MAX as u32) as i32;
                }
            };
            set(min, &mut scaling.min_replicas);
            set(max, &mut scaling.max_replicas);
            set(value, &mut scaling.target_value);
            set(activation, &mut scaling.activation_value);
            set(polling.map(|d| d.as_secs() as u32), &mut scaling.polling_secs);
            set(cooldown.map(|d| d.as_secs() as u32), &mut scaling.cooldown_secs);
            let optional = |value: Option<u32>, into: &mut Option<i32>| {
                if let Some(value) = value {
                    *into = (value > 0).then_some(value.min(i32::MAX as u32) as i32);
                }
            };
            optional(max_steps, &mut scaling.max_steps);
            optional(max_rss_mb, &mut scaling.max_rss_mb);
            optional(window, &mut scaling.publish_window);
            optional(max_in_flight, &mut scaling.max_in_flight);
            check_scaling(&scaling).map_err(InvalidInput)?;
            store.ops().set_scale_settings(&op, scaling).await?;
            say!("{op}: {}", describe_scaling(&scaling));
            Ok(ExitCode::SUCCESS)
        }
        OpsCommand::List { json } => {
            let store = super::admin::store(settings, cancel).await?;
            let ops = store.ops().list().await?;
            if json {
                let ops: Vec<opflow_api_model::OpVersion> = ops.into_iter().map(Into::into).collect();
                say!("{}", serde_json::to_string_pretty(&ops)?);
            } else if ops.is_empty() {
                say!("no ops registered; register one with `opflow ops add <op binary>`");
            } else {
                let count = |n: Option<i32>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
                let rows: Vec<[String; 6]> = ops
                    .iter()
                    .map(|op| {
                        [
                            format!("{}@{}", op.name, op.version),
                            op.queue_type.clone(),
                            count(op.replicas),
                            count(op.desired),
                            describe_scaling(&op.scaling),
                            op.summary.clone(),
                        ]
                    })
                    .collect();
                render::table(&["OP", "QUEUE", "REPLICAS", "DESIRED", "SCALING", "SUMMARY"], &rows);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("`{text}` is not a duration like 5s or 5m: {e}"))
}

/// `text` as a duration of whole seconds within `min..=max`, refused otherwise (a cast
/// would have truncated a huge one to some other number of seconds).
fn duration_within(text: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let value = duration(text)?;
    if value < min || value > max {
        return Err(format!(
            "`{text}` is outside {}..={}",
            humantime::format_duration(min),
            humantime::format_duration(max)
        ));
    }
    Ok(value)
}

fn polling(text: &str) -> Result<Duration, String> {
    duration_within(text, Duration::from_secs(1), Duration::from_secs(3600))
}

fn cooldown(text: &str) -> Result<Duration, String> {
    duration_within(text, Duration::ZERO, Duration::from_secs(7 * 24 * 3600))
}

/// Refuses settings no autoscaler could follow.
fn check_scaling(s: &ScaleSettings) -> Result<(), String> {
    if s.max_replicas < 1 {
        return Err(format!("--max {} must be at least 1", s.max_replicas));
    }
    if s.min_replicas > s.max_replicas {
        return Err(format!("--min {} is over --max {}", s.min_replicas, s.max_replicas));
    }
    if s.target_value < 1 {
        return Err("--value must be at least 1 message per replica".into());
    }
    if s.polling_secs < 1 {
        return Err("--polling must be at least 1s".into());
    }
    Ok(())
}

/// The settings on one line, in KEDA's names.
/// What `opflow ops add` registers from, checked before anything is connected to.
fn op_source(command: Vec<std::ffi::OsString>, description: Option<PathBuf>) -> anyhow::Result<OpSource> {
    if let Some(file) = description {
        if !file.is_file() {
            return Err(InvalidInput(format!(
                "op description {} does not exist; write it with the op's `--describe` (`my-op --describe > {}`)",
                file.display(),
                file.display()
            ))
            .into());
        }
        return Ok(OpSource::DescriptionFile(file));
    }
    let mut command = command.into_iter();
    let program = PathBuf::from(command.next().ok_or_else(|| InvalidInput("name the op's command".into()))?);
    // A bare name (`python3`) is looked up on PATH; a path must exist.
    if program.components().count() > 1 && !program.exists() {
        return Err(InvalidInput(format!(
            "op command {} does not exist; build the Rust ops with `cargo build --workspace --bins`, or install \
             a Python op's package (scripts/python-ops.sh) and name its command",
            program.display()
        ))
        .into());
    }
    Ok(OpSource::Command { program, args: command.collect() })
}

fn describe_scaling(s: &ScaleSettings) -> String {
    let mut text = format!(
        "min {} max {} value {} activation {} polling {}s cooldown {}s",
        s.min_replicas, s.max_replicas, s.target_value, s.activation_value, s.polling_secs, s.cooldown_secs
    );
    if let Some(steps) = s.max_steps {
        text.push_str(&format!(" max-steps {steps}"));
    }
    if let Some(mb) = s.max_rss_mb {
        text.push_str(&format!(" max-rss {mb}MiB"));
    }
    if let Some(window) = s.publish_window {
        text.push_str(&format!(" window {window}"));
    }
    if let Some(cap) = s.max_in_flight {
        text.push_str(&format!(" max-in-flight {cap}"));
    }
    text
}
