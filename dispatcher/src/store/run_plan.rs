//! A submitted run's compiled plan, as the dispatcher uses it after submission: its step
//! graph (`plan::graph`), the op of each step, and how to build a step's message.
//!
//! The plan is stored as one `run_assets` row per asset and read back once per run into a
//! [`PlanCache`]; steps themselves carry no definition, only their id.

use std::{
    ops::Deref,
    sync::{Arc, Mutex},
    time::Duration,
};

use opflow_protocol::{OpRef, RunId, StepId, StepMessage, step::step_label};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Store, StoreError};
pub use crate::plan::graph::{DepGroup, StepRange, Unlock};
use crate::plan::{
    AssetDep, CompiledAsset, CompiledPlan, DeclaredCheck, Partitions, Reuse, StepRetryPolicy, SweepParam,
    SweepValues, graph::PlanGraph,
};

/// How a stored run counts what its steps wait on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnlockMode {
    /// One per dependency, with group counters in `dep_groups` (see `plan::graph`).
    Groups,
    /// One per upstream step: runs stored before group counters existed.
    Steps,
}

/// A stored run's plan: its step graph (which it derefs to), the op of each asset, and
/// how its steps are unlocked.
#[derive(Debug)]
pub struct RunPlan {
    graph: PlanGraph,
    ops: Vec<OpRef>,
    mode: UnlockMode,
    /// Who the run belongs to (`runs.owner`): the publisher's fair order shares by it.
    owner: Arc<str>,
}

impl Deref for RunPlan {
    type Target = PlanGraph;

    fn deref(&self) -> &PlanGraph {
        &self.graph
    }
}

impl RunPlan {
    pub fn new(plan: CompiledPlan, mode: UnlockMode) -> Result<Self, String> {
        let ops = plan
            .assets
            .iter()
            .map(|a| format!("{}@{}", a.op_name, a.op_version).parse::<OpRef>().map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        // The owner is the run's, not the plan's: set by `owned_by` when the run is loaded.
        Ok(Self { graph: PlanGraph::new(plan), ops, mode, owner: Arc::from("") })
    }

    /// The same plan, of a run belonging to `owner`.
    pub fn owned_by(mut self, owner: &str) -> Self {
        self.owner = Arc::from(owner);
        self
    }

    /// Who the run belongs to.
    pub fn owner(&self) -> &Arc<str> {
        &self.owner
    }

    /// The run's priority among its owner's runs, 1 to 10.
    pub fn priority(&self) -> u8 {
        self.graph.plan().priority
    }

    pub fn mode(&self) -> UnlockMode {
        self.mode
    }

    pub fn retry_policy(&self, step: StepId) -> StepRetryPolicy {
        self.plan().assets[self.asset_index(step)].retry
    }

    /// Whether, and from what, `step` may be satisfied from the catalog (its asset's
    /// `reuse`; `Never` for every asset of a run submitted with `--no-reuse`).
    pub fn reuse(&self, step: StepId) -> Reuse {
        self.plan().assets[self.asset_index(step)].reuse
    }

    /// The checks of `step`'s asset that fail it when the op reports them failed.
    pub fn blocking_checks(&self, step: StepId) -> impl Iterator<Item = &str> {
        self.plan().assets[self.asset_index(step)]
            .checks
            .iter()
            .filter(|c| c.blocking)
            .map(|c| c.name.as_str())
    }

    /// Whether `step`'s asset declares `check` blocking.
    pub fn is_blocking(&self, step: StepId, check: &str) -> bool {
        self.blocking_checks(step).any(|name| name == check)
    }

    /// The op version that runs `step`.
    pub fn op(&self, step: StepId) -> &OpRef {
        &self.ops[self.asset_index(step)]
    }

    /// The step's partition key and sweep point.
    pub fn partition_and_point(&self, step: StepId) -> (Option<&str>, Map<String, Value>) {
        let (index, within, _) = self.locate(step);
        let spec = self.plan().assets[index].step(within);
        (spec.partition, spec.point)
    }

    /// The concurrency caps of `step` in `run` (its asset's `concurrency`), keys rendered;
    /// empty, without allocating, for an asset that declares none.
    pub fn step_keys(&self, run: RunId, step: StepId) -> Vec<crate::plan::concurrency::StepKey> {
        let (index, within, _) = self.locate(step);
        let asset = &self.plan().assets[index];
        if asset.concurrency.is_empty() {
            return Vec::new();
        }
        let spec = asset.step(within);
        let run = run.to_string();
        let cx = crate::plan::concurrency::KeyContext {
            plan: &self.plan().name,
            asset: &asset.name,
            owner: &self.owner,
            run: &run,
            partition: spec.partition,
            point: &spec.point,
        };
        asset
            .concurrency
            .iter()
            .map(|rule| crate::plan::concurrency::StepKey {
                key: Arc::from(rule.key.render(&cx)),
                max: rule.max,
                strategy: rule.strategy,
            })
            .collect()
    }

    /// `asset[partition]{point}` of a step.
    pub fn label(&self, step: StepId) -> String {
        let (index, _, _) = self.locate(step);
        let (partition, point) = self.partition_and_point(step);
        step_label(&self.plan().assets[index].name, partition, &point)
    }

    /// The message for one attempt of `step`, without its inputs.
    pub fn message(&self, run_id: RunId, step: StepId, attempt: u32) -> StepMessage {
        let index = self.asset_index(step);
        let asset = &self.plan().assets[index];
        let (partition, point) = self.partition_and_point(step);
        let mut message =
            StepMessage::new(run_id, step, attempt, self.ops[index].clone(), asset.name.clone());
        message.partition = partition.map(str::to_owned);
        message.point = point;
        message.config = asset.config.clone();
        message.timeout_ms = asset.timeout.map(|t| t.as_millis() as u64);
        message
    }

    /// The bytes the plan holds in memory, for the cache's budget: every string and JSON
    /// value counted at its size (a sweep list of long values weighs what its values do).
    fn weight(&self) -> usize {
        use std::mem::size_of;
        let assets: usize = self
            .plan()
            .assets
            .iter()
            .map(|a| {
                let keys: usize = a.partition_keys.iter().map(|k| size_of::<String>() + k.capacity()).sum();
                let sweep: usize = a
                    .sweep
                    .iter()
                    .map(|p| {
                        size_of::<SweepParam>()
                            + p.name.capacity()
                            + match &p.values {
                                SweepValues::List(values) => values.iter().map(json_weight).sum(),
                                SweepValues::Range { .. } => 0,
                            }
                    })
                    .sum();
                size_of::<CompiledAsset>()
                    + a.name.capacity()
                    + a.op_name.capacity()
                    + a.op_requirement.capacity()
                    + json_weight(&a.config)
                    + keys
                    + sweep
                    + a.deps.capacity() * size_of::<AssetDep>()
                    // The graph's downstream lists and the op of each asset.
                    + size_of::<Vec<(usize, bool)>>()
                    + a.deps.len() * size_of::<(usize, bool)>()
                    + size_of::<OpRef>()
            })
            .sum();
        size_of::<RunPlan>() + assets
    }
}

/// The bytes a JSON value holds in memory: the value itself, its strings, and its arrays'
/// and maps' elements (a map entry also holds its key and a little bookkeeping).
fn json_weight(value: &Value) -> usize {
    const MAP_ENTRY: usize = 3 * std::mem::size_of::<usize>();
    std::mem::size_of::<Value>()
        + match value {
            Value::String(text) => text.capacity(),
            Value::Array(items) => items.iter().map(json_weight).sum(),
            Value::Object(map) => map.iter().map(|(k, v)| MAP_ENTRY + k.capacity() + json_weight(v)).sum(),
            Value::Null | Value::Bool(_) | Value::Number(_) => 0,
        }
}

/// The plan cache as `/metrics` shows it: the bytes its plans hold (by [`RunPlan`]'s
/// weight) and how many plans it holds.
#[derive(Debug, Clone, Default)]
pub struct CacheGauges {
    pub bytes: prometheus_client::metrics::gauge::Gauge,
    pub plans: prometheus_client::metrics::gauge::Gauge,
}

/// The most plans the cache holds, and by default the most bytes they may hold together
/// (the setting `plan_cache_mb`): runs in flight are read from the store again when
/// evicted, so the bound costs a query, never correctness.
const CACHE_PLANS: usize = 1024;
const CACHE_BYTES: usize = 256 * 1024 * 1024;

/// Runs' plans, loaded once each and kept while they are in use: finished runs are
/// forgotten, and the least recently used plans go first when the cache is over
/// [`CACHE_PLANS`] plans or its budget of bytes. A plan over the whole budget is used and
/// not kept.
#[derive(Debug)]
pub struct PlanCache {
    inner: Mutex<Cached>,
    budget: usize,
    gauges: CacheGauges,
}

#[derive(Debug)]
struct Cached {
    plans: lru::LruCache<RunId, (Arc<RunPlan>, usize)>,
    bytes: usize,
}

impl Default for PlanCache {
    fn default() -> Self {
        Self::new(CACHE_BYTES, CacheGauges::default())
    }
}

impl PlanCache {
    /// A cache of at most `budget` bytes of plans, shown in `gauges`.
    pub fn new(budget: usize, gauges: CacheGauges) -> Self {
        Self { inner: Mutex::new(Cached { plans: lru::LruCache::unbounded(), bytes: 0 }), budget, gauges }
    }

    pub async fn get(&self, store: &Store, run: RunId) -> Result<Arc<RunPlan>, StoreError> {
        if let Some((plan, _)) = self.lock().plans.get(&run) {
            return Ok(plan.clone());
        }
        let (plan, mode, owner) = store.runs().load_plan_for_dispatch(run).await?;
        let plan = RunPlan::new(plan, mode).map_err(|e| StoreError::Corrupt(run.to_string(), e))?;
        let plan = Arc::new(plan.owned_by(&owner));
        let weight = plan.weight();
        if weight > self.budget {
            tracing::debug!(%run, weight, budget = self.budget, "a plan over the cache's budget is not kept");
            return Ok(plan);
        }
        let mut cached = self.lock();
        if let Some((_, old)) = cached.plans.put(run, (plan.clone(), weight)) {
            cached.bytes -= old;
        }
        cached.bytes += weight;
        while cached.plans.len() > CACHE_PLANS || cached.bytes > self.budget {
            match cached.plans.pop_lru() {
                Some((_, (_, evicted))) => cached.bytes -= evicted,
                None => break,
            }
        }
        self.show(&cached);
        Ok(plan)
    }

    fn show(&self, cached: &Cached) {
        self.gauges.bytes.set(i64::try_from(cached.bytes).unwrap_or(i64::MAX));
        self.gauges.plans.set(i64::try_from(cached.plans.len()).unwrap_or(i64::MAX));
    }

    /// `run`'s plan if it is loaded, without loading it.
    pub fn cached(&self, run: RunId) -> Option<Arc<RunPlan>> {
        self.lock().plans.peek(&run).map(|(plan, _)| plan.clone())
    }

    /// Whether `run`'s plan is loaded: if so, the run existed when it was loaded.
    pub fn contains(&self, run: RunId) -> bool {
        self.lock().plans.contains(&run)
    }

    pub fn forget(&self, run: RunId) {
        let mut cached = self.lock();
        if let Some((_, weight)) = cached.plans.pop(&run) {
            cached.bytes -= weight;
        }
        self.show(&cached);
    }

    pub fn len(&self) -> usize {
        self.lock().plans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cached> {
        // A panic while holding this lock cannot leave the cache half-updated in a way that
        // matters (at worst `bytes` is off until the entries it counts are evicted).
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
pub(crate) struct RunAssetRow {
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
    /// `[]` for runs stored before concurrency rules (migration 0019's default).
    pub concurrency: Value,
    /// `reuse: never` is `false` (migration 0022; `true` for runs stored before).
    pub reuse: bool,
    /// `missing` or `failed` in a backfill run (migration 0023), else NULL.
    pub backfill: Option<String>,
    /// `[{name, blocking}]` (migration 0024; `[]` for runs stored before).
    pub checks: Value,
    /// Other op versions it reuses as its own (migration 0025).
    pub reuse_versions: Vec<String>,
    /// The asset's freshness policy (migration 0030), NULL without one.
    pub freshness: Option<Value>,
    pub first_step: i32,
    pub step_count: i32,
    pub line: i32,
}

impl RunAssetRow {
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
            concurrency: crate::plan::concurrency::to_value(&a.concurrency),
            reuse: a.reuse != Reuse::Never,
            backfill: match a.reuse {
                Reuse::Missing => Some("missing".into()),
                Reuse::Failed => Some("failed".into()),
                Reuse::Never | Reuse::Memo => None,
            },
            reuse_versions: a.reuse_versions.iter().map(ToString::to_string).collect(),
            checks: Value::Array(
                a.checks
                    .iter()
                    .map(|c| serde_json::json!({ "name": c.name, "blocking": c.blocking }))
                    .collect(),
            ),
            freshness: a.freshness.as_ref().map(to_json),
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
        let checks = serde_json::from_value::<Vec<StoredCheck>>(self.checks)
            .map_err(|e| format!("asset `{}` checks: {e}", self.name))?
            .into_iter()
            .map(|c| DeclaredCheck { name: c.name, blocking: c.blocking })
            .collect();
        let reuse_versions = self
            .reuse_versions
            .iter()
            .map(|v| {
                semver::Version::parse(v)
                    .map_err(|e| format!("asset `{}` reuse version `{v}`: {e}", self.name))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let reuse = match (self.reuse, self.backfill.as_deref()) {
            (false, _) => Reuse::Never,
            (true, None) => Reuse::Memo,
            (true, Some("missing")) => Reuse::Missing,
            (true, Some("failed")) => Reuse::Failed,
            (true, Some(other)) => return Err(format!("asset `{}`: backfill `{other}`", self.name)),
        };
        let freshness = self
            .freshness
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| format!("asset `{}` freshness: {e}", self.name))?;
        let names: Vec<&str> = sweep.iter().map(|p| p.name.as_str()).collect();
        let partitioned = !matches!(partitions, StoredPartitions::None);
        let concurrency = crate::plan::concurrency::rules_of(&self.concurrency, partitioned, &names)
            .map_err(|e| format!("asset `{}` concurrency: {e}", self.name))?;
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
            retry: StepRetryPolicy {
                max_retries: self.retry_max.max(0) as u32,
                backoff: Duration::from_millis(self.retry_backoff_ms.max(0) as u64),
            },
            timeout: self.timeout_ms.map(|ms| Duration::from_millis(ms.max(0) as u64)),
            concurrency,
            reuse,
            reuse_versions,
            checks,
            freshness,
            first_step: self.first_step as u32,
            line: self.line.max(0) as usize,
        })
    }
}

/// A declared check as stored.
#[derive(Debug, Deserialize)]
struct StoredCheck {
    name: String,
    blocking: bool,
}

fn to_json<T: Serialize>(value: &T) -> Value {
    // These are plain structs of strings, numbers and JSON values: serialization cannot fail.
    serde_json::to_value(value).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::plan::{RegisteredOp, compile};

    fn plan(source: &str) -> RunPlan {
        let ops = [RegisteredOp { name: "noop".into(), version: "1.1.0".parse().unwrap() }];
        let compiled = compile(source, Path::new("plan.yaml"), &ops).unwrap_or_else(|e| panic!("{e}"));
        RunPlan::new(compiled, UnlockMode::Groups).unwrap()
    }

    /// A sweep list of long values weighs what its values do, not a fixed size per value,
    /// so a cache of plans cannot hold many times its budget.
    #[test]
    fn a_plan_weighs_the_bytes_its_sweep_values_hold() {
        let value = "v".repeat(1_000);
        let values: Vec<String> = (0..1000).map(|i| format!("\"{i}{value}\"")).collect();
        let heavy = plan(&format!(
            "name: heavy\nassets:\n  - name: a\n    op: noop@1.1.0\n    sweep: {{k: [{}]}}\n",
            values.join(", ")
        ));
        let light = plan(
            "name: light\nassets:\n  - name: a\n    op: noop@1.1.0\n    sweep: {k: {from: 1, to: 100}}\n",
        );
        assert!(heavy.weight() >= 1000 * 1_000, "{} bytes", heavy.weight());
        assert!(light.weight() < 4_096, "{} bytes", light.weight());
    }
}
