//! Backfills: which cells of a plan a run executes. `--partitions` cuts the plan down to
//! some partitions before it is stored ([`CompiledPlan::restrict_partitions`]);
//! `--missing` and `--failed` keep the whole plan and take every other cell from the
//! catalog, decided per ready step by [`why_run`], which `opflow plan check` also walks
//! over a whole plan ([`plan_backfill`]) to say what a run would do.

use std::{collections::BTreeMap, fmt, str::FromStr};

use chrono::NaiveDate;
use serde::Serialize;

use super::{
    compiled::{AssetDep, CompiledAsset, CompiledPlan, Only, Partitions, Reuse},
    dimensions::MAX_PARTITION_KEY_BYTES,
    fingerprint::{Fingerprint, point_key},
    graph::PlanGraph,
};

/// The most keys a `--partitions` list may name.
pub const MAX_LISTED_PARTITIONS: usize = 10_000;

/// The partitions a run is cut down to (`--partitions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionSelection {
    /// `a,b,c`: exactly these keys.
    List(Vec<String>),
    /// `a..b`: every key from `a` to `b`, both included, compared as text; daily keys
    /// (`2026-01-31`) sort by date.
    Range { from: String, to: String },
}

impl PartitionSelection {
    pub fn contains(&self, key: &str) -> bool {
        match self {
            PartitionSelection::List(keys) => keys.iter().any(|k| k == key),
            PartitionSelection::Range { from, to } => from.as_str() <= key && key <= to.as_str(),
        }
    }
}

/// The most bytes of a selection a message quotes: a list may hold 10,000 keys, and one
/// message per left-out asset quotes it.
pub const MAX_QUOTED_SELECTION_BYTES: usize = 128;

impl PartitionSelection {
    /// The selection as messages quote it, cut to [`MAX_QUOTED_SELECTION_BYTES`].
    pub fn quoted(&self) -> String {
        opflow_protocol::text::cut(&self.to_string(), MAX_QUOTED_SELECTION_BYTES).into_owned()
    }
}

impl fmt::Display for PartitionSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PartitionSelection::List(keys) => f.write_str(&keys.join(",")),
            PartitionSelection::Range { from, to } => write!(f, "{from}..{to}"),
        }
    }
}

impl FromStr for PartitionSelection {
    type Err = String;

    /// `2026-01-01..2026-03-31` (a range) or `aave,compound` (a list).
    fn from_str(text: &str) -> Result<Self, String> {
        let check = |key: &str| -> Result<String, String> {
            let key = key.trim();
            if key.is_empty() {
                return Err(format!(
                    "`{}` names an empty partition; write `a..b` or `a,b,c`",
                    opflow_protocol::text::cut(text, 64)
                ));
            }
            if key.len() > MAX_PARTITION_KEY_BYTES {
                return Err(format!(
                    "a partition key of {} bytes is longer than any plan's ({MAX_PARTITION_KEY_BYTES})",
                    key.len()
                ));
            }
            Ok(key.to_owned())
        };
        if let Some((from, to)) = text.split_once("..") {
            let (from, to) = (check(from)?, check(to)?);
            if from > to {
                return Err(format!(
                    "`{from}..{to}` is empty: a range goes from the lower key to the higher"
                ));
            }
            return Ok(PartitionSelection::Range { from, to });
        }
        let keys = text.split(',').map(check).collect::<Result<Vec<_>, _>>()?;
        if keys.len() > MAX_LISTED_PARTITIONS {
            return Err(format!(
                "{} partitions listed; list at most {MAX_LISTED_PARTITIONS}, or give a range `a..b`",
                keys.len()
            ));
        }
        Ok(PartitionSelection::List(keys))
    }
}

/// An asset that a `--partitions` run leaves out, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeftOut {
    pub asset: String,
    pub why: String,
}

impl CompiledPlan {
    /// Cuts the plan down to the partitions `selection` names: each partitioned asset keeps
    /// those of its partitions; an asset that reads every partition of a cut asset (a
    /// fan-in) is left out, as it would read only the cut, and so is what reads it; an
    /// unpartitioned asset stays only if a kept asset reads it. Says what was left out; an
    /// error when nothing of the plan is selected.
    pub fn restrict_partitions(&mut self, selection: &PartitionSelection) -> Result<Vec<LeftOut>, String> {
        if let PartitionSelection::List(keys) = selection {
            let unknown: Vec<&str> = keys
                .iter()
                .filter(|key| !self.assets.iter().any(|a| a.partition_keys.contains(key)))
                .map(String::as_str)
                .collect();
            if !unknown.is_empty() {
                return Err(format!(
                    "no asset of plan `{}` has partition {}",
                    self.name,
                    unknown.iter().take(5).map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                ));
            }
        }
        let count = self.assets.len();
        let quoted = selection.quoted();
        let mut keys: Vec<Vec<String>> = Vec::with_capacity(count);
        let mut why: Vec<Option<String>> = vec![None; count];
        for (i, asset) in self.assets.iter().enumerate() {
            let kept: Vec<String> =
                asset.partition_keys.iter().filter(|key| selection.contains(key)).cloned().collect();
            if asset.partitions != Partitions::None && kept.is_empty() {
                why[i] = Some(format!("none of its partitions is in `{quoted}`"));
            }
            for dep in &asset.deps {
                if why[i].is_some() {
                    break;
                }
                let upstream = &self.assets[dep.upstream];
                if why[dep.upstream].is_some() {
                    why[i] = Some(format!("it reads `{}`, which is left out", upstream.name));
                } else if !dep.partition_mapped && keys[dep.upstream].len() < upstream.partition_keys.len() {
                    why[i] = Some(format!(
                        "it reads every partition of `{}`, and would read only those selected",
                        upstream.name
                    ));
                }
            }
            keys.push(kept);
        }
        // Unpartitioned assets stay as inputs of what is kept, or as readers of it (a fan-in
        // over every partition), not for their own sake.
        let mut needed = vec![false; count];
        for i in 0..count {
            needed[i] = why[i].is_none()
                && (self.assets[i].partitions != Partitions::None
                    || self.assets[i].deps.iter().any(|d| needed[d.upstream]));
        }
        for i in (0..count).rev() {
            if why[i].is_some() {
                continue;
            }
            if needed[i] {
                for dep in &self.assets[i].deps {
                    needed[dep.upstream] = true;
                }
            } else {
                why[i] =
                    Some("it is unpartitioned, and reads no selected partition nor is read by one".into());
            }
        }
        if !needed.iter().zip(&self.assets).any(|(n, a)| *n && a.partitions != Partitions::None) {
            let partitioned = self.assets.iter().find(|a| a.partitions != Partitions::None);
            return Err(match partitioned {
                None => format!("plan `{}` has no partitioned asset to select partitions of", self.name),
                Some(a) => format!(
                    "no partition of plan `{}` is in `{quoted}` (asset `{}` has {} to {})",
                    self.name,
                    a.name,
                    a.partition_keys.first().map_or("", String::as_str),
                    a.partition_keys.last().map_or("", String::as_str),
                ),
            });
        }
        let mut index = vec![None; count];
        let mut assets = Vec::with_capacity(count);
        let mut left_out = Vec::new();
        let mut first_step = 0u32;
        for (i, (asset, kept)) in self.assets.drain(..).zip(keys).enumerate() {
            if let Some(why) = why[i].take() {
                left_out.push(LeftOut { asset: asset.name, why });
                continue;
            }
            index[i] = Some(assets.len());
            let asset = CompiledAsset {
                partitions: cut_partitions(&asset.partitions, &kept),
                partition_keys: kept,
                // A kept asset's upstream assets are kept (else it would have been left out).
                deps: asset
                    .deps
                    .iter()
                    .filter_map(|d| index[d.upstream].map(|u| AssetDep { upstream: u, ..*d }))
                    .collect(),
                first_step,
                ..asset
            };
            first_step += asset.step_count();
            assets.push(asset);
        }
        self.assets = assets;
        self.step_count = first_step;
        Ok(left_out)
    }
}

/// An asset's partitions cut down to `kept`: a daily range stays a range when the days
/// kept follow each other (a range selection), else becomes their list.
fn cut_partitions(partitions: &Partitions, kept: &[String]) -> Partitions {
    let day = |key: Option<&String>| key.and_then(|k| NaiveDate::parse_from_str(k, "%Y-%m-%d").ok());
    match partitions {
        Partitions::None => Partitions::None,
        Partitions::Daily { .. } => match (day(kept.first()), day(kept.last())) {
            (Some(start), Some(end)) if (end - start).num_days() + 1 == kept.len() as i64 => {
                Partitions::Daily { start, end }
            }
            _ => Partitions::Static(kept.to_vec()),
        },
        Partitions::Static(_) => Partitions::Static(kept.to_vec()),
    }
}

/// What the catalog holds of a cell, as a backfill decides by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellFacts {
    /// Its last attempt failed (`catalog_cells.status`).
    pub failed: bool,
    /// Its current materialization, if any: what computed it.
    pub materialized: Option<MaterializedBy>,
    /// A materialization it read was replaced by one with another output.
    pub upstream_changed: bool,
    /// Its materialization is older than its asset's freshness policy allows.
    pub expired: bool,
}

/// What computed a cell's current materialization, and whether its output can still be
/// read (the run that holds it was not deleted by retention).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaterializedBy {
    pub op_name: String,
    pub op_version: String,
    pub config_hash: Vec<u8>,
    pub retained: bool,
}

/// Why a backfill runs a cell instead of taking it from the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WhyRun {
    /// Never materialized.
    Missing,
    /// Its last attempt failed.
    Failed,
    /// Materialized by another op or op version.
    OpChanged,
    /// Materialized with another effective config.
    ConfigChanged,
    /// A materialization it read has since changed.
    UpstreamChanged,
    /// Older than its asset's freshness policy allows.
    Expired,
    /// A cell it reads runs in this run.
    UpstreamRuns,
    /// Its output is gone with the run that made it (retention).
    NotRetained,
    /// Its asset says `reuse: never`.
    ReuseNever,
}

impl fmt::Display for WhyRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WhyRun::Missing => "missing",
            WhyRun::Failed => "failed",
            WhyRun::OpChanged => "op version changed",
            WhyRun::ConfigChanged => "config changed",
            WhyRun::UpstreamChanged => "upstream changed",
            WhyRun::Expired => "older than its freshness policy",
            WhyRun::UpstreamRuns => "upstream runs",
            WhyRun::NotRetained => "output not retained",
            WhyRun::ReuseNever => "reuse: never",
        })
    }
}

/// What computes a step now: its op and effective config.
#[derive(Debug, Clone, Copy)]
pub struct StepDefinition<'a> {
    pub op_name: &'a str,
    pub op_version: &'a str,
    /// Other versions of the op whose materializations count as its own (`reuse_from`).
    pub reuse_versions: &'a [semver::Version],
    pub config_hash: &'a [u8],
}

/// Whether a backfill (`only`) runs a cell, and why; `None`: it is taken from the catalog.
/// `upstream_runs`: a step it reads ran (was not taken) in this run. The one rule: the
/// publisher applies it to each ready step, `opflow plan check` to a whole plan.
pub fn why_run(
    only: Only,
    cell: Option<&CellFacts>,
    now: StepDefinition<'_>,
    upstream_runs: bool,
) -> Option<WhyRun> {
    let Some(cell) = cell else { return Some(WhyRun::Missing) };
    if cell.failed {
        return Some(WhyRun::Failed);
    }
    let Some(by) = &cell.materialized else { return Some(WhyRun::Missing) };
    if only == Only::Missing {
        let same_version = by.op_version == now.op_version
            || now.reuse_versions.iter().any(|v| v.to_string() == by.op_version);
        if by.op_name != now.op_name || !same_version {
            return Some(WhyRun::OpChanged);
        }
        if by.config_hash != now.config_hash {
            return Some(WhyRun::ConfigChanged);
        }
        if cell.upstream_changed {
            return Some(WhyRun::UpstreamChanged);
        }
        if cell.expired {
            return Some(WhyRun::Expired);
        }
    }
    if upstream_runs {
        return Some(WhyRun::UpstreamRuns);
    }
    if !by.retained {
        return Some(WhyRun::NotRetained);
    }
    None
}

/// The most cells per asset and reason a [`BackfillReport`] names.
pub const EXAMPLES_PER_REASON: usize = 5;

/// What a backfill of a plan would do, per asset.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BackfillReport {
    pub assets: Vec<AssetBackfill>,
}

impl BackfillReport {
    /// Cells that would run, over the plan.
    pub fn runs(&self) -> u64 {
        self.assets.iter().map(|a| a.runs.values().map(|r| r.cells).sum::<u64>()).sum()
    }

    /// Cells that would be taken from the catalog, over the plan.
    pub fn taken(&self) -> u64 {
        self.assets.iter().map(|a| a.taken).sum()
    }
}

/// One asset's part of a [`BackfillReport`].
#[derive(Debug, Clone, Serialize)]
pub struct AssetBackfill {
    pub asset: String,
    /// Cells taken from the catalog.
    pub taken: u64,
    /// Cells that run, by why.
    pub runs: BTreeMap<WhyRun, Reason>,
}

/// How many cells run for one reason, with the first few as `asset[partition]{point}`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Reason {
    pub cells: u64,
    pub examples: Vec<String>,
}

/// What a run of `graph`'s plan with `only` would run, step by step in plan order (each
/// asset after what it reads), with `cell` telling what the catalog holds of
/// `(asset, partition, point)`. Assets with `reuse: never` run whole.
pub fn plan_backfill<'a>(
    graph: &PlanGraph,
    only: Only,
    cell: impl Fn(&str, &str, &str) -> Option<&'a CellFacts>,
) -> BackfillReport {
    let plan = graph.plan();
    // Steps that run before each step id: an upstream range runs if its count grows.
    let mut ran_before: Vec<u32> = Vec::with_capacity(plan.step_count as usize + 1);
    ran_before.push(0);
    let mut report = BackfillReport::default();
    for asset in &plan.assets {
        let op_version = asset.op_version.to_string();
        let mut part = AssetBackfill { asset: asset.name.clone(), taken: 0, runs: BTreeMap::new() };
        for i in 0..asset.step_count() {
            let step = opflow_protocol::StepId(asset.first_step + i);
            let spec = asset.step(i);
            let point = point_key(&spec.point);
            let config_hash = Fingerprint::of_effective_config(&asset.config, spec.partition, &spec.point);
            let upstream_runs = graph
                .input_ranges(step)
                .iter()
                .any(|(_, r)| ran_before[r.last as usize + 1] > ran_before[r.first as usize]);
            let now = StepDefinition {
                op_name: &asset.op_name,
                op_version: &op_version,
                reuse_versions: &asset.reuse_versions,
                config_hash: config_hash.as_bytes(),
            };
            let why = if asset.reuse == Reuse::Never {
                Some(WhyRun::ReuseNever)
            } else {
                why_run(
                    only,
                    cell(&asset.name, spec.partition.unwrap_or_default(), &point),
                    now,
                    upstream_runs,
                )
            };
            match why {
                Some(why) => {
                    let reason = part.runs.entry(why).or_default();
                    reason.cells += 1;
                    if reason.examples.len() < EXAMPLES_PER_REASON {
                        reason.examples.push(opflow_protocol::step::step_label(
                            &asset.name,
                            spec.partition,
                            &spec.point,
                        ));
                    }
                }
                None => part.taken += 1,
            }
            let last = *ran_before.last().unwrap_or(&0);
            ran_before.push(last + u32::from(why.is_some()));
        }
        report.assets.push(part);
    }
    report
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, path::Path};

    use super::*;
    use crate::plan::{RegisteredOp, compile};

    fn compile_ok(source: &str) -> CompiledPlan {
        let ops = [RegisteredOp { name: "noop".into(), version: "1.1.0".parse().unwrap() }];
        compile(source, Path::new("plan.yaml"), &ops).unwrap_or_else(|e| panic!("{e}"))
    }

    const DAILY: &str = "name: p
assets:
  - name: prices
    op: noop@1.1.0
  - name: paths
    op: noop@1.1.0
    deps: [prices]
    partitions: {daily: {start: 2026-01-01, end: 2026-12-31}}
    sweep: {seed: [1, 2]}
  - name: var
    op: noop@1.1.0
    deps: [paths]
    partitions: {daily: {start: 2026-01-01, end: 2026-12-31}}
  - name: yearly
    op: noop@1.1.0
    deps: [var]
  - name: unrelated
    op: noop@1.1.0
";

    #[test]
    fn selections_are_ranges_or_lists() {
        assert_eq!(
            "2026-01-01..2026-03-31".parse(),
            Ok(PartitionSelection::Range { from: "2026-01-01".into(), to: "2026-03-31".into() })
        );
        assert_eq!(
            "aave, compound".parse(),
            Ok(PartitionSelection::List(vec!["aave".into(), "compound".into()]))
        );
        assert!("b..a".parse::<PartitionSelection>().unwrap_err().contains("is empty"));
        assert!("a,,b".parse::<PartitionSelection>().unwrap_err().contains("empty partition"));
        assert!("..b".parse::<PartitionSelection>().is_err());
        let many = vec!["k"; MAX_LISTED_PARTITIONS + 1].join(",");
        assert!(many.parse::<PartitionSelection>().unwrap_err().contains("at most"));
        // Quoted in messages in bounded form, however many keys it lists.
        let long: PartitionSelection = vec!["2026-01-01"; MAX_LISTED_PARTITIONS].join(",").parse().unwrap();
        assert!(long.quoted().len() <= MAX_QUOTED_SELECTION_BYTES, "{}", long.quoted().len());
        let mut plan = compile_ok(DAILY);
        let error =
            plan.restrict_partitions(&vec!["2030-01-01"; 5_000].join(",").parse().unwrap()).unwrap_err();
        assert!(error.len() < 512, "{} bytes", error.len());
    }

    #[test]
    fn a_range_keeps_those_days_and_what_they_read() {
        let mut plan = compile_ok(DAILY);
        let left_out = plan.restrict_partitions(&"2026-01-01..2026-03-31".parse().unwrap()).unwrap();
        let names: Vec<&str> = plan.assets.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["prices", "paths", "var"]);
        let start = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
        let end = NaiveDate::from_ymd_opt(2026, 3, 31).unwrap();
        assert_eq!(plan.assets[1].partitions, Partitions::Daily { start, end });
        assert_eq!(plan.assets[2].partition_keys.len(), 90);
        assert_eq!(plan.step_count, 1 + 90 * 2 + 90);
        assert_eq!(plan.assets[2].first_step, 1 + 180);
        assert_eq!(plan.assets[2].deps, [AssetDep { upstream: 1, partition_mapped: true }]);
        let why: Vec<(&str, &str)> = left_out.iter().map(|l| (l.asset.as_str(), l.why.as_str())).collect();
        assert_eq!(
            why,
            [
                ("yearly", "it reads every partition of `var`, and would read only those selected"),
                ("unrelated", "it is unpartitioned, and reads no selected partition nor is read by one"),
            ]
        );
        // The cut plan's steps line up with the graph: partition p of `var` reads p of `paths`.
        let graph = PlanGraph::new(plan);
        let last_var = opflow_protocol::StepId(graph.plan().step_count - 1);
        let inputs = graph.input_ranges(last_var);
        assert_eq!(inputs.len(), 1);
        assert_eq!((inputs[0].1.first, inputs[0].1.last), (1 + 89 * 2, 1 + 89 * 2 + 1));
    }

    #[test]
    fn a_list_of_days_becomes_static_and_unknown_keys_are_refused() {
        let mut plan = compile_ok(DAILY);
        plan.restrict_partitions(&"2026-01-05,2026-02-01".parse().unwrap()).unwrap();
        assert_eq!(
            plan.assets[1].partitions,
            Partitions::Static(vec!["2026-01-05".into(), "2026-02-01".into()])
        );
        let mut plan = compile_ok(DAILY);
        let error = plan.restrict_partitions(&"2026-01-05,2027-01-01".parse().unwrap()).unwrap_err();
        assert!(error.contains("`2027-01-01`"), "{error}");
        let error = plan.restrict_partitions(&"2030-01-01..2030-02-01".parse().unwrap()).unwrap_err();
        assert!(error.contains("2026-01-01 to 2026-12-31"), "{error}");
        let mut flat = compile_ok("name: f\nassets:\n  - name: a\n    op: noop@1.1.0\n");
        assert!(flat.restrict_partitions(&"x".parse().unwrap()).unwrap_err().contains("no asset"));
        let mut flat = compile_ok("name: f\nassets:\n  - name: a\n    op: noop@1.1.0\n");
        assert!(
            flat.restrict_partitions(&"a..b".parse().unwrap()).unwrap_err().contains("no partitioned asset")
        );
    }

    #[test]
    fn a_fan_in_over_every_selected_partition_stays() {
        let mut plan = compile_ok(DAILY);
        plan.restrict_partitions(&"2026-01-01..2026-12-31".parse().unwrap()).unwrap();
        assert!(plan.assets.iter().any(|a| a.name == "yearly"));
    }

    fn facts(op_version: &str, config_hash: &[u8]) -> CellFacts {
        CellFacts {
            failed: false,
            materialized: Some(MaterializedBy {
                op_name: "noop".into(),
                op_version: op_version.into(),
                config_hash: config_hash.to_vec(),
                retained: true,
            }),
            upstream_changed: false,
            expired: false,
        }
    }

    #[test]
    fn a_cell_runs_when_missing_failed_stale_or_read_from_a_cell_that_runs() {
        let now =
            StepDefinition { op_name: "noop", op_version: "1.1.0", reuse_versions: &[], config_hash: b"h" };
        let good = facts("1.1.0", b"h");
        assert_eq!(why_run(Only::Missing, Some(&good), now, false), None);
        assert_eq!(why_run(Only::Missing, None, now, false), Some(WhyRun::Missing));
        assert_eq!(why_run(Only::Missing, Some(&good), now, true), Some(WhyRun::UpstreamRuns));
        let failed = CellFacts { failed: true, ..good.clone() };
        assert_eq!(why_run(Only::Missing, Some(&failed), now, false), Some(WhyRun::Failed));
        assert_eq!(why_run(Only::Failed, Some(&failed), now, false), Some(WhyRun::Failed));
        let older = facts("1.0.0", b"h");
        assert_eq!(why_run(Only::Missing, Some(&older), now, false), Some(WhyRun::OpChanged));
        // `--failed` takes a stale cell as it is.
        assert_eq!(why_run(Only::Failed, Some(&older), now, false), None);
        let other_config = facts("1.1.0", b"other");
        assert_eq!(why_run(Only::Missing, Some(&other_config), now, false), Some(WhyRun::ConfigChanged));
        let changed = CellFacts { upstream_changed: true, ..good.clone() };
        assert_eq!(why_run(Only::Missing, Some(&changed), now, false), Some(WhyRun::UpstreamChanged));
        assert_eq!(why_run(Only::Failed, Some(&changed), now, false), None);
        // Older than its freshness policy: `--missing` runs it, `--failed` takes it.
        let expired = CellFacts { expired: true, ..good.clone() };
        assert_eq!(why_run(Only::Missing, Some(&expired), now, false), Some(WhyRun::Expired));
        assert_eq!(why_run(Only::Failed, Some(&expired), now, false), None);
        // A version the op declares compatible (`reuse_from`) is not a change.
        let compatible = [semver::Version::new(1, 0, 0)];
        let patched = StepDefinition { reuse_versions: &compatible, ..now };
        assert_eq!(why_run(Only::Missing, Some(&older), patched, false), None);
        let never_done =
            CellFacts { failed: false, materialized: None, upstream_changed: false, expired: false };
        assert_eq!(why_run(Only::Failed, Some(&never_done), now, false), Some(WhyRun::Missing));
        let mut gone = good.clone();
        gone.materialized.as_mut().unwrap().retained = false;
        assert_eq!(why_run(Only::Missing, Some(&gone), now, false), Some(WhyRun::NotRetained));
    }

    #[test]
    fn a_plan_backfill_runs_the_missing_cells_and_what_reads_them() {
        let plan = compile_ok(DAILY);
        let graph = PlanGraph::new(plan);
        let mut catalog: HashMap<(String, String, String), CellFacts> = HashMap::new();
        for asset in &graph.plan().assets {
            for i in 0..asset.step_count() {
                let spec = asset.step(i);
                let hash = Fingerprint::of_effective_config(&asset.config, spec.partition, &spec.point);
                let key = (
                    asset.name.clone(),
                    spec.partition.unwrap_or_default().to_owned(),
                    point_key(&spec.point),
                );
                catalog.insert(key, facts("1.1.0", hash.as_bytes()));
            }
        }
        // One sweep point of one day of `paths` is gone.
        catalog.remove(&("paths".into(), "2026-02-01".into(), r#"{"seed":2}"#.into()));
        let report =
            plan_backfill(&graph, Only::Missing, |a, p, x| catalog.get(&(a.into(), p.into(), x.into())));
        // (asset, taken, [(why, cells)])
        type AssetRuns<'a> = (&'a str, u64, Vec<(WhyRun, u64)>);
        let runs: Vec<AssetRuns> = report
            .assets
            .iter()
            .map(|a| (a.asset.as_str(), a.taken, a.runs.iter().map(|(w, r)| (*w, r.cells)).collect()))
            .collect();
        assert_eq!(
            runs,
            [
                ("prices", 1, vec![]),
                ("paths", 729, vec![(WhyRun::Missing, 1)]),
                ("var", 364, vec![(WhyRun::UpstreamRuns, 1)]),
                ("yearly", 0, vec![(WhyRun::UpstreamRuns, 1)]),
                ("unrelated", 1, vec![]),
            ]
        );
        assert_eq!(report.assets[2].runs[&WhyRun::UpstreamRuns].examples, ["var[2026-02-01]"]);
        assert_eq!((report.runs(), report.taken()), (3, 1095));
    }
}
