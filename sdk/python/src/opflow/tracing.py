"""Trace context across the queue: a step's events carry the W3C ``traceparent`` and
``tracestate`` of its step. With ``opentelemetry-api`` installed (``opflow-sdk[otel]``), the
worker continues the step message's trace in a ``step`` span of its own and puts that span's
context on the events; without it, the step message's context passes through unchanged."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

TRACE_HEADERS = ("traceparent", "tracestate")

try:
    import opentelemetry.propagate as propagate
    import opentelemetry.trace as trace

    _tracer: Any = trace.get_tracer("opflow.worker")
except ImportError:  # pragma: no cover - depends on what is installed
    _tracer = None


def _tracing_configured() -> bool:
    """Whether the op configured a tracer provider: without one, a span would be a no-op that
    costs the worker CPU per step, and the step's context passes through as it is."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value
    return None


def incoming(headers: Mapping[str, object] | None) -> dict[str, str]:
    """The trace headers of a step message (long or short strings)."""
    found: dict[str, str] = {}
    for name in TRACE_HEADERS:
        text = _text((headers or {}).get(name))
        if text:
            found[name] = text
    return found


class StepSpan:
    """The step's span (when OpenTelemetry is installed) and the headers its events carry."""

    def __init__(self, headers: dict[str, str], label: str, op: str) -> None:
        self.headers = headers
        self._span: Any = None
        if _tracer is not None and _tracing_configured():
            parent = propagate.extract(headers)
            self._span = _tracer.start_span("step", context=parent, attributes={"step": label, "op": op})
            carrier: dict[str, str] = {}
            propagate.inject(carrier, context=trace.set_span_in_context(self._span))
            self.headers = {k: v for k, v in carrier.items() if k in TRACE_HEADERS} or headers

    def end(self, error: str | None = None) -> None:
        if self._span is not None:
            if error is not None:
                self._span.set_attribute("error", error[:1024])
            self._span.end()
