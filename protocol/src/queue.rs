//! The names of every queue, exchange and header opflow uses. Nothing else in the
//! workspace spells them out, so renaming one is a change to this file alone.

use crate::ids::OpRef;

/// Steps are published to the default exchange, routed by queue name.
pub const STEP_EXCHANGE: &str = "";

/// The topic exchange workers publish events to; routing key `step.<event name>`.
pub const EVENTS_EXCHANGE: &str = "opflow.events";

/// The dispatcher's queue of the events that move steps ([`LIFECYCLE_EVENTS`]), bound to
/// [`EVENTS_EXCHANGE`] for each of them. Lost-step recovery reads its depth: what waits
/// here may still say a step started or ended.
pub const DISPATCHER_EVENTS_QUEUE: &str = "opflow.dispatcher.events";

/// The dispatcher's queue of what steps say while they run ([`TELEMETRY_EVENTS`]): apart
/// from [`DISPATCHER_EVENTS_QUEUE`], so that a step that logs without end delays no step's
/// result, heartbeat or recovery, only other log lines.
pub const DISPATCHER_TELEMETRY_QUEUE: &str = "opflow.dispatcher.telemetry";

/// The events that move a step or record what it made, routed to [`DISPATCHER_EVENTS_QUEUE`].
pub const LIFECYCLE_EVENTS: &[&str] =
    &["started", "materialized", "check_result", "succeeded", "failed", "heartbeat", "abandoned"];

/// The events that only say how a step is doing, routed to [`DISPATCHER_TELEMETRY_QUEUE`].
pub const TELEMETRY_EVENTS: &[&str] = &["log", "progress"];

/// Where op queues dead-letter a message that exceeded its delivery limit or was rejected.
pub const DEAD_LETTER_EXCHANGE: &str = "opflow.dead-letter";

/// The queue bound to [`DEAD_LETTER_EXCHANGE`], read by the dispatcher.
pub const DEAD_LETTER_QUEUE: &str = "opflow.dead-letter";

/// The stream of run cancellations (a RabbitMQ stream queue), published to through
/// [`CANCELS_EXCHANGE`] and read by every worker from the start of its retention.
pub const CANCELS_STREAM: &str = "opflow.cancels";

/// The fanout exchange bound to [`CANCELS_STREAM`] alone. The dispatcher's cancel records
/// and the workers' markers go through it, so an op needs no write permission on the
/// default exchange (which reaches every queue, other ops' included).
pub const CANCELS_EXCHANGE: &str = "opflow.cancels";

/// The AMQP `type` property of a cancel record.
pub const CANCEL_MESSAGE_TYPE: &str = "opflow.cancel";

/// The queue whose marker message names the opflow installation that owns the vhost.
pub const INSTALLATION_QUEUE: &str = "opflow.installation";

/// The trace-context header (W3C `traceparent`) carried by steps and events.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// The AMQP `type` property of a step message.
pub const STEP_MESSAGE_TYPE: &str = "opflow.step";

/// The AMQP `type` property of an event.
pub const EVENT_MESSAGE_TYPE: &str = "opflow.event";

/// The durable queue of one op version: `opflow.op.<name>.<version>`.
pub fn op_queue(op: &OpRef) -> String {
    format!("opflow.op.{}.{}", op.name, op.version)
}

/// The RabbitMQ user of one op version of the installation on `vhost`:
/// `opflow-op:<vhost>:<name>@<version>`. Users are global to a broker and vhosts are not,
/// so the vhost is part of the name: two installations on one broker never share a user.
/// Every event and marker a worker publishes carries it as its `user_id`, which the broker
/// checks against the connection's login.
pub fn op_user(vhost: &str, op: &OpRef) -> String {
    format!("{}{op}", op_user_prefix(vhost))
}

/// What the name of every op version's user on `vhost` starts with (see [`op_user`]).
pub fn op_user_prefix(vhost: &str) -> String {
    format!("opflow-op:{vhost}:")
}

/// The routing key of an event on [`EVENTS_EXCHANGE`].
pub fn event_routing_key(event_name: &str) -> String {
    format!("step.{event_name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every event kind goes to exactly one of the dispatcher's queues: one in neither
    /// would be unroutable, and its publish refused.
    #[test]
    fn every_event_kind_has_exactly_one_queue() {
        use crate::{EventKind, LogLevel};
        let op: OpRef = "noop@1.0.0".parse().unwrap();
        let kinds = [
            EventKind::Started { op },
            EventKind::Progress { fraction: 0.5, message: None },
            EventKind::Log { level: LogLevel::Info, message: String::new() },
            EventKind::Materialized { metadata: serde_json::Value::Null },
            EventKind::CheckResult { name: String::new(), passed: true, detail: None },
            EventKind::Succeeded { output: serde_json::Value::Null },
            EventKind::Failed { error: String::new(), retryable: false },
            EventKind::Heartbeat,
            EventKind::Abandoned { reason: String::new() },
        ];
        for kind in &kinds {
            // A new kind fails to compile here until it is listed above and given a queue.
            match kind {
                EventKind::Started { .. }
                | EventKind::Progress { .. }
                | EventKind::Log { .. }
                | EventKind::Materialized { .. }
                | EventKind::CheckResult { .. }
                | EventKind::Succeeded { .. }
                | EventKind::Failed { .. }
                | EventKind::Heartbeat
                | EventKind::Abandoned { .. } => {}
            }
            let name = kind.name();
            let homes = [LIFECYCLE_EVENTS.contains(&name), TELEMETRY_EVENTS.contains(&name)];
            assert_eq!(homes.iter().filter(|&&h| h).count(), 1, "`{name}`");
        }
        assert_eq!(LIFECYCLE_EVENTS.len() + TELEMETRY_EVENTS.len(), kinds.len(), "no name without a kind");
    }

    #[test]
    fn op_user_names_vhost_op_and_version() {
        let op: OpRef = "price-paths@1.4.2".parse().unwrap();
        assert_eq!(op_user("/", &op), "opflow-op:/:price-paths@1.4.2");
        assert_eq!(op_user("team-a", &op), "opflow-op:team-a:price-paths@1.4.2");
    }

    #[test]
    fn op_queue_names_op_and_version() {
        let op: OpRef = "price-paths@1.4.2".parse().unwrap();
        assert_eq!(op_queue(&op), "opflow.op.price-paths.1.4.2");
    }
}
