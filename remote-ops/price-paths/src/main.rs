//! `price-paths`: Monte Carlo price paths of a collateral asset under geometric Brownian
//! motion. Outputs summary statistics and the distribution of terminal returns as evenly
//! spaced quantiles, small enough to hand to a downstream risk report.

mod simulate;

use opflow_worker::{Op, StepContext, StepError};
use serde_json::{Value, json};

use crate::simulate::{Simulation, SimulationError};

async fn run(ctx: StepContext) -> Result<Value, StepError> {
    let mut simulation: Simulation = ctx.params()?;
    simulation.validate().map_err(|e: SimulationError| StepError::fatal(e))?;
    // Each partition (e.g. each protocol) draws its own paths for the same `seed`; the
    // output still reports the plan's seed.
    let plan_seed = simulation.seed;
    if let Some(partition) = ctx.partition() {
        simulation.seed = simulate::mix_seed(simulation.seed, partition);
    }
    let progress = ctx.clone();
    // The simulation is CPU-bound: keep it off the async threads that publish events.
    let summary = tokio::task::spawn_blocking(move || {
        simulation.run(|done, total| {
            progress.progress(done as f64 / total as f64, format!("{done}/{total} paths"));
        })
    })
    .await
    .map_err(StepError::retryable)?;
    let summary = simulate::Summary { seed: plan_seed, ..summary };
    ctx.materialized(json!({ "paths": summary.paths, "steps_per_path": summary.steps_per_path }));
    serde_json::to_value(summary).map_err(StepError::fatal)
}

fn main() -> std::process::ExitCode {
    Op::new("price-paths", opflow_worker::op_version!())
        .summary("Monte Carlo price paths of a collateral asset (geometric Brownian motion)")
        .config_field("vol", "number", "Annualised volatility, e.g. 0.65", Value::Null)
        .config_field("drift", "number", "Annualised drift", json!(0.0))
        .config_field(
            "seed",
            "integer",
            "Random seed; the same seed and partition give the same paths",
            Value::Null,
        )
        .config_field("horizon_days", "integer", "Days simulated", json!(30))
        .config_field("paths", "integer", "Number of paths", json!(2000))
        .config_field("steps_per_day", "integer", "Time steps per day", json!(24))
        .config_field("spot", "number", "Starting price", json!(1.0))
        // 100,000 paths over a year of days take seconds; ten minutes is ample headroom.
        .longest_step(std::time::Duration::from_secs(10 * 60))
        .handler(run)
        .main()
}
