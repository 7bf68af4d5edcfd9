//! Concurrency caps, as the leader's publisher enforces them: which step attempts hold a
//! slot of which key, and whether one more may go. A step holds a slot of each of its keys
//! (`plan::concurrency`, and its op version's `max_in_flight`) from the round that
//! publishes it until a result of that attempt comes back from the worker that ran it:
//! a redelivery or a republish keeps the slot, a retry is a new attempt that needs one
//! again. So no more than `max` steps of a key are ever out at once, whichever runs,
//! owners, workers or leaders they come from.
//!
//! The run store keeps the same slots (`store::key_slots`), written in the round's own
//! transaction; a new leader starts from them. This table is the leader's copy, and it
//! decides from memory. Pure: the publish window (`service::window`) asks it and applies
//! what it says.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use opflow_protocol::{RunId, StepId};

pub use crate::plan::concurrency::StepKey;
use crate::plan::concurrency::Strategy;

/// A step attempt.
pub type Attempt = (RunId, StepId, u32);

/// What [`KeySlots::admit`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// It holds a slot of each key now (or did already: a republish).
    Go,
    /// A key is full: the step waits for one of its slots.
    Wait { key: Arc<str> },
    /// A `cancel_newest` key is full: the step is canceled.
    Reject { key: Arc<str>, max: u32 },
    /// A `cancel_in_progress` key is full: `victims` (the oldest out) are to be canceled,
    /// and the step waits for their slots.
    Supersede { key: Arc<str>, victims: Vec<Attempt> },
}

#[derive(Debug, Default)]
struct KeyLine {
    /// Holders in the order they were published.
    holders: VecDeque<(RunId, StepId)>,
    /// Holders already told to stop (`cancel_in_progress`), whose slots are not free yet.
    superseded: u32,
}

#[derive(Debug)]
struct Holder {
    attempt: u32,
    keys: Vec<Arc<str>>,
    superseded: bool,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct KeySlots {
    keys: HashMap<Arc<str>, KeyLine>,
    holders: HashMap<(RunId, StepId), Holder>,
}

impl KeySlots {
    /// Steps out of `key`.
    pub fn in_flight(&self, key: &str) -> u32 {
        self.keys.get(key).map_or(0, |line| line.holders.len() as u32)
    }

    /// Whether any slot is held.
    pub fn is_empty(&self) -> bool {
        self.holders.is_empty()
    }

    /// Decides whether `attempt`, whose caps are `keys`, may go now, and takes its slots if
    /// so. The first full key decides: `cancel_newest` before `cancel_in_progress` before
    /// `queue`, so a step never waits on a key that would have canceled it.
    pub fn admit(&mut self, attempt: Attempt, keys: &[StepKey]) -> Admission {
        let (run, step, number) = attempt;
        if keys.is_empty() || self.holders.get(&(run, step)).is_some_and(|h| h.attempt == number) {
            return Admission::Go;
        }
        let full = |k: &&StepKey| self.in_flight(&k.key) >= k.max;
        let mut full_keys: Vec<&StepKey> = keys.iter().filter(full).collect();
        full_keys.sort_by_key(|k| match k.strategy {
            Strategy::CancelNewest => 0,
            Strategy::CancelInProgress => 1,
            Strategy::Queue => 2,
        });
        if let Some(first) = full_keys.first() {
            return match first.strategy {
                Strategy::CancelNewest => Admission::Reject { key: first.key.clone(), max: first.max },
                Strategy::Queue => Admission::Wait { key: first.key.clone() },
                Strategy::CancelInProgress => {
                    let line = self.keys.get_mut(&first.key).expect("a full key has holders");
                    let out = line.holders.len() as u32;
                    // Enough of the oldest to leave room for this one, less those already told.
                    let wanted = (out + 1).saturating_sub(first.max).saturating_sub(line.superseded);
                    let mut victims = Vec::new();
                    for &(run, step) in &line.holders {
                        if victims.len() as u32 >= wanted {
                            break;
                        }
                        let holder = self.holders.get_mut(&(run, step)).expect("a key's holders are held");
                        if !holder.superseded {
                            holder.superseded = true;
                            victims.push((run, step, holder.attempt));
                        }
                    }
                    // Counted on every key the victim holds: its slots all free at once.
                    for &(run, step, _) in &victims {
                        for key in &self.holders[&(run, step)].keys {
                            if let Some(line) = self.keys.get_mut(key) {
                                line.superseded += 1;
                            }
                        }
                    }
                    Admission::Supersede { key: first.key.clone(), victims }
                }
            };
        }
        self.hold(attempt, keys.iter().map(|k| k.key.clone()).collect());
        Admission::Go
    }

    /// Records that `attempt` holds slots of `keys` (a new leader's start, from the store).
    pub fn hold(&mut self, (run, step, attempt): Attempt, keys: Vec<Arc<str>>) {
        if let Some(old) = self.holders.remove(&(run, step)) {
            self.drop_holder(run, step, old);
        }
        for key in &keys {
            self.keys.entry(key.clone()).or_default().holders.push_back((run, step));
        }
        self.holders.insert((run, step), Holder { attempt, keys, superseded: false });
    }

    /// Frees `attempt`'s slots: a result of it came back, or its message was not sent after
    /// all (the round failed, or its step was no longer queued). Returns the keys freed.
    pub fn release(&mut self, (run, step, attempt): Attempt) -> Vec<Arc<str>> {
        match self.holders.get(&(run, step)) {
            Some(holder) if holder.attempt == attempt => {}
            _ => return Vec::new(),
        }
        let holder = self.holders.remove(&(run, step)).expect("looked up above");
        let keys = holder.keys.clone();
        self.drop_holder(run, step, holder);
        keys
    }

    /// Whether `(run, step)` holds slots, and of which attempt.
    pub fn holds(&self, run: RunId, step: StepId) -> Option<u32> {
        self.holders.get(&(run, step)).map(|h| h.attempt)
    }

    fn drop_holder(&mut self, run: RunId, step: StepId, holder: Holder) {
        for key in &holder.keys {
            let Some(line) = self.keys.get_mut(key) else { continue };
            line.holders.retain(|h| *h != (run, step));
            if holder.superseded {
                line.superseded = line.superseded.saturating_sub(1);
            }
            if line.holders.is_empty() {
                self.keys.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, max: u32, strategy: Strategy) -> StepKey {
        StepKey { key: Arc::from(name), max, strategy }
    }

    fn at(run: RunId, step: u32) -> Attempt {
        (run, StepId(step), 1)
    }

    #[test]
    fn a_queue_key_admits_max_then_waits_until_a_result_frees_a_slot() {
        let (mut slots, run) = (KeySlots::default(), RunId::new());
        let k = [key("p=1", 2, Strategy::Queue)];
        assert_eq!(slots.admit(at(run, 0), &k), Admission::Go);
        assert_eq!(slots.admit(at(run, 1), &k), Admission::Go);
        assert_eq!(slots.admit(at(run, 2), &k), Admission::Wait { key: Arc::from("p=1") });
        assert_eq!(slots.in_flight("p=1"), 2);
        // A result of another attempt frees nothing; the attempt's own does.
        assert!(slots.release((run, StepId(0), 2)).is_empty());
        assert_eq!(slots.release(at(run, 0)), vec![Arc::from("p=1")]);
        assert_eq!(slots.admit(at(run, 2), &k), Admission::Go);
        assert_eq!(slots.in_flight("p=1"), 2);
    }

    #[test]
    fn a_republished_attempt_keeps_its_slot_and_a_retry_needs_a_new_one() {
        let (mut slots, run) = (KeySlots::default(), RunId::new());
        let k = [key("k", 1, Strategy::Queue)];
        assert_eq!(slots.admit(at(run, 0), &k), Admission::Go);
        assert_eq!(slots.admit(at(run, 0), &k), Admission::Go, "the same attempt again: recovery");
        assert_eq!(slots.in_flight("k"), 1);
        assert!(matches!(slots.admit((run, StepId(0), 2), &k), Admission::Wait { .. }));
        slots.release(at(run, 0));
        assert_eq!(slots.admit((run, StepId(0), 2), &k), Admission::Go);
    }

    #[test]
    fn every_key_of_a_step_must_have_room() {
        let (mut slots, run) = (KeySlots::default(), RunId::new());
        let both = [key("gpu", 3, Strategy::Queue), key("p=1", 1, Strategy::Queue)];
        assert_eq!(slots.admit(at(run, 0), &both), Admission::Go);
        assert_eq!(slots.admit(at(run, 1), &both), Admission::Wait { key: Arc::from("p=1") });
        let other = [key("gpu", 3, Strategy::Queue), key("p=2", 1, Strategy::Queue)];
        assert_eq!(slots.admit(at(run, 2), &other), Admission::Go);
        assert_eq!(slots.in_flight("gpu"), 2);
    }

    #[test]
    fn cancel_newest_rejects_the_step_that_would_go_over() {
        let (mut slots, run) = (KeySlots::default(), RunId::new());
        let k = [key("k", 1, Strategy::CancelNewest)];
        assert_eq!(slots.admit(at(run, 0), &k), Admission::Go);
        assert_eq!(slots.admit(at(run, 1), &k), Admission::Reject { key: Arc::from("k"), max: 1 });
        assert_eq!(slots.in_flight("k"), 1);
    }

    #[test]
    fn cancel_in_progress_names_the_oldest_once_and_holds_its_slot_until_it_ends() {
        let (mut slots, run) = (KeySlots::default(), RunId::new());
        let k = [key("k", 2, Strategy::CancelInProgress)];
        assert_eq!(slots.admit(at(run, 0), &k), Admission::Go);
        assert_eq!(slots.admit(at(run, 1), &k), Admission::Go);
        assert_eq!(
            slots.admit(at(run, 2), &k),
            Admission::Supersede { key: Arc::from("k"), victims: vec![at(run, 0)] }
        );
        // Asked again while the oldest stops: no second victim for the same room.
        assert_eq!(
            slots.admit(at(run, 2), &k),
            Admission::Supersede { key: Arc::from("k"), victims: vec![] }
        );
        assert_eq!(slots.in_flight("k"), 2, "the canceled step holds its slot until it stopped");
        slots.release(at(run, 0));
        assert_eq!(slots.admit(at(run, 2), &k), Admission::Go);
        // A second newcomer cancels the next oldest.
        assert_eq!(
            slots.admit(at(run, 3), &k),
            Admission::Supersede { key: Arc::from("k"), victims: vec![at(run, 1)] }
        );
    }

    #[test]
    fn undo_gives_back_what_admit_took() {
        let (mut slots, run) = (KeySlots::default(), RunId::new());
        let k = [key("k", 1, Strategy::Queue)];
        assert_eq!(slots.admit(at(run, 0), &k), Admission::Go);
        slots.release(at(run, 0));
        assert!(slots.is_empty());
        assert_eq!(slots.admit(at(run, 1), &k), Admission::Go);
    }
}
