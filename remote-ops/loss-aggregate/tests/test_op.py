"""The handler as the worker calls it: a step message in, events and an output out."""

from __future__ import annotations

import threading
from typing import Any

import opflow
import pytest
from opflow.protocol import StepInput, StepMessage

from loss_aggregate import op

RUN_ID = "6f1c2a4e-8b1d-4c3a-9e2f-0a1b2c3d4e5f"


def price_paths_input(step_id: int, vol: float, seed: int, returns: list[float]) -> StepInput:
    output = {"vol": vol, "seed": seed, "paths": len(returns), "return_quantiles": returns}
    return StepInput(asset="paths", step_id=step_id, output=output, partition="aave", point={"vol": vol, "seed": seed})


def run_step(inputs: tuple[StepInput, ...], config: Any = None) -> tuple[Any, list[tuple[str, dict[str, Any]]]]:
    message = StepMessage(
        run_id=RUN_ID, step_id=40, attempt=1, op=op.ref, asset="losses", partition="aave", config=config, inputs=inputs
    )
    events: list[tuple[str, dict[str, Any]]] = []

    def emit(kind: str, fields: dict[str, Any], droppable: bool) -> bool:
        events.append((kind, fields))
        return True

    ctx = opflow.StepContext(message, emit, threading.Event())
    return op.call(ctx), events


def test_describes_itself() -> None:
    described = op.description()
    assert described["op"].startswith("loss-aggregate@")
    assert [f["name"] for f in described["config"]] == ["position", "levels", "buckets"]
    assert [f["default"] for f in described["config"]] == [1_000_000.0, [0.95, 0.99], 20]


def test_aggregates_price_paths_outputs() -> None:
    inputs = (
        price_paths_input(1, 0.9, 1, [-0.4, 0.0]),
        price_paths_input(2, 0.3, 2, [-0.1, -0.1, 0.1, 0.1]),
    )
    output, events = run_step(inputs, {"position": 100, "levels": [0.75, 0.5], "buckets": 5})
    assert output["protocol"] == "aave"
    assert [t["level"] for t in output["tail"]] == [0.5, 0.75]
    assert output["tail"][1]["var"] == pytest.approx(40.0)
    assert output["worst_scenario"]["point"] == {"vol": 0.9, "seed": 1}
    kinds = [kind for kind, _ in events]
    assert ("check_result", {"name": "es_at_least_var", "passed": True}) in events
    assert ("materialized", {"metadata": {"scenarios": 2, "paths": 6, "pooled_points": 6, "histogram_buckets": 5}}) in events
    progress = [fields["fraction"] for kind, fields in events if kind == "progress"]
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert "log" in kinds


def test_no_inputs_asks_for_deps() -> None:
    with pytest.raises(opflow.Fatal) as raised:
        run_step(())
    assert "add the price-paths asset to this asset's `deps`" in raised.value.message


def test_a_bad_input_names_its_asset_and_step() -> None:
    bad = StepInput(asset="prices", step_id=7, output={"rows": 3}, point={})
    with pytest.raises(opflow.Fatal) as raised:
        run_step((price_paths_input(1, 0.5, 1, [0.0]), bad))
    message = raised.value.message
    assert "`prices` (step 7)" in message and "`return_quantiles` is missing" in message
    assert "price-paths@^1.0" in message


def test_bad_config_names_the_key() -> None:
    with pytest.raises(opflow.Fatal) as raised:
        run_step((price_paths_input(1, 0.5, 1, [0.0]),), {"levels": [95]})
    assert "`levels`" in raised.value.message and "fix the asset's `config`" in raised.value.message
