//! Observability set-up: one tracing subscriber (human or JSON lines, filtered by
//! `RUST_LOG`) and OpenTelemetry span context, so that trace context can travel in
//! message headers and tie the dispatcher's and the workers' log lines together.
//!
//! Spans are exported over OTLP (HTTP/protobuf) only when the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set. The
//! exporter reads the other standard variables itself (`OTEL_EXPORTER_OTLP_HEADERS`,
//! `…_TIMEOUT`), the batch processor reads `OTEL_BSP_*` (e.g. `OTEL_BSP_SCHEDULE_DELAY`),
//! and the resource reads `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`;
//! `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turn export off. Without an
//! endpoint no exporter, no batch thread and no HTTP client exist: spans only get ids.
//! When exporting, spans are filtered apart from log lines (info and up), so `RUST_LOG=warn`
//! quiets the logs without breaking the traces.
//!
//! Export is batched on the SDK's own thread with the blocking HTTP client (the async one
//! would need a Tokio reactor on that thread), so a slow collector never holds up a step.
//! [`TelemetryGuard`] flushes the batch when dropped, which every binary does as its main
//! returns, after a SIGTERM/Ctrl-C drain too, so the last spans are not lost.

use std::{
    borrow::Cow,
    sync::atomic::{AtomicBool, Ordering},
};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_subscriber::{
    EnvFilter, Layer, filter::LevelFilter, layer::SubscriberExt, util::SubscriberInitExt,
};

/// How log lines are written to stderr: the `--log-format` of every opflow binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people.
    #[default]
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Human => "human",
            LogFormat::Json => "json",
        }
    }
}

/// Keeps the tracer provider alive; dropping it flushes the exporter's last batch (if
/// spans are exported) and shuts the provider down.
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
    exporting: bool,
}

impl TelemetryGuard {
    /// Whether spans are exported (an OTLP endpoint is configured).
    pub fn exporting(&self) -> bool {
        self.exporting
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        // Shutdown exports what is still batched; it waits for the export, bounded by the
        // exporter's timeout. An error means the collector did not take the last batch,
        // worth a line on stderr (the subscriber may be gone by now).
        if let Err(error) = self.provider.shutdown()
            && self.exporting
        {
            eprintln!("warning: flushing the last trace spans failed: {error}");
        }
    }
}

/// Set once spans are exported; see [`exporting`].
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether this process exports spans: work only an exported trace needs (linking every
/// event of a batch) is skipped when it does not.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Why span export is off or could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot build the OTLP span exporter: {0}")]
    Build(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// Whether the environment asks for span export: an OTLP endpoint is set, and neither
/// `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none` turns it off.
pub fn export_requested(var: impl Fn(&str) -> Option<String>) -> bool {
    let set = |name: &str| var(name).is_some_and(|value| !value.trim().is_empty());
    let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let no_exporter = var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"));
    (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        && !disabled
        && !no_exporter
}

/// The provider: with a batch OTLP exporter when asked for, otherwise without one.
fn provider(service: Cow<'static, str>, export: bool) -> (SdkTracerProvider, Option<ExportError>) {
    if !export {
        // Spans get real trace and span ids even without an exporter, so the context that
        // travels in headers ties the dispatcher's and the workers' log lines together.
        return (SdkTracerProvider::builder().build(), None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build();
    match exporter {
        Ok(exporter) => {
            // `OTEL_SERVICE_NAME` wins over the binary's own name, as the spec has it.
            let mut resource = Resource::builder();
            if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
                resource = resource.with_service_name(service);
            }
            let provider = SdkTracerProvider::builder()
                .with_resource(resource.build())
                .with_batch_exporter(exporter)
                .build();
            (provider, None)
        }
        Err(error) => (SdkTracerProvider::builder().build(), Some(error.into())),
    }
}

/// Installs the global subscriber for a process named `service` (the `service.name` of
/// exported spans: `opflow` for the dispatcher, the op's name for a worker).
/// `default_filter` applies when `RUST_LOG` is unset, e.g. `"info"`.
///
/// Calling it twice in one process keeps the first subscriber (tests do this).
pub fn init(
    service: impl Into<Cow<'static, str>>,
    format: LogFormat,
    default_filter: &str,
) -> TelemetryGuard {
    // Before the exporter builds its HTTP client, which needs a TLS provider.
    crate::install_tls_provider();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let service = service.into();
    let export = export_requested(|name| std::env::var(name).ok());
    let (provider, failed) = provider(service.clone(), export);
    let tracer = provider.tracer(service);

    let log_filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let fmt = match format {
        LogFormat::Human => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_target(false)
            .with_filter(log_filter())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(log_filter())
            .boxed(),
    };
    // Exported traces must not depend on how much is logged: with `RUST_LOG=warn` the
    // info-level spans (publish, step, apply, …) still exist for the exporter, and their
    // context still travels. Without export, spans only serve the log lines, so they follow
    // the log filter as before and cost nothing more.
    let otel = tracing_opentelemetry::layer().with_tracer(tracer);
    let otel = if export && failed.is_none() {
        otel.with_filter(LevelFilter::INFO).boxed()
    } else {
        otel.with_filter(log_filter()).boxed()
    };
    // An already installed subscriber (a second init in one test binary) is fine to keep.
    let _ = tracing_subscriber::registry().with(vec![fmt, otel]).try_init();
    let exporting = export && failed.is_none();
    EXPORTING.store(exporting, Ordering::Relaxed);
    if let Some(error) = failed {
        tracing::warn!(%error, "trace spans are not exported");
    }
    TelemetryGuard { provider, exporting }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn spans_are_exported_only_when_an_endpoint_is_set_and_not_turned_off() {
        assert!(!export_requested(env(&[])));
        assert!(!export_requested(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])));
        assert!(export_requested(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")])));
        assert!(export_requested(env(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/v1/traces")])));
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        assert!(!export_requested(env(&[endpoint, ("OTEL_SDK_DISABLED", "TRUE")])));
        assert!(!export_requested(env(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")])));
        assert!(export_requested(env(&[endpoint, ("OTEL_SDK_DISABLED", "false")])));
    }
}
