"""The worker's decisions that need no broker."""

from __future__ import annotations

from opflow.worker import SignsOfLife, login_of


def test_a_started_the_full_queue_dropped_is_said_again_at_the_next_beat() -> None:
    signs = SignsOfLife()
    assert signs.next_is_started()
    signs.sent(True, False)
    assert signs.next_is_started(), "dropped: said again"
    signs.sent(True, True)
    assert not signs.next_is_started(), "queued: heartbeats from here on"
    signs.sent(False, False)
    assert not signs.next_is_started(), "a dropped heartbeat is only one fewer"


def test_the_login_is_the_urls_user_unquoted() -> None:
    assert login_of("amqp://guest:guest@127.0.0.1:5672/%2f") == "guest"
    assert login_of("amqp://opflow-op%3A%2F%3Anoop%401.1.0:pw@broker/v") == "opflow-op:/:noop@1.1.0"
    assert login_of("amqp://broker/v") == "guest"


def test_the_reporter_drops_only_droppable_events_once_1024_wait() -> None:
    from typing import Any, cast

    from opflow.report import MAX_PENDING, Reporter

    reporter = Reporter(cast(Any, None), "guest")
    for _ in range(MAX_PENDING):
        assert reporter.reserve(True)
    assert not reporter.reserve(True), "a log line, progress or heartbeat is dropped"
    assert reporter.reserve(False), "a materialization or check result is held, never dropped"
