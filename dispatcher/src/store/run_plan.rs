//! A submitted run's compiled plan, as the dispatcher uses it after submission: which
//! steps a step unlocks or skips, whose outputs it receives, and how to build its message.
//!
//! The plan is stored as one `run_assets` row per asset and read back once per run into a
//! [`PlanCache`]; steps themselves carry no definition, only their id.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use opflow_protocol::{OpRef, RunId, StepId, StepMessage, step::step_label};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Store, StoreError};
use crate::plan::{AssetDep, CompiledAsset, CompiledPlan, Partitions, RetryPolicy, SweepParam, SweepValues};

/// An inclusive range of step ids within one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StepRange {
    pub first: u32,
    pub last: u32,
}

impl StepRange {
    fn of(first: u32, count: u32) -> Self {
        Self { first, last: first + count - 1 }
    }
}

/// A compiled plan plus the adjacency the scheduler walks.
#[derive(Debug)]
pub struct RunPlan {
    plan: CompiledPlan,
    /// For each asset: (downstream asset, partition mapped).
    downstream: Vec<Vec<(usize, bool)>>,
    ops: Vec<OpRef>,
}

impl RunPlan {
    pub fn new(plan: CompiledPlan) -> Result<Self, String> {
        let mut downstream = vec![Vec::new(); plan.assets.len()];
        for (index, asset) in plan.assets.iter().enumerate() {
            for dep in &asset.deps {
                downstream[dep.upstream].push((index, dep.partition_mapped));
            }
        }
        let ops = plan
            .assets
            .iter()
            .map(|a| format!("{}@{}", a.op_name, a.op_version).parse::<OpRef>().map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        Ok(Self { plan, downstream, ops })
    }

    pub fn plan(&self) -> &CompiledPlan {
        &self.plan
    }

    /// The asset a step belongs to: assets own contiguous step ranges in plan order.
    pub fn asset_index(&self, step: u32) -> usize {
        self.plan.assets.partition_point(|a| a.first_step <= step).saturating_sub(1)
    }

    pub fn asset(&self, index: usize) -> &CompiledAsset {
        &self.plan.assets[index]
    }

    /// The step's position within its asset, and its partition index (if partitioned).
    fn locate(&self, step: u32) -> (usize, u32, Option<u32>) {
        let index = self.asset_index(step);
        let asset = &self.plan.assets[index];
        let within = step - asset.first_step;
        let partition = (!asset.partition_keys.is_empty()).then(|| within / asset.sweep_size());
        (index, within, partition)
    }

    /// The steps of `asset` in partition `partition`, or all of them.
    fn range_of(&self, asset: usize, partition: Option<u32>) -> StepRange {
        let a = &self.plan.assets[asset];
        match partition {
            Some(p) => StepRange::of(a.first_step + p * a.sweep_size(), a.sweep_size()),
            None => StepRange::of(a.first_step, a.step_count()),
        }
    }

    /// The steps that wait on `step`, one range per downstream asset. Each waits on it once.
    pub fn downstream_ranges(&self, step: u32) -> Vec<StepRange> {
        let (index, _, partition) = self.locate(step);
        self.downstream[index]
            .iter()
            .map(|&(down, mapped)| self.range_of(down, if mapped { partition } else { None }))
            .collect()
    }

    /// Every step that transitively depends on `step`: what a final failure skips.
    pub fn skip_ranges(&self, step: u32) -> Vec<StepRange> {
        let (index, _, partition) = self.locate(step);
        // (asset, partition or all); "all" of an asset subsumes any single partition of it.
        let mut seen: BTreeSet<(usize, Option<u32>)> = BTreeSet::new();
        let mut frontier: Vec<(usize, Option<u32>)> = vec![(index, partition)];
        while let Some((asset, partition)) = frontier.pop() {
            for &(down, mapped) in &self.downstream[asset] {
                let next = (down, if mapped { partition } else { None });
                if seen.contains(&(down, None)) || !seen.insert(next) {
                    continue;
                }
                frontier.push(next);
            }
        }
        seen.iter()
            .filter(|(asset, partition)| partition.is_none() || !seen.contains(&(*asset, None)))
            .map(|&(asset, partition)| self.range_of(asset, partition))
            .collect()
    }

    /// The upstream steps whose outputs `step` receives, per upstream asset.
    pub fn input_ranges(&self, step: u32) -> Vec<(usize, StepRange)> {
        let (index, _, partition) = self.locate(step);
        self.plan.assets[index]
            .deps
            .iter()
            .map(|dep| {
                (
                    dep.upstream,
                    self.range_of(dep.upstream, if dep.partition_mapped { partition } else { None }),
                )
            })
            .collect()
    }

    pub fn retry_policy(&self, step: u32) -> RetryPolicy {
        self.plan.assets[self.asset_index(step)].retry
    }

    /// The op version that runs `step`.
    pub fn op(&self, step: u32) -> &OpRef {
        &self.ops[self.asset_index(step)]
    }

    /// The step's partition key and sweep point.
    pub fn partition_and_point(&self, step: u32) -> (Option<&str>, Map<String, Value>) {
        let (index, within, _) = self.locate(step);
        let spec = self.plan.assets[index].step(within);
        (spec.partition, spec.point)
    }

    /// `asset[partition]{point}` of a step.
    pub fn label(&self, step: u32) -> String {
        let (index, _, _) = self.locate(step);
        let (partition, point) = self.partition_and_point(step);
        step_label(&self.plan.assets[index].name, partition, &point)
    }

    /// The message for one attempt of `step`, without its inputs.
    pub fn message(&self, run_id: RunId, step: u32, attempt: u32) -> StepMessage {
        let index = self.asset_index(step);
        let asset = &self.plan.assets[index];
        let (partition, point) = self.partition_and_point(step);
        let mut message =
            StepMessage::new(run_id, StepId(step), attempt, self.ops[index].clone(), asset.name.clone());
        message.partition = partition.map(str::to_owned);
        message.point = point;
        message.config = asset.config.clone();
        message.timeout_ms = asset.timeout.map(|t| t.as_millis() as u64);
        message
    }
}

/// Runs' plans, loaded once each. Finished runs are forgotten, so the cache holds only the
/// runs in flight.
#[derive(Debug, Default)]
pub struct PlanCache {
    plans: Mutex<HashMap<RunId, Arc<RunPlan>>>,
}

impl PlanCache {
    pub async fn get(&self, store: &Store, run: RunId) -> Result<Arc<RunPlan>, StoreError> {
        if let Some(plan) = self.lock().get(&run) {
            return Ok(plan.clone());
        }
        let plan = store.load_run_plan(run).await?;
        let plan = Arc::new(RunPlan::new(plan).map_err(|e| StoreError::Corrupt(run.to_string(), e))?);
        self.lock().insert(run, plan.clone());
        Ok(plan)
    }

    /// Whether `run`'s plan is loaded: if so, the run exists (runs are never deleted while
    /// their plan is cached).
    pub fn contains(&self, run: RunId) -> bool {
        self.lock().contains_key(&run)
    }

    pub fn forget(&self, run: RunId) {
        self.lock().remove(&run);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RunId, Arc<RunPlan>>> {
        // A panic while holding this lock cannot leave the map half-updated (each
        // operation is a single insert or remove), so a poisoned lock is still usable.
        self.plans.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// How `run_assets.partitions` is stored: the store's own format, converted at this edge.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum StoredPartitions {
    None,
    Static { keys: Vec<String> },
    Daily { start: chrono::NaiveDate, end: chrono::NaiveDate },
}

/// A sweep parameter as stored: `values` for a list, `range` for a range (kept as bounds).
#[derive(Debug, Serialize, Deserialize)]
struct StoredSweepParam {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    values: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    range: Option<StoredRange>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredRange {
    from: i64,
    step: i64,
    count: u32,
}

impl StoredSweepParam {
    fn from_param(param: &SweepParam) -> Self {
        let (values, range) = match &param.values {
            SweepValues::List(values) => (Some(values.clone()), None),
            SweepValues::Range { from, step, count } => {
                (None, Some(StoredRange { from: *from, step: *step, count: *count }))
            }
        };
        Self { name: param.name.clone(), values, range }
    }

    fn into_param(self) -> Result<SweepParam, String> {
        let values = match (self.values, self.range) {
            (Some(values), None) => SweepValues::List(values),
            (None, Some(StoredRange { from, step, count })) => SweepValues::Range { from, step, count },
            _ => return Err(format!("sweep parameter `{}` has neither values nor a range", self.name)),
        };
        Ok(SweepParam { name: self.name, values })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredDep {
    upstream: usize,
    partition_mapped: bool,
}

/// One `run_assets` row.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct AssetRow {
    pub idx: i32,
    pub name: String,
    pub op_name: String,
    pub op_version: String,
    pub op_requirement: String,
    pub config: Value,
    pub partitions: Value,
    pub partition_keys: Vec<String>,
    pub sweep: Value,
    pub deps: Value,
    pub retry_max: i32,
    pub retry_backoff_ms: i64,
    pub timeout_ms: Option<i64>,
    pub first_step: i32,
    pub step_count: i32,
    pub line: i32,
}

impl AssetRow {
    pub(crate) fn from_asset(idx: usize, a: &CompiledAsset) -> Self {
        let partitions = match &a.partitions {
            Partitions::None => StoredPartitions::None,
            Partitions::Static(keys) => StoredPartitions::Static { keys: keys.clone() },
            Partitions::Daily { start, end } => StoredPartitions::Daily { start: *start, end: *end },
        };
        let sweep: Vec<StoredSweepParam> = a.sweep.iter().map(StoredSweepParam::from_param).collect();
        let deps: Vec<StoredDep> = a
            .deps
            .iter()
            .map(|d| StoredDep { upstream: d.upstream, partition_mapped: d.partition_mapped })
            .collect();
        Self {
            idx: idx as i32,
            name: a.name.clone(),
            op_name: a.op_name.clone(),
            op_version: a.op_version.to_string(),
            op_requirement: a.op_requirement.clone(),
            config: a.config.clone(),
            partitions: to_json(&partitions),
            partition_keys: a.partition_keys.clone(),
            sweep: to_json(&sweep),
            deps: to_json(&deps),
            retry_max: a.retry.max_retries as i32,
            retry_backoff_ms: a.retry.backoff.as_millis() as i64,
            timeout_ms: a.timeout.map(|t| t.as_millis() as i64),
            first_step: a.first_step as i32,
            step_count: a.step_count() as i32,
            line: a.line as i32,
        }
    }

    pub(crate) fn into_asset(self) -> Result<CompiledAsset, String> {
        let partitions: StoredPartitions = serde_json::from_value(self.partitions)
            .map_err(|e| format!("asset `{}` partitions: {e}", self.name))?;
        let sweep: Vec<StoredSweepParam> =
            serde_json::from_value(self.sweep).map_err(|e| format!("asset `{}` sweep: {e}", self.name))?;
        let sweep = sweep
            .into_iter()
            .map(StoredSweepParam::into_param)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("asset `{}`: {e}", self.name))?;
        let deps: Vec<StoredDep> =
            serde_json::from_value(self.deps).map_err(|e| format!("asset `{}` deps: {e}", self.name))?;
        let op_version =
            semver::Version::parse(&self.op_version).map_err(|e| format!("asset `{}`: {e}", self.name))?;
        Ok(CompiledAsset {
            name: self.name,
            op_name: self.op_name,
            op_version,
            op_requirement: self.op_requirement,
            config: self.config,
            partitions: match partitions {
                StoredPartitions::None => Partitions::None,
                StoredPartitions::Static { keys } => Partitions::Static(keys),
                StoredPartitions::Daily { start, end } => Partitions::Daily { start, end },
            },
            partition_keys: self.partition_keys,
            sweep,
            deps: deps
                .into_iter()
                .map(|d| AssetDep { upstream: d.upstream, partition_mapped: d.partition_mapped })
                .collect(),
            retry: RetryPolicy {
                max_retries: self.retry_max.max(0) as u32,
                backoff: Duration::from_millis(self.retry_backoff_ms.max(0) as u64),
            },
            timeout: self.timeout_ms.map(|ms| Duration::from_millis(ms.max(0) as u64)),
            first_step: self.first_step as u32,
            line: self.line.max(0) as usize,
        })
    }
}

fn to_json<T: Serialize>(value: &T) -> Value {
    // These are plain structs of strings, numbers and JSON values: serialization cannot fail.
    serde_json::to_value(value).unwrap_or(Value::Null)
}
