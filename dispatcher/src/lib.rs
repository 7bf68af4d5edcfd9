//! The opflow dispatcher and the `opflow` command line.
//!
//! The dispatcher compiles asset plans into steps, stores runs in PostgreSQL, publishes
//! ready steps to RabbitMQ through a transactional outbox, applies the events workers
//! report, retries and unlocks steps, and serves an HTTP API. It knows ops only through
//! the wire protocol (`opflow-protocol`) and their `--describe` output.
//!
//! The modules, from the top down; each uses only those below it (ARCHITECTURE.md):
//!
//! - [`cli`]: the `opflow` commands.
//! - [`bench`]: `opflow bench`, the platform measured against the broker alone.
//! - [`up`]: `opflow up`'s worker fleets and their autoscaler.
//! - [`service`]: the dispatcher service: the API for the whole process, and the leader's
//!   loops (publisher, applier, recovery, retries, retention, webhook delivery).
//! - [`ui`]: the web UI's pages, which read through the API's handlers.
//! - [`api`]: the HTTP API's handlers, its readiness and its metrics.
//! - [`submit`]: submitting a plan, shared by the API, the CLI and the bench.
//! - [`ops`]: registering an op version from its binary; the broker's consumer timeout.
//! - [`webhooks`]: signing webhooks and judging where they may go.
//! - [`store`]: the run store in PostgreSQL, and the lease that makes one dispatcher lead.
//! - [`plan`]: the plan compiler, pure; [`schedules`]: cron ticks and what to do with a
//!   due one, pure.
//! - [`settings`]: layered settings, read by the rest; [`keyed_counts`]: counts per key
//!   held by guards (streams per caller, webhook attempts per target); [`human`]: numbers as
//!   people read them.

pub mod api;
pub mod bench;
pub mod cli;
pub mod human;
pub mod keyed_counts;
pub mod ops;
pub mod plan;
pub mod schedules;
pub mod service;
pub mod settings;
pub mod store;
pub mod submit;
pub mod ui;
pub mod up;
pub mod webhooks;
