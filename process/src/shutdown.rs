//! Signals to a cancellation token: SIGTERM (Kubernetes, `opflow up`) and SIGINT (Ctrl-C)
//! both ask for a drain (finish what is in hand, take nothing new), never an abort.

use tokio_util::sync::CancellationToken;

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
