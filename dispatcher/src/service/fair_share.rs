//! Fair order: which waiting steps fill the free room of an op version's publish window.
//!
//! The room goes to owners (teams) first, by their recent **usage** of the op: how many of
//! their steps were published to it lately, each counted less as it ages (halved every
//! [`USAGE_HALF_LIFE`]). Each free slot goes to the owner with the least, so an owner
//! arriving beside another's running backfill gets every slot until it has used as much
//! lately: a small run goes through at once, whole, rather than at half speed. Two owners
//! that both keep the op busy level out at equal shares (an owner that floods the op with
//! small runs builds up usage like any other), and an owner idle for a while starts afresh.
//! This is the fair-share-with-decay of batch schedulers (Slurm's fair-share factor).
//!
//! Within an owner, runs share by their `priority`: the slot goes to the run with the
//! highest `priority / (on queue + 1)`. Ties go round the owners (and to the older run), so
//! equal owners alternate slot by slot. Pure: the publisher's window (`service::window`)
//! feeds it, keeps the usage and applies what it decides.

use std::time::Duration;

/// How fast an owner's usage is forgotten: halved over this long.
pub const USAGE_HALF_LIFE: Duration = Duration::from_secs(10);

/// `usage` after `elapsed` without use.
pub fn decayed(usage: f64, elapsed: Duration) -> f64 {
    usage * 0.5f64.powf(elapsed.as_secs_f64() / USAGE_HALF_LIFE.as_secs_f64())
}

/// A run with steps waiting for an op version's window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate<'a> {
    pub owner: &'a str,
    /// 1 to 10: a run's share among its owner's runs.
    pub priority: u8,
    /// Its messages on the queue now (published, not yet taken by a worker).
    pub on_queue: u32,
    /// Its steps waiting to be published.
    pub waiting: u32,
}

/// Hands out `room` slots to `candidates` (see the module docs), each owner's recent usage
/// being `usage(owner)`; returns, in the order they should be published, the index of the
/// candidate each slot went to. `turn` rotates the owners that tie, and is advanced, so
/// that successive rounds of one slot alternate too.
pub fn allocate(
    candidates: &[Candidate<'_>],
    room: u32,
    usage: impl Fn(&str) -> f64,
    turn: &mut usize,
) -> Vec<usize> {
    let mut owners: Vec<&str> = candidates.iter().map(|c| c.owner).collect();
    owners.sort_unstable();
    owners.dedup();
    // Per owner: its usage (a slot given here counts one) and its candidates.
    let mut used: Vec<f64> = owners.iter().map(|owner| usage(owner)).collect();
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); owners.len()];
    for (index, candidate) in candidates.iter().enumerate() {
        let owner = owners.binary_search(&candidate.owner).expect("every owner is listed");
        members[owner].push(index);
    }
    let mut queued: Vec<u32> = candidates.iter().map(|c| c.on_queue).collect();
    let mut left: Vec<u32> = candidates.iter().map(|c| c.waiting).collect();
    let mut owner_left: Vec<u64> =
        members.iter().map(|m| m.iter().map(|&i| u64::from(left[i])).sum()).collect();
    let mut order = Vec::new();
    while order.len() < room as usize {
        // The owner with waiting steps and the least usage; ties by rotation.
        let start = *turn % owners.len().max(1);
        let owner = (0..owners.len())
            .map(|k| (start + k) % owners.len())
            .filter(|&o| owner_left[o] > 0)
            .min_by(|&a, &b| used[a].total_cmp(&used[b]));
        let Some(owner) = owner else { break };
        *turn = turn.wrapping_add(1);
        // Its run with the highest priority per message on the queue; ties to the first.
        let run = members[owner]
            .iter()
            .copied()
            .filter(|&i| left[i] > 0)
            .max_by(|&a, &b| {
                let (pa, pb) = (u64::from(candidates[a].priority), u64::from(candidates[b].priority));
                let (qa, qb) = (u64::from(queued[a]) + 1, u64::from(queued[b]) + 1);
                (pa * qb).cmp(&(pb * qa)).then(b.cmp(&a))
            })
            .expect("an owner with waiting steps has a run with waiting steps");
        order.push(run);
        queued[run] += 1;
        left[run] -= 1;
        used[owner] += 1.0;
        owner_left[owner] -= 1;
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slots per candidate in an allocation.
    fn counts(order: &[usize], candidates: usize) -> Vec<u32> {
        let mut counts = vec![0; candidates];
        for &i in order {
            counts[i] += 1;
        }
        counts
    }

    fn run(owner: &str, priority: u8, on_queue: u32, waiting: u32) -> Candidate<'_> {
        Candidate { owner, priority, on_queue, waiting }
    }

    /// No usage yet, for owners starting together.
    fn fresh(_: &str) -> f64 {
        0.0
    }

    #[test]
    fn an_owner_beside_anothers_backfill_gets_the_room_until_it_used_as_much() {
        // A used the op for 14,000 steps lately and has 100,000 waiting; B just arrived with 100.
        let candidates = [run("a", 1, 40, 100_000), run("b", 1, 0, 100)];
        let usage = |owner: &str| if owner == "a" { 14_000.0 } else { 0.0 };
        let order = allocate(&candidates, 100, usage, &mut 0);
        assert_eq!(order, vec![1; 100], "all of B's 100 go first");
        let usage = |_: &str| 5.0;
        let counts = counts(&allocate(&candidates, 10, usage, &mut 0), 2);
        assert_eq!(counts, [5, 5], "level: they alternate");
    }

    #[test]
    fn usage_halves_over_its_half_life() {
        assert!((decayed(1000.0, USAGE_HALF_LIFE) - 500.0).abs() < 1e-9);
        assert!((decayed(1000.0, USAGE_HALF_LIFE * 3) - 125.0).abs() < 1e-9);
        assert_eq!(decayed(1000.0, Duration::ZERO), 1000.0);
    }

    #[test]
    fn equal_owners_alternate_even_one_slot_at_a_time() {
        let candidates = [run("a", 1, 3, 50), run("b", 1, 3, 50)];
        let mut turn = 0;
        let firsts: Vec<usize> = (0..4).map(|_| allocate(&candidates, 1, fresh, &mut turn)[0]).collect();
        assert_eq!(firsts, [0, 1, 0, 1]);
    }

    #[test]
    fn an_owners_runs_share_its_slots_by_priority() {
        let candidates = [run("a", 1, 0, 1000), run("a", 3, 0, 1000)];
        let counts = counts(&allocate(&candidates, 40, fresh, &mut 0), 2);
        assert_eq!(counts, [10, 30]);
    }

    #[test]
    fn an_owner_with_many_runs_gets_no_more_than_an_owner_with_one() {
        let candidates = [run("a", 1, 0, 100), run("a", 1, 0, 100), run("a", 1, 0, 100), run("b", 1, 0, 100)];
        let counts = counts(&allocate(&candidates, 60, fresh, &mut 0), 4);
        assert_eq!(counts[3], 30, "B's one run gets half the room");
        assert_eq!(counts[..3], [10, 10, 10]);
    }

    #[test]
    fn room_beyond_what_waits_is_left_free() {
        let candidates = [run("a", 1, 0, 2), run("b", 1, 0, 1)];
        let counts = counts(&allocate(&candidates, 10, fresh, &mut 0), 2);
        assert_eq!(counts, [2, 1]);
        assert!(allocate(&[], 5, fresh, &mut 0).is_empty());
    }

    #[test]
    fn a_high_priority_run_does_not_take_another_owners_share() {
        let candidates = [run("a", 10, 0, 1000), run("b", 1, 0, 1000)];
        let counts = counts(&allocate(&candidates, 20, fresh, &mut 0), 2);
        assert_eq!(counts, [10, 10], "priority weighs runs within an owner, not owners");
    }
}
