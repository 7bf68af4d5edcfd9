//! `opflow webhooks`: subscribe URLs to run ends, list and remove them, and look at and
//! retry deliveries, over the HTTP API (the token needs the `admin` scope).

use std::process::ExitCode;

use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Subcommand};
use opflow_api_model::{AddWebhookRequest, CreatedWebhook, DeliveriesQuery, DeliveryView, Page, WebhookView};

use super::{
    client::{ServerArgs, path_segment},
    render,
};

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Subscribe a URL to run ends; prints its signing secret once
    Add(AddArgs),
    /// List the subscriptions
    List(ListArgs),
    /// Remove a subscription; its pending deliveries are given up
    Remove(RemoveArgs),
    /// List deliveries, newest first, with their last outcome
    Deliveries(DeliveriesArgs),
    /// Send a delivery again (same webhook-id and body, so receivers can dedupe)
    Redeliver(RedeliverArgs),
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// The receiver (https://…); loopback and private addresses are refused unless the
    /// dispatcher's `webhooks_allow_private` setting allows them
    pub url: String,
    /// Which events to send, comma-separated: run.succeeded, run.failed, run.canceled (how
    /// a run ended), check.failed (a check an op reported failed), freshness.failed (a cell
    /// older than its asset's freshness policy, once per materialization)
    #[arg(long, value_delimiter = ',', default_value = "run.succeeded,run.failed,run.canceled")]
    pub events: Vec<String>,
    /// The signing secret (`whsec_<base64>`); generated when absent
    #[arg(long, env = "OPFLOW_WEBHOOK_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Print the JSON answer
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// The subscription id (from `opflow webhooks list`)
    pub id: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct DeliveriesArgs {
    /// Only deliveries given up after `webhooks_retry_for`
    #[arg(long)]
    pub failed: bool,
    /// At most this many (1–1000)
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct RedeliverArgs {
    /// The delivery id (from `opflow webhooks deliveries`)
    pub delivery: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

pub async fn run(command: WebhooksCommand) -> anyhow::Result<ExitCode> {
    match command {
        WebhooksCommand::Add(args) => {
            let client = args.server.client()?;
            let body = AddWebhookRequest { url: args.url, events: args.events, secret: args.secret };
            let created: CreatedWebhook = client.post("/v1/webhooks", &body, &[]).await?;
            if args.json {
                say!("{}", serde_json::to_string(&created)?);
            } else {
                let webhook = &created.webhook;
                say!("subscribed {} to {} as {}", webhook.url, webhook.events.join(","), webhook.id);
                eprintln!("signing secret (shown once; receivers verify with it): {}", created.secret);
            }
        }
        WebhooksCommand::List(args) => {
            let page: Page<WebhookView> = args.server.client()?.get("/v1/webhooks").await?;
            if args.json {
                say!("{}", serde_json::to_string_pretty(&page.items)?);
            } else {
                let rows: Vec<[String; 4]> = page
                    .items
                    .iter()
                    .map(|w| [w.id.to_string(), w.url.clone(), w.events.join(","), time(w.created_at)])
                    .collect();
                render::table(&["ID", "URL", "EVENTS", "CREATED"], &rows);
            }
        }
        WebhooksCommand::Remove(args) => {
            let client = args.server.client()?;
            client.delete_empty(&format!("/v1/webhooks/{}", path_segment(&args.id))).await?;
            say!("removed webhook {}", args.id);
        }
        WebhooksCommand::Deliveries(args) => {
            let query = DeliveriesQuery { failed: args.failed, limit: Some(args.limit), cursor: None };
            let page: Page<DeliveryView> =
                args.server.client()?.get_with("/v1/webhooks/deliveries", &query).await?;
            if args.json {
                say!("{}", serde_json::to_string_pretty(&page.items)?);
            } else {
                let rows: Vec<[String; 7]> = page
                    .items
                    .iter()
                    .map(|d| {
                        let outcome = match (d.last_http_status, &d.last_error) {
                            (Some(status), _) => format!("HTTP {status}"),
                            (None, Some(error)) => error.chars().take(60).collect(),
                            (None, None) => String::new(),
                        };
                        [
                            d.id.to_string(),
                            d.event.clone(),
                            d.run_id.to_string(),
                            d.url.clone(),
                            d.status.clone(),
                            d.attempts.to_string(),
                            outcome,
                        ]
                    })
                    .collect();
                render::table(&["DELIVERY", "EVENT", "RUN", "URL", "STATUS", "ATTEMPTS", "LAST"], &rows);
            }
        }
        WebhooksCommand::Redeliver(args) => {
            let client = args.server.client()?;
            let path = format!("/v1/webhooks/deliveries/{}/redeliver", path_segment(&args.delivery));
            let delivery: DeliveryView = client.post_empty(&path).await?;
            say!("delivery {} queued again to {}", delivery.id, delivery.url);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A time as the API writes it (RFC 3339, UTC).
fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}
