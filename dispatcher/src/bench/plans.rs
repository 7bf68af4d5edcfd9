//! The plans the workloads submit: independent steps (w1, w3, w6), a chain (w2), and a
//! daily-partitioned sweep fanned in (w5).

/// A plan of `steps` independent noop steps, with `extra` lines added to its asset.
pub fn sweep_plan(name: &str, steps: usize, extra: &str) -> String {
    format!(
        "name: {name}\nassets:\n  - name: work\n    op: noop@^1\n    sweep: {{i: {{from: 1, to: {steps}}}}}\n{extra}"
    )
}

/// A chain: each of `steps` assets depends on the one before.
pub fn chain_plan(steps: usize) -> String {
    let mut plan = String::from("name: w2\nassets:\n  - name: s1\n    op: noop@^1\n");
    for i in 2..=steps {
        plan.push_str(&format!("  - name: s{i}\n    op: noop@^1\n    deps: [s{}]\n", i - 1));
    }
    plan
}

/// The sweep size of each day in [`fan_in_plan`].
pub const FAN_IN_SWEEP: usize = 500;

/// About `steps` steps as daily partitions × a sweep of [`FAN_IN_SWEEP`], all fanned in
/// by one more step; returns the plan and its exact step count.
pub fn fan_in_plan(steps: usize) -> (String, usize) {
    let days = steps.div_ceil(FAN_IN_SWEEP).max(1);
    let start = chrono::NaiveDate::from_ymd_opt(2000, 1, 1).expect("a valid date");
    let end = start + chrono::Days::new(days as u64 - 1);
    let plan = format!(
        "name: w5\nassets:\n  - name: cells\n    op: noop@^1\n    partitions: {{daily: {{start: {start}, end: {end}}}}}\n\
         \x20   sweep: {{i: {{from: 1, to: {FAN_IN_SWEEP}}}}}\n  - name: total\n    op: noop@^1\n    deps: [cells]\n"
    );
    (plan, days * FAN_IN_SWEEP + 1)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn benchmark_plans_compile_to_the_sizes_they_promise() {
        let registered =
            [crate::plan::RegisteredOp { name: "noop".into(), version: semver::Version::new(1, 1, 0) }];
        let compile =
            |source: &str| crate::plan::compile(source, Path::new("bench.yaml"), &registered).unwrap();
        assert_eq!(compile(&sweep_plan("w1", 10_000, "")).step_count, 10_000);
        assert_eq!(compile(&chain_plan(200)).step_count, 200);
        assert_eq!(compile(&sweep_plan("w3", 1_000, "    config: {burn_ms: 10}\n")).step_count, 1_000);
        let (plan, steps) = fan_in_plan(50_000);
        assert_eq!(compile(&plan).step_count as usize, steps);
        assert_eq!(steps, 50_001);
    }
}
