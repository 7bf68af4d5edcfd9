use std::{path::Path, sync::Arc, time::Duration};

use super::*;
use crate::{
    plan::{RegisteredOp, compile},
    store::run_plan::UnlockMode,
};

fn plan(owner: &str, steps: u32, priority: u8) -> Arc<RunPlan> {
    let ops = [RegisteredOp { name: "noop".into(), version: "1.0.0".parse().unwrap() }];
    let source = format!(
        "name: p\npriority: {priority}\nassets:\n  - name: a\n    op: noop@1.0.0\n    sweep: {{k: {{from: 1, to: {steps}}}}}\n"
    );
    let compiled = compile(&source, Path::new("p.yaml"), &ops).unwrap_or_else(|e| panic!("{e}"));
    Arc::new(RunPlan::new(compiled, UnlockMode::Groups).unwrap().owned_by(owner))
}

fn noop() -> OpRef {
    "noop@1.0.0".parse().unwrap()
}

/// Rows for steps `steps` of `run`, numbered from `seq`.
fn rows(run: RunId, seq: i64, steps: std::ops::Range<u32>) -> Vec<OutboxRow> {
    steps
        .enumerate()
        .map(|(i, step)| OutboxRow { seq: seq + i as i64, run_id: run, step_id: StepId(step), attempt: 1 })
        .collect()
}

fn hold_all(window: &mut PublishWindow, rows: impl IntoIterator<Item = OutboxRow>, plan: &Arc<RunPlan>) {
    for row in rows {
        window.hold(row, plan);
    }
}

fn window_of(size: u32) -> WindowSize {
    WindowSize { fixed: Some(size), base: MIN_WINDOW }
}

#[test]
fn the_default_window_keeps_every_replica_busy_and_widens_to_the_intake() {
    let settings = ScaleSettings { max_replicas: 10, target_value: 3, ..ScaleSettings::default() };
    let intake = Duration::from_millis(50);
    assert_eq!(WindowSize::of(&settings).at(0.0, intake), 60, "2 × max × value");
    assert_eq!(
        WindowSize::of(&ScaleSettings::default()).at(0.0, intake),
        MIN_WINDOW,
        "2 × 4 × 1, at least 8"
    );
    assert_eq!(WindowSize::of(&ScaleSettings::default()).at(2000.0, intake), 100, "50 ms of 2,000 a second");
    let fixed = ScaleSettings { publish_window: Some(3), ..ScaleSettings::default() };
    assert_eq!(WindowSize::of(&fixed).at(2000.0, intake), 3, "a set window is exactly that");
}

#[test]
fn a_chain_step_goes_at_once_and_a_backlog_goes_in_rounds_within_the_window() {
    let (run, plan) = (RunId::new(), plan("risk", 1000, 1));
    let mut window = PublishWindow::new(Duration::from_millis(50));
    hold_all(&mut window, rows(run, 1, 0..1), &plan);
    window.set_size(&noop(), window_of(20));
    let round = window.next_round(500).expect("one step fits: it goes at once");
    assert_eq!(round.rows.len(), 1);
    window.published(&round, &round.rows);

    hold_all(&mut window, rows(run, 2, 1..1000), &plan);
    let round = window.next_round(500).expect("room for 19");
    assert_eq!(round.rows.len(), 19, "the window is 20 and one is on the queue");
    window.published(&round, &round.rows);
    assert!(window.next_round(500).is_none(), "the window is full");
    for _ in 0..4 {
        window.settled(&noop(), run, StepId(0));
        assert!(window.next_round(500).is_none(), "less than a quarter free: no round of one or two");
    }
    window.settled(&noop(), run, StepId(0));
    let round = window.next_round(500).expect("a quarter of the window is free");
    assert_eq!(round.rows.len(), 5);
}

#[test]
fn an_owner_arriving_behind_a_backlog_gets_the_free_room_first() {
    let (a, b) = (RunId::new(), RunId::new());
    let (plan_a, plan_b) = (plan("a", 100_000, 1), plan("b", 100, 1));
    let mut window = PublishWindow::new(Duration::from_millis(50));
    hold_all(&mut window, rows(a, 1, 0..4000), &plan_a);
    window.set_size(&noop(), window_of(40));
    let round = window.next_round(500).unwrap();
    window.published(&round, &round.rows);
    hold_all(&mut window, rows(b, 10_000, 0..100), &plan_b);
    for _ in 0..10 {
        window.settled(&noop(), a, StepId(0));
    }
    let round = window.next_round(500).unwrap();
    assert!(round.rows.iter().all(|r| r.run_id == b), "B holds none: all 10 free slots are B's");
    assert_eq!(round.rows.len(), 10);
}

#[test]
fn rows_beyond_the_hold_limit_are_read_in_step_order_when_the_held_run_low() {
    let (run, plan) = (RunId::new(), plan("risk", 10_000, 1));
    let mut window = PublishWindow::new(Duration::from_millis(50));
    window.set_size(&noop(), window_of(10_000));
    hold_all(&mut window, rows(run, 1, 0..HOLD_PER_RUN + 100), &plan);
    assert!(window.refills().is_empty(), "plenty held");
    window.set_size(&noop(), window_of(10_000));
    let round = window.next_round(HOLD_PER_RUN).unwrap();
    assert_eq!(round.rows.len() as u32, HOLD_PER_RUN);
    window.published(&round, &round.rows);
    let refills = window.refills();
    assert_eq!(refills, vec![(run, Some(StepId(HOLD_PER_RUN - 1)), HOLD_PER_RUN)]);
    let read = rows(run, 1 + i64::from(HOLD_PER_RUN), HOLD_PER_RUN..HOLD_PER_RUN + 100);
    window.loaded(&plan, run, &read, None);
    assert!(window.refills().is_empty(), "fewer than asked: nothing left unheld");
    let round = window.next_round(HOLD_PER_RUN).unwrap();
    assert_eq!(round.rows.len(), 100);
    assert_eq!(round.rows[0].step_id, StepId(HOLD_PER_RUN));
}

#[test]
fn a_row_told_twice_is_held_once_and_a_canceled_run_is_forgotten() {
    let (run, plan) = (RunId::new(), plan("risk", 10, 1));
    let mut window = PublishWindow::new(Duration::from_millis(50));
    hold_all(&mut window, rows(run, 1, 0..5).into_iter().chain(rows(run, 1, 0..5)), &plan);
    window.set_size(&noop(), window_of(100));
    assert_eq!(window.views()[0].waiting, 5);
    window.forget_run(run);
    assert_eq!(window.views()[0].waiting, 0);
    assert!(window.next_round(500).is_none());
}

#[test]
fn a_round_put_back_goes_first_and_the_broker_count_corrects_the_estimate() {
    let (run, plan) = (RunId::new(), plan("risk", 100, 1));
    let mut window = PublishWindow::new(Duration::from_millis(50));
    hold_all(&mut window, rows(run, 1, 0..50), &plan);
    window.set_size(&noop(), window_of(10));
    let round = window.next_round(500).unwrap();
    let first = round.rows[0];
    window.put_back(round, |_| Some(plan.clone()));
    let again = window.next_round(500).unwrap();
    assert_eq!(again.rows[0], first);
    window.published(&again, &again.rows);
    assert!(window.next_round(500).is_none());
    // Workers dropped the messages without a start (a canceled run's, say): the broker's
    // count says the queue is empty.
    window.resync(&noop(), 0);
    assert_eq!(window.next_round(500).unwrap().rows.len(), 10);
}

#[test]
fn an_op_the_settings_do_not_name_keeps_the_default_size_without_asking_again() {
    let (run, plan) = (RunId::new(), plan("risk", 10, 1));
    let mut window = PublishWindow::new(Duration::from_millis(50));
    hold_all(&mut window, rows(run, 1, 0..10), &plan);
    assert!(window.sizes_unknown());
    let other: OpRef = "other@1.0.0".parse().unwrap();
    window.set_size(&other, window_of(100));
    assert!(window.sizes_unknown(), "noop's settings were not among those read");
    window.sizes_read();
    assert!(!window.sizes_unknown());
    assert_eq!(window.views()[0].window, MIN_WINDOW);
}

/// A run of `partitions × 3` steps whose asset caps `{partition}` at `max` with `strategy`.
fn keyed_plan(partitions: u32, max: u32, strategy: &str) -> Arc<RunPlan> {
    let ops = [RegisteredOp { name: "noop".into(), version: "1.0.0".parse().unwrap() }];
    let keys: Vec<String> = (0..partitions).map(|p| format!("p{p}")).collect();
    let source = format!(
        "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    partitions: [{}]\n    sweep: {{k: [1, 2, 3]}}\n    concurrency: {{key: \"{{partition}}\", max: {max}, strategy: {strategy}}}\n",
        keys.join(", ")
    );
    let compiled = compile(&source, Path::new("p.yaml"), &ops).unwrap_or_else(|e| panic!("{e}"));
    Arc::new(RunPlan::new(compiled, UnlockMode::Groups).unwrap().owned_by("risk"))
}

/// Publishes every round there is; returns the rows published.
fn drain(window: &mut PublishWindow) -> Vec<Round> {
    let mut rounds = Vec::new();
    while let Some(round) = window.next_round(1000) {
        window.published(&round, &round.rows);
        rounds.push(round);
    }
    rounds
}

#[test]
fn a_key_at_its_cap_holds_its_steps_back_until_a_result_frees_a_slot() {
    let (run, plan) = (RunId::new(), keyed_plan(2, 2, "queue"));
    let mut window = PublishWindow::new(Duration::from_millis(50));
    hold_all(&mut window, rows(run, 1, 0..6), &plan);
    window.set_size(&noop(), window_of(100));
    let published: Vec<u32> =
        drain(&mut window).iter().flat_map(|r| r.rows.iter().map(|row| row.step_id.0)).collect();
    // Steps 0–2 are p0, 3–5 are p1: two of each go.
    assert_eq!(published, vec![0, 1, 3, 4]);
    let waiting = window.key_waits();
    assert_eq!(waiting.len(), 2, "{waiting:?}");
    assert!(waiting.iter().all(|w| (w.run_id, w.waiting, w.in_flight, w.max) == (run, 1, 2, 2)));
    // A start frees nothing; a result of another attempt frees nothing; its own does.
    window.started(&noop(), run, StepId(0));
    window.results(&[(run, StepId(0), 2)]);
    assert!(drain(&mut window).iter().all(|r| r.rows.is_empty()));
    window.results(&[(run, StepId(0), 1)]);
    let next: Vec<u32> =
        drain(&mut window).iter().flat_map(|r| r.rows.iter().map(|row| row.step_id.0)).collect();
    assert_eq!(next, vec![2]);
    assert_eq!(window.take_released(), vec![(run, StepId(0), 1)]);
}

#[test]
fn slots_restored_from_the_store_count_against_the_cap() {
    let (run, plan) = (RunId::new(), keyed_plan(1, 1, "queue"));
    let mut window = PublishWindow::new(Duration::from_millis(50));
    let earlier = RunId::new();
    window.hold_slots(vec![(earlier, StepId(9), 1, Arc::from("p0"))]);
    hold_all(&mut window, rows(run, 1, 0..3), &plan);
    window.set_size(&noop(), window_of(100));
    assert!(drain(&mut window).iter().all(|r| r.rows.is_empty()));
    window.results(&[(earlier, StepId(9), 1)]);
    assert_eq!(drain(&mut window).iter().map(|r| r.rows.len()).sum::<usize>(), 1);
}

#[test]
fn a_failed_round_gives_its_slots_back() {
    let (run, plan) = (RunId::new(), keyed_plan(1, 1, "queue"));
    let mut window = PublishWindow::new(Duration::from_millis(50));
    hold_all(&mut window, rows(run, 1, 0..2), &plan);
    window.set_size(&noop(), window_of(100));
    let round = window.next_round(1000).expect("a round");
    assert_eq!(round.rows.len(), 1);
    window.put_back(round, |_| Some(plan.clone()));
    let round = window.next_round(1000).expect("the same step again");
    assert_eq!(round.rows.iter().map(|r| r.step_id.0).collect::<Vec<_>>(), vec![0]);
    // Published but no longer queued: its slot is given back and the next step goes.
    window.published(&round, &[]);
    assert_eq!(drain(&mut window).iter().map(|r| r.rows.len()).sum::<usize>(), 1);
}

#[test]
fn cancel_newest_rejects_and_cancel_in_progress_replaces_the_oldest() {
    let (run, plan) = (RunId::new(), keyed_plan(1, 1, "cancel_newest"));
    let mut window = PublishWindow::new(Duration::from_millis(50));
    hold_all(&mut window, rows(run, 1, 0..3), &plan);
    window.set_size(&noop(), window_of(100));
    let rounds = drain(&mut window);
    let published: Vec<u32> = rounds.iter().flat_map(|r| r.rows.iter().map(|row| row.step_id.0)).collect();
    let rejected: Vec<u32> =
        rounds.iter().flat_map(|r| r.rejected.iter().map(|(row, _)| row.step_id.0)).collect();
    assert_eq!((published, rejected), (vec![0], vec![1, 2]));
    assert!(rounds[0].rejected[0].1.contains("cancel_newest"), "{}", rounds[0].rejected[0].1);

    let (run, plan) = (RunId::new(), keyed_plan(1, 1, "cancel_in_progress"));
    let mut window = PublishWindow::new(Duration::from_millis(50));
    hold_all(&mut window, rows(run, 1, 0..2), &plan);
    window.set_size(&noop(), window_of(100));
    let rounds = drain(&mut window);
    let published: Vec<u32> = rounds.iter().flat_map(|r| r.rows.iter().map(|row| row.step_id.0)).collect();
    let superseded: Vec<Attempt> = rounds.iter().flat_map(|r| r.superseded.iter().map(|(v, _)| *v)).collect();
    assert_eq!(published, vec![0]);
    assert_eq!(superseded, vec![(run, StepId(0), 1)]);
    // The replaced step holds its slot until its worker's result comes back.
    assert!(drain(&mut window).iter().all(|r| r.rows.is_empty()));
    window.results(&[(run, StepId(0), 1)]);
    let next: Vec<u32> =
        drain(&mut window).iter().flat_map(|r| r.rows.iter().map(|row| row.step_id.0)).collect();
    assert_eq!(next, vec![1]);
}

#[test]
fn an_op_cap_holds_over_every_run() {
    let (a, b) = (RunId::new(), RunId::new());
    let plan = plan("risk", 10, 1);
    let mut window = PublishWindow::new(Duration::from_millis(50));
    hold_all(&mut window, rows(a, 1, 0..5), &plan);
    hold_all(&mut window, rows(b, 100, 0..5), &plan);
    window.set_size(&noop(), window_of(100));
    window.set_max_in_flight(&noop(), Some(3));
    assert_eq!(drain(&mut window).iter().map(|r| r.rows.len()).sum::<usize>(), 3);
    window.results(&[(a, StepId(0), 1)]);
    window.tick(Duration::from_secs(1));
    assert_eq!(drain(&mut window).iter().map(|r| r.rows.len()).sum::<usize>(), 1);
}
