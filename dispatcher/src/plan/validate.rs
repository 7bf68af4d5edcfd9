//! Meaning: names, dependencies, cycles, op resolution, partitions, sweeps and settings
//! (the values of partitions and sweeps themselves: `dimensions`).
//! Every problem is collected (the user fixes the plan in one pass); only a plan without
//! problems is ordered and numbered into steps.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    path::Path,
    time::Duration,
};

use semver::{Version, VersionReq};
use serde_json::Value;
use serde_saphyr::Spanned;

use super::{
    compiled::{
        AssetDep, CompiledAsset, CompiledPlan, DEFAULT_PRIORITY, DeclaredCheck, MAX_CHECKS, MAX_CONFIG_BYTES,
        MAX_PRIORITY, MAX_RETRY_BACKOFF, MAX_STEPS, MAX_TIMEOUT, Partitions, RegisteredOp, Reuse, SweepParam,
    },
    concurrency::{ConcurrencyRule, rules_of},
    dimensions::{MAX_SWEEP_PARAMS, NUL_REASON, check_partitions, holds_nul, partition_keys, sweep_values},
    error::{PlanError, PlanErrorKind, PlanErrors},
    freshness::FreshnessPolicy,
    parse::{Ordered, RawAsset, RawPlan},
    retry::StepRetryPolicy,
};

/// The most retries an asset may ask for.
pub const MAX_RETRIES: u32 = 100;
/// The longest plan or asset name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Collects problems for one file.
struct Problems<'a> {
    file: &'a Path,
    errors: Vec<PlanError>,
}

impl Problems<'_> {
    fn add(&mut self, line: Option<usize>, asset: Option<&str>, kind: PlanErrorKind) {
        self.errors.push(PlanError {
            file: self.file.to_path_buf(),
            line,
            asset: asset.map(str::to_owned),
            kind,
        });
    }
}

fn line<T>(spanned: &Spanned<T>) -> Option<usize> {
    Some(spanned.referenced.line() as usize).filter(|&l| l > 0)
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// What validation learns about one asset before ordering. Partition keys are not built
/// yet: only their count, until the plan's step count is known to be within the limit.
struct Checked {
    op_name: String,
    op_version: Version,
    partitions: Partitions,
    partition_count: u64,
    sweep: Vec<SweepParam>,
    retry: StepRetryPolicy,
    timeout: Option<Duration>,
    concurrency: Vec<ConcurrencyRule>,
    reuse: Reuse,
    checks: Vec<DeclaredCheck>,
    freshness: Option<FreshnessPolicy>,
}

pub(super) fn validate(
    raw: RawPlan,
    file: &Path,
    registered: &[RegisteredOp],
) -> Result<CompiledPlan, PlanErrors> {
    let mut problems = Problems { file, errors: Vec::new() };
    if !valid_name(&raw.name.value) {
        problems.add(
            line(&raw.name),
            None,
            PlanErrorKind::BadName { what: "plan", name: raw.name.value.clone() },
        );
    }
    if raw.assets.is_empty() {
        problems.add(None, None, PlanErrorKind::NoAssets);
    }
    let priority = match &raw.priority {
        None => DEFAULT_PRIORITY,
        Some(p) => match u8::try_from(p.value).ok().filter(|p| (1..=MAX_PRIORITY).contains(p)) {
            Some(priority) => priority,
            None => {
                let reason = format!(
                    "{} is out of range; use 1 to {MAX_PRIORITY} (default {DEFAULT_PRIORITY})",
                    p.value
                );
                problems.add(line(p), None, PlanErrorKind::BadSetting { field: "priority", reason });
                DEFAULT_PRIORITY
            }
        },
    };

    // Names first: dependencies refer to them.
    let mut index_of: HashMap<&str, usize> = HashMap::new();
    for (index, asset) in raw.assets.iter().enumerate() {
        let name = asset.name.value.as_str();
        if !valid_name(name) {
            problems.add(
                line(&asset.name),
                Some(name),
                PlanErrorKind::BadName { what: "asset", name: name.to_owned() },
            );
        }
        match index_of.get(name) {
            Some(&first) => problems.add(
                line(&asset.name),
                Some(name),
                PlanErrorKind::DuplicateAsset {
                    name: name.to_owned(),
                    first_line: line(&raw.assets[first].name).unwrap_or(0),
                },
            ),
            None => {
                index_of.insert(name, index);
            }
        }
    }

    let mut checked = Vec::with_capacity(raw.assets.len());
    let mut dep_indices: Vec<Vec<usize>> = Vec::with_capacity(raw.assets.len());
    for asset in &raw.assets {
        dep_indices.push(check_deps(asset, &index_of, &mut problems));
        checked.push(check_asset(asset, registered, &mut problems));
    }

    if !problems.errors.is_empty() {
        return Err(PlanErrors::new(problems.errors));
    }
    let order = match topological_order(&raw.assets, &dep_indices) {
        Ok(order) => order,
        Err(cycle) => {
            let first = &raw.assets[cycle[0]];
            let names: Vec<&str> = cycle.iter().map(|&i| raw.assets[i].name.value.as_str()).collect();
            let cycle = format!("{} -> {} (`a -> b`: a needs b)", names.join(" -> "), names[0]);
            problems.add(line(&first.name), None, PlanErrorKind::Cycle { cycle });
            return Err(PlanErrors::new(problems.errors));
        }
    };
    let checked: Vec<Checked> =
        checked.into_iter().map(|c| c.expect("no problems means every asset checked")).collect();

    // Steps: counted from the sizes of partitions and sweeps, before any key or value list
    // is built, in u64 so that no plan can overflow before the limit is checked.
    let total: u64 = checked
        .iter()
        .map(|c| {
            let sweep = c.sweep.iter().map(|p| u64::from(p.values.len())).fold(1u64, u64::saturating_mul);
            c.partition_count.max(1).saturating_mul(sweep)
        })
        .fold(0u64, u64::saturating_add);
    if total > MAX_STEPS {
        problems.add(None, None, PlanErrorKind::TooManySteps { steps: total, limit: MAX_STEPS });
        return Err(PlanErrors::new(problems.errors));
    }

    let mut position = vec![0usize; raw.assets.len()];
    for (pos, &index) in order.iter().enumerate() {
        position[index] = pos;
    }
    let mut slots: Vec<Option<(RawAsset, Checked)>> = raw.assets.into_iter().zip(checked).map(Some).collect();
    let mut assets: Vec<CompiledAsset> = Vec::with_capacity(order.len());
    let mut first_step = 0u32;
    for &index in &order {
        let (asset, c) = slots[index].take().expect("each asset is placed once");
        let deps = dep_indices[index]
            .iter()
            .map(|&up| {
                let upstream: &CompiledAsset = &assets[position[up]];
                let mapped = c.partitions != Partitions::None && upstream.partitions == c.partitions;
                AssetDep { upstream: position[up], partition_mapped: mapped }
            })
            .collect();
        let compiled = CompiledAsset {
            line: line(&asset.name).unwrap_or(0),
            name: asset.name.value,
            op_name: c.op_name,
            op_version: c.op_version,
            op_requirement: asset.op.value.split_once('@').map(|(_, r)| r.to_owned()).unwrap_or_default(),
            config: asset.config.map_or(Value::Null, |config| config.value),
            partition_keys: partition_keys(&c.partitions),
            partitions: c.partitions,
            sweep: c.sweep,
            deps,
            retry: c.retry,
            timeout: c.timeout,
            concurrency: c.concurrency,
            reuse: c.reuse,
            reuse_versions: Vec::new(),
            checks: c.checks,
            freshness: c.freshness,
            first_step,
        };
        first_step += compiled.step_count();
        assets.push(compiled);
    }
    Ok(CompiledPlan {
        name: raw.name.value,
        description: raw.description,
        priority,
        assets,
        step_count: first_step,
    })
}

fn check_deps(asset: &RawAsset, index_of: &HashMap<&str, usize>, problems: &mut Problems) -> Vec<usize> {
    let name = asset.name.value.as_str();
    let mut deps = Vec::with_capacity(asset.deps.len());
    for dep in &asset.deps {
        match index_of.get(dep.value.as_str()) {
            None => {
                problems.add(line(dep), Some(name), PlanErrorKind::UnknownDep { missing: dep.value.clone() })
            }
            Some(&index) if deps.contains(&index) => {
                problems.add(line(dep), Some(name), PlanErrorKind::DuplicateDep { dep: dep.value.clone() })
            }
            Some(&index) => deps.push(index),
        }
    }
    deps
}

/// Checks everything about one asset that does not involve other assets.
fn check_asset(asset: &RawAsset, registered: &[RegisteredOp], problems: &mut Problems) -> Option<Checked> {
    let name = asset.name.value.as_str();
    let before = problems.errors.len();
    let op = resolve_op(&asset.op, registered)
        .map_err(|kind| problems.add(line(&asset.op), Some(name), kind))
        .ok();
    let partitions = match &asset.partitions {
        None => Some((Partitions::None, 0)),
        Some(spanned) => check_partitions(&spanned.value)
            .map_err(|reason| problems.add(line(spanned), Some(name), PlanErrorKind::BadPartitions(reason)))
            .ok(),
    };
    let sweep = match &asset.sweep {
        None => Some(Vec::new()),
        Some(spanned) => check_sweep(&spanned.value, line(spanned), name, problems),
    };
    let retry = asset.retry.as_ref().map_or(Some(StepRetryPolicy::default()), |spanned| {
        let defaults = StepRetryPolicy::default();
        let max = spanned.value.max.unwrap_or(defaults.max_retries);
        let mut ok = true;
        if max > MAX_RETRIES {
            problems.add(
                line(spanned),
                Some(name),
                PlanErrorKind::BadSetting {
                    field: "retry.max",
                    reason: format!("{max} is over the limit of {MAX_RETRIES}"),
                },
            );
            ok = false;
        }
        let backoff = match &spanned.value.backoff {
            None => Some(defaults.backoff),
            Some(text) => match humantime::parse_duration(text) {
                Ok(backoff) if backoff <= MAX_RETRY_BACKOFF => Some(backoff),
                Ok(_) => {
                    problems.add(
                        line(spanned),
                        Some(name),
                        PlanErrorKind::BadSetting {
                            field: "retry.backoff",
                            reason: format!(
                                "`{text}` is over the limit of {}: a retry never waits longer (plus jitter)",
                                humantime::format_duration(MAX_RETRY_BACKOFF)
                            ),
                        },
                    );
                    None
                }
                Err(e) => {
                    problems.add(
                        line(spanned),
                        Some(name),
                        PlanErrorKind::BadSetting {
                            field: "retry.backoff",
                            reason: format!("`{text}` is not a duration like 500ms or 2s: {e}"),
                        },
                    );
                    None
                }
            },
        };
        match (ok, backoff) {
            (true, Some(backoff)) => Some(StepRetryPolicy { max_retries: max, backoff }),
            _ => None,
        }
    });
    let timeout = match &asset.timeout {
        None => Some(None),
        Some(spanned) => match humantime::parse_duration(&spanned.value) {
            Ok(d) if !d.is_zero() && d <= MAX_TIMEOUT => Some(Some(d)),
            Ok(d) if !d.is_zero() => {
                problems.add(
                    line(spanned),
                    Some(name),
                    PlanErrorKind::BadSetting {
                        field: "timeout",
                        reason: format!(
                            "`{}` is over the limit of {}; split the work into shorter steps",
                            spanned.value,
                            humantime::format_duration(MAX_TIMEOUT)
                        ),
                    },
                );
                None
            }
            Ok(_) => {
                problems.add(
                    line(spanned),
                    Some(name),
                    PlanErrorKind::BadSetting { field: "timeout", reason: "must be longer than zero".into() },
                );
                None
            }
            Err(e) => {
                problems.add(
                    line(spanned),
                    Some(name),
                    PlanErrorKind::BadSetting {
                        field: "timeout",
                        reason: format!("`{}` is not a duration like 30s or 5m: {e}", spanned.value),
                    },
                );
                None
            }
        },
    };
    if let Some(config) = &asset.config {
        check_config_size(config, name, problems);
        if holds_nul(&config.value) {
            problems.add(
                line(config),
                Some(name),
                PlanErrorKind::BadSetting { field: "config", reason: NUL_REASON.into() },
            );
        }
    }
    let concurrency = match (&asset.concurrency, &partitions, &sweep) {
        (None, _, _) => Some(Vec::new()),
        (Some(spanned), Some((partitioned, _)), Some(sweep)) => {
            let names: Vec<&str> = sweep.iter().map(|p| p.name.as_str()).collect();
            rules_of(&spanned.value, *partitioned != Partitions::None, &names)
                .map_err(|reason| {
                    problems.add(
                        line(spanned),
                        Some(name),
                        PlanErrorKind::BadSetting { field: "concurrency", reason },
                    )
                })
                .ok()
        }
        // What a key may name is not known: the partitions or sweep were reported.
        (Some(_), _, _) => None,
    };
    let reuse = match asset.reuse.as_ref().map(|r| (r, r.value.as_str())) {
        None | Some((_, "auto")) => Some(Reuse::Memo),
        Some((_, "never")) => Some(Reuse::Never),
        Some((spanned, other)) => {
            problems.add(
                line(spanned),
                Some(name),
                PlanErrorKind::BadSetting {
                    field: "reuse",
                    reason: format!(
                        "`{}` is not `auto` (reuse an earlier materialization with the same memo key) or `never`",
                        opflow_protocol::text::cut(other, 64)
                    ),
                },
            );
            None
        }
    };
    let checks = declared_checks(asset, name, problems);
    let freshness = match &asset.freshness {
        None => Some(None),
        Some(spanned) => match super::freshness::of_plan(&spanned.value) {
            Ok(policy) => Some(Some(policy)),
            Err(reason) => {
                problems.add(
                    line(spanned),
                    Some(name),
                    PlanErrorKind::BadSetting { field: "freshness", reason },
                );
                None
            }
        },
    };
    if problems.errors.len() > before {
        return None;
    }
    let (op_name, op_version) = op?;
    let (partitions, partition_count) = partitions?;
    Some(Checked {
        op_name,
        op_version,
        partitions,
        partition_count,
        sweep: sweep?,
        retry: retry?,
        timeout: timeout?,
        concurrency: concurrency?,
        reuse: reuse?,
        checks,
        freshness: freshness?,
    })
}

/// An asset's `checks`: each named once, by a short printable name.
fn declared_checks(asset: &RawAsset, name: &str, problems: &mut Problems) -> Vec<DeclaredCheck> {
    let mut checks: Vec<DeclaredCheck> = Vec::new();
    let mut bad = |spanned: &Spanned<_>, reason: String| {
        problems.add(line(spanned), Some(name), PlanErrorKind::BadSetting { field: "checks", reason })
    };
    if asset.checks.len() > MAX_CHECKS {
        bad(
            &asset.checks[MAX_CHECKS],
            format!("{} checks declared; declare at most {MAX_CHECKS}", asset.checks.len()),
        );
        return checks;
    }
    for spanned in &asset.checks {
        let check = &spanned.value;
        let shown = opflow_protocol::text::cut(&check.name, 64);
        if check.name.is_empty()
            || check.name.len() > MAX_CHECK_NAME_BYTES
            || check.name.chars().any(char::is_control)
        {
            bad(
                spanned,
                format!(
                    "`{shown}` is not a check name: use 1 to {MAX_CHECK_NAME_BYTES} printable bytes, as the op reports it"
                ),
            );
        } else if checks.iter().any(|c| c.name == check.name) {
            bad(spanned, format!("`{shown}` is declared twice"));
        } else {
            checks.push(DeclaredCheck { name: check.name.clone(), blocking: check.blocking });
        }
    }
    checks
}

/// The longest check name a plan may declare.
pub const MAX_CHECK_NAME_BYTES: usize = 128;

/// Refuses a `config` over [`MAX_CONFIG_BYTES`] as JSON.
///
/// # Panics
///
/// Never: a `serde_json::Value` (string keys, finite numbers) always serializes.
fn check_config_size(config: &Spanned<Value>, asset: &str, problems: &mut Problems) {
    let bytes = serde_json::to_vec(&config.value).expect("a JSON value serializes").len();
    if bytes > MAX_CONFIG_BYTES {
        problems.add(
            line(config),
            Some(asset),
            PlanErrorKind::ConfigTooLarge { bytes, limit: MAX_CONFIG_BYTES },
        );
    }
}

/// `name@1.2.3` means exactly 1.2.3; `name@<requirement>` the highest registered match.
fn resolve_op(op: &Spanned<String>, registered: &[RegisteredOp]) -> Result<(String, Version), PlanErrorKind> {
    let text = op.value.as_str();
    let bad = |reason: &str| PlanErrorKind::BadOpRef { text: text.to_owned(), reason: reason.to_owned() };
    let (name, requirement) = text.split_once('@').ok_or_else(|| bad("it has no `@`"))?;
    if opflow_protocol::OpName::new(name).is_err() {
        return Err(bad(
            "the op name may only hold lowercase letters, digits and `-`, starting with a letter",
        ));
    }
    let requirement = requirement.trim();
    let matches: Box<dyn Fn(&Version) -> bool> = match Version::parse(requirement) {
        // A bare version is exact: semver would read `1.0.0` as the requirement `^1.0.0`.
        Ok(exact) => Box::new(move |v| *v == exact),
        Err(_) => {
            let req = VersionReq::parse(requirement).map_err(|e| {
                bad(&format!("`{requirement}` is neither a version nor a version requirement ({e})"))
            })?;
            Box::new(move |v| req.matches(v))
        }
    };
    let versions: Vec<&Version> = registered.iter().filter(|r| r.name == name).map(|r| &r.version).collect();
    if versions.is_empty() {
        return Err(PlanErrorKind::UnknownOp { op: name.to_owned() });
    }
    match versions.iter().filter(|v| matches(v)).max() {
        Some(version) => Ok((name.to_owned(), (*version).clone())),
        None => {
            let mut listed: Vec<String> = versions.iter().map(|v| v.to_string()).collect();
            listed.sort();
            Err(PlanErrorKind::NoMatchingVersion {
                op: name.to_owned(),
                requirement: requirement.to_owned(),
                registered: listed.join(", "),
            })
        }
    }
}

fn check_sweep(
    sweep: &Ordered<Spanned<Value>>,
    sweep_line: Option<usize>,
    asset: &str,
    problems: &mut Problems,
) -> Option<Vec<SweepParam>> {
    if sweep.0.is_empty() {
        problems.add(
            sweep_line,
            Some(asset),
            PlanErrorKind::BadSweep("the sweep has no parameters; add one or remove `sweep`".into()),
        );
        return None;
    }
    if sweep.0.len() > MAX_SWEEP_PARAMS {
        problems.add(
            sweep_line,
            Some(asset),
            PlanErrorKind::BadSweep(format!(
                "{} parameters, over the limit of {MAX_SWEEP_PARAMS}; sweep fewer parameters, or put fixed ones in `config`",
                sweep.0.len()
            )),
        );
        return None;
    }
    let mut params = Vec::with_capacity(sweep.0.len());
    let mut product: u64 = 1;
    let mut ok = true;
    for (name, spanned) in &sweep.0 {
        match sweep_values(name, &spanned.value) {
            Ok(values) => {
                product = product.saturating_mul(u64::from(values.len()));
                params.push(SweepParam { name: name.clone(), values });
            }
            Err(reason) => {
                problems.add(line(spanned).or(sweep_line), Some(asset), PlanErrorKind::BadSweep(reason));
                ok = false;
            }
        }
    }
    if ok && product > MAX_STEPS {
        problems.add(
            sweep_line,
            Some(asset),
            PlanErrorKind::BadSweep(format!("{product} points, over the step limit of {MAX_STEPS}")),
        );
        ok = false;
    }
    ok.then_some(params)
}

/// Kahn's algorithm, ties broken by file order. On a cycle, returns one cycle's assets in
/// "needs" order.
fn topological_order(assets: &[RawAsset], deps: &[Vec<usize>]) -> Result<Vec<usize>, Vec<usize>> {
    let n = assets.len();
    let mut waiting_on: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (index, ups) in deps.iter().enumerate() {
        for &up in ups {
            dependents[up].push(index);
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> = (0..n).filter(|&i| waiting_on[i] == 0).map(Reverse).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(Reverse(index)) = ready.pop() {
        order.push(index);
        for &down in &dependents[index] {
            waiting_on[down] -= 1;
            if waiting_on[down] == 0 {
                ready.push(Reverse(down));
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Every unplaced asset lies on or behind a cycle; walk "needs" edges among them from
    // the first in file order until an asset repeats.
    let start = (0..n).find(|&i| waiting_on[i] > 0).expect("an unplaced asset exists");
    let mut path = vec![start];
    let mut seen_at = HashMap::from([(start, 0usize)]);
    let mut current = start;
    loop {
        let next = *deps[current]
            .iter()
            .find(|&&up| waiting_on[up] > 0)
            .expect("an unplaced asset needs an unplaced asset");
        if let Some(&at) = seen_at.get(&next) {
            return Err(path[at..].to_vec());
        }
        seen_at.insert(next, path.len());
        path.push(next);
        current = next;
    }
}
