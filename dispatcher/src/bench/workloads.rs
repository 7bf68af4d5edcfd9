//! The platform workloads, w1–w6 and w8: what each runs, and the figures it reports, each as a
//! ratio to the broker's own (`raw`) where one applies. docs/benchmarks.md says what each
//! figure means and what bounds it.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context;
use opflow_process::SecretUrl;
use serde_json::{Value, json};

use super::{
    memory,
    observe::{Bed, PlanRun, SideRun},
    options::{BenchOptions, round},
    plans::{chain_plan, fan_in_plan, sweep_plan},
    raw::RawFigures,
    sandbox::{self, Sandbox},
};
use crate::store::Store;

/// w1: 10,000 independent steps on 2 workers; throughput.
pub async fn w1(bed: &Bed<'_>, raw: &RawFigures, options: &BenchOptions) -> anyhow::Result<Value> {
    let steps = options.scaled(10_000);
    let run = bed.run_plan(2, &sweep_plan("w1", steps, ""), None).await?;
    let mut figures = run.figures("w1");
    add_ratios_and_cpu(&mut figures, &run, raw);
    Ok(figures)
}

/// The figures w1, w3 and w6 share: throughput as a ratio to `raw`'s consume (kept for
/// continuity), to its cycle (the worker's true limit) and to its pipeline (every broker
/// operation of a step, with nothing else), and CPU per step by component.
fn add_ratios_and_cpu(figures: &mut Value, run: &PlanRun, raw: &RawFigures) {
    figures["ratio_to_raw_consume"] = json!(round(run.steps_per_s() / raw.consume_per_s, 3));
    figures["ratio_to_raw_cycle"] = json!(round(run.steps_per_s() / raw.cycle_per_s, 3));
    figures["ratio_to_raw_pipeline"] = json!(round(run.steps_per_s() / raw.pipeline_per_s, 3));
    figures["cpu_us_per_step"] = run.cpu_figures();
    if run.cpu.exited > 0 {
        // Their CPU time since the start is missing from the figures.
        figures["cpu_processes_exited"] = json!(run.cpu.exited);
    }
}

/// w2: a chain of 200 dependent steps on 1 worker, the cost of each link; and a chain of
/// 10,000, which costs as much per link if nothing grows with the plan's size.
pub async fn w2(bed: &Bed<'_>, raw: &RawFigures, options: &BenchOptions) -> anyhow::Result<Value> {
    let steps = options.scaled(200).max(2);
    let run = bed.run_plan(1, &chain_plan(steps), None).await?;
    let ms_per_step = run.wall.as_secs_f64() * 1000.0 / steps as f64;
    let mut figures = run.figures("w2");
    figures["ms_per_step"] = json!(round(ms_per_step, 2));
    figures["ratio_to_raw_chain"] = json!(round(ms_per_step / raw.chain_ms_per_step, 2));
    figures["submit_s"] = json!(round(run.submit.as_secs_f64(), 3));

    let deep_steps = options.scaled(10_000).max(2);
    let deep = bed.run_plan(1, &chain_plan(deep_steps), None).await?;
    let deep_ms_per_step = deep.wall.as_secs_f64() * 1000.0 / deep_steps as f64;
    figures["deep"] = json!({
        "steps": deep.steps,
        "wall_s": round(deep.wall.as_secs_f64(), 3),
        "submit_s": round(deep.submit.as_secs_f64(), 3),
        "ms_per_step": round(deep_ms_per_step, 2),
        "ratio_to_shallow": round(deep_ms_per_step / ms_per_step, 2),
        "ratio_to_raw_chain": round(deep_ms_per_step / raw.chain_ms_per_step, 2),
        "verified": deep.verified,
    });
    figures["verified"] = json!(run.verified && deep.verified);
    Ok(figures)
}

/// w8: fair sharing. On 2 workers, owner `a` submits a 100,000-step run and, a second later,
/// owner `b` a 100-step run: B's time to finish against B alone (`b_slowdown`), and A's
/// steps/s against A alone (`a_ratio`). Then caps: a 10,000-step run over 1,000 keys of
/// `max: 2` on 4 workers, and the most steps of one key ever running at once
/// (`max_seen_per_key`, from the run store's history).
pub async fn w8(bed: &Bed<'_>, options: &BenchOptions) -> anyhow::Result<Value> {
    let (a_steps, b_steps) = (options.scaled(100_000), options.scaled(100).max(10));
    let (a_plan, b_plan) = (sweep_plan("w8-a", a_steps, ""), sweep_plan("w8-b", b_steps, ""));
    let side = |plan, owner, after| SideRun { plan, owner, after };
    // A alone first: it warms the op's window (its intake rate), so that B alone and B
    // beside A are both timed warm.
    let a_alone = bed.run_side_by_side(2, &[side(&a_plan, "a", Duration::ZERO)]).await?;
    let b_alone = bed.run_side_by_side(2, &[side(&b_plan, "b", Duration::ZERO)]).await?;
    let shared = bed
        .run_side_by_side(2, &[side(&a_plan, "a", Duration::ZERO), side(&b_plan, "b", W8_B_AFTER)])
        .await?;
    let (b_alone, a_alone, a_shared, b_shared) = (&b_alone[0], &a_alone[0], &shared[0], &shared[1]);
    // From the store's own clock: B stored → its first step started → B ended.
    let since_stored =
        |(stored, at): (chrono::DateTime<chrono::Utc>, Option<chrono::DateTime<chrono::Utc>>)| {
            at.map_or(Value::Null, |at| json!(round((at - stored).as_seconds_f64(), 3)))
        };
    let (stored, first, ended) = bed.store.checks().run_times(b_shared.run_id).await?;
    let (b_first_step_s, b_stored_to_end_s) = (since_stored((stored, first)), since_stored((stored, ended)));
    // Caps: 10,000 steps over 1,000 keys of max 2, on more workers than a key may use.
    let keys = options.scaled(1_000).max(2);
    let keyed_run =
        bed.run_side_by_side(W8_KEYED_WORKERS, &[side(&keyed_plan(keys), "a", Duration::ZERO)]).await?;
    let keyed = &keyed_run[0];
    let (most_per_key, most_overall) = bed.store.checks().most_running_at_once(keyed.run_id, 10).await?;
    Ok(json!({
        "workload": "w8",
        // Of the shared runs: both runs' steps, and A's time (B's is within it).
        "steps": a_shared.steps + b_shared.steps,
        "wall_s": round(a_shared.wall.as_secs_f64(), 3),
        "steps_per_s": round((a_shared.steps + b_shared.steps) as f64 / a_shared.wall.as_secs_f64(), 1),
        "a_steps": a_shared.steps,
        "b_steps": b_shared.steps,
        "b_after_s": W8_B_AFTER.as_secs_f64(),
        "b_alone_s": round(b_alone.wall.as_secs_f64(), 3),
        "b_shared_s": round(b_shared.wall.as_secs_f64(), 3),
        "b_slowdown": round(b_shared.wall.as_secs_f64() / b_alone.wall.as_secs_f64(), 2),
        "b_first_step_s": b_first_step_s,
        "b_stored_to_end_s": b_stored_to_end_s,
        "a_alone_steps_per_s": round(a_alone.steps_per_s(), 1),
        "a_shared_steps_per_s": round(a_shared.steps_per_s(), 1),
        "a_ratio": round(a_shared.steps_per_s() / a_alone.steps_per_s(), 3),
        "keyed_steps": keyed.steps,
        "keyed_keys": keys,
        "keyed_workers": W8_KEYED_WORKERS,
        "keyed_steps_per_s": round(keyed.steps_per_s(), 1),
        "max_seen_per_key": most_per_key,
        "max_seen_at_once": most_overall,
        "verified": b_alone.verified
            && a_alone.verified
            && a_shared.verified
            && b_shared.verified
            && keyed.verified
            && most_per_key <= 2,
    }))
}

/// Workers of w8's keyed run: more than a key's cap of 2, so that only the cap keeps a key
/// from running on all of them at once.
const W8_KEYED_WORKERS: usize = 4;

/// w8's keyed run: `keys` partitions of 10 steps each, every partition a key capped at 2.
fn keyed_plan(keys: usize) -> String {
    let partitions: Vec<String> = (0..keys).map(|k| format!("k{k}")).collect();
    format!(
        "name: w8-keyed\nassets:\n  - name: work\n    op: noop@^1\n    partitions: [{}]\n    sweep: {{i: {{from: 1, to: 10}}}}\n    concurrency: {{key: \"w8/{{partition}}\", max: 2}}\n",
        partitions.join(", ")
    )
}

/// How long after A's submit B is submitted in w8: A's backlog is in place by then.
const W8_B_AFTER: Duration = Duration::from_secs(1);

/// w3: 1,000 steps of 10 ms of CPU on 2 workers; how close to the ideal wall time.
pub async fn w3(bed: &Bed<'_>, raw: &RawFigures, options: &BenchOptions) -> anyhow::Result<Value> {
    let steps = options.scaled(1_000);
    let run = bed.run_plan(2, &sweep_plan("w3", steps, "    config: {burn_ms: 10}\n"), None).await?;
    // 10 ms of CPU per step over 2 workers: the ideal wall time.
    let ideal = steps as f64 * 0.010 / 2.0;
    let mut figures = run.figures("w3");
    figures["ideal_s"] = json!(round(ideal, 3));
    figures["efficiency"] = json!(round(ideal / run.wall.as_secs_f64(), 3));
    add_ratios_and_cpu(&mut figures, &run, raw);
    Ok(figures)
}

/// w4: a worker's cold start, submit → its step running, a few samples.
pub async fn w4(bed: &Bed<'_>, options: &BenchOptions) -> anyhow::Result<Value> {
    let samples = if options.quick { 2 } else { 5 };
    let mut cold = Vec::with_capacity(samples);
    let mut verified = true;
    let started = Instant::now();
    for sample in 0..samples {
        let (to_start, ok) = bed.cold_start(sample).await?;
        cold.push(to_start.as_secs_f64() * 1000.0);
        verified &= ok;
    }
    cold.sort_by(f64::total_cmp);
    let median = if cold.len() % 2 == 1 {
        cold[cold.len() / 2]
    } else {
        (cold[cold.len() / 2 - 1] + cold[cold.len() / 2]) / 2.0
    };
    let wall = started.elapsed().as_secs_f64();
    Ok(json!({
        "workload": "w4",
        "steps": samples,
        "wall_s": round(wall, 3),
        "steps_per_s": round(samples as f64 / wall, 2),
        "verified": verified,
        "cold_start_ms_median": round(median, 1),
        "cold_start_ms_max": round(cold.last().copied().unwrap_or_default(), 1),
    }))
}

/// w5: compiles and stores plans of 50,000 and 200,000 steps (daily partitions × a sweep,
/// fanned in), in a database of their own so that no dispatcher publishes them.
pub async fn w5(
    sandbox: &Sandbox,
    noop: &Path,
    options: &BenchOptions,
    cancel: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<Vec<Value>> {
    let sizes = [options.scaled(50_000), options.scaled(200_000)];
    let url =
        SecretUrl::new(sandbox::with_path(sandbox.database_url.expose(), &format!("{}_w5", sandbox.name)));
    let store = Store::connect(&url, cancel).await.context("creating the w5 database")?;
    let description = crate::ops::register::describe(noop).await?;
    store.ops().register(&description, opflow_amqp::OpQueueSettings::default()).await?;
    // Compiling reads the op registry: time it with the registry's statement prepared and
    // a connection open, as in a dispatcher that has been running.
    crate::submit::compile(&store, &sweep_plan("w5-warm-up", 1, ""), Path::new("bench-w5.yaml"))
        .await
        .context("compiling the w5 warm-up plan")?;
    let mut results = Vec::new();
    for size in sizes {
        let (plan, expected) = fan_in_plan(size);
        let measured = memory::reset_own_peak();
        let started = Instant::now();
        let mut compiled = crate::submit::compile(&store, &plan, Path::new("bench-w5.yaml"))
            .await
            .context("compiling the w5 plan")?;
        compiled.reusing_nothing();
        let compile = started.elapsed();
        let stored_at = Instant::now();
        let submission = store.runs().submit(&compiled, "bench-w5.yaml", &plan, None).await?;
        let store_time = stored_at.elapsed();
        let peak = measured.then(|| memory::peak_rss_mb(std::process::id())).flatten();
        let steps = i64::from(
            store.runs().progress(submission.run_id).await?.context("the w5 run vanished")?.steps_total,
        );
        let stored = store.checks().stored_steps(submission.run_id).await?;
        let wall = compile + store_time;
        results.push(json!({
            "workload": "w5",
            "steps": steps,
            "wall_s": round(wall.as_secs_f64(), 3),
            "steps_per_s": round(steps as f64 / wall.as_secs_f64(), 0),
            "verified": steps == stored && steps as usize == expected,
            "compile_s": round(compile.as_secs_f64(), 3),
            "store_s": round(store_time.as_secs_f64(), 3),
            "peak_rss_mb": peak.map(|mb| round(mb, 1)),
        }));
        drop(compiled);
    }
    store.close().await;
    Ok(results)
}

/// w6: 100,000 steps end to end on 2 workers; the dispatcher's memory as the run goes on,
/// and the database's growth per step.
pub async fn w6(
    bed: &Bed<'_>,
    raw: &RawFigures,
    options: &BenchOptions,
    dispatcher_pid: Option<u32>,
) -> anyhow::Result<Value> {
    let steps = options.scaled(100_000);
    let size_before = bed.store.checks().database_bytes().await?;
    let run = bed.run_plan(2, &sweep_plan("w6", steps, ""), dispatcher_pid).await?;
    let size_after = bed.store.checks().database_bytes().await?;
    let mut figures = run.figures("w6");
    let peak = run.dispatcher_rss.iter().map(|(_, mb)| *mb).fold(0.0, f64::max);
    // Memory at a quarter of the run and at its end: equal if it does not grow with
    // completed steps.
    let at = |fraction: f64| {
        run.dispatcher_rss.iter().find(|(done, _)| *done >= fraction).map(|(_, mb)| round(*mb, 1))
    };
    figures["dispatcher_rss_mb"] = json!(round(peak, 1));
    figures["dispatcher_rss_mb_at_25pct"] = json!(at(0.25));
    figures["dispatcher_rss_mb_at_end"] = json!(run.dispatcher_rss.last().map(|(_, mb)| round(*mb, 1)));
    figures["worker_rss_mb"] = json!(run.worker_rss_mb.map(|mb| round(mb, 1)));
    figures["db_bytes_per_step"] = json!(((size_after - size_before) as f64 / steps as f64).round());
    add_ratios_and_cpu(&mut figures, &run, raw);
    Ok(figures)
}
