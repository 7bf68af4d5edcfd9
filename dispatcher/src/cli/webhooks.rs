//! `opflow webhooks`: subscribe URLs to run ends, list and remove them, and look at and
//! retry deliveries, over the HTTP API (the token needs the `admin` scope).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::{ServerArgs, client::path_segment, render};

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
    /// Which run ends to send, comma-separated
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
            let mut body = json!({ "url": args.url, "events": args.events });
            if let Some(secret) = &args.secret {
                body["secret"] = json!(secret);
            }
            let created: Value = client.post("/v1/webhooks", &body, &[]).await?;
            if args.json {
                println!("{created}");
            } else {
                println!(
                    "subscribed {} to {} as {}",
                    text(&created["url"]),
                    list(&created["events"]),
                    text(&created["id"])
                );
                eprintln!(
                    "signing secret (shown once; receivers verify with it): {}",
                    text(&created["secret"])
                );
            }
        }
        WebhooksCommand::List(args) => {
            let page: Value = args.server.client()?.get("/v1/webhooks").await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&page["items"])?);
            } else {
                let rows: Vec<[String; 4]> = items(&page)
                    .map(|w| [text(&w["id"]), text(&w["url"]), list(&w["events"]), text(&w["created_at"])])
                    .collect();
                render::table(&["ID", "URL", "EVENTS", "CREATED"], &rows);
            }
        }
        WebhooksCommand::Remove(args) => {
            let client = args.server.client()?;
            client.delete_empty(&format!("/v1/webhooks/{}", path_segment(&args.id))).await?;
            println!("removed webhook {}", args.id);
        }
        WebhooksCommand::Deliveries(args) => {
            let path = format!("/v1/webhooks/deliveries?failed={}&limit={}", args.failed, args.limit);
            let page: Value = args.server.client()?.get(&path).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&page["items"])?);
            } else {
                let rows: Vec<[String; 7]> = items(&page)
                    .map(|d| {
                        let outcome = match (&d["last_http_status"], &d["last_error"]) {
                            (Value::Number(status), _) => format!("HTTP {status}"),
                            (_, Value::String(error)) => error.chars().take(60).collect(),
                            _ => String::new(),
                        };
                        [
                            text(&d["id"]),
                            text(&d["event"]),
                            text(&d["run_id"]),
                            text(&d["url"]),
                            text(&d["status"]),
                            d["attempts"].to_string(),
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
            let delivery: Value = client.post(&path, &json!({}), &[]).await?;
            println!("delivery {} queued again to {}", text(&delivery["id"]), text(&delivery["url"]));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn items(page: &Value) -> impl Iterator<Item = &Value> {
    page["items"].as_array().into_iter().flatten()
}

/// A JSON string as text, anything else as JSON.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn list(value: &Value) -> String {
    value.as_array().map(|a| a.iter().map(text).collect::<Vec<_>>().join(",")).unwrap_or_default()
}
