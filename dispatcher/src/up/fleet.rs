//! Worker processes on one machine, for `opflow up`: a [`Fleet`] per op version, scaled to
//! the target the autoscaler sets (`autoscale`). One that dies is replaced (after a capped,
//! jittered backoff if it crashed); scaling down sends SIGTERM to idle workers first; on
//! shutdown every worker gets SIGTERM (it finishes its step, acks, exits) and, past the
//! drain timeout, SIGKILL (its unacked step is redelivered to another worker later).
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

use backon::{BackoffBuilder, ExponentialBackoff};
use nix::{sys::signal::Signal, unistd::Pid};
use opflow_process::{LogFormat, SecretUrl};
use opflow_protocol::OpRef;
use tokio::process::Child;

/// A worker that ran this long before dying is restarted at once, not after a backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(30);

/// One op version's worker binary.
#[derive(Debug, Clone)]
pub struct WorkerGroup {
    pub op: OpRef,
    pub binary: PathBuf,
    /// The op version's own broker login (`op_identity`), in place of
    /// [`WorkerEnv::amqp_url`]; `None` when ops share the dispatcher's.
    pub amqp_url: Option<SecretUrl>,
}

/// What every worker process is started with. `Debug` shows the URL without its password.
#[derive(Debug, Clone)]
pub struct WorkerEnv {
    pub amqp_url: SecretUrl,
    /// The dispatcher's broker user: the only one whose cancel records a worker obeys.
    pub dispatcher_user: String,
    pub log_format: LogFormat,
    pub drain_timeout: Duration,
}

/// Per-op settings a worker is started with: recycling (`--max-steps`, `--max-rss-mb`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recycling {
    pub max_steps: Option<u32>,
    pub max_rss_mb: Option<u32>,
}

/// A worker process of a fleet.
struct Worker {
    child: Child,
    pid: u32,
    started: Instant,
    /// Sent SIGTERM by a scale-down: it finishes its step and exits.
    stopping: bool,
}

/// One op version's worker processes: started and stopped to a target, replaced when they
/// exit (at once after a clean exit, a recycle; after a capped, jittered backoff when they
/// crash), and drained on shutdown.
pub struct Fleet {
    group: WorkerGroup,
    env: WorkerEnv,
    recycling: Recycling,
    workers: Vec<Worker>,
    restart_delays: ExponentialBackoff,
    /// No worker starts before this (a crash loop backs off).
    hold_until: Option<Instant>,
}

impl Fleet {
    pub fn new(group: WorkerGroup, env: WorkerEnv) -> Self {
        Self {
            group,
            env,
            recycling: Recycling::default(),
            workers: Vec::new(),
            restart_delays: opflow_process::backoff::restart().build(),
            hold_until: None,
        }
    }

    pub fn op(&self) -> &OpRef {
        &self.group.op
    }

    /// Recycling settings for the workers started from now on.
    pub fn set_recycling(&mut self, recycling: Recycling) {
        self.recycling = recycling;
    }

    /// Workers running and not told to stop.
    pub fn replicas(&self) -> u32 {
        self.workers.iter().filter(|w| !w.stopping).count() as u32
    }

    /// The pids of every worker process, stopping ones included.
    pub fn pids(&self) -> Vec<u32> {
        self.workers.iter().map(|w| w.pid).collect()
    }

    /// Forgets workers that exited, noting crashes (which delay the next start).
    pub fn reap(&mut self) {
        let name = self.group.op.to_string();
        let (mut crashed, mut healthy) = (false, false);
        self.workers.retain_mut(|worker| match worker.child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                if worker.stopping || status.success() {
                    tracing::debug!(op = %name, pid = worker.pid, %status, "worker exited");
                } else {
                    tracing::warn!(op = %name, pid = worker.pid, %status, "worker exited; replacing it");
                    crashed = worker.started.elapsed() < HEALTHY_RUN;
                }
                if worker.started.elapsed() >= HEALTHY_RUN {
                    healthy = true;
                }
                false
            }
            Err(error) => {
                tracing::warn!(op = %name, pid = worker.pid, %error, "cannot check a worker; forgetting it");
                false
            }
        });
        if crashed {
            let delay = self.restart_delays.next().unwrap_or(Duration::from_secs(30));
            self.hold_until = Some(Instant::now() + delay);
        } else if healthy {
            // A worker that ran a while was not a crash loop: the next crash starts over.
            self.restart_delays = opflow_process::backoff::restart().build();
        }
    }

    /// Starts or stops workers towards `target`. Scaling down stops idle workers first
    /// (those not in `busy`, pids whose workers run a step), with SIGTERM: a worker told to
    /// stop finishes the step in hand, acks and exits, so no step is cut.
    pub fn scale_to(&mut self, target: u32, busy: &[u32]) {
        let replicas = self.replicas();
        if target > replicas {
            if self.hold_until.is_some_and(|until| Instant::now() < until) {
                return;
            }
            for _ in replicas..target {
                match worker_command(&self.group, &self.env, self.recycling).spawn() {
                    Ok(child) => {
                        let pid = child.id().unwrap_or_default();
                        tracing::debug!(op = %self.group.op, pid, "worker started");
                        self.workers.push(Worker { child, pid, started: Instant::now(), stopping: false });
                    }
                    Err(error) => {
                        tracing::error!(op = %self.group.op, binary = %self.group.binary.display(), %error,
                            "cannot start a worker");
                        let delay = self.restart_delays.next().unwrap_or(Duration::from_secs(30));
                        self.hold_until = Some(Instant::now() + delay);
                        return;
                    }
                }
            }
        } else if target < replicas {
            let mut excess = replicas - target;
            // Idle first, then the youngest.
            let mut order: Vec<usize> =
                (0..self.workers.len()).filter(|&i| !self.workers[i].stopping).collect();
            order.sort_by_key(|&i| {
                (busy.contains(&self.workers[i].pid), std::cmp::Reverse(self.workers[i].started))
            });
            for i in order {
                if excess == 0 {
                    break;
                }
                let worker = &mut self.workers[i];
                if let Err(error) = nix::sys::signal::kill(Pid::from_raw(worker.pid as i32), Signal::SIGTERM)
                {
                    tracing::warn!(op = %self.group.op, pid = worker.pid, %error, "cannot send SIGTERM");
                }
                worker.stopping = true;
                excess -= 1;
            }
        }
    }

    /// Stops every worker: SIGTERM, then up to the drain timeout, then SIGKILL.
    pub async fn drain(&mut self) {
        let name = self.group.op.to_string();
        let timeout = self.env.drain_timeout;
        let drains = self.workers.iter_mut().map(|worker| drain(&mut worker.child, &name, timeout));
        futures_util::future::join_all(drains).await;
        self.workers.clear();
    }
}

/// The worker's command. The broker URL goes in the environment, never on the command
/// line, where any local user could read its password (`ps`, `/proc/<pid>/cmdline`).
fn worker_command(group: &WorkerGroup, env: &WorkerEnv, recycling: Recycling) -> tokio::process::Command {
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
        .env("OPFLOW_AMQP_URL", group.amqp_url.as_ref().unwrap_or(&env.amqp_url).expose())
        .env("OPFLOW_DISPATCHER_USER", &env.dispatcher_user)
        .env_remove("OPFLOW_MAX_STEPS")
        .env_remove("OPFLOW_MAX_RSS_MB")
        .arg("--log-format")
        .arg(env.log_format.as_str())
        .stdin(Stdio::null())
        // The worker's own log lines go to our stderr, where the user is looking.
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if let Some(steps) = recycling.max_steps {
        command.arg("--max-steps").arg(steps.to_string());
    }
    if let Some(mb) = recycling.max_rss_mb {
        command.arg("--max-rss-mb").arg(mb.to_string());
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> WorkerEnv {
        WorkerEnv {
            amqp_url: SecretUrl::new("amqp://guest:s3cr3t@rabbit:5672/%2f"),
            dispatcher_user: "guest".into(),
            log_format: LogFormat::Json,
            drain_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn the_broker_password_is_not_on_the_worker_command_line() {
        let group =
            WorkerGroup { op: "noop@1.0.0".parse().unwrap(), binary: "/bin/noop".into(), amqp_url: None };
        let command = worker_command(&group, &env(), Recycling::default());
        let args: Vec<_> = command.as_std().get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert!(args.iter().all(|a| !a.contains("s3cr3t")), "{args:?}");
        let url = command.as_std().get_envs().find(|(k, _)| *k == "OPFLOW_AMQP_URL").and_then(|(_, v)| v);
        assert_eq!(url.and_then(|v| v.to_str()), Some("amqp://guest:s3cr3t@rabbit:5672/%2f"));
    }

    #[test]
    fn a_worker_with_an_identity_logs_in_as_its_op() {
        let own = SecretUrl::new("amqp://opflow-op%3A%2F%3Anoop%401.0.0:pw@rabbit:5672/%2f");
        let group = WorkerGroup {
            op: "noop@1.0.0".parse().unwrap(),
            binary: "/bin/noop".into(),
            amqp_url: Some(own.clone()),
        };
        let command = worker_command(&group, &env(), Recycling::default());
        let var = |name: &str| {
            command
                .as_std()
                .get_envs()
                .find(|(k, _)| *k == name)
                .and_then(|(_, v)| v?.to_str().map(str::to_owned))
        };
        assert_eq!(var("OPFLOW_AMQP_URL").as_deref(), Some(own.expose()));
        assert_eq!(var("OPFLOW_DISPATCHER_USER").as_deref(), Some("guest"));
    }

    #[test]
    fn debug_hides_the_password() {
        let debug = format!("{:?}", env());
        assert!(!debug.contains("s3cr3t"), "{debug}");
        assert!(debug.contains("amqp://guest:***@rabbit:5672/%2f"), "{debug}");
    }
}
