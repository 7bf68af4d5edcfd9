"""``noop-py``: does nothing, slowly or failing on request; the Rust ``noop`` in Python. The
conformance suite (``integration/tests/conformance.rs``) runs the same scenarios against both,
so its parameters and what it reports are the Rust noop's. Like the Rust noop, its handler is
async: it sleeps on the event loop and burns CPU on a thread of its own."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import opflow

op = opflow.Op(
    "noop-py",
    os.environ.get("OPFLOW_OP_VERSION", "1.1.0"),
    summary="Does nothing, optionally slowly or failing; for tests and benchmarks (Python SDK)",
    # noop serves tests and benchmarks, whose sleeps stay well under a minute.
    longest_step_ms=60_000,
    reuse_from=os.environ.get("NOOP_REUSE_FROM"),
)


def _doc(text: str) -> dict[str, str]:
    return {"description": text}


@dataclass
class Params:
    sleep_ms: int = field(default=0, metadata=_doc("Milliseconds to wait before finishing"))
    burn_ms: int = field(default=0, metadata=_doc("Milliseconds of CPU to burn before finishing (ignores stop requests)"))
    burn_until_attempt: int = field(default=0, metadata=_doc("Burn only on attempts before this one (0: always)"))
    lock_file: str | None = field(default=None, metadata=_doc("Hold an exclusive lock on this file while running"))
    fail: str = field(
        default="never",
        metadata=_doc("never, fatal (fail for good), retryable (fail every attempt), panic (raise), or crash (abort the worker)"),
    )
    fail_until_attempt: int = field(default=0, metadata=_doc("Fail retryably on attempts before this one"))
    nul_texts: bool = field(default=False, metadata=_doc("Put NUL characters in every text it reports"))
    say: str | None = field(default=None, metadata=_doc("Report this text as a log line and progress message"))
    output_bytes: int = field(default=0, metadata=_doc("Pad the output to about this many bytes"))
    chatty: bool = field(default=False, metadata=_doc("Report a log line and progress halfway"))
    log_lines: int = field(default=0, metadata=_doc("Log this many lines (of log_line_bytes each)"))
    log_line_bytes: int = field(default=0, metadata=_doc("The length of each of log_lines"))
    echo: Any = field(default=None, metadata=_doc("A value to put in the output as `echo`"))
    materialize: dict[str, Any] | None = field(default=None, metadata=_doc("Metadata to report as materialized"))
    check: str | None = field(default=None, metadata=_doc("Report a check of this name (passed unless check_fails_on)"))
    check_fails_on: list[str] = field(default_factory=list, metadata=_doc("Partitions on which the check fails"))


@op.step
async def run(ctx: opflow.StepContext, params: Params) -> dict[str, Any]:
    nul = "\0" if params.nul_texts else ""
    if params.nul_texts:
        ctx.log("warn", f"raw stderr:{nul}")
        ctx.progress(0.5, f"half{nul}way")
        ctx.materialized({f"path{nul}": f"/tmp/{nul}x"})
    if params.say is not None:
        ctx.log("warn", params.say)
        ctx.progress(0.5, params.say)
    said = params.say or ""
    if params.chatty:
        ctx.log("info", f"working on attempt {ctx.attempt}")
        ctx.progress(0.5, "halfway")
    if params.log_lines > 0:
        line = "l" * params.log_line_bytes
        for _ in range(params.log_lines):
            ctx.log("info", line)
    if params.check is not None:
        failed = ctx.partition is not None and ctx.partition in params.check_fails_on
        detail = f"partition {ctx.partition} is in check_fails_on" if failed else None
        ctx.check(params.check, not failed, detail)
    lock = _hold_lock(params.lock_file) if params.lock_file else None
    if params.sleep_ms > 0 and await ctx.sleep(params.sleep_ms / 1000):
        # A well-behaved handler: it stops when told to (a timeout, a canceled run).
        raise opflow.Retryable("stopped while sleeping, as told")
    if params.burn_ms > 0 and (params.burn_until_attempt == 0 or ctx.attempt < params.burn_until_attempt):
        # A badly behaved one: the spin ignores every request to stop.
        await asyncio.to_thread(_spin, params.burn_ms / 1000)
    del lock
    if params.fail == "fatal":
        raise opflow.Fatal(f"failing as configured (fail: fatal){nul}{said}")
    if params.fail == "retryable":
        raise opflow.Retryable("failing as configured (fail: retryable)")
    if params.fail == "panic":
        raise RuntimeError("panicking as configured (fail: panic)")
    if params.fail == "crash":
        print("noop-py: aborting the worker process as configured (fail: crash)", file=sys.stderr)
        os.abort()
    if ctx.attempt < params.fail_until_attempt:
        raise opflow.Retryable(
            f"failing attempt {ctx.attempt} as configured (fail_until_attempt: {params.fail_until_attempt})"
        )
    output: dict[str, Any] = {"op_version": op.version, "attempt": ctx.attempt, "inputs": len(ctx.inputs)}
    if params.nul_texts:
        output["text"] = f"out{nul}put"
    if params.materialize is not None:
        ctx.materialized(params.materialize)
    if params.echo is not None:
        output["echo"] = params.echo
    if params.output_bytes > 0:
        output["padding"] = "x" * max(0, params.output_bytes - 100)
    return output


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def _hold_lock(path: str) -> Any:
    """An exclusive lock on ``path`` until the returned file is closed (or the process ends)."""
    try:
        handle = open(path, "a")
    except OSError as error:
        raise opflow.Fatal(f"cannot open lock_file {path}: {error}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise opflow.Fatal(f"another attempt of this step is still running: {path} is locked") from None
    return handle


def main() -> None:
    op.main()


if __name__ == "__main__":
    main()
