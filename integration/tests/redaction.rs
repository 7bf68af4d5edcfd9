//! Passwords never reach output: the real binaries, given database and broker URLs with
//! passwords that point at a port where nothing listens, report the failing host in their
//! log lines and errors but never the password. Needs no running services.

use std::{process::Stdio, time::Duration};

use anyhow::Context;
use opflow_integration::{binary, sigterm};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, BufReader},
    process::Command,
};

const DATABASE_URL: &str = "postgres://opflow:s3cr3t-pg@127.0.0.1:1/nope";
const AMQP_URL: &str = "amqp://guest:s3cr3t-amqp@127.0.0.1:1/%2f";
const SECRET: &str = "s3cr3t";
/// Only turns a hang into a failure. The broker refuses at once; the database's first
/// report comes after the pool's 30 s acquire timeout.
const DEADLINE: Duration = Duration::from_secs(90);

/// What a process printed and how it ended.
struct Finished {
    success: bool,
    output: String,
}

/// Runs `command` until it prints a stderr line containing `until` (then sends SIGTERM:
/// connecting is retried for a while, and the first attempt's report is what we check) or,
/// with `None`, until it exits by itself.
async fn run(mut command: Command, until: Option<&str>) -> anyhow::Result<Finished> {
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let mut child = command.spawn().context("starting the binary")?;
    let mut stdout = child.stdout.take().context("stdout is piped")?;
    let stdout = tokio::spawn(async move {
        let mut text = String::new();
        stdout.read_to_string(&mut text).await.map(|_| text)
    });
    let mut lines = BufReader::new(child.stderr.take().context("stderr is piped")?).lines();
    let mut output = String::new();
    let mut signalled = false;
    let read = async {
        while let Some(line) = lines.next_line().await? {
            output.push_str(&line);
            output.push('\n');
            if !signalled && until.is_some_and(|marker| line.contains(marker)) {
                sigterm(&child)?;
                signalled = true;
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .with_context(|| format!("no exit within {DEADLINE:?}; output so far:\n{output}"))??;
    let status = child.wait().await?;
    output.push_str(&stdout.await??);
    Ok(Finished { success: status.success(), output })
}

/// A workspace binary's command, with nothing from the test's own environment that could
/// point it elsewhere.
fn command(name: &str) -> anyhow::Result<Command> {
    let mut command = Command::new(binary(name)?);
    for inherited in ["OPFLOW_CONFIG", "OPFLOW_AMQP_URL", "OPFLOW_DATABASE_URL", "OPFLOW_API_ADDR"] {
        command.env_remove(inherited);
    }
    Ok(command)
}

fn assert_redacted(finished: &Finished, host: &str) {
    let output = &finished.output;
    assert!(output.contains(host), "the output should name {host}:\n{output}");
    assert!(!output.contains(SECRET), "a password leaked:\n{output}");
}

#[tokio::test]
async fn the_dispatcher_names_the_database_host_but_not_its_password() -> anyhow::Result<()> {
    let mut command = command("opflow")?;
    command
        .arg("dispatcher")
        .env("OPFLOW_DATABASE_URL", DATABASE_URL)
        .env("OPFLOW_AMQP_URL", AMQP_URL)
        .env("OPFLOW_API_ADDR", "127.0.0.1:0");
    let finished = run(command, Some("PostgreSQL unreachable")).await?;
    assert!(!finished.success, "stopped before connecting is a failure:\n{}", finished.output);
    assert_redacted(&finished, "postgres://opflow:***@127.0.0.1:1/nope");
    Ok(())
}

#[tokio::test]
async fn a_worker_names_the_broker_host_but_not_its_password() -> anyhow::Result<()> {
    let mut command = command("noop")?;
    command.env("OPFLOW_AMQP_URL", AMQP_URL);
    // A worker told to stop while it connects stops cleanly, by design; only the output
    // matters here.
    let finished = run(command, Some("RabbitMQ unreachable")).await?;
    assert_redacted(&finished, "amqp://guest:***@127.0.0.1:1/%2f");
    Ok(())
}

#[tokio::test]
async fn a_malformed_broker_url_fails_at_once_without_its_password() -> anyhow::Result<()> {
    // Missing `//`: the AMQP parser quotes such a URL whole in its error.
    let mut command = command("noop")?;
    command.args(["--amqp-url", "amqp:guest:s3cr3t-amqp@127.0.0.1:1/%2f"]);
    let finished = run(command, None).await?;
    assert!(!finished.success, "a malformed URL is an error:\n{}", finished.output);
    assert_redacted(&finished, "amqp:***@127.0.0.1:1/%2f");
    Ok(())
}
