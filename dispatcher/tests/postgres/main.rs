//! The dispatcher's tests that need a real PostgreSQL: the store's statements and their
//! guards, the applier's isolation of a refused event, the metrics it counts, the lease's
//! connection. Each test has a database of its own ([`common::TestDb`]), dropped
//! afterwards, so they run in parallel. `scripts/test.sh` starts PostgreSQL before them;
//! the unit tests (`cargo test --workspace --lib`) need no service at all.

mod common;

mod applier;
mod apply;
mod bounded;
mod connect;
mod in_flight;
mod lease;
mod metrics;
mod outbox;
mod retention;
mod runs;
mod tokens;
mod webhooks;
