//! The CPU a worker spends on each step besides its handler: decoding the delivered step
//! message (and continuing its trace from the headers), making the handler's context and
//! parameters, and building and encoding the events it sends, each with its `traceparent`
//! header; then that whole path end to end around a no-op handler. A noop op's steps cost
//! little else on the worker, so a regression in the per-step CPU shows up here as a number.
//!
//! The broker is left out (publishing, confirms, acks: see `opflow bench`). The end-to-end
//! bench composes the public pieces `step` calls in the order it calls them, since the
//! runtime's step function also owns the lease, the timers and the handler's task.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use lapin::types::FieldTable;
use opflow_amqp::trace;
use opflow_process::LogFormat;
use opflow_protocol::{Event, EventKind, OpRef, RunId, StepId, StepMessage, queue};
use opflow_worker::{LogLevel, StepContext, StepError, bench_hooks, report};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const WORKER: &str = "price-paths@1.0.0/worker-7f9c/4242";

fn op() -> OpRef {
    "price-paths@1.0.0".parse().expect("a valid op")
}

/// A step of a partitioned sweep, as the dispatcher publishes it (no upstream inputs).
fn step_message() -> StepMessage {
    let mut message = StepMessage::new(RunId::new(), StepId(24_321), 1, op(), "paths");
    message.partition = Some("2000-02-18".into());
    message.point = json!({"vol": 0.65, "seed": 42}).as_object().cloned().unwrap_or_default();
    message.config =
        json!({"drift": 0.0, "horizon_days": 30, "paths": 2000, "steps_per_day": 24, "spot": 1.0});
    message.timeout_ms = Some(300_000);
    message
}

#[derive(serde::Deserialize)]
#[allow(dead_code)] // Read for its cost only.
struct Params {
    drift: f64,
    vol: f64,
    seed: u64,
    horizon_days: u32,
    paths: u32,
    steps_per_day: u32,
    spot: f64,
}

/// A `succeeded` event as the worker builds and publishes it: encoded, with its routing
/// key and the current trace context.
fn encoded_success(
    (run_id, step_id, attempt): (RunId, StepId, u32),
    output: serde_json::Value,
    started_at: chrono::DateTime<chrono::Utc>,
) -> (Vec<u8>, String, FieldTable) {
    let event = Event::new(run_id, step_id, attempt, WORKER.to_owned(), EventKind::Succeeded { output })
        .with_started_at(started_at);
    (event.encode(), queue::event_routing_key(event.kind.name()), trace::current_context_headers())
}

/// A no-op handler that reads its parameters, as a real op's first line does.
async fn noop(ctx: StepContext) -> Result<Value, StepError> {
    let params: Params = ctx.params()?;
    Ok(json!({"paths": params.paths, "mean": 1.02}))
}

fn context(message: StepMessage, reporter: &report::Reporter, shutdown: &CancellationToken) -> StepContext {
    bench_hooks::step_context(
        message,
        reporter.clone(),
        WORKER.to_owned(),
        shutdown.child_token(),
        CancellationToken::new(),
    )
}

fn step(c: &mut Criterion) {
    // Trace context as the processes have it: spans get ids, headers carry `traceparent`.
    let _telemetry = opflow_process::telemetry::init("bench", LogFormat::Human, "info");
    let message = step_message();
    let bytes = message.encode();
    // The headers the dispatcher publishes a step with: its `publish` span's context.
    let headers = tracing::info_span!("publish").in_scope(trace::current_context_headers);
    if headers.inner().is_empty() {
        eprintln!(
            "warning: no traceparent header (is RUST_LOG below info?); the benches run without trace context"
        );
    }
    let (reporter, mut queued) = bench_hooks::detached_reporter();
    let shutdown = CancellationToken::new();

    let this_op = op();
    c.bench_function("worker/decode_step", |b| {
        b.iter(|| {
            let message = StepMessage::decode(black_box(&bytes)).expect("decodes");
            assert!(message.op == this_op, "a step of this worker's op");
            bench_hooks::step_span(&message, Some(&headers))
        })
    });
    c.bench_function("worker/context/new", |b| {
        b.iter_batched(|| message.clone(), |m| context(m, &reporter, &shutdown), BatchSize::SmallInput)
    });
    let ctx = context(message.clone(), &reporter, &shutdown);
    c.bench_function("worker/context/params", |b| {
        b.iter(|| black_box(&ctx).params::<Params>().expect("valid"))
    });

    // Each event built in the step's span, with its headers, encoded as published.
    let span = bench_hooks::step_span(&message, Some(&headers));
    let (run_id, step_id, attempt) = (message.run_id, message.step_id, message.attempt);
    let sent = |kind: EventKind| {
        let event = Event::new(run_id, step_id, attempt, WORKER.to_owned(), kind);
        let headers = trace::current_context_headers();
        (event.encode(), queue::event_routing_key(event.kind.name()), headers)
    };
    span.in_scope(|| {
        ctx.progress(0.0, "queued, not dropped");
        assert!(queued.drain() > 0, "the detached reporter takes what the context reports");
        c.bench_function("worker/event/started", |b| b.iter(|| sent(EventKind::Started { op: op() })));
        // Progress and log lines go through the context, as a handler reports them.
        c.bench_function("worker/event/progress", |b| {
            b.iter(|| {
                ctx.progress(black_box(0.5), "1000 of 2000 paths");
                queued.drain()
            })
        });
        c.bench_function("worker/event/log", |b| {
            b.iter(|| {
                ctx.log(LogLevel::Info, black_box("simulated 2000 paths over 30 days; mean 1.02, p95 1.41"));
                queued.drain()
            })
        });
        c.bench_function("worker/event/succeeded", |b| {
            b.iter(|| {
                let output = json!({"mean": 1.02, "p05": 0.71, "p95": 1.41, "paths": 2000});
                encoded_success((run_id, step_id, attempt), output, chrono::Utc::now())
            })
        });
    });

    // Delivery to encoded result: decode, continue the trace, make the context, run a no-op
    // handler, check the output's size, build and encode the `succeeded` event.
    c.bench_function("worker/step/noop_end_to_end", |b| {
        b.iter(|| {
            let message = StepMessage::decode(black_box(&bytes)).expect("decodes");
            assert!(message.op == this_op, "a step of this worker's op");
            let span = bench_hooks::step_span(&message, Some(&headers));
            span.in_scope(|| {
                let (run_id, step_id, attempt) = (message.run_id, message.step_id, message.attempt);
                let started_at = chrono::Utc::now();
                let ctx = context(message, &reporter, &shutdown);
                let output = noop(ctx).now_or_never().expect("a no-op is ready").expect("succeeds");
                let size = serde_json::to_vec(&output).map_or(usize::MAX, |v| v.len());
                assert!(size <= opflow_worker::MAX_OUTPUT_BYTES);
                encoded_success((run_id, step_id, attempt), output, started_at)
            })
        })
    });
}

criterion_group!(benches, step);
criterion_main!(benches);
