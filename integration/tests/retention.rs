//! Retention: `opflow gc` deletes finished runs with every row they own, and never a run
//! that is still going.

use std::time::Duration;

use anyhow::Context;
use opflow_integration::{Env, parse_summary, stderr, wait_for};

const DEADLINE: Duration = Duration::from_secs(300);

#[tokio::test]
async fn gc_deletes_a_finished_10000_step_run_whole_and_leaves_a_running_one() -> anyhow::Result<()> {
    let mut env = Env::new("retention").await?;
    env.register("noop").await?;
    env.register("noop@1.0.0").await?;
    let _dispatcher = env.spawn_dispatcher().await?;
    let _workers = [env.spawn_worker("noop")?, env.spawn_worker("noop")?];
    let finished = env.plan_file(
        "finished",
        "name: finished\nassets:\n  - name: a\n    op: noop@1.1.0\n    sweep: {k: {from: 1, to: 10000}}\n",
    )?;
    let output = env.opflow(&["run", finished.to_str().context("utf-8")?, "--wait", "--json"]).await?;
    assert!(output.status.success(), "{}", stderr(&output));
    let done = parse_summary(&output)?["run_id"].as_str().context("run_id")?.to_owned();
    // No worker serves noop@1.0.0: this run stays queued.
    let going = env.plan_file(
        "going",
        "name: going\nassets:\n  - name: a\n    op: noop@1.0.0\n    sweep: {k: [1, 2]}\n",
    )?;
    let going = parse_summary(&env.opflow_ok(&["run", going.to_str().context("utf-8")?, "--json"]).await?)?;
    let going = going["run_id"].as_str().context("run_id")?.to_owned();

    let db = env.db().await?;
    let rows = |run: String| {
        let db = db.clone();
        async move {
            let mut counts = Vec::new();
            for table in ["runs", "run_assets", "steps", "events", "outbox", "dep_groups", "cancel_outbox"] {
                let column = if table == "runs" { "id" } else { "run_id" };
                let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT count(*) FROM {table} WHERE {column} = $1::uuid"
                )))
                .bind(&run)
                .fetch_one(&db)
                .await?;
                counts.push((table, n));
            }
            anyhow::Ok(counts)
        }
    };
    let before = rows(done.clone()).await?;
    assert!(before.iter().any(|&(t, n)| t == "events" && n >= 10_000), "{before:?}");
    let going_before = rows(going.clone()).await?;
    wait_for("the going run's steps to be published", DEADLINE, || async {
        Ok((env.queue_depth("opflow.op.noop.1.0.0").await? == 2).then_some(()))
    })
    .await?;

    let dry = env.opflow_ok(&["gc", "--older-than", "0s", "--dry-run"]).await?;
    assert!(
        String::from_utf8_lossy(&dry.stdout).contains("would delete 1 run(s)"),
        "{}",
        String::from_utf8_lossy(&dry.stdout)
    );
    assert_eq!(rows(done.clone()).await?, before, "a dry run deletes nothing");

    let output = env.opflow_ok(&["gc", "--older-than", "0s", "--json"]).await?;
    let deleted = parse_summary(&output)?;
    assert_eq!(deleted["runs"], 1, "{deleted}");
    assert_eq!(deleted["steps"], 10_000, "{deleted}");
    for (table, n) in rows(done).await? {
        assert_eq!(n, 0, "{table} rows of the deleted run are left");
    }
    assert_eq!(rows(going.clone()).await?, going_before, "the run still going was touched");
    let status = parse_summary(&env.opflow_ok(&["status", &going, "--json"]).await?)?;
    assert_eq!(status["status"], "queued");
    Ok(())
}
