"""What the SDK writes, checked against the JSON Schemas generated from the Rust types
(``protocol/schemas/``): every event kind, a marker, and the ``--describe`` output. Skipped
without the ``jsonschema`` package, or outside the opflow repository."""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

import opflow
from opflow.cli import main
from opflow.context import StepContext
from opflow.protocol import Event, StepMessage, decode_step, encode_marker

from .test_protocol import FULL, SMALLEST

import jsonschema  # type: ignore[import-untyped]  # in the test command's virtualenv

SCHEMAS = Path(__file__).resolve().parents[3] / "protocol" / "schemas"
if not SCHEMAS.is_dir():  # pragma: no cover - the SDK tested outside its repository
    pytest.skip(f"no protocol schemas at {SCHEMAS}", allow_module_level=True)

RUN_ID = "0192f0c2-7a3b-7c01-8e5f-2b9d4a6c8e10"
WORKER = "price-paths@1.0.0/worker-a/4242"


def validator(name: str) -> Any:
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def assert_valid(name: str, body: bytes) -> dict[str, Any]:
    instance = json.loads(body)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator(name).iter_errors(instance)]
    assert not errors, errors
    assert isinstance(instance, dict)
    return instance


def event(kind: str, fields: dict[str, Any], **extra: Any) -> Event:
    return Event(RUN_ID, 7, 1, WORKER, kind, fields, **extra)


def from_context(report: str, *args: Any) -> list[Event]:
    """The events a StepContext report becomes, as the worker builds them."""
    message = StepMessage(run_id=RUN_ID, step_id=7, attempt=1, op="price-paths@1.0.0", asset="paths")
    events: list[Event] = []

    def emit(kind: str, fields: dict[str, Any], droppable: bool) -> bool:
        events.append(event(kind, fields))
        return True

    getattr(StepContext(message, emit, threading.Event()), report)(*args)
    return events


STARTED_AT = datetime(2026, 12, 1, 10, 0, 0, 20511, tzinfo=timezone.utc)

EVENTS = [
    event("started", {"op": "price-paths@1.0.0"}, at=STARTED_AT),
    event("progress", {"fraction": 0.5, "message": "1000/2000 paths"}),
    event("progress", {"fraction": 1.0}),
    event("log", {"level": "warn", "message": "3 prices were missing; interpolated"}),
    event("materialized", {"metadata": {"paths": 2000, "steps_per_path": 720}}),
    event("check_result", {"name": "non_empty", "passed": False, "detail": "0 rows"}),
    event("check_result", {"name": "non_empty", "passed": True}),
    event("succeeded", {"output": {"var95": 0.1, "paths": 2000}}, started_at=STARTED_AT),
    event("succeeded", {"output": None}, started_at=STARTED_AT),
    event("succeeded", {"output": {"mean": math.nan, "tail": [math.inf]}}, started_at=STARTED_AT),
    event("failed", {"error": "the price feed answered 503", "retryable": True}, started_at=STARTED_AT),
    event("heartbeat", {}),
    event("abandoned", {"reason": "the broker closed the worker's channel"}),
]


@pytest.mark.parametrize("e", EVENTS, ids=lambda e: f"{e.kind}-{len(e.fields)}")
def test_every_event_kind_fits_the_event_schema(e: Event) -> None:
    body = assert_valid("event", e.encode())
    assert body["kind"] == "heartbeat" or list(body["kind"]) == [e.kind]


@pytest.mark.parametrize(
    ("report", "args"),
    [
        ("log", ("info", "x" * 20_000)),
        ("info", ("hello",)),
        ("warn", ("careful",)),
        ("progress", (math.nan, "m" * 5000)),
        ("progress", (0.3,)),
        ("materialized", ({"rows": 3, "ratio": math.inf},)),
        ("check", ("fresh", True)),
        ("check", ("fresh", False, "3 days old")),
    ],
)
def test_what_a_handler_reports_fits_the_event_schema(report: str, args: tuple[Any, ...]) -> None:
    (e,) = from_context(report, *args)
    assert_valid("event", e.encode())


def test_the_schema_check_catches_a_wrong_event() -> None:
    bad = json.loads(event("log", {"level": "warning", "message": "x"}).encode())
    assert list(validator("event").iter_errors(bad))
    unknown_kind = json.loads(event("paused", {}).encode())
    assert list(validator("event").iter_errors(unknown_kind))


def test_a_marker_fits_the_cancel_record_schema() -> None:
    body = assert_valid("cancel-record", encode_marker("price-paths@1.0.0/worker-a/4242/6f1c2d3e"))
    assert body["kind"] == {"marker": {"nonce": "price-paths@1.0.0/worker-a/4242/6f1c2d3e"}}


@dataclass
class Config:
    vol: float = field(metadata={"description": "Annualised volatility, e.g. 0.65"})
    horizon_days: int = field(default=30, metadata={"description": "Days simulated"})
    levels: list[float] = field(default_factory=lambda: [0.95])


def test_the_description_fits_the_op_description_schema(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OPFLOW_HEARTBEAT", "OPFLOW_STOP_GRACE", "OPFLOW_HANDOVER_AFTER", "OPFLOW_MAX_STEPS", "OPFLOW_MAX_RSS_MB"):
        monkeypatch.delenv(name, raising=False)
    op = opflow.Op("price-paths", "1.0.1", summary="Monte Carlo price paths", longest_step_ms=600_000, reuse_from="^1.0")

    @op.step
    def run(ctx: StepContext, config: Config) -> None:
        pass

    assert_valid("op-description", json.dumps(op.description()).encode())
    assert main(op, ["--describe"]) == 0
    assert_valid("op-description", capsys.readouterr().out.encode())


def test_the_step_messages_the_sdk_reads_are_the_schemas() -> None:
    # docs/protocol.md §3's examples, as test_protocol.py reads them.
    smallest, full = SMALLEST, json.dumps(FULL).encode()
    for body in (smallest, full):
        assert_valid("step-message", body)
        decode_step(body)
