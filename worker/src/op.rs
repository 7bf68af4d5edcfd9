//! The [`Op`] builder: an op's identity, its config description and its handler, and the
//! worker settings every op binary takes (`cli` parses them).

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use opflow_process::{LogFormat, SecretUrl};
use opflow_protocol::{ConfigField, OpDescription, OpName, OpRef, SCHEMA_VERSION};
use semver::Version;
use serde_json::Value;

use crate::{context::StepContext, error::StepError};

pub(crate) type BoxedHandler =
    Arc<dyn Fn(StepContext) -> Pin<Box<dyn Future<Output = Result<Value, StepError>> + Send>> + Send + Sync>;

/// An op under construction; finish with [`Op::main`].
pub struct Op {
    name: &'static str,
    version: &'static str,
    summary: String,
    config: Vec<ConfigField>,
    longest_step: Option<Duration>,
    reuse_from: Option<String>,
    handler: Option<BoxedHandler>,
}

/// A validated op with its handler, as the consume loop uses it.
pub(crate) struct OpSpec {
    pub op: OpRef,
    pub description: OpDescription,
    pub handler: BoxedHandler,
}

/// How a worker process connects and reports. `Debug` shows the URL without its password.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerSettings {
    /// RabbitMQ URL
    #[arg(
        long,
        env = "OPFLOW_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_url: SecretUrl,

    /// The dispatcher's RabbitMQ user: a run is canceled only by a cancel record that user
    /// published (the broker checks who publishes). Default: this worker's own user, as
    /// when the dispatcher and its ops share one login
    #[arg(long, env = "OPFLOW_DISPATCHER_USER")]
    pub dispatcher_user: Option<String>,

    /// How often a running step sends a heartbeat event (e.g. 10s, 500ms)
    #[arg(long, env = "OPFLOW_HEARTBEAT", default_value = "10s", value_parser = humantime_duration)]
    pub heartbeat: Duration,

    /// How long a step told to stop (past its timeout, or its run canceled) has to return by
    /// itself; after that the worker reports it and exits, to stop whatever the handler runs
    #[arg(long, env = "OPFLOW_STOP_GRACE", default_value = "5s", value_parser = humantime_duration)]
    pub stop_grace: Duration,

    /// How long a step runs before the worker takes it off the broker's hands: it confirms
    /// the step started, acks its message (so the broker's consumer_timeout no longer
    /// applies) and heartbeats on; if the heartbeats stop, the dispatcher retries the step.
    /// Keep it below the broker's consumer_timeout (30 min by default)
    #[arg(long, env = "OPFLOW_HANDOVER_AFTER", default_value = "10m", value_parser = humantime_duration)]
    pub handover_after: Duration,

    /// Log line format on stderr
    #[arg(long, env = "OPFLOW_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// Exit 0 after this many steps (the last one settled), for the supervisor to start a
    /// fresh process: recycling
    #[arg(long, env = "OPFLOW_MAX_STEPS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_steps: Option<u32>,

    /// Exit 0 once resident memory passes this many MiB (after the step in hand settles)
    #[arg(long, env = "OPFLOW_MAX_RSS_MB", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_rss_mb: Option<u32>,
}

fn humantime_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration like 10s or 500ms: {e}"))?;
    if d.is_zero() { Err("must be longer than zero".into()) } else { Ok(d) }
}

impl Op {
    /// Starts describing op `name` at `version`; use [`crate::op_version!`] for the version.
    pub fn new(name: &'static str, version: &'static str) -> Self {
        Self {
            name,
            version,
            summary: String::new(),
            config: Vec::new(),
            longest_step: None,
            reuse_from: None,
            handler: None,
        }
    }

    /// One line saying what the op computes.
    pub fn summary(mut self, summary: impl Into<String>) -> Self {
        self.summary = summary.into();
        self
    }

    /// Documents one parameter the handler reads. `default` of `null` means required.
    pub fn config_field(mut self, name: &str, kind: &str, description: &str, default: Value) -> Self {
        self.config.push(ConfigField {
            name: name.to_owned(),
            kind: kind.to_owned(),
            description: description.to_owned(),
            default,
        });
        self
    }

    /// The longest one step is expected to run. `opflow ops add` warns when the broker's
    /// `consumer_timeout` is shorter and would pass before the worker hands the step over
    /// (`--handover-after`): the broker would take such a step away from its worker mid-run
    /// (see docs/reliability.md).
    pub fn longest_step(mut self, longest: Duration) -> Self {
        self.longest_step = Some(longest);
        self
    }

    /// Declares this version's outputs equal to those of the earlier versions `requirement`
    /// (a semver requirement such as `^1.2`) matches: a step of this version reuses their
    /// materializations as its own, so a patch release recomputes nothing. Declare it only
    /// when the code change cannot change an output.
    pub fn reuse_from(mut self, requirement: impl Into<String>) -> Self {
        self.reuse_from = Some(requirement.into());
        self
    }

    /// The function that runs a step.
    pub fn handler<F, Fut>(mut self, handler: F) -> Self
    where
        F: Fn(StepContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, StepError>> + Send + 'static,
    {
        self.handler = Some(Arc::new(move |ctx| Box::pin(handler(ctx))));
        self
    }

    pub(crate) fn into_spec(self) -> Result<OpSpec, String> {
        let name = OpName::new(self.name).map_err(|e| e.to_string())?;
        let version = Version::parse(self.version)
            .map_err(|e| format!("op version `{}` is not semver: {e}", self.version))?;
        let op = OpRef::new(name, version);
        let handler = self.handler.ok_or_else(|| format!("op {op} has no handler; call .handler(..)"))?;
        if let Some(requirement) = &self.reuse_from {
            semver::VersionReq::parse(requirement).map_err(|e| {
                format!("op {op}: reuse_from `{requirement}` is not a semver requirement: {e}")
            })?;
        }
        let description = OpDescription {
            op: op.clone(),
            summary: self.summary,
            config: self.config,
            schema_version: SCHEMA_VERSION,
            longest_step_ms: self.longest_step.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            reuse_from: self.reuse_from,
        };
        Ok(OpSpec { op, description, handler })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_durations_must_be_positive() {
        assert_eq!(humantime_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(humantime_duration("ten").is_err());
        assert!(humantime_duration("0s").is_err());
    }

    #[test]
    fn an_op_without_a_handler_or_with_a_bad_version_is_refused() {
        assert!(Op::new("noop", "1.0.0").into_spec().is_err());
        let ok = |_ctx: StepContext| async { Ok(Value::Null) };
        assert!(Op::new("noop", "one").handler(ok).into_spec().is_err());
        assert!(Op::new("No Op", "1.0.0").handler(ok).into_spec().is_err());
        let spec = Op::new("noop", "1.2.3").handler(ok).into_spec().unwrap();
        assert_eq!(spec.op.to_string(), "noop@1.2.3");
    }
}
