"""Following the cancels stream: what counts, what is remembered, and stopping the step in hand."""

from __future__ import annotations

import json

import pytest

from opflow import cancels as cancels_module
from opflow.cancels import Cancels, cancel_error
from opflow.protocol import CancelRecord, decode_cancel

DISPATCHER = "opflow"
RUN = "0192f0c2-7a3b-7c01-8e5f-2b9d4a6c8e10"
OTHER_RUN = "0192f0c2-7a3b-7c01-8e5f-2b9d4a6c8e11"


def run_cancel(run_id: str = RUN) -> CancelRecord:
    return CancelRecord("run", run_id=run_id)


def step_cancel(step_id: int, attempt: int, run_id: str = RUN) -> CancelRecord:
    return CancelRecord("step", run_id=run_id, step_id=step_id, attempt=attempt)


class Stops:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def test_nothing_is_canceled_at_first() -> None:
    assert Cancels(DISPATCHER).canceled(RUN, 0, 1) is None


def test_a_run_cancel_cancels_every_step_and_attempt_of_the_run() -> None:
    cancels = Cancels(DISPATCHER)
    cancels.apply(run_cancel(), DISPATCHER)
    assert cancels.canceled(RUN, 0, 1) == "run"
    assert cancels.canceled(RUN, 99, 3) == "run"
    assert cancels.canceled(OTHER_RUN, 0, 1) is None


def test_a_step_cancel_cancels_that_attempt_only() -> None:
    cancels = Cancels(DISPATCHER)
    cancels.apply(step_cancel(12, 1), DISPATCHER)
    assert cancels.canceled(RUN, 12, 1) == "step"
    assert cancels.canceled(RUN, 12, 2) is None
    assert cancels.canceled(RUN, 13, 1) is None
    assert cancels.canceled(OTHER_RUN, 12, 1) is None


def test_a_run_cancel_wins_over_a_step_cancel() -> None:
    cancels = Cancels(DISPATCHER)
    cancels.apply(step_cancel(12, 1), DISPATCHER)
    cancels.apply(run_cancel(), DISPATCHER)
    assert cancels.canceled(RUN, 12, 1) == "run"


@pytest.mark.parametrize("user_id", ["opflow-op:/:noop@1.0.0", "guest", "", None])
def test_only_the_dispatchers_records_count(user_id: str | None) -> None:
    cancels = Cancels(DISPATCHER)
    stop = Stops()
    cancels.track(RUN, 12, 1, stop)
    cancels.apply(run_cancel(), user_id)
    cancels.apply(step_cancel(12, 1), user_id)
    assert cancels.canceled(RUN, 12, 1) is None
    assert stop.calls == 0
    assert cancels.ignored == 2


def test_markers_are_not_cancels_whoever_wrote_them() -> None:
    cancels = Cancels(DISPATCHER)
    stop = Stops()
    cancels.track(RUN, 12, 1, stop)
    cancels.apply(CancelRecord("marker", nonce="noop@1.0.0/host/1/x"), DISPATCHER)
    cancels.apply(CancelRecord("marker", nonce="other"), "opflow-op:/:noop@1.0.0")
    assert cancels.canceled(RUN, 12, 1) is None
    assert stop.calls == 0
    assert cancels.ignored == 0, "another worker's marker is not a forged cancel"


def test_the_tracked_step_is_stopped_when_its_run_is_canceled() -> None:
    cancels = Cancels(DISPATCHER)
    stop = Stops()
    cancels.track(RUN, 12, 1, stop)
    cancels.apply(run_cancel(OTHER_RUN), DISPATCHER)
    assert stop.calls == 0
    cancels.apply(run_cancel(), DISPATCHER)
    assert stop.calls == 1


def test_the_tracked_step_is_stopped_when_its_attempt_is_canceled() -> None:
    cancels = Cancels(DISPATCHER)
    stop = Stops()
    cancels.track(RUN, 12, 2, stop)
    cancels.apply(step_cancel(12, 1), DISPATCHER)
    cancels.apply(step_cancel(13, 2), DISPATCHER)
    assert stop.calls == 0
    cancels.apply(step_cancel(12, 2), DISPATCHER)
    assert stop.calls == 1


def test_an_untracked_step_is_not_stopped() -> None:
    cancels = Cancels(DISPATCHER)
    stop = Stops()
    cancels.track(RUN, 12, 1, stop)
    cancels.untrack()
    cancels.apply(run_cancel(), DISPATCHER)
    assert stop.calls == 0
    assert cancels.canceled(RUN, 12, 1) == "run", "still remembered for a later delivery"


def test_tracking_a_new_step_replaces_the_last() -> None:
    cancels = Cancels(DISPATCHER)
    first, second = Stops(), Stops()
    cancels.track(RUN, 1, 1, first)
    cancels.track(OTHER_RUN, 2, 1, second)
    cancels.apply(run_cancel(OTHER_RUN), DISPATCHER)
    assert (first.calls, second.calls) == (0, 1)


def test_records_decoded_from_the_stream_apply() -> None:
    cancels = Cancels(DISPATCHER)
    body = {"v": 1, "at": "2026-12-01T10:02:00.500Z", "kind": {"step": {"run_id": RUN, "step_id": 12, "attempt": 1}}}
    cancels.apply(decode_cancel(json.dumps(body).encode()), DISPATCHER)
    assert cancels.canceled(RUN, 12, 1) == "step"


def test_the_oldest_runs_and_steps_are_forgotten_past_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cancels_module, "KEPT_RUNS", 2)
    monkeypatch.setattr(cancels_module, "KEPT_STEPS", 2)
    cancels = Cancels(DISPATCHER)
    runs = [f"0192f0c2-7a3b-7c01-8e5f-2b9d4a6c8e2{i}" for i in range(3)]
    for run_id in runs:
        cancels.apply(run_cancel(run_id), DISPATCHER)
    assert [cancels.canceled(r, 0, 1) for r in runs] == [None, "run", "run"]
    for step_id in range(3):
        cancels.apply(step_cancel(step_id, 1), DISPATCHER)
    assert [cancels.canceled(RUN, s, 1) for s in range(3)] == [None, "step", "step"]


def test_the_limits_match_the_rust_sdk() -> None:
    assert cancels_module.KEPT_RUNS == 100_000


@pytest.mark.parametrize(
    ("canceled", "before", "text"),
    [
        ("run", True, "canceled: the run was canceled before this step started"),
        ("run", False, "canceled: the run was canceled while this step ran"),
        (
            "step",
            True,
            "canceled: the dispatcher canceled this step before this step started: a newer step of its "
            "concurrency key took its place",
        ),
        (
            "step",
            False,
            "canceled: the dispatcher canceled this step while this step ran: a newer step of its "
            "concurrency key took its place",
        ),
    ],
)
def test_cancel_error_texts(canceled: cancels_module.Canceled, before: bool, text: str) -> None:
    assert cancel_error(canceled, before) == text
