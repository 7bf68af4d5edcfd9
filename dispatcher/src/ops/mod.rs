//! Op versions as the dispatcher registers them: asking a binary to `--describe` itself
//! and recording it ([`register`]), the broker's `consumer_timeout` an op's longest step
//! is checked against ([`consumer_timeout`]), and each version's own broker user
//! ([`identity`]).

pub mod consumer_timeout;
pub mod identity;
pub mod register;
