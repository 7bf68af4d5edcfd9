"""What a handler sees of its step: its facts, its reports and their budget, and stopping."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import pytest

from opflow.context import MAX_TELEMETRY_BYTES, MAX_TELEMETRY_EVENTS, StepContext
from opflow.protocol import MAX_LOG_LINE_BYTES, MAX_PROGRESS_MESSAGE_BYTES, StepInput, StepMessage

RUN_ID = "0192f0c2-7a3b-7c01-8e5f-2b9d4a6c8e10"
DROPPED_END = "; log less, or write long output to the op's own storage"


class Sent:
    """The worker's side of ``emit``: what the context handed over, and whether to take it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any], bool]] = []
        self.full = False

    def __call__(self, kind: str, fields: dict[str, Any], droppable: bool) -> bool:
        if self.full and droppable:
            return False
        self.events.append((kind, fields, droppable))
        return True

    def kinds(self) -> list[str]:
        return [kind for kind, _, _ in self.events]

    def last(self) -> dict[str, Any]:
        return self.events[-1][1]


def make(**fields: Any) -> tuple[StepContext, Sent, threading.Event]:
    defaults: dict[str, Any] = {"run_id": RUN_ID, "step_id": 3, "attempt": 2, "op": "noop@1.0.0", "asset": "a"}
    sent = Sent()
    stopping = threading.Event()
    return StepContext(StepMessage(**{**defaults, **fields}), sent, stopping), sent, stopping


def test_the_step_facts() -> None:
    inputs = (StepInput(asset="up", step_id=1, output={"x": 1}),)
    ctx, _, _ = make(partition="p", point={"seed": 1}, config={"vol": 0.2}, inputs=inputs)
    assert (ctx.run_id, ctx.step_id, ctx.attempt, ctx.asset, ctx.partition) == (RUN_ID, 3, 2, "a", "p")
    assert ctx.point == {"seed": 1}
    assert ctx.inputs == inputs
    assert ctx.params == {"vol": 0.2, "seed": 1}
    assert ctx.label == "a[p]{seed=1}"


# Reports


def test_log_lines() -> None:
    ctx, sent, _ = make()
    ctx.log("debug", "d")
    ctx.info("i")
    ctx.warn("w")
    ctx.log("error", "e")
    assert sent.events == [
        ("log", {"level": "debug", "message": "d"}, True),
        ("log", {"level": "info", "message": "i"}, True),
        ("log", {"level": "warn", "message": "w"}, True),
        ("log", {"level": "error", "message": "e"}, True),
    ]


def test_a_log_line_is_cut_to_16_kib() -> None:
    ctx, sent, _ = make()
    ctx.info("x" * MAX_LOG_LINE_BYTES)
    assert sent.last()["message"] == "x" * MAX_LOG_LINE_BYTES, "exactly 16 KiB is kept whole"
    ctx.info("é" * 20_000)
    message = sent.last()["message"]
    assert len(message.encode()) <= MAX_LOG_LINE_BYTES == 16 * 1024
    assert message.endswith("… (cut from 40000 bytes)")
    assert message.startswith("é")


def test_progress_and_its_message() -> None:
    ctx, sent, _ = make()
    ctx.progress(0.25, "a quarter")
    ctx.progress(1)
    assert sent.events == [
        ("progress", {"fraction": 0.25, "message": "a quarter"}, True),
        ("progress", {"fraction": 1.0}, True),
    ]
    assert isinstance(sent.last()["fraction"], float)
    ctx.progress(0.5, "m" * 5000)
    message = sent.last()["message"]
    assert len(message.encode()) <= MAX_PROGRESS_MESSAGE_BYTES
    assert message.endswith("… (cut from 5000 bytes)")


@pytest.mark.parametrize(
    ("given", "sent_as"),
    [(math.nan, 0.0), (-math.inf, 0.0), (-0.5, 0.0), (1.5, 1.0), (1e300, 1.0), (0.0, 0.0), (1.0, 1.0), (0.3, 0.3)],
)
def test_progress_is_clamped_to_0_1(given: float, sent_as: float) -> None:
    ctx, sent, _ = make()
    ctx.progress(given)
    assert sent.last()["fraction"] == sent_as


def test_an_infinite_progress_is_sent_as_a_finite_fraction() -> None:
    ctx, sent, _ = make()
    ctx.progress(math.inf)
    fraction = sent.last()["fraction"]
    assert math.isfinite(fraction) and 0.0 <= fraction <= 1.0


def test_materialized_and_checks() -> None:
    ctx, sent, _ = make()
    ctx.materialized({"rows": 10})
    ctx.check("non_empty", True)
    ctx.check("fresh", 0, "3 days old")  # type: ignore[arg-type]
    assert sent.events == [
        ("materialized", {"metadata": {"rows": 10}}, False),
        ("check_result", {"name": "non_empty", "passed": True}, False),
        ("check_result", {"name": "fresh", "passed": False, "detail": "3 days old"}, False),
    ]


# The budget


def dropped_report_parts(report: str | None) -> tuple[int, str]:
    assert report is not None
    head = " log lines and progress reports of this step were dropped, "
    count, rest = report.split(head, 1)
    assert rest.endswith(DROPPED_END)
    return int(count), rest.removesuffix(DROPPED_END)


def test_nothing_dropped_nothing_reported() -> None:
    ctx, _, _ = make()
    ctx.info("one line")
    assert ctx.dropped_report() is None


def test_ten_thousand_log_lines_and_progress_reports_then_dropped() -> None:
    ctx, sent, _ = make()
    for i in range(MAX_TELEMETRY_EVENTS // 2):
        ctx.info("l")
        ctx.progress(0.5)
    assert len(sent.events) == MAX_TELEMETRY_EVENTS == 10_000
    ctx.info("over")
    ctx.progress(0.9)
    ctx.progress(1.0, "done")
    assert len(sent.events) == 10_000
    count, why = dropped_report_parts(ctx.dropped_report())
    assert count == 3
    assert why, "says why"
    assert ctx.dropped_report() == (
        f"3 log lines and progress reports of this step were dropped, {why}{DROPPED_END}"
    )


def test_one_mib_of_messages_then_dropped() -> None:
    ctx, sent, _ = make()
    line = "x" * 1024
    for _ in range(MAX_TELEMETRY_BYTES // len(line)):
        ctx.info(line)
    assert len(sent.events) == 1024, "exactly 1 MiB fits"
    ctx.info("x")
    ctx.progress(0.5, "y")
    assert len(sent.events) == 1024
    count, _ = dropped_report_parts(ctx.dropped_report())
    assert count == 2


def test_the_byte_budget_counts_lines_as_cut() -> None:
    ctx, sent, _ = make()
    for _ in range(64):  # 64 lines cut to 16 KiB each: 1 MiB
        ctx.info("x" * 100_000)
    assert len(sent.events) == 64
    ctx.info("x")
    assert len(sent.events) == 64
    assert ctx.dropped_report() is not None


def test_once_over_the_byte_budget_later_lines_are_dropped_too() -> None:
    ctx, sent, _ = make()
    line = "x" * 1024
    for _ in range(MAX_TELEMETRY_BYTES // len(line) - 1):
        ctx.info(line)
    ctx.info("x" * 1000)  # 24 bytes left: fits
    ctx.info(line)  # over: dropped
    sent_before = len(sent.events)
    ctx.info("short")
    assert len(sent.events) == sent_before


def test_materializations_and_checks_are_never_dropped_by_the_budget() -> None:
    ctx, sent, _ = make()
    for _ in range(MAX_TELEMETRY_EVENTS + 5):
        ctx.info("l")
    ctx.materialized({"rows": 1})
    ctx.check("non_empty", False, "0 rows")
    assert sent.kinds()[-2:] == ["materialized", "check_result"]
    assert [droppable for _, _, droppable in sent.events[-2:]] == [False, False]
    count, _ = dropped_report_parts(ctx.dropped_report())
    assert count == 5


def test_reports_the_worker_could_not_queue_are_counted_as_dropped() -> None:
    ctx, sent, _ = make()
    sent.full = True
    ctx.info("lost")
    ctx.progress(0.5)
    ctx.materialized({"rows": 1})  # not droppable: the worker takes it
    assert sent.kinds() == ["materialized"]
    count, why = dropped_report_parts(ctx.dropped_report())
    assert count == 2
    assert why == "faster than they could be published"


def test_the_first_reason_for_dropping_is_the_one_reported() -> None:
    ctx, sent, _ = make()
    sent.full = True
    ctx.info("lost to a full queue")
    sent.full = False
    for _ in range(MAX_TELEMETRY_EVENTS + 1):
        ctx.info("l")
    count, why = dropped_report_parts(ctx.dropped_report())
    assert count == 3, "the lost line spent its place in the budget too"
    assert why == "faster than they could be published"


def test_a_report_that_is_not_json_fails_in_the_handler_not_at_publish() -> None:
    from opflow.protocol import Event

    ctx, sent, _ = make()
    try:
        ctx.materialized({"written_at": object()})
    except (TypeError, ValueError):
        return  # refused where the handler can see it: the step fails
    for kind, fields, _ in sent.events:
        Event(RUN_ID, 3, 2, "w", kind, fields).encode()


# Stopping


def test_should_stop_and_wait() -> None:
    ctx, _, _ = make()
    assert ctx.should_stop() is False
    assert ctx.wait(0.01) is False
    ctx._request_stop()
    assert ctx.should_stop() is True
    began = time.monotonic()
    assert ctx.wait(30) is True
    assert time.monotonic() - began < 1


def test_wait_wakes_early_when_the_step_must_stop() -> None:
    ctx, _, _ = make()
    woke: list[tuple[bool, float]] = []

    def handler() -> None:
        began = time.monotonic()
        woke.append((ctx.wait(30), time.monotonic() - began))

    thread = threading.Thread(target=handler)
    thread.start()
    time.sleep(0.05)
    ctx._request_stop()
    thread.join(5)
    assert not thread.is_alive()
    ((told, waited),) = woke
    assert told is True
    assert waited < 5


def test_stopping_says_the_worker_is_shutting_down_without_stopping_the_step() -> None:
    ctx, _, stopping = make()
    assert ctx.stopping is False
    stopping.set()
    assert ctx.stopping is True
    assert ctx.should_stop() is False, "the step may finish"


def test_reports_from_many_threads_are_all_counted() -> None:
    ctx, sent, _ = make()

    def chatty() -> None:
        for _ in range(3000):
            ctx.info("l")

    threads = [threading.Thread(target=chatty) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(sent.events) == MAX_TELEMETRY_EVENTS
    count, _ = dropped_report_parts(ctx.dropped_report())
    assert count == 4 * 3000 - MAX_TELEMETRY_EVENTS


def test_sleep_wakes_early_when_the_step_must_stop_without_blocking_the_loop() -> None:
    import asyncio

    async def scenario() -> tuple[bool, bool, float]:
        ctx, _, _ = make()
        quick = await ctx.sleep(0.01)
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, ctx._request_stop)
        began = time.monotonic()
        told = await ctx.sleep(30)
        return quick, told, time.monotonic() - began

    quick, told, took = asyncio.run(scenario())
    assert (quick, told) == (False, True)
    assert took < 5


def test_a_checks_name_and_detail_are_bounded_where_they_are_sent() -> None:
    ctx, sent, _ = make()
    ctx.check("n" * 5000, False, "d" * 100_000)
    _, fields, _ = sent.events[-1]
    assert len(fields["name"].encode()) <= 1024 and fields["name"].endswith("(cut from 5000 bytes)")
    assert len(fields["detail"].encode()) <= 16 * 1024
