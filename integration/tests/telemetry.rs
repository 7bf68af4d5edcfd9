//! Traces and metrics end to end, against the real RabbitMQ and PostgreSQL and the real
//! binaries: spans exported over OTLP/HTTP reach a receiver in the test, parented across
//! the queue, and `/metrics` counts exactly what the run did.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, bail, ensure};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{KeyValue, any_value::Value as AnyValue},
};
use opflow_integration::{Env, binary, sigterm, wait_for};
use prost::Message;
use serde_json::json;
use sqlx::PgPool;
use tokio::process::Child;

/// Long enough for any of these runs on a loaded 2-core machine; only turns a hang into a failure.
const DEADLINE: Duration = Duration::from_secs(120);

/// One span as the receiver got it.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    attributes: HashMap<String, String>,
}

/// An OTLP/HTTP receiver on 127.0.0.1: `POST /v1/traces` with a protobuf
/// `ExportTraceServiceRequest`, as the real exporter sends it.
struct Receiver {
    endpoint: String,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    _server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> anyhow::Result<Self> {
        let spans: Arc<Mutex<Vec<ReceivedSpan>>> = Arc::default();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post({
                let spans = spans.clone();
                move |body: axum::body::Bytes| async move {
                    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                        return axum::http::StatusCode::BAD_REQUEST;
                    };
                    let mut spans = spans.lock().expect("not poisoned");
                    for resource_spans in request.resource_spans {
                        let resource =
                            resource_spans.resource.map(|r| attributes(&r.attributes)).unwrap_or_default();
                        let service = resource.get("service.name").cloned().unwrap_or_default();
                        for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                            spans.push(ReceivedSpan {
                                service: service.clone(),
                                name: span.name,
                                trace_id: span.trace_id,
                                span_id: span.span_id,
                                parent_span_id: span.parent_span_id,
                                attributes: attributes(&span.attributes),
                            });
                        }
                    }
                    // An empty body is an empty `ExportTraceServiceResponse`: all accepted.
                    axum::http::StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { endpoint, spans, _server: server })
    }

    fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().expect("not poisoned").clone()
    }
}

fn attributes(pairs: &[KeyValue]) -> HashMap<String, String> {
    pairs
        .iter()
        .filter_map(|pair| {
            let value = match pair.value.as_ref()?.value.as_ref()? {
                AnyValue::StringValue(s) => s.clone(),
                AnyValue::IntValue(i) => i.to_string(),
                AnyValue::BoolValue(b) => b.to_string(),
                AnyValue::DoubleValue(d) => d.to_string(),
                other => format!("{other:?}"),
            };
            Some((pair.key.clone(), value))
        })
        .collect()
}

/// Starts one worker of `op` with `vars` added to its environment, its log in a file.
fn spawn_worker_with(env: &Env, op: &str, vars: &[(&str, &str)]) -> anyhow::Result<Child> {
    let log = std::fs::File::create(env.log_file(&format!("{op}-worker"))?)?;
    let mut command = env.command(&binary(op)?);
    command.stdout(std::process::Stdio::null()).stderr(log);
    for (key, value) in vars {
        command.env(key, value);
    }
    Ok(command.spawn()?)
}

/// Submits `plan` through the API; returns the run id.
async fn submit(api: &str, plan: &str) -> anyhow::Result<String> {
    let (status, body) =
        opflow_integration::http(api, "POST", "/v1/runs", None, Some(&json!({ "plan": plan }))).await?;
    ensure!(status == 201, "submitting failed with {status}: {body}");
    Ok(body["run_id"].as_str().context("run_id in the answer")?.to_owned())
}

async fn wait_run_ended(db: &PgPool, run_id: &str) -> anyhow::Result<String> {
    wait_for("the run to end", DEADLINE, || async {
        let status: String = sqlx::query_scalar("SELECT status::text FROM runs WHERE id = $1::uuid")
            .bind(run_id)
            .fetch_one(db)
            .await?;
        Ok((status == "succeeded" || status == "failed").then_some(status))
    })
    .await
}

/// Every step's `step` span (exported by the worker, service `noop`) is a child of the
/// dispatcher's `publish` span for that step (service `opflow`): same trace, parent id =
/// the publish span's id. Both processes batch for a minute, so their spans arrive only
/// because SIGTERM flushes them. The worker logs only warnings, which must not stop its
/// (info-level) spans. The submit and apply spans are checked too.
#[tokio::test]
async fn a_steps_span_is_the_child_of_its_publish_span_across_the_queue() -> anyhow::Result<()> {
    let mut env = Env::new("otlp").await?;
    env.register("noop").await?;
    let receiver = Receiver::start().await?;
    let endpoint = receiver.endpoint.as_str();
    let (mut dispatcher, api) = env
        .spawn_dispatcher_api(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "60000"),
        ])
        .await?;
    let worker = spawn_worker_with(
        &env,
        "noop",
        // Logging only warnings must not turn traces off.
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "60000"),
            ("RUST_LOG", "warn"),
        ],
    )?;
    // A chain and a small sweep: publishes one by one and in a batch.
    let plan = "name: traced\nassets:\n  - name: a\n    op: noop@^1\n    sweep: {k: {from: 1, to: 3}}\n  \
                - name: b\n    op: noop@^1\n    deps: [a]\n";
    let run_id = submit(&api, plan).await?;
    let db = env.db().await?;
    assert_eq!(wait_run_ended(&db, &run_id).await?, "succeeded");
    dispatcher.check_alive()?;
    let steps: i64 = sqlx::query_scalar("SELECT count(*) FROM steps WHERE run_id = $1::uuid")
        .bind(&run_id)
        .fetch_one(&db)
        .await?;
    assert_eq!(steps, 4);

    // The worker drains and exits on SIGTERM; its telemetry guard flushes the spans still
    // batched.
    let mut worker = worker;
    sigterm(&worker)?;
    let exit = tokio::time::timeout(DEADLINE, worker.wait()).await??;
    assert!(exit.success(), "the worker exited with {exit}");
    // So does the dispatcher.
    let pid = dispatcher.pid().context("the dispatcher runs")?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM)?;
    let stopping = std::time::Instant::now();
    while dispatcher.check_alive().is_ok() {
        ensure!(stopping.elapsed() < DEADLINE, "the dispatcher did not exit on SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let of_run = |span: &ReceivedSpan| span.attributes.get("run_id").map(String::as_str) == Some(&run_id);
    let spans = wait_for("every step's and publish span", DEADLINE, || async {
        let spans = receiver.spans();
        let steps = spans.iter().filter(|s| s.name == "step" && of_run(s)).count();
        let publishes = spans.iter().filter(|s| s.name == "publish" && of_run(s)).count();
        Ok((steps >= 4 && publishes >= 4).then_some(spans))
    })
    .await?;

    let publishes: BTreeMap<String, &ReceivedSpan> = spans
        .iter()
        .filter(|s| s.name == "publish" && of_run(s))
        .map(|s| (s.attributes["step_id"].clone(), s))
        .collect();
    let step_spans: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.name == "step" && of_run(s)).collect();
    assert_eq!(step_spans.len(), 4, "one step span per step: {step_spans:#?}");
    for step in &step_spans {
        let id = &step.attributes["step_id"];
        let publish = publishes.get(id).with_context(|| format!("no publish span for step {id}"))?;
        assert_eq!(step.service, "noop", "{step:?}");
        assert_eq!(publish.service, "opflow", "{publish:?}");
        assert_eq!(step.trace_id, publish.trace_id, "step {id} is in its publish's trace");
        assert_eq!(step.parent_span_id, publish.span_id, "step {id}'s parent is its publish span");
        for key in ["op", "version", "attempt", "step"] {
            assert!(step.attributes.contains_key(key), "step span without `{key}`: {step:?}");
        }
        assert_eq!(step.attributes["op"], "noop");
    }

    // The submit span holds the compile span; both from the dispatcher.
    let submit = spans
        .iter()
        .find(|s| s.name == "submit" && of_run(s))
        .with_context(|| format!("no submit span for the run in {spans:#?}"))?;
    assert_eq!(submit.service, "opflow");
    assert!(
        spans.iter().any(|s| s.name == "compile" && s.parent_span_id == submit.span_id),
        "no compile span inside the submit span"
    );
    // Each batch's apply span continues the trace of a step whose events it applied.
    let applies = wait_for("apply spans", DEADLINE, || async {
        let spans = receiver.spans();
        let applies: Vec<ReceivedSpan> = spans
            .into_iter()
            .filter(|s| s.name == "apply" && step_spans.iter().any(|step| step.span_id == s.parent_span_id))
            .collect();
        Ok((!applies.is_empty()).then_some(applies))
    })
    .await?;
    for apply in &applies {
        assert_eq!(apply.service, "opflow");
        assert!(step_spans.iter().any(|s| s.trace_id == apply.trace_id && s.span_id == apply.parent_span_id));
    }
    Ok(())
}

/// One metric sample: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A strict parser of the exposition text `/metrics` serves (OpenMetrics text, which
/// Prometheus scrapes): every sample belongs to a family declared by `# TYPE` with a suffix
/// its type allows, labels are well-formed and quoted, values are numbers, histogram
/// buckets are cumulative and end at `+Inf` = `_count`, and the text ends with `# EOF`.
fn parse_exposition(text: &str) -> anyhow::Result<Vec<Sample>> {
    let mut families: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    let mut ended = false;
    for line in text.lines() {
        ensure!(!ended, "text after # EOF: {line}");
        if line == "# EOF" {
            ended = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap_or_default(), parts.next().context("a name")?);
            ensure!(valid_name(name), "bad metric name in {line}");
            match kind {
                "TYPE" => {
                    let ty = parts.next().context("a type")?;
                    ensure!(
                        [
                            "counter",
                            "gauge",
                            "histogram",
                            "summary",
                            "unknown",
                            "info",
                            "stateset",
                            "gaugehistogram"
                        ]
                        .contains(&ty),
                        "bad type: {line}"
                    );
                    ensure!(
                        families.insert(name.to_owned(), ty.to_owned()).is_none(),
                        "family declared twice: {name}"
                    );
                }
                "HELP" | "UNIT" => {}
                _ => bail!("unknown comment: {line}"),
            }
            continue;
        }
        samples.push(parse_sample(line, &families)?);
    }
    ensure!(ended, "no # EOF at the end");
    check_histograms(&samples, &families)?;
    Ok(samples)
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// The family a sample name belongs to, given the suffixes its type allows.
fn family_of<'a>(name: &str, families: &'a HashMap<String, String>) -> Option<(&'a str, &'a str)> {
    families.iter().find_map(|(family, ty)| {
        let suffixes: &[&str] = match ty.as_str() {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_count", "_sum", "_created"],
            "gauge" => &[""],
            _ => &["", "_total", "_count", "_sum", "_bucket", "_created", "_info"],
        };
        let suffix = name.strip_prefix(family.as_str())?;
        suffixes.contains(&suffix).then_some((family.as_str(), ty.as_str()))
    })
}

fn parse_sample(line: &str, families: &HashMap<String, String>) -> anyhow::Result<Sample> {
    let name_end = line.find(['{', ' ']).with_context(|| format!("no value in {line}"))?;
    let name = &line[..name_end];
    ensure!(valid_name(name), "bad sample name in {line}");
    ensure!(family_of(name, families).is_some(), "sample of an undeclared family: {line}");
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = inner.find('=').with_context(|| format!("label without = in {line}"))?;
            let key = &inner[..eq];
            ensure!(valid_name(key) && !key.contains(':'), "bad label name `{key}` in {line}");
            let quoted = inner[eq + 1..]
                .strip_prefix('"')
                .with_context(|| format!("unquoted label value in {line}"))?;
            let mut value = String::new();
            let mut escaped = false;
            let mut end = None;
            for (i, c) in quoted.char_indices() {
                if escaped {
                    match c {
                        'n' => value.push('\n'),
                        '\\' | '"' => value.push(c),
                        other => bail!("bad escape \\{other} in {line}"),
                    }
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    end = Some(i + 1);
                    break;
                } else {
                    value.push(c);
                }
            }
            let end = end.with_context(|| format!("unterminated label value in {line}"))?;
            ensure!(labels.insert(key.to_owned(), value).is_none(), "label `{key}` twice in {line}");
            inner = &quoted[end..];
            if let Some(after) = inner.strip_prefix(',') {
                inner = after;
            } else {
                ensure!(inner.starts_with('}'), "unexpected text after a label in {line}");
            }
        }
    }
    let mut fields =
        rest.strip_prefix(' ').with_context(|| format!("no space before the value in {line}"))?.split(' ');
    let value = fields.next().context("a value")?;
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().with_context(|| format!("bad value `{v}` in {line}"))?,
    };
    if let Some(timestamp) = fields.next() {
        timestamp.parse::<f64>().with_context(|| format!("bad timestamp in {line}"))?;
    }
    ensure!(fields.next().is_none(), "trailing text in {line}");
    Ok(Sample { name: name.to_owned(), labels, value })
}

/// A sample's labels, as a sortable key.
type Labels = Vec<(String, String)>;

/// Buckets are cumulative, `le` ascends to `+Inf`, and the `+Inf` bucket equals `_count`.
fn check_histograms(samples: &[Sample], families: &HashMap<String, String>) -> anyhow::Result<()> {
    for (family, ty) in families {
        if ty != "histogram" {
            continue;
        }
        // Per label set but `le`: its (le, cumulative count) buckets.
        let mut series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        for sample in samples.iter().filter(|s| s.name == format!("{family}_bucket")) {
            let le = sample.labels.get("le").with_context(|| format!("bucket without le: {sample:?}"))?;
            let le: f64 = if le == "+Inf" { f64::INFINITY } else { le.parse()? };
            let key = sample
                .labels
                .iter()
                .filter(|(k, _)| *k != "le")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            series.entry(key).or_default().push((le, sample.value));
        }
        for (key, buckets) in series {
            ensure!(
                buckets.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                "{family} {key:?}: buckets not cumulative"
            );
            let (last_le, last) = *buckets.last().context("buckets")?;
            ensure!(last_le == f64::INFINITY, "{family} {key:?}: no +Inf bucket");
            let labels: BTreeMap<String, String> = key.into_iter().collect();
            let count = samples
                .iter()
                .find(|s| s.name == format!("{family}_count") && s.labels == labels)
                .with_context(|| format!("{family} {labels:?}: no _count"))?;
            ensure!(count.value == last, "{family} {labels:?}: +Inf bucket {last} != count {}", count.value);
        }
    }
    Ok(())
}

/// `GET path` from the API, as text: status, content type, body.
async fn get_text(addr: &str, path: &str) -> anyhow::Result<(u16, String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8(response)?;
    let (head, mut body) = text.split_once("\r\n\r\n").context("an HTTP response")?;
    let status: u16 = head.split_whitespace().nth(1).context("a status")?.parse()?;
    let header = |name: &str| {
        head.lines().find_map(|l| {
            l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_owned())
        })
    };
    let mut out = String::new();
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        while let Some((size, rest)) = body.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16)?;
            if size == 0 {
                break;
            }
            out.push_str(&rest[..size]);
            body = &rest[size + 2..];
        }
    } else {
        out.push_str(body);
    }
    Ok((status, header("content-type").unwrap_or_default(), out))
}

fn value_of(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

/// A run of 5 succeeding noop steps, 2 failing for good and 1 skipped after them: the
/// counters and the histogram count exactly those, and the text is valid exposition.
#[tokio::test]
async fn metrics_count_exactly_what_the_run_did() -> anyhow::Result<()> {
    const SUCCEEDING: u32 = 5;
    let mut env = Env::new("metrics").await?;
    env.register("noop").await?;
    let (mut dispatcher, api) = env.spawn_dispatcher_api(&[]).await?;
    let _worker = spawn_worker_with(&env, "noop", &[])?;
    let db = env.db().await?;
    let version: String =
        sqlx::query_scalar("SELECT version FROM ops WHERE name = 'noop'").fetch_one(&db).await?;

    // Before any run: valid text, the queue's gauge at zero, no step counted.
    let (status, content_type, text) = get_text(&api, "/metrics").await?;
    assert_eq!(status, 200, "{text}");
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    let samples = parse_exposition(&text).with_context(|| format!("in:\n{text}"))?;
    let queue = format!("opflow.op.noop.{version}");
    let queue_labels = [("queue", queue.as_str()), ("op", "noop"), ("version", version.as_str())];
    assert_eq!(value_of(&samples, "opflow_queue_ready", &queue_labels), Some(0.0), "{text}");
    assert!(samples.iter().all(|s| s.name != "opflow_steps_total"), "{text}");

    let plan = format!(
        "name: counted\nassets:\n  - name: ok\n    op: noop@^1\n    sweep: {{k: {{from: 1, to: {SUCCEEDING}}}}}\n  \
         - name: bad\n    op: noop@^1\n    sweep: {{k: {{from: 1, to: 2}}}}\n    config: {{fail: fatal}}\n  \
         - name: after\n    op: noop@^1\n    deps: [bad]\n"
    );
    let run_id = submit(&api, &plan).await?;
    assert_eq!(wait_run_ended(&db, &run_id).await?, "failed");
    dispatcher.check_alive()?;

    let step = |status: &'static str| [("op", "noop"), ("version", version.as_str()), ("status", status)];
    // The counters are bumped just after the commit that ended the run: wait until every
    // step is counted (more than 8 would fail the equalities below).
    let (text, samples) = wait_for("every step counted", DEADLINE, || async {
        let (_, _, text) = get_text(&api, "/metrics").await?;
        let samples = parse_exposition(&text).with_context(|| format!("in:\n{text}"))?;
        let counted: f64 = samples.iter().filter(|s| s.name == "opflow_steps_total").map(|s| s.value).sum();
        Ok((counted >= 8.0).then_some((text, samples)))
    })
    .await?;
    assert_eq!(
        value_of(&samples, "opflow_steps_total", &step("succeeded")),
        Some(f64::from(SUCCEEDING)),
        "{text}"
    );
    assert_eq!(value_of(&samples, "opflow_steps_total", &step("failed")), Some(2.0), "{text}");
    assert_eq!(value_of(&samples, "opflow_steps_total", &step("skipped")), Some(1.0), "{text}");
    let total: f64 = samples.iter().filter(|s| s.name == "opflow_steps_total").map(|s| s.value).sum();
    assert_eq!(total, 8.0, "no other step counted: {text}");
    assert_eq!(
        value_of(&samples, "opflow_step_duration_seconds_count", &step("succeeded")),
        Some(f64::from(SUCCEEDING)),
        "{text}"
    );
    assert_eq!(
        value_of(&samples, "opflow_step_duration_seconds_count", &step("failed")),
        Some(2.0),
        "{text}"
    );
    assert_eq!(value_of(&samples, "opflow_step_duration_seconds_count", &step("skipped")), None, "{text}");
    let batches = value_of(&samples, "opflow_event_apply_seconds_count", &[]).context("apply count")?;
    let events = value_of(&samples, "opflow_event_apply_batch_events_sum", &[]).context("events sum")?;
    assert!(batches >= 1.0 && events >= 7.0, "every worker result was applied in some batch: {text}");
    assert_eq!(value_of(&samples, "opflow_queue_ready", &queue_labels), Some(0.0), "{text}");
    assert_eq!(value_of(&samples, "opflow_queue_running", &queue_labels), Some(0.0), "{text}");
    // Outside the token guard: no token was sent above.
    Ok(())
}

#[test]
fn the_exposition_parser_is_strict() {
    let ok = "# HELP a_total x.\n# TYPE a counter\na_total{k=\"v\\\"q\"} 1\n# TYPE h histogram\n\
              h_bucket{le=\"1.0\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_count 2\nh_sum 3.5\n# EOF\n";
    let samples = parse_exposition(ok).unwrap();
    assert_eq!(samples[0].labels["k"], "v\"q");
    for bad in [
        "# TYPE a counter\na_total 1\n",                                   // no EOF
        "a_total 1\n# EOF\n",                                              // undeclared
        "# TYPE a counter\na_total{k=v} 1\n# EOF\n",                       // unquoted
        "# TYPE a counter\na_total x\n# EOF\n",                            // not a number
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 3\n# EOF\n", // +Inf != count
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n# EOF\n", // not cumulative
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted:\n{bad}");
    }
}
