//! `opflow up`: the whole platform on one machine. Registers the op binaries, runs the
//! dispatcher in this process and the workers as supervised child processes, and on
//! Ctrl-C (or when `--run` is done) drains the workers first, then the dispatcher, so
//! every event a worker sends on its way out is still applied.

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::Context;
use clap::Args;
use opflow_amqp::OpQueueSettings;
use tokio_util::sync::CancellationToken;

use super::{exit::InvalidInput, render, run};
use crate::{
    ops::{
        identity::BrokerUsers,
        register::{self, OpSource},
    },
    service::{self, publisher::Wakeups},
    settings::{OpIdentity, Settings},
    submit::{self, SubmitError},
    up::{
        autoscale::{Autoscaler, Mode},
        fleet::{Fleet, WorkerEnv, WorkerGroup},
    },
};

/// The example ops `opflow up` runs when given none.
const EXAMPLE_OPS: &[&str] = &["noop", "price-paths", "var-report"];

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Op commands to register and run: Rust op binaries, or Python ops' scripts (e.g.
    /// "$(scripts/python-ops.sh)/loss-aggregate") [default: the example ops next to this
    /// opflow binary]
    #[arg(value_name = "OP_COMMAND")]
    pub ops: Vec<PathBuf>,
    /// A fixed fleet: this many worker processes per op, always (for benchmarks). Without
    /// it, each op scales from zero with its queue, by its `opflow ops scale` settings
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub workers: Option<u32>,
    /// Once everything is up, submit this plan, wait for it, print its results, then stop
    /// (exit code as `opflow run --wait`)
    #[arg(long, value_name = "PLAN")]
    pub run: Option<PathBuf>,
    /// Idempotency key for --run
    #[arg(long, requires = "run")]
    pub key: Option<String>,
}

pub async fn up(
    args: UpArgs,
    settings: Settings,
    log_format: opflow_process::LogFormat,
) -> anyhow::Result<ExitCode> {
    let binaries = if args.ops.is_empty() { example_ops()? } else { args.ops.clone() };
    let plan_source = args.run.as_deref().map(render::read_plan).transpose()?;
    let signal = CancellationToken::new();
    let force = CancellationToken::new();
    tokio::spawn(opflow_process::cancel_on_signals(signal.clone(), force.clone()));
    // A second signal stops everything now: the workers die with this process (their
    // parent-death signal); their unacked steps and the unapplied events are redelivered.
    tokio::spawn(async move {
        force.cancelled().await;
        eprintln!("stopped at once on a second signal; unfinished steps will be redelivered");
        std::process::exit(130);
    });

    // Ops speak for themselves unless told otherwise: this process starts the workers, so
    // it can hand each op version its own broker login.
    let mut settings = settings;
    if settings.op_identity.required(true) {
        settings.op_identity = OpIdentity::Required;
    }
    let users = match settings.op_identity {
        OpIdentity::Required => Some(BrokerUsers::new(&settings)?),
        _ => None,
    };
    let (store, connection) = service::connect(&settings, &signal).await?;
    let channel = connection.create_channel().await.context("opening a channel")?;
    let mut groups = Vec::with_capacity(binaries.len());
    for binary in binaries {
        let (description, _) =
            register::register(&store, &channel, &OpSource::binary(&binary), OpQueueSettings::default())
                .await
                .with_context(|| format!("registering {}", binary.display()))?;
        tracing::info!(op = %description.op, binary = %binary.display(), "op registered");
        // A fresh password each time: only the workers this process starts know it.
        let amqp_url = match &users {
            Some(users) => Some(
                users
                    .issue(&description.op, None)
                    .await
                    .with_context(|| format!("giving {} its broker login", description.op))?
                    .amqp_url,
            ),
            None => None,
        };
        groups.push(WorkerGroup { op: description.op, binary, amqp_url });
    }
    if let Err(error) = channel.close(200, "ops registered".into()).await {
        tracing::debug!(%error, "closing the registration channel failed");
    }

    let wakeups = Arc::new(Wakeups::default());
    let dispatcher_stop = CancellationToken::new();
    let mut dispatcher = tokio::spawn(service::run_connected(
        settings.clone(),
        store.clone(),
        connection,
        settings.autoscale_wakeup.then(|| wakeups.clone()),
        dispatcher_stop.clone(),
    ));
    let workers_stop = CancellationToken::new();
    let env = WorkerEnv {
        amqp_url: settings.amqp_url.clone(),
        dispatcher_user: opflow_amqp::Login::of(&settings.amqp_url)?.user,
        log_format,
        drain_timeout: settings.drain_timeout(),
    };
    let fleets = groups.into_iter().map(|group| Fleet::new(group, env.clone())).collect();
    let mode = match args.workers {
        Some(n) => Mode::Fixed(n),
        None => Mode::Auto,
    };
    let autoscaler = Autoscaler {
        store: store.clone(),
        amqp_url: settings.amqp_url.clone(),
        mode,
        wakeups,
        forecast: settings.autoscale_forecast,
    };
    let workers = tokio::spawn(autoscaler.run(fleets, workers_stop.clone()));
    let fleet = match args.workers {
        Some(n) => format!("{n} worker(s) per op"),
        None => "workers scale from zero with their queues (`opflow ops list` shows them)".to_owned(),
    };
    let ui = if settings.ui { format!(", web UI http://{}/", settings.api_addr) } else { String::new() };
    eprintln!(
        "opflow is up: API http://{}{ui}, {fleet}; submit with `opflow run <plan> --wait`; Ctrl-C stops",
        settings.api_addr
    );

    let outcome: anyhow::Result<ExitCode> = tokio::select! {
        result = async {
            match (&args.run, &plan_source) {
                (Some(file), Some(source)) => run_plan(&store, &settings, file, source, args.key.as_deref()).await,
                _ => {
                    signal.cancelled().await;
                    Ok(ExitCode::SUCCESS)
                }
            }
        } => result,
        () = signal.cancelled() => Ok(ExitCode::SUCCESS),
        joined = &mut dispatcher => {
            let result = joined.context("the dispatcher panicked").and_then(|r| r);
            workers_stop.cancel();
            workers.await.context("the worker supervisor panicked")?;
            result?;
            return Err(anyhow::anyhow!("the dispatcher stopped unexpectedly"));
        }
    };

    eprintln!("stopping: draining workers, then the dispatcher");
    workers_stop.cancel();
    workers.await.context("the worker supervisor panicked")?;
    dispatcher_stop.cancel();
    dispatcher.await.context("the dispatcher panicked")??;
    outcome
}

async fn run_plan(
    store: &crate::store::Store,
    settings: &Settings,
    file: &std::path::Path,
    source: &str,
    key: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let submission = match submit::submit(store, source, file, key).await {
        Ok(submission) => submission,
        Err(SubmitError::Plan(errors)) => return Err(InvalidInput(errors.to_string()).into()),
        Err(error @ SubmitError::BadKey(_)) => return Err(InvalidInput(error.to_string()).into()),
        Err(other) => return Err(other.into()),
    };
    eprintln!("submitted run {} ({})", submission.run_id, file.display());
    if settings.ui {
        eprintln!("its page: http://{}/runs/{}", settings.api_addr, submission.run_id);
    }
    // Followed as `opflow run --wait` follows it, through this dispatcher's own API, when
    // that is reachable without a token on a known port.
    if let Some(client) = own_api(settings)? {
        let run = submission.run_id.to_string();
        wait_until_answering(&client).await?;
        let options = super::watch::WatchOptions { json_events: false, quiet: false };
        let summary = super::watch::follow(&client, &run, options).await?;
        render::summary(&summary);
        if summary.status == opflow_api_model::RunStatus::Succeeded {
            run::print_leaf_outputs(&client, &run).await?;
        }
        return Ok(super::exit::exit_code(summary.status));
    }
    let summary = wait_for(store, submission.run_id).await?;
    render::summary(&opflow_api_model::RunSummary::from(summary.clone()));
    if summary.status == crate::store::runs::RunStatus::Succeeded {
        print_leaf_outputs(store, submission.run_id).await?;
    }
    Ok(super::exit::exit_code(summary.status.into()))
}

/// The example op binaries, from the directory this `opflow` binary is in.
fn example_ops() -> anyhow::Result<Vec<PathBuf>> {
    let exe = std::env::current_exe().context("finding the opflow binary's directory")?;
    let dir = exe.parent().context("the opflow binary has no parent directory")?;
    let binaries: Vec<PathBuf> = EXAMPLE_OPS.iter().map(|name| dir.join(name)).collect();
    let missing: Vec<String> =
        binaries.iter().filter(|b| !b.exists()).map(|b| b.display().to_string()).collect();
    if !missing.is_empty() {
        return Err(InvalidInput(format!(
            "example op binaries not found: {}; build them with `cargo build --workspace --bins`, or name op \
             binaries on the command line",
            missing.join(", ")
        ))
        .into());
    }
    Ok(binaries)
}

/// A client of the API this `opflow up` serves, unless its port is chosen by the system
/// (0) or it needs a token.
fn own_api(settings: &Settings) -> anyhow::Result<Option<super::client::ApiClient>> {
    let addr = settings.api_addr;
    if addr.port() == 0 || settings.api_auth.required_on(addr) {
        return Ok(None);
    }
    let host = if addr.ip().is_unspecified() {
        std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, addr.port()))
    } else {
        addr
    };
    Ok(Some(super::client::ApiClient::new(&format!("http://{host}"), None)?))
}

/// Waits (a few seconds at most) for the in-process API to answer.
async fn wait_until_answering(client: &super::client::ApiClient) -> anyhow::Result<()> {
    let mut last = None;
    for _ in 0..100 {
        match client.get::<serde_json::Value>("/readyz").await {
            Ok(_) => return Ok(()),
            Err(error) => last = Some(error),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no answer")).context("waiting for this opflow up's API"))
}

/// How often `up --run` reads the run's counters when it cannot follow its own API (on a
/// port the system chose, or behind a token): then it waits on the store directly.
const POLL: std::time::Duration = std::time::Duration::from_millis(200);
/// Leaf assets with at most this many steps have their outputs printed at the end.
const SHOW_OUTPUTS_UP_TO: u32 = 20;
/// The outputs of at most this many leaf assets are printed (a plan may have thousands).
const SHOW_LEAVES: u32 = 10;

/// Waits until the run ends, with a progress bar on a terminal.
async fn wait_for(
    store: &crate::store::Store,
    run: opflow_protocol::RunId,
) -> anyhow::Result<crate::store::runs::RunSummaryRow> {
    let mut progress = render::Progress::new(false);
    loop {
        let Some(p) = store.runs().progress(run).await? else {
            return Err(InvalidInput(format!("no run {run}")).into());
        };
        progress.update(&p, false);
        if p.status.is_finished() {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    progress.finish();
    store.runs().summary(run).await?.ok_or_else(|| InvalidInput(format!("no run {run}")).into())
}

/// Prints the outputs of the plan's final assets (those nothing depends on), when small:
/// of the first [`SHOW_LEAVES`] leaves.
async fn print_leaf_outputs(store: &crate::store::Store, run: opflow_protocol::RunId) -> anyhow::Result<()> {
    use crate::store::following::AssetQuery;
    let leaves = AssetQuery { leaf: Some(true), ..AssetQuery::default() };
    for asset in store.following().assets(run, leaves, None, SHOW_LEAVES).await? {
        if i64::from(asset.steps) > i64::from(SHOW_OUTPUTS_UP_TO) {
            continue;
        }
        say!("outputs of `{}`:", asset.name);
        let range = store.following().asset_steps(run, &asset.name).await?;
        let rows = store.runs().outputs(run, range, None, SHOW_OUTPUTS_UP_TO).await?;
        let steps: Vec<(i32, i32)> = rows.iter().map(|row| (row.step_id, row.asset_index)).collect();
        let labels = store.runs().step_labels(run, &steps).await?;
        for row in rows {
            let output = row.output.as_ref().map(render::output_line).unwrap_or_default();
            let label = labels.get(&row.step_id).map_or(row.asset.as_str(), String::as_str);
            say!("  {label}  {output}");
        }
    }
    Ok(())
}
