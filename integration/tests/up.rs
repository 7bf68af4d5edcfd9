//! `opflow up`: the dispatcher plus supervised worker processes on one machine.

use std::time::Duration;

use anyhow::Context;
use opflow_integration::{Env, binary, parse_summary, sigterm, stderr, wait_for, workers_of};

const DEADLINE: Duration = Duration::from_secs(120);

#[tokio::test]
async fn a_worker_that_dies_is_restarted_and_ctrl_c_drains_everything() -> anyhow::Result<()> {
    let env = Env::new("up").await?;
    let noop = binary("noop")?;
    let mut up = env
        .command(&binary("opflow")?)
        .args(["up", "--workers", "1", noop.to_str().context("utf-8")?])
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let up_pid = up.id().context("opflow up is running")?;
    let noop_workers =
        || workers_of(up_pid).into_iter().filter(|(_, name)| name == "noop").map(|(pid, _)| pid);

    let first =
        wait_for("opflow up to start a noop worker", DEADLINE, || async { Ok(noop_workers().next()) })
            .await?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first as i32), nix::sys::signal::Signal::SIGKILL)?;
    let second = wait_for("the dead worker to be replaced", DEADLINE, || async {
        Ok(noop_workers().find(|&pid| pid != first))
    })
    .await?;
    assert_ne!(first, second);

    // The replacement works: a plan runs to the end on it.
    let plan = env.plan_file(
        "after-restart",
        "name: p\nassets:\n  - name: a\n    op: noop@^1\n    sweep: {k: [1, 2, 3]}\n",
    )?;
    env.wait_for_api().await?;
    let output = env.opflow(&["run", plan.to_str().context("utf-8")?, "--wait", "--json"]).await?;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(parse_summary(&output)?["status"], "succeeded");

    // SIGTERM (what Ctrl-C sends the process group, too) drains workers, then the dispatcher.
    let workers: Vec<u32> = workers_of(up_pid).into_iter().map(|(pid, _)| pid).collect();
    assert!(!workers.is_empty());
    sigterm(&up)?;
    let status = tokio::time::timeout(DEADLINE, up.wait()).await.context("opflow up did not stop")??;
    assert!(status.success(), "opflow up should exit 0 after draining, got {status}");
    let survivors: Vec<u32> =
        workers.into_iter().filter(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists()).collect();
    assert!(survivors.is_empty(), "workers outlived opflow up: {survivors:?}");
    Ok(())
}

#[tokio::test]
async fn a_second_signal_stops_everything_at_once() -> anyhow::Result<()> {
    let env = Env::new("up_force").await?;
    let noop = binary("noop")?;
    // A drain would wait for the step in hand, up to a minute.
    let mut up = env
        .command(&binary("opflow")?)
        .args(["up", "--workers", "1", noop.to_str().context("utf-8")?])
        .env("OPFLOW_DRAIN_TIMEOUT_SECS", "120")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(up.stderr.take().context("piped")?));
    let up_pid = up.id().context("opflow up is running")?;
    let worker = wait_for("opflow up to start a worker", DEADLINE, || async {
        Ok(workers_of(up_pid).into_iter().find(|(_, name)| name == "noop").map(|(pid, _)| pid))
    })
    .await?;
    let plan = env.plan_file(
        "long",
        "name: long\nassets:\n  - name: a\n    op: noop@^1\n    config: {sleep_ms: 60000}\n",
    )?;
    env.wait_for_api().await?;
    env.opflow_ok(&["run", plan.to_str().context("utf-8")?]).await?;
    let mut env = env;
    let db = env.db().await?;
    wait_for("the long step to run", DEADLINE, || async {
        let running: i64 =
            sqlx::query_scalar("SELECT count(*) FROM steps WHERE status = 'running'").fetch_one(&db).await?;
        Ok((running == 1).then_some(()))
    })
    .await?;
    sigterm(&up)?;
    // The first signal drains: the worker keeps its one-minute step.
    tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await? {
            if line.contains("stopping: draining workers") {
                return anyhow::Ok(());
            }
        }
        anyhow::bail!("opflow up ended without draining")
    })
    .await
    .context("opflow up should start draining")??;
    sigterm(&up)?;
    // Keep reading so opflow up never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let status = tokio::time::timeout(Duration::from_secs(10), up.wait())
        .await
        .context("a second signal should stop opflow up at once")??;
    assert_eq!(status.code(), Some(130), "{status}");
    wait_for("the worker to die with opflow up", Duration::from_secs(10), || async {
        let stat = std::fs::read_to_string(format!("/proc/{worker}/stat")).unwrap_or_default();
        let dead = stat.is_empty() || stat.split(") ").nth(1).is_some_and(|rest| rest.starts_with('Z'));
        Ok(dead.then_some(()))
    })
    .await?;
    Ok(())
}
