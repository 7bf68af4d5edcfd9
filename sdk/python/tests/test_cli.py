"""The op program's command line: durations, counts, ``--describe`` and exit codes. Nothing here
connects to a broker: every ``main`` call below returns before the worker would start."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field

import pytest

import opflow
from opflow.cli import at_least_one, duration, main, parser

OPTION_VARIABLES = (
    "OPFLOW_AMQP_URL",
    "OPFLOW_DISPATCHER_USER",
    "OPFLOW_HEARTBEAT",
    "OPFLOW_STOP_GRACE",
    "OPFLOW_HANDOVER_AFTER",
    "OPFLOW_LOG_FORMAT",
    "OPFLOW_MAX_STEPS",
    "OPFLOW_MAX_RSS_MB",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OPTION_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@dataclass
class Config:
    scenarios: int = field(default=1000, metadata={"description": "Scenarios simulated"})


def make_op() -> opflow.Op:
    op = opflow.Op("my-op", "1.0.0", summary="What it computes, in one line", longest_step_ms=60_000)

    @op.step
    def run(ctx: opflow.StepContext, config: Config) -> dict[str, int]:
        return {"scenarios": config.scenarios}

    return op


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10s", 10.0), ("500ms", 0.5), ("10m", 600.0), ("1h", 3600.0), ("1.5s", 1.5), ("7", 7.0), (" 2s ", 2.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "0s", "0", "0ms", "-1s", "10x", "1d", "10 sec", "1m30s", "ten", "1,5s"])
def test_durations_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        duration(text)


def test_counts() -> None:
    assert at_least_one("1") == 1
    assert at_least_one("250") == 250
    for text in ("0", "-3", "1.5", "x", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            at_least_one(text)


def test_describe_prints_the_description_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    op = make_op()
    assert main(op, ["--describe"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out) == op.description()
    assert json.loads(out) == {
        "op": "my-op@1.0.0",
        "summary": "What it computes, in one line",
        "config": [{"name": "scenarios", "type": "integer", "description": "Scenarios simulated", "default": 1000}],
        "schema_version": 1,
        "longest_step_ms": 60000,
    }
    assert out.startswith("{\n  "), "pretty-printed"
    assert out.endswith("}\n")


def test_describe_ignores_the_worker_options(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--describe", "--amqp-url", "amqp://u:p@nowhere:1/%2f", "--heartbeat", "1s", "--log-format", "json"]
    assert main(make_op(), argv) == 0
    assert json.loads(capsys.readouterr().out)["op"] == "my-op@1.0.0"


def test_describe_without_a_handler_is_invalid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(opflow.Op("bare", "1.0.0", summary="s"), ["--describe"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "has no handler" in captured.err


def test_running_without_a_handler_is_invalid_before_connecting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(opflow.Op("bare", "1.0.0", summary="s"), []) == 2
    assert "has no handler" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["--max-steps", "0"],
        ["--max-steps", "many"],
        ["--max-rss-mb", "-1"],
        ["--heartbeat", "0s"],
        ["--stop-grace", "soon"],
        ["--handover-after", "1d"],
        ["--log-format", "xml"],
        ["--no-such-option"],
    ],
)
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(make_op(), argv) == 2
    assert capsys.readouterr().err


def test_max_steps_zero_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(make_op(), ["--max-steps", "0"]) == 2
    assert "must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("variable", "value"),
    [("OPFLOW_MAX_STEPS", "0"), ("OPFLOW_MAX_RSS_MB", "none"), ("OPFLOW_HEARTBEAT", "0"), ("OPFLOW_STOP_GRACE", "1d")],
)
def test_bad_environment_values_exit_2(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(variable, value)
    assert main(make_op(), ["--describe"]) == 2
    assert repr(value) in capsys.readouterr().err


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(make_op(), ["--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--describe", "--amqp-url", "--dispatcher-user", "--heartbeat", "--stop-grace",
                   "--handover-after", "--log-format", "--max-steps", "--max-rss-mb"):
        assert option in out


def test_defaults() -> None:
    args = parser(make_op()).parse_args([])
    assert args.describe is False
    assert args.amqp_url == "amqp://guest:guest@127.0.0.1:5672/%2f"
    assert args.dispatcher_user is None
    assert (args.heartbeat, args.stop_grace, args.handover_after) == (10.0, 5.0, 600.0)
    assert args.log_format == "human"
    assert (args.max_steps, args.max_rss_mb) == (None, None)


def test_each_option_is_also_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "OPFLOW_AMQP_URL": "amqp://op:secret@rabbit:5672/opflow",
        "OPFLOW_DISPATCHER_USER": "opflow",
        "OPFLOW_HEARTBEAT": "3s",
        "OPFLOW_STOP_GRACE": "250ms",
        "OPFLOW_HANDOVER_AFTER": "20m",
        "OPFLOW_LOG_FORMAT": "json",
        "OPFLOW_MAX_STEPS": "100",
        "OPFLOW_MAX_RSS_MB": "512",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    args = parser(make_op()).parse_args([])
    assert args.amqp_url == "amqp://op:secret@rabbit:5672/opflow"
    assert args.dispatcher_user == "opflow"
    assert (args.heartbeat, args.stop_grace, args.handover_after) == (3.0, 0.25, 1200.0)
    assert args.log_format == "json"
    assert (args.max_steps, args.max_rss_mb) == (100, 512)
    overridden = parser(make_op()).parse_args(["--heartbeat", "1s", "--max-steps", "2"])
    assert (overridden.heartbeat, overridden.max_steps) == (1.0, 2)


def test_the_log_level_follows_opflow_py_log_then_a_plain_rust_log() -> None:
    from opflow.cli import log_level

    assert log_level({}) == "INFO"
    assert log_level({"OPFLOW_PY_LOG": "debug", "RUST_LOG": "warn"}) == "DEBUG"
    assert log_level({"RUST_LOG": "warn"}) == "WARNING"
    assert log_level({"RUST_LOG": "opflow=debug,lapin=warn"}) == "INFO"
    assert log_level({"OPFLOW_PY_LOG": "loud"}) == "INFO"
