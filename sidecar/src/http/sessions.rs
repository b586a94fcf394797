//! Session handlers: create, list, get, delete, send a message, poll or stream events, interrupt,
//! compact. Every handler takes the [`Owner`] (authenticated subject): another owner's session is a
//! 404.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde::Deserialize;
use serde_json::json;

use super::{AppState, Owner, json_error, query_error};
use crate::engine::session::SessionHandle;
use crate::engine::{CreateSession, SessionView, UpdateSession, valid_session_id};
use crate::error::ApiError;
use crate::store::events::{Reservation, line_seq};

fn check_id(id: &str) -> Result<(), ApiError> {
    if valid_session_id(id) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_session_id",
            "session id must match [A-Za-z0-9._-]{1,128}",
        ))
    }
}

fn created_body(view: &SessionView, resumed: bool) -> serde_json::Value {
    json!({"id": view.id, "thread_id": view.thread_id, "resumed": resumed, "state": view.state})
}

/// `POST /v1/sessions` -> 201 (created) or 200 (that id exists for this owner).
pub async fn create(
    State(st): State<AppState>,
    Owner(owner): Owner,
    body: Result<Json<CreateSession>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(json_error)?;
    let (created, view, resumed) = st.engine.create(&owner, req).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(created_body(&view, resumed))).into_response())
}

/// `GET /v1/sessions` -> `{"sessions":[...]}`.
pub async fn list(State(st): State<AppState>, Owner(owner): Owner) -> Json<serde_json::Value> {
    Json(json!({"sessions": st.engine.list(&owner).await}))
}

/// `GET /v1/sessions/{id}`.
pub async fn get_one(
    State(st): State<AppState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
) -> Result<Json<SessionView>, ApiError> {
    check_id(&id)?;
    let h = st.engine.get(&owner, &id).await?;
    Ok(Json(st.engine.view(&h)))
}

/// `DELETE /v1/sessions/{id}` -> 204; the session's waiting long-polls and event streams end at
/// once (404 `session_not_found`; a stream ends with `event: error`).
pub async fn delete(
    State(st): State<AppState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    check_id(&id)?;
    st.engine.delete(&owner, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PATCH /v1/sessions/{id}` -> 200 `<session>`: new instructions, model or effort, applied from
/// the next turn.
pub async fn update(
    State(st): State<AppState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
    body: Result<Json<UpdateSession>, JsonRejection>,
) -> Result<Json<SessionView>, ApiError> {
    check_id(&id)?;
    let Json(req) = body.map_err(json_error)?;
    Ok(Json(st.engine.configure(&owner, &id, req).await?))
}

/// `POST /v1/sessions/{id}/messages` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    /// The message text (may be empty when the message has images).
    #[serde(default)]
    pub text: String,
    /// Images, in order: `data:image/{png,jpeg,gif,webp};base64,...` URLs (see
    /// [`crate::engine::images`] for the checks and the limits).
    #[serde(default)]
    pub images: Vec<ImageInput>,
    /// Optional client key, `[A-Za-z0-9._:-]{1,128}`: a message sent again with a key this
    /// session already accepted is not queued again (the answer is 200 with the first message's
    /// id and `"duplicate": true`), so a client may retry a send whose answer it never got.
    pub idempotency_key: Option<String>,
}

/// One image of a message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageInput {
    /// `data:<media type>;base64,<data>` (remote `https:` URLs are refused).
    pub url: String,
}

/// `POST /v1/sessions/{id}/messages` -> 202 `{"message_id","queued"}` once the message is on disk;
/// 200 `{"message_id","queued","duplicate":true}` for a repeated idempotency key.
pub async fn send(
    State(st): State<AppState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
    body: Result<Json<SendMessage>, JsonRejection>,
) -> Result<Response, ApiError> {
    check_id(&id)?;
    let Json(msg) = body.map_err(json_error)?;
    let (message_id, queued, duplicate) = st
        .engine
        .send(
            &owner,
            &id,
            msg.text,
            msg.images.into_iter().map(|i| i.url).collect(),
            msg.idempotency_key,
        )
        .await?;
    if duplicate {
        return Ok((
            StatusCode::OK,
            Json(json!({"message_id": message_id, "queued": queued, "duplicate": true})),
        )
            .into_response());
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"message_id": message_id, "queued": queued})),
    )
        .into_response())
}

/// `POST /v1/sessions/{id}/interrupt` -> 202.
pub async fn interrupt(
    State(st): State<AppState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_id(&id)?;
    st.engine.interrupt(&owner, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"accepted": true}))).into_response())
}

/// `POST /v1/sessions/{id}/compact` -> 202.
pub async fn compact(
    State(st): State<AppState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_id(&id)?;
    st.engine.compact(&owner, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"accepted": true}))).into_response())
}

/// `GET .../events` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Return events with seq > after (default 0).
    #[serde(default)]
    pub after: u64,
    /// Seconds to wait when none exist yet (default 0, at most 120).
    #[serde(default)]
    pub wait: u64,
    /// Most events to return (default 500, at most 1000).
    pub limit: Option<usize>,
}

/// `GET /v1/sessions/{id}/events?after=SEQ&wait=SECS&limit=N` -> `{"events":[...],"next":SEQ}`.
/// Returns at once when events after SEQ exist, else long-polls up to `wait` seconds.
pub async fn events(
    State(st): State<AppState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    check_id(&id)?;
    let Query(q) = q.map_err(query_error)?;
    let limits = st.engine.ctx().config.limits;
    let limit = q.limit.unwrap_or(500).clamp(1, limits.max_events_per_poll);
    let wait = Duration::from_secs(q.wait.min(limits.max_wait_secs));
    // A poll that may wait holds one of the owner's long-poll permits while it is open.
    let _permit = if wait.is_zero() {
        None
    } else {
        Some(st.engine.poll_permit(&owner)?)
    };
    let h = st.engine.get(&owner, &id).await?;
    check_cursor(&h, q.after)?;
    let mut lines = poll(&h, q.after, limit, wait, st.shutdown.clone()).await?;
    lines.truncate(within_bytes(&lines, limits.max_poll_bytes));
    let next = lines.last().and_then(|l| line_seq(l)).unwrap_or(q.after);
    reserve_seen(&h, next).await?;
    let mut body = String::with_capacity(32 + lines.iter().map(|l| l.len() + 1).sum::<usize>());
    body.push_str("{\"events\":[");
    for (i, l) in lines.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(l);
    }
    body.push_str("],\"next\":");
    body.push_str(&next.to_string());
    body.push('}');
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

/// How many of `lines` fit in `max` bytes (at least one): a poll answer is bounded in bytes as
/// well as in events, so 20 clients polling a log of large results cannot each pull megabytes.
fn within_bytes(lines: &[Arc<str>], max: usize) -> usize {
    let mut bytes = 0;
    for (i, l) in lines.iter().enumerate() {
        bytes += l.len() + 1;
        if i > 0 && bytes > max {
            return i;
        }
    }
    lines.len()
}

/// Makes sure no seq up to `seq` can be reused after a power loss before a client is given it
/// (see `store::mark`): usually nothing to do; once per few thousand events one small synced
/// write, off the async workers.
///
/// # Errors
/// 500 when the reservation cannot be written (the events are then not handed out).
async fn reserve_seen(h: &Arc<SessionHandle>, seq: u64) -> Result<(), ApiError> {
    let reserve = {
        let h = h.clone();
        move || h.events.reserve(seq)
    };
    match h.events.reservation(seq) {
        Reservation::Covered => Ok(()),
        Reservation::TopUp => {
            tokio::task::spawn_blocking(move || {
                if let Err(e) = reserve() {
                    tracing::warn!(error = %e, "cannot extend the event seq reservation");
                }
            });
            Ok(())
        }
        Reservation::Required => tokio::task::spawn_blocking(reserve)
            .await
            .map_err(|e| ApiError::internal(format!("reservation task failed: {e}")))?
            .map_err(|e| ApiError::internal(format!("cannot record the events handed out: {e}"))),
    }
}

/// A cursor past the session's last event (a client that kept one across a state-dir wipe, or
/// made one up) would wait for events that may never come: refused instead.
///
/// # Errors
/// 400 `invalid_cursor`, whose message gives the log's `next` (the highest valid cursor).
fn check_cursor(h: &SessionHandle, after: u64) -> Result<(), ApiError> {
    let last = h.events.readable_last_seq();
    if after > last {
        return Err(ApiError::bad_request(
            "invalid_cursor",
            format!("cursor {after} is past the last event; the log's next is {last}"),
        ));
    }
    Ok(())
}

/// Events after `after`, waiting up to `wait` for the first one (or until the sidecar starts
/// shutting down).
///
/// # Errors
/// 404 `session_not_found` as soon as the session is deleted (also while waiting); 500 when the
/// log cannot be read.
async fn poll(
    h: &Arc<SessionHandle>,
    after: u64,
    limit: usize,
    wait: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<Vec<Arc<str>>, ApiError> {
    let mut rx = h.events.subscribe();
    let mut deleted = h.watch_deleted();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        rx.borrow_and_update();
        if *deleted.borrow_and_update() {
            return Err(ApiError::session_not_found(&h.key.id));
        }
        // Recent events come from memory; older ones are read from the file off the async
        // workers (a slow disk or a large log never stalls other requests).
        let lines = match h.events.read_tail(after, limit) {
            Some(lines) => lines,
            None => {
                let h = h.clone();
                tokio::task::spawn_blocking(move || h.events.read_after(after, limit))
                    .await
                    .map_err(|e| ApiError::internal(format!("read task failed: {e}")))?
                    .map_err(|e| ApiError::internal(format!("cannot read events: {e}")))?
            }
        };
        if !lines.is_empty() {
            return Ok(lines);
        }
        if *shutdown.borrow() {
            return Ok(Vec::new());
        }
        tokio::select! {
            changed = tokio::time::timeout_at(deadline, rx.changed()) => match changed {
                Ok(Ok(())) => continue,
                _ => return Ok(Vec::new()),
            },
            _ = shutdown.changed() => return Ok(Vec::new()),
            _ = deleted.changed() => continue,
        }
    }
}

/// `GET /v1/sessions/{id}/events/stream`: the same events as server-sent events (`id:` = seq,
/// `event:` = type), resuming after the `Last-Event-ID` header (or `?after=`).
pub async fn stream(
    State(st): State<AppState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
    headers: HeaderMap,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    check_id(&id)?;
    let Query(q) = q.map_err(query_error)?;
    let after = match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_last_event_id",
                    "Last-Event-ID must be an event seq",
                )
            })?,
        None => q.after,
    };
    let permit = st.engine.poll_permit(&owner)?;
    let h = st.engine.get(&owner, &id).await?;
    check_cursor(&h, after)?;
    let state = (
        h,
        after,
        VecDeque::<Arc<str>>::new(),
        st.shutdown.clone(),
        false,
    );
    let s = futures::stream::unfold(
        state,
        |(h, mut cursor, mut buf, shutdown, ended)| async move {
            loop {
                if ended {
                    return None;
                }
                if let Some(line) = buf.pop_front() {
                    cursor = line_seq(&line).unwrap_or(cursor + 1);
                    if let Err(e) = reserve_seen(&h, cursor).await {
                        let body = json!({"error": {"code": e.code, "message": e.message}});
                        let ev = SseEvent::default().event("error").data(body.to_string());
                        return Some((Ok(ev), (h, cursor, buf, shutdown, true)));
                    }
                    let kind = serde_json::from_str::<serde_json::Value>(&line)
                        .ok()
                        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned))
                        .unwrap_or_else(|| "event".to_owned());
                    let ev = SseEvent::default()
                        .id(cursor.to_string())
                        .event(kind)
                        .data(line.as_ref());
                    return Some((Ok(ev), (h, cursor, buf, shutdown, false)));
                }
                if *shutdown.borrow() {
                    return None;
                }
                match poll(&h, cursor, 100, Duration::from_secs(3600), shutdown.clone()).await {
                    Ok(lines) => buf.extend(lines),
                    Err(e) => {
                        // Deleted (or unreadable): say so once, as `event: error`, then end.
                        let body = json!({"error": {"code": e.code, "message": e.message}});
                        let ev = SseEvent::default().event("error").data(body.to_string());
                        return Some((Ok(ev), (h, cursor, buf, shutdown, true)));
                    }
                }
            }
        },
    );
    // The stream holds the owner's long-poll permit until it ends or its client goes away.
    let s = futures::StreamExt::map(s, move |ev| {
        let _held = &permit;
        ev
    });
    Ok(Sse::new(s).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
