//! The dispatcher service: connects to PostgreSQL and RabbitMQ, declares the topology, and
//! runs the outbox publisher, the events consumer, the retry loop and the HTTP API until
//! shutdown, then drains them: in-flight batches finish, unacked events go back to the
//! queue, and nothing is half-applied.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use lapin::Connection;
use opflow_amqp::{Publisher, connect::ConnectRetry, topology};
use tokio::{sync::Notify, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{
    api::{self, ApiState},
    broker::{events::EventConsumer, publish::StepPublisher},
    config::Settings,
    scheduler,
    store::{Store, run_plan::PlanCache},
};

/// Connects to both services and declares what the dispatcher needs on the broker.
pub async fn connect(
    settings: &Settings,
    cancel: &CancellationToken,
) -> anyhow::Result<(Store, Arc<Connection>)> {
    let store = Store::connect(&settings.database_url, cancel).await.context("connecting to PostgreSQL")?;
    let redacted = opflow_process::redact_url(&settings.amqp_url);
    let connection = opflow_amqp::connect(
        &settings.amqp_url,
        &redacted,
        "opflow-dispatcher",
        ConnectRetry::default(),
        cancel,
    )
    .await
    .context("connecting to RabbitMQ")?;
    let channel = connection.create_channel().await.context("opening a channel")?;
    topology::declare_shared(&channel, settings.events_queue_kind()?)
        .await
        .context("declaring the topology")?;
    // A broker that lost its definitions (a fresh node) gets every registered op's queue
    // back, so steps for registered ops are never unroutable.
    for op in store.registered_ops().await.context("reading the op registry")? {
        let queue_settings = store.op_queue_settings(&op).await?.unwrap_or_default();
        topology::declare_op_queue(&channel, &op, queue_settings)
            .await
            .with_context(|| format!("declaring the queue of {op}"))?;
    }
    if let Err(error) = channel.close(200, "topology declared".into()).await {
        tracing::debug!(%error, "closing the topology channel failed");
    }
    Ok((store, Arc::new(connection)))
}

/// Runs the dispatcher until `shutdown` is cancelled, then drains. Returns an error if a
/// part of it fails on its own.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (store, connection) = connect(&settings, &shutdown).await?;
    run_connected(settings, store, connection, shutdown).await
}

/// As [`run`], with the store and broker connection already open (see [`connect`]).
pub async fn run_connected(
    settings: Settings,
    store: Store,
    connection: Arc<Connection>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let plans = Arc::new(PlanCache::default());
    let wake = Arc::new(Notify::new());
    // Parts stop on `stop`, cancelled below on shutdown or when one of them fails. It is
    // not a child of `shutdown`: a part that finished draining must not look like a failure.
    let stop = CancellationToken::new();
    let mut parts: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();

    let publisher = StepPublisher {
        store: store.clone(),
        plans: plans.clone(),
        publisher: Publisher::open(&connection).await.context("opening the publish channel")?,
        batch_size: settings.publish_batch.max(1),
        max_inputs_bytes: settings.max_inputs_bytes,
    };
    parts.spawn({
        let (wake, stop) = (wake.clone(), stop.clone());
        async move { ("outbox publisher", publisher.run(wake, stop).await.map_err(Into::into)) }
    });

    let consumer =
        EventConsumer { store: store.clone(), plans: plans.clone(), batch_size: settings.event_batch.max(1) };
    parts.spawn({
        let (connection, wake, stop) = (connection.clone(), wake.clone(), stop.clone());
        async move { ("events consumer", consumer.run(&connection, wake, stop).await.map_err(Into::into)) }
    });

    parts.spawn({
        let (store, wake, stop, every) = (store.clone(), wake.clone(), stop.clone(), settings.retry_poll());
        async move {
            scheduler::release_retries(store, wake, every, stop).await;
            ("retry scheduler", Ok(()))
        }
    });

    let listener = tokio::net::TcpListener::bind(settings.api_addr).await.with_context(|| {
        format!("binding the HTTP API to {}; is another dispatcher running?", settings.api_addr)
    })?;
    let api_addr: SocketAddr = listener.local_addr()?;
    let router = api::router(ApiState { store: store.clone(), broker: connection.clone() });
    parts.spawn({
        let stop = stop.clone();
        async move {
            let served = axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned()).await;
            ("HTTP API", served.context("serving the HTTP API"))
        }
    });
    tracing::info!(api = %api_addr, "dispatcher ready");

    let mut failure = None;
    tokio::select! {
        biased;
        () = shutdown.cancelled() => tracing::info!("shutting down: draining in-flight work"),
        Some(joined) = parts.join_next() => {
            let (part, result) = joined.context("a dispatcher task panicked")?;
            let error = result.err().unwrap_or_else(|| anyhow::anyhow!("stopped unexpectedly"));
            tracing::error!(part, error = format!("{error:#}"), "dispatcher part failed; stopping");
            failure = Some(error.context(format!("the dispatcher's {part} failed")));
        }
    }
    stop.cancel();
    let drained = tokio::time::timeout(settings.drain_timeout(), async {
        while let Some(joined) = parts.join_next().await {
            match joined {
                Ok((part, Err(error))) => {
                    tracing::warn!(part, error = format!("{error:#}"), "failed while draining")
                }
                Ok((_, Ok(()))) => {}
                Err(error) => tracing::warn!(%error, "a dispatcher task panicked while draining"),
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(timeout = ?settings.drain_timeout(), "drain timed out; stopping anyway");
        parts.abort_all();
    }
    if let Err(error) = connection.close(200, "dispatcher stopping".into()).await {
        tracing::debug!(%error, "closing the broker connection failed");
    }
    match failure {
        Some(error) => Err(error),
        None => {
            tracing::info!("dispatcher stopped");
            Ok(())
        }
    }
}
