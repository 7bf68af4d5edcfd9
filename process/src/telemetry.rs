//! Observability set-up: one tracing subscriber (human or JSON lines, filtered by
//! `RUST_LOG`) and OpenTelemetry span context, so that trace context can travel in
//! message headers and tie the dispatcher's and the workers' log lines together.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

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

/// Keeps the tracer provider alive; dropping it flushes and shuts it down.
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        // Shutting down an exporter-less provider cannot lose anything; an error here
        // only means it was already shut down.
        let _ = self.provider.shutdown();
    }
}

/// Installs the global subscriber for a process named `service`. `default_filter` applies
/// when `RUST_LOG` is unset, e.g. `"info"`.
///
/// Calling it twice in one process keeps the first subscriber (tests do this).
pub fn init(service: &'static str, format: LogFormat, default_filter: &str) -> TelemetryGuard {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    // Spans get real trace and span ids even without an exporter, so the context that
    // travels in headers ties the dispatcher's and the workers' log lines together.
    let provider = SdkTracerProvider::builder().build();
    let tracer = provider.tracer(service);

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let fmt = match format {
        LogFormat::Human => {
            tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false).boxed()
        }
        LogFormat::Json => tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).boxed(),
    };
    // An already installed subscriber (a second init in one test binary) is fine to keep.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init();
    TelemetryGuard { provider }
}
