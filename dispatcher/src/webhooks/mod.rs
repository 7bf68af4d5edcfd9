//! Webhooks: when a run ends, tell the receivers that asked, following the Standard
//! Webhooks specification (`webhook-id`, `webhook-timestamp`, `webhook-signature`), so they
//! can verify with an existing library. See `docs/webhooks.md`.
//!
//! How the parts fit, and why:
//! - **Enqueue** in one place only: a trigger on `runs` (migration 0012) inserts a delivery
//!   per matching subscription and one for the run's own notify URL, in the transaction
//!   that ends the run, whichever code path ends it (applying events, recovery, cancel).
//! - **Deliver** from that PostgreSQL outbox (`service::webhooks`, while this dispatcher
//!   leads), at least once, with capped, jittered exponential backoff for a configurable
//!   time; every attempt is recorded.
//! - **Sign** ([`sign`]): pure, checked against the specification's test vector.
//! - **Where to** ([`target`]): private and internal ranges are refused unless allowed,
//!   at subscription time and, through the client's resolver, on every attempt.

pub mod sign;
pub mod target;

/// The events a subscription can ask for: how a run ended, a check an op reported failed
/// (migration 0024), and a cell gone stale by its asset's freshness policy (migration 0030).
pub const EVENTS: [&str; 5] =
    ["run.succeeded", "run.failed", "run.canceled", "check.failed", "freshness.failed"];
