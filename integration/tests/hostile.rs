//! Hostile input: whatever one op, plan or client sends can fail only itself. Each case
//! runs beside a healthy run on the same dispatcher, which must still succeed within
//! 30 s, and checks that the bad input ends as documented in docs/reliability.md: refused
//! with exit 2, or its step or run failed with a reason that says why.

use std::time::{Duration, Instant};

use anyhow::Context;
use opflow_integration::{Env, Service, parse_summary, peak_rss_kib, set_policy, stderr, wait_for};
use serde_json::Value;
use tokio::process::Child;

/// Only turns a hang into a failure.
const DEADLINE: Duration = Duration::from_secs(180);
/// What a healthy run beside the bad input may take, at most.
const HEALTHY_WITHIN: Duration = Duration::from_secs(30);

/// A small plan on `op` that must succeed whatever the other test input does.
struct Healthy {
    started: Instant,
    run: tokio::task::JoinHandle<anyhow::Result<std::process::Output>>,
}

impl Healthy {
    fn start(env: &Env, op: &str) -> anyhow::Result<Self> {
        Self::start_with_token(env, op, None)
    }

    /// As `start`, for an API that needs a token (submit scope).
    fn start_with_token(env: &Env, op: &str, token: Option<&str>) -> anyhow::Result<Self> {
        let plan = env.plan_file(
            "healthy",
            &format!(
                "name: healthy\nassets:\n  - name: ok\n    op: {op}\n    sweep: {{k: {{from: 1, to: 20}}}}\n"
            ),
        )?;
        let mut command = env.command(&opflow_integration::binary("opflow")?);
        command
            .args(["run", plan.to_str().context("utf-8")?, "--wait", "--json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if let Some(token) = token {
            command.env("OPFLOW_TOKEN", token);
        }
        Ok(Self { started: Instant::now(), run: tokio::spawn(async move { Ok(command.output().await?) }) })
    }

    /// Waits for the healthy run and checks it succeeded in time.
    async fn succeeded(self) -> anyhow::Result<()> {
        let output = tokio::time::timeout(DEADLINE, self.run).await.context("the healthy run hung")???;
        let took = self.started.elapsed();
        assert!(output.status.success(), "the healthy run failed: {}", stderr(&output));
        assert_eq!(parse_summary(&output)?["status"], "succeeded");
        assert!(took < HEALTHY_WITHIN, "the healthy run took {took:?} beside the bad input");
        Ok(())
    }
}

/// The op the healthy runs use: a version of its own, with its own queue and worker, so
/// that a backlog or a policy on the bad op's queue is not what the healthy run measures.
const HEALTHY_OP: &str = "noop@1.0.0";

/// A test bed: an env with both noop versions registered, a dispatcher, a worker for the
/// healthy op and `bad_workers` workers for the bad one (noop@1.1.0).
struct Bed {
    env: Env,
    dispatcher: Service,
    _workers: Vec<Child>,
}

impl Bed {
    async fn new(test: &str, bad_workers: usize) -> anyhow::Result<Self> {
        Self::with_dispatcher_env(test, bad_workers, &[]).await
    }

    async fn with_dispatcher_env(
        test: &str,
        bad_workers: usize,
        vars: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let env = Env::new(test).await?;
        env.register("noop").await?;
        env.register(HEALTHY_OP).await?;
        let dispatcher = env.spawn_dispatcher_with(vars).await?;
        let mut workers = vec![env.spawn_worker(HEALTHY_OP)?];
        for _ in 0..bad_workers {
            workers.push(env.spawn_worker("noop")?);
        }
        Ok(Self { env, dispatcher, _workers: workers })
    }

    fn healthy(&self) -> anyhow::Result<Healthy> {
        Healthy::start(&self.env, HEALTHY_OP)
    }
}

async fn submit(env: &Env, name: &str, yaml: &str) -> anyhow::Result<String> {
    let plan = env.plan_file(name, yaml)?;
    let output = env.opflow_ok(&["run", plan.to_str().context("utf-8")?, "--json"]).await?;
    Ok(parse_summary(&output)?["run_id"].as_str().context("run_id")?.to_owned())
}

async fn wait_ended(env: &mut Env, run_id: &str) -> anyhow::Result<String> {
    let db = env.db().await?;
    wait_for("the run to end", DEADLINE, || async {
        let status: String = sqlx::query_scalar("SELECT status::text FROM runs WHERE id = $1::uuid")
            .bind(run_id)
            .fetch_one(&db)
            .await?;
        Ok((!matches!(status.as_str(), "queued" | "running")).then_some(status))
    })
    .await
}

#[tokio::test]
async fn an_op_whose_texts_hold_nul_bytes_fails_only_itself() -> anyhow::Result<()> {
    let mut bed = Bed::new("hostile_nul", 1).await?;
    let healthy = bed.healthy()?;
    let env = &mut bed.env;
    let run_id = submit(
        env,
        "nul",
        "name: nul\nassets:\n  - name: texts\n    op: noop@1.1.0\n    config: {nul_texts: true}\n  \
         - name: fails\n    op: noop@1.1.0\n    config: {nul_texts: true, fail: fatal}\n",
    )
    .await?;
    assert_eq!(wait_ended(env, &run_id).await?, "failed");
    healthy.succeeded().await?;

    let db = env.db().await?;
    let steps: Vec<(String, String, Option<Value>, Option<String>)> = sqlx::query_as(
        "SELECT a.name, s.status::text, s.output, s.error FROM steps s
         JOIN run_assets a ON a.run_id = s.run_id AND a.idx = s.asset WHERE s.run_id = $1::uuid ORDER BY a.name",
    )
    .bind(&run_id)
    .fetch_all(&db)
    .await?;
    let [(_, fails, _, error), (_, texts, output, _)] = &steps[..] else { panic!("{steps:?}") };
    // The error keeps its text, with the NUL made visible.
    assert_eq!(fails, "failed");
    assert!(
        error.as_deref().is_some_and(|e| e.contains("failing as configured (fail: fatal)␀")),
        "{error:?}"
    );
    // The output, the log line, the progress message and the materialization metadata too.
    assert_eq!(texts, "succeeded");
    assert_eq!(output.as_ref().and_then(|o| o["text"].as_str()), Some("out␀put"));
    let bodies: Vec<Value> = sqlx::query_scalar("SELECT body FROM events WHERE run_id = $1::uuid")
        .bind(&run_id)
        .fetch_all(&db)
        .await?;
    let all = serde_json::to_string(&bodies)?;
    for stored in ["raw stderr:␀", "half␀way", "path␀", "/tmp/␀x"] {
        assert!(all.contains(stored), "`{stored}` not stored: {all}");
    }
    Ok(())
}

#[tokio::test]
async fn a_plan_with_absurd_durations_is_refused_with_exit_2() -> anyhow::Result<()> {
    let mut bed = Bed::new("hostile_durations", 0).await?;
    let healthy = bed.healthy()?;
    let plan = bed.env.plan_file(
        "absurd",
        "name: absurd\nassets:\n  - name: slow\n    op: noop@1.1.0\n    timeout: 1000000y\n    \
         retry: {max: 1, backoff: 1000000y}\n",
    )?;
    let output = bed.env.opflow(&["run", plan.to_str().context("utf-8")?]).await?;
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{message}");
    let file = plan.display().to_string();
    assert!(
        message.contains(&format!("{file}:5: asset `slow`: timeout: `1000000y` is over the limit of 7days")),
        "{message}"
    );
    assert!(
        message.contains(&format!("{file}:6: asset `slow`: retry.backoff: `1000000y` is over the limit")),
        "{message}"
    );
    healthy.succeeded().await?;
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM runs WHERE plan_name = 'absurd'")
        .fetch_one(&bed.env.db().await?)
        .await?;
    assert_eq!(runs, 0, "a refused plan changes nothing");
    Ok(())
}

#[tokio::test]
async fn a_thousand_sweeps_of_a_million_are_refused_quickly_in_little_memory() -> anyhow::Result<()> {
    let bed = Bed::new("hostile_sweeps", 0).await?;
    let healthy = bed.healthy()?;
    let mut yaml = String::from("name: huge\nassets:\n");
    for i in 0..1000 {
        yaml.push_str(&format!(
            "  - name: a{i}\n    op: noop@1.1.0\n    sweep: {{x: {{from: 1, to: 1000000}}}}\n"
        ));
    }
    let plan = bed.env.plan_file("huge", &yaml)?;
    let measured = bed.env.opflow_measured(&["run", plan.to_str().context("utf-8")?]).await?;
    let message = stderr(&measured.output);
    assert_eq!(measured.output.status.code(), Some(2), "{message}");
    assert!(message.contains("1000000000 steps, over the limit of 1000000"), "{message}");
    println!(
        "refused 1,000 sweeps of 1,000,000 values: exit 2 after {:?}, peak RSS of `opflow run` {} KiB",
        measured.wall, measured.peak_rss_kib
    );
    // Building the values would take tens of gigabytes; the refusal takes a plain CLI's memory.
    assert!(measured.peak_rss_kib < 200 * 1024, "peak RSS {} KiB", measured.peak_rss_kib);
    healthy.succeeded().await?;
    Ok(())
}

#[tokio::test]
async fn a_5000_way_fan_in_of_64_kib_outputs_fails_the_fan_in_step_only() -> anyhow::Result<()> {
    let mut bed = Bed::new("hostile_fan_in", 2).await?;
    let run_id = submit(
        &bed.env,
        "wide",
        "name: wide\nassets:\n  - name: wide\n    op: noop@1.1.0\n    sweep: {k: {from: 1, to: 5000}}\n    \
         config: {output_bytes: 65000}\n  - name: sum\n    op: noop@1.1.0\n    deps: [wide]\n",
    )
    .await?;
    // The healthy run goes alongside the wide one, while its 5,000 outputs are stored.
    let healthy = bed.healthy()?;
    healthy.succeeded().await?;
    assert_eq!(wait_ended(&mut bed.env, &run_id).await?, "failed");
    let peak = bed.dispatcher.pid().map(peak_rss_kib).transpose()?.context("the dispatcher runs")?;
    println!("5,000-way fan-in of 64 KiB outputs: dispatcher peak RSS {peak} KiB");
    let db = bed.env.db().await?;
    let (succeeded, error): (i64, String) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM steps WHERE run_id = $1::uuid AND status = 'succeeded'),
                (SELECT error FROM steps s JOIN run_assets a ON a.run_id = s.run_id AND a.idx = s.asset
                 WHERE s.run_id = $1::uuid AND a.name = 'sum')",
    )
    .bind(&run_id)
    .fetch_one(&db)
    .await?;
    assert_eq!(succeeded, 5000);
    assert!(
        error.contains("step sum needs") && error.contains("MiB of upstream outputs, over the 8.0 MiB limit"),
        "{error}"
    );
    // 5,000 outputs of 64 KiB are over 300 MiB: the dispatcher never held them.
    assert!(peak < 300 * 1024, "dispatcher peak RSS {peak} KiB");
    bed.dispatcher.check_alive()?;
    Ok(())
}

#[tokio::test]
async fn a_publish_refused_by_a_queue_policy_fails_its_step() -> anyhow::Result<()> {
    // No worker for the bad op: its queue stays full.
    let mut bed = Bed::new("hostile_policy", 0).await?;
    // Every publish to the bad op's queue is refused (nacked) once it holds a message: a
    // quorum queue lets the publish that reaches its limit in, and refuses the ones after.
    set_policy(
        &bed.env,
        "refuse",
        r"^opflow\.op\.noop\.1\.1\.0$",
        r#"{"max-length": 0, "overflow": "reject-publish"}"#,
    )
    .await?;
    fill_queue(&bed.env, "opflow.op.noop.1.1.0").await?;
    let healthy = bed.healthy()?;
    let run_id = submit(
        &bed.env,
        "refused",
        "name: refused\nassets:\n  - name: a\n    op: noop@1.1.0\n    retry: {max: 1, backoff: 10ms}\n",
    )
    .await?;
    assert_eq!(wait_ended(&mut bed.env, &run_id).await?, "failed");
    healthy.succeeded().await?;
    let error: String = sqlx::query_scalar("SELECT error FROM steps WHERE run_id = $1::uuid")
        .bind(&run_id)
        .fetch_one(&bed.env.db().await?)
        .await?;
    assert!(
        error.contains("failed after 2 attempts") && error.contains("the broker refused the step's message"),
        "{error}"
    );
    assert!(error.contains("max-length"), "{error}");
    bed.dispatcher.check_alive()?;
    Ok(())
}

/// Publishes one message to `queue` (confirmed), whatever it holds.
async fn fill_queue(env: &Env, queue: &str) -> anyhow::Result<()> {
    use lapin::{BasicProperties, Connection, ConnectionProperties, options::*};
    let connection = Connection::connect(&env.amqp_url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            b"filler",
            BasicProperties::default(),
        )
        .await?
        .await?;
    anyhow::ensure!(confirm.is_ack(), "the filler was refused: {confirm:?}");
    let _ = connection.close(200, "filled".into()).await;
    Ok(())
}

/// Starts `opflow up` for both noop versions (the bad one, noop@1.1.0, and the healthy
/// one), with `env_vars` added to its (and its workers') environment.
async fn spawn_up(env: &Env, env_vars: &[(&str, &str)]) -> anyhow::Result<Child> {
    let mut command = env.command(&opflow_integration::binary("opflow")?);
    // A fixed fleet of one worker per op: these cases are about supervision, not scaling.
    command.args(["up", "--workers", "1"]);
    for op in ["noop", HEALTHY_OP] {
        command.arg(opflow_integration::binary(op)?);
    }
    for (key, value) in env_vars {
        command.env(key, value);
    }
    let up = command.stdout(std::process::Stdio::null()).spawn()?;
    env.wait_for_api().await?;
    Ok(up)
}

/// Waits until `opflow up` runs a worker of each op.
async fn wait_for_workers(up: &Child) -> anyhow::Result<Vec<u32>> {
    let pid = up.id().context("opflow up runs")?;
    wait_for("opflow up to start its workers", DEADLINE, || async {
        let workers: Vec<u32> = opflow_integration::workers_of(pid).into_iter().map(|(pid, _)| pid).collect();
        Ok((workers.len() >= 2).then_some(workers))
    })
    .await
}

#[tokio::test]
async fn a_handler_spinning_past_its_timeout_never_overlaps_its_retry() -> anyhow::Result<()> {
    let mut env = Env::new("hostile_spin").await?;
    let up = spawn_up(&env, &[("OPFLOW_STOP_GRACE", "1s")]).await?;
    wait_for_workers(&up).await?;
    let healthy = Healthy::start(&env, HEALTHY_OP)?;
    // Attempt 1 spins for a minute on a thread nothing can stop, holding a lock; attempt 2
    // takes the same lock, and fails at once if attempt 1 still holds it.
    let lock = env.log_file("spin.lock")?;
    let run_id = submit(
        &env,
        "spin",
        &format!(
            "name: spin\nassets:\n  - name: spin\n    op: noop@1.1.0\n    timeout: 1s\n    retry: {{max: 1, backoff: 10ms}}\n    \
             config: {{burn_ms: 60000, burn_until_attempt: 2, lock_file: \"{}\"}}\n",
            lock.display()
        ),
    )
    .await?;
    assert_eq!(wait_ended(&mut env, &run_id).await?, "succeeded");
    healthy.succeeded().await?;
    let db = env.db().await?;
    let results: Vec<(i32, String, String)> = sqlx::query_as(
        "SELECT attempt, worker, body::text FROM events WHERE run_id = $1::uuid AND kind IN ('succeeded', 'failed')
         ORDER BY attempt",
    )
    .bind(&run_id)
    .fetch_all(&db)
    .await?;
    let [(1, first_worker, timed_out), (2, second_worker, succeeded)] = &results[..] else {
        panic!("one timeout, then one success: {results:?}")
    };
    assert!(
        timed_out.contains("timed out after 1s") && timed_out.contains("did not stop within 1s"),
        "{timed_out}"
    );
    assert!(timed_out.contains("worker process exited to stop it"), "{timed_out}");
    assert!(succeeded.contains("\"attempt\":2") || succeeded.contains("\"attempt\": 2"), "{succeeded}");
    // The retry ran in a fresh process (its name ends in its pid).
    assert_ne!(first_worker, second_worker);
    Ok(())
}

#[tokio::test]
async fn no_worker_outlives_a_sigkilled_opflow_up() -> anyhow::Result<()> {
    let env = Env::new("hostile_up_kill").await?;
    let mut up = spawn_up(&env, &[]).await?;
    let workers = wait_for_workers(&up).await?;
    let healthy = Healthy::start(&env, HEALTHY_OP)?;
    healthy.succeeded().await?;
    opflow_integration::sigkill(&up)?;
    up.wait().await?;
    let alive = |pid: &u32| {
        // A zombie (reaped by init soon) is dead already.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat.split(") ").nth(1).is_some_and(|rest| rest.starts_with('Z')))
    };
    wait_for("the workers to die with opflow up", Duration::from_secs(10), || async {
        Ok(workers.iter().all(|pid| !alive(pid)).then_some(()))
    })
    .await
    .with_context(|| {
        format!("workers still alive: {:?}", workers.iter().filter(|p| alive(p)).collect::<Vec<_>>())
    })?;
    Ok(())
}

#[tokio::test]
async fn a_run_whose_queue_is_purged_mid_run_still_ends() -> anyhow::Result<()> {
    let mut bed =
        Bed::with_dispatcher_env("hostile_purge", 1, &[("OPFLOW_LOST_STEP_AFTER_SECS", "2")]).await?;
    let run_id = submit(
        &bed.env,
        "purged",
        "name: purged\nassets:\n  - name: a\n    op: noop@1.1.0\n    sweep: {k: {from: 1, to: 10}}\n    \
         config: {sleep_ms: 500}\n    retry: {max: 2, backoff: 10ms}\n",
    )
    .await?;
    let db = bed.env.db().await?;
    wait_for("a step to run", DEADLINE, || async {
        let running: i64 =
            sqlx::query_scalar("SELECT count(*) FROM steps WHERE run_id = $1::uuid AND status = 'running'")
                .bind(&run_id)
                .fetch_one(&db)
                .await?;
        Ok((running > 0).then_some(()))
    })
    .await?;
    opflow_integration::purge_queue(&bed.env, "opflow.op.noop.1.1.0").await?;
    let healthy = bed.healthy()?;
    assert_eq!(wait_ended(&mut bed.env, &run_id).await?, "succeeded");
    healthy.succeeded().await?;
    let lost = opflow_integration::failed_events_containing(
        &db,
        &run_id,
        "lost: its message is no longer on queue `opflow.op.noop.1.1.0`",
    )
    .await?;
    assert!(lost >= 1, "the purged steps were found lost and retried");
    bed.dispatcher.check_alive()?;
    Ok(())
}

#[tokio::test]
async fn requests_without_a_token_or_with_a_weaker_one_are_refused() -> anyhow::Result<()> {
    let env = Env::new("hostile_auth").await?;
    env.register("noop").await?;
    env.register(HEALTHY_OP).await?;
    let (_dispatcher, api) = env.spawn_dispatcher_api(&[("OPFLOW_API_AUTH", "required")]).await?;
    let _workers = [env.spawn_worker(HEALTHY_OP)?, env.spawn_worker("noop")?];
    let token = |output: std::process::Output| String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let reader = token(env.opflow_ok(&["tokens", "create", "reader", "--scope", "read"]).await?);
    let submitter = token(env.opflow_ok(&["tokens", "create", "pipeline", "--scope", "submit"]).await?);
    // The healthy run submits and follows over the API like any user: with a token.
    let healthy_token = token(env.opflow_ok(&["tokens", "create", "healthy", "--scope", "submit"]).await?);
    let healthy = Healthy::start_with_token(&env, HEALTHY_OP, Some(&healthy_token))?;
    let plan = serde_json::json!({"plan": "name: p\nassets:\n  - name: a\n    op: noop@1.1.0\n"});

    let (status, body) = opflow_integration::http(&api, "GET", "/v1/ops", None, None).await?;
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].as_str().is_some_and(|m| m.contains("Authorization: Bearer")), "{body}");
    let (status, body) =
        opflow_integration::http(&api, "GET", "/v1/ops", Some("opf_12345678_wrong"), None).await?;
    assert_eq!(status, 401, "{body}");
    let (status, body) =
        opflow_integration::http(&api, "POST", "/v1/runs", Some(&reader), Some(&plan)).await?;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|m| m.contains("scope `read`") && m.contains("needs `submit`")),
        "{body}"
    );
    let (status, body) = opflow_integration::http(&api, "GET", "/v1/ops", Some(&reader), None).await?;
    assert_eq!(status, 200, "{body}");
    assert!(body["items"].as_array().is_some_and(|ops| ops.len() == 2), "{body}");
    let (status, body) =
        opflow_integration::http(&api, "POST", "/v1/runs", Some(&submitter), Some(&plan)).await?;
    assert_eq!(status, 201, "{body}");
    // Health stays open; a revoked token stops working at once.
    assert_eq!(opflow_integration::http(&api, "GET", "/healthz", None, None).await?.0, 200);
    env.opflow_ok(&["tokens", "revoke", "pipeline"]).await?;
    let (status, _) =
        opflow_integration::http(&api, "POST", "/v1/runs", Some(&submitter), Some(&plan)).await?;
    assert_eq!(status, 401);
    healthy.succeeded().await?;
    Ok(())
}

/// Settings that would busy-loop, unbound a prefetch, overflow a date or panic on first use
/// stop `opflow dispatcher` at start with exit 2, naming the key and its range; scaling
/// settings that would have been truncated are refused by `opflow ops scale` with exit 2.
#[tokio::test]
async fn settings_out_of_range_are_refused_at_start_with_exit_2() -> anyhow::Result<()> {
    let env = Env::new("hostile_settings").await?;
    for (key, value) in [
        ("OPFLOW_PUBLISH_BATCH", "0"),
        ("OPFLOW_EVENT_BATCH", "0"),
        ("OPFLOW_API_POOL_SIZE", "0"),
        ("OPFLOW_RETRY_POLL_MS", "0"),
        ("OPFLOW_WEBHOOKS_RETRY_FOR", "300000y"),
        ("OPFLOW_RETENTION", "300000y"),
        ("OPFLOW_LOST_STEP_AFTER_SECS", "99999999999"),
        ("OPFLOW_CONSUMER_TIMEOUT_MS", "10"),
    ] {
        let mut command = env.command(&opflow_integration::binary("opflow")?);
        command.arg("dispatcher").env(key, value);
        let output =
            tokio::time::timeout(DEADLINE, command.output()).await.context("the dispatcher hung")??;
        let message = stderr(&output);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{key}={value} must stop the dispatcher at start: {message}"
        );
        let name = key.trim_start_matches("OPFLOW_").to_ascii_lowercase();
        assert!(
            message.contains(&format!("`{name}`"))
                && message.contains("outside")
                && message.contains("the default is"),
            "{key}={value}: {message}"
        );
    }
    env.register("noop").await?;
    for args in
        [["--cooldown", "300000y"], ["--polling", "0s"], ["--max", "0"], ["--max-steps", "4294967295"]]
    {
        let output = env.opflow(&[&["ops", "scale", "noop@1.1.0"][..], &args[..]].concat()).await?;
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "ops scale {args:?}: {message}");
        assert!(message.contains(args[0]) || message.contains(&args[0][2..]), "{args:?}: {message}");
    }
    let listed = env.opflow_ok(&["ops", "list", "--json"]).await?;
    let ops: Value = serde_json::from_slice(&listed.stdout)?;
    let cooldown = ops[0]["cooldown_secs"].as_i64().with_context(|| format!("cooldown_secs in {ops}"))?;
    assert_eq!(cooldown, 300, "a refused scale changes nothing");
    Ok(())
}

/// A step's liveness is judged by the dispatcher's clock: a heartbeat stamped
/// `9999-12-31` by a hung step's worker (a forged one here, as any holder of the broker's
/// credentials could send) keeps the step alive no longer than a true one, so the step is
/// found silent, retried on another worker, and the run ends.
#[tokio::test]
async fn a_heartbeat_from_the_far_future_keeps_a_hung_step_alive_no_longer() -> anyhow::Result<()> {
    use lapin::{BasicProperties, Connection, ConnectionProperties, options::BasicPublishOptions};
    use opflow_protocol::{Event, EventKind, RunId, StepId};

    let mut env = Env::new("hostile_future_heartbeat").await?;
    env.register("noop").await?;
    let _dispatcher = env.spawn_dispatcher_with(&[("OPFLOW_LOST_STEP_AFTER_SECS", "3")]).await?;
    let hung = env.spawn_worker("noop")?;
    let run_id = submit(
        &env,
        "hung",
        "name: hung\nassets:\n  - name: a\n    op: noop@1.1.0\n    config: {sleep_ms: 2000}\n",
    )
    .await?;
    let db = env.db().await?;
    let worker: String = wait_for("the step to start", DEADLINE, || async {
        Ok(sqlx::query_scalar::<_, String>(
            "SELECT worker FROM steps WHERE run_id = $1::uuid AND status = 'running'",
        )
        .bind(&run_id)
        .fetch_optional(&db)
        .await?)
    })
    .await?;
    // The worker hangs (SIGSTOP: no more heartbeats), and a heartbeat from the far future
    // arrives in its name.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(hung.id().context("the worker's pid")? as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )?;
    let mut forged = Event::new(
        run_id.parse::<RunId>().map_err(anyhow::Error::msg)?,
        StepId(0),
        1,
        worker,
        EventKind::Heartbeat,
    );
    forged.at = "9999-12-31T23:59:59Z".parse()?;
    let connection = Connection::connect(&env.amqp_url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    // Confirmed: an unconfirmed publish can still be in the client's buffer when the
    // connection closes, and never reach the broker.
    channel.confirm_select(lapin::options::ConfirmSelectOptions::default()).await?;
    let confirm = channel
        .basic_publish(
            opflow_protocol::queue::EVENTS_EXCHANGE.into(),
            opflow_protocol::queue::event_routing_key("heartbeat").as_str().into(),
            BasicPublishOptions::default(),
            &forged.encode(),
            BasicProperties::default().with_delivery_mode(2),
        )
        .await?
        .await?;
    anyhow::ensure!(confirm.is_ack(), "the broker did not take the forged heartbeat: {confirm:?}");
    connection.close(200, "done".into()).await.ok();
    let _rescuer = env.spawn_worker("noop")?;
    let status =
        tokio::time::timeout(DEADLINE, wait_ended(&mut env, &run_id)).await.context("the run hung")??;
    assert_eq!(status, "succeeded");
    let (attempt, heartbeat): (i32, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT attempt, heartbeat_at FROM steps WHERE run_id = $1::uuid")
            .bind(&run_id)
            .fetch_one(&db)
            .await?;
    assert!(attempt >= 2, "the silent step was retried: attempt {attempt}");
    assert!(
        heartbeat.is_none_or(|at| at < chrono::Utc::now() + chrono::Duration::minutes(1)),
        "{heartbeat:?}"
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(hung.id().unwrap_or_default() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    Ok(())
}

/// A NUL character where none can be stored is the sender's mistake, never a 500: in a
/// range sweep's parameter name (exit 2, naming it) and anywhere in a URL (400).
#[tokio::test]
async fn nul_characters_in_a_sweep_name_or_a_url_are_refused_not_500() -> anyhow::Result<()> {
    let env = Env::new("hostile_nul_url").await?;
    env.register("noop").await?;
    let (_dispatcher, api) = env.spawn_dispatcher_api(&[]).await?;
    let plan = env.plan_file(
        "nul",
        "name: nul\nassets:\n  - name: a\n    op: noop@1.1.0\n    sweep: {\"k\\0\": {from: 1, to: 3}}\n",
    )?;
    let output = env.opflow(&["run", plan.to_str().context("utf-8")?]).await?;
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{message}");
    assert!(message.contains("asset `a`: sweep: a parameter name holds a NUL character"), "{message}");
    let plan = env.plan_file("ok", "name: ok\nassets:\n  - name: a\n    op: noop@1.1.0\n")?;
    let run = parse_summary(&env.opflow_ok(&["run", plan.to_str().context("utf-8")?, "--json"]).await?)?;
    let run = run["run_id"].as_str().context("run_id")?.to_owned();
    for path in [
        format!("/v1/runs/{run}/steps?asset=a%00b"),
        format!("/v1/runs/{run}/outputs?asset=%00"),
        format!("/v1/runs/{run}/events?kinds=log%00"),
    ] {
        let (status, body) = opflow_integration::http(&api, "GET", &path, None, None).await?;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body["error"].as_str().is_some_and(|m| m.contains("NUL")), "{path}: {body}");
    }
    Ok(())
}

/// An idempotency key belongs to the token that used it: a squatter's submission of the
/// pipeline's next key with its own plan neither blocks the pipeline (no 409) nor hands it
/// the squatter's run; each token gets its own run for the key, and again the same one.
#[tokio::test]
async fn an_idempotency_key_taken_by_another_token_does_not_block_its_owner() -> anyhow::Result<()> {
    let env = Env::new("hostile_key_squat").await?;
    env.register("noop").await?;
    let (_dispatcher, api) = env.spawn_dispatcher_api(&[("OPFLOW_API_AUTH", "required")]).await?;
    let token = |output: std::process::Output| String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let pipeline = token(env.opflow_ok(&["tokens", "create", "pipeline", "--scope", "submit"]).await?);
    let squatter = token(env.opflow_ok(&["tokens", "create", "squatter", "--scope", "submit"]).await?);
    let submit = |token: String, plan: &'static str| {
        let api = api.clone();
        async move {
            let body = serde_json::json!({ "plan": plan, "key": "nightly-2026-11-23" });
            opflow_integration::http(&api, "POST", "/v1/runs", Some(&token), Some(&body)).await
        }
    };
    let squat = "name: squat\nassets:\n  - name: a\n    op: noop@1.1.0\n";
    let nightly = "name: nightly\nassets:\n  - name: a\n    op: noop@1.1.0\n    sweep: {k: [1, 2]}\n";
    let (status, squatted) = submit(squatter.clone(), squat).await?;
    assert_eq!(status, 201, "{squatted}");
    let (status, own) = submit(pipeline.clone(), nightly).await?;
    assert_eq!(status, 201, "the pipeline's key is its own, whoever used the same text: {own}");
    assert_ne!(own["run_id"], squatted["run_id"]);
    assert_eq!(own["plan"], "nightly");
    let (status, again) = submit(pipeline, nightly).await?;
    assert_eq!((status, &again["run_id"], &again["existing"]), (200, &own["run_id"], &Value::Bool(true)));
    let (status, conflict) = submit(squatter, nightly).await?;
    assert_eq!(status, 409, "the squatter's own key still guards its own run: {conflict}");
    Ok(())
}

/// What an op sends cannot drive the user's terminal: log lines, progress messages and
/// errors holding escape sequences (a retitle, a screen clear, a colour) and other control
/// characters reach `opflow logs`, `events`, `status` and `watch` without them.
#[tokio::test]
async fn an_ops_texts_cannot_drive_the_users_terminal() -> anyhow::Result<()> {
    let env = Env::new("hostile_terminal").await?;
    env.register("noop").await?;
    let _dispatcher = env.spawn_dispatcher().await?;
    let _worker = env.spawn_worker("noop")?;
    let plan = env.plan_file(
        "escapes",
        "name: escapes\nassets:\n  - name: a\n    op: noop@1.1.0\n    \
         config: {fail: fatal, say: \"\\e]0;pwned\\a\\e[2J\\e[1;31mred\\e[0m\\rover\\x9b2J\"}\n",
    )?;
    let output = env.opflow(&["run", plan.to_str().context("utf-8")?, "--wait"]).await?;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let run = String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| {
            l.strip_prefix("following run ").and_then(|l| l.split_whitespace().next()).map(str::to_owned)
        })
        .context("the run id")?;
    let mut shown = String::from_utf8_lossy(&output.stdout).into_owned();
    for args in [&["logs", &run][..], &["events", &run][..], &["status", &run][..], &["watch", &run][..]] {
        let output = env.opflow(args).await?;
        shown.push_str(&String::from_utf8_lossy(&output.stdout));
    }
    assert!(shown.contains("red"), "the text itself is shown:\n{shown}");
    for (control, what) in [('\u{1b}', "ESC"), ('\u{7}', "BEL"), ('\r', "CR"), ('\u{9b}', "CSI")] {
        assert!(!shown.contains(control), "{what} reached the terminal:\n{shown:?}");
    }
    Ok(())
}

/// What reaches another system or a caller names nothing internal, and nothing is read
/// without bound: a submitter's notify URL is not resolved when given (its answer cannot
/// map the internal network) and addresses that relay to IPv4 space are refused; `/readyz`
/// says which part is down, never the broker's error text; a plan path that names an
/// endless file is refused after its limit, not read whole.
#[tokio::test]
async fn what_reaches_a_caller_names_nothing_internal_and_reads_nothing_unbounded() -> anyhow::Result<()> {
    let env = Env::new("hostile_internal").await?;
    env.register("noop").await?;
    let (_dispatcher, api) = env.spawn_dispatcher_api(&[("OPFLOW_API_AUTH", "required")]).await?;
    let token = |output: std::process::Output| String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let submitter = token(env.opflow_ok(&["tokens", "create", "pipeline", "--scope", "submit"]).await?);
    let plan = "name: p\nassets:\n  - name: a\n    op: noop@1.1.0\n";
    let notify = |url: &str| serde_json::json!({ "plan": plan, "notify": { "url": url } });

    // A name is not looked up for a submitter: the answer is the same whatever it resolves
    // to (here, loopback), and names no address; delivery refuses it later (see webhooks.rs).
    let (status, body) = opflow_integration::http(
        &api,
        "POST",
        "/v1/runs",
        Some(&submitter),
        Some(&notify("http://localhost:9/hook")),
    )
    .await?;
    assert_eq!(status, 201, "{body}");
    assert!(!body.to_string().contains("127.0.0.1"), "{body}");
    for (url, range) in [
        ("http://[2002:7f00:1::1]/hook", "6to4"),
        ("http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/hook", "Teredo"),
        ("http://[64:ff9b:1::a00:1]/hook", "local-use NAT64"),
        ("http://[::ffff:0:7f00:1]/hook", "IPv4-translated"),
        ("http://[::ffff:0:0]/hook", "IPv4-mapped"),
        ("http://192.0.2.1/hook", "documentation"),
    ] {
        let (status, body) =
            opflow_integration::http(&api, "POST", "/v1/runs", Some(&submitter), Some(&notify(url))).await?;
        assert_eq!(status, 400, "{url}: {body}");
        assert!(body["error"].as_str().is_some_and(|m| m.contains(range)), "{url}: {body}");
    }

    // An endless plan file: refused after its limit, with exit 2, in bounded memory.
    let measured = env.opflow_measured(&["plan", "check", "/dev/zero"]).await?;
    let message = stderr(&measured.output);
    assert_eq!(measured.output.status.code(), Some(2), "{message}");
    assert!(message.contains("over the limit of 4194304 bytes"), "{message}");
    assert!(measured.peak_rss_kib < 200 * 1024, "peak RSS {} KiB", measured.peak_rss_kib);

    // The broker goes away for this dispatcher alone: /readyz says so, and no more.
    env.remove_vhost().await?;
    let body = wait_for("/readyz to report the broker down", DEADLINE, || async {
        let (status, body) = opflow_integration::http(&api, "GET", "/readyz", None, None).await?;
        Ok((status == 503).then_some(body))
    })
    .await?;
    assert_eq!(body["broker"], "unavailable; the dispatcher's log says why", "{body}");
    let text = body.to_string();
    for secret in ["guest", &env.name, "vhost", "127.0.0.1", "5672"] {
        assert!(!text.contains(secret), "`{secret}` in the unauthenticated /readyz: {text}");
    }
    Ok(())
}

/// The value of an unlabelled metric in a `/metrics` text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The plan cache weighs what plans hold: runs whose sweep values are long (1.6 MB of
/// values each, 48 bytes each to the old count) fill a 4 MiB cache with two plans at most,
/// and the dispatcher's memory stays near the budget however many such runs are in flight.
#[tokio::test]
async fn the_plan_cache_weighs_the_bytes_of_long_sweep_values() -> anyhow::Result<()> {
    let mut env = Env::new("hostile_plan_cache").await?;
    env.register("noop").await?;
    let (dispatcher, api) = env.spawn_dispatcher_api(&[("OPFLOW_PLAN_CACHE_MB", "4")]).await?;
    // No worker: each run's root step waits on its queue, its 1,600 swept steps in the
    // store, and its plan (loaded to publish the root) in the cache. Without reuse: the
    // eight roots are identical, and would otherwise wait for the first one to run.
    let value = "v".repeat(1_000);
    let values: Vec<String> = (0..1600).map(|i| format!("\"{i}{value}\"")).collect();
    let plan = format!(
        "name: heavy\nassets:\n  - name: root\n    op: noop@1.1.0\n  - name: wide\n    op: noop@1.1.0\n    \
         deps: [root]\n    sweep: {{k: [{}]}}\n",
        values.join(", ")
    );
    let runs = 8;
    for _ in 0..runs {
        let (status, body) = opflow_integration::http(
            &api,
            "POST",
            "/v1/runs",
            None,
            Some(&serde_json::json!({ "plan": plan, "no_reuse": true })),
        )
        .await?;
        assert_eq!(status, 201, "{body}");
    }
    let db = env.db().await?;
    wait_for("every root step published", DEADLINE, || async {
        let published: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM steps WHERE status = 'queued' AND NOT EXISTS (SELECT 1 FROM outbox)",
        )
        .fetch_one(&db)
        .await?;
        Ok((published == runs).then_some(()))
    })
    .await?;
    let (status, text) = opflow_integration::http_text(&api, "GET", "/metrics", None, None).await?;
    assert_eq!(status, 200, "{text}");
    let bytes = metric(&text, "opflow_plan_cache_bytes").context("opflow_plan_cache_bytes")?;
    let plans = metric(&text, "opflow_plan_cache_plans").context("opflow_plan_cache_plans")?;
    assert!(bytes <= 4.0 * 1024.0 * 1024.0, "the cache holds {bytes} bytes, over its 4 MiB");
    assert!(bytes >= 1.6e6, "a plan of 1.6 MB of values weighs at least that: {bytes}");
    assert!(plans <= 2.0, "{plans} plans of 1.6 MB each in a 4 MiB cache");
    let rss = peak_rss_kib(dispatcher.pid().context("the dispatcher's pid")?)?;
    println!("dispatcher peak RSS with {runs} runs of 1.6 MB plans in flight: {rss} KiB");
    Ok(())
}

/// One client cannot hold the API's connections: a token gets `api_streams_per_token`
/// event streams (429 past it, another token unaffected, a slot back when one closes); a
/// statement stuck behind a lock gives its connection back after `api_statement_timeout`
/// (503 naming the setting); `/metrics` needs a token on a guarded API and is served
/// without one only on `metrics_addr`.
#[tokio::test]
async fn one_client_cannot_hold_the_apis_connections() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut env = Env::new("hostile_api_pool").await?;
    env.register("noop").await?;
    let metrics_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?.port()
    };
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let (_dispatcher, api) = env
        .spawn_dispatcher_api(&[
            ("OPFLOW_API_AUTH", "required"),
            ("OPFLOW_API_STREAMS_PER_TOKEN", "2"),
            ("OPFLOW_API_STATEMENT_TIMEOUT", "1s"),
            ("OPFLOW_METRICS_ADDR", &metrics_addr),
        ])
        .await?;
    let token = |output: std::process::Output| String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let greedy = token(env.opflow_ok(&["tokens", "create", "greedy", "--scope", "submit"]).await?);
    let other = token(env.opflow_ok(&["tokens", "create", "other", "--scope", "read"]).await?);
    // A run that stays running (no worker), for streams that stay open.
    let plan = serde_json::json!({ "plan": "name: p\nassets:\n  - name: a\n    op: noop@1.1.0\n" });
    let (status, body) =
        opflow_integration::http(&api, "POST", "/v1/runs", Some(&greedy), Some(&plan)).await?;
    assert_eq!(status, 201, "{body}");
    let run = body["run_id"].as_str().context("run_id")?.to_owned();
    let open = |token: String| {
        let (api, run) = (api.clone(), run.clone());
        async move {
            let mut stream = tokio::net::TcpStream::connect(&api).await?;
            let request = format!(
                "GET /v1/runs/{run}/events HTTP/1.1\r\nHost: {api}\r\nAuthorization: Bearer {token}\r\n\r\n"
            );
            stream.write_all(request.as_bytes()).await?;
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                anyhow::ensure!(stream.read(&mut byte).await? == 1, "the stream closed before its head");
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let status: u16 = head.split_whitespace().nth(1).context("a status")?.parse()?;
            anyhow::Ok((status, stream))
        }
    };
    let (first, first_stream) = open(greedy.clone()).await?;
    let (second, _second_stream) = open(greedy.clone()).await?;
    assert_eq!((first, second), (200, 200));
    let (third, _) = open(greedy.clone()).await?;
    assert_eq!(third, 429, "a third stream of a token limited to 2");
    let (others, _others_stream) = open(other.clone()).await?;
    assert_eq!(others, 200, "another token's streams are its own");
    drop(first_stream);
    let reopened = wait_for("a slot back once a stream closes", DEADLINE, || {
        let open = open(greedy.clone());
        async move {
            let (status, stream) = open.await?;
            Ok((status == 200).then_some(stream))
        }
    })
    .await?;
    drop(reopened);

    // A statement stuck behind a lock: 503 after the timeout, and the API serves again.
    let db = env.db().await?;
    let mut lock = db.begin().await?;
    sqlx::query("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE").execute(&mut *lock).await?;
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(60),
        opflow_integration::http(&api, "GET", "/v1/runs", Some(&other), None),
    )
    .await
    .context("a read behind a lock hung past the statement timeout")??;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().is_some_and(|m| m.contains("api_statement_timeout")), "{body}");
    lock.rollback().await?;
    let (status, body) = opflow_integration::http(&api, "GET", "/v1/runs", Some(&other), None).await?;
    assert_eq!(status, 200, "{body}");

    // /metrics: a token on the API, none on metrics_addr.
    let (status, _) = opflow_integration::http_text(&api, "GET", "/metrics", None, None).await?;
    assert_eq!(status, 401, "/metrics without a token on a guarded API");
    let (status, text) = opflow_integration::http_text(&api, "GET", "/metrics", Some(&other), None).await?;
    assert_eq!(status, 200, "{text}");
    let (status, text) = opflow_integration::http_text(&metrics_addr, "GET", "/metrics", None, None).await?;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("opflow_plan_cache_bytes"), "{text}");
    let (status, _) = opflow_integration::http_text(&metrics_addr, "GET", "/v1/runs", None, None).await?;
    assert_eq!(status, 404, "metrics_addr serves /metrics alone");
    Ok(())
}

/// Webhook delivery is fair per receiver: 300 deliveries due to a blackholed address
/// (it accepts connections and never answers, so each attempt waits out its timeout), due
/// before anyone else's, hold a few of the delivery slots; another subscription's delivery
/// goes out beside them, as soon as its run ends.
#[tokio::test]
async fn a_blackholed_receiver_does_not_delay_other_webhooks() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut env = Env::new("hostile_webhook_fair").await?;
    env.register("noop").await?;
    let (_dispatcher, api) = env.spawn_dispatcher_api(&[("OPFLOW_WEBHOOKS_ALLOW_PRIVATE", "true")]).await?;
    let _worker = env.spawn_worker("noop")?;
    // The blackhole: holds every connection open, answers nothing.
    let blackhole = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let blackhole_addr = blackhole.local_addr()?;
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = blackhole.accept().await {
            held.push(socket);
        }
    });
    // The live receiver: answers 204 and says when.
    let live = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let live_addr = live.local_addr()?;
    let (hit, mut hits) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = live.accept().await {
            let hit = hit.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                loop {
                    let Ok(n) = socket.read(&mut buffer).await else { return };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buffer[..n]);
                    let text = String::from_utf8_lossy(&request);
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().to_owned())
                            })
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        if body.len() >= length {
                            break;
                        }
                    }
                }
                let _ = hit.send(Instant::now());
                let _ = socket.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n").await;
            });
        }
    });
    let db = env.db().await?;
    // 300 runs' notify deliveries to the blackhole, due now and older than anything else.
    let backlog =
        submit(&env, "backlog", "name: backlog\nassets:\n  - name: a\n    op: noop@1.1.0\n").await?;
    // Ended before the live subscription exists, so its one delivery is the watched run's.
    assert_eq!(wait_ended(&mut env, &backlog).await?, "succeeded");
    sqlx::query(
        "INSERT INTO webhook_deliveries (id, run_id, source, event, url, secret, body, next_attempt_at)
         SELECT gen_random_uuid(), $1::uuid, 'notify', 'run.succeeded', $2, 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', '{}',
                now() - make_interval(mins => 10) + make_interval(secs => i)
         FROM generate_series(1, 300) AS i",
    )
    .bind(&backlog)
    .bind(format!("http://{blackhole_addr}/hook"))
    .execute(&db)
    .await?;
    let subscribe =
        serde_json::json!({ "url": format!("http://{live_addr}/hook"), "events": ["run.succeeded"] });
    let (status, body) =
        opflow_integration::http(&api, "POST", "/v1/webhooks", None, Some(&subscribe)).await?;
    assert_eq!(status, 201, "{body}");
    // Let the blackhole's attempts take their slots first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let run = submit(&env, "watched", "name: watched\nassets:\n  - name: a\n    op: noop@1.1.0\n").await?;
    assert_eq!(wait_ended(&mut env, &run).await?, "succeeded");
    let ended = Instant::now();
    let delivered =
        tokio::time::timeout(DEADLINE, hits.recv()).await.context("no delivery to the live receiver")?;
    let waited = delivered.context("the receiver stopped")?.saturating_duration_since(ended);
    println!("the live receiver's delivery came {waited:?} after its run ended, beside 300 blackholed ones");
    assert!(
        waited < Duration::from_secs(10),
        "the live delivery waited {waited:?} behind the blackholed ones (an attempt's timeout is 10 s)"
    );
    let in_flight: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_deliveries WHERE url LIKE $1 AND attempts = 0 AND next_attempt_at > now()",
    )
    .bind(format!("http://{blackhole_addr}/%"))
    .fetch_one(&db)
    .await?;
    assert!(in_flight <= 4, "{in_flight} attempts to one target at once");
    Ok(())
}

/// Sizes are bounded where they enter and where they are derived: partition keys, sweep
/// names and values and the number of sweep parameters have limits (exit 2 naming the
/// asset and the limit); a failed step's label, copied into the reason of every step
/// skipped below it, is cut to 512 bytes however long its sweep values are; a plan with a
/// thousand problems gets the first hundred and a count; the API's `file` is bounded.
#[tokio::test]
async fn sizes_derived_from_a_plan_are_bounded_where_they_are_built() -> anyhow::Result<()> {
    let mut env = Env::new("hostile_derived_sizes").await?;
    env.register("noop").await?;
    let (dispatcher, api) = env.spawn_dispatcher_api(&[]).await?;
    let _worker = env.spawn_worker("noop")?;
    let long = |bytes: usize| "x".repeat(bytes);
    for (name, asset, limit) in [
        ("key", format!("partitions: [\"{}\"]", long(257)), "a key is 257 bytes, over the limit of 256"),
        (
            "value",
            format!("sweep: {{k: [\"{}\"]}}", long(1025)),
            "a value is 1025 bytes, over the limit of 1024",
        ),
        (
            "name",
            format!("sweep: {{{}: [1]}}", long(65)),
            "a parameter name is 65 bytes, over the limit of 64",
        ),
        (
            "params",
            format!("sweep: {{{}}}", (0..17).map(|i| format!("p{i}: [1]")).collect::<Vec<_>>().join(", ")),
            "17 parameters, over the limit of 16",
        ),
    ] {
        let plan = env.plan_file(
            name,
            &format!("name: p\nassets:\n  - name: big\n    op: noop@1.1.0\n    {asset}\n"),
        )?;
        let output = env.opflow(&["run", plan.to_str().context("utf-8")?]).await?;
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{name}: {message}");
        assert!(message.contains("asset `big`") && message.contains(limit), "{name}: {message}");
    }

    // Sweep values at their limits: 16 parameters of 1,000 bytes in the failed step's label.
    let params: Vec<String> = (0..16).map(|i| format!("p{i}: [\"{}\"]", long(1000))).collect();
    let plan = format!(
        "name: skips\nassets:\n  - name: root\n    op: noop@1.1.0\n    config: {{fail: fatal}}\n    sweep: {{{}}}\n  \
         - name: below\n    op: noop@1.1.0\n    deps: [root]\n    sweep: {{k: {{from: 1, to: 500}}}}\n",
        params.join(", ")
    );
    let run = submit(&env, "skips", &plan).await?;
    assert_eq!(wait_ended(&mut env, &run).await?, "failed");
    let db = env.db().await?;
    let (skipped, longest): (i64, Option<i32>) = sqlx::query_as(
        "SELECT count(*), max(octet_length(error)) FROM steps WHERE run_id = $1::uuid AND status = 'skipped'",
    )
    .bind(&run)
    .fetch_one(&db)
    .await?;
    assert_eq!(skipped, 500);
    let longest = longest.context("skipped steps have a reason")?;
    assert!(longest <= 600, "a skipped step's reason is {longest} bytes");

    // A thousand problems: the first hundred and a count, in a bounded answer.
    let assets: String = (0..1000).map(|i| format!("  - name: a{i}\n    op: nope@1.0.0\n")).collect();
    let body = serde_json::json!({ "plan": format!("name: many\nassets:\n{assets}"), "file": "many.yaml" });
    let (status, answer) = opflow_integration::http(&api, "POST", "/v1/runs", None, Some(&body)).await?;
    assert_eq!(status, 422, "{answer}");
    let problems = answer["problems"].as_array().context("problems")?;
    assert_eq!(problems.len(), 101, "100 problems and a count");
    assert!(problems[100].as_str().is_some_and(|m| m.contains("and 900 more problems")), "{}", problems[100]);
    let body = serde_json::json!({ "plan": "name: p\nassets:\n  - name: a\n    op: noop@1.1.0\n", "file": long(300) });
    let (status, answer) = opflow_integration::http(&api, "POST", "/v1/runs", None, Some(&body)).await?;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"].as_str().is_some_and(|m| m.contains("over the limit of 256")), "{answer}");
    // A page of outputs is bounded in bytes too: 200 outputs of 60 kB come in pages of at
    // most 8 MiB (and one over), each with a cursor to the rest.
    let run = submit(
        &env,
        "outputs",
        "name: outputs\nassets:\n  - name: o\n    op: noop@1.1.0\n    config: {output_bytes: 60000}\n    \
         sweep: {k: {from: 1, to: 200}}\n",
    )
    .await?;
    assert_eq!(wait_ended(&mut env, &run).await?, "succeeded");
    let (mut seen, mut cursor, mut pages) = (0, None::<String>, 0);
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/v1/runs/{run}/outputs?limit=1000&cursor={cursor}"),
            None => format!("/v1/runs/{run}/outputs?limit=1000"),
        };
        let (status, text) = opflow_integration::http_text(&api, "GET", &path, None, None).await?;
        assert_eq!(status, 200, "{text}");
        assert!(text.len() < 9 * 1024 * 1024, "a page of {} bytes", text.len());
        let page: Value = serde_json::from_str(&text)?;
        seen += page["items"].as_array().context("items")?.len();
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, 200, "every output, over {pages} pages");
    assert!(pages >= 2, "12 MB of outputs in one page");
    let rss = peak_rss_kib(dispatcher.pid().context("the dispatcher's pid")?)?;
    println!("dispatcher peak RSS after the size cases: {rss} KiB");
    Ok(())
}

/// A step that logs 100 MB sends at most its budget's worth (1 MiB of lines) and one line
/// saying how many were dropped; a healthy run beside it is not held up.
#[tokio::test]
async fn a_step_that_logs_100_mb_sends_its_budget_and_one_line_saying_so() -> anyhow::Result<()> {
    let mut bed = Bed::new("hostile_log_flood", 1).await?;
    let run = submit(
        &bed.env,
        "flood",
        "name: flood\nassets:\n  - name: a\n    op: noop@1.1.0\n    config: {log_lines: 200000, log_line_bytes: 512}\n",
    )
    .await?;
    let healthy = bed.healthy()?;
    assert_eq!(wait_ended(&mut bed.env, &run).await?, "succeeded");
    healthy.succeeded().await?;
    let db = bed.env.db().await?;
    let (lines, bytes): (i64, Option<i64>) = sqlx::query_as(
        "SELECT count(*), sum(octet_length(body->'kind'->'log'->>'message'))::bigint FROM events
         WHERE run_id = $1::uuid AND kind = 'log'",
    )
    .bind(&run)
    .fetch_one(&db)
    .await?;
    // At most the budget's 2,048 lines of 512 bytes (fewer if the worker's queue of events
    // was full as the handler logged), and the one line saying what was dropped.
    assert!((2..=2049).contains(&lines), "{lines} log lines stored of 200,000 sent");
    println!("a step that logged 200,000 lines of 512 bytes: {lines} stored, {bytes:?} bytes");
    let said: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE run_id = $1::uuid AND kind = 'log' AND body::text LIKE '%were dropped, past the step''s log budget%'",
    )
    .bind(&run)
    .fetch_one(&db)
    .await?;
    assert_eq!(said, 1, "one line says the rest were dropped");
    bed.dispatcher.check_alive()?;
    Ok(())
}

/// Recovery does not wait for log lines: while 30,000 forged log lines wait to be applied
/// (the dispatcher applies one event per transaction here, so they wait a long while), a
/// hung step is still found silent within `lost_step_after`, retried on another worker,
/// and its run ends. Log lines and progress have a queue of their own; the events that
/// move steps, which recovery waits for, are never behind them.
#[tokio::test]
async fn a_flood_of_log_lines_does_not_hold_up_recovery() -> anyhow::Result<()> {
    use lapin::{
        BasicProperties, Connection, ConnectionProperties,
        options::{BasicPublishOptions, QueueDeclareOptions},
        types::FieldTable,
    };
    use opflow_protocol::{Event, EventKind, LogLevel, RunId, StepId};

    let mut env = Env::new("hostile_log_backlog").await?;
    env.register("noop").await?;
    let _dispatcher = env
        .spawn_dispatcher_with(&[("OPFLOW_LOST_STEP_AFTER_SECS", "3"), ("OPFLOW_EVENT_BATCH", "1")])
        .await?;
    let hung = env.spawn_worker("noop")?;
    let run_id = submit(
        &env,
        "hung",
        "name: hung\nassets:\n  - name: a\n    op: noop@1.1.0\n    config: {sleep_ms: 2000}\n",
    )
    .await?;
    let db = env.db().await?;
    let worker: String = wait_for("the step to start", DEADLINE, || async {
        Ok(sqlx::query_scalar::<_, String>(
            "SELECT worker FROM steps WHERE run_id = $1::uuid AND status = 'running'",
        )
        .bind(&run_id)
        .fetch_optional(&db)
        .await?)
    })
    .await?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(hung.id().context("the worker's pid")? as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )?;
    // The flood, as any holder of the broker's credentials could send it.
    let run: RunId = run_id.parse().map_err(anyhow::Error::msg)?;
    let connection = Connection::connect(&env.amqp_url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let routing_key = opflow_protocol::queue::event_routing_key("log");
    for i in 0..30_000 {
        let line = Event::new(
            run,
            StepId(0),
            1,
            worker.clone(),
            EventKind::Log { level: LogLevel::Info, message: format!("flood {i}") },
        );
        // No confirms on this channel: the confirm future answers at once.
        let confirm = channel
            .basic_publish(
                opflow_protocol::queue::EVENTS_EXCHANGE.into(),
                routing_key.as_str().into(),
                BasicPublishOptions::default(),
                &line.encode(),
                BasicProperties::default(),
            )
            .await?;
        drop(confirm);
    }
    let _rescuer = env.spawn_worker("noop")?;
    let status =
        tokio::time::timeout(DEADLINE, wait_ended(&mut env, &run_id)).await.context("the run hung")??;
    let waiting = channel
        .queue_declare(
            opflow_protocol::queue::DISPATCHER_TELEMETRY_QUEUE.into(),
            QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() },
            FieldTable::default(),
        )
        .await?
        .message_count();
    connection.close(200, "done".into()).await.ok();
    println!("the hung step's run ended {status} with {waiting} forged log lines still waiting");
    assert_eq!(status, "succeeded");
    assert!(waiting > 1_000, "the run ended only once the flood was applied ({waiting} left)");
    let attempt: i32 = sqlx::query_scalar("SELECT attempt FROM steps WHERE run_id = $1::uuid")
        .bind(&run_id)
        .fetch_one(&db)
        .await?;
    assert!(attempt >= 2, "the silent step was retried: attempt {attempt}");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(hung.id().unwrap_or_default() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    Ok(())
}
