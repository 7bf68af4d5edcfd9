//! Op versions as the dispatcher registers them: asking a binary to `--describe` itself
//! and recording it ([`register`]), and the broker's `consumer_timeout` an op's longest
//! step is checked against ([`consumer_timeout`]).

pub mod consumer_timeout;
pub mod register;
