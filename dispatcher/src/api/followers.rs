//! One `LISTEN` per process on the store's events channel, fanned out to every events
//! stream (`GET /v1/runs/{id}/events`) so that no stream polls the database in a loop.

use std::{sync::Arc, time::Duration};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use opflow_protocol::RunId;

use crate::store::Store;

/// How often a stream looks without being told: only matters if a notification is lost.
pub const SAFETY_POLL: Duration = Duration::from_secs(10);

/// Tells streams that a run got events: fed by one `LISTEN` on the store's events channel.
/// Cheap to clone.
#[derive(Clone)]
pub struct Followers {
    /// The runs of each recorded batch; `None` means "any run" (a batch of many runs, or
    /// notifications lost while the listener reconnected).
    wakeups: broadcast::Sender<Option<Arc<str>>>,
    /// Ends every stream when the API shuts down, so draining does not wait on them.
    shutdown: CancellationToken,
}

impl Followers {
    /// Listens on the store's events channel until `shutdown`, reconnecting as needed.
    pub fn start(store: Store, shutdown: CancellationToken) -> Self {
        let (wakeups, _) = broadcast::channel(1024);
        let followers = Self { wakeups: wakeups.clone(), shutdown: shutdown.clone() };
        tokio::spawn(async move {
            while !shutdown.is_cancelled() {
                let mut listener = match store.following().listen().await {
                    Ok(listener) => listener,
                    Err(error) => {
                        tracing::warn!(%error, "cannot listen for recorded events; streams poll until it can");
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(SAFETY_POLL) => continue,
                        }
                    }
                };
                // Anything recorded while not listening: every stream looks.
                let _ = wakeups.send(None);
                loop {
                    let notification = tokio::select! {
                        () = shutdown.cancelled() => return,
                        notification = listener.recv() => notification,
                    };
                    match notification {
                        Ok(n) if n.payload().is_empty() => {
                            let _ = wakeups.send(None);
                        }
                        Ok(n) => {
                            let _ = wakeups.send(Some(Arc::from(n.payload())));
                        }
                        Err(error) => {
                            tracing::warn!(%error, "lost the events listener; reconnecting");
                            break;
                        }
                    }
                }
            }
        });
        followers
    }

    /// No listener: streams find events by their safety poll alone (for tests of the router).
    pub fn polling_only(shutdown: CancellationToken) -> Self {
        Self { wakeups: broadcast::channel(1).0, shutdown }
    }

    /// Wakes a stream when `run` may have got events: see [`RunWakeups::next`].
    pub fn watch(&self, run: RunId) -> RunWakeups {
        RunWakeups { receiver: self.wakeups.subscribe(), run: run.to_string() }
    }

    /// Cancelled when the API shuts down: every stream ends then.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }
}

/// One stream's wake-ups.
pub struct RunWakeups {
    receiver: broadcast::Receiver<Option<Arc<str>>>,
    run: String,
}

impl RunWakeups {
    /// Returns once a notice names this run, names no run (a large batch, or notices lost
    /// while the listener reconnected), or notices were missed; never once the listener has
    /// stopped for good (the stream's safety poll still runs).
    pub async fn next(&mut self) {
        loop {
            match self.receiver.recv().await {
                Ok(Some(runs)) if !runs.split(',').any(|r| r == self.run) => continue,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => return,
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            }
        }
    }
}
