//! A benchmark's own database and RabbitMQ vhost, created for one `opflow bench`
//! invocation and removed afterwards, so a benchmark never touches a user's runs or queues.

use std::{path::PathBuf, process::Stdio, str::FromStr};

use anyhow::{Context, bail};
use sqlx::{ConnectOptions, Connection, PgConnection, postgres::PgConnectOptions};
use tokio::process::{Child, Command};

use opflow_amqp::QueueKind;
use opflow_process::SecretUrl;

use crate::{ops::identity::BrokerUsers, settings::Settings};

/// The sandbox: URLs for the benchmark's processes, and what to remove afterwards.
pub struct Sandbox {
    pub name: String,
    pub database_url: SecretUrl,
    pub amqp_url: SecretUrl,
    /// Logs of the processes the benchmark starts.
    pub log_dir: PathBuf,
    /// The dispatcher's events queue type, as configured where the benchmark runs.
    events_queue_type: QueueKind,
    admin_options: PgConnectOptions,
    /// The broker's management API, to delete the op users `opflow up` made here.
    management_url: Option<SecretUrl>,
}

impl Sandbox {
    /// Creates `opflow_bench_<random>` as a database on the configured PostgreSQL server
    /// and as a vhost on the local RabbitMQ node (with `rabbitmqctl`).
    pub async fn create(settings: &Settings) -> anyhow::Result<Self> {
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let name = format!("opflow_bench_{suffix}");
        let admin_options = PgConnectOptions::from_str(settings.database_url.expose())
            .context("parsing database_url")?
            .database("postgres")
            // DROP DATABASE … WITH (FORCE) takes a second; that is not worth a warning.
            .disable_statement_logging();
        let mut admin = PgConnection::connect_with(&admin_options).await.with_context(|| {
            format!(
                "connecting to PostgreSQL at {} to create the benchmark's database",
                settings.database_url
            )
        })?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .context("creating the benchmark's database (the user needs CREATEDB)")?;
        close(admin).await;

        let amqp_user = opflow_amqp::Login::of(&settings.amqp_url)?.user;
        rabbitmqctl(&["add_vhost", &name]).await?;
        rabbitmqctl(&["set_permissions", "-p", &name, &amqp_user, ".*", ".*", ".*"]).await?;

        let log_dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
        Ok(Self {
            database_url: SecretUrl::new(with_path(settings.database_url.expose(), &name)),
            amqp_url: SecretUrl::new(with_path(settings.amqp_url.expose(), &name)),
            name,
            log_dir,
            events_queue_type: settings.events_queue_type,
            admin_options,
            management_url: crate::ops::identity::management_url(settings).ok(),
        })
    }

    /// A command for one of the benchmark's processes, logging to `<log_dir>/<log>.log`.
    pub fn command(&self, program: &std::path::Path, log: &str) -> anyhow::Result<Command> {
        let log = std::fs::File::create(self.log_dir.join(format!("{log}.log")))?;
        let mut command = Command::new(program);
        command
            .env("OPFLOW_DATABASE_URL", self.database_url.expose())
            .env("OPFLOW_AMQP_URL", self.amqp_url.expose())
            .env("OPFLOW_API_ADDR", "127.0.0.1:0")
            .env("OPFLOW_EVENTS_QUEUE_TYPE", self.events_queue_type.as_str())
            .env("NO_COLOR", "1")
            .env_remove("OPFLOW_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        Ok(command)
    }

    /// Starts `program args…` in the sandbox.
    pub fn spawn(&self, program: &std::path::Path, args: &[&str], log: &str) -> anyhow::Result<Child> {
        self.command(program, log)?
            .args(args)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))
    }

    /// Drops the database and the vhost, and the logs unless `keep_logs`.
    pub async fn remove(self, keep_logs: bool) {
        if let Ok(mut admin) = PgConnection::connect_with(&self.admin_options).await {
            // The sandbox's database and any a workload added (`<name>_w5`).
            let names: Vec<String> =
                sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE $1")
                    .bind(format!("{}%", self.name))
                    .fetch_all(&mut admin)
                    .await
                    .unwrap_or_else(|_| vec![self.name.clone()]);
            for name in names {
                let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                if let Err(error) = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut admin).await {
                    eprintln!("warning: could not drop the benchmark database {name}: {error}");
                }
            }
            close(admin).await;
        }
        if let Some(url) = &self.management_url {
            let deleted = async { BrokerUsers::at(url, &self.amqp_url)?.delete_all().await };
            if let Err(error) = deleted.await {
                tracing::debug!(%error, "deleting the benchmark's op users failed");
            }
        }
        if let Err(error) = rabbitmqctl(&["delete_vhost", &self.name]).await {
            eprintln!("warning: could not delete the benchmark vhost {}: {error:#}", self.name);
        }
        if !keep_logs && let Err(error) = std::fs::remove_dir_all(&self.log_dir) {
            tracing::debug!(%error, dir = %self.log_dir.display(), "removing the benchmark's logs failed");
        }
    }
}

/// `scheme://auth@host:port/<path>?query` with the path replaced by `name`.
pub fn with_path(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..].find('/').map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{name}", &base[..path_start]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// The user in an AMQP URL; RabbitMQ's default `guest` when none is given.
async fn rabbitmqctl(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("rabbitmqctl").arg("-q").args(args).output().await.context(
        "running rabbitmqctl: opflow bench creates its own vhost with it, so it runs on the broker's machine",
    )?;
    if !output.status.success() {
        bail!("rabbitmqctl {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// Closes the admin connection, saying so if that fails.
async fn close(admin: PgConnection) {
    if let Err(error) = admin.close().await {
        tracing::debug!(%error, "closing the admin connection failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database_or_vhost() {
        assert_eq!(
            with_path("postgres://postgres@127.0.0.1:5432/opflow?sslmode=disable", "b1"),
            "postgres://postgres@127.0.0.1:5432/b1?sslmode=disable"
        );
        assert_eq!(
            with_path("amqp://guest:guest@127.0.0.1:5672/%2f", "b1"),
            "amqp://guest:guest@127.0.0.1:5672/b1"
        );
        assert_eq!(with_path("amqp://127.0.0.1", "b1"), "amqp://127.0.0.1/b1");
    }
}
