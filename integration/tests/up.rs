//! `opflow up`: the dispatcher plus supervised worker processes on one machine.

use std::time::Duration;

use anyhow::Context;
use opflow_integration::{Env, binary, children_of, parse_summary, sigterm, stderr, wait_for};

const DEADLINE: Duration = Duration::from_secs(120);

#[tokio::test]
async fn a_worker_that_dies_is_restarted_and_ctrl_c_drains_everything() -> anyhow::Result<()> {
    let env = Env::new("up").await?;
    let noop = binary("noop")?;
    let mut up = env
        .command(&binary("opflow")?)
        .args(["up", noop.to_str().context("utf-8")?])
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let up_pid = up.id().context("opflow up is running")?;
    let noop_workers =
        || children_of(up_pid).into_iter().filter(|(_, name)| name == "noop").map(|(pid, _)| pid);

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
    let output = env.opflow(&["run", plan.to_str().context("utf-8")?, "--wait", "--json"]).await?;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(parse_summary(&output)?["status"], "succeeded");

    // SIGTERM (what Ctrl-C sends the process group, too) drains workers, then the dispatcher.
    let workers: Vec<u32> = children_of(up_pid).into_iter().map(|(pid, _)| pid).collect();
    assert!(!workers.is_empty());
    sigterm(&up)?;
    let status = tokio::time::timeout(DEADLINE, up.wait()).await.context("opflow up did not stop")??;
    assert!(status.success(), "opflow up should exit 0 after draining, got {status}");
    let survivors: Vec<u32> =
        workers.into_iter().filter(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists()).collect();
    assert!(survivors.is_empty(), "workers outlived opflow up: {survivors:?}");
    Ok(())
}
