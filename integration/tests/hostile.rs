//! Hostile input: whatever one op, plan or client sends can fail only itself. Each case
//! runs beside a healthy run on the same dispatcher, which must still succeed within
//! 30 s, and checks that the bad input ends as documented in docs/reliability.md: refused
//! with exit 2, or its step or run failed with a reason that says why.

use std::time::{Duration, Instant};

use anyhow::Context;
use opflow_integration::{Env, parse_summary, stderr, wait_for};
use serde_json::Value;

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

/// Starts a dispatcher and one worker of each of `ops`.
fn start(env: &Env, ops: &[&str]) -> anyhow::Result<Vec<Box<dyn std::any::Any>>> {
    let mut keep: Vec<Box<dyn std::any::Any>> = vec![Box::new(env.spawn_dispatcher()?)];
    for op in ops {
        keep.push(Box::new(env.spawn_worker(op)?));
    }
    Ok(keep)
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
    let mut env = Env::new("hostile_nul").await?;
    env.register("noop").await?;
    let _services = start(&env, &["noop", "noop"])?;
    let healthy = Healthy::start(&env, "noop@1.1.0")?;
    let run_id = submit(
        &env,
        "nul",
        "name: nul\nassets:\n  - name: texts\n    op: noop@1.1.0\n    config: {nul_texts: true}\n  \
         - name: fails\n    op: noop@1.1.0\n    config: {nul_texts: true, fail: fatal}\n",
    )
    .await?;
    assert_eq!(wait_ended(&mut env, &run_id).await?, "failed");
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
