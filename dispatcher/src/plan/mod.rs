//! The plan compiler: a YAML asset plan in, a validated, resolved, expandable plan out.
//!
//! - [`parse`]: YAML → raw structs with line numbers (shape errors come from here).
//! - [`validate`]: names, dependencies, cycles, op resolution, partitions, sweeps,
//!   settings; every problem is collected into one [`PlanErrors`] report.
//! - [`expand`]: steps, computed from an asset's definition and a step's index, never
//!   materialized up front.
//! - [`graph`]: the step-level dependency graph: what a success unlocks, what a failure
//!   skips, whose outputs a step receives.
//!
//! A plan looks like this (see `examples/defi-risk.yaml`):
//!
//! ```yaml
//! name: defi-risk
//! assets:
//!   - name: paths
//!     op: price-paths@^1.0          # exact `1.0.0`, or a semver requirement
//!     partitions: [aave, compound]  # or {daily: {start: 2026-01-01, end: 2026-01-31}}
//!     sweep:                        # one step per point of the cartesian product
//!       vol: [0.4, 0.6]
//!       seed: {from: 1, to: 4}
//!     config: {horizon_days: 30}    # JSON for the op; a sweep point overrides its keys
//!     retry: {max: 2, backoff: 1s}
//!     timeout: 5m
//!     concurrency: {key: "paths/{partition}", max: 2}   # see `concurrency`
//!     freshness: {max_age: 2h}      # or {deadline: "0 6 * * *", tz: Europe/Paris}
//!   - name: var
//!     op: var-report@^1.0
//!     deps: [paths]                 # same partitions: partition to partition; else fan-in
//!     partitions: [aave, compound]
//! ```
//!
//! Dependency rule: two assets with the same partitions depend partition to partition;
//! otherwise a step depends on every step of its upstream asset.

pub mod backfill;
mod compiled;
pub mod concurrency;
mod dimensions;
mod error;
mod expand;
pub mod fingerprint;
pub mod freshness;
pub mod graph;
mod parse;
pub mod retry;
mod validate;

use std::path::Path;

pub use compiled::{
    AssetDep, CompiledAsset, CompiledPlan, DEFAULT_PRIORITY, DeclaredCheck, MAX_CHECKS, MAX_CONFIG_BYTES,
    MAX_PRIORITY, MAX_RETRY_BACKOFF, MAX_STEPS, MAX_TIMEOUT, Only, Partitions, RegisteredOp, Reuse, StepSpec,
    SweepParam, SweepValues,
};
pub use dimensions::{
    MAX_DAYS, MAX_PARTITION_KEY_BYTES, MAX_SWEEP_NAME_BYTES, MAX_SWEEP_PARAMS, MAX_SWEEP_VALUE_BYTES,
};
pub use error::{
    MAX_PROBLEM_BYTES, MAX_PROBLEMS, MAX_QUOTED_NAME_BYTES, PlanError, PlanErrorKind, PlanErrors,
};
pub use parse::MAX_PLAN_BYTES;
pub use retry::StepRetryPolicy;
pub use validate::MAX_NAME_LEN;

/// Compiles a plan: parse, validate against the `registered` op versions, resolve. `file`
/// names the plan in messages.
pub fn compile(source: &str, file: &Path, registered: &[RegisteredOp]) -> Result<CompiledPlan, PlanErrors> {
    let raw = parse::parse(source, file)?;
    validate::validate(raw, file, registered)
}

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
