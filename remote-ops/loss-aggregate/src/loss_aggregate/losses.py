"""Scenario loss aggregation, free of any opflow type so it can be tested alone.

A ``price-paths`` step summarises one scenario (a volatility and a seed) as evenly spaced
quantiles of the terminal return. Pooling the scenarios, each weighing the same however many
quantiles it carries, gives the loss distribution of a position over all of them: its mean,
its value at risk and expected shortfall at each confidence level, and a histogram. VaR and
expected shortfall follow the definitions of ``var-report`` (``remote-ops/var-report/src/risk.rs``),
so the Rust and the Python op agree on the same inputs, up to rounding.

Losses are in position units and positive when money is lost: a return ``r`` on a position
``p`` loses ``-r * p``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

MAX_LEVELS = 5
MAX_BUCKETS = 100
MAX_SCENARIO_ROWS = 50
"""Scenarios listed one by one in the output, worst first; with these three caps the output
stays far below the protocol's 64 KiB, however large the sweep."""

WeightedReturns = list[tuple[float, float]]
"""``(return, weight)`` pairs, ascending by return: the worst outcome first."""


class InputError(ValueError):
    """An upstream output that is not a price-paths summary; the message says what is wrong."""


class ConfigError(ValueError):
    """A config value the aggregation cannot use; the message names the key."""


@dataclass(frozen=True)
class Scenario:
    """One price-paths step's outcome."""

    point: dict[str, Any]
    """The sweep point naming the scenario, e.g. ``{"vol": 0.65, "seed": 2}``."""
    paths: int
    returns: tuple[float, ...]
    """Terminal returns at evenly spaced probabilities, ascending."""


@dataclass(frozen=True)
class TailRisk:
    level: float
    var: float
    """The loss not exceeded with probability ``level``."""
    expected_shortfall: float
    """The mean loss in the worst ``1 - level`` of outcomes."""


@dataclass(frozen=True)
class ScenarioLosses:
    point: dict[str, Any]
    paths: int
    expected_loss: float
    tail: tuple[TailRisk, ...]


@dataclass(frozen=True)
class Bucket:
    low: float
    high: float
    probability: float


@dataclass(frozen=True)
class LossReport:
    position: float
    scenarios: int
    paths: int
    pooled_points: int
    expected_loss: float
    tail: tuple[TailRisk, ...]
    worst_scenario: ScenarioLosses
    """The scenario with the largest VaR at the highest level."""
    scenario_losses: tuple[ScenarioLosses, ...]
    """Every scenario, worst first."""
    histogram: tuple[Bucket, ...]


# Reading inputs and config.


def read_scenario(output: object, point: Mapping[str, Any]) -> Scenario:
    """The scenario in a price-paths step's output. ``point`` is the step's sweep point; without
    one, the output's own ``vol`` and ``seed`` name the scenario."""
    if not isinstance(output, dict):
        raise InputError(f"expected an object, got {_show(output)}")
    quantiles = output.get("return_quantiles")
    if not isinstance(quantiles, list):
        raise InputError("`return_quantiles` is missing or not a list")
    if not quantiles:
        raise InputError("`return_quantiles` is empty")
    returns = []
    for index, value in enumerate(quantiles):
        if not _is_number(value) or not math.isfinite(value):
            raise InputError(f"`return_quantiles[{index}]` is {_show(value)}, not a finite number")
        returns.append(float(value))
    paths = output.get("paths")
    if not _is_int(paths) or paths < 1:
        raise InputError(f"`paths` is {_show(paths)}, not a whole number ≥ 1")
    name = dict(point) if point else {key: output[key] for key in ("vol", "seed") if key in output}
    # price-paths sends them ascending; sorting costs little and protects every quantile below.
    return Scenario(point=name, paths=paths, returns=tuple(sorted(returns)))


def check_levels(levels: Sequence[object]) -> tuple[float, ...]:
    """The confidence levels, ascending and without repeats."""
    if not levels:
        raise ConfigError("`levels` is empty; give at least one confidence level, e.g. [0.95, 0.99]")
    checked = set()
    for value in levels:
        if not _is_number(value) or not 0.0 < value < 1.0:
            raise ConfigError(f"`levels` holds {_show(value)}; each level must be a number between 0 and 1, e.g. 0.99")
        checked.add(float(value))
    if len(checked) > MAX_LEVELS:
        raise ConfigError(f"`levels` holds {len(checked)} levels; at most {MAX_LEVELS} are reported")
    return tuple(sorted(checked))


def check_position(position: float) -> float:
    if not math.isfinite(position) or position <= 0:
        raise ConfigError(f"`position` must be a positive number, got {position}")
    return float(position)


def check_buckets(buckets: int) -> int:
    if not 1 <= buckets <= MAX_BUCKETS:
        raise ConfigError(f"`buckets` must be between 1 and {MAX_BUCKETS}, got {buckets}")
    return buckets


# The aggregation.


def pool(scenarios: Sequence[Scenario]) -> WeightedReturns:
    """Every scenario's returns, each scenario weighing 1 in all, worst return first."""
    pooled = [(r, 1.0 / len(s.returns)) for s in scenarios for r in s.returns]
    pooled.sort(key=lambda pair: pair[0])
    return pooled


def total_weight(pooled: WeightedReturns) -> float:
    # A plain running sum, as var-report adds them (Python 3.12's sum() compensates).
    total = 0.0
    for _, weight in pooled:
        total += weight
    return total


def expected_loss(pooled: WeightedReturns, position: float) -> float:
    mean_return = 0.0
    for value, weight in pooled:
        mean_return += value * weight
    return loss(mean_return / total_weight(pooled), position)


def tail_risk(pooled: WeightedReturns, position: float, level: float) -> TailRisk:
    """VaR and expected shortfall at ``level``."""
    total = total_weight(pooled)
    var = loss(_quantile(pooled, total, 1.0 - level), position)
    tail = (1.0 - level) * total
    covered = tail_sum = 0.0
    for value, weight in pooled:
        if covered >= tail:
            break
        take = min(weight, tail - covered)
        tail_sum += value * take
        covered += take
    shortfall = loss(tail_sum / covered, position) if covered > 0 else var
    return TailRisk(level=level, var=var, expected_shortfall=shortfall)


def scenario_losses(scenario: Scenario, position: float, levels: Sequence[float]) -> ScenarioLosses:
    own = pool([scenario])
    return ScenarioLosses(
        point=scenario.point,
        paths=scenario.paths,
        expected_loss=expected_loss(own, position),
        tail=tuple(tail_risk(own, position, level) for level in levels),
    )


def histogram(pooled: WeightedReturns, position: float, buckets: int) -> tuple[Bucket, ...]:
    """The probability of a loss in each of ``buckets`` equal ranges from the smallest loss to
    the largest; one bucket when every loss is the same."""
    total = total_weight(pooled)
    smallest = loss(pooled[-1][0], position)
    largest = loss(pooled[0][0], position)
    if largest <= smallest:
        return (Bucket(low=smallest, high=largest, probability=1.0),)
    width = (largest - smallest) / buckets
    mass = [0.0] * buckets
    for value, weight in pooled:
        # The largest loss falls exactly on the upper edge: it belongs to the last bucket.
        index = min(int((loss(value, position) - smallest) / width), buckets - 1)
        mass[index] += weight
    return tuple(
        Bucket(
            low=smallest + i * width,
            high=largest if i == buckets - 1 else smallest + (i + 1) * width,
            probability=mass[i] / total,
        )
        for i in range(buckets)
    )


def aggregate(
    scenarios: Sequence[Scenario],
    position: float,
    levels: Sequence[float],
    buckets: int,
    on_scenario: Callable[[int, int], None] | None = None,
) -> LossReport:
    """The loss report over ``scenarios`` (at least one). ``levels`` ascending, as
    :func:`check_levels` returns them. ``on_scenario(done, total)`` is called after each
    scenario's own losses, to report progress or to stop by raising."""
    if not scenarios:
        raise ValueError("no scenarios to aggregate")
    pooled = pool(scenarios)
    rows = []
    for done, scenario in enumerate(scenarios, start=1):
        rows.append(scenario_losses(scenario, position, levels))
        if on_scenario is not None:
            on_scenario(done, len(scenarios))
    # Stable: of equally bad scenarios, the first input stays first.
    rows.sort(key=lambda row: row.tail[-1].var, reverse=True)
    return LossReport(
        position=position,
        scenarios=len(scenarios),
        paths=sum(s.paths for s in scenarios),
        pooled_points=len(pooled),
        expected_loss=expected_loss(pooled, position),
        tail=tuple(tail_risk(pooled, position, level) for level in levels),
        worst_scenario=rows[0],
        scenario_losses=tuple(rows),
        histogram=histogram(pooled, position, buckets),
    )


def shortfall_below_var(report: LossReport) -> list[str]:
    """Where an expected shortfall is below its VaR (it never should be), described."""
    tolerance = 1e-9 * max(1.0, report.position)
    found = []
    for where, tail in [("all scenarios", report.tail)] + [
        (f"scenario {_point_text(row.point)}", row.tail) for row in report.scenario_losses
    ]:
        for risk in tail:
            if risk.expected_shortfall < risk.var - tolerance:
                found.append(
                    f"{where} at {risk.level:g}: expected shortfall {risk.expected_shortfall:.2f} "
                    f"< VaR {risk.var:.2f}"
                )
    return found


# The output.


def to_json(report: LossReport) -> dict[str, Any]:
    """The step's output; ``scenario_losses`` keeps the worst :data:`MAX_SCENARIO_ROWS`."""
    return {
        "position": report.position,
        "scenarios": report.scenarios,
        "paths": report.paths,
        "expected_loss": report.expected_loss,
        "tail": [_tail_json(t) for t in report.tail],
        "worst_scenario": {
            "point": report.worst_scenario.point,
            "level": report.worst_scenario.tail[-1].level,
            "var": report.worst_scenario.tail[-1].var,
        },
        "scenario_losses": [
            {
                "point": row.point,
                "paths": row.paths,
                "expected_loss": row.expected_loss,
                "tail": [_tail_json(t) for t in row.tail],
            }
            for row in report.scenario_losses[:MAX_SCENARIO_ROWS]
        ],
        "loss_histogram": [{"from": b.low, "to": b.high, "probability": b.probability} for b in report.histogram],
    }


def loss(value: float, position: float) -> float:
    """The loss of ``position`` on return ``value``; ``0.0 -`` turns a -0.0 into 0.0."""
    return 0.0 - value * position


def _tail_json(risk: TailRisk) -> dict[str, float]:
    return {"level": risk.level, "var": risk.var, "expected_shortfall": risk.expected_shortfall}


def _quantile(pooled: WeightedReturns, total: float, p: float) -> float:
    """The smallest return whose cumulative weight reaches ``p`` of ``total``."""
    target = p * total
    cumulative = 0.0
    for value, weight in pooled:
        cumulative += weight
        if cumulative >= target:
            return value
    return pooled[-1][0]


def _point_text(point: Mapping[str, Any]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(point.items())) or "(no point)"


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _show(value: object) -> str:
    text = json.dumps(value) if value is None or isinstance(value, (bool, int, float, str, list, dict)) else repr(value)
    return text if len(text) <= 80 else text[:80] + "…"
