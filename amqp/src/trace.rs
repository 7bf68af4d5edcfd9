//! Trace context in message headers: the dispatcher's span for a publish becomes the
//! parent of the worker's span for the step, and the worker's span the parent of the
//! dispatcher's span applying its events, so one trace follows a step across processes.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use opentelemetry::propagation::{Extractor, Injector};
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
