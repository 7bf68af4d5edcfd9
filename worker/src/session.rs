//! Broker sessions: one connection at a time, opened again with capped, jittered backoff
//! when it is lost. A session checks the op's queue, opens the events channel, publishes
//! what the last session could not, catches up with run cancellations, and then consumes
//! (`consume`) until shutdown, a recycle, or the connection's loss.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use lapin::{
    Channel, Connection, Consumer,
    options::{BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use opflow_amqp::{
    Login, Publisher,
    connect::{ConnectError, ConnectRetry},
    topology::{self, TopologyError},
};
use opflow_protocol::{Event, queue};
use tokio_util::sync::CancellationToken;

use crate::{
    cancel::Cancels,
    consume::SessionEnd,
    op::{OpSpec, WorkerSettings},
    report::Reporter,
    retire::Retirement,
    step::Worker,
};

/// How the worker ended, for `Op::main`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Shutdown was requested; the step in hand was settled.
    Stopped,
    /// A step's handler would not stop when told to: the step is settled, and the process
    /// must exit now (without waiting for the handler) so that nothing of it runs on.
    Recycle,
}

/// Runs the worker until `shutdown` is cancelled (then drains). A lost broker connection
/// is opened again with capped, jittered backoff and consuming resumes; only a missing
/// queue (or a broker unreachable at start) ends the worker with an error.
pub(crate) async fn run(
    spec: Arc<OpSpec>,
    settings: WorkerSettings,
    shutdown: CancellationToken,
) -> anyhow::Result<Exit> {
    let id = format!("{}/{}/{}", spec.op, hostname(), std::process::id());
    // At start a wrong URL should be reported soon; once connected, outages are waited out.
    let mut retry = ConnectRetry::default();
    // Sessions that fail right after connecting (a channel refused, say) are spaced out
    // like connection attempts, so a broker that half-works is not hammered.
    let mut reconnect = opflow_process::backoff::Reconnect::default();
    let unsent = Arc::new(std::sync::Mutex::new(Vec::new()));
    let login = Login::of(&settings.amqp_url).context("starting the worker")?;
    let dispatcher_user = settings.dispatcher_user.clone().unwrap_or_else(|| login.user.clone());
    let cancels = Cancels::from(dispatcher_user);
    // One count for the whole process, across reconnects.
    let retirement = Retirement::new(settings.max_steps, settings.max_rss_mb);
    loop {
        let connection = match opflow_amqp::connect(&settings.amqp_url, &id, retry, &shutdown).await {
            Ok(connection) => connection,
            Err(ConnectError::Cancelled { .. }) => {
                tracing::info!("stopped while connecting to the broker");
                return Ok(Exit::Stopped);
            }
            Err(error) => return Err(error).context("starting the worker"),
        };
        let session = Session {
            connection: &connection,
            spec: &spec,
            heartbeat: settings.heartbeat,
            stop_grace: settings.stop_grace,
            handover_after: settings.handover_after,
            cancels: cancels.clone(),
            retirement: retirement.clone(),
            id: &id,
            user: &login.user,
            unsent: unsent.clone(),
        };
        reconnect.session_started();
        let end = session.run(&shutdown).await;
        if let Err(error) = connection.close(200, "worker stopping".into()).await {
            tracing::debug!(%error, "closing the connection failed");
        }
        match end {
            SessionEnd::Shutdown => {
                tracing::info!("stopped cleanly");
                return Ok(Exit::Stopped);
            }
            SessionEnd::Recycle => return Ok(Exit::Recycle),
            SessionEnd::Fatal(error) => return Err(error),
            SessionEnd::Lost(error) => {
                if !reconnect.after_loss(format!("{error:#}"), &shutdown).await {
                    return Ok(Exit::Stopped);
                }
                retry = ConnectRetry::forever();
            }
        }
    }
}

/// One connection's worth of consuming.
struct Session<'a> {
    connection: &'a Connection,
    spec: &'a Arc<OpSpec>,
    heartbeat: Duration,
    stop_grace: Duration,
    handover_after: Duration,
    cancels: Cancels,
    retirement: Retirement,
    id: &'a str,
    /// The broker user this worker logged in as: every message it publishes says so.
    user: &'a str,
    unsent: Arc<std::sync::Mutex<Vec<Event>>>,
}

impl Session<'_> {
    async fn run(self, shutdown: &CancellationToken) -> SessionEnd {
        // A failed passive declare closes its channel, so check on a throwaway one.
        let checked = async {
            let probe = self.connection.create_channel().await.context("opening a channel")?;
            let checked = topology::check_op_queue(&probe, &self.spec.op).await;
            if checked.is_ok()
                && let Err(error) = probe.close(200, "queue checked".into()).await
            {
                tracing::debug!(%error, "closing the probe channel failed");
            }
            anyhow::Ok(checked)
        };
        match checked.await {
            Ok(Ok(_)) => {}
            Ok(Err(missing @ TopologyError::MissingQueue { .. })) => {
                return SessionEnd::Fatal(
                    anyhow::Error::new(missing).context(format!("starting worker for {}", self.spec.op)),
                );
            }
            Ok(Err(other)) => return SessionEnd::Lost(other.into()),
            Err(error) => return SessionEnd::Lost(error),
        }

        let publisher = match Publisher::open(self.connection, self.user).await {
            Ok(publisher) => publisher,
            Err(error) => {
                return SessionEnd::Lost(anyhow::Error::new(error).context("opening the events channel"));
            }
        };
        let reporter_stop = CancellationToken::new();
        let (reporter, reporter_task) = Reporter::spawn(publisher.clone(), reporter_stop.clone());
        let worker = Worker {
            spec: self.spec.clone(),
            heartbeat: self.heartbeat,
            stop_grace: self.stop_grace,
            handover_after: self.handover_after,
            cancels: self.cancels.clone(),
            retirement: self.retirement.clone(),
            id: self.id.to_owned(),
            reporter,
            shutdown: shutdown.clone(),
            unsent: self.unsent.clone(),
            consumer_paused: Default::default(),
        };
        if let Err(error) = worker.publish_unsent().await {
            drop(worker);
            reporter_stop.cancel();
            if let Err(error) = reporter_task.await {
                tracing::warn!(%error, "the event publisher task failed");
            }
            return SessionEnd::Lost(error);
        }

        // Learn every cancel there is before taking a step.
        let follower_stop = CancellationToken::new();
        let follower = self.cancels.follow(self.connection, self.user, self.id, follower_stop.clone()).await;
        let end = match self.open_consumer().await {
            Ok((channel, consumer)) => {
                let end = worker.consume(&channel, consumer).await;
                // Closing the channel returns any message that was prefetched but not started.
                if let Err(error) = channel.close(200, "worker stopping".into()).await {
                    tracing::debug!(%error, "closing the consume channel failed");
                }
                end
            }
            Err(error) => SessionEnd::Lost(error),
        };

        follower_stop.cancel();
        if let Some(follower) = follower
            && let Err(error) = follower.await
        {
            tracing::warn!(%error, "the cancels follower failed");
        }
        drop(worker);
        reporter_stop.cancel();
        if let Err(error) = reporter_task.await {
            tracing::warn!(%error, "the event publisher task failed");
        }
        // Close every channel before the connection, so that nothing is torn down under a
        // channel still closing (lapin reports that as a connection error).
        if let Err(error) = publisher.channel().close(200, "worker stopping".into()).await {
            tracing::debug!(%error, "closing the events channel failed");
        }
        end
    }

    async fn open_consumer(&self) -> anyhow::Result<(Channel, Consumer)> {
        let channel = self.connection.create_channel().await.context("opening the consume channel")?;
        // Prefetch 1: see the module docs.
        channel.basic_qos(1, BasicQosOptions::default()).await.context("setting prefetch 1")?;
        let queue_name = queue::op_queue(&self.spec.op);
        let consumer = channel
            .basic_consume(
                queue_name.as_str().into(),
                self.id.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consuming {queue_name}"))?;
        tracing::info!(op = %self.spec.op, queue = %queue_name, worker = %self.id, "consuming");
        Ok((channel, consumer))
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
