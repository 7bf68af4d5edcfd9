//! `opflow up` on one machine: a fleet of worker processes per op version ([`fleet`]) and
//! the autoscaler that sizes them from their queues ([`autoscale`]), as KEDA would on
//! Kubernetes. The command itself is `cli::up`.

pub mod autoscale;
pub mod fleet;
