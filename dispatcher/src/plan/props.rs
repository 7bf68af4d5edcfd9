//! Property tests for the compiler on bad input: no text makes it panic, and every problem
//! it reports starts with the file and says where: a line, an asset, or (for a few
//! whole-plan problems) the plan itself.

use std::path::Path;

use proptest::{prelude::*, sample::Index};

use super::{CompiledPlan, PlanError, PlanErrorKind, PlanErrors, compile, tests::registry};

const FILE: &str = "plans/fuzz.yaml";

/// Valid plans to mutate, covering every key the compiler reads.
const SEEDS: &[&str] = &[
    "\
name: defi-risk
description: three protocols
assets:
  - name: paths
    op: price-paths@^1.0
    partitions: [aave, compound, maker]
    sweep:
      vol: [0.45, 0.65, 0.85]
      seed: {from: 1, to: 3}
    config: {horizon_days: 30}
    retry: {max: 3, backoff: 2s}
    timeout: 5m
  - name: var
    op: var-report@1.0.0
    deps: [paths]
    partitions: [aave, compound, maker]
",
    "\
name: daily
assets:
  - name: load
    op: noop@1.1.0
    partitions: {daily: {start: 2024-02-27, end: 2024-03-02}}
    config:
      rows: 10
      tags: [a, b]
  - name: report
    op: noop@^1
    deps: [load]
    sweep:
      window: {from: 5, to: 25, step: 5}
",
];

/// Bits of YAML and plan syntax that are likely to land somewhere interesting.
const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ":",
    ": ",
    "- ",
    "#",
    ",",
    "&a ",
    "*a",
    "<<: *a",
    "!!str ",
    "!!binary ",
    "!!map ",
    "~",
    "null",
    "-1",
    "0",
    "1e400",
    ".nan",
    "99999999999999999999",
    "2026-13-45",
    "\t",
    "\"",
    "'",
    "|",
    ">",
    "? ",
    "---\n",
    "...\n",
    "  ",
    "\n",
    "\u{feff}",
    "é",
    "\u{0}",
    "\r",
    "name: a",
    "name: paths",
    "deps: [paths]",
    "deps: [var, var]",
    "op: noop@^9",
    "op: noop@",
    "op: noop@1.0.0",
    "partitions: []",
    "partitions: {daily: {start: 2026-01-01, end: 2026-01-02}}",
    "partitions: {daily: {start: 0000-01-01, end: 9999-12-31}}",
    "sweep: {}",
    "sweep: {k: {from: 1, to: 0}}",
    "sweep: {k: {from: -9223372036854775807, to: 9223372036854775807, step: 9223372036854775807}}",
    "sweep: {k: [[1]]}",
    "retry: {max: 4294967296}",
    "retry: {backoff: 99999999999999999999y}",
    "timeout: 0s",
    "timeout: 18446744073709551615s",
    "config: [1, {a: ~}]",
    "config: *a",
];

#[derive(Debug, Clone)]
enum Mutation {
    DeleteLine(Index),
    DuplicateLine(Index),
    SwapLines(Index, Index),
    Insert(Index, &'static str),
    ReplaceChar(Index, char),
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        1 => any::<Index>().prop_map(Mutation::DeleteLine),
        1 => any::<Index>().prop_map(Mutation::DuplicateLine),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        3 => (any::<Index>(), proptest::sample::select(TOKENS)).prop_map(|(at, token)| Mutation::Insert(at, token)),
        1 => (any::<Index>(), any::<char>()).prop_map(|(at, c)| Mutation::ReplaceChar(at, c)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
    ]
}

/// The char boundary at or before `index`'s position in `text`.
fn boundary(text: &str, index: &Index) -> usize {
    let mut at = index.index(text.len() + 1);
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn apply(source: &str, mutation: &Mutation) -> String {
    let mut lines: Vec<&str> = source.lines().collect();
    match mutation {
        Mutation::DeleteLine(i) if !lines.is_empty() => {
            lines.remove(i.index(lines.len()));
        }
        Mutation::DuplicateLine(i) if !lines.is_empty() => {
            let at = i.index(lines.len());
            lines.insert(at, lines[at]);
        }
        Mutation::SwapLines(a, b) if !lines.is_empty() => {
            let (a, b) = (a.index(lines.len()), b.index(lines.len()));
            lines.swap(a, b);
        }
        Mutation::Insert(at, token) => {
            let at = boundary(source, at);
            return format!("{}{token}{}", &source[..at], &source[at..]);
        }
        Mutation::ReplaceChar(at, c) => {
            let at = boundary(source, at);
            let rest = &source[at..];
            let skip = rest.chars().next().map_or(0, char::len_utf8);
            return format!("{}{c}{}", &source[..at], &rest[skip..]);
        }
        Mutation::Truncate(at) => return source[..boundary(source, at)].to_owned(),
        _ => {}
    }
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

/// A plan of a few assets whose fields are drawn from valid and borderline values.
fn generated_plan() -> impl Strategy<Value = String> {
    let name = proptest::sample::select(&["a", "b", "c", "A", "", "a b", "x-1_y"][..]);
    let op = proptest::sample::select(
        &[
            "noop@1.0.0",
            "noop@^1",
            "noop@>=2",
            "noop@9.9.9",
            "nosuch@1.0.0",
            "noop",
            "Noop@1.0.0",
            "noop@1..0",
        ][..],
    );
    let deps = proptest::collection::vec(proptest::sample::select(&["a", "b", "c", "z"][..]), 0..3);
    let partitions = proptest::option::of(proptest::sample::select(
        &[
            "[p1, p2]",
            "[p1, p1]",
            "[]",
            "[1, 2.5, yes]",
            "[{}]",
            "{daily: {start: 2026-01-01, end: 2026-01-03}}",
            "{daily: {start: 2026-01-03, end: 2026-01-01}}",
            "{daily: {start: 2026-02-30, end: 2026-03-01}}",
            "{daily: {start: 2026-01-01}}",
            "{weekly: {}}",
        ][..],
    ));
    let range = (any::<i64>(), any::<i64>(), proptest::option::of(any::<i64>()));
    let sweep = proptest::option::of(proptest::collection::vec(
        prop_oneof![
            range.prop_map(|(from, to, step)| match step {
                Some(step) => format!("{{from: {from}, to: {to}, step: {step}}}"),
                None => format!("{{from: {from}, to: {to}}}"),
            }),
            (-3i64..3, 0i64..4, 1i64..3)
                .prop_map(|(from, len, step)| format!("{{from: {from}, to: {}, step: {step}}}", from + len)),
            Just("[0.1, x, true]".to_owned()),
            Just("[]".to_owned()),
            Just("[[1]]".to_owned()),
            Just("{from: 1}".to_owned()),
        ],
        0..3,
    ));
    let asset = (
        name,
        op,
        deps,
        partitions,
        sweep,
        proptest::option::of(0u64..200),
        proptest::option::of("[0-9]{1,3}(ms|s|m|h|x)?"),
    );
    proptest::collection::vec(asset, 0..4).prop_map(|assets| {
        let mut text = String::from("name: gen\nassets:\n");
        if assets.is_empty() {
            text.push_str("  []\n");
        }
        for (name, op, deps, partitions, sweep, retry_max, timeout) in assets {
            text.push_str(&format!("  - name: \"{name}\"\n    op: \"{op}\"\n"));
            if !deps.is_empty() {
                text.push_str(&format!("    deps: [{}]\n", deps.join(", ")));
            }
            if let Some(partitions) = partitions {
                text.push_str(&format!("    partitions: {partitions}\n"));
            }
            if let Some(sweep) = sweep {
                text.push_str("    sweep:\n");
                if sweep.is_empty() {
                    text.push_str("      {}\n");
                }
                for (i, values) in sweep.iter().enumerate() {
                    text.push_str(&format!("      k{i}: {values}\n"));
                }
            }
            if let Some(max) = retry_max {
                text.push_str(&format!("    retry: {{max: {max}}}\n"));
            }
            if let Some(timeout) = timeout {
                text.push_str(&format!("    timeout: {timeout}\n"));
            }
        }
        text
    })
}

/// Problems about the plan as a whole, which have no line or asset to name.
fn is_whole_plan(error: &PlanError) -> bool {
    matches!(error.kind, PlanErrorKind::NoAssets | PlanErrorKind::TooManySteps { .. })
}

/// Compiles `source`; a valid plan must be consistent, an invalid one explained.
fn check(source: &str) -> Result<(), TestCaseError> {
    match compile(source, Path::new(FILE), &registry()) {
        Ok(plan) => check_compiled(&plan),
        Err(errors) => check_explained(source, &errors),
    }
}

fn check_compiled(plan: &CompiledPlan) -> Result<(), TestCaseError> {
    let mut next = 0;
    for (index, asset) in plan.assets.iter().enumerate() {
        prop_assert_eq!(asset.first_step, next);
        next += asset.step_count();
        for dep in &asset.deps {
            prop_assert!(dep.upstream < index, "asset {} needs a later asset", asset.name);
        }
        // Every step can be expanded, including the last.
        if asset.step_count() > 0 {
            asset.step(asset.step_count() - 1);
        }
    }
    prop_assert_eq!(plan.step_count, next);
    Ok(())
}

fn check_explained(source: &str, errors: &PlanErrors) -> Result<(), TestCaseError> {
    prop_assert!(!errors.is_empty(), "an invalid plan without a problem");
    let lines = source.lines().count().max(1);
    for error in errors.iter() {
        let message = error.to_string();
        prop_assert!(message.starts_with(FILE), "{}", message);
        prop_assert!(
            error.line.is_some() || error.asset.is_some() || is_whole_plan(error),
            "no line or asset in: {}",
            message
        );
        if let Some(line) = error.line {
            prop_assert!((1..=lines + 1).contains(&line), "line {} of {}: {}", line, lines, message);
        }
        if let Some(asset) = &error.asset {
            prop_assert!(message.contains(&format!("asset `{asset}`")), "{}", message);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        // Most of it is not YAML at all; the YAML error must still say where.
        let _ = compile(&text, Path::new(FILE), &registry());
    }

    #[test]
    fn yaml_like_text_is_compiled_or_explained(text in "(name|assets|op|deps|[a-z]{1,3}|[-:{}\\[\\], \n]|  |@|[0-9]){0,60}") {
        check(&text)?;
    }

    #[test]
    fn mutated_plans_are_compiled_or_explained(
        seed in proptest::sample::select(SEEDS),
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let source = mutations.iter().fold(seed.to_owned(), |source, m| apply(&source, m));
        check(&source)?;
    }

    #[test]
    fn generated_plans_are_compiled_or_explained(source in generated_plan()) {
        check(&source)?;
    }
}

#[test]
fn the_seeds_are_valid() {
    for seed in SEEDS {
        compile(seed, Path::new(FILE), &registry()).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn a_sweep_range_at_the_ends_of_i64_expands_without_overflow() {
    let source = "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    sweep:\n      \
                  k: {from: -9223372036854775807, to: 9223372036854775807, step: 9223372036854775807}\n";
    let plan = compile(source, Path::new(FILE), &registry()).unwrap_or_else(|e| panic!("{e}"));
    let values = &plan.assets[0].sweep[0].values;
    let values: Vec<_> = (0..values.len()).map(|i| values.get(i).as_i64()).collect();
    assert_eq!(values, [Some(-i64::MAX), Some(0), Some(i64::MAX)]);
}

#[test]
fn an_alias_bomb_is_refused() {
    // "Billion laughs": ten levels of ten aliases each would expand to 10^10 strings.
    let mut source = String::from(
        "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    config:\n      a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n",
    );
    for level in 1..10 {
        let previous = format!("*a{}", level - 1);
        let list = [previous.as_str(); 10].join(", ");
        source.push_str(&format!("      a{level}: &a{level} [{list}]\n"));
    }
    let errors = compile(&source, Path::new(FILE), &registry()).expect_err("the plan should be refused");
    let message = errors.to_string();
    assert!(message.starts_with(FILE), "{message}");
    assert!(message.contains("anchors and aliases are expanded"), "{message}");
}
