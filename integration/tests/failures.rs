//! How steps fail: timeouts, panics, an op whose queue vanished, inputs over the size cap.
//! Each failure ends the step with a message that says what happened and what to do.

use std::time::Duration;

use anyhow::Context;
use opflow_integration::{Env, delete_queue, parse_summary, stderr, wait_for};

const DEADLINE: Duration = Duration::from_secs(120);

async fn failed_step_errors(env: &mut Env, run_id: &str) -> anyhow::Result<Vec<(String, String)>> {
    let db = env.db().await?;
    Ok(sqlx::query_as(
        "SELECT a.name, s.error FROM steps s JOIN run_assets a ON a.run_id = s.run_id AND a.idx = s.asset
         WHERE s.run_id = $1::uuid AND s.status = 'failed' ORDER BY a.name",
    )
    .bind(run_id)
    .fetch_all(&db)
    .await?)
}

#[tokio::test]
async fn timeouts_and_panics_fail_the_step_with_a_reason() -> anyhow::Result<()> {
    let mut env = Env::new("timeouts").await?;
    env.register("noop").await?;
    let _dispatcher = env.spawn_dispatcher().await?;
    let _worker = env.spawn_worker("noop")?;
    let plan = env.plan_file(
        "slow",
        "name: slow\nassets:\n  - name: slow\n    op: noop@^1\n    config: {sleep_ms: 30000}\n    timeout: 300ms\n    \
         retry: {max: 1, backoff: 10ms}\n  - name: buggy\n    op: noop@^1\n    config: {fail: panic}\n",
    )?;
    let output = env.opflow(&["run", plan.to_str().context("utf-8")?, "--wait", "--json"]).await?;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let run_id = parse_summary(&output)?["run_id"].as_str().context("run_id")?.to_owned();
    let failed = failed_step_errors(&mut env, &run_id).await?;
    assert_eq!(failed.len(), 2, "{failed:?}");
    let (buggy, slow) = (&failed[0].1, &failed[1].1);
    assert!(buggy.contains("panicked") && buggy.contains("fail: panic"), "{buggy}");
    assert!(buggy.contains("not retryable"), "a panic is a bug; retrying cannot help: {buggy}");
    assert!(slow.contains("timed out after 300ms") && slow.contains("failed after 2 attempts"), "{slow}");
    Ok(())
}

#[tokio::test]
async fn a_step_whose_queue_vanished_fails_naming_the_op() -> anyhow::Result<()> {
    let mut env = Env::new("unroutable").await?;
    env.register("noop").await?;
    let _dispatcher = env.spawn_dispatcher().await?;
    let db = env.db().await?;
    // The dispatcher declared every registered queue when it started; remove noop's now.
    wait_for("the dispatcher to be ready", DEADLINE, || async {
        let ready: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND query LIKE '%LISTEN%opflow_outbox%'",
        )
        .fetch_optional(&db)
        .await?;
        Ok(ready)
    })
    .await?;
    delete_queue(&env, "opflow.op.noop.1.1.0").await?;
    let plan = env.plan_file("lost", "name: lost\nassets:\n  - name: a\n    op: noop@1.1.0\n")?;
    let output = env.opflow(&["run", plan.to_str().context("utf-8")?, "--wait", "--json"]).await?;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let run_id = parse_summary(&output)?["run_id"].as_str().context("run_id")?.to_owned();
    let failed = failed_step_errors(&mut env, &run_id).await?;
    let error = &failed.first().context("the step failed")?.1;
    assert!(
        error.contains("op noop@1.1.0 has no queue `opflow.op.noop.1.1.0`")
            && error.contains("opflow ops add"),
        "{error}"
    );
    Ok(())
}

#[tokio::test]
async fn inputs_over_the_cap_fail_the_step_with_advice() -> anyhow::Result<()> {
    let mut env = Env::new("inputs_cap").await?;
    env.register("price-paths").await?;
    env.register("var-report").await?;
    // Each price-paths output is about 20 KiB; three of them exceed 40 KB.
    let _dispatcher = env.spawn_dispatcher_with(&[("OPFLOW_MAX_INPUTS_BYTES", "40000")]).await?;
    let _paths = env.spawn_worker("price-paths")?;
    let _var = env.spawn_worker("var-report")?;
    let plan = env.plan_file(
        "fan-in",
        "name: fan-in\nassets:\n  - name: paths\n    op: price-paths@^1\n    sweep: {seed: [1, 2, 3]}\n    \
         config: {vol: 0.5, paths: 1000, horizon_days: 1, steps_per_day: 1}\n  \
         - name: var\n    op: var-report@^1\n    deps: [paths]\n",
    )?;
    let output = env.opflow(&["run", plan.to_str().context("utf-8")?, "--wait", "--json"]).await?;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let run_id = parse_summary(&output)?["run_id"].as_str().context("run_id")?.to_owned();
    let failed = failed_step_errors(&mut env, &run_id).await?;
    let (asset, error) = failed.first().context("the fan-in step failed")?;
    assert_eq!(asset, "var");
    assert!(error.contains("over the 39.1 KiB limit") && error.contains("references"), "{error}");
    Ok(())
}
