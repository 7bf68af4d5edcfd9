//! The dispatcher's settings, in one place: every default in `Default`, layered
//! built-in default < config file (TOML or YAML) < `OPFLOW_*` environment, and checked
//! once, at load: a value that loaded is one the services can use as it is. A leaf: the
//! parts these settings configure read them; nothing here depends on those parts.

use std::{net::SocketAddr, path::Path, time::Duration};

use opflow_amqp::QueueKind;
use opflow_process::SecretUrl;
use serde::{Deserialize, Deserializer, de::Error as _};

/// Settings of the `opflow` binary. A config file uses these names as keys; the
/// environment uses them upper-cased with an `OPFLOW_` prefix (`OPFLOW_AMQP_URL`).
/// `Debug` shows the URLs without their passwords (they are [`SecretUrl`]s).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// RabbitMQ URL.
    pub amqp_url: SecretUrl,
    /// RabbitMQ's management API (`http://user:password@host:15672`), through which op
    /// versions' broker users are made (`op_identity`). Unset: the `amqp_url`'s host on
    /// port 15672, with its login.
    pub broker_management_url: Option<SecretUrl>,
    /// Whether each op version speaks with a broker identity of its own: `required` (an
    /// event counts only if the op version of its step sent it; `opflow ops add` makes the
    /// op's broker user), `off` (ops share the dispatcher's login and may speak for any
    /// step), or `auto`: required under `opflow up`, which gives its workers their
    /// credentials, off under `opflow dispatcher`, whose workers someone else starts.
    pub op_identity: OpIdentity,
    /// PostgreSQL URL. The database is created on first use if the server allows it.
    pub database_url: SecretUrl,
    /// Address of the HTTP API.
    pub api_addr: SocketAddr,
    /// Whether the HTTP API needs a token: `auto` (open on a loopback address, required on
    /// any other), `required` or `off`.
    pub api_auth: ApiAuth,
    /// Whether the web UI is served on the API's address (`/`, behind the same tokens).
    pub ui: bool,
    /// Database connections the HTTP API may use, apart from the dispatcher's own.
    pub api_pool_size: u32,
    /// The longest one database statement of an API request may run (a duration: `10s`);
    /// past it the request is answered 503 and its connection is free again.
    #[serde(deserialize_with = "duration")]
    pub api_statement_timeout: Duration,
    /// The most event streams (`GET /v1/runs/{id}/events`) one token may hold open at once
    /// (on an API without tokens: one client address).
    pub api_streams_per_token: u32,
    /// Where to serve `/metrics` alone, without a token, for a scraper (`0.0.0.0:9600`).
    /// Unset: `/metrics` is served on the API, behind a `read` token when the API needs one.
    pub metrics_addr: Option<SocketAddr>,
    /// The most memory, in MiB, the plans of runs in flight may hold in the dispatcher's
    /// cache (a plan evicted is read again from the store when next needed).
    pub plan_cache_mb: u32,
    /// Queue type of the dispatcher's events queue: `quorum` or `classic`.
    pub events_queue_type: QueueKind,
    /// Most steps published per outbox transaction (one confirm window).
    pub publish_batch: u32,
    /// Most events applied per database transaction.
    pub event_batch: u32,
    /// An op version's default publish window holds at least what its workers take in
    /// this many milliseconds (and at least `2 × max_replicas × value`). A step of another
    /// owner's run waits at most about this long behind a backlog; a longer window publishes
    /// in larger rounds, which costs each step less broker, database and dispatcher CPU.
    pub publish_window_ms: u64,
    /// How long, in milliseconds, a batch of events waits for more once events arrive
    /// faster than they are applied (a lone event never waits). Longer batches cost each
    /// event less database and dispatcher CPU, and delay what follows it (a chain's next
    /// step, a watcher) by up to this much while the system is busy.
    pub event_linger_ms: u64,
    /// How often due retries are looked for, in milliseconds.
    pub retry_poll_ms: u64,
    /// Largest total size of the upstream outputs handed to one step, in bytes.
    pub max_inputs_bytes: usize,
    /// How long `opflow up` and `opflow dispatcher` wait for in-flight work on shutdown, in seconds.
    pub drain_timeout_secs: u64,
    /// RabbitMQ's `consumer_timeout` in milliseconds, for a broker that `opflow ops add`
    /// cannot ask itself (not on this machine): it warns when an op's longest step is longer.
    pub consumer_timeout_ms: u64,
    /// How long a step may show no sign of life before it is taken for lost and retried
    /// (or failed): a running step without a heartbeat, a queued step whose message is no
    /// longer on the broker. Must be well over the workers' heartbeat interval (10 s).
    pub lost_step_after_secs: u64,
    /// How long a finished run is kept (a duration: `30d`, `12h`); older ones are deleted
    /// with all their rows, in the background.
    #[serde(deserialize_with = "duration")]
    pub retention: Duration,
    /// `opflow up`'s autoscaler looks at an op the moment steps are published to it (rather
    /// than at its next poll). Off only to measure what it saves.
    pub autoscale_wakeup: bool,
    /// `opflow up`'s autoscaler starts a worker for steps about to become ready. Off only to
    /// measure what it saves.
    pub autoscale_forecast: bool,
    /// Whether webhooks may go to loopback, private, link-local, unique-local, CGNAT and
    /// other internal addresses. Off: a shared platform must not be a way into its own
    /// network. On only where every receiver is trusted (tests, a single-tenant install).
    pub webhooks_allow_private: bool,
    /// How long a webhook delivery is retried before it is given up as failed (a duration:
    /// `24h`, `30m`), counted from the run's end or its redelivery.
    #[serde(deserialize_with = "duration")]
    pub webhooks_retry_for: Duration,
    /// The longest pause between two attempts of a webhook delivery (a duration: `5m`, `3s`).
    #[serde(deserialize_with = "duration")]
    pub webhooks_max_backoff: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            amqp_url: SecretUrl::new("amqp://guest:guest@127.0.0.1:5672/%2f"),
            broker_management_url: None,
            op_identity: OpIdentity::Auto,
            database_url: SecretUrl::new("postgres://postgres@127.0.0.1:5432/opflow"),
            api_addr: SocketAddr::from(([127, 0, 0, 1], 7600)),
            api_auth: ApiAuth::Auto,
            ui: true,
            api_pool_size: 4,
            api_statement_timeout: Duration::from_secs(10),
            api_streams_per_token: 32,
            metrics_addr: None,
            plan_cache_mb: 256,
            events_queue_type: QueueKind::Quorum,
            publish_batch: 500,
            event_batch: 500,
            publish_window_ms: DEFAULT_PUBLISH_WINDOW_MS,
            event_linger_ms: 20,
            retry_poll_ms: 250,
            max_inputs_bytes: 8 * 1024 * 1024,
            drain_timeout_secs: 60,
            consumer_timeout_ms: 1_800_000,
            lost_step_after_secs: 60,
            retention: Duration::from_secs(30 * 24 * 3600),
            autoscale_wakeup: true,
            autoscale_forecast: true,
            webhooks_allow_private: false,
            webhooks_retry_for: Duration::from_secs(24 * 3600),
            webhooks_max_backoff: Duration::from_secs(5 * 60),
        }
    }
}

/// The keys read from the environment. Other `OPFLOW_*` variables (a worker's
/// `OPFLOW_HEARTBEAT`, `OPFLOW_CONFIG` itself) are not settings of this binary.
const KEYS: &[&str] = &[
    "amqp_url",
    "broker_management_url",
    "op_identity",
    "database_url",
    "api_addr",
    "api_auth",
    "ui",
    "api_pool_size",
    "api_statement_timeout",
    "api_streams_per_token",
    "metrics_addr",
    "plan_cache_mb",
    "events_queue_type",
    "publish_batch",
    "event_batch",
    "publish_window_ms",
    "event_linger_ms",
    "retry_poll_ms",
    "max_inputs_bytes",
    "drain_timeout_secs",
    "consumer_timeout_ms",
    "lost_step_after_secs",
    "retention",
    "autoscale_wakeup",
    "autoscale_forecast",
    "webhooks_allow_private",
    "webhooks_retry_for",
    "webhooks_max_backoff",
];

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("settings: {0}")]
    Load(config::ConfigError),
    #[error("settings: `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl From<config::ConfigError> for SettingsError {
    fn from(error: config::ConfigError) -> Self {
        SettingsError::Load(error)
    }
}

/// The largest `max_inputs_bytes`: the step message carrying them must stay well under the
/// broker's message size limit.
pub const MAX_INPUTS_BYTES_LIMIT: usize = 32 * 1024 * 1024;

/// The default `publish_window_ms`.
pub const DEFAULT_PUBLISH_WINDOW_MS: u64 = 100;

/// The longest `event_linger_ms`.
pub const MAX_EVENT_LINGER_MS: u64 = 1_000;

/// The range of a setting, where it is read, and why it ends where it does.
pub struct Range<T: 'static> {
    pub key: &'static str,
    pub value: fn(&Settings) -> T,
    pub min: T,
    pub max: T,
    pub default: &'static str,
    pub why: &'static str,
}

impl<T> Range<T> {
    fn refused(&self, value: String, min: String, max: String) -> SettingsError {
        SettingsError::Invalid {
            key: self.key,
            reason: format!(
                "{value} is outside {min}..={max}: {}; the default is {}",
                self.why, self.default
            ),
        }
    }
}

/// Every number setting's range (the README's settings table says the same).
pub const RANGES: &[Range<u64>] = &[
    Range {
        key: "api_pool_size",
        value: |s| u64::from(s.api_pool_size),
        min: 1,
        max: 64,
        default: "4",
        why: "the API needs a connection, and PostgreSQL has a limit of them",
    },
    Range {
        key: "api_streams_per_token",
        value: |s| u64::from(s.api_streams_per_token),
        min: 1,
        max: 10_000,
        default: "32",
        why: "each open stream reads the database as its run moves; one client must not hold them all",
    },
    Range {
        key: "plan_cache_mb",
        value: |s| u64::from(s.plan_cache_mb),
        min: 1,
        max: 65_536,
        default: "256",
        why: "the dispatcher's memory for the plans of runs in flight",
    },
    Range {
        key: "publish_batch",
        value: |s| u64::from(s.publish_batch),
        min: 1,
        max: 10_000,
        default: "500",
        why: "0 would publish nothing and poll in a busy loop",
    },
    Range {
        key: "event_batch",
        value: |s| u64::from(s.event_batch),
        min: 1,
        max: 10_000,
        default: "500",
        why: "it is the events consumer's prefetch, and 0 means unlimited to the broker",
    },
    Range {
        key: "publish_window_ms",
        value: |s| s.publish_window_ms,
        min: 1,
        max: 60_000,
        default: "100",
        why: "a minute of an op's intake in its queue is no window; set `ops scale --window` for one op instead",
    },
    Range {
        key: "event_linger_ms",
        value: |s| s.event_linger_ms,
        min: 0,
        max: MAX_EVENT_LINGER_MS,
        default: "20",
        why: "every step of a busy system would wait that long to be recorded",
    },
    Range {
        key: "retry_poll_ms",
        value: |s| s.retry_poll_ms,
        min: 10,
        max: 60_000,
        default: "250",
        why: "below 10 ms it polls in a loop; above a minute retries start late",
    },
    Range {
        key: "max_inputs_bytes",
        value: |s| s.max_inputs_bytes as u64,
        min: 0,
        max: MAX_INPUTS_BYTES_LIMIT as u64,
        default: "8388608",
        why: "a step's message must stay well under the broker's size limit; have upstream ops output references to large data instead",
    },
    Range {
        key: "drain_timeout_secs",
        value: |s| s.drain_timeout_secs,
        min: 1,
        max: 86_400,
        default: "60",
        why: "a drain needs time to finish the steps in hand, and must end",
    },
    Range {
        key: "consumer_timeout_ms",
        value: |s| s.consumer_timeout_ms,
        min: 1_000,
        max: 604_800_000,
        default: "1800000",
        why: "it is RabbitMQ's consumer timeout of the op queues, in ms (at most 7 days)",
    },
    Range {
        key: "lost_step_after_secs",
        value: |s| s.lost_step_after_secs,
        min: 1,
        max: 86_400,
        default: "60",
        why: "a lost step must be noticed, and within a day",
    },
];

const DAY: u64 = 24 * 3600;

/// Every duration setting's range.
pub const DURATION_RANGES: &[Range<Duration>] = &[
    Range {
        key: "api_statement_timeout",
        value: |s| s.api_statement_timeout,
        min: Duration::from_millis(100),
        max: Duration::from_secs(600),
        default: "10s",
        why: "an API request's statement must end, so that its connection serves the next one",
    },
    Range {
        key: "retention",
        value: |s| s.retention,
        min: Duration::from_secs(3600),
        max: Duration::from_secs(3650 * DAY),
        default: "30d",
        why: "finished runs are kept at least an hour, and a cutoff past ten years overflows the database's dates",
    },
    Range {
        key: "webhooks_retry_for",
        value: |s| s.webhooks_retry_for,
        min: Duration::from_secs(1),
        max: Duration::from_secs(30 * DAY),
        default: "24h",
        why: "a delivery is retried for a while, and gives up within a month",
    },
    Range {
        key: "webhooks_max_backoff",
        value: |s| s.webhooks_max_backoff,
        min: Duration::from_secs(1),
        max: Duration::from_secs(DAY),
        default: "5m",
        why: "the pause between two attempts at one delivery",
    },
];

impl Settings {
    /// Loads defaults, then `file` if given, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, SettingsError> {
        Self::load_from(file, std::env::vars())
    }

    /// As [`Settings::load`], with the environment given explicitly.
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, SettingsError> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        let env: config::Map<String, String> = env
            .into_iter()
            .filter_map(|(k, v)| {
                let key = k.strip_prefix("OPFLOW_")?.to_ascii_lowercase();
                KEYS.contains(&key.as_str()).then_some((format!("OPFLOW_{}", key.to_ascii_uppercase()), v))
            })
            .collect();
        builder = builder
            .add_source(config::Environment::with_prefix("OPFLOW").source(Some(env)).try_parsing(true));
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.check()?;
        Ok(settings)
    }

    /// Every number and duration within its range ([`RANGES`], [`DURATION_RANGES`]), so a
    /// setting that would busy-loop, unbound a prefetch, overflow a timestamp or panic on
    /// its first use is refused at start, naming the key, the range and the default.
    fn check(&self) -> Result<(), SettingsError> {
        for range in RANGES {
            let value = (range.value)(self);
            if value < range.min || value > range.max {
                return Err(range.refused(value.to_string(), range.min.to_string(), range.max.to_string()));
            }
        }
        for range in DURATION_RANGES {
            let value = (range.value)(self);
            if value < range.min || value > range.max {
                let human = |d: Duration| humantime::format_duration(d).to_string();
                return Err(range.refused(human(value), human(range.min), human(range.max)));
            }
        }
        Ok(())
    }

    pub fn publish_window(&self) -> Duration {
        Duration::from_millis(self.publish_window_ms.max(1))
    }

    pub fn event_linger(&self) -> Duration {
        Duration::from_millis(self.event_linger_ms)
    }

    pub fn retry_poll(&self) -> Duration {
        Duration::from_millis(self.retry_poll_ms.max(10))
    }

    pub fn lost_step_after(&self) -> Duration {
        Duration::from_secs(self.lost_step_after_secs.max(1))
    }

    /// The plan cache's budget, in bytes.
    pub fn plan_cache_bytes(&self) -> usize {
        self.plan_cache_mb as usize * 1024 * 1024
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }
}

/// The `op_identity` setting; see [`Settings::op_identity`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpIdentity {
    /// Required under `opflow up`, off under `opflow dispatcher`.
    #[default]
    Auto,
    Required,
    Off,
}

impl OpIdentity {
    /// Whether ops must speak for themselves, in a process that starts its own workers
    /// (`opflow up`: `starts_workers`) or not.
    pub fn required(self, starts_workers: bool) -> bool {
        match self {
            OpIdentity::Auto => starts_workers,
            OpIdentity::Required => true,
            OpIdentity::Off => false,
        }
    }
}

/// The `api_auth` setting: whether the HTTP API needs a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiAuth {
    /// Open on a loopback address (only this machine can call it), required on any other.
    #[default]
    Auto,
    Required,
    Off,
}

impl ApiAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiAuth::Auto => "auto",
            ApiAuth::Required => "required",
            ApiAuth::Off => "off",
        }
    }

    /// Whether requests to an API served on `addr` need a token.
    pub fn required_on(self, addr: std::net::SocketAddr) -> bool {
        match self {
            ApiAuth::Auto => !addr.ip().is_loopback(),
            ApiAuth::Required => true,
            ApiAuth::Off => false,
        }
    }
}

/// A duration setting, written for people (`30d`, `12h`, `5m`), parsed once as it loads.
/// (`humantime-serde` does the same with a vaguer message: this one names an example.)
fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map_err(|reason| {
        D::Error::custom(format!("`{text}` is not a duration like 30d, 12h or 5m: {reason}"))
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_match_the_design() {
        let s = Settings::load_from(None, env(&[])).unwrap();
        assert_eq!(s.amqp_url.expose(), "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(s.database_url.expose(), "postgres://postgres@127.0.0.1:5432/opflow");
        assert_eq!(s.api_addr.to_string(), "127.0.0.1:7600");
    }

    #[test]
    fn environment_overrides_file_overrides_defaults() {
        let mut file = tempfile_with(".toml", "api_addr = \"127.0.0.1:9000\"\npublish_batch = 7\n");
        file.flush().unwrap();
        let s = Settings::load_from(
            Some(file.path()),
            env(&[("OPFLOW_PUBLISH_BATCH", "9"), ("OPFLOW_HEARTBEAT", "1s"), ("HOME", "/root")]),
        )
        .unwrap();
        assert_eq!(s.api_addr.to_string(), "127.0.0.1:9000");
        assert_eq!(s.publish_batch, 9);
    }

    #[test]
    fn unknown_keys_in_a_file_are_errors() {
        let file = tempfile_with(".toml", "amqp_ulr = \"x\"\n");
        let err = Settings::load_from(Some(file.path()), env(&[])).unwrap_err();
        assert!(err.to_string().contains("amqp_ulr"), "{err}");
    }

    #[test]
    fn api_auth_reads_its_three_values_and_refuses_others() {
        let s = Settings::load_from(None, env(&[("OPFLOW_API_AUTH", "required")])).unwrap();
        assert_eq!(s.api_auth, ApiAuth::Required);
        assert_eq!(Settings::load_from(None, env(&[])).unwrap().api_auth, ApiAuth::Auto);
        let err = Settings::load_from(None, env(&[("OPFLOW_API_AUTH", "maybe")])).unwrap_err();
        assert!(err.to_string().contains("maybe"), "{err}");
    }

    #[test]
    fn the_ui_is_on_unless_turned_off() {
        assert!(Settings::load_from(None, env(&[])).unwrap().ui);
        assert!(!Settings::load_from(None, env(&[("OPFLOW_UI", "false")])).unwrap().ui);
        assert!(Settings::load_from(None, env(&[("OPFLOW_UI", "sometimes")])).is_err());
    }

    #[test]
    fn webhook_settings_default_and_are_checked() {
        let s = Settings::load_from(None, env(&[])).unwrap();
        assert!(!s.webhooks_allow_private);
        assert_eq!(s.webhooks_retry_for, Duration::from_secs(24 * 3600));
        assert_eq!(s.webhooks_max_backoff, Duration::from_secs(300));
        let s = Settings::load_from(
            None,
            env(&[("OPFLOW_WEBHOOKS_ALLOW_PRIVATE", "true"), ("OPFLOW_WEBHOOKS_MAX_BACKOFF", "3s")]),
        )
        .unwrap();
        assert!(s.webhooks_allow_private);
        assert_eq!(s.webhooks_max_backoff, Duration::from_secs(3));
        let err = Settings::load_from(None, env(&[("OPFLOW_WEBHOOKS_RETRY_FOR", "soon")])).unwrap_err();
        assert!(err.to_string().contains("webhooks_retry_for") && err.to_string().contains("soon"), "{err}");
        let err = Settings::load_from(None, env(&[("OPFLOW_WEBHOOKS_MAX_BACKOFF", "0s")])).unwrap_err();
        assert!(
            err.to_string().contains("webhooks_max_backoff") && err.to_string().contains("outside 1s..=1day"),
            "{err}"
        );
    }

    #[test]
    fn retention_is_a_duration_read_once() {
        let s = Settings::load_from(None, env(&[])).unwrap();
        assert_eq!(s.retention, Duration::from_secs(30 * 24 * 3600));
        let s = Settings::load_from(None, env(&[("OPFLOW_RETENTION", "12h")])).unwrap();
        assert_eq!(s.retention, Duration::from_secs(12 * 3600));
        let file = tempfile_with(".toml", "retention = \"7d\"\n");
        assert_eq!(
            Settings::load_from(Some(file.path()), env(&[])).unwrap().retention,
            Duration::from_secs(7 * 86400)
        );
        let err = Settings::load_from(None, env(&[("OPFLOW_RETENTION", "forever")])).unwrap_err();
        assert!(err.to_string().contains("retention") && err.to_string().contains("30d, 12h or 5m"), "{err}");
    }

    #[test]
    fn event_linger_defaults_to_20_ms_and_is_capped() {
        assert_eq!(Settings::load_from(None, env(&[])).unwrap().event_linger(), Duration::from_millis(20));
        let s = Settings::load_from(None, env(&[("OPFLOW_EVENT_LINGER_MS", "0")])).unwrap();
        assert_eq!(s.event_linger(), Duration::ZERO);
        let err = Settings::load_from(None, env(&[("OPFLOW_EVENT_LINGER_MS", "5000")])).unwrap_err();
        assert!(err.to_string().contains("event_linger_ms") && err.to_string().contains("5000"), "{err}");
    }

    /// Each setting that could busy-loop, unbound a prefetch, overflow a date or panic on
    /// first use is refused at load, naming itself and its range.
    #[test]
    fn every_number_and_duration_outside_its_range_is_refused_at_load() {
        for (key, value) in [
            ("API_POOL_SIZE", "0"),
            ("API_STATEMENT_TIMEOUT", "0s"),
            ("API_STREAMS_PER_TOKEN", "0"),
            ("PLAN_CACHE_MB", "0"),
            ("PUBLISH_BATCH", "0"),
            ("EVENT_BATCH", "0"),
            ("EVENT_BATCH", "1000000"),
            ("RETRY_POLL_MS", "0"),
            ("DRAIN_TIMEOUT_SECS", "0"),
            ("CONSUMER_TIMEOUT_MS", "10"),
            ("LOST_STEP_AFTER_SECS", "99999999999"),
            ("MAX_INPUTS_BYTES", "99999999999"),
            ("RETENTION", "300000y"),
            ("RETENTION", "1s"),
            ("WEBHOOKS_RETRY_FOR", "300000y"),
            ("WEBHOOKS_MAX_BACKOFF", "400d"),
        ] {
            let err = Settings::load_from(None, env(&[(&format!("OPFLOW_{key}"), value)]))
                .expect_err(&format!("{key}={value} must be refused"));
            let text = err.to_string();
            let name = key.to_ascii_lowercase();
            assert!(text.contains(&format!("`{name}`")) && text.contains("outside"), "{key}={value}: {text}");
            assert!(text.contains("the default is"), "{text}");
        }
        // Every range has its setting, and every default is within its range.
        let defaults = Settings::default();
        defaults.check().unwrap();
        for range in RANGES {
            assert!(KEYS.contains(&range.key), "{}", range.key);
        }
        for range in DURATION_RANGES {
            assert!(KEYS.contains(&range.key), "{}", range.key);
        }
    }

    #[test]
    fn bad_queue_type_is_named() {
        let err = Settings::load_from(None, env(&[("OPFLOW_EVENTS_QUEUE_TYPE", "stream")])).unwrap_err();
        assert!(err.to_string().contains("stream"), "{err}");
    }

    #[test]
    fn debug_hides_the_passwords() {
        let s = Settings::load_from(
            None,
            env(&[
                ("OPFLOW_AMQP_URL", "amqp://guest:s3cr3t-amqp@rabbit:5672/%2f"),
                ("OPFLOW_DATABASE_URL", "postgres://opflow:s3cr3t-pg@db:5432/opflow"),
            ]),
        )
        .unwrap();
        let debug = format!("{s:?}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
        assert!(debug.contains("amqp://guest:***@rabbit:5672/%2f"), "{debug}");
        assert!(debug.contains("postgres://opflow:***@db:5432/opflow"), "{debug}");
    }

    fn tempfile_with(ext: &str, text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::Builder::new().suffix(ext).tempfile().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }
}
