//! RabbitMQ's `consumer_timeout`: the broker closes the channel of a consumer that holds a
//! message longer than this, so a step longer than it is taken away from its worker mid-run.
//! `opflow ops add` compares it with the longest step an op declares and warns.

use std::{process::Stdio, time::Duration};

/// Where the timeout compared against came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Asked the local node with `rabbitmqctl eval`.
    Broker,
    /// The `consumer_timeout_ms` setting (the broker could not be asked).
    Setting,
}

/// The broker's consumer timeout: `None` when it has none. A broker on this machine is
/// asked with `rabbitmqctl`; otherwise `setting` (what the operator says it is) is used.
pub async fn consumer_timeout(amqp_url: &str, setting: Duration) -> (Option<Duration>, Source) {
    if is_loopback(amqp_url)
        && let Some(asked) = ask_local_node().await
    {
        return (asked, Source::Broker);
    }
    (Some(setting), Source::Setting)
}

/// `rabbitmqctl eval 'application:get_env(rabbit, consumer_timeout).'`: `Some(None)` when
/// the node has no timeout, `None` when it could not be asked.
async fn ask_local_node() -> Option<Option<Duration>> {
    let run = tokio::process::Command::new("rabbitmqctl")
        .args(["-q", "eval", "application:get_env(rabbit, consumer_timeout)."])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(10), run).await.ok()?.ok()?;
    if !output.status.success() {
        return None;
    }
    parse_get_env(&String::from_utf8_lossy(&output.stdout))
}

/// Parses `{ok,1800000}` or `undefined`.
fn parse_get_env(text: &str) -> Option<Option<Duration>> {
    let text = text.trim();
    if text == "undefined" {
        return Some(None);
    }
    let millis = text.strip_prefix("{ok,")?.strip_suffix('}')?.trim();
    match millis {
        "infinity" | "false" => Some(None),
        n => n.parse().ok().map(|ms| Some(Duration::from_millis(ms))),
    }
}

/// Whether the URL's host is this machine.
fn is_loopback(amqp_url: &str) -> bool {
    let rest = amqp_url.split_once("://").map_or(amqp_url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let host = if let Some(bracketed) = host_port.strip_prefix('[') {
        bracketed.split(']').next().unwrap_or_default()
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    matches!(host, "localhost" | "127.0.0.1" | "::1") || host.starts_with("127.")
}

/// When a worker hands a long step over to the run store by default (its
/// `--handover-after`): a timeout longer than this never takes a step away.
pub const DEFAULT_HANDOVER_AFTER: Duration = Duration::from_secs(10 * 60);

/// The warning for an op whose declared longest step is not shorter than the timeout, when
/// the timeout would pass before its workers hand the step over by default.
pub fn warning(
    op: &str,
    longest_step: Duration,
    timeout: Option<Duration>,
    source: Source,
) -> Option<String> {
    let timeout = timeout?;
    if longest_step < timeout || timeout > DEFAULT_HANDOVER_AFTER {
        return None;
    }
    let whose = match source {
        Source::Broker => "the broker's consumer_timeout",
        Source::Setting => {
            "the consumer_timeout_ms setting (the broker's consumer_timeout, as configured here)"
        }
    };
    Some(format!(
        "{op} declares steps of up to {}, but {whose} is {}, before its workers hand a long step over to the \
         run store (`--handover-after`, {} by default): RabbitMQ takes a step still running then away from its \
         worker, which abandons it, and after the queue's delivery limit the step fails. Run the op's workers \
         with `--handover-after` well below the timeout, or raise `consumer_timeout` in rabbitmq.conf \
         (milliseconds; e.g. consumer_timeout = {}), see docs/reliability.md",
        humantime::format_duration(longest_step),
        humantime::format_duration(timeout),
        humantime::format_duration(DEFAULT_HANDOVER_AFTER),
        (longest_step.as_millis() * 2).max(1_800_000)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_rabbitmqctl_prints() {
        assert_eq!(parse_get_env("{ok,1800000}\n"), Some(Some(Duration::from_secs(1800))));
        assert_eq!(parse_get_env("undefined"), Some(None));
        assert_eq!(parse_get_env("{ok,infinity}"), Some(None));
        assert_eq!(parse_get_env("Error: unable to perform an operation"), None);
    }

    #[test]
    fn knows_loopback_hosts() {
        assert!(is_loopback("amqp://guest:guest@127.0.0.1:5672/%2f"));
        assert!(is_loopback("amqp://localhost/vhost"));
        assert!(is_loopback("amqp://u:p@[::1]:5672"));
        assert!(!is_loopback("amqp://guest:guest@rabbit.internal:5672/%2f"));
        assert!(!is_loopback("amqps://u:p%40127.0.0.1@10.0.0.5/v"));
    }

    #[test]
    fn warns_only_when_the_step_can_outlive_the_timeout() {
        let minute = Duration::from_secs(60);
        assert_eq!(warning("noop@1.1.0", minute, Some(minute * 30), Source::Broker), None);
        assert_eq!(warning("noop@1.1.0", minute, None, Source::Broker), None);
        // Past the default handover, a longer step is handed over before the timeout.
        assert_eq!(warning("noop@1.1.0", minute * 120, Some(minute * 30), Source::Broker), None);
        let warned = warning("noop@1.1.0", minute, Some(Duration::from_secs(5)), Source::Broker).unwrap();
        assert!(warned.contains("noop@1.1.0 declares steps of up to 1m"), "{warned}");
        assert!(warned.contains("consumer_timeout is 5s") && warned.contains("rabbitmq.conf"), "{warned}");
    }
}
