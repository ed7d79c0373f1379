//! The log itself: streams, the global log, live server-sent events, and the audit.

use super::AppState;
use super::auth::{Auth, Role};
use super::body::Path;
use super::body::Query;
use super::error::ApiError;
use crate::audit::{Live, audit as run_audit};
use crate::store::{RecordedEvent, Subscription};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use std::convert::Infallible;

/// Most live-event (SSE) subscribers at once; beyond it a subscription answers 503.
pub const SSE_SUBSCRIBERS_MAX: usize = 256;

/// Most events one page of `/v1/streams` or `/v1/events` returns.
pub const API_PAGE_EVENTS_MAX: usize = 1_000;
const API_PAGE_EVENTS_DEFAULT: usize = 100;

#[derive(Deserialize)]
pub struct PageQuery {
    pub from_version: Option<u64>,
    pub from_position: Option<u64>,
    pub limit: Option<usize>,
    /// Live events only: a comma-separated list of event types to send (all when absent).
    pub types: Option<String>,
}

/// The event types a `?types=` list names, each checked against the catalog.
fn event_types(q: &PageQuery) -> Result<Option<Vec<String>>, ApiError> {
    let Some(list) = &q.types else { return Ok(None) };
    let mut out = Vec::new();
    for t in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if !crate::domain::events::EVENT_TYPES.contains(&t) {
            let shown: String = t.chars().take(64).collect();
            return Err(ApiError::invalid("types", format!("{shown:?} is not an event type")));
        }
        out.push(t.to_string());
    }
    Ok(Some(out))
}

fn limit(q: &PageQuery) -> Result<usize, ApiError> {
    match q.limit {
        None => Ok(API_PAGE_EVENTS_DEFAULT),
        Some(0) => Err(ApiError::invalid("limit", "must be at least 1")),
        Some(n) if n > API_PAGE_EVENTS_MAX => Err(ApiError::invalid(
            "limit",
            format!("must be at most {API_PAGE_EVENTS_MAX}"),
        )),
        Some(n) => Ok(n),
    }
}

fn page(events: Vec<RecordedEvent>, next: Option<(&str, u64)>) -> Response {
    let list: Vec<_> = events.iter().map(RecordedEvent::to_json).collect();
    let mut v = json!({"events": list});
    if let Some((k, n)) = next {
        v[k] = json!(n);
    }
    axum::Json(v).into_response()
}

pub async fn read_stream(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(stream): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Response, ApiError> {
    c.require(&[Role::Operator, Role::Auditor])?;
    let n = limit(&q)?;
    let from = q.from_version.unwrap_or(1).max(1);
    let events = s.ledger.store().read_stream(&stream, from, n).await?;
    if events.is_empty() && from == 1 {
        return Err(ApiError::not_found(format!("no stream {stream:?}")));
    }
    let next = (events.len() == n).then(|| ("next_version", events.last().map_or(from, |e| e.version + 1)));
    Ok(page(events, next))
}

pub async fn read_events(
    State(s): State<AppState>,
    Auth(c): Auth,
    Query(q): Query<PageQuery>,
) -> Result<Response, ApiError> {
    c.require(&[Role::Operator, Role::Auditor])?;
    let n = limit(&q)?;
    let from = q.from_position.unwrap_or(1).max(1);
    let events = s.ledger.store().read_all(from - 1, n).await?;
    let next = (events.len() == n).then(|| ("next_position", events.last().map_or(from, |e| e.position + 1)));
    Ok(page(events, next))
}

/// Server-sent events from `Last-Event-ID` (exclusive; or `?from_position=`, inclusive):
/// catch up from the store, then follow live appends. Each event's `id:` is its position.
pub async fn live(
    State(s): State<AppState>,
    Auth(c): Auth,
    headers: HeaderMap,
    Query(q): Query<PageQuery>,
) -> Result<Response, ApiError> {
    c.require(&[Role::Operator, Role::Auditor])?;
    let after = match headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        Some(v) => v
            .trim()
            .parse::<u64>()
            .map_err(|_| ApiError::invalid("Last-Event-ID", "must be a position (a whole number)"))?,
        None => q.from_position.map_or(0, |p| p.saturating_sub(1)),
    };
    let types = event_types(&q)?;
    let slot =
        s.sse_slots.clone().try_acquire_owned().map_err(|_| {
            ApiError::unavailable(format!("{SSE_SUBSCRIBERS_MAX} live subscribers are already connected"))
        })?;
    let sub = Subscription::new(s.ledger.store().clone(), after);
    // The slot is held by the stream and freed when the client goes away; the stream ends
    // when the server stops, so that a graceful shutdown does not wait for it forever.
    let stream = futures_util::stream::unfold((sub, slot, s.stopping.clone()), move |(mut sub, slot, mut stopping)| {
        let types = types.clone();
        async move {
            let next = loop {
                if *stopping.borrow() {
                    return None;
                }
                let next = tokio::select! {
                    r = sub.next() => r,
                    _ = stopping.wait_for(|s| *s) => return None,
                };
                match (&next, &types) {
                    (Ok(r), Some(types)) if !types.contains(&r.event_type) => continue,
                    _ => break next,
                }
            };
            match next {
                Ok(r) => {
                    let ev = SseEvent::default()
                        .id(r.position.to_string())
                        .event(r.event_type.clone())
                        .data(r.to_json().to_string());
                    Some((Ok::<_, Infallible>(ev), (sub, slot, stopping)))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "live events stopped");
                    None
                }
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

pub async fn audit(State(s): State<AppState>, Auth(c): Auth) -> Result<Response, ApiError> {
    c.require(&[Role::Auditor])?;
    let live = s.projections.read(|b| b.clone());
    let mut report = run_audit(s.ledger.store().as_ref(), Live::Books(Box::new(live)), |_, _| {}).await?;
    if let Some(path) = s.projections.snapshot_path() {
        let kept = crate::projections::engine::quarantine_path(path);
        crate::audit::check_quarantined(s.ledger.store().as_ref(), &kept, &mut report).await?;
    }
    Ok(axum::Json(report).into_response())
}
