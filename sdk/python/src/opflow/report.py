"""Publishing events: every event of a worker on one confirm channel, in the order emitted,
mandatory and persistent, with the worker's login as ``user_id``. A result counts as
published only once it and every event before it are confirmed; a returned (unroutable)
message is a failure, not a success."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import aiormq
import aiormq.abc
from aiormq import spec

from .protocol import EVENT_MESSAGE_TYPE, EVENTS_EXCHANGE, Event

log = logging.getLogger("opflow.worker")

MAX_PENDING = 1024
"""Non-terminal events waiting to be published; further log lines, progress reports,
``started`` and heartbeats are dropped (materializations and check results never are)."""

PUBLISH_TIMEOUT_S = 30.0


class PublishFailed(Exception):
    """An event the broker did not take: returned, nacked, or the channel went away."""


class Reporter:
    """One session's event publisher. Publishes are serialized by a FIFO lock, each awaiting
    its confirm, so a confirmed result implies every earlier event was confirmed. It
    publishes on aiormq's channel (under aio-pika's): the per-step hot path, where aio-pika's
    message objects cost a Python worker a fifth of its CPU per step."""

    def __init__(self, channel: aiormq.abc.AbstractChannel, user_id: str) -> None:
        self._channel = channel
        self._user_id = user_id
        self._lock = asyncio.Lock()
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._failed: BaseException | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def reserve(self, droppable: bool) -> bool:
        """Takes a place for a fire-and-forget event; False (drop it) when the queue is full
        and the event may be dropped. Safe from any thread."""
        with self._pending_lock:
            if droppable and self._pending >= MAX_PENDING:
                return False
            self._pending += 1
            return True

    def send_reserved(self, event: Event, headers: dict[str, str], droppable: bool) -> None:
        """Publishes an event in the background, after every event before it (on the loop)."""
        task = asyncio.get_running_loop().create_task(self._background(event, headers, droppable))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _background(self, event: Event, headers: dict[str, str], droppable: bool) -> None:
        try:
            await self._publish(event, headers)
        except Exception as error:  # noqa: BLE001 - recorded; the result's publish reports it
            if droppable:
                log.debug("a %s event was not published: %s", event.kind, error)
            elif self._failed is None:
                self._failed = error
        finally:
            with self._pending_lock:
                self._pending -= 1

    async def confirmed(self, event: Event, headers: dict[str, str]) -> None:
        """Publishes ``event`` and returns once it and every event before it are confirmed."""
        await self._publish(event, headers)
        if self._failed is not None:
            raise PublishFailed(f"an earlier event of this worker was not confirmed: {self._failed}")

    async def _publish(self, event: Event, headers: dict[str, str]) -> None:
        body = event.encode()
        properties = spec.Basic.Properties(
            content_type="application/json",
            delivery_mode=2,
            message_type=EVENT_MESSAGE_TYPE,
            user_id=self._user_id,
            # The event's own id: aiormq matches a returned message to its publish by it.
            message_id=event.id,
            headers=dict(headers) if headers else None,
        )
        async with self._lock:
            try:
                answer: Any = await self._channel.basic_publish(
                    body,
                    exchange=EVENTS_EXCHANGE,
                    routing_key=event.routing_key,
                    properties=properties,
                    mandatory=True,
                    timeout=PUBLISH_TIMEOUT_S,
                )
            except (aiormq.exceptions.AMQPError, OSError, asyncio.TimeoutError) as error:
                raise PublishFailed(f"publishing the {event.kind} event failed: {error!r}") from error
        if not isinstance(answer, aiormq.spec.Basic.Ack):
            raise PublishFailed(
                f"the broker returned the {event.kind} event as unroutable (routing key {event.routing_key}); "
                "is a dispatcher of the same schema version installed on this vhost?"
            )
