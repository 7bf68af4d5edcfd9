//! The dispatcher service: connects to PostgreSQL and RabbitMQ, serves the HTTP API, and,
//! while it holds the lease, declares the topology and runs the outbox publisher, the
//! events and dead-letter consumers and the retry loop. A lost broker connection is opened
//! again (capped, jittered backoff) and those parts restart on it. On shutdown they drain:
//! in-flight batches finish, unacked events go back to the queue, nothing is half-applied.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use lapin::Connection;
use opflow_amqp::{Publisher, connect::ConnectRetry, topology};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub mod applier;
pub mod dead_letter;
pub mod events;
pub mod fair_share;
pub mod freshness;
pub mod identical;
pub mod key_slots;
pub mod publisher;
pub mod recovery;
pub mod retention;
pub mod retries;
pub mod reuse;
pub mod scheduler;
pub mod senders;
pub mod webhooks;
pub mod window;

use applier::Applier;
use dead_letter::DeadLetterConsumer;
use events::EventConsumer;
use publisher::{StepPublisher, Wakeups};
use recovery::Recovery;
use senders::{CancelsAudit, SenderCheck};
use window::Arrivals;

use crate::{
    api::{self, ApiState, Readiness, Role, metrics::Metrics},
    settings::Settings,
    store::{
        Store,
        lease::{LeaderStore, Lease},
        run_plan::PlanCache,
    },
};

/// Connects to both services and declares what the dispatcher needs on the broker.
pub async fn connect(settings: &Settings, cancel: &CancellationToken) -> anyhow::Result<(Store, Connection)> {
    let store = Store::connect(&settings.database_url, cancel).await.context("connecting to PostgreSQL")?;
    let connection = connect_broker(settings, ConnectRetry::default(), cancel).await?;
    declare_topology(settings, &store, &connection).await?;
    Ok((store, connection))
}

async fn connect_broker(
    settings: &Settings,
    retry: ConnectRetry,
    cancel: &CancellationToken,
) -> anyhow::Result<Connection> {
    opflow_amqp::connect(&settings.amqp_url, "opflow-dispatcher", retry, cancel)
        .await
        .context("connecting to RabbitMQ")
}

/// Declares the shared exchanges and queues, and every registered op's queue: a broker
/// that lost its definitions (a fresh node) gets them back, so steps for registered ops
/// are never unroutable. Idempotent; run on every (re)connect.
async fn declare_topology(settings: &Settings, store: &Store, connection: &Connection) -> anyhow::Result<()> {
    for warning in topology::declare_shared(connection, settings.events_queue_type)
        .await
        .context("declaring the topology")?
    {
        tracing::warn!("{warning}");
    }
    let channel = connection.create_channel().await.context("opening a channel")?;
    for op in store.ops().registered().await.context("reading the op registry")? {
        let queue_settings = store.ops().queue_settings(&op).await?.unwrap_or_default();
        topology::declare_op_queue(&channel, &op, queue_settings)
            .await
            .with_context(|| format!("declaring the queue of {op}"))?;
    }
    if let Err(error) = channel.close(200, "topology declared".into()).await {
        tracing::debug!(%error, "closing the topology channel failed");
    }
    Ok(())
}

/// Runs the dispatcher until `shutdown` is cancelled, then drains. Returns an error if a
/// part of it fails on its own.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (store, connection) = connect(&settings, &shutdown).await?;
    run_connected(settings, store, connection, None, shutdown).await
}

/// An error that reconnecting cannot cure: the dispatcher stops with it.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct Fatal(opflow_amqp::claim::ClaimError);

/// What the leader's parts share across leases and broker sessions.
struct Shared {
    settings: Settings,
    store: Store,
    plans: Arc<PlanCache>,
    /// What the publisher hears of: steps queued and steps taken, from the applier and the
    /// retry scheduler.
    arrivals: Arc<Arrivals>,
    readiness: Readiness,
    /// The autoscaler running in this process (`opflow up`), told of every op published to.
    wakeups: Option<Arc<Wakeups>>,
    /// What the API serves at `/metrics`; the applier counts into it.
    metrics: Arc<Metrics>,
}

/// As [`run`], with the store and broker connection already open (see [`connect`]).
///
/// The HTTP API runs for the whole process. Publishing steps and applying events run only
/// while this process holds the lease (see [`crate::leader`]), and restart on a new broker
/// connection whenever the old one is lost.
pub async fn run_connected(
    settings: Settings,
    store: Store,
    connection: Connection,
    wakeups: Option<Arc<Wakeups>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let readiness = Readiness::default();
    let metrics = Arc::new(Metrics::new());
    let listener = tokio::net::TcpListener::bind(settings.api_addr).await.with_context(|| {
        format!(
            "binding the HTTP API to {}; is another dispatcher running on this address?",
            settings.api_addr
        )
    })?;
    let api_addr: SocketAddr = listener.local_addr()?;
    let auth_required = settings.api_auth.required_on(api_addr);
    let api_stop = CancellationToken::new();
    let api_store = store.with_own_pool(settings.api_pool_size, settings.api_statement_timeout);
    let state = ApiState {
        // The listener holds a connection for good: one of the dispatcher's, not of the API's few.
        followers: api::followers::Followers::start(store.clone(), api_stop.clone()),
        store: api_store,
        auth_required,
        readiness: readiness.clone(),
        webhooks_allow_private: settings.webhooks_allow_private,
        metrics: metrics.clone(),
        streams: api::stream_limits::StreamLimits::new(settings.api_streams_per_token),
    };
    let metrics_listener = match settings.metrics_addr {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("binding /metrics to {addr} (the setting `metrics_addr`); is the address in use?")
        })?),
        None => None,
    };
    if let Some(listener) = metrics_listener {
        tracing::info!(metrics = %listener.local_addr()?, "serving /metrics without a token");
        let router = api::metrics_router(state.clone());
        let stop = api_stop.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned()).await;
            if let Err(error) = served {
                tracing::error!(%error, "serving /metrics failed");
            }
        });
    }
    let ui = settings.ui.then(|| crate::ui::router(state.clone()));
    let router = match ui {
        Some(ui) => api::router(state).merge(ui),
        None => api::router(state),
    };
    let mut api = tokio::spawn({
        let stop = api_stop.clone();
        async move {
            // The client's address counts the event streams of callers without a token.
            axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
                .context("serving the HTTP API")
        }
    });
    tracing::info!(api = %api_addr, auth = if auth_required { "token required" } else { "open" }, "dispatcher API listening");

    let plans = Arc::new(PlanCache::new(settings.plan_cache_bytes(), metrics.plan_cache_gauges()));
    let shared = Shared { settings, store, plans, arrivals: Arc::default(), readiness, wakeups, metrics };
    let leading = shared.lead_while_leased(connection, &shutdown);
    tokio::pin!(leading);
    let outcome = tokio::select! {
        outcome = &mut leading => outcome,
        served = &mut api => {
            let error = match served {
                Ok(Ok(())) => anyhow::anyhow!("stopped unexpectedly"),
                Ok(Err(error)) => error,
                Err(panic) => anyhow::Error::new(panic),
            };
            tracing::error!(error = format!("{error:#}"), "the HTTP API failed; stopping");
            shutdown.cancel();
            if let Err(error) = leading.await {
                tracing::warn!(error = format!("{error:#}"), "leading failed while stopping");
            }
            return Err(error.context("the dispatcher's HTTP API failed"));
        }
    };
    api_stop.cancel();
    match tokio::time::timeout(shared.settings.drain_timeout(), api).await {
        Ok(Ok(Err(error))) => {
            tracing::warn!(error = format!("{error:#}"), "the HTTP API failed while draining")
        }
        Ok(_) => {}
        Err(_) => tracing::warn!("the HTTP API did not drain in time"),
    }
    if outcome.is_ok() {
        tracing::info!("dispatcher stopped");
    }
    outcome
}

impl Shared {
    /// Stands by until this process holds the lease, leads until it loses it, and again,
    /// until shutdown.
    async fn lead_while_leased(
        &self,
        connection: Connection,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let mut connection = Some(connection);
        loop {
            self.readiness.set_role(Role::Standby);
            let Some(lease) = Lease::acquire(&self.store, shutdown).await else {
                if let Some(connection) = connection.take() {
                    close_connection(&connection).await;
                }
                return Ok(());
            };
            self.readiness.set_role(Role::Leader);
            let stop = CancellationToken::new();
            let led = {
                let lead = self.lead(lease.store(), &mut connection, &stop);
                tokio::pin!(lead);
                tokio::select! {
                    // Leading ended by itself: a fatal error.
                    led = &mut lead => led,
                    () = async {
                        tokio::select! {
                            () = shutdown.cancelled() => {}
                            () = lease.lost().cancelled() => {}
                        }
                    } => {
                        stop.cancel();
                        lead.await
                    }
                }
            };
            lease.release().await;
            if shutdown.is_cancelled() {
                return led;
            }
            if led.is_err() {
                stop.cancel();
            }
            led?;
            tracing::warn!("lost the dispatcher lease; stopped publishing and applying, standing by");
        }
    }

    /// Leads until `stop`: the retry scheduler for the whole time, the broker parts for
    /// one connection after another.
    async fn lead(
        &self,
        leader: LeaderStore,
        first: &mut Option<Connection>,
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        let scheduler = tokio::spawn(retries::release_retries(
            leader.clone(),
            self.arrivals.clone(),
            self.settings.retry_poll(),
            stop.clone(),
        ));
        let retention = tokio::spawn(retention::apply_retention(
            self.store.clone(),
            self.plans.clone(),
            self.settings.retention,
            stop.clone(),
        ));
        let schedules = tokio::spawn(scheduler::run_schedules(self.store.clone(), stop.clone()));
        let freshness = tokio::spawn(freshness::watch_freshness(self.store.clone(), stop.clone()));
        let webhooks = tokio::spawn(webhooks::deliver_while_leading(
            leader.clone(),
            webhooks::DeliveryRetryPolicy {
                retry_for: self.settings.webhooks_retry_for,
                max_backoff: self.settings.webhooks_max_backoff,
            },
            self.settings.webhooks_allow_private,
            self.metrics.clone(),
            stop.clone(),
        ));
        let mut reconnect = opflow_process::backoff::Reconnect::default();
        let mut outcome = Ok(());
        loop {
            let connection = match first.take() {
                Some(connection) => connection,
                None => match connect_broker(&self.settings, ConnectRetry::forever(), stop).await {
                    Ok(connection) => connection,
                    // Only cancellation ends a connect that retries forever.
                    Err(_) => break,
                },
            };
            reconnect.session_started();
            let connection = Arc::new(connection);
            let session = self.broker_session(&leader, &connection, stop).await;
            close_connection(&connection).await;
            match session {
                Ok(()) => break,
                Err(error) if error.is::<Fatal>() => {
                    self.readiness.broker_down();
                    outcome = Err(error);
                    break;
                }
                Err(error) => {
                    let error = format!("{error:#}");
                    self.readiness.broker_down();
                    if !reconnect.after_loss(error, stop).await {
                        break;
                    }
                }
            }
        }
        if outcome.is_err() {
            // Fatal: stop the time-driven parts too.
            scheduler.abort();
            retention.abort();
            schedules.abort();
            freshness.abort();
            webhooks.abort();
        }
        if let Err(error) = scheduler.await
            && error.is_panic()
        {
            tracing::warn!(%error, "the retry scheduler panicked");
        }
        if let Err(error) = retention.await
            && error.is_panic()
        {
            tracing::warn!(%error, "retention panicked");
        }
        if let Err(error) = schedules.await
            && error.is_panic()
        {
            tracing::warn!(%error, "the schedules' scheduler panicked");
        }
        if let Err(error) = freshness.await
            && error.is_panic()
        {
            tracing::warn!(%error, "the freshness watch panicked");
        }
        if let Err(error) = webhooks.await
            && error.is_panic()
        {
            tracing::warn!(%error, "webhook delivery panicked");
        }
        outcome
    }

    /// Claims the broker's vhost for this installation (see `opflow_amqp::claim`): another
    /// installation's claim is fatal, as consuming its events would eat its runs.
    async fn claim_vhost(&self, connection: &Connection) -> anyhow::Result<()> {
        let id = self.store.installation_id().await.context("reading this installation's id")?;
        let database = self.settings.database_url.redacted();
        let name = format!("installation {id}, database {database}");
        match opflow_amqp::claim::claim_vhost(connection, &name).await {
            Ok(()) => Ok(()),
            Err(conflict @ opflow_amqp::claim::ClaimError::Claimed { .. }) => {
                Err(anyhow::Error::new(Fatal(conflict)))
            }
            Err(other) => Err(other).context("claiming the vhost"),
        }
    }

    /// Declares the topology and runs the outbox publisher and the events and dead-letter
    /// consumers on `connection` until `stop` (`Ok`) or until one of them fails (`Err`:
    /// the caller reconnects). Either way the others drain first.
    async fn broker_session(
        &self,
        leader: &LeaderStore,
        connection: &Arc<Connection>,
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        declare_topology(&self.settings, &self.store, connection).await?;
        self.claim_vhost(connection).await?;
        let login = opflow_amqp::Login::of(&self.settings.amqp_url)?;
        let publisher =
            Publisher::open(connection, &login.user).await.context("opening the publish channel")?;
        // Ops speak for themselves: each event is checked against its sender (see `senders`).
        let senders = self
            .settings
            .op_identity
            .required(false)
            .then(|| SenderCheck { vhost: login.vhost.as_str().into() });
        self.readiness.broker_up();
        tracing::info!("dispatcher ready: publishing steps and applying events");

        let parts_stop = stop.child_token();
        let mut parts: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();
        let applier = Applier {
            store: leader.clone(),
            plans: self.plans.clone(),
            metrics: self.metrics.clone(),
            arrivals: self.arrivals.clone(),
        };
        let publisher = StepPublisher {
            store: leader.clone(),
            plans: self.plans.clone(),
            wakeups: self.wakeups.clone(),
            applier: applier.clone(),
            publisher,
            batch_size: self.settings.publish_batch.max(1),
            max_inputs_bytes: self.settings.max_inputs_bytes,
            window_intake: self.settings.publish_window(),
        };
        parts.spawn({
            let (connection, arrivals, stop) =
                (connection.clone(), self.arrivals.clone(), parts_stop.clone());
            async move {
                ("outbox publisher", publisher.run(&connection, arrivals, stop).await.map_err(Into::into))
            }
        });
        if senders.is_some() {
            let audit = CancelsAudit { dispatcher_user: login.user.clone(), metrics: self.metrics.clone() };
            parts.spawn({
                let (connection, stop) = (connection.clone(), parts_stop.clone());
                async move { ("cancels audit", audit.run(&connection, stop).await.map_err(Into::into)) }
            });
        }
        let events = EventConsumer {
            senders: senders.clone(),
            applier: applier.clone(),
            batch_size: self.settings.event_batch.max(1),
            linger: self.settings.event_linger(),
        };
        parts.spawn({
            let (connection, stop) = (connection.clone(), parts_stop.clone());
            async move { ("events consumer", events.run(&connection, stop).await.map_err(Into::into)) }
        });
        let dead_letters = DeadLetterConsumer { applier: applier.clone(), senders };
        parts.spawn({
            let (connection, stop) = (connection.clone(), parts_stop.clone());
            async move { ("dead-letter consumer", dead_letters.run(&connection, stop).await.map_err(Into::into)) }
        });

        let recovery = Recovery { applier, lost_after: self.settings.lost_step_after() };
        parts.spawn({
            let (connection, stop) = (connection.clone(), parts_stop.clone());
            async move { ("lost-step recovery", recovery.run(&connection, stop).await.map_err(Into::into)) }
        });

        let mut failure = None;
        tokio::select! {
            biased;
            () = stop.cancelled() => tracing::info!("draining in-flight work"),
            Some(joined) = parts.join_next() => {
                let (part, result) = joined.context("a dispatcher task panicked")?;
                let error = result.err().unwrap_or_else(|| anyhow::anyhow!("stopped unexpectedly"));
                failure = Some(error.context(format!("the dispatcher's {part} failed")));
            }
        }
        parts_stop.cancel();
        let drained = tokio::time::timeout(self.settings.drain_timeout(), async {
            while let Some(joined) = parts.join_next().await {
                match joined {
                    Ok((part, Err(error))) if failure.is_none() => {
                        tracing::warn!(part, error = format!("{error:#}"), "failed while draining")
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "a dispatcher task panicked while draining"),
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(timeout = ?self.settings.drain_timeout(), "drain timed out; stopping anyway");
            parts.abort_all();
        }
        failure.map_or(Ok(()), Err)
    }
}

async fn close_connection(connection: &Connection) {
    if connection.status().connected()
        && let Err(error) = connection.close(200, "dispatcher stopping".into()).await
    {
        tracing::debug!(%error, "closing the broker connection failed");
    }
}
