//! The plan compiler's cost: parse, validate and expand plans of the sizes `opflow bench w5`
//! stores (partitions × a sweep, fanned in). Storing them needs a database; see w5.

use std::{hint::black_box, path::Path};

use criterion::{Criterion, criterion_group, criterion_main};
use opflow_dispatcher::plan::{self, RegisteredOp};

fn plan_of(days: usize) -> String {
    let start = chrono::NaiveDate::from_ymd_opt(2000, 1, 1).expect("a valid date");
    let end = start + chrono::Days::new(days as u64 - 1);
    format!(
        "name: bench\nassets:\n  - name: cells\n    op: noop@^1\n    partitions: {{daily: {{start: {start}, end: {end}}}}}\n\
         \x20   sweep: {{i: {{from: 1, to: 500}}}}\n  - name: total\n    op: noop@^1\n    deps: [cells]\n"
    )
}

fn chain_of(steps: usize) -> String {
    let mut plan = String::from("name: chain\nassets:\n  - name: s1\n    op: noop@^1\n");
    for i in 2..=steps {
        plan.push_str(&format!("  - name: s{i}\n    op: noop@^1\n    deps: [s{}]\n", i - 1));
    }
    plan
}

fn compile(c: &mut Criterion) {
    let registered = [RegisteredOp { name: "noop".into(), version: semver::Version::new(1, 1, 0) }];
    for (label, source) in [
        ("50,000 steps (100 days × 500)", plan_of(100)),
        ("200,000 steps (400 days × 500)", plan_of(400)),
        ("a chain of 200 assets", chain_of(200)),
    ] {
        c.bench_function(&format!("compile {label}"), |b| {
            b.iter(|| {
                plan::compile(black_box(&source), Path::new("bench.yaml"), &registered).expect("compiles")
            })
        });
    }
}

criterion_group!(benches, compile);
criterion_main!(benches);
