//! Scale from zero: `opflow up` starts an op's workers when its queue fills, up to its
//! maximum, and stops them after the cooldown, by KEDA's rule; workers recycle themselves
//! after `max_steps`. Nothing is lost or run twice on the way.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use opflow_integration::{Env, binary, parse_summary, sigterm, stderr, wait_for, workers_of};
use tokio::process::Child;

const DEADLINE: Duration = Duration::from_secs(180);

/// `opflow up` for noop, autoscaling, once its API answers.
async fn spawn_up(env: &Env) -> anyhow::Result<Child> {
    let noop = binary("noop")?;
    let up = env
        .command(&binary("opflow")?)
        .args(["up", noop.to_str().context("utf-8")?])
        .stdout(std::process::Stdio::null())
        .spawn()?;
    env.wait_for_api().await?;
    Ok(up)
}

/// The one op's entry in `opflow ops list --json`.
async fn listed(env: &Env) -> anyhow::Result<serde_json::Value> {
    let output = env.opflow_ok(&["ops", "list", "--json"]).await?;
    let ops: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    Ok(ops[0].clone())
}

fn noop_workers(up: u32) -> Vec<u32> {
    workers_of(up).into_iter().filter(|(_, name)| name == "noop").map(|(pid, _)| pid).collect()
}

/// Samples the number of noop workers of `up` until stopped; returns the highest seen.
fn watch_replicas(up: u32) -> (Arc<AtomicUsize>, Arc<AtomicBool>) {
    let (highest, stop) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
    let (h, s) = (highest.clone(), stop.clone());
    tokio::spawn(async move {
        while !s.load(Ordering::Relaxed) {
            h.fetch_max(noop_workers(up).len(), Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    (highest, stop)
}

#[tokio::test]
async fn a_burst_scales_an_op_from_zero_to_its_maximum_and_back_to_zero() -> anyhow::Result<()> {
    let mut env = Env::new("autoscale").await?;
    env.register("noop").await?;
    env.opflow_ok(&["ops", "scale", "noop@1.1.0", "--max", "4", "--polling", "1s", "--cooldown", "2s"])
        .await?;
    let mut up = spawn_up(&env).await?;
    let up_pid = up.id().context("opflow up runs")?;
    // Nothing to do: no worker.
    wait_for("the autoscaler to look at noop", DEADLINE, || async {
        let op = listed(&env).await?;
        Ok((op["desired"] == 0 && op["replicas"] == 0).then_some(()))
    })
    .await?;
    assert!(noop_workers(up_pid).is_empty(), "an op with an empty queue runs no worker");

    let (highest, stop) = watch_replicas(up_pid);
    let plan = env.plan_file(
        "burst",
        "name: burst\nassets:\n  - name: a\n    op: noop@1.1.0\n    sweep: {k: {from: 1, to: 200}}\n    \
         config: {sleep_ms: 200}\n",
    )?;
    let output = env.opflow(&["run", plan.to_str().context("utf-8")?, "--wait", "--json"]).await?;
    assert!(output.status.success(), "{}", stderr(&output));
    let run_id = parse_summary(&output)?["run_id"].as_str().context("run_id")?.to_owned();
    let op = listed(&env).await?;
    assert_eq!((op["min"].as_i64(), op["max"].as_i64()), (Some(0), Some(4)), "{op}");

    // Back to zero after the cooldown, every worker drained (none killed).
    wait_for("noop to scale back to zero", DEADLINE, || async {
        Ok(noop_workers(up_pid).is_empty().then_some(()))
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    let highest = highest.load(Ordering::Relaxed);
    assert_eq!(highest, 4, "the burst scaled noop to its maximum of 4, and no further");
    let op = listed(&env).await?;
    assert_eq!((op["replicas"].as_i64(), op["desired"].as_i64()), (Some(0), Some(0)), "{op}");

    // Nothing lost, nothing run twice: one start and one success per step.
    let db = env.db().await?;
    let (steps, successes, runs_per_step): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM steps WHERE run_id = $1::uuid AND status = 'succeeded'),
                (SELECT count(*) FROM events WHERE run_id = $1::uuid AND kind = 'succeeded'),
                (SELECT coalesce(max(n), 0) FROM (SELECT count(DISTINCT worker) AS n FROM events
                     WHERE run_id = $1::uuid GROUP BY step_id) per_step)",
    )
    .bind(&run_id)
    .fetch_one(&db)
    .await?;
    assert_eq!((steps, successes, runs_per_step), (200, 200, 1));
    sigterm(&up)?;
    let status = tokio::time::timeout(DEADLINE, up.wait()).await.context("opflow up did not stop")??;
    assert!(status.success(), "{status}");
    Ok(())
}

#[tokio::test]
async fn workers_recycle_after_max_steps_and_the_run_still_succeeds() -> anyhow::Result<()> {
    let mut env = Env::new("recycle").await?;
    env.register("noop").await?;
    env.opflow_ok(&["ops", "scale", "noop@1.1.0", "--max", "2", "--max-steps", "10", "--polling", "1s"])
        .await?;
    let mut up = spawn_up(&env).await?;
    let plan = env.plan_file(
        "hundred",
        "name: hundred\nassets:\n  - name: a\n    op: noop@1.1.0\n    sweep: {k: {from: 1, to: 100}}\n",
    )?;
    let output = env.opflow(&["run", plan.to_str().context("utf-8")?, "--wait", "--json"]).await?;
    assert!(output.status.success(), "{}", stderr(&output));
    let run_id = parse_summary(&output)?["run_id"].as_str().context("run_id")?.to_owned();
    let db = env.db().await?;
    let workers: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT worker FROM events WHERE run_id = $1::uuid AND kind = 'succeeded' AND applied",
    )
    .bind(&run_id)
    .fetch_all(&db)
    .await?;
    let pids: HashSet<&str> = workers.iter().filter_map(|w| w.rsplit('/').next()).collect();
    assert!(pids.len() >= 10, "100 steps at 10 per worker take at least 10 processes; saw {}", pids.len());
    sigterm(&up)?;
    tokio::time::timeout(DEADLINE, up.wait()).await.context("opflow up did not stop")??;
    Ok(())
}
