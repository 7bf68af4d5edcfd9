//! The harness for opflow's end-to-end tests: each test gets an [`Env`] with its own
//! PostgreSQL database and its own RabbitMQ vhost, drives the real `opflow` and op
//! binaries as child processes against them, and removes both when it is dropped. Tests
//! therefore run in parallel and never touch a user's data.
//!
//! The binaries are the workspace's own, found next to the test executable; build them
//! first with `scripts/test.sh` (or `cargo build --workspace --bins`).

pub mod chaos;

use std::{
    path::{Path, PathBuf},
    process::{Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use sqlx::{Connection, PgConnection, PgPool, postgres::PgPoolOptions};
use tokio::process::{Child, Command};

/// The server the tests use; `OPFLOW_TEST_PG` overrides it (without a database name).
fn pg_server() -> String {
    std::env::var("OPFLOW_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// The broker the tests use; `OPFLOW_TEST_AMQP` overrides it (without a vhost).
fn amqp_server() -> String {
    std::env::var("OPFLOW_TEST_AMQP").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672".into())
}

/// The directory holding the workspace's binaries: the test executable lives in its `deps/`.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    let deps = exe.parent().expect("the test executable is in a directory");
    deps.parent().expect("deps/ has a parent").to_path_buf()
}

/// A workspace binary, e.g. `opflow` or `noop`, or a Python op's command, e.g. `noop-py`;
/// fails with what to do if it is missing.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir().join(name);
    if path.exists() {
        return Ok(path);
    }
    if let Some(python) = python_ops_dir()
        && python.join(name).exists()
    {
        return Ok(python.join(name));
    }
    bail!(
        "{} is missing{}; build it first: scripts/test.sh builds every binary the tests need, and makes the \
         Python ops' virtualenv (scripts/python-ops.sh) and sets OPFLOW_PYTHON_OPS to its bin/",
        path.display(),
        match python_ops_dir() {
            Some(dir) => format!(", and so is {}", dir.join(name).display()),
            None => " (OPFLOW_PYTHON_OPS is not set)".into(),
        }
    )
}

/// The directory of the Python ops' commands: the `bin/` of the virtualenv that
/// `scripts/python-ops.sh` makes, from `OPFLOW_PYTHON_OPS`.
pub fn python_ops_dir() -> Option<PathBuf> {
    std::env::var_os("OPFLOW_PYTHON_OPS").map(PathBuf::from)
}

/// A finished process and what it used.
pub struct Measured {
    pub output: Output,
    /// Peak resident memory, KiB.
    pub peak_rss_kib: u64,
    pub wall: Duration,
}

/// A running process's peak resident memory so far (`VmHWM`), in KiB.
pub fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).context("no VmHWM in /proc/<pid>/status")?;
    Ok(line.split_whitespace().nth(1).context("VmHWM has a value")?.parse()?)
}

/// A port for one test's dispatcher API, known before the dispatcher starts (the CLI's
/// user commands need it, and a restarted dispatcher must come back on it). Taken from
/// below Linux's ephemeral range (32768–60999), so no connection the kernel numbers can
/// take it meanwhile; random, and checked free, so parallel tests do not collide.
fn api_port() -> anyhow::Result<u16> {
    use rand::RngExt as _;
    for _ in 0..100 {
        let port = rand::rng().random_range(20_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port found between 20000 and 32000 for the dispatcher's API")
}

/// One test's private database and vhost.
pub struct Env {
    pub name: String,
    pub database_url: String,
    pub amqp_url: String,
    pub api_addr: String,
    database: String,
    vhost: String,
    pool: Option<PgPool>,
}

impl Env {
    /// Creates a database and a vhost named after `test` plus a random suffix.
    pub async fn new(test: &str) -> anyhow::Result<Self> {
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let name = format!("opflow_t_{}_{suffix}", test.replace('-', "_"));
        let mut admin = PgConnection::connect(&format!("{}/postgres", pg_server()))
            .await
            .context("connecting to PostgreSQL; is it running? (scripts/services.sh starts it)")?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\""))).execute(&mut admin).await?;
        rabbitmqctl(&["add_vhost", &name]).await?;
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]).await?;
        Ok(Self {
            database_url: format!("{}/{name}", pg_server()),
            amqp_url: format!("{}/{name}", amqp_server()),
            api_addr: format!("127.0.0.1:{}", api_port()?),
            database: name.clone(),
            vhost: name.clone(),
            name,
            pool: None,
        })
    }

    /// A command for `binary` with this env's settings in its environment.
    pub fn command(&self, binary: &Path) -> Command {
        let mut command = Command::new(binary);
        command
            .env("OPFLOW_DATABASE_URL", &self.database_url)
            .env("OPFLOW_AMQP_URL", &self.amqp_url)
            .env("OPFLOW_API_ADDR", &self.api_addr)
            // The user commands (`run`, `status`, `watch`, …) talk to this env's dispatcher.
            .env("OPFLOW_SERVER", format!("http://{}", self.api_addr))
            .env_remove("OPFLOW_TOKEN")
            .env("OPFLOW_HEARTBEAT", "1s")
            .env("NO_COLOR", "1")
            .env_remove("OPFLOW_CONFIG")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// Runs `opflow <args>` to completion.
    pub async fn opflow(&self, args: &[&str]) -> anyhow::Result<Output> {
        let output = self
            .command(&binary("opflow")?)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await?;
        Ok(output)
    }

    /// Runs `opflow <args>` to completion and measures it: its output, its peak resident
    /// memory in KiB (the kernel's own count for that one process) and its wall time.
    pub async fn opflow_measured(&self, args: &[&str]) -> anyhow::Result<Measured> {
        let dir = std::env::temp_dir().join(&self.name);
        std::fs::create_dir_all(&dir)?;
        let (out, err) = (dir.join("measured.out"), dir.join("measured.err"));
        let mut command = self.command(&binary("opflow")?).into_std();
        command.args(args).stdout(std::fs::File::create(&out)?).stderr(std::fs::File::create(&err)?);
        let started = Instant::now();
        let child = command.spawn()?;
        let pid = child.id() as libc::pid_t;
        let (status, peak_rss_kib) = tokio::task::spawn_blocking(move || {
            let mut status = 0;
            // SAFETY: `rusage` is plain data the kernel fills in; `pid` is our own child,
            // which nothing else waits for (the `Child` handle is dropped unwaited).
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
            drop(child);
            if waited != pid {
                anyhow::bail!("wait4 failed: {}", std::io::Error::last_os_error());
            }
            anyhow::Ok((std::os::unix::process::ExitStatusExt::from_raw(status), usage.ru_maxrss as u64))
        })
        .await??;
        let output = Output { status, stdout: std::fs::read(&out)?, stderr: std::fs::read(&err)? };
        Ok(Measured { output, peak_rss_kib, wall: started.elapsed() })
    }

    /// Runs `opflow <args>` and fails unless it exits 0.
    pub async fn opflow_ok(&self, args: &[&str]) -> anyhow::Result<Output> {
        let output = self.opflow(args).await?;
        if !output.status.success() {
            bail!(
                "opflow {} failed with {}:\n{}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(output)
    }

    /// Removes this env's RabbitMQ vhost while its processes run: the broker closes their
    /// connections, as an outage of this env alone would (the vhost is not made again).
    pub async fn remove_vhost(&self) -> anyhow::Result<()> {
        rabbitmqctl(&["delete_vhost", &self.vhost]).await
    }

    /// Registers an op binary (by workspace binary name or path).
    pub async fn register(&self, op_binary: &str) -> anyhow::Result<()> {
        let path = binary(op_binary)?;
        self.opflow_ok(&["ops", "add", path.to_str().context("binary path is UTF-8")?]).await?;
        Ok(())
    }

    /// Starts `opflow dispatcher` and waits until its API answers.
    pub async fn spawn_dispatcher(&self) -> anyhow::Result<Service> {
        self.spawn_dispatcher_with(&[]).await
    }

    /// Starts `opflow dispatcher` with `vars` added to its environment and waits until its
    /// API answers.
    pub async fn spawn_dispatcher_with(&self, vars: &[(&str, &str)]) -> anyhow::Result<Service> {
        let mut command = self.command(&binary("opflow")?);
        command.arg("dispatcher").stdout(Stdio::null());
        for (key, value) in vars {
            command.env(key, value);
        }
        let mut service = Service { name: "opflow dispatcher", child: command.spawn()? };
        self.wait_until_serving(&mut service).await?;
        Ok(service)
    }

    /// Waits until a dispatcher (of `opflow up`, say) answers on this env's API address.
    pub async fn wait_for_api(&self) -> anyhow::Result<()> {
        let addr = self.api_addr.clone();
        wait_for("the dispatcher's API to answer", Duration::from_secs(60), || {
            let addr = addr.clone();
            async move {
                Ok(http(&addr, "GET", "/healthz", None, None).await.ok().filter(|(status, _)| *status == 200))
            }
        })
        .await?;
        Ok(())
    }

    /// Waits until the dispatcher `service` answers on this env's API address, so that the
    /// user commands (which talk to it) can be run next. Not for an API on port 0, whose
    /// address only the dispatcher knows.
    pub async fn wait_until_serving(&self, service: &mut Service) -> anyhow::Result<()> {
        if self.api_addr.ends_with(":0") {
            return Ok(());
        }
        let addr = self.api_addr.clone();
        wait_for("the dispatcher's API to answer", Duration::from_secs(60), || {
            let exited = service.child.try_wait();
            let addr = addr.clone();
            async move {
                if let Some(status) = exited? {
                    bail!("the dispatcher exited with {status} before its API answered");
                }
                Ok(http(&addr, "GET", "/healthz", None, None).await.ok().filter(|(status, _)| *status == 200))
            }
        })
        .await?;
        Ok(())
    }

    /// Starts one worker of an op binary.
    pub fn spawn_worker(&self, op_binary: &str) -> anyhow::Result<Child> {
        Ok(self.command(&binary(op_binary)?).stdout(Stdio::null()).spawn()?)
    }

    /// Starts `opflow dispatcher` with its log going to a file (returned), for tests that
    /// assert on what it logged.
    pub async fn spawn_dispatcher_logged(&self) -> anyhow::Result<(Service, PathBuf)> {
        let log = self.log_file("dispatcher")?;
        let child = self
            .command(&binary("opflow")?)
            .arg("dispatcher")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let mut service = Service { name: "opflow dispatcher", child };
        self.wait_until_serving(&mut service).await?;
        Ok((service, log))
    }

    /// Starts `opflow dispatcher` with `vars` in its environment and its log in a file, and
    /// waits until its HTTP API listens; returns the service and the API's address.
    pub async fn spawn_dispatcher_api(&self, vars: &[(&str, &str)]) -> anyhow::Result<(Service, String)> {
        let log = self.log_file("dispatcher-api")?;
        let mut command = self.command(&binary("opflow")?);
        command
            .arg("dispatcher")
            .env("OPFLOW_LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        for (key, value) in vars {
            command.env(key, value);
        }
        let service = Service { name: "opflow dispatcher", child: command.spawn()? };
        let addr = wait_for("the dispatcher's API to listen", Duration::from_secs(60), || async {
            let text = std::fs::read_to_string(&log)?;
            Ok(text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).find_map(|l| {
                (l["fields"]["message"] == "dispatcher API listening")
                    .then(|| l["fields"]["api"].as_str().map(str::to_owned))
                    .flatten()
            }))
        })
        .await?;
        Ok((service, addr))
    }

    /// Starts one worker of an op binary with its log going to the file `log`.
    pub fn spawn_worker_logged(&self, op_binary: &str, log: &Path) -> anyhow::Result<Child> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        Ok(self.command(&binary(op_binary)?).stdout(Stdio::null()).stderr(file).spawn()?)
    }

    /// A fresh log file path in this env's temporary directory.
    pub fn log_file(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = std::env::temp_dir().join(&self.name);
        std::fs::create_dir_all(&dir)?;
        Ok(dir.join(format!("{name}.log")))
    }

    /// How many messages wait in `queue` of this env's vhost (not counting unacked ones).
    pub async fn queue_depth(&self, queue: &str) -> anyhow::Result<u32> {
        let connection =
            lapin::Connection::connect(&self.amqp_url, lapin::ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        let declared = channel
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions { passive: true, ..Default::default() },
                lapin::types::FieldTable::default(),
            )
            .await
            .with_context(|| format!("queue {queue} in vhost {}", self.vhost))?;
        let _ = connection.close(200, "done".into()).await;
        Ok(declared.message_count())
    }

    /// A pool on this env's database, for assertions.
    pub async fn db(&mut self) -> anyhow::Result<PgPool> {
        if let Some(pool) = &self.pool {
            return Ok(pool.clone());
        }
        let pool = PgPoolOptions::new().max_connections(2).connect(&self.database_url).await?;
        self.pool = Some(pool.clone());
        Ok(pool)
    }

    /// Writes a plan to a temporary file and returns its path.
    pub fn plan_file(&self, name: &str, yaml: &str) -> anyhow::Result<PathBuf> {
        let dir = std::env::temp_dir().join(&self.name);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, yaml)?;
        Ok(path)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            drop(pool);
        }
        // Drop runs outside async context: use the command-line tools, synchronously.
        let _ = std::process::Command::new("psql")
            .args([&format!("{}/postgres", pg_server()), "-q", "-c"])
            .arg(format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.database))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["-q", "delete_vhost", &self.vhost])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        delete_op_users(&self.vhost);
        // `OPFLOW_TEST_KEEP_LOGS=1` keeps each test's process logs to look at afterwards.
        let dir = std::env::temp_dir().join(&self.name);
        if std::env::var_os("OPFLOW_TEST_KEEP_LOGS").is_some() {
            eprintln!("logs kept in {}", dir.display());
        } else {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Deletes the broker users `opflow up` or `opflow ops add` made for op versions on
/// `vhost` (users outlive their vhost), through the management API, with curl; best effort.
fn delete_op_users(vhost: &str) {
    let api = "http://127.0.0.1:15672/api";
    let Ok(listed) = std::process::Command::new("curl")
        .args(["-sf", "-u", "guest:guest", &format!("{api}/users?columns=name")])
        .stderr(Stdio::null())
        .output()
    else {
        return;
    };
    let prefix = opflow_protocol::queue::op_user_prefix(vhost);
    let users: Vec<String> = serde_json::from_slice::<Vec<serde_json::Value>>(&listed.stdout)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|user| user["name"].as_str().filter(|name| name.starts_with(&prefix)).map(str::to_owned))
        .collect();
    if users.is_empty() {
        return;
    }
    let body = serde_json::json!({ "users": users }).to_string();
    let _ = std::process::Command::new("curl")
        .args([
            "-sf",
            "-u",
            "guest:guest",
            "-H",
            "content-type: application/json",
            "-X",
            "POST",
            "--data",
            &body,
        ])
        .arg(format!("{api}/users/bulk-delete"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

async fn rabbitmqctl(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .await
        .context("running rabbitmqctl; is RabbitMQ installed? (scripts/services.sh installs it)")?;
    if !output.status.success() {
        bail!("rabbitmqctl {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}

/// A long-running child process a test relies on: the dispatcher.
pub struct Service {
    name: &'static str,
    child: Child,
}

impl Service {
    /// SIGKILLs the service: no drain, no goodbye.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        sigkill(&self.child)?;
        Ok(())
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Fails if the service has exited: a test waiting on it would otherwise only time out.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!("{} exited early with {status}; see its log above", self.name),
        }
    }
}

/// The pid of the dispatcher holding the lease, from its lease connection's name.
pub async fn lease_holder(db: &PgPool) -> anyhow::Result<Option<u32>> {
    let name: Option<String> = sqlx::query_scalar(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE l.locktype = 'advisory' AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_optional(db)
    .await?;
    Ok(name.and_then(|n| n.strip_prefix("opflow-lease-").and_then(|pid| pid.parse().ok())))
}

/// Polls `check` until it returns `Some`, failing after `deadline`. The deadline only turns
/// a hang into a failure; it never times the work.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if start.elapsed() > deadline {
            bail!("gave up waiting for {what} after {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many `failed` events of run `run_id` carry `needle` in their body: how a test finds
/// the failures a mechanism (cancel, lost-step recovery) reported, by their message.
pub async fn failed_events_containing(db: &PgPool, run_id: &str, needle: &str) -> anyhow::Result<i64> {
    let count = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE run_id = $1::uuid AND kind = 'failed'
         AND strpos(body::text, $2) > 0",
    )
    .bind(run_id)
    .bind(needle)
    .fetch_one(db)
    .await?;
    Ok(count)
}

/// Sends SIGKILL: the process gets no chance to ack, report or clean up.
pub fn sigkill(child: &Child) -> anyhow::Result<()> {
    signal(child, nix::sys::signal::Signal::SIGKILL)
}

/// Sends SIGTERM: the process should drain and exit 0.
pub fn sigterm(child: &Child) -> anyhow::Result<()> {
    signal(child, nix::sys::signal::Signal::SIGTERM)
}

fn signal(child: &Child, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
    let pid = child.id().context("the child has already exited")?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)?;
    Ok(())
}

/// A run's JSON summary from `opflow status --json` / `opflow run --json`.
pub fn parse_summary(output: &Output) -> anyhow::Result<serde_json::Value> {
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().rev().find(|l| l.starts_with('{')).context("no JSON object on stdout")?;
    Ok(serde_json::from_str(line)?)
}

/// stderr as text, for assertions and failure messages.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Sets a policy on this env's vhost: `rabbitmqctl set_policy <name> <pattern> <definition>`.
pub async fn set_policy(env: &Env, name: &str, pattern: &str, definition: &str) -> anyhow::Result<()> {
    rabbitmqctl(&["set_policy", "-p", &env.vhost, "--apply-to", "queues", name, pattern, definition]).await
}

/// Purges a queue in this env's vhost, behind the dispatcher's back.
pub async fn purge_queue(env: &Env, queue: &str) -> anyhow::Result<()> {
    rabbitmqctl(&["purge_queue", "-p", &env.vhost, queue]).await
}

/// Deletes a queue in this env's vhost, behind the dispatcher's back.
pub async fn delete_queue(env: &Env, queue: &str) -> anyhow::Result<()> {
    rabbitmqctl(&["delete_queue", "-p", &env.vhost, queue]).await
}

/// The child processes of `pid` (from every thread: tokio forks from its worker threads),
/// as (pid, command name).
pub fn children_of(pid: u32) -> Vec<(u32, String)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    let mut children = Vec::new();
    for task in tasks.flatten() {
        let Ok(list) = std::fs::read_to_string(task.path().join("children")) else { continue };
        for child in list.split_whitespace().filter_map(|c| c.parse::<u32>().ok()) {
            let name = std::fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
            children.push((child, name.trim().to_owned()));
        }
    }
    children
}

/// The worker processes among `pid`'s children: the children, less the short-lived
/// `<op> --describe` that registering an op runs (`opflow up` registers its ops first, and
/// a test that took that process for a worker would kill the registration instead).
pub fn workers_of(pid: u32) -> Vec<(u32, String)> {
    children_of(pid)
        .into_iter()
        .filter(|(child, _)| {
            let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
            !cmdline.split(|b| *b == 0).any(|arg| arg == b"--describe")
        })
        .collect()
}

/// One HTTP/1.1 request to `addr` (`host:port`), spoken by hand: the status and the body as
/// JSON (`Null` when empty or not JSON). `token` goes in `Authorization: Bearer`.
pub async fn http(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let (status, payload) = http_text(addr, method, path, token, body).await?;
    Ok((status, serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null)))
}

/// As [`http`], with the answer's body as text (`/metrics`, say).
pub async fn http_text(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream =
        tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if !body.is_empty() {
        request.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(&body);
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let (head, payload) = text.split_once("\r\n\r\n").context("an HTTP response")?;
    let status: u16 = head.split_whitespace().nth(1).context("a status")?.parse()?;
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    let payload = if chunked { dechunk(payload) } else { payload.to_owned() };
    Ok((status, payload))
}

fn dechunk(mut text: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = text.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        text = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// The bodies a [`body_receiver`] was sent, in order.
pub type Bodies = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// A webhook receiver on a free loopback port that answers 204 and keeps every body it is
/// sent; its bodies and its URL.
pub async fn body_receiver() -> anyhow::Result<(Bodies, String)> {
    use axum::{Router, body::Bytes, extract::State, http::StatusCode};
    let received = Bodies::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router = Router::new()
        .fallback(|State(log): State<Bodies>, body: Bytes| async move {
            log.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(String::from_utf8_lossy(&body).into_owned());
            StatusCode::NO_CONTENT
        })
        .with_state(received.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok((received, format!("http://{addr}/hook")))
}
