//! The simulation itself, free of any opflow type so it can be tested alone.

use rand::{RngExt, SeedableRng, rngs::StdRng};
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

/// How many evenly spaced quantiles of the terminal return the output carries.
pub const RETURN_QUANTILES: usize = 1000;
const DAYS_PER_YEAR: f64 = 365.0;
const MAX_PATHS: u32 = 1_000_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Simulation {
    pub vol: f64,
    #[serde(default)]
    pub drift: f64,
    pub seed: u64,
    #[serde(default = "default_horizon_days")]
    pub horizon_days: u32,
    #[serde(default = "default_paths")]
    pub paths: u32,
    #[serde(default = "default_steps_per_day")]
    pub steps_per_day: u32,
    #[serde(default = "default_spot")]
    pub spot: f64,
}

fn default_horizon_days() -> u32 {
    30
}
fn default_paths() -> u32 {
    2000
}
fn default_steps_per_day() -> u32 {
    24
}
fn default_spot() -> f64 {
    1.0
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SimulationError {
    #[error("`vol` must be a finite number ≥ 0, got {0}")]
    Vol(f64),
    #[error("`spot` must be a finite number > 0, got {0}")]
    Spot(f64),
    #[error("`paths` must be between 1 and {MAX_PATHS}, got {0}")]
    Paths(u32),
    #[error("`horizon_days` and `steps_per_day` must be ≥ 1")]
    Steps,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub vol: f64,
    pub drift: f64,
    pub seed: u64,
    pub horizon_days: u32,
    pub paths: u32,
    pub steps_per_path: u32,
    pub spot: f64,
    pub mean_terminal: f64,
    pub std_terminal: f64,
    pub min_terminal: f64,
    pub max_terminal: f64,
    /// Terminal return `S_T / S_0 - 1` at probabilities `(i + 0.5) / n`, ascending.
    pub return_quantiles: Vec<f64>,
}

impl Simulation {
    pub fn validate(&self) -> Result<(), SimulationError> {
        if !self.vol.is_finite() || self.vol < 0.0 {
            return Err(SimulationError::Vol(self.vol));
        }
        if !self.spot.is_finite() || self.spot <= 0.0 {
            return Err(SimulationError::Spot(self.spot));
        }
        if self.paths == 0 || self.paths > MAX_PATHS {
            return Err(SimulationError::Paths(self.paths));
        }
        if self.horizon_days == 0 || self.steps_per_day == 0 {
            return Err(SimulationError::Steps);
        }
        Ok(())
    }

    /// Runs every path; `progress(done, total)` is called about ten times.
    pub fn run(&self, mut progress: impl FnMut(u32, u32)) -> Summary {
        let steps = self.horizon_days * self.steps_per_day;
        let dt = 1.0 / (DAYS_PER_YEAR * f64::from(self.steps_per_day));
        // Exact GBM step in log space: drift term and diffusion scale per step.
        let log_drift = (self.drift - 0.5 * self.vol * self.vol) * dt;
        let diffusion = self.vol * dt.sqrt();
        let mut rng = StdRng::seed_from_u64(self.seed);
        let report_every = (self.paths / 10).max(1);

        let mut terminal = Vec::with_capacity(self.paths as usize);
        for path in 0..self.paths {
            let mut log_price = 0.0;
            for _ in 0..steps {
                let z: f64 = rng.sample(StandardNormal);
                log_price += log_drift + diffusion * z;
            }
            terminal.push(self.spot * log_price.exp());
            if (path + 1) % report_every == 0 || path + 1 == self.paths {
                progress(path + 1, self.paths);
            }
        }

        let n = terminal.len() as f64;
        let mean = terminal.iter().sum::<f64>() / n;
        let variance = terminal.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        terminal.sort_by(f64::total_cmp);
        let returns: Vec<f64> = terminal.iter().map(|s| s / self.spot - 1.0).collect();
        Summary {
            vol: self.vol,
            drift: self.drift,
            seed: self.seed,
            horizon_days: self.horizon_days,
            paths: self.paths,
            steps_per_path: steps,
            spot: self.spot,
            mean_terminal: mean,
            std_terminal: variance.sqrt(),
            min_terminal: terminal[0],
            max_terminal: terminal[terminal.len() - 1],
            return_quantiles: evenly_spaced_quantiles(&returns, RETURN_QUANTILES),
        }
    }
}

/// A seed for `partition`'s own stream of paths: FNV-1a over the partition key, folded into
/// `seed`. Stable across builds and platforms, unlike `std`'s hasher.
pub fn mix_seed(seed: u64, partition: &str) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = partition.bytes().fold(FNV_OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME));
    seed ^ hash
}

/// `count` quantiles of an ascending `sorted` sample at probabilities `(i + 0.5) / count`,
/// by nearest rank. With fewer samples than `count`, the sample itself.
fn evenly_spaced_quantiles(sorted: &[f64], count: usize) -> Vec<f64> {
    if sorted.len() <= count {
        return sorted.to_vec();
    }
    (0..count)
        .map(|i| {
            let p = (i as f64 + 0.5) / count as f64;
            let rank = (p * sorted.len() as f64).floor() as usize;
            sorted[rank.min(sorted.len() - 1)]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim(vol: f64, seed: u64) -> Simulation {
        Simulation { vol, drift: 0.0, seed, horizon_days: 30, paths: 4000, steps_per_day: 4, spot: 100.0 }
    }

    #[test]
    fn same_seed_same_paths() {
        let a = sim(0.6, 7).run(|_, _| {});
        let b = sim(0.6, 7).run(|_, _| {});
        assert_eq!(a.return_quantiles, b.return_quantiles);
        let c = sim(0.6, 8).run(|_, _| {});
        assert_ne!(a.return_quantiles, c.return_quantiles);
    }

    #[test]
    fn terminal_mean_matches_gbm_expectation() {
        // E[S_T] = S_0 · exp(drift · T) = S_0 with zero drift; the standard error of the
        // mean over 4,000 paths at 60% vol over 30 days is about 0.27.
        let s = sim(0.6, 1).run(|_, _| {});
        assert!((s.mean_terminal - 100.0).abs() < 1.5, "mean {}", s.mean_terminal);
        // Std of S_T ≈ S_0 · sqrt(exp(σ²T) − 1) ≈ 17.3 here.
        assert!((s.std_terminal - 17.3).abs() < 1.5, "std {}", s.std_terminal);
    }

    #[test]
    fn quantiles_are_ascending_and_capped() {
        let s = sim(0.4, 3).run(|_, _| {});
        assert_eq!(s.return_quantiles.len(), RETURN_QUANTILES);
        assert!(s.return_quantiles.windows(2).all(|w| w[0] <= w[1]));
        assert!(s.return_quantiles[0] > -1.0);
    }

    #[test]
    fn partitions_get_their_own_stream() {
        assert_ne!(mix_seed(1, "aave"), mix_seed(1, "maker"));
        assert_eq!(mix_seed(1, "aave"), mix_seed(1, "aave"));
        assert_ne!(mix_seed(1, "aave"), mix_seed(2, "aave"));
    }

    #[test]
    fn zero_vol_is_deterministic() {
        let s = Simulation { drift: 0.0, ..sim(0.0, 1) }.run(|_, _| {});
        assert!(s.return_quantiles.iter().all(|r| r.abs() < 1e-12));
    }

    #[test]
    fn progress_is_reported_up_to_completion() {
        let mut seen = Vec::new();
        sim(0.4, 1).run(|done, total| seen.push((done, total)));
        assert_eq!(seen.last(), Some(&(4000, 4000)));
        assert!(seen.len() >= 10);
    }

    #[test]
    fn bad_parameters_are_named() {
        assert_eq!(sim(-1.0, 1).validate(), Err(SimulationError::Vol(-1.0)));
        assert_eq!(Simulation { paths: 0, ..sim(0.1, 1) }.validate(), Err(SimulationError::Paths(0)));
        assert_eq!(Simulation { spot: 0.0, ..sim(0.1, 1) }.validate(), Err(SimulationError::Spot(0.0)));
    }
}
