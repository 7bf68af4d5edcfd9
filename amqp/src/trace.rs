//! Trace context in message headers: the dispatcher's span for a publish becomes the
//! parent of the worker's span for the step, and the worker's span the parent of the
//! dispatcher's span applying its events, so one trace follows a step across processes.
//!
//! This module is the only way trace context crosses the queue: W3C `traceparent` (and
//! `tracestate`) headers, written by [`current_context_headers`] where a message is built
//! inside the span it belongs to, and read by [`adopt_parent`] and [`link`].

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use opentelemetry::{
    propagation::{Extractor, Injector},
    trace::TraceContextExt,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct HeaderInjector<'a>(&'a mut FieldTable);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(ShortString::from(key), AMQPValue::LongString(LongString::from(value)));
    }
}

struct HeaderExtractor<'a>(&'a FieldTable);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match self.0.inner().get(&ShortString::from(key))? {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str()),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0.inner().keys().map(|k| k.as_str()).collect()
    }
}

/// Headers carrying the current span's trace context (empty when tracing is off).
pub fn current_context_headers() -> FieldTable {
    let mut headers = FieldTable::default();
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(&mut headers));
    });
    headers
}

/// Makes `span` a child of the trace context found in `headers`, if any.
pub fn adopt_parent(span: &tracing::Span, headers: Option<&FieldTable>) {
    let Some(headers) = headers else { return };
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    });
    // Fails only when no OpenTelemetry layer is installed (tracing export off), in which
    // case there is no trace to continue.
    let _ = span.set_parent(parent);
}

/// Links `span` to the trace context found in `headers`, if any: for a span that handles
/// many messages at once (a batch of events) and can have only one parent.
pub fn link(span: &tracing::Span, headers: Option<&FieldTable>) {
    let Some(headers) = headers else { return };
    let context = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    });
    // An invalid (absent) context is ignored by `add_link`.
    span.add_link(context.span().span_context().clone());
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    use super::*;

    #[test]
    fn a_context_written_to_headers_reads_back_the_same() {
        let span = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let propagator = opentelemetry_sdk::propagation::TraceContextPropagator::new();
        let mut headers = FieldTable::default();
        opentelemetry::propagation::TextMapPropagator::inject_context(
            &propagator,
            &opentelemetry::Context::new().with_remote_span_context(span.clone()),
            &mut HeaderInjector(&mut headers),
        );
        let read =
            opentelemetry::propagation::TextMapPropagator::extract(&propagator, &HeaderExtractor(&headers));
        assert_eq!(read.span().span_context(), &span);
    }
}
