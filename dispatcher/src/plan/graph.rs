//! A compiled plan's dependencies at the step level: which steps a step's success unlocks,
//! which its final failure skips, and whose outputs it receives. Pure computation on
//! ranges of step ids; the store turns the answers into statements.
//!
//! **Unlocking is linear in the number of steps, not of step pairs.** A downstream step
//! waits on *groups*, one per dependency: the upstream asset's steps of its partition (a
//! partition-mapped dependency) or all of them (a fan-in). A group of more than one step
//! has a counter (the store's `dep_groups`); each upstream success decrements its group's
//! counter once, and only the success that empties a group decrements the waiting steps,
//! by one each. So a 5,000 × 5,000 fan-in writes 5,000 counter updates and 5,000 step rows,
//! not 25 million. A group of one step needs no counter: its success unlocks directly.
//!
//! Runs stored before groups existed count every upstream step in `pending_upstream`; for
//! them [`PlanGraph::downstream_ranges`] gives the per-step unlocks they were stored with.

use std::collections::BTreeSet;

use opflow_protocol::StepId;

use super::compiled::{CompiledAsset, CompiledPlan};

/// An inclusive range of step ids within one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StepRange {
    pub first: u32,
    pub last: u32,
}

impl StepRange {
    /// `count` steps from `first`.
    ///
    /// # Panics
    ///
    /// If `count` is 0: every asset has at least one step.
    pub fn of(first: u32, count: u32) -> Self {
        assert!(count > 0, "an empty step range");
        Self { first, last: first + count - 1 }
    }

    pub fn len(&self) -> u32 {
        self.last - self.first + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn contains(&self, step: StepId) -> bool {
        (self.first..=self.last).contains(&step.0)
    }
}

/// The upstream steps a dependency waits on as one: an asset's steps of one partition, or
/// all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DepGroup {
    /// The upstream asset's index in the plan.
    pub upstream: u32,
    /// The partition index, or [`DepGroup::WHOLE`] for every step of the asset.
    pub partition: i32,
}

impl DepGroup {
    pub const WHOLE: i32 = -1;
}

/// What one upstream success does downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unlock {
    /// Decrement each step in the range (the success completed a one-step group).
    Range(StepRange),
    /// Decrement the group's counter; when it reaches zero, decrement the steps of
    /// [`PlanGraph::group_ranges`].
    Group(DepGroup),
}

/// A plan and its downstream adjacency.
#[derive(Debug)]
pub struct PlanGraph {
    plan: CompiledPlan,
    /// For each asset: (downstream asset, partition mapped).
    downstream: Vec<Vec<(usize, bool)>>,
}

impl PlanGraph {
    pub fn new(plan: CompiledPlan) -> Self {
        let mut downstream = vec![Vec::new(); plan.assets.len()];
        for (index, asset) in plan.assets.iter().enumerate() {
            for dep in &asset.deps {
                downstream[dep.upstream].push((index, dep.partition_mapped));
            }
        }
        Self { plan, downstream }
    }

    pub fn plan(&self) -> &CompiledPlan {
        &self.plan
    }

    pub fn into_plan(self) -> CompiledPlan {
        self.plan
    }

    /// The asset a step belongs to: assets own contiguous step ranges in plan order.
    pub fn asset_index(&self, step: StepId) -> usize {
        self.plan.assets.partition_point(|a| a.first_step <= step.0).saturating_sub(1)
    }

    pub fn asset(&self, index: usize) -> &CompiledAsset {
        &self.plan.assets[index]
    }

    /// The step's asset, its position within the asset, and its partition index (if partitioned).
    pub fn locate(&self, step: StepId) -> (usize, u32, Option<u32>) {
        let index = self.asset_index(step);
        let asset = &self.plan.assets[index];
        let within = step.0 - asset.first_step;
        let partition = (!asset.partition_keys.is_empty()).then(|| within / asset.sweep_size());
        (index, within, partition)
    }

    /// The steps of `asset` in partition `partition`, or all of them.
    pub fn range_of(&self, asset: usize, partition: Option<u32>) -> StepRange {
        let a = &self.plan.assets[asset];
        match partition {
            Some(p) => StepRange::of(a.first_step + p * a.sweep_size(), a.sweep_size()),
            None => StepRange::of(a.first_step, a.step_count()),
        }
    }

    /// How many groups a step of `asset` waits on: one per dependency.
    pub fn pending_upstream(&self, asset: usize) -> u32 {
        self.plan.assets[asset].deps.len() as u32
    }

    /// Every group that needs a counter (more than one step), with its size.
    pub fn dep_groups(&self) -> Vec<(DepGroup, u32)> {
        let mut groups = Vec::new();
        for (index, asset) in self.plan.assets.iter().enumerate() {
            let upstream = index as u32;
            let (mapped, whole) = self.downstream_kinds(index);
            if mapped && asset.sweep_size() > 1 {
                groups.extend(
                    (0..asset.partition_count())
                        .map(|p| (DepGroup { upstream, partition: p as i32 }, asset.sweep_size())),
                );
            }
            if whole && asset.step_count() > 1 {
                groups.push((DepGroup { upstream, partition: DepGroup::WHOLE }, asset.step_count()));
            }
        }
        groups
    }

    /// Whether some downstream asset depends on `asset` partition to partition, and whether
    /// some depends on all of it.
    fn downstream_kinds(&self, asset: usize) -> (bool, bool) {
        let edges = &self.downstream[asset];
        (edges.iter().any(|&(_, mapped)| mapped), edges.iter().any(|&(_, mapped)| !mapped))
    }

    /// What the success of `step` unlocks; see the module docs.
    pub fn unlocks(&self, step: StepId) -> Vec<Unlock> {
        let (index, _, partition) = self.locate(step);
        let asset = &self.plan.assets[index];
        let (mapped, whole) = self.downstream_kinds(index);
        let mut unlocks = Vec::new();
        if mapped {
            let group = DepGroup { upstream: index as u32, partition: partition.map_or(0, |p| p as i32) };
            if asset.sweep_size() > 1 {
                unlocks.push(Unlock::Group(group));
            } else {
                unlocks.extend(self.group_ranges(group).into_iter().map(Unlock::Range));
            }
        }
        if whole {
            let group = DepGroup { upstream: index as u32, partition: DepGroup::WHOLE };
            if asset.step_count() > 1 {
                unlocks.push(Unlock::Group(group));
            } else {
                unlocks.extend(self.group_ranges(group).into_iter().map(Unlock::Range));
            }
        }
        unlocks
    }

    /// The steps waiting on `group`: one range per downstream asset with that kind of
    /// dependency. Each waits on the group once.
    pub fn group_ranges(&self, group: DepGroup) -> Vec<StepRange> {
        let mapped = group.partition != DepGroup::WHOLE;
        let partition = mapped.then_some(group.partition as u32);
        self.downstream
            .get(group.upstream as usize)
            .into_iter()
            .flatten()
            .filter(|&&(_, m)| m == mapped)
            .map(|&(down, _)| self.range_of(down, partition))
            .collect()
    }

    /// For runs stored before groups: the steps that wait on `step` itself, one range per
    /// downstream asset. Each waits on it once.
    pub fn downstream_ranges(&self, step: StepId) -> Vec<StepRange> {
        let (index, _, partition) = self.locate(step);
        self.downstream[index]
            .iter()
            .map(|&(down, mapped)| self.range_of(down, if mapped { partition } else { None }))
            .collect()
    }

    /// For runs stored before groups: how many upstream steps a step of `asset` waits on.
    pub fn pending_upstream_steps(&self, asset: usize) -> u32 {
        self.plan.assets[asset]
            .deps
            .iter()
            .map(|dep| {
                let upstream = &self.plan.assets[dep.upstream];
                if dep.partition_mapped { upstream.sweep_size() } else { upstream.step_count() }
            })
            .sum()
    }

    /// Every step that transitively depends on `step`: what a final failure skips.
    pub fn skip_ranges(&self, step: StepId) -> Vec<StepRange> {
        let (index, _, partition) = self.locate(step);
        // (asset, partition or all); "all" of an asset subsumes any single partition of it.
        let mut seen: BTreeSet<(usize, Option<u32>)> = BTreeSet::new();
        let mut frontier: Vec<(usize, Option<u32>)> = vec![(index, partition)];
        while let Some((asset, partition)) = frontier.pop() {
            for &(down, mapped) in &self.downstream[asset] {
                let next = (down, if mapped { partition } else { None });
                if seen.contains(&(down, None)) || !seen.insert(next) {
                    continue;
                }
                frontier.push(next);
            }
        }
        seen.iter()
            .filter(|(asset, partition)| partition.is_none() || !seen.contains(&(*asset, None)))
            .map(|&(asset, partition)| self.range_of(asset, partition))
            .collect()
    }

    /// The upstream steps whose outputs `step` receives, per upstream asset.
    pub fn input_ranges(&self, step: StepId) -> Vec<(usize, StepRange)> {
        let (index, _, partition) = self.locate(step);
        self.plan.assets[index]
            .deps
            .iter()
            .map(|dep| {
                (
                    dep.upstream,
                    self.range_of(dep.upstream, if dep.partition_mapped { partition } else { None }),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, path::Path};

    use proptest::prelude::*;

    use super::*;
    use crate::plan::{compile, tests::registry};

    fn graph(source: &str) -> PlanGraph {
        PlanGraph::new(compile(source, Path::new("p.yaml"), &registry()).unwrap_or_else(|e| panic!("{e}")))
    }

    /// Runs every upstream success through `unlocks` and the group counters, in `order`,
    /// and checks each step becomes ready exactly when its last upstream step succeeded.
    fn check_unlocking(graph: &PlanGraph, order: &[u32]) {
        let plan = graph.plan();
        let mut pending: Vec<u32> =
            (0..plan.step_count).map(|s| graph.pending_upstream(graph.asset_index(StepId(s)))).collect();
        let mut counters: HashMap<DepGroup, u32> = graph.dep_groups().into_iter().collect();
        let mut done = vec![false; plan.step_count as usize];
        let decrement = |pending: &mut Vec<u32>, range: StepRange| {
            for s in range.first..=range.last {
                pending[s as usize] = pending[s as usize].checked_sub(1).expect("never below zero");
            }
        };
        for &step in order {
            // A step runs only once ready.
            assert_eq!(pending[step as usize], 0, "step {step} ran before its upstream");
            done[step as usize] = true;
            for unlock in graph.unlocks(StepId(step)) {
                match unlock {
                    Unlock::Range(range) => decrement(&mut pending, range),
                    Unlock::Group(group) => {
                        let left = counters.get_mut(&group).expect("a counter for every group");
                        *left -= 1;
                        if *left == 0 {
                            for range in graph.group_ranges(group) {
                                decrement(&mut pending, range);
                            }
                        }
                    }
                }
            }
        }
        assert!(pending.iter().all(|&p| p == 0), "everything ran: {pending:?}");
        assert!(counters.values().all(|&c| c == 0), "every group emptied: {counters:?}");
    }

    /// A topological order of all steps: a ready step is picked by `pick` each time.
    fn order(graph: &PlanGraph, mut pick: impl FnMut(usize) -> usize) -> Vec<u32> {
        // Upstream steps of each step, by brute force from the plan's definition.
        let plan = graph.plan();
        let mut needs: Vec<Vec<u32>> = vec![Vec::new(); plan.step_count as usize];
        for up in 0..plan.step_count {
            for range in graph.downstream_ranges(StepId(up)) {
                for down in range.first..=range.last {
                    needs[down as usize].push(up);
                }
            }
        }
        let mut done = vec![false; needs.len()];
        let mut order = Vec::new();
        while order.len() < needs.len() {
            let ready: Vec<u32> = (0..needs.len() as u32)
                .filter(|&s| !done[s as usize] && needs[s as usize].iter().all(|&u| done[u as usize]))
                .collect();
            let step = ready[pick(ready.len())];
            done[step as usize] = true;
            order.push(step);
        }
        order
    }

    const MIXED: &str = "name: p\nassets:\n  \
        - name: a\n    op: noop@1.0.0\n    partitions: [x, y]\n    sweep: {k: [1, 2, 3]}\n  \
        - name: b\n    op: noop@1.0.0\n    partitions: [x, y]\n    deps: [a]\n  \
        - name: c\n    op: noop@1.0.0\n    deps: [a, b]\n  \
        - name: d\n    op: noop@1.0.0\n    deps: [c]\n    sweep: {j: [1, 2]}\n";

    #[test]
    fn every_step_is_unlocked_once_after_all_its_upstream_steps() {
        let graph = graph(MIXED);
        check_unlocking(&graph, &order(&graph, |_| 0));
        check_unlocking(&graph, &order(&graph, |n| n - 1));
    }

    #[test]
    fn a_wide_fan_in_uses_one_counter_not_one_write_per_pair() {
        let graph = graph(
            "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    sweep: {k: {from: 1, to: 5000}}\n  \
             - name: b\n    op: noop@1.0.0\n    deps: [a]\n    sweep: {j: {from: 1, to: 5000}}\n",
        );
        assert_eq!(graph.dep_groups(), [(DepGroup { upstream: 0, partition: DepGroup::WHOLE }, 5000)]);
        assert_eq!(
            graph.unlocks(StepId(17)),
            [Unlock::Group(DepGroup { upstream: 0, partition: DepGroup::WHOLE })]
        );
        assert_eq!(
            graph.group_ranges(DepGroup { upstream: 0, partition: DepGroup::WHOLE }),
            [StepRange::of(5000, 5000)]
        );
        assert_eq!(graph.pending_upstream(1), 1);
    }

    #[test]
    fn one_step_groups_unlock_directly() {
        let graph = graph(
            "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    partitions: [x, y]\n  \
             - name: b\n    op: noop@1.0.0\n    partitions: [x, y]\n    deps: [a]\n",
        );
        assert!(graph.dep_groups().is_empty());
        assert_eq!(graph.unlocks(StepId(1)), [Unlock::Range(StepRange::of(3, 1))]);
    }

    #[test]
    fn a_failure_skips_everything_downstream_and_no_more() {
        let graph = graph(MIXED);
        // Step 0 is a[x]{k=1}: b[x], then c and d.
        assert_eq!(
            graph.skip_ranges(StepId(0)),
            [StepRange::of(6, 1), StepRange::of(8, 1), StepRange::of(9, 2)]
        );
    }

    proptest! {
        #[test]
        fn unlocking_holds_in_any_order(seed in proptest::collection::vec(0usize..1000, 64)) {
            let graph = graph(MIXED);
            let mut picks = seed.into_iter().cycle();
            let order = order(&graph, |n| picks.next().unwrap_or(0) % n);
            check_unlocking(&graph, &order);
        }
    }
}
