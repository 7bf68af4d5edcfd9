//! The delivery task: sends due webhook deliveries from the outbox, at least once, while
//! this dispatcher leads.
//!
//! - **Waking**: on the trigger's NOTIFY (a run ended) and on a short poll (retries that
//!   came due, a missed notification, another dispatcher's lease that ran out).
//! - **Claiming**: `FOR UPDATE SKIP LOCKED` under a lease (see
//!   [`Store::claim_due_webhooks`]), so two dispatchers never send one delivery at once, and
//!   one that dies mid-attempt leaves it due again.
//! - **Bounded and fair**: at most [`CONCURRENCY`] attempts at once, each bounded by the
//!   client's timeout ([`target::ATTEMPT_TIMEOUT`]), and at most [`PER_TARGET`] of them to
//!   one target (host and port); due deliveries are claimed round-robin across targets. So
//!   a dead or slow receiver, however many deliveries it has due (one submitter's thousands
//!   of runs notifying a blackholed address), holds [`PER_TARGET`] slots, each for at most
//!   the attempt timeout, and every other target's deliveries go out beside it.
//! - **Outcome**: 2xx is delivered; anything else is retried with capped exponential
//!   backoff and jitter (first retry 1–2 s later, then doubling, at most
//!   `webhooks_max_backoff`) until `webhooks_retry_for` after the run ended (or the
//!   redelivery), then failed. Every attempt's outcome goes through [`record_attempt`].

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::keyed_counts::KeyedCounts;
use crate::store::{
    StoreError,
    lease::LeaderStore,
    webhooks::{AttemptRecord, DueDeliveryRow, NextStep},
};
use crate::webhooks::{
    sign::{Secret, message_id},
    target,
};

/// Most attempts in flight at once.
pub const CONCURRENCY: usize = 32;
/// Most attempts in flight at once to one target (a URL's host and port).
pub const PER_TARGET: usize = 4;
/// How often due deliveries are looked for without a notification.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// How long a claimed delivery is hidden from other claims: well over an attempt.
const CLAIM_LEASE: Duration = Duration::from_secs(60);
/// The first retry's base delay (jitter adds up to as much again).
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest error text kept per attempt.
const MAX_ERROR_CHARS: usize = 500;

/// How long deliveries are retried, and how far apart at most.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryRetryPolicy {
    pub retry_for: Duration,
    pub max_backoff: Duration,
}

impl DeliveryRetryPolicy {
    /// The pause before the retry that follows `attempts_made` failed attempts: exponential
    /// from [`FIRST_RETRY`] with jitter (`opflow_process::backoff::pause`), never more than
    /// `max_backoff`.
    pub fn backoff(&self, attempts_made: u32) -> Duration {
        let max = self.max_backoff.max(FIRST_RETRY);
        opflow_process::backoff::pause(FIRST_RETRY, max, attempts_made).min(max)
    }

    /// What follows an attempt: delivered on success; otherwise a retry, unless it would
    /// come after the retry window that began at `retry_from`.
    pub fn next_step(
        &self,
        succeeded: bool,
        attempts_made: u32,
        retry_from: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> NextStep {
        if succeeded {
            return NextStep::Delivered;
        }
        let window = chrono::Duration::from_std(self.retry_for).unwrap_or(chrono::Duration::MAX);
        let pause = chrono::Duration::from_std(self.backoff(attempts_made)).unwrap_or(chrono::Duration::MAX);
        let retry_at = now + pause;
        if retry_at > retry_from + window { NextStep::Failed } else { NextStep::RetryAt(retry_at) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("building the webhook HTTP client failed: {0}")]
    Client(#[from] reqwest::Error),
    #[error("the webhook outbox cannot be read: {0}")]
    Store(#[from] StoreError),
}

/// Sends due deliveries; see the module docs.
pub struct Deliverer {
    store: LeaderStore,
    client: reqwest::Client,
    policy: DeliveryRetryPolicy,
    allow_private: bool,
    /// Counts every attempt's outcome (`opflow_webhook_deliveries_total`).
    metrics: Arc<crate::api::metrics::Metrics>,
}

impl Deliverer {
    pub fn new(
        store: LeaderStore,
        policy: DeliveryRetryPolicy,
        allow_private: bool,
        metrics: Arc<crate::api::metrics::Metrics>,
    ) -> Result<Self, DeliveryError> {
        Ok(Self { store, client: target::client(allow_private)?, policy, allow_private, metrics })
    }

    /// Delivers until `stop`, then waits for the attempts in flight (each bounded by the
    /// attempt timeout); an attempt cut short is simply due again later.
    pub async fn run(self, stop: CancellationToken) -> Result<(), DeliveryError> {
        let this = Arc::new(self);
        let mut listener = match this.store.webhook_outbox().listen().await {
            Ok(listener) => Some(listener),
            Err(error) => {
                tracing::warn!(%error, "cannot LISTEN for webhook deliveries; polling instead");
                None
            }
        };
        let slots = Arc::new(Semaphore::new(CONCURRENCY));
        // Attempts in flight per target, given back as each attempt's task ends.
        let per_target = KeyedCounts::default();
        let mut in_flight = JoinSet::new();
        while !stop.is_cancelled() {
            let free = slots.available_permits();
            let mut more_due = false;
            if free > 0 {
                let busy: Vec<(String, i32)> = per_target
                    .snapshot()
                    .into_iter()
                    .map(|(target, n)| (target, i32::try_from(n).unwrap_or(i32::MAX)))
                    .collect();
                match this.store.webhook_outbox().claim_due(free, CLAIM_LEASE, PER_TARGET, &busy).await {
                    Ok(due) => {
                        more_due = due.len() == free;
                        for delivery in due {
                            let slot =
                                slots.clone().acquire_owned().await.expect("the semaphore is never closed");
                            let counted = per_target.enter(delivery.target.as_deref().unwrap_or_default());
                            let this = this.clone();
                            in_flight.spawn(async move {
                                this.attempt(delivery).await;
                                drop((slot, counted));
                            });
                        }
                    }
                    Err(error) if error.is_transient() => {
                        tracing::warn!(%error, "claiming webhook deliveries failed; retrying")
                    }
                    Err(error) => return Err(error.into()),
                }
            }
            while in_flight.try_join_next().is_some() {}
            if more_due {
                // A full claim: there may be more due, as soon as a slot frees.
                if in_flight.is_empty() {
                    continue;
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    Some(_) = in_flight.join_next() => {}
                }
                continue;
            }
            let notified = async {
                match listener.as_mut() {
                    Some(l) => {
                        if let Err(error) = l.recv().await {
                            tracing::debug!(%error, "webhook listener interrupted");
                            tokio::time::sleep(POLL_EVERY).await;
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = stop.cancelled() => break,
                () = notified => {}
                () = tokio::time::sleep(POLL_EVERY) => {}
                // A freed slot of a target at its limit: its next delivery may go now.
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            }
        }
        while in_flight.join_next().await.is_some() {}
        Ok(())
    }

    /// One attempt at one delivery, recorded whatever happens.
    async fn attempt(&self, delivery: DueDeliveryRow) {
        let span = tracing::info_span!("webhook.deliver", delivery = %delivery.id, url = %delivery.url,
            run_id = %delivery.run_id, attempt = delivery.attempts + 1);
        async {
            let started_at = Utc::now();
            let clock = std::time::Instant::now();
            let outcome = self.send(&delivery, started_at.timestamp()).await;
            let (http_status, error) = match outcome {
                Ok(status) if status.is_success() => (Some(status.as_u16()), None),
                Ok(status) => (Some(status.as_u16()), Some(format!("the receiver answered {status}"))),
                Err(error) => (None, Some(error)),
            };
            let attempt = AttemptRecord { started_at, duration: clock.elapsed(), http_status, error };
            record_attempt(&self.store, &self.policy, &self.metrics, &delivery, attempt).await;
        }
        .instrument(span)
        .await
    }

    /// Signs and posts the delivery's body; the receiver's status, or why there was none.
    async fn send(&self, delivery: &DueDeliveryRow, timestamp: i64) -> Result<reqwest::StatusCode, String> {
        let url =
            reqwest::Url::parse(&delivery.url).map_err(|e| format!("the stored URL is invalid: {e}"))?;
        target::check_literal(&url, self.allow_private).map_err(|e| e.to_string())?;
        let secret =
            Secret::parse(&delivery.secret).map_err(|e| format!("the stored secret is invalid: {e}"))?;
        let id = message_id(delivery.id);
        let signature = secret.sign(&id, timestamp, delivery.body.as_bytes());
        let response = self
            .client
            .post(url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(delivery.body.clone())
            .send()
            .await
            .map_err(|e| error_chain(&e))?;
        Ok(response.status())
    }
}

/// The one place every attempt's outcome goes: recorded with what follows from it, counted
/// (`opflow_webhook_deliveries_total{outcome}`: `delivered`, `retrying`, `failed`) and logged.
pub async fn record_attempt(
    store: &LeaderStore,
    policy: &DeliveryRetryPolicy,
    metrics: &crate::api::metrics::Metrics,
    delivery: &DueDeliveryRow,
    attempt: AttemptRecord,
) {
    let attempts_made = u32::try_from(delivery.attempts + 1).unwrap_or(u32::MAX);
    let succeeded = attempt.error.is_none();
    let next = policy.next_step(succeeded, attempts_made, delivery.retry_from, Utc::now());
    let attempt = AttemptRecord { error: attempt.error.map(|e| truncate(e, MAX_ERROR_CHARS)), ..attempt };
    let status = attempt.http_status;
    let error = attempt.error.clone();
    let took_ms = attempt.duration.as_millis() as u64;
    // A lost write leaves the delivery claimed until its lease runs out, then it is sent again.
    match store.webhook_outbox().record_attempt(delivery.id, &attempt, next).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::info!(
                status,
                error,
                "webhook attempt not recorded: the delivery was given up meanwhile"
            );
            return;
        }
        Err(store_error) => {
            tracing::warn!(error = %store_error, "recording a webhook attempt failed; it will be sent again");
            return;
        }
    }
    metrics.webhook_delivery(match next {
        NextStep::Delivered => "delivered",
        NextStep::RetryAt(_) => "retrying",
        NextStep::Failed => "failed",
    });
    match next {
        NextStep::Delivered => tracing::info!(status, took_ms, "webhook delivered"),
        NextStep::RetryAt(at) => {
            tracing::info!(status, error, took_ms, retry_at = %at, "webhook attempt failed; retrying")
        }
        NextStep::Failed => {
            tracing::warn!(status, error, took_ms, "webhook failed; retried for as long as allowed")
        }
    }
}

/// An error and its causes on one line: reqwest's own message says little ("error sending
/// request"); the refused address or the refused connection is in its sources.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn truncate(mut text: String, chars: usize) -> String {
    if let Some((cut, _)) = text.char_indices().nth(chars) {
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// Delivers webhooks while leading. It needs no broker, so it runs for the whole lease; a
/// failure is logged and the task started again (pending deliveries wait in the outbox).
pub async fn deliver_while_leading(
    store: LeaderStore,
    policy: DeliveryRetryPolicy,
    allow_private: bool,
    metrics: Arc<crate::api::metrics::Metrics>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let deliverer = Deliverer::new(store.clone(), policy, allow_private, metrics.clone());
        let delivered = match deliverer {
            Ok(deliverer) => deliverer.run(stop.clone()).await,
            Err(error) => Err(error),
        };
        if let Err(error) = delivered {
            tracing::error!(%error, "webhook delivery stopped; starting it again in 5 s");
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_backoff_secs: u64) -> DeliveryRetryPolicy {
        DeliveryRetryPolicy {
            retry_for: Duration::from_secs(24 * 3600),
            max_backoff: Duration::from_secs(max_backoff_secs),
        }
    }

    #[test]
    fn webhook_backoff_starts_within_two_seconds_doubles_and_is_capped() {
        let policy = policy(300);
        for _ in 0..50 {
            let first = policy.backoff(1);
            assert!(first >= Duration::from_secs(1) && first < Duration::from_secs(2), "{first:?}");
            let third = policy.backoff(3);
            assert!(third >= Duration::from_secs(4) && third < Duration::from_secs(8), "{third:?}");
            assert!(policy.backoff(30) <= Duration::from_secs(300));
            assert!(policy.backoff(u32::MAX) <= Duration::from_secs(300));
        }
        assert!(self::policy(3).backoff(10) <= Duration::from_secs(3));
    }

    #[test]
    fn webhook_next_step_retries_within_the_window_then_fails() {
        let policy =
            DeliveryRetryPolicy { retry_for: Duration::from_secs(60), max_backoff: Duration::from_secs(5) };
        let start = Utc::now();
        assert_eq!(policy.next_step(true, 7, start, start), NextStep::Delivered);
        assert!(matches!(policy.next_step(false, 1, start, start), NextStep::RetryAt(at) if at > start));
        let late = start + chrono::Duration::seconds(59);
        assert_eq!(policy.next_step(false, 12, start, late), NextStep::Failed);
    }

    #[test]
    fn webhook_error_text_is_cut_to_length() {
        assert_eq!(truncate("abcdef".into(), 3), "abc…");
        assert_eq!(truncate("ab".into(), 3), "ab");
    }
}
