//! Steps from definitions: an asset's steps are `partitions × sweep points`, numbered so
//! that step `i` of an asset is partition `i / sweep_size`, sweep point `i % sweep_size`,
//! the last sweep parameter varying fastest. Nothing is materialized per step.

use serde_json::Map;

use super::{CompiledAsset, CompiledPlan, StepSpec};

impl CompiledAsset {
    /// Points in the sweep's cartesian product; 1 without a sweep.
    pub fn sweep_size(&self) -> u32 {
        self.sweep.iter().map(|p| p.values.len()).product()
    }

    /// Partition keys; 1 when unpartitioned.
    pub fn partition_count(&self) -> u32 {
        (self.partition_keys.len() as u32).max(1)
    }

    pub fn step_count(&self) -> u32 {
        self.partition_count() * self.sweep_size()
    }

    /// Step `i` (0-based within the asset).
    ///
    /// # Panics
    ///
    /// If `i >= self.step_count()`.
    pub fn step(&self, i: u32) -> StepSpec<'_> {
        assert!(i < self.step_count(), "step {i} of asset `{}` out of {}", self.name, self.step_count());
        let sweep_size = self.sweep_size();
        let partition = (!self.partition_keys.is_empty())
            .then(|| self.partition_keys[(i / sweep_size) as usize].as_str());
        let mut rest = i % sweep_size;
        let mut picks = vec![0u32; self.sweep.len()];
        for (slot, param) in picks.iter_mut().zip(&self.sweep).rev() {
            let n = param.values.len();
            *slot = rest % n;
            rest /= n;
        }
        let point: Map<_, _> = self
            .sweep
            .iter()
            .zip(picks)
            .map(|(param, pick)| (param.name.clone(), param.values.get(pick)))
            .collect();
        StepSpec { partition, point }
    }
}

impl CompiledPlan {
    /// How many upstream steps step `i` of asset `asset` waits for: per dependency, the
    /// upstream steps of the same partition (partition mapped) or all of them (fan-in).
    pub fn pending_upstream(&self, asset: usize, _i: u32) -> u32 {
        self.assets[asset]
            .deps
            .iter()
            .map(|dep| {
                let upstream = &self.assets[dep.upstream];
                if dep.partition_mapped { upstream.sweep_size() } else { upstream.step_count() }
            })
            .sum()
    }

    /// The assets that depend on `asset`, with whether each dependency is partition mapped.
    pub fn downstream_of(&self, asset: usize) -> Vec<(usize, bool)> {
        self.assets
            .iter()
            .enumerate()
            .flat_map(|(index, a)| {
                a.deps.iter().filter(|d| d.upstream == asset).map(move |d| (index, d.partition_mapped))
            })
            .collect()
    }
}
