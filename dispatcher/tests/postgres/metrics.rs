//! Metrics: each step counted once per terminal transition.

use std::time::Duration;

use opflow_dispatcher::{
    api::metrics::Metrics,
    store::{run_plan::PlanCache, storable::StorableEvent},
};
use opflow_protocol::{Event, EventKind, RunId, StepId};
use serde_json::json;

use crate::common::{TestDb, compile};

fn samples(text: &str, name: &str) -> Vec<String> {
    text.lines().filter(|l| l.starts_with(name)).map(str::to_owned).collect()
}

/// The counters follow the store's transitions: a duplicate success counts nothing, a
/// final failure counts its step and the steps it skips, each once.
#[tokio::test]
async fn steps_are_counted_once_per_terminal_transition() {
    let db = TestDb::new("metrics_steps").await;
    let source = "name: p\nassets:\n  - name: a\n    op: noop@1.0.0\n    sweep: {k: {from: 1, to: 2}}\n  \
                  - name: b\n    op: noop@1.0.0\n    deps: [a]\n";
    let compiled = compile(source);
    let run: RunId = db.store.runs().submit(&compiled, "p.yaml", source, None).await.unwrap().run_id;
    let plans = PlanCache::default();
    let metrics = Metrics::new();
    let started = chrono::Utc::now() - chrono::Duration::milliseconds(250);
    let ok = |step| -> StorableEvent {
        Event::new(run, StepId(step), 1, "w", EventKind::Succeeded { output: json!(1) })
            .with_started_at(started)
            .into()
    };
    let success = ok(0);
    for batch in [vec![success.clone()], vec![success]] {
        let outcome = db.leader.events().apply(&batch, &plans).await.unwrap();
        metrics.applied(batch.len(), Duration::from_millis(1), &outcome.terminal);
    }
    let failure: StorableEvent =
        Event::new(run, StepId(1), 1, "w", EventKind::Failed { error: "boom".into(), retryable: false })
            .with_started_at(started)
            .into();
    let outcome = db.leader.events().apply(std::slice::from_ref(&failure), &plans).await.unwrap();
    metrics.applied(1, Duration::from_millis(1), &outcome.terminal);

    let text = metrics.render(&db.store).await;
    let mut steps = samples(&text, "opflow_steps_total");
    steps.sort();
    assert_eq!(
        steps,
        [
            "opflow_steps_total{op=\"noop\",version=\"1.0.0\",status=\"failed\"} 1",
            "opflow_steps_total{op=\"noop\",version=\"1.0.0\",status=\"skipped\"} 1",
            "opflow_steps_total{op=\"noop\",version=\"1.0.0\",status=\"succeeded\"} 1",
        ],
        "{text}"
    );
    let counts = samples(&text, "opflow_step_duration_seconds_count");
    assert!(
        counts.contains(
            &"opflow_step_duration_seconds_count{op=\"noop\",version=\"1.0.0\",status=\"succeeded\"} 1"
                .to_owned()
        ),
        "{text}"
    );
    assert!(
        counts.contains(
            &"opflow_step_duration_seconds_count{op=\"noop\",version=\"1.0.0\",status=\"failed\"} 1"
                .to_owned()
        ),
        "{text}"
    );
    assert!(
        samples(&text, "opflow_event_apply_batch_events_count")
            .contains(&"opflow_event_apply_batch_events_count 3".to_owned()),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
}
