//! Webhooks end to end: real dispatcher, worker, broker and database, and a receiver in the
//! test that checks every request the way the Standard Webhooks specification says a
//! receiver should (its own HMAC, not opflow's code). What is shown: at-least-once delivery
//! through refusals and an outage with exactly one accepted message per run end and target,
//! stable `webhook-id`s across retries, and private targets refused unless allowed, both
//! when subscribed and when delivered.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, Uri},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{KeyInit, Mac};
use opflow_integration::{Env, http, stderr, wait_for};
use serde_json::{Value, json};

/// Only turns a hang into a failure.
const DEADLINE: Duration = Duration::from_secs(240);
const SUB_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The spec's tolerance between a message's timestamp and its receipt.
const TOLERANCE_SECS: i64 = 300;

const OK_PLAN: &str = "name: ok\nassets:\n  - name: a\n    op: noop@^1\n";
const SLOW_PLAN: &str = "name: slow\nassets:\n  - name: a\n    op: noop@^1\n    config: {sleep_ms: 120000}\n";
const FAILING_PLAN: &str = "name: bad\nassets:\n  - name: f\n    op: noop@^1\n    config: {fail: fatal}\n";

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    id: String,
    timestamp: String,
    signature: String,
    body: String,
    received_at: SystemTime,
    answered: u16,
}

impl Received {
    fn accepted(&self) -> bool {
        (200..300).contains(&self.answered)
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

/// A webhook receiver on 127.0.0.1 that answers 500 to the first `refuse_first` requests
/// of every `webhook-id`, 204 after, and keeps every request.
#[derive(Clone)]
struct Receiver {
    log: Arc<Mutex<Vec<Received>>>,
    refuse_first: usize,
}

impl Receiver {
    fn new(refuse_first: usize) -> Self {
        Self { log: Arc::default(), refuse_first }
    }

    /// A receiver serving on a port of its own on 127.0.0.1; it and its address.
    async fn listening(refuse_first: usize) -> anyhow::Result<(Self, std::net::SocketAddr)> {
        let receiver = Self::new(refuse_first);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        receiver.serve(listener);
        Ok((receiver, addr))
    }

    /// Serves on `listener` until the test ends.
    fn serve(&self, listener: tokio::net::TcpListener) {
        let router = Router::new().fallback(receive).with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
    }

    fn log(&self) -> Vec<Received> {
        self.log.lock().unwrap().clone()
    }

    fn accepted(&self) -> Vec<Received> {
        self.log().into_iter().filter(Received::accepted).collect()
    }
}

async fn receive(State(receiver): State<Receiver>, uri: Uri, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let id = header("webhook-id");
    let mut log = receiver.log.lock().unwrap();
    let earlier = log.iter().filter(|r| r.id == id).count();
    let answered = if earlier < receiver.refuse_first { 500 } else { 204 };
    log.push(Received {
        path: uri.path().to_owned(),
        id,
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        body: String::from_utf8_lossy(&body).into_owned(),
        received_at: SystemTime::now(),
        answered,
    });
    StatusCode::from_u16(answered).unwrap()
}

/// Verifies a request as the Standard Webhooks specification says: HMAC-SHA256 with the
/// base64-decoded key after `whsec_`, over `{id}.{timestamp}.{body}`, against any `v1,`
/// signature in the header; and the timestamp within the tolerance of its receipt.
fn verify(secret: &str, request: &Received) -> anyhow::Result<()> {
    let key = STANDARD.decode(secret.strip_prefix("whsec_").context("a whsec_ secret")?)?;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key)?;
    mac.update(format!("{}.{}.{}", request.id, request.timestamp, request.body).as_bytes());
    let expected = STANDARD.encode(mac.finalize().into_bytes());
    anyhow::ensure!(
        request.signature.split(' ').any(|s| s.strip_prefix("v1,") == Some(expected.as_str())),
        "signature {} does not verify for {} (expected v1,{expected})",
        request.signature,
        request.id
    );
    let sent: i64 = request.timestamp.parse().context("webhook-timestamp is Unix seconds")?;
    let received = request.received_at.duration_since(UNIX_EPOCH)?.as_secs() as i64;
    anyhow::ensure!((sent - received).abs() <= TOLERANCE_SECS, "timestamp {sent} is far from {received}");
    anyhow::ensure!(request.id.starts_with("msg_"), "webhook-id {}", request.id);
    Ok(())
}

/// Submits `plan` over the API (with `notify` if given); the run id and the answer.
async fn submit(api: &str, plan: &str, notify: Option<Value>) -> anyhow::Result<(String, Value)> {
    let mut request = json!({ "plan": plan });
    if let Some(notify) = notify {
        request["notify"] = notify;
    }
    let (status, body) = http(api, "POST", "/v1/runs", None, Some(&request)).await?;
    anyhow::ensure!(status == 201, "submit answered {status}: {body}");
    Ok((body["run_id"].as_str().context("a run_id")?.to_owned(), body))
}

async fn subscribe(api: &str, url: &str, events: &[&str], secret: Option<&str>) -> anyhow::Result<Value> {
    let mut request = json!({ "url": url, "events": events });
    if let Some(secret) = secret {
        request["secret"] = json!(secret);
    }
    let (status, body) = http(api, "POST", "/v1/webhooks", None, Some(&request)).await?;
    anyhow::ensure!(status == 201, "subscribing answered {status}: {body}");
    Ok(body)
}

async fn deliveries(api: &str) -> anyhow::Result<Vec<Value>> {
    let (status, body) = http(api, "GET", "/v1/webhooks/deliveries?limit=100", None, None).await?;
    anyhow::ensure!(status == 200, "deliveries answered {status}: {body}");
    Ok(body["items"].as_array().context("items")?.clone())
}

/// Checks that `receiver` accepted exactly one message per expected (path, run, event),
/// each verified, none twice; returns the accepted messages by webhook-id.
fn check_exactly_once(
    receiver: &Receiver,
    secrets: &BTreeMap<&str, String>,
    expected: &BTreeSet<(String, String, String)>,
) -> anyhow::Result<BTreeMap<String, Received>> {
    let accepted = receiver.accepted();
    let mut by_id = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for request in &accepted {
        let secret = secrets.get(request.path.as_str()).context("a request on an unknown path")?;
        verify(secret, request)?;
        let body = request.json();
        let key = (
            request.path.clone(),
            body["data"]["run_id"].as_str().context("data.run_id")?.to_owned(),
            body["type"].as_str().context("type")?.to_owned(),
        );
        anyhow::ensure!(seen.insert(key.clone()), "accepted twice: {key:?}");
        anyhow::ensure!(
            by_id.insert(request.id.clone(), request.clone()).is_none(),
            "id {} accepted twice",
            request.id
        );
    }
    anyhow::ensure!(&seen == expected, "accepted {seen:?}, expected {expected:?}");
    Ok(by_id)
}

/// A receiver refusing the first three attempts of every message gets each run end exactly
/// once after retries: a succeeded and a canceled run through a subscription (which does
/// not ask for `run.failed`), a failed run through its own notify URL.
#[tokio::test]
async fn webhooks_are_delivered_once_per_run_end_after_refusals() -> anyhow::Result<()> {
    let env = Env::new("webhooks_refusals").await?;
    env.register("noop").await?;
    let (dispatcher, api) = env
        .spawn_dispatcher_api(&[
            ("OPFLOW_WEBHOOKS_ALLOW_PRIVATE", "true"),
            ("OPFLOW_WEBHOOKS_MAX_BACKOFF", "3s"),
        ])
        .await?;
    let dispatcher = std::cell::RefCell::new(dispatcher);
    let _worker = env.spawn_worker("noop")?;
    let (receiver, addr) = Receiver::listening(3).await?;

    let created =
        subscribe(&api, &format!("http://{addr}/sub"), &["run.succeeded", "run.canceled"], Some(SUB_SECRET))
            .await?;
    assert_eq!(created["secret"], SUB_SECRET);
    let (succeeded, _) = submit(&api, OK_PLAN, None).await?;
    let (canceled, _) = submit(&api, SLOW_PLAN, None).await?;
    let (status, body) = http(&api, "POST", &format!("/v1/runs/{canceled}/cancel"), None, None).await?;
    assert_eq!(status, 200, "{body}");
    let (failed, answer) =
        submit(&api, FAILING_PLAN, Some(json!({ "url": format!("http://{addr}/notify") }))).await?;
    let notify_secret = answer["notify_secret"].as_str().context("a generated notify_secret")?.to_owned();
    assert!(notify_secret.starts_with("whsec_"), "{notify_secret}");

    let expected: BTreeSet<(String, String, String)> = [
        ("/sub", &succeeded, "run.succeeded"),
        ("/sub", &canceled, "run.canceled"),
        ("/notify", &failed, "run.failed"),
    ]
    .into_iter()
    .map(|(p, r, e)| (p.to_owned(), r.clone(), e.to_owned()))
    .collect();
    wait_for("three accepted notifications", DEADLINE, || async {
        dispatcher.borrow_mut().check_alive()?;
        Ok((receiver.accepted().len() >= 3).then_some(()))
    })
    .await?;
    // Longer than the largest backoff: a duplicate or a stray retry would show by now.
    tokio::time::sleep(Duration::from_secs(8)).await;

    let secrets = BTreeMap::from([("/sub", SUB_SECRET.to_owned()), ("/notify", notify_secret)]);
    let accepted = check_exactly_once(&receiver, &secrets, &expected)?;
    let log = receiver.log();
    for (id, request) in &accepted {
        let attempts: Vec<&Received> = log.iter().filter(|r| &r.id == id).collect();
        let answers: Vec<u16> = attempts.iter().map(|r| r.answered).collect();
        assert_eq!(answers, [500, 500, 500, 204], "attempts of {id}");
        for attempt in &attempts {
            assert_eq!(attempt.body, request.body, "every attempt of {id} sends the same bytes");
            assert_eq!(attempt.path, request.path);
            verify(&secrets[attempt.path.as_str()], attempt)?;
        }
        let body = request.json();
        let run = body["data"]["run_id"].as_str().unwrap();
        assert_eq!(body["data"]["status"], body["type"].as_str().unwrap().trim_start_matches("run."));
        assert_eq!(body["data"]["links"]["run"], format!("/v1/runs/{run}"));
        assert_eq!(body["data"]["links"]["outputs"], format!("/v1/runs/{run}/outputs"));
        assert_eq!(body["data"]["steps"]["total"], 1);
        assert!(body["data"]["finished_at"].is_string(), "{body}");
    }
    assert_eq!(log.len(), 12, "3 messages × 4 attempts, nothing else: {log:#?}");

    // The API shows the same: three delivered, four attempts each, every attempt recorded.
    let listed = deliveries(&api).await?;
    assert_eq!(listed.len(), 3, "{listed:#?}");
    for delivery in &listed {
        assert_eq!(delivery["status"], "delivered", "{delivery}");
        assert_eq!(delivery["attempts"], 4, "{delivery}");
        assert!(accepted.contains_key(delivery["webhook_id"].as_str().unwrap()), "{delivery}");
        let (status, detail) = http(
            &api,
            "GET",
            &format!("/v1/webhooks/deliveries/{}", delivery["id"].as_str().unwrap()),
            None,
            None,
        )
        .await?;
        assert_eq!(status, 200, "{detail}");
        let codes: Vec<i64> = detail["attempt_log"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["http_status"].as_i64().unwrap())
            .collect();
        assert_eq!(codes, [500, 500, 500, 204], "{detail}");
    }

    // A redelivery sends the same message again: same webhook-id, same bytes.
    let first = &listed[0];
    let (status, body) = http(
        &api,
        "POST",
        &format!("/v1/webhooks/deliveries/{}/redeliver", first["id"].as_str().unwrap()),
        None,
        None,
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    let id = first["webhook_id"].as_str().unwrap().to_owned();
    wait_for("the redelivery", DEADLINE, || async {
        Ok((receiver.accepted().iter().filter(|r| r.id == id).count() == 2).then_some(()))
    })
    .await?;
    let again: Vec<Received> = receiver.accepted().into_iter().filter(|r| r.id == id).collect();
    assert_eq!(again[0].body, again[1].body);
    verify(&secrets[again[1].path.as_str()], &again[1])?;

    // Removing the subscription: gone from the list, and a second removal is 404.
    let subscription = created["id"].as_str().context("a subscription id")?;
    let (status, body) = http(&api, "DELETE", &format!("/v1/webhooks/{subscription}"), None, None).await?;
    assert_eq!(status, 204, "{body}");
    let (_, listed) = http(&api, "GET", "/v1/webhooks", None, None).await?;
    assert_eq!(listed["items"], json!([]));
    let (status, _) = http(&api, "DELETE", &format!("/v1/webhooks/{subscription}"), None, None).await?;
    assert_eq!(status, 404);

    // /metrics counted every attempt by outcome: three refusals then a success for each of
    // the three messages, and the redelivery.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = reqwest::get(format!("http://{api}/metrics")).await?.text().await?;
    let count = |outcome: &str| -> Option<f64> {
        let prefix = format!("opflow_webhook_deliveries_total{{outcome=\"{outcome}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(prefix.as_str())).and_then(|v| v.trim().parse().ok())
    };
    assert_eq!(count("retrying"), Some(9.0), "{metrics}");
    assert_eq!(count("delivered"), Some(4.0), "{metrics}");
    Ok(())
}

/// A receiver that is down for a minute (its port closed) gets every notification once
/// it is back, each exactly once; the attempts meanwhile are recorded with their error.
#[tokio::test]
async fn webhooks_reach_a_receiver_that_was_down_for_a_minute() -> anyhow::Result<()> {
    let env = Env::new("webhooks_outage").await?;
    env.register("noop").await?;
    let down_since = std::time::Instant::now();
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?.port()
    };
    let (dispatcher, api) = env
        .spawn_dispatcher_api(&[
            ("OPFLOW_WEBHOOKS_ALLOW_PRIVATE", "true"),
            ("OPFLOW_WEBHOOKS_MAX_BACKOFF", "3s"),
        ])
        .await?;
    let dispatcher = std::cell::RefCell::new(dispatcher);
    let _worker = env.spawn_worker("noop")?;
    let created =
        subscribe(&api, &format!("http://127.0.0.1:{port}/sub"), &["run.succeeded", "run.failed"], None)
            .await?;
    let sub_secret = created["secret"].as_str().context("a generated secret")?.to_owned();
    let notify_secret = "whsec_dGhpcyBpcyBhIHRlc3Qgc2VjcmV0IG9mIDMyIGJ5dGVzIQ==";
    let (one, _) = submit(&api, OK_PLAN, None).await?;
    let (two, _) = submit(&api, FAILING_PLAN, None).await?;
    let notify = json!({ "url": format!("http://127.0.0.1:{port}/notify"), "secret": notify_secret });
    let (three, answer) = submit(&api, OK_PLAN, Some(notify)).await?;
    assert!(answer.get("notify_secret").is_none(), "a given secret is not answered back: {answer}");

    // Failing meanwhile, and recorded as such.
    wait_for("failed attempts while the receiver is down", DEADLINE, || async {
        dispatcher.borrow_mut().check_alive()?;
        let listed = deliveries(&api).await?;
        Ok((listed.len() == 4 && listed.iter().all(|d| d["attempts"].as_i64() >= Some(2))).then_some(listed))
    })
    .await?;
    let listed = deliveries(&api).await?;
    for delivery in &listed {
        assert_eq!(delivery["status"], "pending", "{delivery}");
        let error = delivery["last_error"].as_str().unwrap_or_default();
        assert!(error.to_lowercase().contains("connect"), "the error says why: {delivery}");
    }

    let back_at = Duration::from_secs(60);
    tokio::time::sleep(back_at.saturating_sub(down_since.elapsed())).await;
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .with_context(|| format!("binding port {port} again"))?;
    let receiver = Receiver::new(0);
    receiver.serve(listener);

    let expected: BTreeSet<(String, String, String)> = [
        ("/sub", &one, "run.succeeded"),
        ("/sub", &two, "run.failed"),
        ("/sub", &three, "run.succeeded"),
        ("/notify", &three, "run.succeeded"),
    ]
    .into_iter()
    .map(|(p, r, e)| (p.to_owned(), r.clone(), e.to_owned()))
    .collect();
    wait_for("every notification after the outage", DEADLINE, || async {
        dispatcher.borrow_mut().check_alive()?;
        Ok((receiver.accepted().len() >= 4).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let secrets = BTreeMap::from([("/sub", sub_secret), ("/notify", notify_secret.to_owned())]);
    check_exactly_once(&receiver, &secrets, &expected)?;
    assert_eq!(receiver.log().len(), 4, "nothing sent twice once it was accepted");
    let listed = deliveries(&api).await?;
    assert!(
        listed.iter().all(|d| d["status"] == "delivered" && d["attempts"].as_i64() > Some(2)),
        "{listed:#?}"
    );
    Ok(())
}

/// Without `webhooks_allow_private`, private targets are refused when subscribed and when
/// given as a run's notify URL (a 400 naming the address and the setting), and a target
/// that resolves to a private address by the time it is delivered to (stored behind the
/// API's back, as if its DNS had changed) is refused at delivery with the reason recorded.
#[tokio::test]
async fn webhooks_to_private_addresses_are_refused_without_the_setting() -> anyhow::Result<()> {
    let mut env = Env::new("webhooks_private").await?;
    env.register("noop").await?;
    // A short retry window, so refused deliveries end `failed` within the test.
    let (dispatcher, api) = env
        .spawn_dispatcher_api(&[("OPFLOW_WEBHOOKS_RETRY_FOR", "6s"), ("OPFLOW_WEBHOOKS_MAX_BACKOFF", "2s")])
        .await?;
    let dispatcher = std::cell::RefCell::new(dispatcher);

    for (url, address) in [
        ("http://127.0.0.1:9/hook", "127.0.0.1"),
        ("http://[::1]:9/hook", "::1"),
        ("http://10.1.2.3/hook", "10.1.2.3"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254"),
        ("http://[::ffff:127.0.0.1]/hook", "::ffff:127.0.0.1"),
        ("http://localhost:9/hook", "localhost"),
    ] {
        let request = json!({ "url": url, "events": ["run.succeeded"] });
        let (status, body) = http(&api, "POST", "/v1/webhooks", None, Some(&request)).await?;
        assert_eq!(status, 400, "{url}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(address) && error.contains("webhooks_allow_private"), "{url}: {error}");
    }
    let (_, listed) = http(&api, "GET", "/v1/webhooks", None, None).await?;
    assert_eq!(listed["items"], json!([]), "nothing was subscribed");

    let (receiver, addr) = Receiver::listening(0).await?;
    let port = addr.port();
    let request = json!({ "plan": OK_PLAN, "notify": { "url": format!("http://127.0.0.1:{port}/notify") } });
    let (status, body) = http(&api, "POST", "/v1/runs", None, Some(&request)).await?;
    assert_eq!(status, 400, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("127.0.0.1") && error.contains("webhooks_allow_private"), "{error}");
    let db = env.db().await?;
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM runs").fetch_one(&db).await?;
    assert_eq!(runs, 0, "a refused notify stores no run");

    // At delivery: stored targets that now point inside (a name and a literal) are refused.
    for url in [format!("http://localhost:{port}/rebound"), format!("http://127.0.0.1:{port}/literal")] {
        sqlx::query(
            "INSERT INTO webhooks (id, url, events, secret) VALUES (gen_random_uuid(), $1, '{run.canceled}', $2)",
        )
        .bind(url)
        .bind(SUB_SECRET)
        .execute(&db)
        .await?;
    }
    let (run, _) = submit(&api, SLOW_PLAN, None).await?;
    let (status, body) = http(&api, "POST", &format!("/v1/runs/{run}/cancel"), None, None).await?;
    assert_eq!(status, 200, "{body}");
    let listed = wait_for("both deliveries given up as failed", DEADLINE, || async {
        dispatcher.borrow_mut().check_alive()?;
        let (status, body) = http(&api, "GET", "/v1/webhooks/deliveries?failed=true", None, None).await?;
        anyhow::ensure!(status == 200, "{body}");
        let listed = body["items"].as_array().context("items")?.clone();
        Ok((listed.len() == 2).then_some(listed))
    })
    .await?;
    for delivery in &listed {
        assert_eq!(delivery["status"], "failed", "{delivery}");
        let error = delivery["last_error"].as_str().unwrap_or_default();
        assert!(error.contains("loopback") && error.contains("webhooks_allow_private"), "{delivery}");
        assert!(delivery["last_http_status"].is_null(), "nothing was sent: {delivery}");
        assert!(delivery["attempts"].as_i64() >= Some(2), "retried before giving up: {delivery}");
    }
    assert!(receiver.log().is_empty(), "the receiver got nothing: {:?}", receiver.log());
    Ok(())
}

/// Measures how long a webhook takes from the run's end (its `finished_at`, stamped by the
/// database) to the receiver, over a few runs; printed, not asserted (no timed assertions).
#[tokio::test]
async fn webhook_latency_from_run_end_to_receiver() -> anyhow::Result<()> {
    let env = Env::new("webhooks_latency").await?;
    env.register("noop").await?;
    let (dispatcher, api) = env.spawn_dispatcher_api(&[("OPFLOW_WEBHOOKS_ALLOW_PRIVATE", "true")]).await?;
    let dispatcher = std::cell::RefCell::new(dispatcher);
    let _worker = env.spawn_worker("noop")?;
    let (receiver, addr) = Receiver::listening(0).await?;
    subscribe(&api, &format!("http://{addr}/sub"), &["run.succeeded"], Some(SUB_SECRET)).await?;
    let mut latencies = Vec::new();
    for n in 1..=7 {
        submit(&api, OK_PLAN, None).await?;
        wait_for("the notification", DEADLINE, || async {
            dispatcher.borrow_mut().check_alive()?;
            Ok((receiver.accepted().len() >= n).then_some(()))
        })
        .await?;
        let request = receiver.accepted().pop().unwrap();
        verify(SUB_SECRET, &request)?;
        let finished =
            chrono::DateTime::parse_from_rfc3339(request.json()["data"]["finished_at"].as_str().unwrap())?;
        let received = chrono::DateTime::<chrono::Utc>::from(request.received_at);
        latencies.push((received - finished.to_utc()).num_microseconds().unwrap() as f64 / 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    println!(
        "webhook latency, run end → receiver, ms: median {:.1}, max {:.1}, all {latencies:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    assert!(latencies.iter().all(|l| *l >= 0.0), "received before the run ended? {latencies:?}");
    Ok(())
}

/// A receiver that accepts connections and never answers: how many requests reached it,
/// and how many of those connections the sender has since given up on (closed).
#[derive(Clone, Default)]
struct HungReceiver {
    connected: Arc<std::sync::atomic::AtomicUsize>,
    closed: Arc<std::sync::atomic::AtomicUsize>,
}

impl HungReceiver {
    fn serve(&self, listener: tokio::net::TcpListener) {
        let this = self.clone();
        tokio::spawn(async move {
            use std::sync::atomic::Ordering::SeqCst;
            use tokio::io::AsyncReadExt;
            while let Ok((mut stream, _)) = listener.accept().await {
                this.connected.fetch_add(1, SeqCst);
                let closed = this.closed.clone();
                tokio::spawn(async move {
                    let mut buffer = [0u8; 4096];
                    // Read and never answer, until the sender closes the connection.
                    while matches!(stream.read(&mut buffer).await, Ok(n) if n > 0) {}
                    closed.fetch_add(1, SeqCst);
                });
            }
        });
    }

    fn counts(&self) -> (usize, usize) {
        use std::sync::atomic::Ordering::SeqCst;
        (self.connected.load(SeqCst), self.closed.load(SeqCst))
    }
}

/// A receiver that never answers holds up no other receiver: every run's notification
/// reaches a healthy receiver while the hung receiver holds its share of the delivery slots
/// (4 attempts at once, one target's most), before any attempt at the hung one is given up
/// (which happens only at the attempt timeout); those attempts then end as timeouts,
/// recorded, and are retried, and its fifth message goes out as a slot frees.
#[tokio::test]
async fn webhooks_to_a_hung_receiver_hold_up_no_other_receiver() -> anyhow::Result<()> {
    // The delivery task's limit of attempts in flight to one target.
    const PER_TARGET: usize = 4;
    let env = Env::new("webhooks_hung").await?;
    env.register("noop").await?;
    let (dispatcher, api) = env.spawn_dispatcher_api(&[("OPFLOW_WEBHOOKS_ALLOW_PRIVATE", "true")]).await?;
    let dispatcher = std::cell::RefCell::new(dispatcher);
    let _worker = env.spawn_worker("noop")?;
    let hung = HungReceiver::default();
    let hung_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hung_addr = hung_listener.local_addr()?;
    hung.serve(hung_listener);
    let (healthy, healthy_addr) = Receiver::listening(0).await?;
    // The hung receiver subscribes first, so its deliveries are claimed first too.
    subscribe(&api, &format!("http://{hung_addr}/hung"), &["run.succeeded"], Some(SUB_SECRET)).await?;
    subscribe(&api, &format!("http://{healthy_addr}/ok"), &["run.succeeded"], Some(SUB_SECRET)).await?;

    let runs = 5;
    for _ in 0..runs {
        submit(&api, OK_PLAN, None).await?;
    }
    let (connected, closed) = wait_for("every notification at both receivers", DEADLINE, || async {
        dispatcher.borrow_mut().check_alive()?;
        let (connected, closed) = hung.counts();
        Ok((healthy.accepted().len() >= runs && connected >= PER_TARGET).then_some((connected, closed)))
    })
    .await?;
    assert_eq!(closed, 0, "an attempt at the hung receiver ended before the healthy one got every message");
    assert_eq!(connected, PER_TARGET, "one target's attempts in flight at once");
    for request in healthy.accepted() {
        verify(SUB_SECRET, &request)?;
    }

    // The hung attempts end at the attempt timeout, recorded as such, and are retried.
    let timed_out = wait_for("the hung attempts to time out", DEADLINE, || async {
        dispatcher.borrow_mut().check_alive()?;
        let listed = deliveries(&api).await?;
        let hung_url = format!("http://{hung_addr}/hung");
        let timed_out: Vec<Value> = listed
            .into_iter()
            .filter(|d| d["url"] == hung_url.as_str() && d["attempts"].as_i64() >= Some(1))
            .collect();
        Ok((timed_out.len() == runs).then_some(timed_out))
    })
    .await?;
    for delivery in &timed_out {
        assert_eq!(delivery["status"], "pending", "retried after the timeout: {delivery}");
        let error = delivery["last_error"].as_str().unwrap_or_default().to_lowercase();
        assert!(error.contains("timed out") || error.contains("timeout"), "{delivery}");
    }
    println!(
        "hung receiver: {connected} connections open at once while the healthy one got {runs} notifications"
    );
    assert_eq!(healthy.log().len(), runs, "the healthy receiver got each message once");
    Ok(())
}

/// The CLI side: `opflow webhooks add/list/deliveries/redeliver/remove` and `opflow run
/// --notify` manage and cause the same deliveries, over the API.
#[tokio::test]
async fn the_webhooks_cli_subscribes_lists_redelivers_and_removes() -> anyhow::Result<()> {
    let env = Env::new("webhooks_cli").await?;
    env.register("noop").await?;
    let _dispatcher = env.spawn_dispatcher_with(&[("OPFLOW_WEBHOOKS_ALLOW_PRIVATE", "true")]).await?;
    let _worker = env.spawn_worker("noop")?;
    let (receiver, addr) = Receiver::listening(0).await?;

    let sub_url = format!("http://{addr}/sub");
    let added = env.opflow_ok(&["webhooks", "add", &sub_url, "--events", "run.succeeded", "--json"]).await?;
    let added: Value = serde_json::from_slice(&added.stdout)?;
    let secret = added["secret"].as_str().context("a generated secret")?.to_owned();
    assert!(secret.starts_with("whsec_"), "{added}");
    let listed = env.opflow_ok(&["webhooks", "list"]).await?;
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains(&sub_url) && listed.contains("run.succeeded"), "{listed}");

    // A run with its own notify URL: the secret is generated and shown once.
    let plan = env.plan_file("ok", OK_PLAN)?;
    let notify_url = format!("http://{addr}/notify");
    let output =
        env.opflow_ok(&["run", plan.to_str().context("utf-8")?, "--wait", "--notify", &notify_url]).await?;
    let said = stderr(&output);
    let notify_secret = said
        .split_whitespace()
        .find(|w| w.starts_with("whsec_"))
        .with_context(|| format!("the notify secret is shown: {said}"))?
        .to_owned();
    let secrets: BTreeMap<&str, String> = [("/sub", secret.clone()), ("/notify", notify_secret)].into();
    wait_for("both notifications", DEADLINE, || async { Ok((receiver.accepted().len() >= 2).then_some(())) })
        .await?;
    for request in receiver.accepted() {
        verify(&secrets[request.path.as_str()], &request)?;
    }

    let shown = env.opflow_ok(&["webhooks", "deliveries"]).await?;
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("delivered") && shown.contains("HTTP 204"), "{shown}");
    let delivery = deliveries(&env.api_addr).await?[0]["id"].as_str().context("a delivery id")?.to_owned();
    let first = receiver.accepted().len();
    env.opflow_ok(&["webhooks", "redeliver", &delivery]).await?;
    wait_for("the redelivery", DEADLINE, || async { Ok((receiver.accepted().len() > first).then_some(())) })
        .await?;
    let again = receiver.accepted().pop().context("the redelivery")?;
    verify(&secrets[again.path.as_str()], &again)?;

    let id = added["id"].as_str().context("id")?;
    env.opflow_ok(&["webhooks", "remove", id]).await?;
    let gone = env.opflow(&["webhooks", "remove", id]).await?;
    assert_eq!(gone.status.code(), Some(2), "removing it twice is a mistake: {}", stderr(&gone));
    assert!(stderr(&gone).contains("no webhook"), "{}", stderr(&gone));
    let refused = env.opflow(&["webhooks", "add", &sub_url, "--events", "run.sideways"]).await?;
    assert_eq!(refused.status.code(), Some(2));
    assert!(stderr(&refused).contains("run.sideways"), "{}", stderr(&refused));
    Ok(())
}
