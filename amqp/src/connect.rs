//! Opening the broker connection. A process holds one connection for its lifetime; the
//! first attempt may race the broker's start, so it retries with capped, jittered backoff.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use lapin::{Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "cannot connect to RabbitMQ at {url} after {attempts} attempts: {source}; is it running? (start it with `rabbitmq-server -detached`)"
    )]
    Unreachable {
        url: String,
        attempts: usize,
        #[source]
        source: lapin::Error,
    },
    #[error("cancelled while connecting to RabbitMQ at {url}")]
    Cancelled { url: String },
}

/// How long to keep trying before giving up on the broker.
#[derive(Debug, Clone, Copy)]
pub struct ConnectRetry {
    pub max_attempts: usize,
    pub max_delay: Duration,
}

impl Default for ConnectRetry {
    fn default() -> Self {
        // About 30 s in all: enough for a broker that is still starting, short enough
        // that a wrong URL is reported while someone is still watching.
        Self { max_attempts: 10, max_delay: Duration::from_secs(5) }
    }
}

/// Opens a connection named `name` (shown by `rabbitmqctl list_connections`).
///
/// `url` may hold a password; only its redacted form (`redacted_url`) is logged.
pub async fn connect(
    url: &str,
    redacted_url: &str,
    name: &str,
    retry: ConnectRetry,
    cancel: &CancellationToken,
) -> Result<Connection, ConnectError> {
    let mut attempts = 0usize;
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(retry.max_delay)
        .with_jitter()
        .with_max_times(retry.max_attempts.saturating_sub(1));
    let open = || {
        attempts += 1;
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        Connection::connect(url, properties)
    };
    let attempt = open.retry(backoff).notify(|error, delay| {
        tracing::warn!(url = redacted_url, %error, retry_in = ?delay, "RabbitMQ unreachable; retrying");
    });
    tokio::select! {
        result = attempt => result.map_err(|source| ConnectError::Unreachable {
            url: redacted_url.to_owned(),
            attempts: retry.max_attempts,
            source,
        }),
        () = cancel.cancelled() => Err(ConnectError::Cancelled { url: redacted_url.to_owned() }),
    }
}
