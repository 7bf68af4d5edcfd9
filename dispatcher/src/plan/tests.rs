//! The compiler's behaviour, case by case: every error names file, line and asset.

use std::{path::Path, time::Instant};

use proptest::prelude::*;
use serde_json::json;

use super::*;

pub(super) fn registry() -> Vec<RegisteredOp> {
    ["noop@1.0.0", "noop@1.1.0", "noop@2.0.0", "price-paths@1.0.0", "var-report@1.0.0"]
        .iter()
        .map(|s| {
            let (name, version) = s.split_once('@').unwrap();
            RegisteredOp { name: name.into(), version: version.parse().unwrap() }
        })
        .collect()
}

fn compile_ok(source: &str) -> CompiledPlan {
    compile(source, Path::new("plan.yaml"), &registry()).unwrap_or_else(|e| panic!("{e}"))
}

/// The one error message of an invalid plan.
fn error(source: &str) -> String {
    let errors =
        compile(source, Path::new("plans/bad.yaml"), &registry()).expect_err("plan should be invalid");
    errors.to_string()
}

fn assert_mentions(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "`{part}` missing from: {message}");
    }
}

const DEMO: &str = "\
name: defi-risk
assets:
  - name: paths
    op: price-paths@^1.0
    partitions: [aave, compound, maker]
    sweep:
      vol: [0.45, 0.65, 0.85]
      seed: {from: 1, to: 3}
    config: {horizon_days: 30}
  - name: var
    op: var-report@1.0.0
    deps: [paths]
    partitions: [aave, compound, maker]
";

#[test]
fn the_demo_plan_expands_partition_to_partition() {
    let plan = compile_ok(DEMO);
    assert_eq!(plan.step_count, 30);
    let (paths, var) = (&plan.assets[0], &plan.assets[1]);
    assert_eq!((paths.step_count(), paths.sweep_size(), paths.first_step), (27, 9, 0));
    assert_eq!((var.step_count(), var.first_step), (3, 27));
    assert_eq!(var.deps, vec![AssetDep { upstream: 0, partition_mapped: true }]);
    // Each protocol's report waits for that protocol's 9 paths only.
    let graph = graph::PlanGraph::new(plan.clone());
    assert_eq!(graph.pending_upstream_steps(1), 9);
    assert_eq!(graph.pending_upstream(1), 1);
    assert_eq!(graph.pending_upstream(0), 0);
    assert_eq!(
        graph.group_ranges(graph::DepGroup { upstream: 0, partition: 1 }),
        [graph::StepRange::of(28, 1)]
    );
    assert_eq!(paths.config, json!({"horizon_days": 30}));
    assert_eq!(paths.op_version.to_string(), "1.0.0");
    assert_eq!(paths.op_requirement, "^1.0");
    assert_eq!(paths.line, 3);
}

#[test]
fn the_last_sweep_parameter_varies_fastest() {
    let plan = compile_ok(DEMO);
    let paths = &plan.assets[0];
    let step = |i| paths.step(i);
    assert_eq!(step(0).partition, Some("aave"));
    assert_eq!(step(0).point, json!({"vol": 0.45, "seed": 1}).as_object().unwrap().clone());
    assert_eq!(step(1).point, json!({"vol": 0.45, "seed": 2}).as_object().unwrap().clone());
    assert_eq!(step(3).point, json!({"vol": 0.65, "seed": 1}).as_object().unwrap().clone());
    assert_eq!(step(9).partition, Some("compound"));
    assert_eq!(step(26).point, json!({"vol": 0.85, "seed": 3}).as_object().unwrap().clone());
}

#[test]
fn different_partitions_fan_in() {
    let plan = compile_ok(
        "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    partitions: [x, y]\n    sweep: {k: [1, 2, 3]}\n  \
         - name: b\n    op: noop@1.0.0\n    deps: [a]\n  - name: c\n    op: noop@1.0.0\n    deps: [a]\n    partitions: [x, z]\n",
    );
    let graph = graph::PlanGraph::new(plan.clone());
    assert_eq!(graph.pending_upstream_steps(1), 6);
    assert_eq!(graph.pending_upstream_steps(2), 6);
    assert!(!plan.assets[2].deps[0].partition_mapped);
}

#[test]
fn assets_are_ordered_upstream_first_keeping_file_order_for_ties() {
    let plan = compile_ok(
        "name: p\nassets:\n  - name: report\n    op: noop@1.0.0\n    deps: [b, a]\n  - name: b\n    op: noop@1.0.0\n    deps: [a]\n  \
         - name: a\n    op: noop@1.0.0\n  - name: z\n    op: noop@1.0.0\n",
    );
    let names: Vec<&str> = plan.assets.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "report", "z"]);
    // Dependencies point at positions in the new order.
    assert_eq!(plan.assets[2].deps.iter().map(|d| d.upstream).collect::<Vec<_>>(), [1, 0]);
}

#[test]
fn exact_versions_are_exact_and_requirements_pick_the_highest() {
    let pick = |op: &str| {
        compile_ok(&format!("name: p\nassets:\n  - name: a\n    op: {op}\n")).assets[0].op_version.to_string()
    };
    assert_eq!(pick("noop@1.0.0"), "1.0.0");
    assert_eq!(pick("noop@^1"), "1.1.0");
    assert_eq!(pick("noop@*"), "2.0.0");
    assert_eq!(pick("noop@>=1.0, <2"), "1.1.0");
}

#[test]
fn daily_partitions_cross_a_leap_day() {
    let plan = compile_ok(
        "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    partitions: {daily: {start: 2024-02-27, end: 2024-03-01}}\n",
    );
    assert_eq!(plan.assets[0].partition_keys, ["2024-02-27", "2024-02-28", "2024-02-29", "2024-03-01"]);
}

#[test]
fn yaml_1_1_booleans_stay_strings() {
    let plan = compile_ok(
        "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    partitions: [y, no, on]\n    sweep: {flag: [yes, true]}\n",
    );
    assert_eq!(plan.assets[0].partition_keys, ["y", "no", "on"]);
    assert_eq!(plan.assets[0].sweep[0].values, SweepValues::List(vec![json!("yes"), json!(true)]));
}

#[test]
fn settings_are_read() {
    let plan = compile_ok(
        "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    retry: {max: 5, backoff: 250ms}\n    timeout: 2m\n",
    );
    let a = &plan.assets[0];
    assert_eq!(a.retry, StepRetryPolicy { max_retries: 5, backoff: std::time::Duration::from_millis(250) });
    assert_eq!(a.timeout, Some(std::time::Duration::from_secs(120)));
    assert_eq!(
        compile_ok("name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n").assets[0].retry,
        StepRetryPolicy::default()
    );
}

#[test]
fn malformed_yaml_names_the_place() {
    let message = error("name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n   bad: [\n");
    assert_mentions(&message, &["plans/bad.yaml:"]);
}

#[test]
fn unknown_and_missing_keys_name_the_key_and_line() {
    assert_mentions(
        &error("name: p\nassets:\n  - name: a\n    opp: noop@1.0.0\n"),
        &["plans/bad.yaml:4", "opp"],
    );
    assert_mentions(
        &error("name: p\nassets:\n  - name: a\n    deps: []\n"),
        &["plans/bad.yaml:", "missing field `op`"],
    );
}

#[test]
fn duplicate_assets_name_both_lines() {
    let message =
        error("name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n  - name: a\n    op: noop@1.0.0\n");
    assert_mentions(&message, &["plans/bad.yaml:5", "asset `a`", "declared twice", "line 3"]);
}

#[test]
fn unknown_dependencies_are_named() {
    let message = error(
        "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n  - name: var\n    op: noop@1.0.0\n    deps: [pathz]\n",
    );
    assert_mentions(&message, &["plans/bad.yaml:7", "asset `var`", "unknown asset `pathz`"]);
}

#[test]
fn cycles_are_printed() {
    let message = error(
        "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    deps: [c]\n  - name: b\n    op: noop@1.0.0\n    deps: [a]\n  \
         - name: c\n    op: noop@1.0.0\n    deps: [b]\n  - name: d\n    op: noop@1.0.0\n",
    );
    assert_mentions(&message, &["plans/bad.yaml:3", "cycle a -> c -> b -> a"]);
    let message = error("name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    deps: [a]\n");
    assert_mentions(&message, &["cycle a -> a"]);
}

#[test]
fn unregistered_ops_and_versions_are_explained() {
    assert_mentions(
        &error("name: p\nassets:\n  - name: a\n    op: nosuchop@1.0.0\n"),
        &["plans/bad.yaml:4", "asset `a`", "op `nosuchop` is not registered", "opflow ops add"],
    );
    assert_mentions(
        &error("name: p\nassets:\n  - name: a\n    op: noop@^9\n"),
        &["plans/bad.yaml:4", "no registered version of op `noop` matches `^9`", "1.0.0, 1.1.0, 2.0.0"],
    );
    assert_mentions(&error("name: p\nassets:\n  - name: a\n    op: noop@1.0.7\n"), &["matches `1.0.7`"]);
}

#[test]
fn malformed_op_references_are_explained() {
    assert_mentions(
        &error("name: p\nassets:\n  - name: a\n    op: noop\n"),
        &["plans/bad.yaml:4", "`noop`", "no `@`"],
    );
    assert_mentions(&error("name: p\nassets:\n  - name: a\n    op: noop@one\n"), &["neither a version nor"]);
    assert_mentions(&error("name: p\nassets:\n  - name: a\n    op: No-Op@1.0.0\n"), &["op name"]);
}

#[test]
fn bad_sweeps_are_explained() {
    let base = "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    sweep:\n";
    assert_mentions(
        &error(&format!("{base}      vol: []\n")),
        &["plans/bad.yaml:6", "asset `a`", "`vol` has no values"],
    );
    assert_mentions(&error(&format!("{base}      seed: {{from: 5, to: 1}}\n")), &["range is empty"]);
    assert_mentions(
        &error(&format!("{base}      seed: {{from: 1, to: 5, step: 0}}\n")),
        &["step must be greater than 0"],
    );
    assert_mentions(&error(&format!("{base}      vol: [[1]]\n")), &["not a scalar"]);
    assert_mentions(
        &error("name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    sweep: {}\n"),
        &["no parameters"],
    );
}

#[test]
fn bad_partitions_are_explained() {
    let base = "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    partitions: ";
    assert_mentions(&error(&format!("{base}[]\n")), &["plans/bad.yaml:5", "the list is empty"]);
    assert_mentions(&error(&format!("{base}[x, x]\n")), &["listed twice"]);
    assert_mentions(
        &error(&format!("{base}{{daily: {{start: 2026-02-01, end: 2026-01-01}}}}\n")),
        &["after end"],
    );
    assert_mentions(
        &error(&format!("{base}{{daily: {{start: 2026-02-30, end: 2026-03-01}}}}\n")),
        &["not a date"],
    );
    assert_mentions(
        &error(&format!("{base}{{daily: {{start: 1900-01-01, end: 2100-01-01}}}}\n")),
        &["over the limit of 36600"],
    );
}

#[test]
fn bad_names_and_settings_are_explained() {
    assert_mentions(
        &error("name: Bad Plan\nassets:\n  - name: a\n    op: noop@1.0.0\n"),
        &["plans/bad.yaml:1", "plan name"],
    );
    assert_mentions(&error("name: p\nassets:\n  - name: A\n    op: noop@1.0.0\n"), &["asset name `A`"]);
    assert_mentions(
        &error("name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    retry: {max: 101}\n"),
        &["retry.max"],
    );
    assert_mentions(
        &error("name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    timeout: soon\n"),
        &["timeout"],
    );
    assert_mentions(&error("name: p\nassets: []\n"), &["no assets"]);
}

#[test]
fn every_problem_is_reported_at_once() {
    let errors = compile(
        "name: p\nassets:\n  - name: a\n    op: nosuchop@1.0.0\n  - name: b\n    op: noop@1.0.0\n    deps: [zz]\n    sweep: {k: []}\n",
        Path::new("x.yaml"),
        &registry(),
    )
    .unwrap_err();
    assert_eq!(errors.len(), 3, "{errors}");
}

#[test]
fn huge_plans_are_refused_before_anything_is_allocated() {
    let message = error(
        "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    sweep:\n      x: {from: 1, to: 1000}\n      y: {from: 1, to: 1000}\n      z: {from: 1, to: 10}\n",
    );
    assert_mentions(&message, &["10000000 points", "1000000"]);
    let message = error(
        "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    partitions: {daily: {start: 2000-01-01, end: 2099-01-01}}\n    sweep: {x: {from: 1, to: 100}}\n",
    );
    assert_mentions(&message, &["steps, over the limit"]);
}

#[test]
fn a_thousand_huge_sweeps_are_refused_from_their_sizes_alone() {
    // 1,000 assets of 1,000,000 values each: a billion values, were they built.
    let mut source = String::from("name: p\nassets:\n");
    for i in 0..1000 {
        source.push_str(&format!(
            "  - name: a{i}\n    op: noop@1.0.0\n    sweep: {{x: {{from: 1, to: 1000000}}}}\n"
        ));
    }
    let started = Instant::now();
    let message = error(&source);
    assert_mentions(&message, &["1000000000 steps, over the limit of 1000000"]);
    // Not a timing assertion on the work: a materializing compiler takes minutes and
    // gigabytes here, so this only catches that regression.
    assert!(started.elapsed().as_secs() < 60, "{:?}", started.elapsed());
}

#[test]
fn a_range_is_kept_as_bounds_and_expands_per_step() {
    let plan = compile_ok(
        "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    sweep: {x: {from: 10, to: 1000000, step: 10}}\n",
    );
    let values = &plan.assets[0].sweep[0].values;
    assert_eq!(*values, SweepValues::Range { from: 10, step: 10, count: 100_000 });
    assert_eq!(plan.assets[0].step(99_999).point["x"], json!(1_000_000));
}

#[test]
fn absurd_durations_are_refused_naming_the_limit() {
    let message = error(
        "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    retry: {backoff: 1000000y}\n    timeout: 1000000y\n",
    );
    assert_mentions(
        &message,
        &[
            "2 problems",
            "plans/bad.yaml:5: asset `a`: retry.backoff: `1000000y` is over the limit of 10m",
            "plans/bad.yaml:6: asset `a`: timeout: `1000000y` is over the limit of 7days",
        ],
    );
}

#[test]
fn nul_characters_are_refused_where_they_are() {
    assert_mentions(
        &error("name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    config: {x: \"a\\0b\"}\n"),
        &["plans/bad.yaml:5: asset `a`: config: holds a NUL character"],
    );
    assert_mentions(
        &error("name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    partitions: [\"\\0\"]\n"),
        &["asset `a`: partitions: a key holds a NUL character"],
    );
    assert_mentions(
        &error("name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    sweep: {k: [\"\\0\"]}\n"),
        &["asset `a`: sweep: `k`: a value holds a NUL character"],
    );
    for sweep in ["{\"k\\0\": {from: 1, to: 3}}", "{\"k\\0\": [1, 2]}"] {
        assert_mentions(
            &error(&format!("name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    sweep: {sweep}\n")),
            &["asset `a`: sweep: a parameter name holds a NUL character"],
        );
    }
    assert_mentions(
        &error("name: p\nassets:\n  - name: a\n    op: noop@1.0.0 # \0\n"),
        &["plans/bad.yaml:4: asset `a`: the plan holds a NUL character"],
    );
}

#[test]
fn an_oversized_config_names_the_asset_its_size_and_the_limit() {
    let big = "x".repeat(MAX_CONFIG_BYTES);
    let message = error(&format!(
        "name: p\nassets:\n  - name: ok\n    op: noop@1.0.0\n  - name: heavy\n    op: noop@1.0.0\n    config:\n      blob: {big}\n"
    ));
    let bytes = serde_json::to_vec(&json!({ "blob": big })).unwrap().len();
    assert_mentions(
        &message,
        &[
            "plans/bad.yaml:8: asset `heavy`",
            &format!("`config` is {bytes} bytes as JSON, over the limit of {MAX_CONFIG_BYTES}"),
            "upstream output or a reference",
        ],
    );
    // Exactly at the limit is fine.
    let at_limit = "y".repeat(MAX_CONFIG_BYTES - r#""""#.len());
    let plan =
        compile_ok(&format!("name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    config: {at_limit}\n"));
    assert_eq!(serde_json::to_vec(&plan.assets[0].config).unwrap().len(), MAX_CONFIG_BYTES);
}

#[test]
fn compiling_200k_steps_is_fast() {
    let source = "name: big\nassets:\n  - name: paths\n    op: noop@1.0.0\n    partitions: {daily: {start: 2024-01-01, end: 2026-09-26}}\n    \
                  sweep: {seed: {from: 1, to: 200}}\n  - name: report\n    op: noop@1.0.0\n    deps: [paths]\n    \
                  partitions: {daily: {start: 2024-01-01, end: 2026-09-26}}\n";
    let start = Instant::now();
    let plan = compile_ok(source);
    let compiled = start.elapsed();
    assert_eq!(plan.step_count, 1000 * 200 + 1000);
    let start = Instant::now();
    let touched: usize =
        plan.assets.iter().map(|a| (0..a.step_count()).map(|i| a.step(i).point.len()).sum::<usize>()).sum();
    println!(
        "compiled {} steps in {compiled:?}; expanded every step in {:?} ({touched})",
        plan.step_count,
        start.elapsed()
    );
}

proptest! {
    #[test]
    fn every_step_is_a_distinct_point(sizes in proptest::collection::vec(1usize..5, 1..4), partitions in 0usize..4) {
        let mut source = String::from("name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n");
        if partitions > 0 {
            let keys: Vec<String> = (0..partitions).map(|p| format!("p{p}")).collect();
            source.push_str(&format!("    partitions: [{}]\n", keys.join(", ")));
        }
        source.push_str("    sweep:\n");
        for (i, n) in sizes.iter().enumerate() {
            source.push_str(&format!("      k{i}: {{from: 1, to: {n}}}\n"));
        }
        let plan = compile_ok(&source);
        let asset = &plan.assets[0];
        let expected = sizes.iter().product::<usize>() * partitions.max(1);
        prop_assert_eq!(asset.step_count() as usize, expected);
        let steps: std::collections::HashSet<String> = (0..asset.step_count())
            .map(|i| { let s = asset.step(i); format!("{:?}{:?}", s.partition, s.point) })
            .collect();
        prop_assert_eq!(steps.len(), expected);
    }
}

#[test]
fn a_plans_priority_is_one_to_ten_and_one_by_default() {
    assert_eq!(compile_ok(DEMO).priority, DEFAULT_PRIORITY);
    let with =
        |priority: &str| format!("name: p\npriority: {priority}\nassets:\n  - name: a\n    op: noop@1.0.0\n");
    assert_eq!(compile_ok(&with("10")).priority, 10);
    for bad in ["0", "11", "-1", "300"] {
        assert_mentions(&error(&with(bad)), &["plans/bad.yaml:2", "priority", "out of range; use 1 to 10"]);
    }
}

#[test]
fn concurrency_rules_compile_and_a_bad_one_names_its_line_and_asset() {
    let plan = compile_ok(
        "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    partitions: [x, y]\n    sweep: {region: [eu]}\n    \
         concurrency: [{key: \"a/{partition}/{region}\", max: 2}, {key: gpu, max: 1, strategy: cancel_newest}]\n",
    );
    let rules = &plan.assets[0].concurrency;
    assert_eq!(rules.len(), 2);
    assert_eq!((rules[0].key.as_str(), rules[0].max), ("a/{partition}/{region}", 2));
    let message = error(
        "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    concurrency: {key: \"{partition}\", max: 2}\n",
    );
    assert_mentions(&message, &["plans/bad.yaml:5", "asset `a`", "concurrency", "no partitions"]);
    let message = error(
        "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    concurrency: {key: k, max: 2, strategy: later}\n",
    );
    assert_mentions(&message, &["plans/bad.yaml:5", "asset `a`", "cancel_in_progress"]);
}

#[test]
fn reuse_is_auto_unless_the_asset_says_never() {
    let plan = compile_ok(
        "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n  - name: b\n    op: noop@1.0.0\n    reuse: never\n  \
         - name: c\n    op: noop@1.0.0\n    reuse: auto\n",
    );
    let reuse: Vec<Reuse> = plan.assets.iter().map(|a| a.reuse).collect();
    assert_eq!(reuse, [Reuse::Memo, Reuse::Never, Reuse::Memo]);
    let message = error("name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    reuse: sometimes\n");
    assert_mentions(
        &message,
        &["plans/bad.yaml:5", "asset `a`", "reuse", "`sometimes` is not `auto`", "never"],
    );
}

#[test]
fn freshness_is_a_max_age_or_a_deadline_and_a_bad_one_names_its_line_and_asset() {
    use super::freshness::FreshnessPolicy;
    let plan = compile_ok(
        "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    freshness: {max_age: 2h, warn_after: 1h}\n  \
         - name: b\n    op: noop@1.0.0\n    freshness: {deadline: \"0 6 * * *\", tz: Europe/Paris}\n  \
         - name: c\n    op: noop@1.0.0\n",
    );
    let policies: Vec<Option<&FreshnessPolicy>> = plan.assets.iter().map(|a| a.freshness.as_ref()).collect();
    assert_eq!(
        policies,
        [
            Some(&FreshnessPolicy::MaxAge { max_age_secs: 7200, warn_after_secs: 3600 }),
            Some(&FreshnessPolicy::Deadline { cron: "0 6 * * *".into(), tz: "Europe/Paris".into() }),
            None,
        ]
    );
    for (freshness, says) in [
        ("{max_age: soon}", "is not a duration"),
        ("{max_age: 2h, deadline: \"0 6 * * *\"}", "not both"),
        ("{}", "give `max_age`"),
        ("{max_age: 1h, warn_after: 2h}", "longer than max_age"),
        ("{max_age: 1h, tz: UTC}", "`tz` goes with `deadline`"),
        ("{deadline: \"0 6 * *\"}", "cron"),
        ("{deadline: \"0 6 * * *\", tz: Mars/Olympus}", "IANA"),
    ] {
        let message = error(&format!(
            "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    freshness: {freshness}\n"
        ));
        assert_mentions(&message, &["plans/bad.yaml:5", "asset `a`", "freshness", says]);
    }
    let message =
        error("name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    freshness: {max_age: 2h, grace: 1h}\n");
    assert_mentions(&message, &["plans/bad.yaml:5", "grace"]);
}
