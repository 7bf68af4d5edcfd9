"""The wire protocol (docs/protocol.md): reading step messages and cancel records, writing
events, parameters, labels and the one way every text is cut."""

from __future__ import annotations

import json
import math
import threading
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from opflow.context import StepContext
from opflow.protocol import (
    MAX_LABEL_BYTES,
    SCHEMA_VERSION,
    CancelRecord,
    Event,
    ProtocolError,
    StepInput,
    StepMessage,
    check_op_ref,
    compact_json_size,
    cut,
    decode_cancel,
    decode_step,
    encode_marker,
    op_queue,
    timestamp,
)

RUN_ID = "0192f0c2-7a3b-7c01-8e5f-2b9d4a6c8e10"

# docs/protocol.md §3, "The smallest one" and "A full example".
SMALLEST = (
    b'{"v": 1, "run_id": "0192f0c2-7a3b-7c01-8e5f-2b9d4a6c8e10", "step_id": 0, "attempt": 1, '
    b'"op": "noop@1.0.0", "asset": "a"}'
)
FULL: dict[str, Any] = {
    "v": 1,
    "run_id": RUN_ID,
    "step_id": 7,
    "attempt": 1,
    "op": "price-paths@1.0.0",
    "asset": "paths",
    "partition": "aave",
    "point": {"seed": 3, "vol": 0.4},
    "config": {"drift": 0.01, "vol": 0.1},
    "inputs": [{"asset": "prices", "step_id": 2, "partition": "aave", "output": {"spot": 1.02}}],
    "timeout_ms": 600000,
}


def raw(body: Any) -> bytes:
    return json.dumps(body).encode()


def full(**changes: Any) -> bytes:
    """The full example with fields replaced (a value of ``...`` removes the field)."""
    body = json.loads(json.dumps(FULL))
    for name, value in changes.items():
        if value is ...:
            body.pop(name, None)
        else:
            body[name] = value
    return raw(body)


def message(**fields: Any) -> StepMessage:
    defaults: dict[str, Any] = {"run_id": RUN_ID, "step_id": 0, "attempt": 1, "op": "noop@1.0.0", "asset": "a"}
    return StepMessage(**{**defaults, **fields})


def suffix(total: int) -> str:
    return f"… (cut from {total} bytes)"


# decode_step


def test_the_smallest_step_message_decodes_with_every_optional_field_at_its_default() -> None:
    step = decode_step(SMALLEST)
    assert step == StepMessage(run_id=RUN_ID, step_id=0, attempt=1, op="noop@1.0.0", asset="a")
    assert step.partition is None
    assert step.point == {}
    assert step.config is None
    assert step.inputs == ()
    assert step.timeout_ms is None
    assert step.params() == {}
    assert step.label() == "a"


def test_the_full_step_message_decodes_every_field() -> None:
    step = decode_step(raw(FULL))
    assert step.run_id == RUN_ID
    assert step.step_id == 7
    assert step.attempt == 1
    assert step.op == "price-paths@1.0.0"
    assert step.asset == "paths"
    assert step.partition == "aave"
    assert step.point == {"seed": 3, "vol": 0.4}
    assert step.config == {"drift": 0.01, "vol": 0.1}
    assert step.inputs == (StepInput(asset="prices", step_id=2, output={"spot": 1.02}, partition="aave"),)
    assert step.inputs[0].point == {}
    assert step.timeout_ms == 600000
    # "The example above gives {"drift": 0.01, "vol": 0.4, "seed": 3}."
    assert step.params() == {"drift": 0.01, "vol": 0.4, "seed": 3}
    assert step.label() == "paths[aave]{seed=3,vol=0.4}"


def test_an_input_output_may_be_null_and_an_input_may_have_a_point() -> None:
    step = decode_step(full(inputs=[{"asset": "p", "step_id": 1, "point": {"k": 1}, "output": None}]))
    assert step.inputs == (StepInput(asset="p", step_id=1, output=None, point={"k": 1}),)


def test_optional_fields_written_as_null_read_as_absent() -> None:
    step = decode_step(full(partition=None, point=None, config=None, inputs=None, timeout_ms=None))
    assert (step.partition, step.point, step.config, step.inputs, step.timeout_ms) == (None, {}, None, (), None)


def test_unknown_fields_are_ignored_everywhere() -> None:
    body = json.loads(json.dumps(FULL))
    body["added_in_a_later_sdk"] = {"anything": [1, 2]}
    body["inputs"][0]["also_new"] = True
    assert decode_step(raw(body)) == decode_step(raw(FULL))


@pytest.mark.parametrize("body", [b"", b"not json", b"\xff\xfe\x00", b"[1, 2]", b'"v"', b"1", b"null"])
def test_a_body_that_is_not_a_json_object_is_not_versioned(body: bytes) -> None:
    with pytest.raises(ProtocolError, match="not versioned"):
        decode_step(body)


@pytest.mark.parametrize("version", [..., None, "1", 1.0, True, [1]])
def test_a_message_without_a_numeric_v_is_not_versioned(version: Any) -> None:
    with pytest.raises(ProtocolError, match="not versioned"):
        decode_step(full(v=version))


def test_another_version_is_refused_before_the_rest_is_read() -> None:
    with pytest.raises(ProtocolError, match="unsupported version 2"):
        decode_step(raw({"v": 2, "whatever": "a version 2 message holds"}))
    with pytest.raises(ProtocolError, match="unsupported version 0"):
        decode_step(full(v=0))


@pytest.mark.parametrize(
    "changes",
    [
        {"run_id": ...},
        {"run_id": 7},
        {"run_id": "not-a-uuid"},
        {"step_id": ...},
        {"step_id": "7"},
        {"step_id": 7.5},
        {"step_id": True},
        {"step_id": -1},
        {"attempt": ...},
        {"attempt": "1"},
        {"attempt": -1},
        {"op": ...},
        {"op": 3},
        {"op": "price-paths"},
        {"asset": ...},
        {"asset": 1},
        {"partition": 3},
        {"point": [1, 2]},
        {"point": "seed=3"},
        {"inputs": {"asset": "prices"}},
        {"inputs": [1]},
        {"inputs": [{"asset": "prices", "step_id": 2}]},
        {"inputs": [{"step_id": 2, "output": 1}]},
        {"inputs": [{"asset": "prices", "step_id": "2", "output": 1}]},
        {"inputs": [{"asset": "prices", "step_id": 2, "partition": 1, "output": 1}]},
        {"inputs": [{"asset": "prices", "step_id": 2, "point": [], "output": 1}]},
        {"timeout_ms": "600000"},
        {"timeout_ms": 1.5},
        {"timeout_ms": False},
    ],
)
def test_a_malformed_field_is_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError, match="malformed"):
        decode_step(full(**changes))


def test_a_protocol_error_is_a_value_error() -> None:
    assert issubclass(ProtocolError, ValueError)


# Parameters


def test_the_point_is_laid_over_the_config_and_wins() -> None:
    step = message(config={"vol": 0.1, "drift": 0.01}, point={"vol": 0.4, "seed": 3})
    assert step.params() == {"vol": 0.4, "drift": 0.01, "seed": 3}
    assert step.config == {"vol": 0.1, "drift": 0.01}, "the config itself is left alone"


def test_without_a_point_the_config_is_used_as_it_is() -> None:
    assert message(config={"a": 1}).params() == {"a": 1}
    assert message(config=[1, 2]).params() == [1, 2]
    assert message(config=5).params() == 5
    assert message(config="text").params() == "text"


def test_a_point_over_a_config_that_is_not_an_object_is_the_point_alone() -> None:
    assert message(config=[1, 2], point={"seed": 3}).params() == {"seed": 3}
    assert message(config="text", point={"seed": 3}).params() == {"seed": 3}


def test_a_null_config_is_an_empty_object() -> None:
    assert message(config=None).params() == {}
    assert message(config=None, point={"seed": 3}).params() == {"seed": 3}


# Labels


def test_the_label_names_asset_partition_and_point() -> None:
    assert message(asset="paths").label() == "paths"
    assert message(asset="paths", partition="aave").label() == "paths[aave]"
    assert message(asset="paths", point={"vol": 0.2, "seed": 1}).label() == "paths{seed=1,vol=0.2}"
    assert message(asset="paths", partition="aave", point={"seed": 1}).label() == "paths[aave]{seed=1}"


def test_label_point_values_strings_bare_others_as_json_keys_sorted() -> None:
    point = {"s": "x y", "b": True, "n": None, "l": [1, 2], "f": 1.0, "i": 2}
    assert message(point=point).label() == 'a{b=true,f=1.0,i=2,l=[1,2],n=null,s=x y}'


def test_a_long_label_is_cut_to_512_bytes() -> None:
    step = message(asset="paths", partition="é" * 400, point={"k": "v"})
    whole = "paths[" + "é" * 400 + "]{k=v}"
    label = step.label()
    assert len(label.encode()) <= MAX_LABEL_BYTES
    assert label.endswith(suffix(len(whole.encode())))
    assert whole.startswith(label.removesuffix(suffix(len(whole.encode()))))
    short = message(asset="a" * MAX_LABEL_BYTES)
    assert short.label() == "a" * MAX_LABEL_BYTES, "exactly 512 bytes is not cut"


# cut


def test_a_text_that_fits_is_not_cut() -> None:
    assert cut("short", 10) == "short"
    assert cut("", 0) == ""
    assert cut("é" * 5, 10) == "é" * 5, "exactly at the limit in bytes"


def test_a_cut_text_ends_in_the_note_and_fits_the_limit() -> None:
    text = "x" * 100
    result = cut(text, 50)
    assert result == "x" * (50 - len(suffix(100).encode())) + suffix(100)
    assert len(result.encode()) == 50


def test_the_limit_counts_bytes_not_characters() -> None:
    text = "é" * 30  # 60 bytes, 30 characters
    result = cut(text, 40)
    assert result != text
    assert result.endswith(suffix(60))
    assert len(result.encode()) <= 40


@pytest.mark.parametrize("char", ["é", "€", "😀"])
def test_a_cut_never_splits_a_character(char: str) -> None:
    text = ("a" + char) * 40
    total = len(text.encode())
    for limit in range(len(suffix(total).encode()), total):
        result = cut(text, limit)
        assert result.endswith(suffix(total)), limit
        assert len(result.encode()) <= limit, limit
        kept = result.removesuffix(suffix(total))
        assert text.startswith(kept), limit
        # As much as fits: the next character would not.
        room = limit - len(suffix(total).encode())
        assert len(kept.encode()) <= room < len(text[: len(kept) + 1].encode()), limit


def test_a_limit_smaller_than_the_note_gives_the_note_alone() -> None:
    # As protocol/src/text.rs: "the note alone when `limit` is smaller than it".
    assert cut("x" * 100, 5) == suffix(100)


# Events


def event(kind: str, fields: dict[str, Any] | None = None, **extra: Any) -> Event:
    return Event(RUN_ID, 7, 2, "price-paths@1.0.0/worker-a/4242", kind, fields or {}, **extra)


def decoded(e: Event) -> dict[str, Any]:
    def refuse(constant: str) -> Any:
        raise AssertionError(f"{constant} is not JSON")

    body = json.loads(e.encode(), parse_constant=refuse)
    assert isinstance(body, dict)
    return body


def test_the_envelope() -> None:
    at = datetime(2026, 12, 1, 10, 0, 4, 873219, tzinfo=timezone.utc)
    e = event("started", {"op": "price-paths@1.0.0"}, at=at)
    body = decoded(e)
    assert body == {
        "v": 1,
        "id": e.id,
        "run_id": RUN_ID,
        "step_id": 7,
        "attempt": 2,
        "at": "2026-12-01T10:00:04.873219Z",
        "worker": "price-paths@1.0.0/worker-a/4242",
        "kind": {"started": {"op": "price-paths@1.0.0"}},
    }
    assert str(uuid.UUID(body["id"])) == body["id"]
    assert b" " not in e.encode(), "compact JSON"


def test_every_event_gets_its_own_id_and_a_utc_time() -> None:
    first, second = event("heartbeat"), event("heartbeat")
    assert first.id != second.id
    assert decoded(first)["at"].endswith("Z")


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        ("started", {"op": "price-paths@1.0.0"}),
        ("progress", {"fraction": 0.5, "message": "1000/2000 paths"}),
        ("log", {"level": "warn", "message": "3 prices were missing; interpolated"}),
        ("materialized", {"metadata": {"paths": 2000}}),
        ("check_result", {"name": "non_empty", "passed": False, "detail": "0 rows"}),
        ("succeeded", {"output": {"var95": 0.1}}),
        ("succeeded", {"output": None}),
        ("failed", {"error": "the price feed answered 503", "retryable": True}),
        ("abandoned", {"reason": "the broker closed the worker's channel"}),
    ],
)
def test_kinds_are_externally_tagged(kind: str, fields: dict[str, Any]) -> None:
    e = event(kind, fields)
    assert decoded(e)["kind"] == {kind: fields}
    assert e.routing_key == f"step.{kind}"
    assert e.terminal == (kind in ("succeeded", "failed"))


def test_a_heartbeat_is_the_bare_string() -> None:
    e = event("heartbeat")
    assert decoded(e)["kind"] == "heartbeat"
    assert decoded(event("heartbeat", {"ignored": 1}))["kind"] == "heartbeat"
    assert e.routing_key == "step.heartbeat"
    assert not e.terminal


def test_started_at_is_written_only_when_set() -> None:
    assert "started_at" not in decoded(event("succeeded", {"output": 1}))
    began = datetime(2026, 12, 1, 11, 0, 0, 20511, tzinfo=timezone(timedelta(hours=1)))
    body = decoded(event("succeeded", {"output": 1}, started_at=began))
    assert body["started_at"] == "2026-12-01T10:00:00.020511Z", "in UTC"


def test_timestamps_are_rfc3339_in_utc() -> None:
    assert timestamp(datetime(2026, 12, 1, 10, 0, 0, tzinfo=timezone.utc)) == "2026-12-01T10:00:00Z"
    paris = timezone(timedelta(hours=1))
    assert timestamp(datetime(2026, 12, 1, 11, 0, 0, 500000, tzinfo=paris)) == "2026-12-01T10:00:00.500000Z"


def reported(report: str, *args: Any) -> dict[str, Any]:
    """The fields a StepContext hands the worker for one report."""
    sent: list[dict[str, Any]] = []

    def emit(kind: str, fields: dict[str, Any], droppable: bool) -> bool:
        sent.append(fields)
        return True

    ctx = StepContext(message(), emit, threading.Event())
    getattr(ctx, report)(*args)
    (fields,) = sent
    return fields


def test_optional_fields_are_left_out_not_null() -> None:
    progress = decoded(event("progress", reported("progress", 1.0)))["kind"]
    assert progress == {"progress": {"fraction": 1.0}}
    check = decoded(event("check_result", reported("check", "non_empty", True)))["kind"]
    assert check == {"check_result": {"name": "non_empty", "passed": True}}
    assert "started_at" not in decoded(event("heartbeat"))


def test_nan_and_infinity_in_an_output_become_null() -> None:
    output = {"mean": math.nan, "tail": [1.0, math.inf, -math.inf], "nested": {"x": (math.nan, 2)}, "ok": 0.5}
    body = decoded(event("succeeded", {"output": output}))
    assert body["kind"] == {"succeeded": {"output": {"mean": None, "tail": [1.0, None, None], "nested": {"x": [None, 2]}, "ok": 0.5}}}
    assert body["run_id"] == RUN_ID, "the rest of the event is unchanged"
    metadata = decoded(event("materialized", {"metadata": math.nan}))
    assert metadata["kind"] == {"materialized": {"metadata": None}}


def test_texts_are_written_as_unicode_scalar_values_only() -> None:
    body = decoded(event("log", {"level": "info", "message": "read /data/caf\udce9.csv"}))
    message_text = body["kind"]["log"]["message"]
    message_text.encode("utf-8")  # what serde_json can hold: no lone surrogates


# Cancel records


def test_cancel_records_from_the_docs_decode() -> None:
    run = b'{"v": 1, "at": "2026-12-01T10:02:00.500Z", "kind": {"run": {"run_id": "' + RUN_ID.encode() + b'"}}}'
    step = (
        b'{"v": 1, "at": "2026-12-01T10:02:00.500Z", "kind": {"step": {"run_id": "'
        + RUN_ID.encode()
        + b'", "step_id": 12, "attempt": 1}}}'
    )
    nonce = "price-paths@1.0.0/worker-a/4242/6f1c2d3e-4b5a-4978-8e9f-0a1b2c3d4e5f"
    marker = b'{"v": 1, "at": "2026-12-01T10:00:00.100Z", "kind": {"marker": {"nonce": "' + nonce.encode() + b'"}}}'
    assert decode_cancel(run) == CancelRecord("run", run_id=RUN_ID)
    assert decode_cancel(step) == CancelRecord("step", run_id=RUN_ID, step_id=12, attempt=1)
    assert decode_cancel(marker) == CancelRecord("marker", nonce=nonce)


def test_a_cancel_record_with_unknown_fields_decodes() -> None:
    body = {"v": 1, "at": "2026-12-01T10:02:00.500Z", "by": "x", "kind": {"run": {"run_id": RUN_ID, "why": "x"}}}
    assert decode_cancel(raw(body)) == CancelRecord("run", run_id=RUN_ID)


@pytest.mark.parametrize(
    "kind",
    [
        {"pause": {"run_id": RUN_ID}},
        "run",
        {"run": {"run_id": RUN_ID}, "step": {"run_id": RUN_ID, "step_id": 1, "attempt": 1}},
        {},
        {"run": RUN_ID},
        {"run": {"run_id": "nope"}},
        {"step": {"run_id": RUN_ID, "step_id": 1}},
        {"step": {"run_id": RUN_ID, "step_id": "1", "attempt": 1}},
        {"marker": {}},
        None,
    ],
)
def test_a_cancel_record_of_an_unknown_kind_or_malformed_is_refused(kind: Any) -> None:
    with pytest.raises(ProtocolError, match="malformed"):
        decode_cancel(raw({"v": 1, "at": "2026-12-01T10:02:00.500Z", "kind": kind}))


def test_a_cancel_record_of_another_version_or_none_is_refused() -> None:
    with pytest.raises(ProtocolError, match="unsupported version"):
        decode_cancel(raw({"v": 2, "at": "x", "kind": {"future": {}}}))
    with pytest.raises(ProtocolError, match="not versioned"):
        decode_cancel(raw({"at": "x", "kind": {"run": {"run_id": RUN_ID}}}))
    with pytest.raises(ProtocolError, match="not versioned"):
        decode_cancel(b"\x00")


def test_a_marker_reads_back() -> None:
    encoded = encode_marker("w/1")
    body = json.loads(encoded)
    assert body["v"] == SCHEMA_VERSION
    assert body["kind"] == {"marker": {"nonce": "w/1"}}
    assert body["at"].endswith("Z")
    assert decode_cancel(encoded) == CancelRecord("marker", nonce="w/1")


# Names


def test_an_op_queue_is_named_after_the_op_reference() -> None:
    assert op_queue("price-paths@1.4.2") == "opflow.op.price-paths.1.4.2"
    assert op_queue(check_op_ref("noop", "2.0.0-rc.1")) == "opflow.op.noop.2.0.0-rc.1"


def test_a_trailing_newline_is_not_part_of_a_valid_name_or_version() -> None:
    with pytest.raises(ValueError):
        check_op_ref("noop\n", "1.0.0")
    with pytest.raises(ValueError):
        check_op_ref("noop", "1.0.0\n")


# Output size


def test_the_output_size_is_compact_json() -> None:
    assert compact_json_size({"a": [1, 2]}) == len(b'{"a":[1,2]}')
    assert compact_json_size(None) == 4


def test_the_output_size_counts_utf8_bytes() -> None:
    output = {"t": "é" * 10}
    assert compact_json_size(output) == len('{"t":"éééééééééé"}'.encode()) == 28
