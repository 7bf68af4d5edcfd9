"""An op: its typed config (a dataclass), its handler, and its ``--describe`` description."""

import asyncio
import dataclasses
import threading
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import pytest

import opflow
from opflow.op import ConfigField, ConfigSpec
from opflow.protocol import StepMessage

RUN_ID = "0192f0c2-7a3b-7c01-8e5f-2b9d4a6c8e10"


@dataclass
class Config:
    vol: float = field(metadata={"description": "Annualised volatility, e.g. 0.65"})
    horizon_days: int = field(default=30, metadata={"description": "Days simulated"})
    name: str = "paths"
    exact: bool = False
    levels: list[float] = field(default_factory=lambda: [0.95, 0.99], metadata={"description": "Levels"})
    extra: dict[str, Any] = field(default_factory=dict)
    limit: Optional[int] = None
    seed: int | None = None
    anything: Any = None
    derived: int = field(default=0, init=False)


def test_describe_gives_each_field_its_json_type_default_and_description() -> None:
    described = ConfigSpec(Config).describe()
    assert described == [
        ConfigField("vol", "number", "Annualised volatility, e.g. 0.65", None),
        ConfigField("horizon_days", "integer", "Days simulated", 30),
        ConfigField("name", "string", "", "paths"),
        ConfigField("exact", "boolean", "", False),
        ConfigField("levels", "array", "Levels", [0.95, 0.99]),
        ConfigField("extra", "object", "", {}),
        ConfigField("limit", "integer", "", None),
        ConfigField("seed", "integer", "", None),
        ConfigField("anything", "any", "", None),
    ], "a field the constructor does not take is not a parameter"


def test_a_config_type_must_be_a_dataclass() -> None:
    class NotADataclass:
        vol: float

    with pytest.raises(TypeError, match="must be a dataclass"):
        ConfigSpec(NotADataclass)


def test_build_takes_the_keys_it_knows_and_ignores_the_rest() -> None:
    config = ConfigSpec(Config).build({"vol": 0.4, "seed": 3, "swept_elsewhere": "x"}, "asset `a`")
    assert config == Config(vol=0.4, seed=3)
    assert config.horizon_days == 30
    assert config.levels == [0.95, 0.99]


def test_build_refuses_a_missing_required_key_naming_it() -> None:
    with pytest.raises(opflow.Fatal) as raised:
        ConfigSpec(Config).build({"horizon_days": 3}, "asset `paths` (op x@1.0.0)")
    message = raised.value.message
    assert "invalid parameters for asset `paths` (op x@1.0.0)" in message
    assert "missing field `vol`" in message
    assert "fix the asset's `config` or `sweep` in the plan" in message
    assert raised.value.retryable is False


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("vol", "0.4", "number"),
        ("horizon_days", 1.5, "integer"),
        ("horizon_days", "30", "integer"),
        ("name", 3, "string"),
        ("exact", 1, "boolean"),
        ("levels", {"a": 1}, "array"),
        ("extra", [1], "object"),
        ("limit", "3", "integer"),
        ("seed", 0.5, "integer"),
    ],
)
def test_build_refuses_a_wrong_type_naming_the_key(key: str, value: Any, expected: str) -> None:
    params = {"vol": 0.4, key: value}
    with pytest.raises(opflow.Fatal) as raised:
        ConfigSpec(Config).build(params, "asset `a`")
    assert f"`{key}` is " in raised.value.message
    assert f"expected {expected}" in raised.value.message


def test_a_float_accepts_an_int() -> None:
    assert ConfigSpec(Config).build({"vol": 1}, "a").vol == 1


@pytest.mark.parametrize("key", ["horizon_days", "limit", "seed", "vol"])
def test_a_bool_is_not_a_number(key: str) -> None:
    params: dict[str, Any] = {"vol": 0.4, key: True}
    with pytest.raises(opflow.Fatal, match=f"`{key}` is true"):
        ConfigSpec(Config).build(params, "a")


def test_optional_fields_take_null_or_their_type() -> None:
    spec = ConfigSpec(Config)
    assert spec.build({"vol": 0.4, "limit": None, "seed": None}, "a").limit is None
    built = spec.build({"vol": 0.4, "limit": 5, "seed": 6}, "a")
    assert (built.limit, built.seed) == (5, 6)
    assert spec.build({"vol": 0.4, "anything": {"x": [1]}}, "a").anything == {"x": [1]}


def test_parameters_that_are_not_an_object_are_refused() -> None:
    with pytest.raises(opflow.Fatal, match="expected an object, got \\[1, 2\\]"):
        ConfigSpec(Config).build([1, 2], "a")


# Op


@dataclass
class Small:
    scenarios: int = field(default=1000, metadata={"description": "Scenarios simulated"})


def make_op(**options: Any) -> opflow.Op:
    op = opflow.Op("my-op", "1.0.0", summary="What it computes, in one line", **options)

    @op.step
    def run(ctx: opflow.StepContext, config: Small) -> dict[str, int]:
        return {"scenarios": config.scenarios, "step": ctx.step_id}

    return op


def context(config: Any = None, point: dict[str, Any] | None = None, op: str = "my-op@1.0.0") -> opflow.StepContext:
    message = StepMessage(
        run_id=RUN_ID, step_id=4, attempt=1, op=op, asset="a", config=config, point=point or {}
    )
    return opflow.StepContext(message, lambda kind, fields, droppable: True, threading.Event())


def test_the_description() -> None:
    assert make_op().description() == {
        "op": "my-op@1.0.0",
        "summary": "What it computes, in one line",
        "config": [{"name": "scenarios", "type": "integer", "description": "Scenarios simulated", "default": 1000}],
        "schema_version": 1,
    }


def test_longest_step_and_reuse_from_are_described_only_when_set() -> None:
    described = make_op(longest_step_ms=600_000, reuse_from="^1.0").description()
    assert described["longest_step_ms"] == 600_000
    assert described["reuse_from"] == "^1.0"
    assert list(described) == ["op", "summary", "config", "schema_version", "longest_step_ms", "reuse_from"]
    plain = make_op().description()
    assert "longest_step_ms" not in plain and "reuse_from" not in plain


def test_the_op_knows_its_name_version_and_reference() -> None:
    op = opflow.Op("price-paths", "2.0.0-rc.1", summary="s")
    assert (op.name, op.version, op.ref) == ("price-paths", "2.0.0-rc.1", "price-paths@2.0.0-rc.1")


@pytest.mark.parametrize("name", ["a", "price-paths", "a1-b2", "a" * 64])
def test_valid_op_names(name: str) -> None:
    assert opflow.Op(name, "1.0.0", summary="s").name == name


@pytest.mark.parametrize("name", ["", "Noop", "1noop", "-noop", "noop-", "no_op", "no op", "noöp", "a" * 65, "a@b"])
def test_invalid_op_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="op name"):
        opflow.Op(name, "1.0.0", summary="s")


@pytest.mark.parametrize("version", ["0.0.0", "1.4.2", "2.0.0-rc.1", "1.0.0+build.5", "1.0.0-alpha-1.2+sha.abc"])
def test_valid_op_versions(version: str) -> None:
    assert opflow.Op("noop", version, summary="s").version == version


@pytest.mark.parametrize("version", ["", "1", "1.0", "v1.0.0", "01.0.0", "1.02.0", "1.0.0-", "1.0.0+", "1.0.0 ", "latest"])
def test_invalid_op_versions_are_refused(version: str) -> None:
    with pytest.raises(ValueError, match="semantic version"):
        opflow.Op("noop", version, summary="s")


def test_the_handler_gets_its_typed_config_from_the_step_parameters() -> None:
    op = make_op()
    assert op.call(context(config={"scenarios": 5})) == {"scenarios": 5, "step": 4}
    assert op.call(context(config={"scenarios": 5}, point={"scenarios": 7})) == {"scenarios": 7, "step": 4}
    assert op.call(context()) == {"scenarios": 1000, "step": 4}, "a null config is an empty object"


def test_bad_parameters_fail_the_step_for_good() -> None:
    with pytest.raises(opflow.Fatal, match="asset `a` \\(op my-op@1.0.0\\)"):
        make_op().call(context(config={"scenarios": "many"}))


def test_a_handler_without_a_config() -> None:
    op = opflow.Op("bare", "1.0.0", summary="s")
    seen: list[opflow.StepContext] = []

    @op.step
    def run(ctx: opflow.StepContext) -> None:
        seen.append(ctx)

    ctx = context(config={"anything": "goes"})
    assert op.call(ctx) is None
    assert seen == [ctx]
    assert op.config is None
    assert op.description()["config"] == []
    assert op.is_async is False


def test_step_returns_the_handler_unchanged() -> None:
    op = opflow.Op("bare", "1.0.0", summary="s")

    def run(ctx: opflow.StepContext) -> int:
        return 1

    assert op.step(run) is run


def test_an_async_handler_is_called_as_a_coroutine() -> None:
    op = opflow.Op("bare", "1.0.0", summary="s")

    @op.step
    async def run(ctx: opflow.StepContext, config: Small) -> int:
        await asyncio.sleep(0)
        return config.scenarios

    assert op.is_async is True
    assert asyncio.run(op.call(context(config={"scenarios": 2}, op="bare@1.0.0"))) == 2


def test_an_op_takes_one_handler() -> None:
    op = make_op()
    with pytest.raises(TypeError, match="already has a handler"):
        op.step(lambda ctx: None)


@pytest.mark.parametrize("arity", [0, 3])
def test_a_handler_takes_ctx_or_ctx_and_config(arity: int) -> None:
    def none() -> None:
        pass

    def three(ctx: opflow.StepContext, config: Small, more: int) -> None:
        pass

    with pytest.raises(TypeError, match="takes \\(ctx\\) or \\(ctx, config\\)"):
        opflow.Op("bare", "1.0.0", summary="s").step(none if arity == 0 else three)


def test_the_config_parameter_must_be_annotated_with_a_dataclass() -> None:
    def untyped(ctx, config):  # type: ignore[no-untyped-def]
        pass

    def not_a_dataclass(ctx: opflow.StepContext, config: dict[str, Any]) -> None:
        pass

    with pytest.raises(TypeError, match="annotate the handler's `config`"):
        opflow.Op("bare", "1.0.0", summary="s").step(untyped)
    with pytest.raises(TypeError, match="must be a dataclass"):
        opflow.Op("bare", "1.0.0", summary="s").step(not_a_dataclass)


def test_calling_an_op_without_a_handler_says_so() -> None:
    with pytest.raises(TypeError, match="decorate one with @op.step"):
        opflow.Op("bare", "1.0.0", summary="s").call(context(op="bare@1.0.0"))


def test_step_errors_say_whether_to_retry() -> None:
    assert opflow.Retryable("flaky").retryable is True
    assert opflow.Fatal("bad input").retryable is False
    assert opflow.StepError("other").retryable is False
    assert opflow.Retryable("flaky").message == "flaky"
    assert issubclass(opflow.Retryable, opflow.StepError) and issubclass(opflow.Fatal, opflow.StepError)


def test_main_describes_and_exits_zero(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPFLOW_HEARTBEAT", "OPFLOW_STOP_GRACE", "OPFLOW_HANDOVER_AFTER", "OPFLOW_MAX_STEPS", "OPFLOW_MAX_RSS_MB", "OPFLOW_LOG_FORMAT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit) as exited:
        make_op().main(["--describe"])
    assert exited.value.code == 0
    assert '"op": "my-op@1.0.0"' in capsys.readouterr().out


def test_config_fields_are_plain_data() -> None:
    assert dataclasses.asdict(ConfigField("n", "integer", "d", 1)) == {
        "name": "n",
        "type": "integer",
        "description": "d",
        "default": 1,
    }


@dataclass
class Inner:
    rate: float
    tags: list[str] = field(default_factory=list)


@dataclass
class Outer:
    inner: Inner
    mode: Literal["fast", "exact"] = "fast"
    weights: dict[str, float] = field(default_factory=dict)


def test_nested_dataclasses_literals_and_items_are_checked_all_the_way_down() -> None:
    spec = ConfigSpec(Outer)
    built = spec.build({"inner": {"rate": 1, "tags": ["a"]}, "mode": "exact", "weights": {"x": 2}}, "asset `a`")
    assert built == Outer(Inner(1, ["a"]), "exact", {"x": 2})
    assert [f.type for f in spec.describe()] == ["object", "string", "object"]
    for params, needle in [
        ({"inner": {"rate": "high"}}, "`inner.rate` is \"high\", expected number"),
        ({"inner": {"rate": 1, "tags": ["a", 2]}}, "`inner.tags[1]` is 2, expected string"),
        ({"inner": {}}, "missing field `inner.rate`"),
        ({"inner": {"rate": 1}, "mode": "slow"}, "`mode` is \"slow\", expected \"fast\" or \"exact\""),
        ({"inner": {"rate": 1}, "weights": {"x": "2"}}, "`weights.x` is \"2\", expected number"),
    ]:
        with pytest.raises(opflow.Fatal) as raised:
            spec.build(params, "asset `a`")
        assert needle in raised.value.message, raised.value.message


def test_an_error_naming_a_plans_key_is_bounded_whatever_the_key() -> None:
    spec = ConfigSpec(Outer)
    with pytest.raises(opflow.Fatal) as raised:
        spec.build({"inner": {"rate": 1}, "weights": {"k" * 100_000: "x" * 100_000}}, "asset `a`")
    assert len(raised.value.message) < 1000, len(raised.value.message)
