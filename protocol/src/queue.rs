//! The names of every queue, exchange and header opflow uses. Nothing else in the
//! workspace spells them out, so renaming one is a change to this file alone.

use crate::ids::OpRef;

/// Steps are published to the default exchange, routed by queue name.
pub const STEP_EXCHANGE: &str = "";

/// The topic exchange workers publish events to; routing key `step.<event name>`.
pub const EVENTS_EXCHANGE: &str = "opflow.events";

/// The dispatcher's queue, bound to [`EVENTS_EXCHANGE`] for every event.
pub const DISPATCHER_EVENTS_QUEUE: &str = "opflow.dispatcher.events";

/// Where op queues dead-letter a message that exceeded its delivery limit or was rejected.
pub const DEAD_LETTER_EXCHANGE: &str = "opflow.dead-letter";

/// The queue bound to [`DEAD_LETTER_EXCHANGE`], read by the dispatcher.
pub const DEAD_LETTER_QUEUE: &str = "opflow.dead-letter";

/// The stream of run cancellations (a RabbitMQ stream queue), published to through the
/// default exchange and read by every worker from the start of its retention.
pub const CANCELS_STREAM: &str = "opflow.cancels";

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

/// The routing key of an event on [`EVENTS_EXCHANGE`].
pub fn event_routing_key(event_name: &str) -> String {
    format!("step.{event_name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_queue_names_op_and_version() {
        let op: OpRef = "price-paths@1.4.2".parse().unwrap();
        assert_eq!(op_queue(&op), "opflow.op.price-paths.1.4.2");
    }
}
