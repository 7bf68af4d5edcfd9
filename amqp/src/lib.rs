//! RabbitMQ plumbing shared by the dispatcher and the worker runtime.
//!
//! Both sides publish with confirms, both must treat an unroutable message as an error,
//! and both must agree on every queue argument; keeping that here means the two can
//! never drift apart. Nothing here knows about runs, plans or the database.
//!
//! - [`claim`]: one installation per vhost, checked when a dispatcher leads.
//! - [`connect`]: one long-lived connection per process, opened with capped backoff.
//! - [`publish`]: persistent, mandatory, confirmed publishing that reports a returned
//!   (unroutable) message as an error, which lapin hands back as an *ack*.
//! - [`topology`]: queue and exchange declarations and their arguments.
//! - [`trace`]: W3C trace context in message headers.

pub mod claim;
pub mod connect;
pub mod publish;
pub mod topology;
pub mod trace;

pub use connect::{ConnectError, Login, connect};
pub use publish::{Outgoing, PendingConfirm, PublishError, Publisher};
pub use topology::{OpQueueSettings, QueueKind, TopologyError};
