"""``loss-aggregate``: the loss distribution of a position over every price-paths scenario of a
protocol, in Python. It is the example of a Python op doing real work next to Rust ones: in
``examples/mixed-risk.yaml`` it reads the same Rust ``price-paths`` outputs as the Rust
``var-report``, and adds what that report lacks: the expected loss, VaR and expected shortfall
at any confidence levels, each scenario's own losses, and a loss histogram.

The arithmetic lives in :mod:`loss_aggregate.losses`; this module reads the step, reports its
progress and checks, and turns bad input into a :class:`opflow.Fatal` that says what to fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import opflow

from . import losses

op = opflow.Op(
    "loss-aggregate",
    os.environ.get("OPFLOW_OP_VERSION", "1.0.0"),
    summary="Expected loss, VaR, expected shortfall and loss histogram of a position over price-paths scenarios",
    # Thousands of scenarios of 1,000 quantiles each aggregate in seconds; as var-report.
    longest_step_ms=5 * 60_000,
)


def _doc(text: str) -> dict[str, str]:
    return {"description": text}


@dataclass
class Config:
    position: float = field(default=1_000_000.0, metadata=_doc("Position size; losses are in the same units"))
    levels: list[float] = field(
        default_factory=lambda: [0.95, 0.99],
        metadata=_doc(f"Confidence levels of the VaR and expected shortfall, each in (0, 1); at most {losses.MAX_LEVELS}"),
    )
    buckets: int = field(default=20, metadata=_doc(f"Buckets of the loss histogram, 1 to {losses.MAX_BUCKETS}"))


@op.step
def run(ctx: opflow.StepContext, config: Config) -> dict[str, Any]:
    try:
        position = losses.check_position(config.position)
        levels = losses.check_levels(config.levels)
        buckets = losses.check_buckets(config.buckets)
    except losses.ConfigError as error:
        raise opflow.Fatal(f"invalid config for asset `{ctx.asset}`: {error}; fix the asset's `config` in the plan") from None
    if not ctx.inputs:
        raise opflow.Fatal(
            "loss-aggregate needs price-path inputs; add the price-paths asset to this asset's `deps`"
        )

    ctx.progress(0.0, f"reading {len(ctx.inputs)} scenarios")
    scenarios = []
    for step_input in ctx.inputs:
        try:
            scenarios.append(losses.read_scenario(step_input.output, step_input.point))
        except losses.InputError as error:
            raise opflow.Fatal(
                f"input from `{step_input.asset}` (step {step_input.step_id}) is not a price-paths summary: "
                f"{error}; make `{step_input.asset}` a price-paths@^1.0 asset or remove it from "
                f"`{ctx.asset}`'s `deps`"
            ) from None
    ctx.progress(0.1, f"read {len(scenarios)} scenarios")

    def scenario_done(done: int, total: int) -> None:
        if ctx.should_stop():
            raise opflow.Retryable(f"stopped as told after {done} of {total} scenarios")
        ctx.progress(0.1 + 0.8 * done / total, f"{done}/{total} scenarios")

    report = losses.aggregate(scenarios, position, levels, buckets, on_scenario=scenario_done)
    ctx.progress(1.0, "aggregated")

    worst_tail = report.tail[-1]
    ctx.info(
        f"{report.scenarios} scenarios, {report.paths} paths: expected loss {report.expected_loss:,.0f}, "
        f"VaR {worst_tail.level * 100:g}% {worst_tail.var:,.0f}, "
        f"expected shortfall {worst_tail.expected_shortfall:,.0f}"
    )
    below = losses.shortfall_below_var(report)
    detail = "; ".join(below[:5]) + (f"; and {len(below) - 5} more" if len(below) > 5 else "") if below else None
    ctx.check("es_at_least_var", not below, detail)
    ctx.materialized(
        {
            "scenarios": report.scenarios,
            "paths": report.paths,
            "pooled_points": report.pooled_points,
            "histogram_buckets": len(report.histogram),
        }
    )
    # Named like var-report's output, so the two reports of a protocol read alike.
    protocol = {"protocol": ctx.partition} if ctx.partition is not None else {}
    return protocol | losses.to_json(report)


def main() -> None:
    op.main()


if __name__ == "__main__":
    main()
