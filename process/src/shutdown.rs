//! Signals to a cancellation token: SIGTERM (Kubernetes, `opflow up`) and SIGINT (Ctrl-C)
//! both ask for a drain (finish what is in hand, take nothing new), never an abort.

use tokio_util::sync::CancellationToken;

/// Cancels `drain` on the first SIGTERM or SIGINT, and `force` on the next one: for a
/// process that drains others (`opflow up`), where a second Ctrl-C means "stop now".
/// Runs until `force` is cancelled.
pub async fn cancel_on_signals(drain: CancellationToken, force: CancellationToken) {
    let (mut terminate, mut interrupt) = match (
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()),
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()),
    ) {
        (Ok(terminate), Ok(interrupt)) => (terminate, interrupt),
        (Err(error), _) | (_, Err(error)) => {
            tracing::warn!(%error, "cannot install signal handlers; falling back to Ctrl-C only");
            cancel_on_signal(drain).await;
            return;
        }
    };
    loop {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
            () = force.cancelled() => return,
        }
        if drain.is_cancelled() {
            tracing::warn!("second signal: stopping at once");
            force.cancel();
            return;
        }
        tracing::info!("signal: draining, then exiting (send another to stop at once)");
        drain.cancel();
    }
}

/// Cancels `token` on the first SIGTERM or SIGINT. Runs until then.
pub async fn cancel_on_signal(token: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            // Without a SIGTERM handler the process still stops on SIGTERM, just undrained;
            // Ctrl-C below keeps working. Say so rather than pretend.
            Err(error) => {
                tracing::warn!(%error, "cannot install a SIGTERM handler; SIGTERM will not drain");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => tracing::info!("SIGTERM: draining, then exiting"),
        _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C: draining, then exiting"),
        () = token.cancelled() => return,
    }
    token.cancel();
}
