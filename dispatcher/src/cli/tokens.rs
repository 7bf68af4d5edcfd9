//! `opflow tokens create|list|revoke`: API tokens, managed on the database directly (an
//! administrator's command; see `api::auth`).

use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::Subcommand;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{exit::InvalidInput, render};
use crate::{settings::Settings, store::tokens::Scope};

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a token and print it: the only time it is shown (only its hash is kept)
    Create {
        /// A name to list and revoke it by, e.g. the pipeline or person it is for
        name: String,
        /// What it may do: read (runs, outputs, ops), submit (also submit and cancel runs), admin
        #[arg(long, value_enum, default_value_t = Scope::Read)]
        scope: Scope,
        /// The team whose runs it submits: runs are shared fairly between teams. Without
        /// it, its runs belong to the token's name
        #[arg(long)]
        team: Option<String>,
    },
    /// List tokens (never their secrets)
    List {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token: requests with it are refused from now on
    Revoke {
        /// The token's name
        name: String,
    },
}

pub async fn run(
    command: TokensCommand,
    settings: &Settings,
    cancel: &CancellationToken,
) -> anyhow::Result<ExitCode> {
    let store = super::admin::store(settings, cancel).await?;
    match command {
        TokensCommand::Create { name, scope, team } => {
            // Quoted cut: a refused name may be any length.
            let quoted = |text: &str| opflow_protocol::text::cut(text, 80).into_owned();
            crate::submit::check_owner(&name)
                .map_err(|why| InvalidInput(format!("token name `{}` {why}", quoted(&name))))?;
            if let Some(team) = &team {
                crate::submit::check_owner(team)
                    .map_err(|why| InvalidInput(format!("--team `{}` {why}", quoted(team))))?;
            }
            let Some(token) = store.tokens().create(&name, scope, team.as_deref()).await? else {
                return Err(InvalidInput(format!(
                    "a token named `{name}` exists; pick another name, or revoke it first with `opflow tokens revoke {name}`"
                ))
                .into());
            };
            eprintln!(
                "created token `{name}` with scope {} for team {}; it is shown only now, so keep it safe:",
                scope.as_str(),
                team.as_deref().unwrap_or(&name)
            );
            say!("{token}");
        }
        TokensCommand::List { json } => {
            let tokens = store.tokens().list().await?;
            if json {
                let tokens: Vec<TokenJson> = tokens.iter().cloned().map(Into::into).collect();
                say!("{}", serde_json::to_string_pretty(&tokens)?);
            } else if tokens.is_empty() {
                say!("no tokens; create one with `opflow tokens create <name> --scope read|submit|admin`");
            } else {
                let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
                    t.map_or_else(|| "-".to_owned(), |t| t.format("%Y-%m-%d %H:%M").to_string())
                };
                let rows: Vec<[String; 6]> = tokens
                    .iter()
                    .map(|t| {
                        [
                            t.name.clone(),
                            t.scope.as_str().to_owned(),
                            t.team.clone().unwrap_or_else(|| t.name.clone()),
                            time(Some(t.created_at)),
                            time(t.last_used_at),
                            time(t.revoked_at),
                        ]
                    })
                    .collect();
                render::table(&["NAME", "SCOPE", "TEAM", "CREATED", "LAST USED", "REVOKED"], &rows);
            }
        }
        TokensCommand::Revoke { name } => {
            if !store.tokens().revoke(&name).await? {
                return Err(InvalidInput(format!(
                    "no live token named `{name}`; `opflow tokens list` shows them"
                ))
                .into());
            }
            say!("revoked token `{name}`");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// An API token as `opflow tokens list --json` prints it, never its secret.
#[derive(Debug, Clone, Serialize)]
struct TokenJson {
    pub name: String,
    pub scope: &'static str,
    /// Whose runs it submits: its team, or its name.
    pub team: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<crate::store::tokens::TokenRow> for TokenJson {
    fn from(t: crate::store::tokens::TokenRow) -> Self {
        Self {
            team: t.team.unwrap_or_else(|| t.name.clone()),
            name: t.name,
            scope: t.scope.as_str(),
            created_at: t.created_at,
            last_used_at: t.last_used_at,
            revoked_at: t.revoked_at,
        }
    }
}
