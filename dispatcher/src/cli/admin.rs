//! What the administrators' commands (`ops`, `plan`, `tokens`, `gc`) share: they use the
//! run store directly, connected for one command.

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::{settings::Settings, store::Store};

/// Connects to the run store for a one-shot command.
pub async fn store(settings: &Settings, cancel: &CancellationToken) -> anyhow::Result<Store> {
    Store::connect(&settings.database_url, cancel).await.context("connecting to the run store")
}
