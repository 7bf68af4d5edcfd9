//! Value at risk over a mixture of scenarios, free of any opflow type so it can be tested
//! alone. Each scenario weighs the same, however many quantiles it carries.

use serde::{Deserialize, Serialize};

/// The part of a `price-paths` output this report reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Scenario {
    pub vol: f64,
    pub seed: u64,
    pub paths: u32,
    /// Ascending terminal returns at evenly spaced probabilities.
    pub return_quantiles: Vec<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub position: f64,
    pub scenarios: usize,
    pub paths: u64,
    /// Loss not exceeded with 95 % probability, in position units (positive = loss).
    pub var_95: f64,
    pub var_99: f64,
    /// Mean loss in the worst 5 % of outcomes.
    pub expected_shortfall_95: f64,
    pub worst_scenario: WorstScenario,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WorstScenario {
    pub vol: f64,
    pub seed: u64,
    pub var_99: f64,
}

/// Builds the report. `scenarios` must not be empty, nor any scenario's quantiles.
pub fn report(scenarios: &[Scenario], position: f64) -> Report {
    let mut pooled: Vec<(f64, f64)> = scenarios
        .iter()
        .filter(|s| !s.return_quantiles.is_empty())
        .flat_map(|s| {
            let weight = 1.0 / s.return_quantiles.len() as f64;
            s.return_quantiles.iter().map(move |r| (*r, weight))
        })
        .collect();
    pooled.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total: f64 = pooled.iter().map(|(_, w)| w).sum();

    let var = |level: f64| -quantile(&pooled, total, 1.0 - level) * position;
    let tail = 0.05 * total;
    let (mut covered, mut tail_sum) = (0.0, 0.0);
    for (r, w) in &pooled {
        if covered >= tail {
            break;
        }
        let take = w.min(tail - covered);
        tail_sum += r * take;
        covered += take;
    }
    let expected_shortfall_95 = if covered > 0.0 { -(tail_sum / covered) * position } else { 0.0 };

    let worst_scenario = scenarios
        .iter()
        .filter(|s| !s.return_quantiles.is_empty())
        .map(|s| {
            let own: Vec<(f64, f64)> = s.return_quantiles.iter().map(|r| (*r, 1.0)).collect();
            WorstScenario {
                vol: s.vol,
                seed: s.seed,
                var_99: -quantile(&own, own.len() as f64, 0.01) * position,
            }
        })
        .max_by(|a, b| a.var_99.total_cmp(&b.var_99))
        .unwrap_or(WorstScenario { vol: 0.0, seed: 0, var_99: 0.0 });

    Report {
        position,
        scenarios: scenarios.len(),
        paths: scenarios.iter().map(|s| u64::from(s.paths)).sum(),
        var_95: var(0.95),
        var_99: var(0.99),
        expected_shortfall_95,
        worst_scenario,
    }
}

/// The smallest value whose cumulative weight reaches `p` of `total`, over an ascending
/// weighted sample.
fn quantile(sorted: &[(f64, f64)], total: f64, p: f64) -> f64 {
    let target = p * total;
    let mut cumulative = 0.0;
    for (value, weight) in sorted {
        cumulative += weight;
        if cumulative >= target {
            return *value;
        }
    }
    sorted.last().map_or(0.0, |(v, _)| *v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uniform(vol: f64, lo: f64, hi: f64, n: usize) -> Scenario {
        let return_quantiles = (0..n).map(|i| lo + (hi - lo) * (i as f64 + 0.5) / n as f64).collect();
        Scenario { vol, seed: 1, paths: n as u32, return_quantiles }
    }

    #[test]
    fn var_of_a_uniform_loss_distribution() {
        // Returns uniform on [-0.5, 0.5]: the 5 % quantile is -0.45, the 1 % one -0.49.
        let r = report(&[uniform(0.5, -0.5, 0.5, 1000)], 1000.0);
        assert!((r.var_95 - 450.0).abs() < 1.0, "{r:?}");
        assert!((r.var_99 - 490.0).abs() < 1.0, "{r:?}");
        // The mean of the worst 5 %: uniform on [-0.5, -0.45] → -0.475.
        assert!((r.expected_shortfall_95 - 475.0).abs() < 1.0, "{r:?}");
    }

    #[test]
    fn scenarios_weigh_the_same_whatever_their_sample_size() {
        // A wide and a narrow scenario; the narrow one has ten times the points.
        let r = report(&[uniform(0.9, -0.5, 0.5, 100), uniform(0.1, -0.05, 0.05, 1000)], 1.0);
        let r_swapped = report(&[uniform(0.1, -0.05, 0.05, 1000), uniform(0.9, -0.5, 0.5, 100)], 1.0);
        assert_eq!(r.var_99, r_swapped.var_99);
        // Half of the mixture's mass is the wide scenario, so its 1 % tail is the wide
        // scenario's 2 % tail: -0.48.
        assert!((r.var_99 - 0.48).abs() < 0.011, "{r:?}");
        assert_eq!(r.worst_scenario.vol, 0.9);
    }

    #[test]
    fn var_99_is_never_below_var_95() {
        let r = report(&[uniform(0.3, -0.2, 0.3, 500), uniform(0.6, -0.4, 0.6, 500)], 1e6);
        assert!(r.var_99 >= r.var_95);
        assert_eq!(r.scenarios, 2);
        assert_eq!(r.paths, 1000);
    }
}
