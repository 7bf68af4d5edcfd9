"""An op program's command line, the same as the Rust SDK's: ``--describe``, or run as a
worker with options each also read from an ``OPFLOW_*`` environment variable. Exit codes:
0 after a clean stop, 1 when the worker failed, 2 when the op or its arguments are invalid."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
from collections.abc import Mapping
from typing import Any

from .op import Op
from .worker import Settings, Worker

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def duration(text: str) -> float:
    """``10s``, ``500ms``, ``10m``, ``1h`` (a bare number is seconds), in seconds."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 10s, 500ms or 10m")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration must be more than zero")
    return seconds


def at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def parser(op: Op) -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog=os.path.basename(sys.argv[0]) or op.name,
        description=f"{op.ref}: {op.summary}. An opflow remote op: consumes its queue "
        f"opflow.op.{op.name}.{op.version} and reports each step's events.",
    )
    p.add_argument("--describe", action="store_true", help="print the op's description (JSON) and exit")
    p.add_argument(
        "--amqp-url",
        default=env("OPFLOW_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
        help="the broker; its user is the worker's login and user_id, its path the vhost [OPFLOW_AMQP_URL]",
    )
    p.add_argument(
        "--dispatcher-user",
        default=env("OPFLOW_DISPATCHER_USER"),
        help="the only user whose cancel records count [OPFLOW_DISPATCHER_USER; default: the worker's own login]",
    )
    p.add_argument("--heartbeat", type=duration, default=env("OPFLOW_HEARTBEAT", "10s"),
                   help="heartbeat interval while a step runs [OPFLOW_HEARTBEAT; 10s]")
    p.add_argument("--stop-grace", type=duration, default=env("OPFLOW_STOP_GRACE", "5s"),
                   help="how long a step told to stop has to return [OPFLOW_STOP_GRACE; 5s]")
    p.add_argument("--handover-after", type=duration, default=env("OPFLOW_HANDOVER_AFTER", "10m"),
                   help="when a long step is handed over to the run store [OPFLOW_HANDOVER_AFTER; 10m]")
    p.add_argument("--log-format", choices=["human", "json"], default=env("OPFLOW_LOG_FORMAT", "human"),
                   help="the worker's log on stderr [OPFLOW_LOG_FORMAT; human]")
    p.add_argument("--max-steps", type=at_least_one, default=env("OPFLOW_MAX_STEPS"),
                   help="exit 0 after this many settled steps, to be replaced [OPFLOW_MAX_STEPS]")
    p.add_argument("--max-rss-mb", type=at_least_one, default=env("OPFLOW_MAX_RSS_MB"),
                   help="exit 0 after a step when resident memory is over this [OPFLOW_MAX_RSS_MB]")
    return p


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.replace("WARNING", "WARN"),
            "target": record.name,
            "fields": {"message": record.getMessage()},
        }
        if record.exc_info:
            line["fields"]["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


_RUST_LEVELS = {"trace": "DEBUG", "debug": "DEBUG", "info": "INFO", "warn": "WARNING", "error": "ERROR"}


def log_level(env: Mapping[str, str]) -> str:
    """``OPFLOW_PY_LOG`` (a ``logging`` level name), else ``RUST_LOG`` when it is one plain
    level (``warn``), so that what ``opflow up`` and the demo set quiets both SDKs' workers;
    else ``INFO``."""
    level = env.get("OPFLOW_PY_LOG", "").upper()
    if level in logging.getLevelNamesMapping():
        return level
    return _RUST_LEVELS.get(env.get("RUST_LOG", "").strip().lower(), "INFO")


def configure_logging(log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.Formatter.converter = __import__("time").gmtime
    logging.basicConfig(level=log_level(os.environ), handlers=[handler], force=True)
    # aio-pika and aiormq say a lot at info about what the worker reports itself.
    for noisy in ("aio_pika", "aiormq"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(op: Op, argv: list[str] | None = None) -> int:
    p = parser(op)
    try:
        args = p.parse_args(argv)
        # Defaults from the environment arrive as text: parse them as the options would be.
        for name, convert in (("heartbeat", duration), ("stop_grace", duration), ("handover_after", duration)):
            if isinstance(getattr(args, name), str):
                setattr(args, name, convert(getattr(args, name)))
        for name in ("max_steps", "max_rss_mb"):
            if isinstance(getattr(args, name), str):
                setattr(args, name, at_least_one(getattr(args, name)))
        if args.log_format not in ("human", "json"):
            raise argparse.ArgumentTypeError(f"OPFLOW_LOG_FORMAT {args.log_format!r} is not human or json")
    except argparse.ArgumentTypeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except SystemExit as exit_:
        return int(exit_.code or 0)
    if args.describe:
        if op.handler is None:
            print(f"error: op {op.ref} has no handler; decorate one with @op.step", file=sys.stderr)
            return 2
        try:
            print(json.dumps(op.description(), indent=2), flush=True)
        except BrokenPipeError:
            # `my-op --describe | head`: the reader has what it wanted.
            sys.stdout = None
        return 0
    if op.handler is None:
        print(f"error: op {op.ref} has no handler; decorate one with @op.step", file=sys.stderr)
        return 2
    configure_logging(args.log_format)
    settings = Settings(
        amqp_url=args.amqp_url,
        dispatcher_user=args.dispatcher_user or None,
        heartbeat_s=args.heartbeat,
        stop_grace_s=args.stop_grace,
        handover_after_s=args.handover_after,
        max_steps=args.max_steps,
        max_rss_mb=args.max_rss_mb,
    )
    worker = Worker(op, settings)
    try:
        # uvloop, where it is installed (a dependency on Linux and macOS), halves the event
        # loop's CPU per step; the standard loop works the same.
        import uvloop
    except ImportError:
        return asyncio.run(worker.run())
    return uvloop.run(worker.run())
