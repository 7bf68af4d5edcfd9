//! What every opflow process shares, so the dispatcher and every op binary behave alike:
//!
//! - [`telemetry`]: one tracing subscriber (human or JSON lines, `RUST_LOG` filter) with
//!   OpenTelemetry span context, so trace context can travel in message headers.
//! - [`redact`]: connection URLs without their passwords, for logs and errors.
//! - [`secret`]: [`SecretUrl`], a URL that prints redacted wherever it goes.
//! - [`backoff`]: the one set of backoff settings, and reconnect pacing.
//! - [`panic`]: a caught panic as a message.
//! - [`shutdown`]: SIGTERM and Ctrl-C as a cancellation token, the start of a drain.

pub mod backoff;
pub mod panic;
pub mod redact;
pub mod secret;
pub mod shutdown;
pub mod telemetry;

pub use redact::redact_url;
pub use secret::SecretUrl;
pub use shutdown::{cancel_on_signal, cancel_on_signals};
pub use telemetry::{LogFormat, TelemetryGuard, init};

/// Installs rustls' ring provider as the process's TLS crypto. reqwest is built without a
/// provider of its own (so no aws-lc and no OpenSSL are compiled), and every HTTP client
/// (the OTLP exporter, the CLI's, the webhook sender's) fails to build until one is
/// installed; [`init`] does this first. Idempotent.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
