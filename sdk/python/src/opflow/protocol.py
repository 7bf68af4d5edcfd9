"""The wire protocol: what travels over RabbitMQ between the dispatcher and an op.

The Rust types in ``protocol/`` are the source of truth, ``docs/protocol.md`` the contract
and ``protocol/schemas/`` their JSON Schemas. This module reads step messages and cancel
records and writes events exactly as they say, and nothing here touches the network.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Final

SCHEMA_VERSION: Final = 1

EVENTS_EXCHANGE: Final = "opflow.events"
CANCELS: Final = "opflow.cancels"
"""The cancels stream queue, and the fanout exchange in front of it: the same name."""

STEP_MESSAGE_TYPE: Final = "opflow.step"
EVENT_MESSAGE_TYPE: Final = "opflow.event"
CANCEL_MESSAGE_TYPE: Final = "opflow.cancel"

MAX_OUTPUT_BYTES: Final = 64 * 1024
MAX_LOG_LINE_BYTES: Final = 16 * 1024
MAX_ERROR_BYTES: Final = 16 * 1024
"""An error, a check's detail: what the dispatcher keeps."""
MAX_CHECK_NAME_BYTES: Final = 1024
MAX_PROGRESS_MESSAGE_BYTES: Final = 1024
MAX_LABEL_BYTES: Final = 512

_OP_NAME = re.compile(r"[a-z]([a-z0-9-]{0,62}[a-z0-9])?")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
U32_MAX: Final = 2**32 - 1
U64_MAX: Final = 2**64 - 1
_SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?"
)


class ProtocolError(ValueError):
    """A message this SDK cannot read: not versioned, another version, or malformed."""


def check_op_ref(name: str, version: str) -> str:
    """The op reference ``name@version``; raises ValueError naming what is wrong."""
    if not _OP_NAME.fullmatch(name):
        raise ValueError(
            f"op name {name!r} is invalid: 1 to 64 lowercase letters, digits and '-', "
            "starting with a letter and not ending with '-'"
        )
    if not _SEMVER.fullmatch(version):
        raise ValueError(f"op version {version!r} is not a semantic version like 1.4.2")
    return f"{name}@{version}"


def op_queue(op_ref: str) -> str:
    """The durable queue of an op version: ``price-paths@1.4.2`` → ``opflow.op.price-paths.1.4.2``."""
    name, version = op_ref.split("@", 1)
    return f"opflow.op.{name}.{version}"


def now() -> datetime:
    return datetime.now(timezone.utc)


def timestamp(at: datetime) -> str:
    """RFC 3339 in UTC with ``Z``, as the Rust SDK writes it."""
    return at.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def cut(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8, on a character boundary, ending in
    ``… (cut from N bytes)``: the protocol's one way of cutting a text."""
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= limit:
        return text
    suffix = f"… (cut from {len(encoded)} bytes)"
    room = max(0, limit - len(suffix.encode("utf-8")))
    return encoded[:room].decode("utf-8", "ignore") + suffix


def _version(body: object) -> dict[str, Any]:
    if not isinstance(body, dict) or not isinstance(body.get("v"), int) or isinstance(body.get("v"), bool):
        raise ProtocolError('not versioned: the message has no numeric "v"')
    if body["v"] != SCHEMA_VERSION:
        raise ProtocolError(f"unsupported version {body['v']}: this SDK reads version {SCHEMA_VERSION}")
    return body


def _decode(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise ProtocolError(f"not versioned: not JSON ({error})") from None
    return _version(body)


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = body.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"malformed: field {name!r} is missing or not {_kind_name(kind)}")
    return value


def _optional(body: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"malformed: field {name!r} is not {_kind_name(kind)}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _run_id(body: dict[str, Any]) -> str:
    text = _field(body, "run_id", str)
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise ProtocolError(f"malformed: run_id {text!r} is not a UUID") from None


@dataclass(frozen=True)
class StepInput:
    """The output of an upstream step this step reads."""

    asset: str
    step_id: int
    output: Any
    partition: str | None = None
    point: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StepMessage:
    """One attempt of one step (``StepMessage`` in ``protocol/src/step.rs``)."""

    run_id: str
    step_id: int
    attempt: int
    op: str
    asset: str
    partition: str | None = None
    point: dict[str, Any] = field(default_factory=dict)
    config: Any = None
    inputs: tuple[StepInput, ...] = ()
    timeout_ms: int | None = None

    def params(self) -> Any:
        """The plan's ``config`` with the sweep point laid over it (a sweep value wins). With no
        config, an empty object; with a point and a config that is not an object, the point."""
        if not self.point:
            return {} if self.config is None else self.config
        if isinstance(self.config, dict):
            return {**self.config, **self.point}
        return dict(self.point)

    def label(self) -> str:
        """``asset``, ``asset[partition]``, ``asset{k=v,…}`` or both, cut to 512 bytes."""
        text = self.asset
        if self.partition is not None:
            text += f"[{self.partition}]"
        if self.point:
            values = ",".join(
                f"{k}={v if isinstance(v, str) else json.dumps(v, separators=(',', ':'))}"
                for k, v in sorted(self.point.items())
            )
            text += "{" + values + "}"
        return cut(text, MAX_LABEL_BYTES)


def decode_step(raw: bytes) -> StepMessage:
    """Reads a step message: ``"v"`` first, then the rest. Unknown fields are ignored."""
    body = _decode(raw)
    inputs = []
    for item in _optional(body, "inputs", list) or []:
        if not isinstance(item, dict):
            raise ProtocolError("malformed: an input is not an object")
        if "output" not in item:
            raise ProtocolError("malformed: an input has no 'output'")
        inputs.append(
            StepInput(
                asset=_field(item, "asset", str),
                step_id=_field(item, "step_id", int),
                output=item["output"],
                partition=_optional(item, "partition", str),
                point=_optional(item, "point", dict) or {},
            )
        )
    op = _field(body, "op", str)
    if "@" not in op:
        raise ProtocolError(f"malformed: op {op!r} is not name@version")
    attempt = _field(body, "attempt", int)
    step_id = _field(body, "step_id", int)
    if not (0 <= attempt <= U32_MAX and 0 <= step_id <= U32_MAX):
        raise ProtocolError("malformed: step_id or attempt is not an unsigned 32-bit integer")
    timeout_ms = _optional(body, "timeout_ms", int)
    if timeout_ms is not None and not 0 <= timeout_ms <= U64_MAX:
        raise ProtocolError("malformed: timeout_ms is not an unsigned 64-bit integer")
    return StepMessage(
        run_id=_run_id(body),
        step_id=step_id,
        attempt=attempt,
        op=op,
        asset=_field(body, "asset", str),
        partition=_optional(body, "partition", str),
        point=_optional(body, "point", dict) or {},
        config=body.get("config"),
        inputs=tuple(inputs),
        timeout_ms=timeout_ms,
    )


@dataclass(frozen=True)
class CancelRecord:
    """A record of the cancels stream: a run, one step attempt, or a worker's marker."""

    kind: str
    run_id: str | None = None
    step_id: int | None = None
    attempt: int | None = None
    nonce: str | None = None


def decode_cancel(raw: bytes) -> CancelRecord:
    body = _decode(raw)
    kind = body.get("kind")
    if not isinstance(kind, dict) or len(kind) != 1:
        raise ProtocolError("malformed: 'kind' is not an object with one key")
    ((name, fields),) = kind.items()
    if not isinstance(fields, dict):
        raise ProtocolError(f"malformed: kind {name!r} holds no object")
    if name == "run":
        return CancelRecord("run", run_id=_run_id(fields))
    if name == "step":
        return CancelRecord(
            "step",
            run_id=_run_id(fields),
            step_id=_field(fields, "step_id", int),
            attempt=_field(fields, "attempt", int),
        )
    if name == "marker":
        return CancelRecord("marker", nonce=_field(fields, "nonce", str))
    raise ProtocolError(f"malformed: unknown cancel kind {name!r}")


def encode_marker(nonce: str) -> bytes:
    record = {"v": SCHEMA_VERSION, "at": timestamp(now()), "kind": {"marker": {"nonce": nonce}}}
    return json.dumps(record, separators=(",", ":")).encode()


TERMINAL_KINDS: Final = frozenset({"succeeded", "failed"})


@dataclass(frozen=True)
class Event:
    """What a worker says about one attempt of one step. ``kind`` is the event's name
    (``succeeded``) and ``fields`` its fields; ``heartbeat`` has none."""

    run_id: str
    step_id: int
    attempt: int
    worker: str
    kind: str
    fields: dict[str, Any] = field(default_factory=dict)
    at: datetime = field(default_factory=now)
    started_at: datetime | None = None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def routing_key(self) -> str:
        return f"step.{self.kind}"

    @property
    def terminal(self) -> bool:
        return self.kind in TERMINAL_KINDS

    def encode(self) -> bytes:
        body: dict[str, Any] = {
            "v": SCHEMA_VERSION,
            "id": self.id,
            "run_id": self.run_id,
            "step_id": self.step_id,
            "attempt": self.attempt,
            "at": timestamp(self.at),
            "worker": self.worker,
        }
        if self.started_at is not None:
            body["started_at"] = timestamp(self.started_at)
        body["kind"] = "heartbeat" if self.kind == "heartbeat" else {self.kind: self.fields}
        try:
            return utf8_json(body)
        except ValueError:
            # NaN or infinity in an output or metadata: JSON has no such numbers.
            return utf8_json(_finite(body))


def utf8_json(value: Any) -> bytes:
    """``value`` as compact JSON in UTF-8, the one way every text an op sends is made
    readable by the dispatcher: a lone surrogate (an undecodable file name, say), which
    serde_json refuses, becomes U+FFFD. Raises ValueError on NaN or infinity and TypeError on
    a value JSON cannot hold."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _LONE_SURROGATE.sub("\ufffd", text).encode("utf-8")


def _finite(value: Any) -> Any:
    """``value`` with every non-finite number replaced by ``null``, as serde_json writes them."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def compact_json_size(value: Any) -> int:
    """The size of ``value`` as compact JSON, the way the output limit counts it; raises
    TypeError for a value JSON cannot hold."""
    try:
        return len(utf8_json(value))
    except ValueError:
        return len(utf8_json(_finite(value)))
