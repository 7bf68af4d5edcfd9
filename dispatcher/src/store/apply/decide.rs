//! What a batch of events decides, apart from how it is written (`statements`): which
//! result of a step attempt counts, whether a failure is retried or final and with what
//! error, what a success unlocks and a final failure skips, and how a run moves (queued →
//! running → succeeded or failed). Plain functions over the batch and each run's plan, so
//! every rule is tested here without a database.
//!
//! The statements that carry these decisions out are still guarded by each step's attempt
//! and status, so a decision made on a duplicate or late event changes no row: deciding
//! never needs to know what the store holds, only the batch and the plan.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use opflow_protocol::{Event, EventKind, StepId};
use uuid::Uuid;

use crate::{
    plan::{StepRetryPolicy, retry::retry_delay},
    store::{
        run_plan::{DepGroup, RunPlan, StepRange, Unlock, UnlockMode},
        runs::RunStatus,
    },
};

/// The result a step attempt's events settle on within one batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// It succeeded.
    Succeeded,
    /// It failed and is tried again at `at`, as the next attempt.
    Retry { at: DateTime<Utc>, error: String },
    /// It failed for good.
    Failed { error: String },
}

/// A batch's results, one per step attempt, in batch order: what the terminal and retry
/// statements bind.
#[derive(Debug, Default)]
pub struct Settled<'e> {
    pub results: Vec<(&'e Event, Outcome)>,
}

/// Settles the results (successes and failures) of a batch: one per step attempt, so the
/// statements never see two rows for one step. A success beats a failure of the same
/// attempt, and a failure that is retried beats one that is final (the worker's own verdict
/// wins over a dispatcher's made meanwhile); among equals the first in the batch counts,
/// and the others are recorded as not applied. So the outcome does not depend on the order
/// of the batch. Each failure is judged by its step's `policy` at `now`; a success that
/// `blocked` names an error for (a blocking check failed, [`blocked`]) is a final failure.
pub fn settle<'e>(
    events: &[&'e Event],
    policy: impl Fn(&Event) -> StepRetryPolicy,
    now: DateTime<Utc>,
    blocked: &HashMap<Uuid, String>,
) -> Settled<'e> {
    let mut chosen: HashMap<(Uuid, u32, u32), (usize, &'e Event, Outcome)> = HashMap::new();
    for (position, &event) in events.iter().enumerate() {
        let outcome = match &event.kind {
            EventKind::Succeeded { .. } => match blocked.get(&event.id.as_uuid()) {
                Some(error) => Outcome::Failed { error: error.clone() },
                None => Outcome::Succeeded,
            },
            EventKind::Failed { error, retryable } => {
                judge_failure(event, error, *retryable, policy(event), now)
            }
            _ => continue,
        };
        let key = (event.run_id.as_uuid(), event.step_id.0, event.attempt);
        match chosen.get(&key) {
            Some((_, _, held)) if rank(held) >= rank(&outcome) => {}
            Some((first, _, _)) => {
                let first = *first;
                chosen.insert(key, (first, event, outcome));
            }
            None => {
                chosen.insert(key, (position, event, outcome));
            }
        }
    }
    let mut results: Vec<(usize, &'e Event, Outcome)> = chosen.into_values().collect();
    results.sort_by_key(|(position, _, _)| *position);
    Settled { results: results.into_iter().map(|(_, event, outcome)| (event, outcome)).collect() }
}

/// A check result that failed: of which step attempt, which check, and what the op said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedCheck {
    pub run: Uuid,
    pub step: u32,
    pub attempt: u32,
    pub name: String,
    pub detail: Option<String>,
}

impl FailedCheck {
    /// The failed check an event reports, if it reports one.
    pub fn of(event: &Event) -> Option<Self> {
        match &event.kind {
            EventKind::CheckResult { name, passed: false, detail } => Some(Self {
                run: event.run_id.as_uuid(),
                step: event.step_id.0,
                attempt: event.attempt,
                name: name.clone(),
                detail: detail.clone(),
            }),
            _ => None,
        }
    }
}

/// The successes of `events` that a failed blocking check turns into final failures, by
/// event id, each with the error it fails with. `is_blocking(event, check)`: the plan
/// declares `check` of the event's asset `blocking`; `failed` are the failed check results
/// of the batch and those recorded before it. Only the checks of the success's own
/// attempt count.
pub fn blocked(
    events: &[&Event],
    is_blocking: impl Fn(&Event, &str) -> bool,
    failed: &[FailedCheck],
) -> HashMap<Uuid, String> {
    let mut blocked = HashMap::new();
    for &event in events.iter().filter(|e| matches!(e.kind, EventKind::Succeeded { .. })) {
        let check = failed.iter().find(|c| {
            (c.run, c.step, c.attempt) == (event.run_id.as_uuid(), event.step_id.0, event.attempt)
                && is_blocking(event, &c.name)
        });
        if let Some(check) = check {
            let detail = check.detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default();
            blocked.insert(
                event.id.as_uuid(),
                format!("blocking check `{}` failed on attempt {}{detail}", check.name, event.attempt),
            );
        }
    }
    blocked
}

/// Which result wins within a step attempt: the higher.
fn rank(outcome: &Outcome) -> u8 {
    match outcome {
        Outcome::Succeeded => 2,
        Outcome::Retry { .. } => 1,
        Outcome::Failed { .. } => 0,
    }
}

/// A failure of attempt `n` is retried while it is retryable and `n <= max_retries`, after
/// the policy's backoff; otherwise it is final. The error says which, and why.
pub fn judge_failure(
    event: &Event,
    error: &str,
    retryable: bool,
    policy: StepRetryPolicy,
    now: DateTime<Utc>,
) -> Outcome {
    if retryable && event.attempt <= policy.max_retries {
        let delay = retry_delay(policy.backoff, event.attempt);
        Outcome::Retry {
            at: retry_time(now, delay),
            error: format!("attempt {} failed: {error}", event.attempt),
        }
    } else if retryable {
        Outcome::Failed { error: format!("failed after {} attempts; last error: {error}", event.attempt) }
    } else {
        Outcome::Failed { error: format!("failed (not retryable) on attempt {}: {error}", event.attempt) }
    }
}

/// When a retry `delay` from `now` is due. Delays are capped (`plan::retry::MAX_RETRY_DELAY`),
/// so the fallback for an unrepresentable time only guards against a future change of cap.
pub fn retry_time(now: DateTime<Utc>, delay: std::time::Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(delay)
        .ok()
        .and_then(|delay| now.checked_add_signed(delay))
        .unwrap_or(now + chrono::Duration::hours(1))
}

/// What successes unlock, counted per range of waiting steps and per dependency group:
/// a count is how many of the batch's successes it takes off (see `plan::graph`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Unlocks {
    /// Waiting steps whose `pending_upstream` goes down by the count.
    pub ranges: BTreeMap<(Uuid, StepRange), i32>,
    /// Dependency groups whose `remaining` goes down by the count.
    pub groups: BTreeMap<(Uuid, DepGroup), i32>,
}

impl Unlocks {
    /// Adds what `step`'s success unlocks in `run`.
    pub fn succeeded(&mut self, run: Uuid, plan: &RunPlan, step: StepId) {
        match plan.mode() {
            UnlockMode::Groups => {
                for unlock in plan.unlocks(step) {
                    match unlock {
                        Unlock::Range(range) => *self.ranges.entry((run, range)).or_default() += 1,
                        Unlock::Group(group) => *self.groups.entry((run, group)).or_default() += 1,
                    }
                }
            }
            UnlockMode::Steps => {
                for range in plan.downstream_ranges(step) {
                    *self.ranges.entry((run, range)).or_default() += 1;
                }
            }
        }
    }

    /// Adds the steps waiting on a group that the batch emptied.
    pub fn emptied(&mut self, run: Uuid, plan: &RunPlan, group: DepGroup) {
        for range in plan.group_ranges(group) {
            *self.ranges.entry((run, range)).or_default() += 1;
        }
    }
}

/// The waiting steps a final failure of `step` skips, each range with the reason its steps
/// are given.
pub fn skips(run: Uuid, plan: &RunPlan, step: StepId) -> Vec<(Uuid, StepRange, String)> {
    let reason = format!("skipped: upstream step {} failed", plan.label(step));
    plan.skip_ranges(step).into_iter().map(|range| (run, range, reason.clone())).collect()
}

/// What a batch changed of one run's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RunDelta {
    pub succeeded: i32,
    /// Of `succeeded`, those satisfied from the catalog.
    pub reused: i32,
    pub failed: i32,
    pub skipped: i32,
    /// A step of the run started (or finished, which it could only do after starting).
    pub started: bool,
}

/// A run's status and step counters after a batch was counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunCounters {
    pub status: RunStatus,
    pub total: i32,
    pub succeeded: i32,
    pub failed: i32,
    pub skipped: i32,
}

/// How a run moves after a batch: a going run whose steps have all succeeded, failed or
/// been skipped ends (failed if any step failed); a queued run one of whose steps started
/// is running. `None` when it stays as it is; a run that has ended never moves again.
pub fn run_moves(run: &RunCounters, started: bool) -> Option<RunStatus> {
    let going = matches!(run.status, RunStatus::Queued | RunStatus::Running);
    if going && run.succeeded + run.failed + run.skipped == run.total {
        return Some(if run.failed > 0 { RunStatus::Failed } else { RunStatus::Succeeded });
    }
    (run.status == RunStatus::Queued && started).then_some(RunStatus::Running)
}

#[cfg(test)]
mod tests {
    use std::{path::Path, time::Duration};

    use opflow_protocol::{LogLevel, RunId};
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::plan::{self, RegisteredOp};

    fn run_plan(source: &str) -> RunPlan {
        let registered = [RegisteredOp { name: "noop".into(), version: "1.0.0".parse().unwrap() }];
        let plan = plan::compile(source, Path::new("p.yaml"), &registered).unwrap();
        RunPlan::new(plan, UnlockMode::Groups).unwrap()
    }

    fn ok() -> EventKind {
        EventKind::Succeeded { output: json!({"ok": true}) }
    }

    fn failed(retryable: bool) -> EventKind {
        EventKind::Failed { error: "boom".into(), retryable }
    }

    const POLICY: StepRetryPolicy = StepRetryPolicy { max_retries: 2, backoff: Duration::from_secs(1) };

    #[test]
    fn a_failure_is_retried_while_attempts_remain_then_fails_saying_why() {
        let now = Utc::now();
        let at = |attempt| Event::new(RunId::new(), StepId(0), attempt, "w", failed(true));
        match judge_failure(&at(2), "boom", true, POLICY, now) {
            Outcome::Retry { at, error } => {
                assert!(at >= now + chrono::Duration::seconds(2) && at <= now + chrono::Duration::seconds(4));
                assert_eq!(error, "attempt 2 failed: boom");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            judge_failure(&at(3), "boom", true, POLICY, now),
            Outcome::Failed { error: "failed after 3 attempts; last error: boom".into() }
        );
        assert_eq!(
            judge_failure(&at(1), "boom", false, POLICY, now),
            Outcome::Failed { error: "failed (not retryable) on attempt 1: boom".into() }
        );
    }

    #[test]
    fn one_result_counts_per_step_attempt_and_the_rest_wait_their_turn() {
        let run = RunId::new();
        let success = Event::new(run, StepId(0), 1, "w", ok());
        let again = Event::new(run, StepId(0), 1, "w", ok());
        let failure = Event::new(run, StepId(0), 1, "w", failed(false));
        let next_attempt = Event::new(run, StepId(0), 2, "w", failed(false));
        let other_step = Event::new(run, StepId(1), 1, "w", failed(true));
        let log =
            Event::new(run, StepId(1), 1, "w", EventKind::Log { level: LogLevel::Info, message: "x".into() });
        let batch = [&failure, &log, &success, &again, &next_attempt, &other_step];
        let settled = settle(&batch, |_| POLICY, Utc::now(), &HashMap::new());
        let ids: Vec<_> = settled.results.iter().map(|(e, _)| e.id).collect();
        // The first success of attempt 1 stands in the failure's place; attempt 2 and the
        // other step keep theirs; the log is not a result.
        assert_eq!(ids, [success.id, next_attempt.id, other_step.id]);
        assert!(matches!(settled.results[2].1, Outcome::Retry { .. }));
    }

    proptest! {
        /// Whatever the order of a batch, the same result counts for each step attempt.
        #[test]
        fn the_results_that_count_do_not_depend_on_the_order_of_the_batch(
            kinds in proptest::collection::vec((0u32..3, 1u32..3, 0u8..3), 1..12),
            seed in any::<u64>(),
        ) {
            let run = RunId::new();
            let events: Vec<Event> = kinds
                .iter()
                .map(|&(step, attempt, kind)| {
                    let kind = match kind { 0 => ok(), 1 => failed(true), _ => failed(false) };
                    Event::new(run, StepId(step), attempt, "w", kind)
                })
                .collect();
            let mut shuffled: Vec<&Event> = events.iter().collect();
            let mut state = seed;
            for i in (1..shuffled.len()).rev() {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (state >> 33) as usize % (i + 1));
            }
            let in_order: Vec<&Event> = events.iter().collect();
            let now = Utc::now();
            let counted = |batch: &[&Event]| {
                let mut counted: Vec<(u32, u32, u8)> = settle(batch, |_| POLICY, now, &HashMap::new())
                    .results
                    .iter()
                    .map(|(e, outcome)| (e.step_id.0, e.attempt, rank(outcome)))
                    .collect();
                counted.sort();
                counted
            };
            let expected = counted(&in_order);
            prop_assert_eq!(counted(&shuffled), expected.clone());
            // One per step attempt, the best the batch held for it.
            let mut attempts: Vec<(u32, u32)> = kinds.iter().map(|&(step, attempt, _)| (step, attempt)).collect();
            attempts.sort();
            attempts.dedup();
            prop_assert_eq!(expected.len(), attempts.len());
            for (step, attempt, held) in &expected {
                let best = kinds
                    .iter()
                    .filter(|k| (k.0, k.1) == (*step, *attempt))
                    .map(|&(_, attempt, kind)| match kind {
                        0 => 2,
                        1 if attempt <= POLICY.max_retries => 1,
                        _ => 0,
                    })
                    .max();
                prop_assert_eq!(Some(*held), best);
            }
        }
    }

    #[test]
    fn a_failed_blocking_check_of_the_same_attempt_fails_the_success() {
        let run = RunId::new();
        let success = Event::new(run, StepId(0), 2, "w", ok());
        let other = Event::new(run, StepId(1), 1, "w", ok());
        let check = |step, attempt, name: &str| FailedCheck {
            run: run.as_uuid(),
            step,
            attempt,
            name: name.into(),
            detail: Some("3 rows".into()),
        };
        let is_blocking = |_: &Event, name: &str| name == "rows";
        // Of an earlier attempt, or not blocking: the success stands.
        let failed = [check(0, 1, "rows"), check(0, 2, "style")];
        assert!(blocked(&[&success, &other], is_blocking, &failed).is_empty());
        let failed = [check(0, 2, "rows")];
        let blocked = blocked(&[&success, &other], is_blocking, &failed);
        assert_eq!(blocked.len(), 1);
        assert_eq!(blocked[&success.id.as_uuid()], "blocking check `rows` failed on attempt 2: 3 rows");
        let settled = settle(&[&success, &other], |_| POLICY, Utc::now(), &blocked);
        assert!(matches!(&settled.results[0].1, Outcome::Failed { error } if error.contains("`rows`")));
        assert_eq!(settled.results[1].1, Outcome::Succeeded);
        let reported = Event::new(
            run,
            StepId(0),
            2,
            "w",
            EventKind::CheckResult { name: "rows".into(), passed: false, detail: None },
        );
        assert_eq!(FailedCheck::of(&reported).map(|c| c.name), Some("rows".to_owned()));
    }

    #[test]
    fn a_success_unlocks_its_downstream_step_or_counts_down_its_group() {
        let chain = run_plan(
            "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n  - name: b\n    op: noop@1.0.0\n    deps: [a]\n",
        );
        let run = Uuid::new_v4();
        let mut unlocks = Unlocks::default();
        unlocks.succeeded(run, &chain, StepId(0));
        assert_eq!(
            unlocks.ranges.into_iter().collect::<Vec<_>>(),
            [((run, StepRange { first: 1, last: 1 }), 1)]
        );

        let fan_in = run_plan(
            "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    sweep: {k: {from: 1, to: 3}}\n  \
             - name: b\n    op: noop@1.0.0\n    deps: [a]\n    sweep: {j: {from: 1, to: 2}}\n",
        );
        let mut unlocks = Unlocks::default();
        unlocks.succeeded(run, &fan_in, StepId(0));
        unlocks.succeeded(run, &fan_in, StepId(2));
        assert!(unlocks.ranges.is_empty(), "a fan-in's steps wait on their group");
        let (&(_, group), &count) = unlocks.groups.iter().next().unwrap();
        assert_eq!((unlocks.groups.len(), count), (1, 2));
        unlocks.emptied(run, &fan_in, group);
        assert_eq!(
            unlocks.ranges.into_iter().collect::<Vec<_>>(),
            [((run, StepRange { first: 3, last: 4 }), 1)]
        );
    }

    #[test]
    fn a_final_failure_skips_what_waits_on_it_saying_which_step_failed() {
        let plan = run_plan(
            "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    partitions: [x, y]\n  \
             - name: b\n    op: noop@1.0.0\n    deps: [a]\n    partitions: [x, y]\n",
        );
        let run = Uuid::new_v4();
        assert_eq!(
            skips(run, &plan, StepId(1)),
            [(run, StepRange { first: 3, last: 3 }, "skipped: upstream step a[y] failed".to_owned())]
        );
    }

    #[test]
    fn a_run_starts_once_and_ends_when_every_step_is_done() {
        let counters =
            |status, succeeded, failed, skipped| RunCounters { status, total: 3, succeeded, failed, skipped };
        assert_eq!(run_moves(&counters(RunStatus::Queued, 0, 0, 0), false), None);
        assert_eq!(run_moves(&counters(RunStatus::Queued, 0, 0, 0), true), Some(RunStatus::Running));
        assert_eq!(run_moves(&counters(RunStatus::Running, 1, 0, 0), true), None);
        assert_eq!(run_moves(&counters(RunStatus::Running, 3, 0, 0), true), Some(RunStatus::Succeeded));
        assert_eq!(run_moves(&counters(RunStatus::Queued, 3, 0, 0), true), Some(RunStatus::Succeeded));
        assert_eq!(run_moves(&counters(RunStatus::Running, 1, 1, 1), false), Some(RunStatus::Failed));
        for ended in [RunStatus::Succeeded, RunStatus::Failed, RunStatus::Canceled] {
            assert_eq!(run_moves(&counters(ended, 1, 1, 1), true), None, "{ended:?} never moves again");
        }
    }
}
