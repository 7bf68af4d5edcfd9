"""The aggregation on small samples whose losses can be checked by hand."""

from __future__ import annotations

import json

import pytest

from loss_aggregate.losses import (
    MAX_BUCKETS,
    MAX_LEVELS,
    MAX_SCENARIO_ROWS,
    ConfigError,
    InputError,
    LossReport,
    Scenario,
    TailRisk,
    aggregate,
    check_buckets,
    check_levels,
    check_position,
    expected_loss,
    histogram,
    pool,
    read_scenario,
    shortfall_below_var,
    tail_risk,
    to_json,
)

# On a position of 100 these returns lose 40, 20, 0 and -20, each with probability 1/4.
FOUR = (-0.4, -0.2, 0.0, 0.2)


def scenario(returns: tuple[float, ...], vol: float = 0.5, seed: int = 1) -> Scenario:
    return Scenario(point={"vol": vol, "seed": seed}, paths=len(returns), returns=tuple(sorted(returns)))


def uniform(lo: float, hi: float, n: int, vol: float = 0.5) -> Scenario:
    """Returns evenly spread over [lo, hi], as price-paths' quantiles of a uniform law."""
    return scenario(tuple(lo + (hi - lo) * (i + 0.5) / n for i in range(n)), vol=vol)


def price_paths_output(returns: list[object]) -> dict[str, object]:
    """A price-paths step's output (remote-ops/price-paths/src/simulate.rs, `Summary`)."""
    return {
        "vol": 0.65, "drift": 0.0, "seed": 2, "horizon_days": 30, "paths": 2000, "steps_per_path": 720,
        "spot": 1.0, "mean_terminal": 1.0, "std_terminal": 0.18, "min_terminal": 0.5, "max_terminal": 1.9,
        "return_quantiles": returns,
    }


# Losses of one scenario.


def test_expected_loss_is_the_mean_loss() -> None:
    # (40 + 20 + 0 - 20) / 4
    assert expected_loss(pool([scenario(FOUR)]), 100.0) == pytest.approx(10.0)


def test_var_and_expected_shortfall_of_four_outcomes() -> None:
    pooled = pool([scenario(FOUR)])
    # The worst half: losses 40 and 20. VaR is the better of them, ES their mean.
    half = tail_risk(pooled, 100.0, 0.5)
    assert half.var == pytest.approx(20.0)
    assert half.expected_shortfall == pytest.approx(30.0)
    # The worst quarter, and anything beyond it, is the loss of 40 alone.
    for level in (0.75, 0.9, 0.99):
        risk = tail_risk(pooled, 100.0, level)
        assert risk.var == pytest.approx(40.0)
        assert risk.expected_shortfall == pytest.approx(40.0)


def test_var_of_a_uniform_loss_distribution() -> None:
    # The same case as var-report's test: returns uniform on [-0.5, 0.5], position 1000.
    pooled = pool([uniform(-0.5, 0.5, 1000)])
    at_95 = tail_risk(pooled, 1000.0, 0.95)
    at_99 = tail_risk(pooled, 1000.0, 0.99)
    assert at_95.var == pytest.approx(450.0, abs=1.0)
    assert at_99.var == pytest.approx(490.0, abs=1.0)
    # The mean of the worst 5 %: returns uniform on [-0.5, -0.45], so -0.475.
    assert at_95.expected_shortfall == pytest.approx(475.0, abs=1.0)
    assert at_99.expected_shortfall == pytest.approx(495.0, abs=1.0)
    assert expected_loss(pooled, 1000.0) == pytest.approx(0.0, abs=1e-9)


def test_zero_returns_lose_nothing_and_never_minus_zero() -> None:
    pooled = pool([scenario((0.0, 0.0, 0.0))])
    risk = tail_risk(pooled, 1e6, 0.99)
    assert (risk.var, risk.expected_shortfall) == (0.0, 0.0)
    assert json.dumps(risk.var) == "0.0"


# Pooling scenarios.

# Scenario A: a loss of 40 or nothing. Scenario B: a loss of 10 or a gain of 10, with twice
# the points. Each weighs a half in the pool, whatever its number of points.
A = scenario((-0.4, 0.0), vol=0.9, seed=1)
B = scenario((-0.1, -0.1, 0.1, 0.1), vol=0.3, seed=2)


def test_scenarios_weigh_the_same_whatever_their_points() -> None:
    pooled = pool([A, B])
    # The worst quarter of the pool is A's loss of 40 (half of A). Counting points instead,
    # B's four would outweigh A's two and the worst quarter would reach B's loss of 10.
    assert tail_risk(pooled, 100.0, 0.75).var == pytest.approx(40.0)
    # The worst half: A's 40 (weight 1/4) then B's two losses of 10 (1/8 each).
    half = tail_risk(pooled, 100.0, 0.5)
    assert half.var == pytest.approx(10.0)
    assert half.expected_shortfall == pytest.approx(25.0)
    # Mean loss: A's 20 and B's 0, halved.
    assert expected_loss(pooled, 100.0) == pytest.approx(10.0)


def test_the_order_of_the_inputs_does_not_matter() -> None:
    forward = aggregate([A, B], 100.0, (0.5, 0.75), 4)
    backward = aggregate([B, A], 100.0, (0.5, 0.75), 4)
    assert forward.tail == backward.tail
    assert forward.histogram == backward.histogram
    assert forward.worst_scenario == backward.worst_scenario


def test_aggregate_reports_each_scenario_worst_first() -> None:
    seen: list[tuple[int, int]] = []
    report = aggregate([B, A], 100.0, (0.5, 0.75), 4, on_scenario=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 2), (2, 2)]
    assert (report.scenarios, report.paths, report.pooled_points) == (2, 6, 6)
    assert [row.point for row in report.scenario_losses] == [{"vol": 0.9, "seed": 1}, {"vol": 0.3, "seed": 2}]
    # The worst scenario is A, by its own VaR at the highest level: 40 against B's 10.
    worst = report.worst_scenario
    assert worst.point == {"vol": 0.9, "seed": 1}
    assert worst.expected_loss == pytest.approx(20.0)
    assert [risk.var for risk in worst.tail] == pytest.approx([40.0, 40.0])
    assert report.scenario_losses[1].expected_loss == pytest.approx(0.0)


def test_aggregate_can_be_stopped_between_scenarios() -> None:
    class Stop(Exception):
        pass

    def stop(done: int, total: int) -> None:
        raise Stop

    with pytest.raises(Stop):
        aggregate([A, B], 100.0, (0.99,), 4, on_scenario=stop)


# The histogram.


def test_histogram_of_four_outcomes() -> None:
    # Losses -20, 0, 20, 40 in three buckets of 20: [-20, 0), [0, 20), [20, 40].
    buckets = histogram(pool([scenario(FOUR)]), 100.0, 3)
    assert [edge for b in buckets for edge in (b.low, b.high)] == pytest.approx([-20.0, 0.0, 0.0, 20.0, 20.0, 40.0])
    assert [b.probability for b in buckets] == pytest.approx([0.25, 0.25, 0.5])


def test_histogram_weighs_scenarios_alike_and_sums_to_one() -> None:
    # Losses 40 (1/4), 10 (1/4), 0 (1/4), -10 (1/4) in five buckets of 10.
    buckets = histogram(pool([A, B]), 100.0, 5)
    assert [b.probability for b in buckets] == pytest.approx([0.25, 0.25, 0.25, 0.0, 0.25])
    assert sum(b.probability for b in buckets) == pytest.approx(1.0)
    assert all(left.high == pytest.approx(right.low) for left, right in zip(buckets, buckets[1:]))


def test_a_single_loss_makes_a_single_bucket() -> None:
    buckets = histogram(pool([scenario((-0.1, -0.1))]), 100.0, 20)
    assert len(buckets) == 1
    assert (buckets[0].low, buckets[0].high, buckets[0].probability) == pytest.approx((10.0, 10.0, 1.0))


# Reading inputs and config.


def test_reads_a_price_paths_output_named_by_its_point() -> None:
    read = read_scenario(price_paths_output([0.1, -0.3, 0.0]), {"vol": 0.65, "seed": 2, "drift": 0.0})
    assert read.point == {"vol": 0.65, "seed": 2, "drift": 0.0}
    assert read.paths == 2000
    assert read.returns == (-0.3, 0.0, 0.1)


def test_without_a_point_the_output_names_the_scenario() -> None:
    assert read_scenario(price_paths_output([0.0]), {}).point == {"vol": 0.65, "seed": 2}


@pytest.mark.parametrize(
    ("output", "complaint"),
    [
        ([1, 2], "expected an object"),
        ({"paths": 10}, "`return_quantiles` is missing"),
        ({**price_paths_output([]), "paths": 10}, "`return_quantiles` is empty"),
        (price_paths_output([0.1, True]), "`return_quantiles[1]` is true"),
        (price_paths_output([0.1, "0.2"]), "`return_quantiles[1]` is \"0.2\""),
        ({**price_paths_output([0.1]), "paths": 0}, "`paths` is 0"),
        ({"return_quantiles": [0.1]}, "`paths` is null"),
    ],
)
def test_bad_inputs_say_what_is_wrong(output: object, complaint: str) -> None:
    with pytest.raises(InputError) as raised:
        read_scenario(output, {})
    assert complaint in str(raised.value)


def test_levels_are_sorted_and_deduplicated() -> None:
    assert check_levels([0.99, 0.95, 0.99]) == (0.95, 0.99)
    assert check_levels([1 / 2]) == (0.5,)


@pytest.mark.parametrize("levels", [[], [1.0], [0], [0.95, True], [0.95, "0.99"], [-0.5]])
def test_bad_levels_are_named(levels: list[object]) -> None:
    with pytest.raises(ConfigError) as raised:
        check_levels(levels)
    assert "`levels`" in str(raised.value)


def test_too_many_levels() -> None:
    with pytest.raises(ConfigError):
        check_levels([0.5 + i / 100 for i in range(MAX_LEVELS + 1)])


def test_position_and_buckets_are_checked() -> None:
    assert check_position(1000) == 1000.0
    assert check_buckets(MAX_BUCKETS) == MAX_BUCKETS
    for position in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ConfigError):
            check_position(position)
    for buckets in (0, MAX_BUCKETS + 1):
        with pytest.raises(ConfigError):
            check_buckets(buckets)


# The check and the output.


def test_shortfall_is_never_below_var() -> None:
    report = aggregate([uniform(-0.5, 0.5, 1000, vol=0.9), uniform(-0.2, 0.3, 777, vol=0.3), A, B], 1e6, (0.5, 0.95, 0.99), 20)
    assert shortfall_below_var(report) == []


def test_a_shortfall_below_var_is_described() -> None:
    report = aggregate([A], 100.0, (0.75,), 4)
    broken = LossReport(**{**report.__dict__, "tail": (TailRisk(level=0.75, var=40.0, expected_shortfall=30.0),)})
    assert shortfall_below_var(broken) == ["all scenarios at 0.75: expected shortfall 30.00 < VaR 40.00"]


def test_output_fields() -> None:
    output = to_json(aggregate([A, B], 100.0, (0.5, 0.75), 5))
    assert set(output) == {
        "position", "scenarios", "paths", "expected_loss", "tail", "worst_scenario", "scenario_losses", "loss_histogram",
    }
    assert output["tail"][1] == pytest.approx({"level": 0.75, "var": 40.0, "expected_shortfall": 40.0})
    assert output["worst_scenario"]["point"] == {"vol": 0.9, "seed": 1}
    assert output["worst_scenario"]["var"] == pytest.approx(40.0)
    assert set(output["scenario_losses"][0]) == {"point", "paths", "expected_loss", "tail"}
    assert set(output["loss_histogram"][0]) == {"from", "to", "probability"}
    assert len(output["loss_histogram"]) == 5


def test_output_stays_small_for_a_large_sweep() -> None:
    scenarios = [uniform(-0.1 - i / 1000, 0.1, 200, vol=i / 100) for i in range(MAX_SCENARIO_ROWS * 2)]
    levels = check_levels([0.5, 0.9, 0.95, 0.99, 0.999])
    output = to_json(aggregate(scenarios, 1e6, levels, MAX_BUCKETS))
    assert output["scenarios"] == MAX_SCENARIO_ROWS * 2
    assert len(output["scenario_losses"]) == MAX_SCENARIO_ROWS
    # The widest scenario is the worst, and listed first.
    assert output["scenario_losses"][0]["point"]["vol"] == pytest.approx((MAX_SCENARIO_ROWS * 2 - 1) / 100)
    assert len(json.dumps(output, separators=(",", ":"))) < 64 * 1024
