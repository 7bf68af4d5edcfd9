//! `GET /v1/runs/{id}/events`: a run's events as Server-Sent Events, resumable.
//!
//! Each event's SSE `id:` is its per-run sequence number (migration 0011). A client that
//! reconnects with `Last-Event-ID: n` (or `?after=n`) gets every event numbered after `n`
//! exactly once and in order, because the numbers of a run become visible in order (see
//! `store::apply`). The stream reads the store, so it replays a finished run the same way
//! it follows a live one; it ends, after the last event, with an `end` event carrying the
//! run's summary (no `id:`, so it is not something to resume after).
//!
//! Followers do not poll the database in a loop: one `LISTEN` per process (`api::followers`)
//! tells each stream when its run got events, with a slow poll as a safety net.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use axum::{
    Extension,
    extract::{ConnectInfo, Path, Query, State, rejection::QueryRejection},
    http::HeaderMap,
    response::sse::{Event as SseEvent, KeepAlive, Sse},
};
use futures_util::Stream;
use opflow_api_model::{EVENT_KINDS, ErrorBody, EventsQuery, RunEvent, RunSummary};
use opflow_protocol::RunId;
use tokio::sync::mpsc;

use super::{
    auth::Caller, error::ApiError, followers::SAFETY_POLL, from_rows::run_event, params::run_id,
    state::ApiState, stream_limits::StreamSlot,
};
use crate::store::following::EventFilter;

/// Events read per query; a stream catching up reads page after page.
const PAGE: u32 = 500;
/// Event numbers one query looks through: with `?kinds=` or `?step=` that match few of a
/// run's events, a query passes at most this many rows, and the stream moves on window by
/// window, never reading a long run's whole history at once.
const SCAN_WINDOW: i64 = 5_000;
/// How often an idle stream sends a comment, so proxies keep the connection open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Events a slow client may fall behind by before the stream waits for it.
const STREAM_BUFFER: usize = 256;

/// `GET /v1/runs/{id}/events`.
#[utoipa::path(get, path = "/v1/runs/{id}/events", operation_id = "stream_events", tag = "runs",
    params(
        ("id" = String, Path, description = "The run id (a UUID)"),
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this event (the `id:` of the last one received)"),
        EventsQuery,
    ),
    responses(
        (status = 200, description = "Server-Sent Events: `id:` the event's seq, `event:` its kind, `data:` a RunEvent; \
            after the last event of an ended run, `event: end` with the run's RunSummary", content_type = "text/event-stream", body = RunEvent),
        (status = 400, description = "A malformed id, kind or Last-Event-ID", body = ErrorBody),
        (status = 404, description = "No such run", body = ErrorBody),
        (status = 429, description = "The caller holds as many streams as it may (`api_streams_per_token`)", body = ErrorBody),
    ))]
pub async fn stream(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    query: Result<Query<EventsQuery>, QueryRejection>,
    headers: HeaderMap,
    caller: Option<Extension<Caller>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let Query(query) = query?;
    let run = run_id(&id)?;
    let slot = take_slot(
        &state,
        caller.as_ref().map(|Extension(caller)| caller),
        peer.as_ref().map(|Extension(ConnectInfo(peer))| peer),
    )?;
    let after = match headers.get("last-event-id") {
        Some(value) => value.to_str().ok().and_then(|v| v.trim().parse::<i64>().ok()).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "Last-Event-ID `{}` is not an event id of this stream (a number)",
                String::from_utf8_lossy(value.as_bytes())
            ))
        })?,
        None => query.after.unwrap_or(0),
    };
    let filter =
        EventFilter { kinds: parse_kinds(query.kinds.as_deref())?, step: query.step.map(|s| s as i32) };
    if state.store.following().status(run).await?.is_none() {
        return Err(ApiError::NotFound(format!("no run {run}")));
    }
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let follow = query.follow.unwrap_or(true);
    tokio::spawn(produce(state, run, after, filter, follow, tx, slot));
    Ok(sse_of(rx))
}

/// An SSE answer of what a producer task sends on `rx`, with a keep-alive comment every
/// 15 s: ends when the producer drops its sender. The UI's live pages answer the same way.
pub fn sse_of(rx: mpsc::Receiver<SseEvent>) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let events =
        futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|event| (Ok(event), rx)) },
        );
    Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

/// A stream slot of the caller: counted per token, or per client address on an API
/// without tokens. The UI's live pages count against the same limit.
pub fn take_slot(
    state: &ApiState,
    caller: Option<&Caller>,
    peer: Option<&SocketAddr>,
) -> Result<StreamSlot, ApiError> {
    match (caller, peer) {
        (Some(caller), _) => {
            state.streams.take(&format!("token:{}", caller.name), &format!("token `{}`", caller.name))
        }
        (None, Some(peer)) => {
            state.streams.take(&format!("address:{}", peer.ip()), &format!("client {}", peer.ip()))
        }
        (None, None) => state.streams.take("anonymous", "this client"),
    }
}

/// Validates `?kinds=`.
fn parse_kinds(kinds: Option<&str>) -> Result<Option<Vec<String>>, ApiError> {
    let Some(kinds) = kinds else { return Ok(None) };
    let kinds: Vec<String> =
        kinds.split(',').map(str::trim).filter(|k| !k.is_empty()).map(str::to_owned).collect();
    if let Some(unknown) = kinds.iter().find(|k| !EVENT_KINDS.contains(&k.as_str())) {
        return Err(ApiError::BadRequest(format!(
            "`{unknown}` is not an event kind; kinds are {}",
            EVENT_KINDS.join(", ")
        )));
    }
    Ok(Some(kinds))
}

/// Sends the run's events after `after` to `tx` until the run has ended and every event
/// is sent, the client goes away, or the API shuts down.
async fn produce(
    state: ApiState,
    run: RunId,
    mut after: i64,
    filter: EventFilter,
    follow: bool,
    tx: mpsc::Sender<SseEvent>,
    // Held while the stream lives: the caller's count goes down when it ends.
    _slot: StreamSlot,
) {
    let followers = state.followers.clone();
    let mut wakeups = followers.watch(run);
    loop {
        // The status and the last event's number are read before the events: every event
        // numbered up to it is visible to the read that follows, and a run that had ended
        // by then has all its events among them.
        let read = async {
            let following = state.store.following();
            let Some((status, last)) = following.status_and_last_event(run).await? else {
                return Ok(None);
            };
            let upto = last.min(after.saturating_add(SCAN_WINDOW));
            let events = if upto > after {
                following.events_between(run, after, upto, &filter, PAGE).await?
            } else {
                Vec::new()
            };
            Ok::<_, crate::store::StoreError>(Some((status, last, upto, events)))
        };
        let (status, last, upto, events) = match read.await {
            Ok(Some(read)) => read,
            Ok(None) => return, // deleted (retention) while followed
            Err(error) => {
                tracing::warn!(%error, %run, "reading a run's events failed; retrying");
                tokio::select! {
                    () = followers.shutdown().cancelled() => return,
                    () = tokio::time::sleep(SAFETY_POLL) => continue,
                }
            }
        };
        let full = events.len() == PAGE as usize;
        for event in events {
            after = event.seq;
            let kind = event.kind.clone();
            let data = run_event(run, event);
            let Ok(sse) = SseEvent::default().id(after.to_string()).event(kind).json_data(&data) else {
                continue;
            };
            if tx.send(sse).await.is_err() {
                return; // the client went away
            }
        }
        if !full {
            // Every event of the window that the filter matches was sent.
            after = after.max(upto);
        }
        if after < last {
            continue;
        }
        if status.is_finished() || !follow {
            let end = match state.store.runs().summary(run).await {
                Ok(Some(summary)) => SseEvent::default()
                    .event("end")
                    .json_data(RunSummary::from(summary))
                    .unwrap_or_else(|_| SseEvent::default().event("end").data("{}")),
                _ => SseEvent::default().event("end").data("{}"),
            };
            let _ = tx.send(end).await;
            return;
        }
        // Wait for this run's next events (or any run's, when the notice names none).
        tokio::select! {
            () = followers.shutdown().cancelled() => return,
            () = tx.closed() => return,
            () = wakeups.next() => {}
            () = tokio::time::sleep(SAFETY_POLL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_checked_against_the_known_ones() {
        assert_eq!(parse_kinds(None).unwrap(), None);
        assert_eq!(parse_kinds(Some("log, progress")).unwrap(), Some(vec!["log".into(), "progress".into()]));
        let Err(ApiError::BadRequest(message)) = parse_kinds(Some("log,heartbeat")) else {
            panic!("heartbeat is not recorded, so it is no kind to ask for")
        };
        assert!(message.contains("`heartbeat`") && message.contains("succeeded"), "{message}");
    }
}
