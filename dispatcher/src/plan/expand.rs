//! Steps from definitions: an asset's steps are `partitions × sweep points`, numbered so
//! that step `i` of an asset is partition `i / sweep_size`, sweep point `i % sweep_size`,
//! the last sweep parameter varying fastest. Nothing is materialized per step.

use serde_json::Map;

use super::compiled::{CompiledAsset, StepSpec};

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
