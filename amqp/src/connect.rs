//! Opening the broker connection. A process holds one connection at a time; the first
//! attempt may race the broker's start and a lost connection is opened again, so opening
//! retries with capped, jittered exponential backoff (one log line per attempt).

use std::sync::atomic::{AtomicUsize, Ordering};

use backon::Retryable;
use lapin::{Connection, ConnectionProperties};
use opflow_process::SecretUrl;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("the RabbitMQ URL {url} is invalid: {reason}; write it as amqp://user:password@host:5672/%2f")]
    BadUrl { url: String, reason: String },
    #[error(
        "cannot connect to RabbitMQ at {url} after {attempts} attempts: {cause}; is it running? (start it with `rabbitmq-server -detached`)"
    )]
    Unreachable { url: String, attempts: usize, cause: lapin::Error },
    #[error("cancelled while connecting to RabbitMQ at {url}")]
    Cancelled { url: String },
}

/// How long to keep trying before giving up on the broker; the pauses between attempts
/// are opflow's one set (`opflow_process::backoff::reconnect`).
#[derive(Debug, Clone, Copy)]
pub struct ConnectRetry {
    /// `None`: until cancelled.
    pub max_attempts: Option<usize>,
}

impl Default for ConnectRetry {
    fn default() -> Self {
        // About 30 s in all: enough for a broker that is still starting, short enough
        // that a wrong URL is reported while someone is still watching.
        Self { max_attempts: Some(10) }
    }
}

impl ConnectRetry {
    /// For reconnecting a process that was connected before: the URL is known to be right,
    /// so it waits out an outage of any length (until cancelled).
    pub fn forever() -> Self {
        Self { max_attempts: None }
    }
}

/// Who a URL logs in as, and where: the user every message published on its connection
/// carries as its (broker-checked) `user_id`, and the vhost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub user: String,
    pub vhost: String,
    pub host: String,
}

impl Login {
    /// Reads the login of an AMQP URL (without connecting); the URL's defaults apply
    /// (`guest`, vhost `/`).
    pub fn of(url: &SecretUrl) -> Result<Self, ConnectError> {
        let uri = parse(url)?;
        Ok(Self { user: uri.authority.userinfo.username, vhost: uri.vhost, host: uri.authority.host })
    }
}

/// Parses `url`; a malformed one is [`ConnectError::BadUrl`], whose message shows the URL
/// redacted (the parser's own message may quote it whole).
fn parse(url: &SecretUrl) -> Result<lapin::uri::AMQPUri, ConnectError> {
    let text = url.expose();
    text.parse::<lapin::uri::AMQPUri>().map_err(|reason| {
        let redacted = url.redacted();
        let reason = if text.is_empty() { reason } else { reason.replace(text, &redacted) };
        ConnectError::BadUrl { url: redacted, reason }
    })
}

/// Opens a connection named `name` (shown by `rabbitmqctl list_connections`). Only the
/// URL's redacted form ever reaches a log line or an error.
pub async fn connect(
    url: &SecretUrl,
    name: &str,
    retry: ConnectRetry,
    cancel: &CancellationToken,
) -> Result<Connection, ConnectError> {
    let redacted_url = url.redacted();
    let redacted_url = redacted_url.as_str();
    // A malformed URL is not retried.
    parse(url)?;
    let url = url.expose();
    let attempts = AtomicUsize::new(0);
    let backoff = opflow_process::backoff::reconnect();
    let backoff = match retry.max_attempts {
        Some(max) => backoff.with_max_times(max.saturating_sub(1)),
        None => backoff,
    };
    let open = || {
        attempts.fetch_add(1, Ordering::Relaxed);
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        Connection::connect(url, properties)
    };
    let attempt = open.retry(backoff).notify(|error, delay| {
        tracing::warn!(url = redacted_url, %error, retry_in = ?delay, "RabbitMQ unreachable; retrying");
    });
    tokio::select! {
        result = attempt => result.map_err(|source| ConnectError::Unreachable {
            url: redacted_url.to_owned(),
            attempts: attempts.load(Ordering::Relaxed),
            cause: source,
        }),
        () = cancel.cancelled() => Err(ConnectError::Cancelled { url: redacted_url.to_owned() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_names_user_vhost_and_host() {
        let login = Login::of(&SecretUrl::new("amqp://alice:pw@rabbit:5672/team-a")).unwrap();
        assert_eq!(login, Login { user: "alice".into(), vhost: "team-a".into(), host: "rabbit".into() });
        let login = Login::of(&SecretUrl::new("amqp://127.0.0.1:5672/%2f")).unwrap();
        assert_eq!((login.user.as_str(), login.vhost.as_str()), ("guest", "/"));
    }

    #[tokio::test]
    async fn a_malformed_url_fails_at_once_without_quoting_its_password() {
        // No `//`: the parser refuses it and quotes the whole URL in its message.
        let url = SecretUrl::new("amqp:guest:s3cr3t@127.0.0.1:1/%2f");
        let redacted = "amqp:***@127.0.0.1:1/%2f";
        let error = connect(&url, "test", ConnectRetry::default(), &CancellationToken::new())
            .await
            .expect_err("the URL is malformed");
        let message = error.to_string();
        assert!(matches!(error, ConnectError::BadUrl { .. }), "{message}");
        assert!(!message.contains("s3cr3t"), "{message}");
        assert!(message.contains(redacted), "{message}");
    }
}
