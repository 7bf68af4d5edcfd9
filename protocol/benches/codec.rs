//! The wire codec's cost per message: every step and every event is encoded once and
//! decoded once, so a regression here is a regression in steps per second.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use opflow_protocol::{Event, EventKind, OpRef, RunId, StepId, StepInput, StepMessage};
use serde_json::json;

fn step_message(inputs: usize) -> StepMessage {
    let op: OpRef = "price-paths@1.0.0".parse().expect("a valid op");
    let mut message = StepMessage::new(RunId::new(), StepId(4_711), 1, op, "paths");
    message.partition = Some("aave".into());
    message.point = json!({"vol": 0.65, "seed": 3}).as_object().cloned().unwrap_or_default();
    message.config = json!({"paths": 2000, "horizon_days": 30, "spot": 1.0});
    message.inputs = (0..inputs)
        .map(|i| StepInput {
            asset: "paths".into(),
            step_id: StepId(i as u32),
            partition: Some("aave".into()),
            point: serde_json::Map::new(),
            output: json!({"mean": 1.02, "p05": 0.71, "p95": 1.41, "paths": 2000}),
        })
        .collect();
    message
}

fn codec(c: &mut Criterion) {
    for inputs in [0, 9] {
        let message = step_message(inputs);
        let bytes = message.encode();
        c.bench_function(&format!("step message encode ({inputs} inputs, {} bytes)", bytes.len()), |b| {
            b.iter(|| black_box(&message).encode())
        });
        c.bench_function(&format!("step message decode ({inputs} inputs)"), |b| {
            b.iter(|| StepMessage::decode(black_box(&bytes)).expect("decodes"))
        });
    }
    let event = Event::new(
        RunId::new(),
        StepId(4_711),
        1,
        "noop@1.1.0/host/4242",
        EventKind::Succeeded { output: json!({"op_version": "1.1.0", "attempt": 1, "inputs": 0}) },
    );
    let bytes = event.encode();
    c.bench_function(&format!("event encode ({} bytes)", bytes.len()), |b| {
        b.iter(|| black_box(&event).encode())
    });
    c.bench_function("event decode", |b| b.iter(|| Event::decode(black_box(&bytes)).expect("decodes")));
}

criterion_group!(benches, codec);
criterion_main!(benches);
