//! The CPU the dispatcher spends per event and per step outside the database: decoding an
//! event delivery and making it storable, grouping a batch into the columns the bulk
//! statements bind, working out what a success unlocks (or a failure skips), and building
//! and encoding a step's message. Applying and publishing also wait on PostgreSQL and
//! RabbitMQ (see `opflow bench`); these are the parts that run once per event or step on
//! the dispatcher's own cores, so a regression in them shows up here as a number.

use std::{collections::HashSet, hint::black_box, path::Path};

use criterion::{Criterion, criterion_group, criterion_main};
use opflow_dispatcher::{
    plan::{self, RegisteredOp, StepRetryPolicy},
    store::{
        apply::{columns, decide},
        run_plan::{DepGroup, RunPlan, Unlock, UnlockMode},
        storable::StorableEvent,
    },
};
use opflow_protocol::{Event, EventKind, LogLevel, RunId, StepId};
use serde_json::json;
use uuid::Uuid;

fn run_plan(source: &str) -> RunPlan {
    let registered = [RegisteredOp { name: "noop".into(), version: semver::Version::new(1, 1, 0) }];
    let plan = plan::compile(source, Path::new("bench.yaml"), &registered).expect("compiles");
    RunPlan::new(plan, UnlockMode::Groups).expect("a valid plan")
}

/// A chain of 200 assets of one step each: every success unlocks the next step directly.
fn chain() -> RunPlan {
    let mut source = String::from("name: chain\nassets:\n  - name: s1\n    op: noop@^1\n");
    for i in 2..=200 {
        source.push_str(&format!("  - name: s{i}\n    op: noop@^1\n    deps: [s{}]\n", i - 1));
    }
    run_plan(&source)
}

/// 100 daily partitions × a sweep of 500 (50,000 steps), each partition's 500 fanned in
/// by a report of the same partition: a success counts down its partition's group.
fn sweep() -> RunPlan {
    run_plan(
        "name: sweep\nassets:\n  - name: cells\n    op: noop@^1\n    \
         partitions: {daily: {start: 2000-01-01, end: 2000-04-09}}\n    \
         sweep: {vol: [0.45, 0.65, 0.85, 1.05, 1.25], seed: {from: 1, to: 100}}\n    \
         config: {drift: 0.0, horizon_days: 30, paths: 2000, steps_per_day: 24, spot: 1.0}\n    \
         timeout: 5m\n  \
         - name: report\n    op: noop@^1\n    deps: [cells]\n    \
         partitions: {daily: {start: 2000-01-01, end: 2000-04-09}}\n    config: {position: 1000000}\n",
    )
}

/// 5,000 steps fanned in to 5,000: each success counts down one group; the last empties it
/// and unlocks all 5,000 downstream steps as one range.
fn fan_in() -> RunPlan {
    run_plan(
        "name: fan-in\nassets:\n  - name: a\n    op: noop@^1\n    sweep: {k: {from: 1, to: 5000}}\n  \
         - name: b\n    op: noop@^1\n    deps: [a]\n    sweep: {j: {from: 1, to: 5000}}\n",
    )
}

fn event(run: RunId, step: u32, kind: EventKind) -> Event {
    Event::new(run, StepId(step), 1, "noop@1.1.0/worker-7f9c/4242", kind)
}

fn succeeded(run: RunId, step: u32) -> Event {
    let output = json!({"mean": 1.02, "p05": 0.71, "p95": 1.41, "paths": 2000, "step": step});
    event(run, step, EventKind::Succeeded { output }).with_started_at(chrono::Utc::now())
}

fn log(run: RunId, step: u32) -> Event {
    let message = format!("simulated 2000 paths over 30 days for step {step}; mean 1.02, p05 0.71, p95 1.41");
    event(run, step, EventKind::Log { level: LogLevel::Info, message })
}

fn progress(run: RunId, step: u32) -> Event {
    event(run, step, EventKind::Progress { fraction: 0.5, message: Some("1000 of 2000 paths".into()) })
}

/// Decoding one delivered event body and making it storable: once per event consumed.
fn storable_event(c: &mut Criterion) {
    let run = RunId::new();
    for (name, event) in
        [("succeeded", succeeded(run, 17)), ("log", log(run, 17)), ("progress", progress(run, 17))]
    {
        let bytes = event.encode();
        c.bench_function(&format!("apply/storable_event/{name}"), |b| {
            b.iter(|| StorableEvent::new(Event::decode(black_box(&bytes)).expect("decodes")))
        });
    }
}

/// Settling a batch's results and grouping its events into the columns of the bulk
/// statements (`started`, progress, results and retries, the `events` insert), each event
/// flagged applied: once per batch.
fn batch_columns(events: &[StorableEvent]) -> impl Sized {
    let events: Vec<&Event> = events.iter().map(|e| &**e).collect();
    let applied: HashSet<Uuid> = events.iter().map(|e| e.id.as_uuid()).collect();
    let settled =
        decide::settle(&events, |_| StepRetryPolicy::default(), chrono::Utc::now(), &Default::default());
    (
        columns::started(&events),
        columns::progress(&events),
        columns::results(&settled.results),
        columns::event_rows(&events, &applied),
    )
}

fn columns(c: &mut Criterion) {
    let run = RunId::new();
    let successes: Vec<StorableEvent> = (0..500).map(|s| succeeded(run, s).into()).collect();
    c.bench_function("apply/columns/500_successes", |b| b.iter(|| batch_columns(black_box(&successes))));
    // A long-running sweep's mix: each step started, reported progress and a log line,
    // beat its heart, and 100 of them finished.
    let mixed: Vec<StorableEvent> = (0..100)
        .flat_map(|s| {
            let op = "noop@1.1.0".parse().expect("a valid op");
            [
                event(run, s, EventKind::Started { op }),
                progress(run, s),
                log(run, s),
                event(run, s, EventKind::Heartbeat),
                succeeded(run, s),
            ]
        })
        .map(StorableEvent::from)
        .collect();
    c.bench_function("apply/columns/500_mixed", |b| b.iter(|| batch_columns(black_box(&mixed))));
}

/// What one success unlocks, and what the group it empties unlocks: once per success.
fn unlocks(c: &mut Criterion) {
    let (chain, sweep, fan_in) = (chain(), sweep(), fan_in());
    c.bench_function("apply/unlocks/chain", |b| b.iter(|| chain.unlocks(black_box(StepId(100)))));
    c.bench_function("apply/unlocks/sweep", |b| b.iter(|| sweep.unlocks(black_box(StepId(24_321)))));
    c.bench_function("apply/unlocks/fan_in_5000", |b| b.iter(|| fan_in.unlocks(black_box(StepId(2_500)))));
    let group = match sweep.unlocks(StepId(24_321)).as_slice() {
        [Unlock::Group(group)] => *group,
        other => panic!("a sweep step counts down its partition's group, not {other:?}"),
    };
    c.bench_function("apply/group_ranges/sweep", |b| b.iter(|| sweep.group_ranges(black_box(group))));
    let whole = DepGroup { upstream: 0, partition: DepGroup::WHOLE };
    c.bench_function("apply/group_ranges/fan_in_5000", |b| b.iter(|| fan_in.group_ranges(black_box(whole))));
    // A failure of the chain's first step skips the 199 after it.
    c.bench_function("apply/skip_ranges/chain_200", |b| b.iter(|| chain.skip_ranges(black_box(StepId(0)))));
    c.bench_function("apply/label/sweep", |b| b.iter(|| sweep.label(black_box(StepId(24_321)))));
}

/// Building a step's message from the plan, and encoding it: once per step published
/// (upstream outputs come from the store and are left out; see the protocol's codec bench).
fn step_message(c: &mut Criterion) {
    let (sweep, fan_in) = (sweep(), fan_in());
    let run = RunId::new();
    c.bench_function("publish/step_message/sweep", |b| {
        b.iter(|| sweep.message(run, black_box(StepId(24_321)), 1))
    });
    c.bench_function("publish/step_message_encoded/sweep", |b| {
        b.iter(|| sweep.message(run, black_box(StepId(24_321)), 1).encode())
    });
    c.bench_function("publish/step_message_encoded/fan_in_5000", |b| {
        b.iter(|| fan_in.message(run, black_box(StepId(7_500)), 1).encode())
    });
}

criterion_group!(benches, storable_event, columns, unlocks, step_message);
criterion_main!(benches);
