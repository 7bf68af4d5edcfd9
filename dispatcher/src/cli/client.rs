//! The CLI's side of the HTTP API: every user command (`run`, `status`, `outputs`,
//! `cancel`, `watch`, `events`, `logs`, `webhooks`) goes through [`ApiClient`], so a user
//! needs the dispatcher's address and perhaps a token, never the database's credentials.
//!
//! Answers map to the CLI's exit codes in one place: the API's 4xx are the user's mistake
//! (exit 2, with the server's message), an unreachable server or a 5xx is opflow failing
//! (exit 3, saying where it looked).

use std::time::Duration;

use anyhow::Context;
use eventsource_stream::Eventsource;
use futures_util::{Stream, StreamExt};
use opflow_api_model::{ErrorBody, EventsQuery, RunEvent, RunSummary};
use reqwest::{Method, StatusCode, header};
use serde::{Serialize, de::DeserializeOwned};

use super::exit::InvalidInput;

/// Where the API is when `--server` and `OPFLOW_SERVER` say nothing: `opflow up`'s and
/// `opflow dispatcher`'s default `api_addr`.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7600";

/// How many times in a row an events stream may fail to open, or a read of a followed run
/// may fail, before the command gives up.
const MAX_RECONNECTS: u32 = 20;
/// How long one read of a followed run may take before it is asked again.
const PATIENT_TIMEOUT: Duration = Duration::from_secs(20);

/// Where a user command finds the API: every such command takes these.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// The dispatcher's HTTP API (its api_addr)
    #[arg(long, env = "OPFLOW_SERVER", default_value = DEFAULT_SERVER, value_name = "URL")]
    pub server: String,
}

impl ServerArgs {
    /// A client for the API, with the token from `OPFLOW_TOKEN` if set. The token is read
    /// from the environment only: a command line is visible to every user of the machine.
    pub fn client(&self) -> anyhow::Result<ApiClient> {
        ApiClient::new(&self.server, std::env::var("OPFLOW_TOKEN").ok())
    }
}

/// A client of one dispatcher's API.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    /// `http://host:port`, without a trailing slash.
    server: String,
    token: Option<String>,
}

/// One message of a run's events stream.
#[derive(Debug)]
pub enum StreamItem {
    Event(Box<RunEvent>),
    /// The run has ended and every event was sent.
    End(Box<RunSummary>),
}

impl ApiClient {
    /// The address of a page of the dispatcher's web UI (`/runs/<id>`).
    pub fn page(&self, path: &str) -> String {
        format!("{}{path}", self.server)
    }

    pub fn new(server: &str, token: Option<String>) -> anyhow::Result<Self> {
        // `opflow_process::init` installed it already; tests build clients without it.
        opflow_process::install_tls_provider();
        let server = server.trim_end_matches('/').to_owned();
        if !(server.starts_with("http://") || server.starts_with("https://")) {
            return Err(InvalidInput(format!(
                "--server `{server}` is not an http:// or https:// address (e.g. {DEFAULT_SERVER})"
            ))
            .into());
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .context("building the HTTP client")?;
        Ok(Self { http, server, token: token.filter(|t| !t.is_empty()) })
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.server));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// `GET path` as JSON.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.request(Method::GET, path).timeout(Duration::from_secs(60)), path).await
    }

    /// `GET path?query` as JSON, the query one of the API's typed queries.
    pub async fn get_with<Q: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        query: &Q,
    ) -> anyhow::Result<T> {
        self.send(self.request(Method::GET, path).query(query).timeout(Duration::from_secs(60)), path).await
    }

    /// `GET path?query` as JSON, for a command that follows a run: an answer that is slow
    /// (over [`PATIENT_TIMEOUT`]), dropped, or a 5xx is asked again with the shared backoff,
    /// up to [`MAX_RECONNECTS`] times in a row, so one slow answer never ends the watch.
    /// The user's mistakes (4xx) are not retried.
    pub async fn get_patiently<Q: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        query: &Q,
    ) -> anyhow::Result<T> {
        use backon::Retryable;
        let attempt = || async {
            self.send(self.request(Method::GET, path).query(query).timeout(PATIENT_TIMEOUT), path).await
        };
        attempt
            .retry(opflow_process::backoff::reconnect().with_max_times(MAX_RECONNECTS as usize))
            .when(|error: &anyhow::Error| !error.chain().any(|e| e.is::<InvalidInput>()))
            .notify(|error, pause| tracing::debug!(%error, ?pause, path, "asking the API again"))
            .await
    }

    /// `POST path` with a JSON body and extra headers.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<T> {
        let mut request = self.request(Method::POST, path).json(body).timeout(Duration::from_secs(120));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request, path).await
    }

    /// `POST path` without a body (an action on a resource: cancel, redeliver).
    pub async fn post_empty<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.request(Method::POST, path).timeout(Duration::from_secs(120)), path).await
    }

    /// `DELETE path`, for an answer without a body (204).
    pub async fn delete_empty(&self, path: &str) -> anyhow::Result<()> {
        let request = self.request(Method::DELETE, path).timeout(Duration::from_secs(60));
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        self.check(response, path).await?;
        Ok(())
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        path: &str,
    ) -> anyhow::Result<T> {
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        let response = self.check(response, path).await?;
        response.json().await.with_context(|| format!("reading the answer to {path} from {}", self.server))
    }

    /// The error for a request that got no answer.
    fn unreachable(&self, error: reqwest::Error) -> anyhow::Error {
        let hint = if error.is_connect() {
            "; is `opflow up` or `opflow dispatcher` running there? Point --server (OPFLOW_SERVER) at its api_addr"
        } else {
            ""
        };
        anyhow::anyhow!("cannot reach the opflow API at {}: {}{hint}", self.server, error_chain(&error))
    }

    /// The response if it is a success; otherwise the API's error, as the right exit code.
    async fn check(&self, response: reqwest::Response, path: &str) -> anyhow::Result<reqwest::Response> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body: Option<ErrorBody> = response.json().await.ok();
        let mut message = body.as_ref().map_or_else(|| format!("{status}"), |b| b.error.clone());
        for problem in body.iter().flat_map(|b| b.problems.iter().flatten()) {
            message.push_str("\n  ");
            message.push_str(problem);
        }
        match status {
            StatusCode::UNAUTHORIZED => Err(InvalidInput(format!(
                "{message} (the API at {} needs a token: set OPFLOW_TOKEN to one from `opflow tokens create`)",
                self.server
            ))
            .into()),
            StatusCode::FORBIDDEN => Err(InvalidInput(format!("{message} (OPFLOW_TOKEN's scope is too narrow)")).into()),
            s if s.is_client_error() => Err(InvalidInput(message).into()),
            _ => Err(anyhow::anyhow!("the opflow API at {} failed on {path}: {message} ({status})", self.server)),
        }
    }

    /// A run's events after `query.after` (0: from the first), following the run until it
    /// ends (or only what is recorded now, with `follow: Some(false)`). A dropped connection
    /// is resumed with `Last-Event-ID`, so no event is missed or repeated.
    pub fn events(
        &self,
        run: &str,
        query: EventsQuery,
    ) -> impl Stream<Item = anyhow::Result<StreamItem>> + Send + 'static {
        struct Cursor {
            client: ApiClient,
            path: String,
            /// Sent with every (re)connect; where to start is `Last-Event-ID`'s.
            query: EventsQuery,
            last: i64,
            stream: Option<
                std::pin::Pin<Box<dyn Stream<Item = anyhow::Result<eventsource_stream::Event>> + Send>>,
            >,
            failures: u32,
            /// Pauses between reconnects (`opflow_process::backoff::reconnect`), started
            /// over once events flow again.
            pauses: backon::ExponentialBackoff,
            done: bool,
        }
        let path = format!("/v1/runs/{run}/events");
        let last = query.after.unwrap_or(0);
        let cursor = Cursor {
            client: self.clone(),
            path,
            query: EventsQuery { after: None, ..query },
            last,
            stream: None,
            failures: 0,
            pauses: reconnect_pauses(),
            done: false,
        };
        futures_util::stream::unfold(cursor, |mut c| async move {
            loop {
                if c.done {
                    return None;
                }
                let Some(stream) = c.stream.as_mut() else {
                    let request = c
                        .client
                        .request(Method::GET, &c.path)
                        .query(&c.query)
                        .header(header::ACCEPT, "text/event-stream")
                        .header("last-event-id", c.last.to_string());
                    let opened = match request.send().await {
                        Ok(response) => c.client.check(response, &c.path).await,
                        Err(error) => Err(c.client.unreachable(error)),
                    };
                    match opened {
                        Ok(response) => {
                            let events =
                                response.bytes_stream().eventsource().map(|e| e.map_err(anyhow::Error::from));
                            c.stream = Some(Box::pin(events));
                        }
                        // A mistake (no such run, no token) will not mend by retrying.
                        Err(error)
                            if error.chain().any(|e| e.is::<InvalidInput>())
                                || c.failures >= MAX_RECONNECTS =>
                        {
                            c.done = true;
                            return Some((Err(error), c));
                        }
                        Err(_) => {
                            c.failures += 1;
                            tokio::time::sleep(c.pauses.next().unwrap_or(opflow_process::backoff::MAX_DELAY))
                                .await;
                        }
                    }
                    continue;
                };
                match stream.next().await {
                    Some(Ok(event)) if event.event == "end" => {
                        c.done = true;
                        let summary = serde_json::from_str::<RunSummary>(&event.data)
                            .with_context(|| format!("reading the end of the events stream {}", c.path));
                        return Some((summary.map(|s| StreamItem::End(Box::new(s))), c));
                    }
                    Some(Ok(event)) if event.data.is_empty() => continue,
                    Some(Ok(event)) => {
                        if c.failures > 0 {
                            c.failures = 0;
                            c.pauses = reconnect_pauses();
                        }
                        match serde_json::from_str::<RunEvent>(&event.data) {
                            Ok(parsed) => {
                                c.last = parsed.seq;
                                return Some((Ok(StreamItem::Event(Box::new(parsed))), c));
                            }
                            Err(error) => {
                                c.done = true;
                                return Some((
                                    Err(anyhow::anyhow!("an event the CLI cannot read: {error}")),
                                    c,
                                ));
                            }
                        }
                    }
                    // Dropped mid-stream (or ended without `end`): resume after the last event.
                    Some(Err(_)) | None => {
                        c.stream = None;
                        c.failures += 1;
                        tokio::time::sleep(c.pauses.next().unwrap_or(opflow_process::backoff::MAX_DELAY))
                            .await;
                    }
                }
            }
        })
    }
}

/// The pauses before reconnecting a dropped events stream: the one formula every reconnect
/// of opflow uses (0.1 s doubling to 5 s, jittered).
fn reconnect_pauses() -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    opflow_process::backoff::reconnect().build()
}

/// A run id (or anything a user typed) made safe for one path segment: everything but
/// unreserved characters percent-encoded. (Query strings are the typed queries', encoded by
/// the HTTP client.)
pub fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// An error with its causes, for one line.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_text_cannot_escape_its_path_segment() {
        assert_eq!(path_segment("prices"), "prices");
        assert_eq!(path_segment("a b&c=d/../e"), "a%20b%26c%3Dd%2F..%2Fe");
        assert_eq!(path_segment("0190aa-Bb"), "0190aa-Bb");
    }

    /// A server on loopback that answers each connection with the next of `answers`: `None`
    /// hangs up without a word; `Some((status, body))` answers. Counts the connections.
    async fn scripted_server(
        answers: Vec<Option<(u16, &'static str)>>,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::{Arc, atomic::AtomicUsize};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        tokio::spawn(async move {
            for answer in answers {
                let Ok((mut socket, _)) = listener.accept().await else { return };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                if let Some((status, body)) = answer {
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                }
            }
        });
        (format!("http://{addr}"), seen)
    }

    #[tokio::test]
    async fn a_dropped_or_failed_read_of_a_followed_run_is_asked_again() {
        let (server, seen) =
            scripted_server(vec![None, Some((503, r#"{"error":"busy"}"#)), Some((200, r#"{"n":7}"#))]).await;
        let client = ApiClient::new(&server, None).unwrap();
        let answer: serde_json::Value = client.get_patiently("/v1/runs/x", &()).await.unwrap();
        assert_eq!(answer["n"], 7);
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn the_users_mistake_is_not_asked_again() {
        let (server, seen) =
            scripted_server(vec![Some((404, r#"{"error":"no run x"}"#)), Some((200, "{}"))]).await;
        let client = ApiClient::new(&server, None).unwrap();
        let error = client.get_patiently::<_, serde_json::Value>("/v1/runs/x", &()).await.unwrap_err();
        assert!(error.chain().any(|e| e.is::<InvalidInput>()), "{error:#}");
        assert!(error.to_string().contains("no run x"), "{error:#}");
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn a_server_must_be_an_http_address() {
        let error = ApiClient::new("127.0.0.1:7600", None).err().expect("no scheme");
        assert!(error.to_string().contains("http://"), "{error}");
        assert!(ApiClient::new("http://127.0.0.1:7600/", None).unwrap().server().ends_with(":7600"));
    }
}
