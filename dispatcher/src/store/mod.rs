//! The run store in PostgreSQL: the op registry, runs and their steps, the outbox and the
//! event log. Everything that outlives a dispatcher process lives here; the schema is in
//! `dispatcher/migrations/` and is applied on connect.
//!
//! The surface is grouped by concern, each a handle borrowed from the store (below,
//! [`Store::runs`] and the rest). What only the leader may do (publish from the outbox,
//! apply events, recover lost steps, deliver webhooks) is on a [`LeaderStore`], which only
//! a held [`Lease`] hands out, so the API and the CLI, which hold a plain [`Store`], cannot
//! reach it.
//!
//! - [`runs`]: submitting a run (bulk inserts) and reading its state; [`run_plan`]: a
//!   stored run's plan, and the cache of them.
//! - [`following`]: what clients read as they follow runs.
//! - [`catalog`]: the asset catalog across runs; [`freshness`]: its assets' freshness
//!   policies, and the breaches of them.
//! - [`ops`]: the registry of op versions; [`queues`]: what their queues hold.
//! - [`tokens`]: API tokens; [`webhooks`]: webhook subscriptions, a run's notify URL, the
//!   delivery outbox.
//! - [`retention`]: deleting finished runs past their retention.
//! - [`checks`]: reads that verify a run from outside (`opflow bench`).
//! - [`lease`]: leadership, and the [`LeaderStore`] it grants: [`outbox`] (taking steps to
//!   publish), [`apply`] (worker events applied to steps and runs), [`in_flight`] (lost-step
//!   recovery).
//! - [`storable`]: what an op sends, made storable.
//! - [`large_fixture`]: a store of a 100,000-step run and 10,000 runs, for `opflow bench
//!   api` and the tests that every read of a followed run costs a page.

pub mod apply;
pub mod catalog;
pub mod checks;
pub mod following;
pub mod freshness;
pub mod in_flight;
pub mod key_slots;
pub mod large_fixture;
pub mod lease;
pub mod ops;
pub mod outbox;
pub mod queues;
pub mod retention;
pub mod run_plan;
pub mod runs;
pub mod schedules;
pub mod storable;
pub mod tokens;
pub mod webhooks;

use std::{str::FromStr, time::Duration};

use backon::Retryable;
use opflow_process::SecretUrl;
use sqlx::{
    AssertSqlSafe, Connection, PgConnection, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio_util::sync::CancellationToken;

/// Where the store announces that a run ended (the payload is its id): `opflow bench` times
/// runs by it, and anyone may `LISTEN` for it.
pub const RUNS_CHANNEL: &str = "opflow_runs";
/// Where the store announces steps in the outbox to publish.
pub const OUTBOX_CHANNEL: &str = "opflow_outbox";
/// Where the store announces that events were recorded: the payload is the runs' ids,
/// comma-separated, or empty when a batch touched more than 100 runs (then every follower
/// looks). The events stream (`GET /v1/runs/{id}/events`) waits on it.
pub const EVENTS_CHANNEL: &str = "opflow_events";
/// Where the store announces cancels to append to the cancels stream.
pub const CANCELS_CHANNEL: &str = "opflow_cancels";

/// Postgres' "database does not exist".
const INVALID_CATALOG_NAME: &str = "3D000";
/// Postgres' "duplicate database" (lost a race to create it).
const DUPLICATE_DATABASE: &str = "42P04";
/// Postgres' "unique violation": what a `CREATE DATABASE` that loses the race at the very
/// same moment gets instead (on `pg_database_datname_index`).
const UNIQUE_VIOLATION: &str = "23505";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid database URL {url}: {cause}")]
    BadUrl { url: String, cause: sqlx::Error },
    #[error(
        "cannot reach PostgreSQL at {url}: {cause}; is it running? (start it with `pg_ctlcluster 15 main start`)"
    )]
    Unreachable { url: String, cause: sqlx::Error },
    #[error("cannot create database `{database}` at {url}: {cause}; create it yourself or grant CREATEDB")]
    CreateDatabase { database: String, url: String, cause: sqlx::Error },
    #[error("applying the opflow schema migrations failed: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    #[error("cancelled while connecting to PostgreSQL")]
    Cancelled,
    #[error(
        "the idempotency key `{key}` belongs to run {run_id}, submitted with a different plan; use another key"
    )]
    KeyConflict { key: String, run_id: String },
    #[error("database error: {0}")]
    Database(sqlx::Error),
    #[error("run {0} is stored inconsistently: {1}")]
    Corrupt(String, String),
}

// The messages above quote their cause, so it is not also reported as `source()`: a cause
// printed once, whether a log line shows the message or a CLI walks the chain.
impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        StoreError::Database(error)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(error: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migrate(error)
    }
}

impl StoreError {
    /// Whether PostgreSQL canceled the statement for running past `statement_timeout`.
    pub fn is_statement_timeout(&self) -> bool {
        matches!(self, StoreError::Database(error) if sql_state(error).as_deref() == Some("57014"))
    }

    /// Whether the same statement may succeed if tried again: the connection, the server's
    /// resources or a concurrent transaction failed, not the data. A refusal (a constraint,
    /// a value out of range, a malformed plan) fails the same way every time.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(error) => is_transient(error),
            StoreError::Unreachable { .. } | StoreError::Cancelled => true,
            StoreError::BadUrl { .. }
            | StoreError::CreateDatabase { .. }
            | StoreError::Migrate(_)
            | StoreError::KeyConflict { .. }
            | StoreError::Corrupt(..) => false,
        }
    }
}

fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        // SQLSTATE classes: connection exception, transaction rollback (serialization,
        // deadlock), insufficient resources, operator intervention, system and internal errors.
        sqlx::Error::Database(db) => db
            .code()
            .is_none_or(|code| ["08", "40", "53", "57", "58", "XX"].iter().any(|c| code.starts_with(c))),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// A handle on the run store; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Connects (creating the database if it is missing), retrying while PostgreSQL
    /// starts, and applies the schema migrations.
    pub async fn connect(url: &SecretUrl, cancel: &CancellationToken) -> Result<Self, StoreError> {
        let redacted = url.redacted();
        let options = PgConnectOptions::from_str(url.expose())
            .map_err(|source| StoreError::BadUrl { url: redacted.clone(), cause: source })?;
        // No JIT: the dispatcher's statements are short, and a bulk one whose estimated cost
        // passes `jit_above_cost` (a catalog lookup of 4,096 steps) spent 540 ms of its 570
        // compiling itself before it read a row.
        let options =
            plain_on_loopback(options.application_name("opflow").options([("jit", "off")]), url.expose());
        let connect = || async {
            // One plain connection first: it fails at once with the real cause (refused,
            // no such database), where a pool would wait out its acquire timeout and then
            // only say that it timed out.
            match PgConnection::connect_with(&options).await {
                Err(error) if sql_state(&error).as_deref() == Some(INVALID_CATALOG_NAME) => {
                    create_database(&options, &redacted).await?;
                }
                Err(source) => return Err(StoreError::Unreachable { url: redacted.clone(), cause: source }),
                Ok(probe) => {
                    if let Err(error) = probe.close().await {
                        tracing::debug!(%error, "closing the probe connection failed");
                    }
                }
            }
            PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(options.clone())
                .await
                .map_err(|source| StoreError::Unreachable { url: redacted.clone(), cause: source })
        };
        let backoff = opflow_process::backoff::reconnect().with_max_times(9);
        let attempt = connect.retry(backoff).when(|e| matches!(e, StoreError::Unreachable { .. })).notify(
            |error, delay| tracing::warn!(%error, retry_in = ?delay, "PostgreSQL unreachable; retrying"),
        );
        let pool = tokio::select! {
            pool = attempt => pool?,
            () = cancel.cancelled() => return Err(StoreError::Cancelled),
        };
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self { pool })
    }

    /// A store that connects on first use, for tests of code that must not reach it.
    #[cfg(test)]
    pub(crate) fn unconnected() -> Self {
        let options = PgConnectOptions::new().host("127.0.0.1").port(1).database("unused");
        Self { pool: PgPoolOptions::new().connect_lazy_with(options) }
    }

    /// The connection pool, for tests that check rows directly. Everything else goes
    /// through the handles below: only `store/` writes SQL against opflow's tables.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The same store on a pool of its own of at most `connections`, opened as needed, whose
    /// statements PostgreSQL cancels after `statement_timeout`: for a part (the HTTP API)
    /// that must neither take the connections the others need nor let one request hold
    /// one of its own for long (see [`StoreError::is_statement_timeout`]).
    pub fn with_own_pool(&self, connections: u32, statement_timeout: Duration) -> Store {
        let options = self
            .pool
            .connect_options()
            .as_ref()
            .clone()
            .options([("statement_timeout", format!("{}ms", statement_timeout.as_millis().max(1)))]);
        let pool = PgPoolOptions::new()
            .max_connections(connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(options);
        Store { pool }
    }

    /// This installation's id (migration 0009).
    pub async fn installation_id(&self) -> Result<uuid::Uuid, StoreError> {
        Ok(sqlx::query_scalar("SELECT id FROM installation").fetch_one(&self.pool).await?)
    }

    /// Whether the database answers; for the readiness endpoint.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes every connection, waiting for those in use to be given back.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn sql_state(error: &sqlx::Error) -> Option<String> {
    error.as_database_error().and_then(|e| e.code()).map(|c| c.into_owned())
}

/// Creates the database named in `options` through the server's `postgres` database.
/// TLS off for a server on this machine, unless the URL (or `PGSSLMODE`) asks for it.
///
/// sqlx's default, `sslmode=prefer`, encrypts whenever the server offers TLS, as Debian's
/// PostgreSQL does with its own certificate. On a loopback connection that protects
/// nothing, and costs CPU on both ends of every statement: encrypting and decrypting each
/// batch of steps and events in the dispatcher (rustls) and in PostgreSQL (OpenSSL).
fn plain_on_loopback(options: PgConnectOptions, url: &str) -> PgConnectOptions {
    let asked = url.contains("sslmode=") || std::env::var_os("PGSSLMODE").is_some();
    if asked || !is_loopback(options.get_host()) {
        return options;
    }
    options.ssl_mode(sqlx::postgres::PgSslMode::Disable)
}

/// Whether `host` is this machine: a loopback address, `localhost`, or a socket directory.
fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host.starts_with('/')
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn create_database(options: &PgConnectOptions, redacted: &str) -> Result<(), StoreError> {
    let database = options.get_database().unwrap_or("opflow").to_owned();
    let failed = |source| StoreError::CreateDatabase {
        database: database.clone(),
        url: redacted.to_owned(),
        cause: source,
    };
    if !database.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(failed(sqlx::Error::Protocol(format!(
            "database name `{database}` has characters opflow will not quote; use letters, digits, `_` and `-`"
        ))));
    }
    let mut admin =
        PgConnection::connect_with(&options.clone().database("postgres")).await.map_err(failed)?;
    tracing::info!(%database, "creating the database");
    // The name was checked above to hold only characters that are safe inside quotes.
    let statement = format!("CREATE DATABASE \"{database}\"");
    match sqlx::query(AssertSqlSafe(statement)).execute(&mut admin).await {
        Ok(_) => Ok(()),
        // Another process created it first: just what we wanted.
        Err(error) if matches!(sql_state(&error).as_deref(), Some(DUPLICATE_DATABASE | UNIQUE_VIOLATION)) => {
            Ok(())
        }
        Err(error) => Err(failed(error)),
    }
}

#[cfg(test)]
mod tls_tests {
    use std::str::FromStr;

    use sqlx::postgres::PgSslMode;

    use super::*;

    fn mode(url: &str) -> String {
        format!("{:?}", plain_on_loopback(PgConnectOptions::from_str(url).unwrap(), url).get_ssl_mode())
    }

    #[test]
    fn loopback_servers_are_spoken_to_without_tls_unless_the_url_asks() {
        if std::env::var_os("PGSSLMODE").is_some() {
            return; // the environment decides; nothing of ours to test
        }
        assert_eq!(mode("postgres://u@127.0.0.1:5432/db"), format!("{:?}", PgSslMode::Disable));
        assert_eq!(mode("postgres://u@localhost/db"), format!("{:?}", PgSslMode::Disable));
        assert_eq!(mode("postgres://u@[::1]:5432/db"), format!("{:?}", PgSslMode::Disable));
        assert_eq!(mode("postgres://u@127.0.0.1/db?sslmode=require"), format!("{:?}", PgSslMode::Require));
        assert_eq!(mode("postgres://u@db.example.com/db"), format!("{:?}", PgSslMode::Prefer));
    }
}
