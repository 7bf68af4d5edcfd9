//! The opflow dispatcher and the `opflow` command line.
//!
//! The dispatcher compiles asset plans into steps, stores runs in PostgreSQL, publishes
//! ready steps to RabbitMQ through a transactional outbox, applies the events workers
//! report, retries and unlocks steps, and serves an HTTP API. It knows ops only through
//! the wire protocol (`opflow-protocol`) and their `--describe` output.
//!
//! - [`plan`]: the plan compiler (parse, validate, expand).
//! - [`store`]: the run store (registry, runs, steps, outbox, events).
//! - [`broker`]: the outbox publisher and the events consumer.
//! - [`isolation`]: applying events so that a bad one fails only its own step.
//! - [`recovery`]: every run ends: lost steps retried, stuck runs ended.
//! - [`scheduler`]: time-driven scheduling (due retries).
//! - [`retry`]: retry backoff.
//! - [`submit`]: plan submission shared by the CLI and the API.
//! - [`register`]: registering an op version from its binary.
//! - [`consumer_timeout`]: the broker timeout an op's longest step is checked against.
//! - [`api`]: the HTTP API.
//! - [`metrics`]: the Prometheus metrics the API serves at `/metrics`.
//! - [`service`]: the dispatcher service wiring, reconnection and drain.
//! - [`leader`]: leadership among dispatchers sharing a database (the lease).
//! - [`supervise`]: worker processes for `opflow up`.
//! - [`autoscale`]: `opflow up`'s autoscaler, by KEDA's rule.
//! - [`config`]: layered settings.
//! - [`cli`]: the `opflow` commands.
//! - [`bench`]: `opflow bench`, the platform measured against the broker alone.
//! - [`webhooks`]: telling receivers that a run ended (Standard Webhooks, from an outbox).

pub mod api;
pub mod autoscale;
pub mod bench;
pub mod broker;
pub mod cli;
pub mod config;
pub mod consumer_timeout;
pub mod isolation;
pub mod leader;
pub mod metrics;
pub mod plan;
pub mod recovery;
pub mod register;
pub mod retry;
pub mod scheduler;
pub mod service;
pub mod store;
pub mod submit;
pub mod supervise;
pub mod webhooks;
