//! The dispatcher's side of RabbitMQ: publishing queued steps from the outbox, and
//! consuming the events workers report.
//!
//! - [`publish`]: the outbox publisher; one confirm window per outbox batch.
//! - [`events`]: the events consumer; one database transaction per batch of events, acked
//!   only after it commits.
//! - [`dead_letter`]: fails steps the broker dead-lettered.

pub mod dead_letter;
pub mod events;
pub mod publish;
