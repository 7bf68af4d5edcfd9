"""An op: its name, version, summary, typed config and handler, and what it says about itself
with ``--describe``. The registry learns an op from this description, so the two never
disagree about its name or version."""

from __future__ import annotations

import dataclasses
import inspect
import json
import types
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, Union, get_args, get_origin

from .protocol import SCHEMA_VERSION, check_op_ref, cut

if TYPE_CHECKING:
    from .context import StepContext

C = TypeVar("C")
Handler = Callable[..., Any]


class StepError(Exception):
    """A handler's failure. Raise :class:`Retryable` when another attempt may succeed (a
    flaky upstream), :class:`Fatal` when it cannot (bad input). Any other exception a
    handler raises fails the step, not retryably."""

    retryable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Retryable(StepError):
    """Another attempt may succeed: the dispatcher retries the step (the plan's ``retry``)."""

    retryable = True


class Fatal(StepError):
    """No attempt can succeed: the step fails for good and its downstream is skipped."""

    retryable = False


_JSON_TYPES: dict[Any, str] = {
    int: "integer",
    float: "number",
    str: "string",
    bool: "boolean",
    list: "array",
    tuple: "array",
    dict: "object",
}


def _json_type(annotation: Any) -> str:
    """The JSON type name of a config field's annotation, for ``--describe``."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        named = {_json_type(a) for a in get_args(annotation) if a is not type(None)}
        return named.pop() if len(named) == 1 else "any"
    if origin is Literal:
        named = {_JSON_TYPES.get(type(a), "any") for a in get_args(annotation)}
        return named.pop() if len(named) == 1 else "any"
    if dataclasses.is_dataclass(annotation):
        return "object"
    return _JSON_TYPES.get(origin or annotation, "any")


class _Mismatch(Exception):
    """A config value that does not fit its annotation: where (``a.b[2]``) and what was expected."""

    def __init__(self, path: str, value: Any, expected: str) -> None:
        super().__init__(path)
        self.path, self.value, self.expected = path, value, expected


def _convert(annotation: Any, value: Any, path: str) -> Any:
    """``value`` (JSON) as ``annotation`` says: checked all the way down, nested dataclasses
    built; raises :class:`_Mismatch` naming the first value that does not fit."""
    if annotation is Any:
        return value
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin in (Union, types.UnionType):
        for arm in args:
            try:
                return _convert(arm, value, path)
            except _Mismatch:
                continue
        raise _Mismatch(path, value, _json_type(annotation))
    if origin is Literal:
        if value in args:
            return value
        raise _Mismatch(path, value, " or ".join(json.dumps(a) for a in args))
    if annotation is type(None):
        if value is None:
            return None
        raise _Mismatch(path, value, "null")
    kind = origin or annotation
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind in (list, tuple) and isinstance(value, list):
        item = args[0] if args else Any
        items = [_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)] if args else value
        return tuple(items) if kind is tuple else items
    if kind is dict and isinstance(value, dict):
        inner = args[1] if len(args) == 2 else Any
        return {k: _convert(inner, v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(kind, type) and dataclasses.is_dataclass(kind) and isinstance(value, dict):
        return ConfigSpec(kind).convert(value, path)
    if kind in (str, bool) and isinstance(value, kind):
        return value
    if isinstance(kind, type) and kind not in (int, float, list, tuple, dict) and isinstance(value, kind):
        return value
    raise _Mismatch(path, value, _json_type(annotation))


@dataclasses.dataclass(frozen=True)
class ConfigField:
    name: str
    type: str
    description: str
    default: Any = None


class ConfigSpec(Generic[C]):
    """A handler's config type (a dataclass): its fields for ``--describe``, and how a step's
    parameters become an instance of it. Keys the dataclass lacks are ignored, so a plan may
    sweep any key over an op."""

    def __init__(self, cls: type[C]) -> None:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"the config type {cls.__name__} must be a dataclass")
        self.cls = cls
        self.hints = typing.get_type_hints(cls)
        self.fields = [f for f in dataclasses.fields(cls) if f.init]

    def describe(self) -> list[ConfigField]:
        described = []
        for f in self.fields:
            default: Any = None
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            described.append(
                ConfigField(
                    name=f.name,
                    type=_json_type(self.hints.get(f.name, Any)),
                    description=str(f.metadata.get("description", "")),
                    default=default,
                )
            )
        return described

    def build(self, params: Any, where: str) -> C:
        """The config of one step; a :class:`Fatal` error names the key and the fix."""
        if not isinstance(params, dict):
            raise Fatal(f"invalid parameters for {where}: expected an object, got {json.dumps(params)[:200]}; "
                        "fix the asset's `config` or `sweep` in the plan")
        try:
            return self.convert(params, "")
        except _Mismatch as mismatch:
            # The path holds the plan's own keys: cut where the message is made.
            path = cut(mismatch.path, 200)
            if mismatch.expected == "present":
                what = f"missing field `{path}`"
            else:
                what = f"`{path}` is {cut(json.dumps(mismatch.value), 200)}, expected {cut(mismatch.expected, 200)}"
            raise Fatal(
                f"invalid parameters for {where}: {what}; fix the asset's `config` or `sweep` in the plan"
            ) from None

    def convert(self, params: dict[str, Any], path: str) -> C:
        """An instance from a JSON object; raises :class:`_Mismatch` at the first misfit."""
        values = {}
        for f in self.fields:
            where = f"{path}.{f.name}" if path else f.name
            if f.name not in params:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise _Mismatch(where, None, "present")
                continue
            values[f.name] = _convert(self.hints.get(f.name, Any), params[f.name], where)
        return self.cls(**values)


class Op:
    """One op version: ``Op("loss-aggregate", "1.0.0", summary=...)``, then a handler with
    :meth:`step`, then :meth:`main` as the program's entry point."""

    def __init__(
        self,
        name: str,
        version: str,
        *,
        summary: str,
        longest_step_ms: int | None = None,
        reuse_from: str | None = None,
    ) -> None:
        self.ref = check_op_ref(name, version)
        self.name = name
        self.version = version
        self.summary = summary
        self.longest_step_ms = longest_step_ms
        self.reuse_from = reuse_from
        self.handler: Handler | None = None
        self.config: ConfigSpec[Any] | None = None
        self.is_async = False

    def step(self, handler: Handler) -> Handler:
        """Decorates the op's handler: ``def run(ctx: StepContext, config: MyConfig) -> output``.
        The config parameter is optional; its annotation (a dataclass) is the typed config.
        A plain function runs on a thread of its own, so CPU-bound work never starves the
        worker's heartbeats; an ``async def`` runs on the worker's event loop, which saves
        the hop to that thread (about 0.1 ms of CPU a step) but must never block it: await
        I/O, and hand CPU-bound work to ``asyncio.to_thread``."""
        if self.handler is not None:
            raise TypeError(f"op {self.ref} already has a handler")
        parameters = list(inspect.signature(handler).parameters.values())
        if not 1 <= len(parameters) <= 2:
            raise TypeError("a handler takes (ctx) or (ctx, config)")
        if len(parameters) == 2:
            hints = typing.get_type_hints(handler)
            config_type = hints.get(parameters[1].name)
            if config_type is None:
                raise TypeError(f"annotate the handler's `{parameters[1].name}` with its config dataclass")
            self.config = ConfigSpec(config_type)
        self.handler = handler
        self.is_async = inspect.iscoroutinefunction(handler)
        return handler

    def description(self) -> dict[str, Any]:
        """The ``OpDescription`` (``protocol/src/describe.rs``)."""
        described: dict[str, Any] = {
            "op": self.ref,
            "summary": self.summary,
            "config": [dataclasses.asdict(f) for f in (self.config.describe() if self.config else [])],
            "schema_version": SCHEMA_VERSION,
        }
        if self.longest_step_ms is not None:
            described["longest_step_ms"] = self.longest_step_ms
        if self.reuse_from is not None:
            described["reuse_from"] = self.reuse_from
        return described

    def call(self, ctx: StepContext) -> Any:
        """Calls the handler with the step's typed config (a coroutine for an async one)."""
        if self.handler is None:
            raise TypeError(f"op {self.ref} has no handler; decorate one with @op.step")
        if self.config is None:
            return self.handler(ctx)
        config = self.config.build(ctx.params, f"asset `{ctx.asset}` (op {self.ref})")
        return self.handler(ctx, config)

    def main(self, argv: list[str] | None = None) -> typing.NoReturn:
        """The op program's entry point: ``--describe``, or run as a worker until told to stop."""
        from .cli import main

        raise SystemExit(main(self, argv))
