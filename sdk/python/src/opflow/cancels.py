"""Following the cancels stream: which runs and step attempts the dispatcher canceled, so a
queued step of a canceled run never starts and a running one is told to stop. Only records
the dispatcher's own login published count: any op may write to the stream."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal

from .protocol import CancelRecord

log = logging.getLogger("opflow.worker")

KEPT_RUNS = 100_000
KEPT_STEPS = 100_000

Canceled = Literal["run", "step"]


def cancel_error(canceled: Canceled, before: bool) -> str:
    """The step's error, for a cancel that came ``before`` it started or while it ran."""
    when = "before this step started" if before else "while this step ran"
    if canceled == "run":
        return f"canceled: the run was canceled {when}"
    return f"canceled: the dispatcher canceled this step {when}: a newer step of its concurrency key took its place"


class Cancels:
    """What the worker learned from the stream, kept across broker sessions."""

    def __init__(self, dispatcher_user: str) -> None:
        self.dispatcher_user = dispatcher_user
        self._runs: OrderedDict[str, None] = OrderedDict()
        self._steps: OrderedDict[tuple[str, int, int], None] = OrderedDict()
        self._running: tuple[tuple[str, int, int], Callable[[], None]] | None = None
        self.ignored = 0

    def apply(self, record: CancelRecord, user_id: str | None) -> None:
        if record.kind == "marker":
            return
        if user_id != self.dispatcher_user:
            self.ignored += 1
            log.warning(
                "ignored a %s cancel published by %r, not by the dispatcher's user %r",
                record.kind, user_id, self.dispatcher_user,
            )
            return
        assert record.run_id is not None
        if record.kind == "run":
            self._remember(self._runs, record.run_id, KEPT_RUNS)
        else:
            assert record.step_id is not None and record.attempt is not None
            self._remember(self._steps, (record.run_id, record.step_id, record.attempt), KEPT_STEPS)
        if self._running is not None:
            key, stop = self._running
            if self.canceled(*key) is not None:
                stop()

    @staticmethod
    def _remember(kept: OrderedDict[Any, None], key: Any, limit: int) -> None:
        kept[key] = None
        kept.move_to_end(key)
        while len(kept) > limit:
            kept.popitem(last=False)

    def canceled(self, run_id: str, step_id: int, attempt: int) -> Canceled | None:
        if run_id in self._runs:
            return "run"
        if (run_id, step_id, attempt) in self._steps:
            return "step"
        return None

    def track(self, run_id: str, step_id: int, attempt: int, stop: Callable[[], None]) -> None:
        """Calls ``stop`` when the step in hand is canceled."""
        self._running = ((run_id, step_id, attempt), stop)

    def untrack(self) -> None:
        self._running = None
