//! Fair order: which waiting steps fill the free room of an op version's publish window.
//!
//! The room goes to owners (teams) first, equally: each free slot goes to the owner with
//! the fewest messages on the queue, so an owner arriving behind another's backlog gets
//! every slot until it holds as many as the other. Within an owner, runs share by their
//! `priority`: the slot goes to the run with the highest `priority / (on queue + 1)`.
//! Ties go round the owners (and to the older run), so equal owners alternate slot by slot.
//! Pure: the publisher's window (`service::window`) feeds it and applies what it decides.

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

/// Hands out `room` slots to `candidates` (see the module docs); returns, in the order they
/// should be published, the index of the candidate each slot went to. `turn` rotates the
/// owners that tie, and is advanced, so that successive rounds of one slot alternate too.
pub fn allocate(candidates: &[Candidate<'_>], room: u32, turn: &mut usize) -> Vec<usize> {
    let mut owners: Vec<&str> = candidates.iter().map(|c| c.owner).collect();
    owners.sort_unstable();
    owners.dedup();
    // Per owner: its messages on the queue and its candidates.
    let mut on_queue: Vec<u64> = vec![0; owners.len()];
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); owners.len()];
    for (index, candidate) in candidates.iter().enumerate() {
        let owner = owners.binary_search(&candidate.owner).expect("every owner is listed");
        on_queue[owner] += u64::from(candidate.on_queue);
        members[owner].push(index);
    }
    let mut queued: Vec<u32> = candidates.iter().map(|c| c.on_queue).collect();
    let mut left: Vec<u32> = candidates.iter().map(|c| c.waiting).collect();
    let mut owner_left: Vec<u64> =
        members.iter().map(|m| m.iter().map(|&i| u64::from(left[i])).sum()).collect();
    let mut order = Vec::new();
    while order.len() < room as usize {
        // The owner with waiting steps and the fewest on the queue; ties by rotation.
        let start = *turn % owners.len().max(1);
        let owner = (0..owners.len())
            .map(|k| (start + k) % owners.len())
            .filter(|&o| owner_left[o] > 0)
            .min_by_key(|&o| on_queue[o]);
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
        on_queue[owner] += 1;
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

    #[test]
    fn an_owner_behind_anothers_backlog_gets_the_room_until_it_holds_as_many() {
        // A holds 40 on the queue and 100,000 waiting; B just arrived with 100.
        let candidates = [run("a", 1, 40, 100_000), run("b", 1, 0, 100)];
        let order = allocate(&candidates, 10, &mut 0);
        assert_eq!(order, vec![1; 10], "B is behind by 40: all 10 free slots are B's");
        let candidates = [run("a", 1, 5, 100_000), run("b", 1, 5, 100)];
        let counts = counts(&allocate(&candidates, 10, &mut 0), 2);
        assert_eq!(counts, [5, 5], "level: they alternate");
    }

    #[test]
    fn equal_owners_alternate_even_one_slot_at_a_time() {
        let candidates = [run("a", 1, 3, 50), run("b", 1, 3, 50)];
        let mut turn = 0;
        let firsts: Vec<usize> = (0..4).map(|_| allocate(&candidates, 1, &mut turn)[0]).collect();
        assert_eq!(firsts, [0, 1, 0, 1]);
    }

    #[test]
    fn an_owners_runs_share_its_slots_by_priority() {
        let candidates = [run("a", 1, 0, 1000), run("a", 3, 0, 1000)];
        let counts = counts(&allocate(&candidates, 40, &mut 0), 2);
        assert_eq!(counts, [10, 30]);
    }

    #[test]
    fn an_owner_with_many_runs_gets_no_more_than_an_owner_with_one() {
        let candidates = [run("a", 1, 0, 100), run("a", 1, 0, 100), run("a", 1, 0, 100), run("b", 1, 0, 100)];
        let counts = counts(&allocate(&candidates, 60, &mut 0), 4);
        assert_eq!(counts[3], 30, "B's one run gets half the room");
        assert_eq!(counts[..3], [10, 10, 10]);
    }

    #[test]
    fn room_beyond_what_waits_is_left_free() {
        let candidates = [run("a", 1, 0, 2), run("b", 1, 0, 1)];
        let counts = counts(&allocate(&candidates, 10, &mut 0), 2);
        assert_eq!(counts, [2, 1]);
        assert!(allocate(&[], 5, &mut 0).is_empty());
    }

    #[test]
    fn a_high_priority_run_does_not_take_another_owners_share() {
        let candidates = [run("a", 10, 0, 1000), run("b", 1, 0, 1000)];
        let counts = counts(&allocate(&candidates, 20, &mut 0), 2);
        assert_eq!(counts, [10, 10], "priority weighs runs within an owner, not owners");
    }
}
