"""The worker: one broker session at a time, each checking the op's queue, publishing what the
last session could not, catching up with the cancels stream, and then consuming with
prefetch 1 and ack-late. ``docs/protocol.md`` §5 and §6 are the contract this follows."""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import random
import signal
import socket
import threading
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import aio_pika
import aiormq
import aiormq.abc

from .cancels import Canceled, Cancels, cancel_error
from .context import StepContext
from .op import Op, StepError
from .protocol import (
    CANCEL_MESSAGE_TYPE,
    CANCELS,
    MAX_ERROR_BYTES,
    MAX_OUTPUT_BYTES,
    Event,
    ProtocolError,
    StepMessage,
    compact_json_size,
    cut,
    decode_cancel,
    decode_step,
    encode_marker,
    now,
    op_queue,
)
from .report import PublishFailed, Reporter
from .tracing import StepSpan, incoming

log = logging.getLogger("opflow.worker")

STARTED_AFTER_S = 0.1
"""A step reports ``started`` once it has run this long: a quick step sends only its result."""
CANCELS_CATCH_UP_S = 5.0
ABANDONED_CONFIRM_S = 5.0
START_ATTEMPTS = 10
"""Connection attempts at start (about 30 s) before the worker gives up; once it has
connected, it waits out an outage of any length."""


@dataclass(frozen=True)
class Settings:
    amqp_url: str
    dispatcher_user: str | None = None
    heartbeat_s: float = 10.0
    stop_grace_s: float = 5.0
    handover_after_s: float = 600.0
    max_steps: int | None = None
    max_rss_mb: int | None = None


class QueueMissing(Exception):
    pass


class SessionLost(Exception):
    """The broker connection or a channel went away; the worker connects again."""


class _Closed:
    """Put on the deliveries queue when the consume channel or connection closes."""


class _Shutdown:
    """Put on the deliveries queue when the worker is asked to stop."""


class SignsOfLife:
    """Which sign of life a running step sends next: ``started`` until one was queued (one
    the full event queue dropped is said again at the next beat, or the dispatcher would
    count the step's held message as lost and run it twice), then heartbeats."""

    def __init__(self) -> None:
        self._started_queued = False

    def next_is_started(self) -> bool:
        return not self._started_queued

    def sent(self, started: bool, queued: bool) -> None:
        self._started_queued = self._started_queued or (started and queued)


class HandlerThread:
    """The one thread sync handlers run on, off the event loop, so a CPU-bound handler never
    starves heartbeats. A handler that will not stop ends the process, so the thread is
    never asked to run two at once."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Callable[[], Any]]] = (
            queue.SimpleQueue()
        )
        threading.Thread(target=self._run, name="opflow-handler", daemon=True).start()

    def submit(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._jobs.put((loop, future, fn))
        return future

    def _run(self) -> None:
        while True:
            loop, future, fn = self._jobs.get()
            try:
                result = fn()
            except BaseException as error:  # noqa: BLE001 - handed to the step as its failure
                loop.call_soon_threadsafe(_settle, future, None, error)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def login_of(url: str) -> str:
    """The user an AMQP URL logs in as: its ``user_id`` on every message."""
    return unquote(urlsplit(url).username or "guest")


def resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)


class Worker:
    def __init__(self, op: Op, settings: Settings) -> None:
        self.op = op
        self.settings = settings
        self.login = login_of(settings.amqp_url)
        self.id = f"{op.ref}/{socket.gethostname()}/{os.getpid()}"
        self.cancels = Cancels(settings.dispatcher_user or self.login)
        self.unsent: list[tuple[Event, dict[str, str]]] = []
        self.stopping = threading.Event()
        self.settled = 0
        self.handlers = HandlerThread()
        self._shutdown: asyncio.Event | None = None
        self._deliveries: asyncio.Queue[object] | None = None
        self._consumer: Consumer | None = None
        # Set while a step runs: what to do when the consume channel closes under it.
        self._on_channel_closed: Callable[[str], None] | None = None

    # The process.

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._shutdown = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._ask_to_stop, signum)
        connected_once = False
        failures = 0
        while not self._shutdown.is_set():
            try:
                connection = await aio_pika.connect(
                    self.settings.amqp_url, timeout=10, client_properties={"connection_name": self.id}
                )
            except (OSError, asyncio.TimeoutError, aiormq.exceptions.AMQPError, aio_pika.exceptions.AMQPException) as error:
                failures += 1
                if not connected_once and failures >= START_ATTEMPTS:
                    log.error("cannot connect to RabbitMQ at %s: %s; is it running?", _redacted(self.settings.amqp_url), error)
                    return 1
                # 0.5, 1, 2, 4, then 5 s (jittered): the first ten attempts take about 30 s.
                delay = min(5.0, 0.25 * 2**failures) * (0.75 + random.random() / 2)
                log.warning("cannot connect to RabbitMQ (%s); trying again in %.1f s", error, delay)
                await self._sleep_unless_stopping(delay)
                continue
            connected_once, failures = True, 0
            try:
                code = await self._session(connection)
                if code is not None:
                    return code
            except QueueMissing as missing:
                log.error("%s", missing)
                return 1
            except (SessionLost, PublishFailed, OSError, aiormq.exceptions.AMQPError, aio_pika.exceptions.AMQPException) as error:
                log.warning("lost the broker session (%s); connecting again", error)
                await self._sleep_unless_stopping(0.5 + random.random())
            finally:
                try:
                    await asyncio.wait_for(connection.close(), 5)
                except Exception:  # noqa: BLE001 - closing what may be gone already
                    pass
        return 0

    @property
    def _shutting_down(self) -> bool:
        return self._shutdown is not None and self._shutdown.is_set()

    def _ask_to_stop(self, signum: int) -> None:
        if self._shutdown is None or self._shutdown.is_set():
            return
        log.info("%s: finishing the step in hand, then exiting", signal.Signals(signum).name)
        self.stopping.set()
        self._shutdown.set()
        if self._deliveries is not None:
            self._deliveries.put_nowait(_Shutdown())
        if self._consumer is not None:
            # At once, so the broker hands the next message to another replica while the
            # step in hand finishes.
            task = asyncio.get_running_loop().create_task(self._consumer.stop())
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        assert self._shutdown is not None
        try:
            await asyncio.wait_for(self._shutdown.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    # One broker session.

    async def _session(self, connection: aio_pika.abc.AbstractConnection) -> int | None:
        """Runs until the worker must exit (its exit code) or the session is lost (None or raises)."""
        queue_name = op_queue(self.op.ref)
        probe = await connection.channel(publisher_confirms=False)
        try:
            await probe.declare_queue(queue_name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            raise QueueMissing(
                f"queue {queue_name} does not exist; register the op with `opflow ops add <op command>` first"
            ) from None
        finally:
            if not probe.is_closed:
                await probe.close()

        events_channel = await connection.channel(publisher_confirms=True)
        reporter = Reporter(await events_channel.get_underlay_channel(), self.login)
        while self.unsent:
            event, headers = self.unsent[0]
            await reporter.confirmed(event, headers)
            self.unsent.pop(0)

        await self._follow_cancels(connection)

        deliveries: asyncio.Queue[object] = asyncio.Queue()
        self._deliveries = deliveries
        if self._shutting_down:
            return 0
        channel = await connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=1)
        closed_why: list[str] = []

        def on_close(_sender: object, error: BaseException | None = None) -> None:
            closed_why.append(str(error) if error else "closed")
            deliveries.put_nowait(_Closed())
            if self._on_channel_closed is not None:
                self._on_channel_closed(closed_why[0])

        channel.close_callbacks.add(on_close)
        connection.close_callbacks.add(on_close)

        underlay = await channel.get_underlay_channel()

        async def deliver(message: aiormq.abc.DeliveredMessage) -> None:
            deliveries.put_nowait(Delivery(underlay, message))

        consumer = Consumer(underlay, queue_name, deliver)
        self._consumer = consumer
        await consumer.start()
        log.info("consuming %s", queue_name)
        while True:
            item = await deliveries.get()
            if isinstance(item, _Shutdown) or (self._shutting_down):
                await consumer.stop()
                log.info("stopped: drained")
                return 0
            if isinstance(item, _Closed):
                raise SessionLost(f"the consume channel closed: {closed_why[0] if closed_why else 'closed'}")
            assert isinstance(item, Delivery)
            recycle = await self._handle(item, reporter, consumer)
            self.settled += 1
            if recycle:
                return 0
            if self.settings.max_steps is not None and self.settled >= self.settings.max_steps:
                log.info("recycling: settled %d steps (--max-steps)", self.settled)
                await consumer.stop()
                return 0
            if self.settings.max_rss_mb is not None and resident_mb() > self.settings.max_rss_mb:
                log.info("recycling: resident memory %.0f MiB is over --max-rss-mb %d", resident_mb(), self.settings.max_rss_mb)
                await consumer.stop()
                return 0
            if not consumer.active and not (self._shutting_down):
                await consumer.start()

    async def _follow_cancels(self, connection: aio_pika.abc.AbstractConnection) -> None:
        """Consumes the cancels stream from its first record, publishes a marker, and reads up
        to it (at most 5 s): then every cancel made before this session is known."""
        nonce = f"{self.id}/{uuid.uuid4()}"
        caught_up = asyncio.Event()

        async def on_record(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            try:
                record = decode_cancel(message.body)
            except ProtocolError as error:
                log.debug("skipped a cancel record: %s", error)
            else:
                if record.kind == "marker" and record.nonce == nonce:
                    caught_up.set()
                self.cancels.apply(record, message.user_id)
            try:
                await message.ack()
            except Exception:  # noqa: BLE001 - the channel closing ends the session anyway
                pass

        try:
            channel = await connection.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=256)
            stream = await channel.get_queue(CANCELS, ensure=False)
            await stream.consume(on_record, arguments={"x-stream-offset": "first"})
            markers = await connection.channel(publisher_confirms=True)
            exchange = await markers.get_exchange(CANCELS, ensure=False)
            await exchange.publish(
                aio_pika.Message(
                    encode_marker(nonce),
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    type=CANCEL_MESSAGE_TYPE,
                    user_id=self.login,
                ),
                "",
                mandatory=True,
                timeout=10,
            )
            await markers.close()
        except (aiormq.exceptions.AMQPError, aio_pika.exceptions.AMQPException, asyncio.TimeoutError) as error:
            log.warning("cannot follow the cancels stream (%s); every step will run to its end", error)
            return
        try:
            await asyncio.wait_for(caught_up.wait(), CANCELS_CATCH_UP_S)
        except asyncio.TimeoutError:
            log.warning("did not read back this worker's cancels marker within %.0f s; going on", CANCELS_CATCH_UP_S)

    # One delivery.

    async def _handle(
        self, delivery: Delivery, reporter: Reporter, consumer: Consumer
    ) -> bool:
        """Runs one delivery to its settlement; True when the worker must exit afterwards."""
        try:
            step = decode_step(delivery.body)
            if step.op != self.op.ref:
                raise ProtocolError(f"the message is for op {cut(step.op, 200)}, this worker runs {self.op.ref}")
        except ProtocolError as error:
            log.warning("rejected a step message (dead-lettered, not requeued): %s", error)
            await delivery.reject()
            return False
        span = StepSpan(incoming(delivery.headers), step.label(), step.op)
        try:
            return await self._run(step, delivery, reporter, consumer, span)
        finally:
            span.end()

    def _event(self, step: StepMessage, kind: str, fields: dict[str, Any], **extra: Any) -> Event:
        return Event(step.run_id, step.step_id, step.attempt, self.id, kind, fields, **extra)

    async def _run(
        self,
        step: StepMessage,
        delivery: Delivery,
        reporter: Reporter,
        consumer: Consumer,
        span: StepSpan,
    ) -> bool:
        canceled = self.cancels.canceled(step.run_id, step.step_id, step.attempt)
        if canceled is not None:
            log.info("%s was canceled; not running it", step.label())
            result = self._event(step, "failed", {"error": cancel_error(canceled, True), "retryable": False})
            await self._complete(reporter, delivery, result, span.headers, handed_over=False)
            return False
        if delivery.redelivered:
            log.warning("%s was delivered before (a worker died or gave it back); running it again", step.label())

        loop = asyncio.get_running_loop()
        started_at = now()
        signals: asyncio.Queue[str] = asyncio.Queue()
        stop_why: list[str] = []
        headers = span.headers

        def emit(kind: str, fields: dict[str, Any], droppable: bool) -> bool:
            if not reporter.reserve(droppable):
                return False
            event = self._event(step, kind, fields)
            loop.call_soon_threadsafe(reporter.send_reserved, event, headers, droppable)
            return True

        ctx = StepContext(step, emit, self.stopping)
        timers: list[asyncio.TimerHandle] = []

        def stop(why: str) -> None:
            if stop_why:
                return
            stop_why.append(why)
            ctx._request_stop()
            if handler.done():
                signals.put_nowait("done")
                return
            # Told, never cancelled: an async handler stops as a sync one does, by seeing
            # `ctx.should_stop()` or waking from `await ctx.sleep()`, within the stop grace.
            timers.append(loop.call_later(self.settings.stop_grace_s, signals.put_nowait, "grace"))

        if self.op.is_async:
            handler: asyncio.Future[Any] = asyncio.ensure_future(_call_async(self.op, ctx))
        else:
            handler = self.handlers.submit(lambda: self.op.call(ctx))
        handler.add_done_callback(lambda _: signals.put_nowait("done"))

        signs = SignsOfLife()

        def sign_of_life() -> None:
            started = signs.next_is_started()
            queued = reporter.reserve(True)
            if queued:
                kind, fields = ("started", {"op": step.op}) if started else ("heartbeat", {})
                event = self._event(step, kind, fields, at=started_at) if started else self._event(step, kind, fields)
                reporter.send_reserved(event, headers, True)
            signs.sent(started, queued)

        def first_report() -> None:
            sign_of_life()
            # Heartbeats from here on: a quick step (most of a sweep) costs one timer, not two.
            timers.append(loop.call_later(max(0.0, self.settings.heartbeat_s - STARTED_AFTER_S), beat))

        handover_at = loop.time() + self.settings.handover_after_s

        def beat() -> None:
            sign_of_life()
            if loop.time() >= handover_at:
                # Checked with each heartbeat: one timer fewer per step; a handover that fails
                # is tried again at the next.
                signals.put_nowait("handover")
            timers.append(loop.call_later(self.settings.heartbeat_s, beat))

        timers.append(loop.call_later(STARTED_AFTER_S, first_report))
        if step.timeout_ms is not None:
            timers.append(loop.call_later(step.timeout_ms / 1000, stop, "timeout"))
        self.cancels.track(step.run_id, step.step_id, step.attempt, lambda: stop("cancel"))
        channel_closed: list[str] = []

        def on_channel_closed(reason: str) -> None:
            if not handed_over[0]:
                channel_closed.append(reason)
                stop("channel")

        handed_over = [False]
        self._on_channel_closed = on_channel_closed
        handler_stopped = True
        try:
            while True:
                signal_name = await signals.get()
                if signal_name == "done" and (handler.done() or not stop_why):
                    break
                if signal_name == "grace":
                    handler_stopped = handler.done()
                    break
                if signal_name == "handover" and not handed_over[0] and not stop_why:
                    try:
                        await consumer.stop()
                        await reporter.confirmed(self._event(step, "started", {"op": step.op}, at=started_at), headers)
                        await delivery.ack()
                        handed_over[0] = True
                        log.info("%s handed over to the run store: it runs past --handover-after", step.label())
                    except (PublishFailed, aiormq.exceptions.AMQPError, aio_pika.exceptions.AMQPException) as error:
                        log.warning("could not hand %s over yet (%s); trying again", step.label(), error)
        finally:
            for timer in timers:
                timer.cancel()
            self.cancels.untrack()
            self._on_channel_closed = None

        grace = _duration(self.settings.stop_grace_s)
        exits = (
            f"; the handler did not stop within {grace} of being told to, so its worker process exited to "
            "stop it (check `ctx.should_stop()` in long work to stop in time)"
        )
        retryable, failure, output = False, "", None
        if stop_why and stop_why[0] == "channel":
            reason = (
                f"the broker closed the worker's channel ({channel_closed[0] if channel_closed else 'closed'}); "
                "if the step runs longer than the broker's consumer_timeout, raise it (see docs/reliability.md)"
            )
            log.warning("%s stopped: its message is back on the queue (%s)", step.label(), reason)
            abandoned = self._event(step, "abandoned", {"reason": reason})
            try:
                await asyncio.wait_for(reporter.confirmed(abandoned, headers), ABANDONED_CONFIRM_S)
            except (PublishFailed, asyncio.TimeoutError):
                self.unsent.append((abandoned, headers))
            if not handler_stopped:
                log.error("the handler did not stop when told to; exiting to stop it")
                os._exit(0)
            raise SessionLost(reason)
        if stop_why and stop_why[0] == "timeout":
            failure = (
                f"timed out after {_duration((step.timeout_ms or 0) / 1000)}; raise the asset's `timeout` in the "
                "plan if the step needs longer"
            )
            retryable = True
        elif stop_why and stop_why[0] == "cancel":
            why: Canceled = self.cancels.canceled(step.run_id, step.step_id, step.attempt) or "run"
            failure = cancel_error(why, False)
        else:
            failure, retryable, output = _outcome(handler)
        # Built from the handler's error and the op's own texts: bounded here, where it is made.
        failure = cut(failure, MAX_ERROR_BYTES - len(exits))
        if stop_why:
            if not handler_stopped:
                failure += exits
            kind, fields = "failed", {"error": failure, "retryable": retryable}
        elif failure:
            kind, fields = "failed", {"error": failure, "retryable": retryable}
        else:
            kind, fields = "succeeded", {"output": output}
        if kind == "failed":
            log.warning("%s failed (retryable: %s): %s", step.label(), fields["retryable"], fields["error"])
        dropped = ctx.dropped_report()
        if dropped is not None and reporter.reserve(False):
            reporter.send_reserved(self._event(step, "log", {"level": "warn", "message": dropped}), headers, False)
        result = self._event(step, kind, fields, started_at=started_at)
        await self._complete(reporter, delivery, result, headers, handed_over=handed_over[0])
        if not handler_stopped:
            log.error("the handler did not stop when told to; the step is reported, exiting to stop it")
            os._exit(0)
        return False

    async def _complete(
        self,
        reporter: Reporter,
        delivery: Delivery,
        result: Event,
        headers: dict[str, str],
        handed_over: bool,
    ) -> None:
        """Ack-late: the message is acked only after the broker confirmed its result (and every
        event before it). A handed-over step has no message; its result waits for the next
        session if it cannot be published."""
        try:
            await reporter.confirmed(result, headers)
        except PublishFailed:
            if handed_over:
                self.unsent.append((result, headers))
            else:
                try:
                    await delivery.give_back()
                except Exception:  # noqa: BLE001 - a closed channel requeues it anyway
                    pass
            raise
        if not handed_over:
            await delivery.ack()


@dataclass(frozen=True)
class Delivery:
    """One step message as delivered, and the ways to settle it: ack after its confirmed
    result, reject without requeue (poison), or give it back (nack with requeue)."""

    channel: aiormq.abc.AbstractChannel
    message: aiormq.abc.DeliveredMessage

    @property
    def body(self) -> bytes:
        return self.message.body

    @property
    def headers(self) -> dict[str, Any] | None:
        return self.message.header.properties.headers

    @property
    def redelivered(self) -> bool:
        return bool(getattr(self.message.delivery, "redelivered", False))

    @property
    def _tag(self) -> int:
        tag = self.message.delivery_tag
        assert tag is not None
        return tag

    async def ack(self) -> None:
        await self.channel.basic_ack(self._tag)

    async def reject(self) -> None:
        await self.channel.basic_reject(self._tag, requeue=False)

    async def give_back(self) -> None:
        await self.channel.basic_nack(self._tag, requeue=True)


class Consumer:
    """The op queue's consumer, cancelled at a handover or a drain and started again. It
    consumes on aiormq's channel (under aio-pika's), like the reporter publishes: the hot path."""

    def __init__(
        self,
        channel: aiormq.abc.AbstractChannel,
        queue_name: str,
        deliver: Callable[[aiormq.abc.DeliveredMessage], Any],
    ) -> None:
        self._channel = channel
        self._queue = queue_name
        self._deliver = deliver
        self._tag: str | None = None

    @property
    def active(self) -> bool:
        return self._tag is not None

    async def start(self) -> None:
        ok = await self._channel.basic_consume(self._queue, self._deliver, no_ack=False)
        self._tag = ok.consumer_tag

    async def stop(self) -> None:
        if self._tag is not None:
            tag, self._tag = self._tag, None
            await self._channel.basic_cancel(tag)


async def _call_async(op: Op, ctx: StepContext) -> Any:
    return await op.call(ctx)


def _outcome(handler: asyncio.Future[Any]) -> tuple[str, bool, Any]:
    """A finished handler as (error, retryable, output); an empty error means success."""
    if handler.cancelled():
        return "the handler was cancelled", False, None
    error = handler.exception()
    if isinstance(error, StepError):
        return error.message or type(error).__name__, error.retryable, None
    if error is not None:
        detail = "".join(traceback.format_exception_only(type(error), error)).strip()
        log.warning("the handler raised:\n%s", "".join(traceback.format_exception(error)).rstrip())
        return f"the handler raised {detail}", False, None
    output = handler.result()
    try:
        size = compact_json_size(output)
    except (TypeError, ValueError) as not_json:
        return f"the handler returned a value that is not JSON: {not_json}", False, None
    if size > MAX_OUTPUT_BYTES:
        return (
            f"the step's output is {size} bytes, over the {MAX_OUTPUT_BYTES // 1024} KiB limit; store large data "
            "yourself (a file, a table, an object store) and return a reference to it",
            False,
            None,
        )
    return "", False, output


def _duration(seconds: float) -> str:
    """Like humantime: ``1s``, ``500ms``, ``1m 30s``."""
    ms = round(seconds * 1000)
    if ms < 1000:
        return f"{ms}ms"
    parts = []
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    for value, unit in ((hours, "h"), (minutes, "m"), (secs, "s"), (millis, "ms")):
        if value:
            parts.append(f"{value}{unit}")
    return " ".join(parts)


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@", 1)
    return url
