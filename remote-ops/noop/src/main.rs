//! `noop`: does nothing, slowly or failing on request. The op that tests and benchmarks
//! use to exercise the platform without doing real work.

use std::time::{Duration, Instant};

use opflow_worker::{Op, StepContext, StepError};
use serde::Deserialize;
use serde_json::{Value, json};

/// Parameters noop does not know are ignored, so a plan can sweep any key over it.
#[derive(Debug, Deserialize)]
struct Params {
    /// Wait this long (without using CPU) before finishing.
    #[serde(default)]
    sleep_ms: u64,
    /// Busy-spin this long (using one core, on a blocking thread that nothing can stop but
    /// the process ending) before finishing.
    #[serde(default)]
    burn_ms: u64,
    /// Burn only on attempts before this one (0: on every attempt).
    #[serde(default)]
    burn_until_attempt: u32,
    /// Hold an exclusive lock on this file while running (and burning); fail at once if
    /// another attempt holds it. Shows whether two attempts of a step ever overlap.
    #[serde(default)]
    lock_file: Option<std::path::PathBuf>,
    /// `fatal` fails every attempt for good; `retryable` fails every attempt retryably;
    /// `panic` panics in the handler; `crash` aborts the whole worker process (a poison
    /// message, for testing dead-lettering).
    #[serde(default)]
    fail: Fail,
    /// Fail retryably on attempts before this one, then succeed.
    #[serde(default)]
    fail_until_attempt: u32,
    /// Put NUL characters in every text it reports (log, progress, materialization,
    /// output, error), as an op relaying a subprocess's raw output might.
    #[serde(default)]
    nul_texts: bool,
    /// Report this text as a log line and a progress message, and end the error with it
    /// when failing: an op relaying text it does not control (terminal escapes and all).
    #[serde(default)]
    say: Option<String>,
    /// Pad the output to about this many bytes.
    #[serde(default)]
    output_bytes: usize,
    /// Report a log line and progress halfway, as a real op reports its work.
    #[serde(default)]
    chatty: bool,
    /// Log this many lines of `log_line_bytes` each: an op that logs far too much.
    #[serde(default)]
    log_lines: u64,
    #[serde(default)]
    log_line_bytes: usize,
    /// Put this value in the output as `echo`: a test decides what a step produces.
    #[serde(default)]
    echo: Option<Value>,
    /// Report this value as what the step materialized (its metadata).
    #[serde(default)]
    materialize: Option<Value>,
    /// Report a check of this name: passed, unless the step's partition is in
    /// `check_fails_on`.
    #[serde(default)]
    check: Option<String>,
    #[serde(default)]
    check_fails_on: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Fail {
    #[default]
    Never,
    Fatal,
    Retryable,
    Panic,
    Crash,
}

async fn run(ctx: StepContext) -> Result<Value, StepError> {
    let params: Params = ctx.params()?;
    let nul = if params.nul_texts { "\0" } else { "" };
    if params.nul_texts {
        ctx.log(opflow_worker::LogLevel::Warn, format!("raw stderr:{nul}"));
        ctx.progress(0.5, format!("half{nul}way"));
        ctx.materialized(json!({ format!("path{nul}"): format!("/tmp/{nul}x") }));
    }
    if let Some(text) = &params.say {
        ctx.log(opflow_worker::LogLevel::Warn, text.clone());
        ctx.progress(0.5, text.clone());
    }
    let said = params.say.as_deref().unwrap_or_default();
    if params.chatty {
        ctx.log(opflow_worker::LogLevel::Info, format!("working on attempt {}", ctx.attempt()));
        ctx.progress(0.5, "halfway".to_owned());
    }
    if params.log_lines > 0 {
        let line = "l".repeat(params.log_line_bytes);
        for _ in 0..params.log_lines {
            ctx.log(opflow_worker::LogLevel::Info, line.clone());
        }
    }
    if let Some(name) = &params.check {
        let failed = ctx.partition().is_some_and(|p| params.check_fails_on.iter().any(|f| f == p));
        let detail =
            failed.then(|| format!("partition {} is in check_fails_on", ctx.partition().unwrap_or_default()));
        ctx.check(name.clone(), !failed, detail);
    }
    let lock = match &params.lock_file {
        Some(path) => Some(hold_lock(path)?),
        None => None,
    };
    if params.sleep_ms > 0 {
        // A well-behaved handler: it stops when told to (a timeout, a canceled run).
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(params.sleep_ms)) => {}
            () = ctx.cancelled().cancelled() => return Err(StepError::retryable("stopped while sleeping, as told")),
        }
    }
    if params.burn_ms > 0 && (params.burn_until_attempt == 0 || ctx.attempt() < params.burn_until_attempt) {
        // A badly behaved one: the spin ignores every request to stop.
        let burn = Duration::from_millis(params.burn_ms);
        tokio::task::spawn_blocking(move || {
            let _held = lock;
            let start = Instant::now();
            while start.elapsed() < burn {
                std::hint::spin_loop();
            }
        })
        .await
        .map_err(StepError::retryable)?;
    }
    match params.fail {
        Fail::Fatal => {
            return Err(StepError::fatal(format!("failing as configured (fail: fatal){nul}{said}")));
        }
        Fail::Retryable => return Err(StepError::retryable("failing as configured (fail: retryable)")),
        Fail::Panic => panic!("panicking as configured (fail: panic)"),
        Fail::Crash => {
            eprintln!("noop: aborting the worker process as configured (fail: crash)");
            std::process::abort();
        }
        Fail::Never => {}
    }
    if ctx.attempt() < params.fail_until_attempt {
        return Err(StepError::retryable(format!(
            "failing attempt {} as configured (fail_until_attempt: {})",
            ctx.attempt(),
            params.fail_until_attempt
        )));
    }
    let mut output = json!({
        "op_version": opflow_worker::op_version!(),
        "attempt": ctx.attempt(),
        "inputs": ctx.inputs().len(),
    });
    if params.nul_texts {
        output["text"] = json!(format!("out{nul}put"));
    }
    if let Some(metadata) = params.materialize {
        ctx.materialized(metadata);
    }
    if let Some(echo) = params.echo {
        output["echo"] = echo;
    }
    if params.output_bytes > 0 {
        output["padding"] = json!("x".repeat(params.output_bytes.saturating_sub(100)));
    }
    Ok(output)
}

/// Takes an exclusive lock on `path`, held until the returned file is dropped (or the
/// process ends).
fn hold_lock(path: &std::path::Path) -> Result<std::fs::File, StepError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| StepError::fatal(format!("cannot open lock_file {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StepError::fatal(format!(
            "another attempt of this step is still running: {} is locked",
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(StepError::fatal(format!("cannot lock {}: {e}", path.display())))
        }
    }
}

fn main() -> std::process::ExitCode {
    let op = Op::new("noop", opflow_worker::op_version!())
        .summary("Does nothing, optionally slowly or failing; for tests and benchmarks")
        .config_field("sleep_ms", "integer", "Milliseconds to wait before finishing", json!(0))
        .config_field("burn_ms", "integer", "Milliseconds of CPU to burn before finishing (ignores stop requests)", json!(0))
        .config_field("burn_until_attempt", "integer", "Burn only on attempts before this one (0: always)", json!(0))
        .config_field("lock_file", "string", "Hold an exclusive lock on this file while running", Value::Null)
        .config_field(
            "fail",
            "string",
            "never, fatal (fail for good), retryable (fail every attempt), panic, or crash (abort the worker)",
            json!("never"),
        )
        .config_field("fail_until_attempt", "integer", "Fail retryably on attempts before this one", json!(0))
        .config_field("nul_texts", "boolean", "Put NUL characters in every text it reports", json!(false))
        .config_field("output_bytes", "integer", "Pad the output to about this many bytes", json!(0))
        .config_field("chatty", "boolean", "Report a log line and progress halfway", json!(false))
        .config_field("log_lines", "integer", "Log this many lines (of log_line_bytes each)", json!(0))
        .config_field("log_line_bytes", "integer", "The length of each of log_lines", json!(0))
        .config_field("echo", "any", "A value to put in the output as `echo`", Value::Null)
        .config_field("materialize", "object", "Metadata to report as materialized", Value::Null)
        .config_field("check", "string", "Report a check of this name (passed unless check_fails_on)", Value::Null)
        .config_field("check_fails_on", "array", "Partitions on which the check fails", json!([]))
        // noop serves tests and benchmarks, whose sleeps stay well under a minute.
        .longest_step(Duration::from_secs(60));
    // A test registers the same build as compatible with earlier versions, or not.
    let op = match std::env::var("NOOP_REUSE_FROM") {
        Ok(requirement) => op.reuse_from(requirement),
        Err(_) => op,
    };
    op.handler(run).main()
}
