//! Leadership: of the dispatchers sharing a database, exactly one publishes steps and
//! applies events; the others serve the API and stand by. The lease is a PostgreSQL
//! session advisory lock held on a connection of its own, so it ends when that connection
//! does: a killed or partitioned leader loses it without anyone having to notice first.
//!
//! Advisory locks are per database, so dispatchers of different databases never contend.
//!
//! A held [`Lease`] hands out the [`LeaderStore`]: the store with what only the leader may
//! do (the outbox, applying events, lost-step recovery, the webhook outbox). Nothing else
//! makes one, so a part that holds only a [`Store`] (the API, the CLI) cannot reach it.

use std::{ops::Deref, time::Duration};

use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

use super::{Store, apply::Events, in_flight::InFlight, outbox::Outbox, webhooks::WebhookOutbox};

/// The advisory lock key: "opflow" in ASCII.
const LEASE_KEY: i64 = 0x6f70_666c_6f77;

/// How often a standby tries to take the lease, and the leader checks it still holds it.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// How long a check may take before the leader assumes its lease connection is gone.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// A held lease. [`Lease::lost`] is cancelled when it is no longer held.
pub struct Lease {
    store: Store,
    lost: CancellationToken,
    release: CancellationToken,
    watchdog: tokio::task::JoinHandle<()>,
}

impl Lease {
    /// Waits until this process holds the lease. `None` if `cancel` fired first.
    pub async fn acquire(store: &Store, cancel: &CancellationToken) -> Option<Lease> {
        let mut said_standby = false;
        loop {
            match try_acquire(store).await {
                Ok(Some(connection)) => {
                    tracing::info!("took the dispatcher lease; publishing steps and applying events");
                    let (lost, release) = (CancellationToken::new(), CancellationToken::new());
                    let watchdog = tokio::spawn(watch(connection, lost.clone(), release.clone()));
                    return Some(Lease { store: store.clone(), lost, release, watchdog });
                }
                Ok(None) if !said_standby => {
                    tracing::info!("another dispatcher holds the lease; standing by to take over");
                    said_standby = true;
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?CHECK_EVERY, "cannot check the dispatcher lease")
                }
            }
            tokio::select! {
                () = tokio::time::sleep(CHECK_EVERY) => {}
                () = cancel.cancelled() => return None,
            }
        }
    }

    /// Cancelled once the lease is lost (its connection failed).
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }

    /// The store, with what only the leader may do. The leader stops its parts when the
    /// lease is lost (within a second, see [`Lease::lost`]); in that second a new leader may
    /// overlap it, which the guarded transitions make harmless.
    pub fn store(&self) -> LeaderStore {
        LeaderStore { store: self.store.clone() }
    }

    /// Gives the lease up so a standby can take it at once.
    pub async fn release(self) {
        self.release.cancel();
        if let Err(error) = self.watchdog.await {
            tracing::warn!(%error, "the lease watchdog panicked");
        }
    }
}

/// The lease connection's options (public for the test that checks them): the server's own TCP keepalives and user timeout make
/// it drop a leader cut off from it within about 25 s (the kernel's defaults take hours),
/// which frees the advisory lock for a standby. The leader itself notices within
/// [`CHECK_TIMEOUT`] that its pings go unanswered, and stops.
pub fn connect_options(store: &Store) -> sqlx::postgres::PgConnectOptions {
    store
        .pool
        .connect_options()
        .as_ref()
        .clone()
        .application_name(&format!("opflow-lease-{}", std::process::id()))
        .options([
            ("tcp_keepalives_idle", "10"),
            ("tcp_keepalives_interval", "5"),
            ("tcp_keepalives_count", "3"),
            ("tcp_user_timeout", "20000"),
        ])
}

async fn try_acquire(store: &Store) -> Result<Option<PgConnection>, sqlx::Error> {
    let options = connect_options(store);
    let mut connection = PgConnection::connect_with(&options).await?;
    let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LEASE_KEY)
        .fetch_one(&mut connection)
        .await?;
    if held {
        Ok(Some(connection))
    } else {
        if let Err(error) = connection.close().await {
            tracing::debug!(%error, "closing a lease connection failed");
        }
        Ok(None)
    }
}

/// Holds the lease connection: checks it every second, and either releases the lock
/// (on `release`) or reports it lost (on a failed check).
async fn watch(mut connection: PgConnection, lost: CancellationToken, release: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(CHECK_EVERY) => {}
            () = release.cancelled() => {
                let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)").bind(LEASE_KEY).execute(&mut connection);
                if let Ok(Err(error)) = tokio::time::timeout(CHECK_TIMEOUT, unlocked).await {
                    tracing::debug!(%error, "releasing the lease failed; it ends with its connection");
                }
                if let Err(error) = connection.close().await {
                    tracing::debug!(%error, "closing the lease connection failed");
                }
                lost.cancel();
                return;
            }
        }
        match tokio::time::timeout(CHECK_TIMEOUT, connection.ping()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "lost the dispatcher lease: its database connection failed");
                break;
            }
            Err(_) => {
                tracing::warn!(timeout = ?CHECK_TIMEOUT, "lost the dispatcher lease: its database connection stopped answering");
                break;
            }
        }
    }
    // Dropping the connection closes its socket, so the server lets go of the lock too.
    drop(connection);
    lost.cancel();
}

/// The store as the leader uses it: everything a [`Store`] does (it derefs to one), and
/// what only the leader may do. Made only by [`Lease::store`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LeaderStore {
    store: Store,
}

impl Deref for LeaderStore {
    type Target = Store;

    fn deref(&self) -> &Store {
        &self.store
    }
}

impl LeaderStore {
    /// Steps and cancels to publish, and retries that came due.
    pub fn outbox(&self) -> Outbox<'_> {
        Outbox { pool: &self.store.pool }
    }

    /// Applying worker events, and failing a run whose events cannot be.
    pub fn events(&self) -> Events<'_> {
        Events { store: &self.store }
    }

    /// What lost-step recovery reads, and the runs it ends.
    pub fn in_flight(&self) -> InFlight<'_> {
        InFlight { pool: &self.store.pool }
    }

    /// The concurrency slots held by published steps.
    pub fn key_slots(&self) -> super::key_slots::KeySlotRows<'_> {
        super::key_slots::KeySlotRows { pool: &self.store.pool }
    }

    /// Webhook deliveries to send, and their attempts.
    pub fn webhook_outbox(&self) -> WebhookOutbox<'_> {
        WebhookOutbox { pool: &self.store.pool }
    }
}
