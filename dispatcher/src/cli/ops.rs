//! `opflow ops add` and `opflow ops list`.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::Subcommand;
use opflow_amqp::{OpQueueSettings, QueueKind, connect::ConnectRetry};
use opflow_protocol::queue;
use tokio_util::sync::CancellationToken;

use super::InvalidInput;
use crate::{
    config::Settings,
    consumer_timeout,
    register::{self, RegisterError},
    store::ops::Registration,
};

#[derive(Debug, Subcommand)]
pub enum OpsCommand {
    /// Register an op version from its binary (runs `<binary> --describe`) and declare its queue
    Add {
        /// The op binary, e.g. target/debug/noop
        binary: PathBuf,
        /// Queue type: quorum (replicated, with a delivery limit) or classic (faster, no limit)
        #[arg(long, default_value = "quorum", value_parser = ["quorum", "classic"])]
        queue_type: String,
        /// Deliveries of one step before it is dead-lettered (quorum queues)
        #[arg(long, default_value_t = OpQueueSettings::default().delivery_limit)]
        delivery_limit: u32,
    },
    /// List registered op versions
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
        OpsCommand::Add { binary, queue_type, delivery_limit } => {
            let kind: QueueKind = queue_type.parse().map_err(InvalidInput)?;
            if !binary.exists() {
                return Err(InvalidInput(format!(
                    "op binary {} does not exist; build the ops with `cargo build --workspace --bins`",
                    binary.display()
                ))
                .into());
            }
            let store = super::store(settings, cancel).await?;
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
                register::register(&store, &channel, &binary, OpQueueSettings { kind, delivery_limit }).await;
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
            let settings = store.op_queue_settings(&description.op).await?.unwrap_or_default();
            let verb = match registration {
                Registration::New => "registered",
                Registration::Updated => "already registered; description refreshed:",
            };
            println!(
                "{verb} {} (queue {}, {}, delivery limit {})",
                description.op,
                queue::op_queue(&description.op),
                settings.kind.as_str(),
                settings.delivery_limit
            );
            if let Err(error) = connection.close(200, "done".into()).await {
                tracing::debug!(%error, "closing the connection failed");
            }
            Ok(ExitCode::SUCCESS)
        }
        OpsCommand::List { json } => {
            let store = super::store(settings, cancel).await?;
            let ops = store.list_ops().await?;
            if json {
                let ops: Vec<crate::api::types::OpVersion> = ops.into_iter().map(Into::into).collect();
                println!("{}", serde_json::to_string_pretty(&ops)?);
            } else if ops.is_empty() {
                println!("no ops registered; register one with `opflow ops add <op binary>`");
            } else {
                let width = ops.iter().map(|o| o.name.len() + o.version.len() + 1).max().unwrap_or(0);
                for op in ops {
                    let id = format!("{}@{}", op.name, op.version);
                    println!("{id:width$}  {:8} {}", op.queue_type, op.summary);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
