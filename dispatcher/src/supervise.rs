//! Worker processes on one machine, for `opflow up`: each op gets its replicas as child
//! processes; one that dies is restarted with capped, jittered backoff; on shutdown every
//! worker gets SIGTERM (it finishes its step, acks, exits) and, past the drain timeout,
//! SIGKILL (its unacked step is redelivered to another worker later).
//!
//! Workers never outlive `opflow up`: each is started with a parent-death signal
//! (SIGKILL), so even a SIGKILLed `opflow up` takes them with it. Each is also in a process
//! group of its own, so a Ctrl-C in the terminal reaches `opflow up` alone, which drains
//! the workers in order (and a second Ctrl-C stops everything at once).

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use backon::BackoffBuilder;
use nix::{sys::signal::Signal, unistd::Pid};
use opflow_process::{LogFormat, SecretUrl};
use opflow_protocol::OpRef;
use tokio::{process::Child, task::JoinSet};
use tokio_util::sync::CancellationToken;

/// A worker that ran this long before dying is restarted at once, not after a backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(30);

/// One op's workers.
#[derive(Debug, Clone)]
pub struct WorkerGroup {
    pub op: OpRef,
    pub binary: PathBuf,
    pub replicas: u32,
}

/// What every worker process is started with. `Debug` shows the URL without its password.
#[derive(Debug, Clone)]
pub struct WorkerEnv {
    pub amqp_url: SecretUrl,
    pub log_format: LogFormat,
    pub drain_timeout: Duration,
}

/// Runs every group's workers until `shutdown`, then drains them.
pub async fn supervise(groups: Vec<WorkerGroup>, env: WorkerEnv, shutdown: CancellationToken) {
    let mut workers = JoinSet::new();
    for group in groups {
        for replica in 0..group.replicas {
            workers.spawn(keep_running(group.clone(), replica, env.clone(), shutdown.clone()));
        }
    }
    while workers.join_next().await.is_some() {}
}

async fn keep_running(group: WorkerGroup, replica: u32, env: WorkerEnv, shutdown: CancellationToken) {
    let name = format!("{}#{replica}", group.op);
    let restart_delays = || opflow_process::backoff::restart().build();
    let mut delays = restart_delays();
    while !shutdown.is_cancelled() {
        let started = Instant::now();
        let mut child = match spawn(&group, &env) {
            Ok(child) => child,
            Err(error) => {
                tracing::error!(worker = %name, binary = %group.binary.display(), %error, "cannot start worker");
                if !sleep_or_stop(delays.next(), &shutdown).await {
                    return;
                }
                continue;
            }
        };
        tracing::debug!(worker = %name, pid = child.id(), "worker started");
        tokio::select! {
            status = child.wait() => {
                // A worker that exits 0 on its own chose to (it stopped a runaway step, or
                // was recycled): replace it at once. One that crashed waits out a backoff.
                let clean = status.as_ref().is_ok_and(|s| s.success());
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                if started.elapsed() >= HEALTHY_RUN || clean {
                    delays = restart_delays();
                }
                let delay = if clean { Some(Duration::ZERO) } else { delays.next() };
                if clean {
                    tracing::info!(worker = %name, "worker exited cleanly on its own; starting a fresh one");
                } else {
                    tracing::warn!(worker = %name, %status, restart_in = ?delay, "worker exited; restarting it");
                }
                if !sleep_or_stop(delay, &shutdown).await {
                    return;
                }
            }
            () = shutdown.cancelled() => {
                drain(&mut child, &name, env.drain_timeout).await;
                return;
            }
        }
    }
}

fn spawn(group: &WorkerGroup, env: &WorkerEnv) -> std::io::Result<Child> {
    worker_command(group, env).spawn()
}

/// The worker's command. The broker URL goes in the environment, never on the command
/// line, where any local user could read its password (`ps`, `/proc/<pid>/cmdline`).
fn worker_command(group: &WorkerGroup, env: &WorkerEnv) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(&group.binary);
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and only makes two system
    // calls (prctl, getppid), both async-signal-safe; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            // The parent may have died between fork and prctl, which no signal reports.
            if nix::unistd::getppid().as_raw() as u32 != parent {
                return Err(std::io::Error::other("opflow up exited while starting this worker"));
            }
            Ok(())
        });
    }
    command
        .process_group(0)
        .env("OPFLOW_AMQP_URL", env.amqp_url.expose())
        .arg("--log-format")
        .arg(env.log_format.as_str())
        .stdin(Stdio::null())
        // The worker's own log lines go to our stderr, where the user is looking.
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    command
}

/// SIGTERM, then wait up to `timeout`, then SIGKILL.
pub(crate) async fn drain(child: &mut Child, name: &str, timeout: Duration) {
    let Some(pid) = child.id() else { return };
    if let Err(error) = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGTERM) {
        tracing::warn!(worker = %name, %error, "cannot send SIGTERM");
    }
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => tracing::debug!(worker = %name, "worker drained"),
        Ok(Ok(status)) => tracing::warn!(worker = %name, %status, "worker exited uncleanly while draining"),
        Ok(Err(error)) => tracing::warn!(worker = %name, %error, "waiting for worker failed"),
        Err(_) => {
            tracing::warn!(worker = %name, ?timeout, "worker did not drain in time; killing it (its step will be redelivered)");
            if let Err(error) = child.kill().await {
                tracing::warn!(worker = %name, %error, "cannot kill worker");
            }
        }
    }
}

/// Sleeps unless shutdown comes first; returns whether to go on.
async fn sleep_or_stop(delay: Option<Duration>, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay.unwrap_or(Duration::from_secs(30))) => true,
        () = shutdown.cancelled() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> WorkerEnv {
        WorkerEnv {
            amqp_url: SecretUrl::new("amqp://guest:s3cr3t@rabbit:5672/%2f"),
            log_format: LogFormat::Json,
            drain_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn the_broker_password_is_not_on_the_worker_command_line() {
        let group =
            WorkerGroup { op: "noop@1.0.0".parse().unwrap(), binary: "/bin/noop".into(), replicas: 1 };
        let command = worker_command(&group, &env());
        let args: Vec<_> = command.as_std().get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert!(args.iter().all(|a| !a.contains("s3cr3t")), "{args:?}");
        let url = command.as_std().get_envs().find(|(k, _)| *k == "OPFLOW_AMQP_URL").and_then(|(_, v)| v);
        assert_eq!(url.and_then(|v| v.to_str()), Some("amqp://guest:s3cr3t@rabbit:5672/%2f"));
    }

    #[test]
    fn debug_hides_the_password() {
        let debug = format!("{:?}", env());
        assert!(!debug.contains("s3cr3t"), "{debug}");
        assert!(debug.contains("amqp://guest:***@rabbit:5672/%2f"), "{debug}");
    }
}
