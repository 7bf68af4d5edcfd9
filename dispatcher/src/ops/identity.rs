//! Op identities on the broker: one RabbitMQ user per op version (`queue::op_user`), made
//! through RabbitMQ's management API, whose permissions reach only what a worker of that
//! version needs: reading its own queue and the cancels stream, writing to the events and
//! cancels exchanges, declaring nothing. With it, the broker itself refuses an op that
//! consumes another op's queue or publishes a step or anything else outside those two
//! exchanges, and it stamps every message the op publishes with the op's user, which the
//! dispatcher checks (`service::senders`). See docs/security.md.

use opflow_process::SecretUrl;
use opflow_protocol::{OpRef, queue};
use rand::{RngExt, distr::Alphanumeric};
use reqwest::{StatusCode, Url};
use serde_json::json;

use crate::settings::Settings;

/// Length of a generated broker password (letters and digits: about 190 bits).
const PASSWORD_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("the broker management URL {url} is invalid: {reason}")]
    BadUrl { url: String, reason: String },
    #[error(
        "cannot reach RabbitMQ's management API at {url}: {cause}; op identities (op_identity) are made through \
         it: enable it with `rabbitmq-plugins enable rabbitmq_management`, point broker_management_url at it, or \
         set op_identity: off"
    )]
    Unreachable { url: String, cause: reqwest::Error },
    #[error(
        "RabbitMQ's management API at {url} refused to {what}: {status} {body}; the login of broker_management_url \
         (or amqp_url) needs the `administrator` tag to make op users"
    )]
    Refused { url: String, what: String, status: StatusCode, body: String },
}

/// An op version's broker login, for its workers.
pub struct OpCredentials {
    pub user: String,
    /// The installation's `amqp_url` with this login in place of the dispatcher's.
    pub amqp_url: SecretUrl,
}

/// The management API of the installation's broker, as the dispatcher's login uses it.
pub struct BrokerUsers {
    http: reqwest::Client,
    /// Without its login.
    base: Url,
    login: (String, String),
    vhost: String,
    amqp_url: SecretUrl,
}

/// [`Settings::broker_management_url`], or, unset, the `amqp_url`'s host on port 15672
/// with its login.
pub fn management_url(settings: &Settings) -> Result<SecretUrl, IdentityError> {
    if let Some(url) = &settings.broker_management_url {
        return Ok(url.clone());
    }
    let amqp_url = &settings.amqp_url;
    let bad = |reason: String| IdentityError::BadUrl {
        url: amqp_url.redacted(),
        reason: format!("{reason} (needed to derive broker_management_url; set that instead)"),
    };
    // Checked first: its error quotes the URL redacted, the parser's own may not.
    let login = opflow_amqp::Login::of(amqp_url).map_err(|e| bad(e.to_string()))?;
    let uri = amqp_url.expose().parse::<lapin::uri::AMQPUri>().map_err(bad)?;
    let host = if login.host.contains(':') { format!("[{}]", login.host) } else { login.host };
    with_login(
        &SecretUrl::new(format!("http://{host}:15672/")),
        &login.user,
        &uri.authority.userinfo.password,
    )
    .map_err(bad)
}

impl BrokerUsers {
    pub fn new(settings: &Settings) -> Result<Self, IdentityError> {
        Self::at(&management_url(settings)?, &settings.amqp_url)
    }

    /// The management API at `url`, for the installation whose broker URL is `amqp_url`.
    pub fn at(url: &SecretUrl, amqp_url: &SecretUrl) -> Result<Self, IdentityError> {
        let bad = |reason: String| IdentityError::BadUrl { url: url.redacted(), reason };
        let mut base = Url::parse(url.expose()).map_err(|e| bad(e.to_string()))?;
        let decode = |text: &str| percent_encoding::percent_decode_str(text).decode_utf8_lossy().into_owned();
        let login = (decode(base.username()), decode(base.password().unwrap_or_default()));
        base.set_username("")
            .and_then(|()| base.set_password(None))
            .map_err(|()| bad("it has no host".into()))?;
        // The API is at the root; KEDA's form of the URL ends in the vhost, which is not.
        base.set_path("/");
        base.set_query(None);
        let vhost = opflow_amqp::Login::of(amqp_url).map_err(|e| bad(e.to_string()))?.vhost;
        // `opflow_process::init` installed it already; tests build clients without it.
        opflow_process::install_tls_provider();
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| bad(e.to_string()))?;
        Ok(Self { http, base, login, vhost, amqp_url: amqp_url.clone() })
    }

    /// Makes `op`'s broker user if it does not exist yet (with a password nobody knows
    /// until [`BrokerUsers::issue`] sets one), and gives it exactly its permissions.
    /// Idempotent. Returns the user's name.
    pub async fn ensure(&self, op: &OpRef) -> Result<String, IdentityError> {
        let user = queue::op_user(&self.vhost, op);
        let path = format!("users/{}", segment(&user));
        let exists = self.call(reqwest::Method::GET, &path, None, "look up an op user").await?;
        if exists == StatusCode::NOT_FOUND {
            let body = json!({"password": random_password(), "tags": ""});
            self.expect(reqwest::Method::PUT, &path, Some(body), &format!("create user {user}")).await?;
        }
        let permissions = permissions(op);
        let path = format!("permissions/{}/{}", segment(&self.vhost), segment(&user));
        self.expect(
            reqwest::Method::PUT,
            &path,
            Some(permissions),
            &format!("set the permissions of {user}"),
        )
        .await?;
        Ok(user)
    }

    /// Gives `op`'s broker user a new password (`password`, or a fresh random one) and
    /// returns the login its workers use. Workers connected with the old password stay
    /// connected; a reconnect needs the new one.
    pub async fn issue(&self, op: &OpRef, password: Option<String>) -> Result<OpCredentials, IdentityError> {
        let user = self.ensure(op).await?;
        let password = password.unwrap_or_else(random_password);
        let path = format!("users/{}", segment(&user));
        let body = json!({"password": password, "tags": ""});
        self.expect(reqwest::Method::PUT, &path, Some(body), &format!("set the password of {user}")).await?;
        let amqp_url = with_login(&self.amqp_url, &user, &password)
            .map_err(|reason| IdentityError::BadUrl { url: self.amqp_url.redacted(), reason })?;
        Ok(OpCredentials { user, amqp_url })
    }

    /// Deletes the broker user of every op version of this installation's vhost (users
    /// outlive their vhost). Returns how many there were.
    pub async fn delete_all(&self) -> Result<usize, IdentityError> {
        let what = "list users";
        let response = self.send(reqwest::Method::GET, "users?columns=name", None).await?;
        let status = response.status();
        if !status.is_success() {
            return Err(self.refused(what, status, String::new()));
        }
        let users: Vec<serde_json::Value> = response
            .json()
            .await
            .map_err(|cause| IdentityError::Unreachable { url: self.base.to_string(), cause })?;
        let prefix = queue::op_user_prefix(&self.vhost);
        let mine: Vec<&str> = users
            .iter()
            .filter_map(|u| u["name"].as_str())
            .filter(|name| name.starts_with(&prefix))
            .collect();
        for user in &mine {
            let path = format!("users/{}", segment(user));
            self.expect(reqwest::Method::DELETE, &path, None, &format!("delete user {user}")).await?;
        }
        Ok(mine.len())
    }

    async fn expect(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
        what: &str,
    ) -> Result<(), IdentityError> {
        let status = self.call(method, path, body, what).await?;
        if status.is_success() {
            return Ok(());
        }
        Err(self.refused(what, status, String::new()))
    }

    /// One request; a 2xx or 404 answer is returned, anything else is an error.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
        what: &str,
    ) -> Result<StatusCode, IdentityError> {
        let response = self.send(method, path, body).await?;
        let status = response.status();
        if status.is_success() || status == StatusCode::NOT_FOUND {
            return Ok(status);
        }
        let text = response.text().await.unwrap_or_default();
        Err(self.refused(what, status, opflow_protocol::text::cut(&text, 300).into_owned()))
    }

    /// Sends one request to `api/<path>` with the login.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<reqwest::Response, IdentityError> {
        let url = format!("{}api/{path}", self.base);
        let mut request = self.http.request(method, &url).basic_auth(&self.login.0, Some(&self.login.1));
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.map_err(|cause| IdentityError::Unreachable { url: self.base.to_string(), cause })
    }

    fn refused(&self, what: &str, status: StatusCode, body: String) -> IdentityError {
        IdentityError::Refused { url: self.base.to_string(), what: what.to_owned(), status, body }
    }
}

/// What a worker of `op` may do: configure nothing, write to the events and cancels
/// exchanges (not the default exchange, which reaches every queue), read its own queue and
/// the cancels stream.
fn permissions(op: &OpRef) -> serde_json::Value {
    let own_queue = regex_syntax::escape(&queue::op_queue(op));
    let cancels = regex_syntax::escape(queue::CANCELS_STREAM);
    let events = regex_syntax::escape(queue::EVENTS_EXCHANGE);
    let cancels_exchange = regex_syntax::escape(queue::CANCELS_EXCHANGE);
    json!({
        "configure": "^$",
        "write": format!("^({events}|{cancels_exchange})$"),
        "read": format!("^({own_queue}|{cancels})$"),
    })
}

/// One path segment of the management API: everything but letters and digits escaped
/// (a vhost `/` is `%2F`).
fn segment(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn random_password() -> String {
    rand::rng().sample_iter(Alphanumeric).take(PASSWORD_LEN).map(char::from).collect()
}

/// `amqp_url` logging in as `user` with `password`.
fn with_login(amqp_url: &SecretUrl, user: &str, password: &str) -> Result<SecretUrl, String> {
    let mut url = Url::parse(amqp_url.expose()).map_err(|e| e.to_string())?;
    url.set_username(user)
        .and_then(|()| url.set_password(Some(password)))
        .map_err(|()| "it has no host".to_owned())?;
    Ok(SecretUrl::new(url.to_string()))
}

#[cfg(test)]
mod tests {
    use opflow_amqp::Login;

    use super::*;

    #[test]
    fn a_workers_url_logs_in_as_its_op_user() {
        let op: OpRef = "noop@1.0.0".parse().unwrap();
        let user = queue::op_user("/", &op);
        let url = with_login(&SecretUrl::new("amqp://guest:guest@rabbit:5672/%2f"), &user, "pw").unwrap();
        let login = Login::of(&url).unwrap();
        assert_eq!(
            (login.user.as_str(), login.vhost.as_str(), login.host.as_str()),
            (user.as_str(), "/", "rabbit")
        );
        assert!(!url.redacted().contains("pw"), "{}", url.redacted());
    }

    #[test]
    fn the_charts_form_of_a_workers_url_logs_in_as_its_op_user() {
        // helm/opflow renders it with `urlquery`: every reserved character escaped.
        let url = SecretUrl::new("amqp://opflow-op%3A%2F%3Anoop%401.1.0:pw@rabbitmq:5672/%2F");
        let login = Login::of(&url).unwrap();
        assert_eq!((login.user.as_str(), login.vhost.as_str()), ("opflow-op:/:noop@1.1.0", "/"));
    }

    #[test]
    fn the_management_api_is_at_the_root_of_its_url() {
        let settings = Settings {
            broker_management_url: Some(SecretUrl::new("http://admin:pw@rabbitmq:15672/%2f")),
            ..Settings::default()
        };
        let users = BrokerUsers::new(&settings).unwrap();
        assert_eq!(users.base.as_str(), "http://rabbitmq:15672/");
        assert_eq!(users.login, ("admin".to_owned(), "pw".to_owned()));
    }

    #[test]
    fn the_management_url_is_derived_from_the_amqp_url() {
        let settings =
            Settings { amqp_url: SecretUrl::new("amqp://ad:m%2Fin@rabbit:5672/team"), ..Settings::default() };
        let url = management_url(&settings).unwrap();
        let users = BrokerUsers::at(&url, &settings.amqp_url).unwrap();
        assert_eq!(users.base.as_str(), "http://rabbit:15672/");
        assert_eq!(users.login, ("ad".to_owned(), "m/in".to_owned()));
        assert_eq!(users.vhost, "team");
    }

    #[test]
    fn an_op_may_read_only_its_queue_and_the_cancels_and_write_only_two_exchanges() {
        let op: OpRef = "price-paths@1.4.2".parse().unwrap();
        let permissions = permissions(&op);
        assert_eq!(permissions["configure"], "^$");
        assert_eq!(permissions["write"], r"^(opflow\.events|opflow\.cancels)$");
        assert_eq!(permissions["read"], r"^(opflow\.op\.price\-paths\.1\.4\.2|opflow\.cancels)$");
    }

    #[test]
    fn path_segments_escape_slashes_and_colons() {
        assert_eq!(segment("opflow-op:/:noop@1.0.0"), "opflow%2Dop%3A%2F%3Anoop%401%2E0%2E0");
    }
}
