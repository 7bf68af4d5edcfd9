"""What a handler sees of its step: the message's facts, and the ways to report work (logs,
progress, materializations, checks) and to learn that it must stop. Safe to use from the
handler's own thread: every report is handed to the worker's event loop."""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import Callable
from typing import Any, Literal

from .protocol import (
    MAX_CHECK_NAME_BYTES,
    MAX_ERROR_BYTES,
    MAX_LOG_LINE_BYTES,
    MAX_PROGRESS_MESSAGE_BYTES,
    StepInput,
    StepMessage,
    cut,
)

LogLevel = Literal["debug", "info", "warn", "error"]
_LEVELS = {"debug": "debug", "info": "info", "warn": "warn", "warning": "warn", "error": "error"}

MAX_TELEMETRY_EVENTS = 10_000
"""Log lines and progress reports one attempt may send; the rest are dropped (and counted)."""
MAX_TELEMETRY_BYTES = 1024 * 1024
"""Bytes of log and progress messages one attempt may send."""

Emit = Callable[[str, dict[str, Any], bool], bool]
"""Hands an event (kind, fields, droppable) to the worker; False when it was dropped."""


class StepContext:
    """One attempt of one step, as its handler sees it."""

    def __init__(self, message: StepMessage, emit: Emit, stopping: threading.Event) -> None:
        self.message = message
        self.params: Any = message.params()
        self._emit = emit
        self._stop = threading.Event()
        # Made on the worker's event loop, where the context is made and a stop is requested.
        self._stop_on_loop = asyncio.Event()
        self._stopping = stopping
        self._lock = threading.Lock()
        self._telemetry_events = 0
        self._telemetry_bytes = 0
        self._dropped = 0
        self._dropped_why: str | None = None
        self._over_budget = False

    @property
    def run_id(self) -> str:
        return self.message.run_id

    @property
    def step_id(self) -> int:
        return self.message.step_id

    @property
    def attempt(self) -> int:
        """1 for the first attempt; a retry is a new attempt, a redelivery the same one."""
        return self.message.attempt

    @property
    def asset(self) -> str:
        return self.message.asset

    @property
    def partition(self) -> str | None:
        return self.message.partition

    @property
    def point(self) -> dict[str, Any]:
        return self.message.point

    @property
    def inputs(self) -> tuple[StepInput, ...]:
        """The outputs of the upstream steps this step reads."""
        return self.message.inputs

    @property
    def label(self) -> str:
        return self.message.label()

    # Stopping.

    def should_stop(self) -> bool:
        """True once the step must stop: its run was canceled or it timed out. Return (or
        raise) soon after: the worker waits the stop grace, then exits to stop the handler."""
        return self._stop.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleeps up to ``seconds``, waking early when the step must stop; True if it must.
        For a plain (threaded) handler; an ``async def`` one awaits :meth:`sleep`."""
        return self._stop.wait(seconds)

    async def sleep(self, seconds: float) -> bool:
        """Sleeps up to ``seconds`` without blocking the worker's event loop, waking early
        when the step must stop; True if it must. For an ``async def`` handler."""
        try:
            await asyncio.wait_for(self._stop_on_loop.wait(), seconds)
        except TimeoutError:
            return False
        return True

    @property
    def stopping(self) -> bool:
        """True once the worker was asked to shut down (SIGTERM). The step may finish: the
        worker waits for it. A long handler may stop early with :class:`Retryable`."""
        return self._stopping.is_set()

    def _request_stop(self) -> None:
        """On the worker's event loop: the handler must stop (a cancel, a timeout)."""
        self._stop.set()
        self._stop_on_loop.set()

    # Reporting.

    def log(self, level: LogLevel, message: str) -> None:
        """One log line for the run's logs (``opflow logs``), cut to 16 KiB."""
        wire_level = _LEVELS.get(level)
        if wire_level is None:
            raise ValueError(f"log level {level!r} is not one of debug, info, warn, error")
        text = cut(str(message), MAX_LOG_LINE_BYTES)
        if self._budget(len(text.encode("utf-8", "replace"))):
            self._send("log", {"level": wire_level, "message": text}, True)

    def info(self, message: str) -> None:
        self.log("info", message)

    def warn(self, message: str) -> None:
        self.log("warn", message)

    def progress(self, fraction: float, message: str | None = None) -> None:
        """How far along the step is, in [0, 1]; shown by ``opflow watch``."""
        fraction = float(fraction)
        fraction = 0.0 if math.isnan(fraction) else min(1.0, max(0.0, fraction))
        fields: dict[str, Any] = {"fraction": fraction}
        size = 0
        if message is not None:
            fields["message"] = cut(str(message), MAX_PROGRESS_MESSAGE_BYTES)
            size = len(fields["message"].encode("utf-8", "replace"))
        if self._budget(size):
            self._send("progress", fields, True)

    def materialized(self, metadata: Any) -> None:
        """Says what the step wrote of its asset (paths, row counts, …); kept in the catalog.
        Raises TypeError here, in the handler, for metadata JSON cannot hold."""
        _must_be_json(metadata, "ctx.materialized(metadata)")
        self._send("materialized", {"metadata": metadata}, False)

    def check(self, name: str, passed: bool, detail: str | None = None) -> None:
        """A data-quality check's result. Report checks before returning: a failed check the
        plan declares blocking fails the step."""
        fields: dict[str, Any] = {"name": cut(str(name), MAX_CHECK_NAME_BYTES), "passed": bool(passed)}
        if detail is not None:
            fields["detail"] = cut(str(detail), MAX_ERROR_BYTES)
        self._send("check_result", fields, False)

    def _send(self, kind: str, fields: dict[str, Any], droppable: bool) -> None:
        if not self._emit(kind, fields, droppable):
            self._count_dropped("faster than they could be published")

    def _budget(self, size: int) -> bool:
        with self._lock:
            if (
                self._over_budget
                or self._telemetry_events >= MAX_TELEMETRY_EVENTS
                or self._telemetry_bytes + size > MAX_TELEMETRY_BYTES
            ):
                # Once over, everything after is dropped: the step's logs have an end, not holes.
                self._over_budget = True
                self._dropped += 1
                self._dropped_why = self._dropped_why or (
                    f"over the budget of {MAX_TELEMETRY_EVENTS:,} per step or 1 MiB of messages"
                )
                return False
            self._telemetry_events += 1
            self._telemetry_bytes += size
            return True

    def _count_dropped(self, why: str) -> None:
        with self._lock:
            self._dropped += 1
            self._dropped_why = self._dropped_why or why

    def dropped_report(self) -> str | None:
        """The one warning sent before the result when telemetry was dropped."""
        with self._lock:
            if not self._dropped:
                return None
            return (
                f"{self._dropped} log lines and progress reports of this step were dropped, "
                f"{self._dropped_why}; log less, or write long output to the op's own storage"
            )


def _must_be_json(value: Any, what: str) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{what}: not a JSON value ({error}); pass dicts, lists, str, int, float, bool or None") from None
