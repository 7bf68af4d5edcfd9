//! What the compiler makes: a plan whose every asset is valid and resolved to one
//! registered op version, with the limits it was checked against. Steps are not listed:
//! they follow from an asset's partitions and sweep (`expand`).

use std::time::Duration;

use chrono::NaiveDate;
use serde_json::{Map, Value};

use super::{
    concurrency::ConcurrencyRule,
    freshness::FreshnessPolicy,
    retry::{self, StepRetryPolicy},
};

/// The most steps one plan may expand to.
pub const MAX_STEPS: u64 = 1_000_000;

/// The longest `timeout` an asset may set.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// The longest `retry.backoff` an asset may set: the cap of every retry delay
/// ([`retry::MAX_RETRY_DELAY`]), so a longer one would mean nothing.
pub const MAX_RETRY_BACKOFF: Duration = retry::MAX_RETRY_DELAY;

/// The largest `config` of one asset, as serialized JSON. Every step message of the asset
/// carries its config, so a large one is multiplied by the step count on the broker.
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;

/// A run's priority without one: its share of its owner's, weighed against the owner's
/// other runs, is one part.
pub const DEFAULT_PRIORITY: u8 = 1;
/// The highest priority: ten parts of the owner's share.
pub const MAX_PRIORITY: u8 = 10;

/// An op version known to the registry, as the compiler resolves against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredOp {
    pub name: String,
    pub version: semver::Version,
}

/// A valid plan with every op resolved to one registered version.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledPlan {
    pub name: String,
    pub description: Option<String>,
    /// `priority`, [`DEFAULT_PRIORITY`] when the plan says none.
    pub priority: u8,
    /// In topological order: every asset comes after the assets it needs; ties keep file order.
    pub assets: Vec<CompiledAsset>,
    pub step_count: u32,
}

impl CompiledPlan {
    /// Every asset as if it said `reuse: never` (`opflow run --no-reuse`): every step runs.
    pub fn reusing_nothing(&mut self) {
        for asset in &mut self.assets {
            asset.reuse = Reuse::Never;
        }
    }

    /// Every asset that may reuse takes its cells from the catalog but those `only` names
    /// (`opflow run --missing` or `--failed`; see `plan::backfill`).
    pub fn taking_from_catalog(&mut self, only: Only) {
        for asset in &mut self.assets {
            if asset.reuse != Reuse::Never {
                asset.reuse = match only {
                    Only::Missing => Reuse::Missing,
                    Only::Failed => Reuse::Failed,
                };
            }
        }
    }
}

/// Whether, and from what, a step may be satisfied from the asset catalog instead of
/// running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// It always runs: `reuse: never`, or a run submitted with `--no-reuse`.
    Never,
    /// From an earlier materialization with the same memo key (`reuse: auto`, the default).
    Memo,
    /// From its cell's current materialization, unless that is missing, failed or stale, or
    /// a step it reads ran in this run (`opflow run --missing`).
    Missing,
    /// As [`Reuse::Missing`], but a stale cell is taken too (`opflow run --failed`).
    Failed,
}

/// Which cells a backfill runs; every other cell of the plan is taken from the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Only {
    /// Cells without a current, successful materialization (missing, failed or stale),
    /// and what reads them.
    Missing,
    /// Cells whose last attempt failed (or that were never materialized), and what reads
    /// them.
    Failed,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CompiledAsset {
    pub name: String,
    pub op_name: String,
    /// The registered version the requirement resolved to.
    pub op_version: semver::Version,
    /// The op version or requirement as written in the plan.
    pub op_requirement: String,
    /// The plan's `config`, as JSON; `Null` when absent.
    pub config: Value,
    pub partitions: Partitions,
    /// The partition keys, expanded; empty when unpartitioned.
    pub partition_keys: Vec<String>,
    pub sweep: Vec<SweepParam>,
    pub deps: Vec<AssetDep>,
    pub retry: StepRetryPolicy,
    pub timeout: Option<Duration>,
    /// Caps on steps in flight per key (`concurrency`), in file order.
    pub concurrency: Vec<ConcurrencyRule>,
    /// `reuse`: whether a step may be satisfied from an earlier materialization with the
    /// same memo key (`auto`, the default: [`Reuse::Memo`]) or always runs (`never`); a
    /// backfill run takes cells from the catalog instead ([`Reuse::Missing`]).
    pub reuse: Reuse,
    /// Other versions of its op whose materializations its steps reuse as their own: the
    /// registered ones its version's `reuse_from` matches (set at submit).
    pub reuse_versions: Vec<semver::Version>,
    /// The checks the plan declares for what the op reports (`checks`), in file order.
    pub checks: Vec<DeclaredCheck>,
    /// How old its cells may grow before they are stale (`freshness`).
    pub freshness: Option<FreshnessPolicy>,
    /// Step ids are global indices `0..step_count`; an asset's steps are contiguous.
    pub first_step: u32,
    /// Line of the asset's `name:` in the plan file.
    pub line: usize,
}

/// A check the plan declares for an asset. A `blocking` check that the op reports failed
/// fails its step: the output is not recorded, and what reads the cell is skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredCheck {
    pub name: String,
    pub blocking: bool,
}

/// The most checks an asset may declare.
pub const MAX_CHECKS: usize = 32;

/// How an asset is partitioned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Partitions {
    None,
    Static(Vec<String>),
    /// Every day from `start` to `end`, inclusive.
    Daily {
        start: NaiveDate,
        end: NaiveDate,
    },
}

/// One sweep parameter and its values.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepParam {
    pub name: String,
    pub values: SweepValues,
}

/// A sweep parameter's values. A range is kept as its bounds, never as a list: a plan of a
/// few lines may ask for millions of values, and the step count is known (and checked
/// against [`MAX_STEPS`]) from its size alone.
#[derive(Debug, Clone, PartialEq)]
pub enum SweepValues {
    /// Values listed in the plan.
    List(Vec<Value>),
    /// `from, from + step, …`: `count` integers.
    Range { from: i64, step: i64, count: u32 },
}

impl SweepValues {
    pub fn len(&self) -> u32 {
        match self {
            SweepValues::List(values) => values.len() as u32,
            SweepValues::Range { count, .. } => *count,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Value `i`.
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    pub fn get(&self, i: u32) -> Value {
        match self {
            SweepValues::List(values) => values[i as usize].clone(),
            SweepValues::Range { from, step, count } => {
                assert!(i < *count, "sweep value {i} out of {count}");
                // In i128: `i * step` alone may overflow i64 although every value lies
                // between the range's bounds.
                Value::from((i128::from(*from) + i128::from(i) * i128::from(*step)) as i64)
            }
        }
    }
}

/// An edge to an upstream asset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssetDep {
    /// Index into `CompiledPlan::assets`.
    pub upstream: usize,
    /// Same partitions on both sides: partition `p` waits only for upstream partition `p`.
    pub partition_mapped: bool,
}

/// One step of an asset: its partition and sweep point.
#[derive(Debug, Clone, PartialEq)]
pub struct StepSpec<'a> {
    pub partition: Option<&'a str>,
    pub point: Map<String, Value>,
}
