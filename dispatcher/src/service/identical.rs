//! Identical steps in flight at once run once: a ready step whose memo key missed the
//! catalog while an identical step (same key) runs waits here instead of running too, and
//! is looked up again when that step ends (`service::reuse`).

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use opflow_protocol::{RunId, StepId};

use crate::store::{outbox::OutboxRow, run_plan::RunPlan};

/// Steps that wait for an identical one (same memo key) to end, instead of running too.
/// The leader's own: after a failover, what waited here is read from the outbox again and
/// looked up again, so an identical step may then run twice, never be lost.
#[derive(Debug, Default)]
pub struct IdenticalSteps {
    /// The step that runs for each key.
    running: HashMap<Vec<u8>, (RunId, StepId)>,
    key_of: HashMap<(RunId, StepId), Vec<u8>>,
    /// The rows waiting for each key's step, and their outbox seqs.
    waiting: HashMap<Vec<u8>, Vec<(OutboxRow, Arc<RunPlan>)>>,
    waiting_seqs: HashSet<i64>,
    /// Rows whose step ended or whose run went: to be looked up again.
    released: Vec<(OutboxRow, Arc<RunPlan>)>,
}

impl IdenticalSteps {
    /// Whether the row waits here.
    pub fn waits(&self, seq: i64) -> bool {
        self.waiting_seqs.contains(&seq)
    }

    /// How many rows wait here.
    pub fn waiting(&self) -> usize {
        self.waiting_seqs.len()
    }

    /// A step with `key` that missed the catalog: returned if it is to run (no identical
    /// step of its owner runs, or it is that step again: a retry), else it waits here.
    pub fn run_or_wait(
        &mut self,
        key: Vec<u8>,
        row: OutboxRow,
        plan: Arc<RunPlan>,
    ) -> Option<(OutboxRow, Arc<RunPlan>)> {
        // Only an owner's own steps wait for each other: a team's step never waits on
        // another team's, which may sit behind that team's share of the window.
        let mut key = key;
        key.extend_from_slice(b"\x1f");
        key.extend_from_slice(plan.owner().as_bytes());
        let step = (row.run_id, row.step_id);
        match self.running.get(&key) {
            Some(running) if *running != step => {
                if self.waiting_seqs.insert(row.seq) {
                    self.waiting.entry(key).or_default().push((row, plan));
                }
                None
            }
            _ => {
                self.running.insert(key.clone(), step);
                self.key_of.insert(step, key);
                Some((row, plan))
            }
        }
    }

    /// Steps that ended (succeeded, failed for good, skipped): what waited for them is to
    /// be looked up again.
    pub fn ended(&mut self, steps: &[(RunId, StepId)]) {
        for step in steps {
            if let Some(key) = self.key_of.remove(step) {
                self.running.remove(&key);
                self.release(&key);
            }
        }
    }

    /// A run that went (canceled, deleted): its waiting rows are dropped, and what waited for
    /// its steps is to be looked up again.
    pub fn forget_run(&mut self, run: RunId) {
        let keys: Vec<Vec<u8>> =
            self.key_of.iter().filter(|((of, _), _)| *of == run).map(|(_, k)| k.clone()).collect();
        self.key_of.retain(|(of, _), _| *of != run);
        for rows in self.waiting.values_mut() {
            rows.retain(|(row, _)| {
                if row.run_id == run {
                    self.waiting_seqs.remove(&row.seq);
                }
                row.run_id != run
            });
        }
        self.waiting.retain(|_, rows| !rows.is_empty());
        for key in keys {
            self.running.remove(&key);
            self.release(&key);
        }
    }

    fn release(&mut self, key: &[u8]) {
        for (row, plan) in self.waiting.remove(key).unwrap_or_default() {
            self.waiting_seqs.remove(&row.seq);
            self.released.push((row, plan));
        }
    }

    /// The rows to look up again.
    pub fn take_released(&mut self) -> Vec<(OutboxRow, Arc<RunPlan>)> {
        std::mem::take(&mut self.released)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(run: RunId, step: u32, seq: i64) -> OutboxRow {
        OutboxRow { seq, run_id: run, step_id: StepId(step), attempt: 1 }
    }

    fn plan() -> Arc<RunPlan> {
        plan_of("")
    }

    fn plan_of(owner: &str) -> Arc<RunPlan> {
        let ops = [crate::plan::RegisteredOp { name: "noop".into(), version: "1.0.0".parse().unwrap() }];
        let compiled = crate::plan::compile(
            "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n",
            std::path::Path::new("p.yaml"),
            &ops,
        )
        .unwrap();
        Arc::new(RunPlan::new(compiled, crate::store::run_plan::UnlockMode::Groups).unwrap().owned_by(owner))
    }

    #[test]
    fn another_owners_identical_step_runs_rather_than_wait() {
        let (a, b) = (RunId::new(), RunId::new());
        let mut identical = IdenticalSteps::default();
        let key = b"k".to_vec();
        assert!(identical.run_or_wait(key.clone(), row(a, 0, 1), plan_of("risk")).is_some());
        assert!(
            identical.run_or_wait(key.clone(), row(b, 0, 2), plan_of("ml")).is_some(),
            "another team's runs"
        );
        assert!(identical.run_or_wait(key, row(b, 1, 3), plan_of("risk")).is_none(), "the same team's waits");
    }

    #[test]
    fn identical_steps_wait_for_the_one_that_runs_and_are_looked_up_again_when_it_ends() {
        let (a, b, c) = (RunId::new(), RunId::new(), RunId::new());
        let mut identical = IdenticalSteps::default();
        let key = b"k".to_vec();
        assert!(identical.run_or_wait(key.clone(), row(a, 0, 1), plan()).is_some(), "the first runs");
        assert!(identical.run_or_wait(key.clone(), row(b, 0, 2), plan()).is_none());
        assert!(identical.run_or_wait(key.clone(), row(c, 0, 3), plan()).is_none());
        // Seen again (a full read of the outbox): still waiting, once.
        assert!(identical.run_or_wait(key.clone(), row(c, 0, 3), plan()).is_none());
        assert_eq!(identical.waiting(), 2);
        assert!(identical.waits(2) && !identical.waits(1));
        // The running step's retry runs.
        assert!(identical.run_or_wait(key.clone(), row(a, 0, 4), plan()).is_some());
        // Another step's end releases nothing; its own does.
        identical.ended(&[(b, StepId(0))]);
        assert!(identical.take_released().is_empty());
        identical.ended(&[(a, StepId(0))]);
        let released: Vec<i64> = identical.take_released().iter().map(|(r, _)| r.seq).collect();
        assert_eq!(released, [2, 3]);
        assert_eq!(identical.waiting(), 0);
    }

    #[test]
    fn a_run_that_goes_releases_what_waited_for_it_and_drops_its_own_waiting_rows() {
        let (a, b, c) = (RunId::new(), RunId::new(), RunId::new());
        let mut identical = IdenticalSteps::default();
        let (k1, k2) = (b"1".to_vec(), b"2".to_vec());
        assert!(identical.run_or_wait(k1.clone(), row(a, 0, 1), plan()).is_some());
        assert!(identical.run_or_wait(k1.clone(), row(b, 0, 2), plan()).is_none());
        assert!(identical.run_or_wait(k2.clone(), row(c, 5, 3), plan()).is_some());
        assert!(identical.run_or_wait(k2.clone(), row(a, 5, 4), plan()).is_none());
        identical.forget_run(a);
        let released: Vec<i64> = identical.take_released().iter().map(|(r, _)| r.seq).collect();
        assert_eq!(released, [2], "b waited for a's step; a's own waiting row is dropped");
        assert_eq!(identical.waiting(), 0);
        // k1 has no running step any more: the next one runs.
        assert!(identical.run_or_wait(k1, row(b, 0, 2), plan()).is_some());
    }
}
