//! `var-report`: fans in every price-path scenario of one protocol and reports value at
//! risk at 95 % and 99 % for a position, plus the expected shortfall and the worst scenario.

mod risk;

use opflow_worker::{Op, StepContext, StepError};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::risk::{Scenario, report};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// Position size in currency units; VaR is reported in the same units.
    #[serde(default = "default_position")]
    position: f64,
}

fn default_position() -> f64 {
    1_000_000.0
}

async fn run(ctx: StepContext) -> Result<Value, StepError> {
    let params: Params = ctx.params()?;
    if !params.position.is_finite() || params.position <= 0.0 {
        return Err(StepError::fatal(format!(
            "`position` must be a positive number, got {}",
            params.position
        )));
    }
    let scenarios = ctx
        .inputs()
        .iter()
        .map(|input| {
            serde_json::from_value::<Scenario>(input.output.clone()).map_err(|e| {
                StepError::fatal(format!(
                    "input from `{}` (step {}) is not a price-paths summary: {e}",
                    input.asset, input.step_id
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if scenarios.is_empty() {
        return Err(StepError::fatal(
            "var-report needs price-path inputs; add the price-paths asset to this asset's `deps`",
        ));
    }
    let report = report(&scenarios, params.position);
    ctx.check("var_99_at_least_var_95", report.var_99 >= report.var_95, None);
    let mut output = serde_json::to_value(&report).map_err(StepError::fatal)?;
    if let (Some(protocol), Value::Object(map)) = (ctx.partition(), &mut output) {
        map.insert("protocol".into(), json!(protocol));
    }
    Ok(output)
}

fn main() -> std::process::ExitCode {
    Op::new("var-report", opflow_worker::op_version!())
        .summary("Value at risk (95% and 99%) of a position over all price-path scenarios of a protocol")
        .config_field("position", "number", "Position size; VaR is in the same units", json!(1_000_000.0))
        .longest_step(std::time::Duration::from_secs(5 * 60))
        .handler(run)
        .main()
}
