//! Health, readiness, metrics and the API description.

use super::AppState;
use super::error::ApiError;
use crate::metrics::{counter, gauge};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::time::Duration;

/// Ready only while the projections trail the log by at most this many events.
pub const READY_LAG_EVENTS_MAX: u64 = 10_000;
/// How long readiness waits for the store to answer.
pub const READY_STORE_TIMEOUT_MS: u64 = 2_000;

pub const OPENAPI_YAML: &str = include_str!("../../api.yaml");

pub async fn healthz() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

pub async fn readyz(State(s): State<AppState>) -> Result<Response, ApiError> {
    let head = tokio::time::timeout(Duration::from_millis(READY_STORE_TIMEOUT_MS), s.ledger.store().head())
        .await
        .map_err(|_| ApiError::unavailable("the store did not answer in time"))??;
    let applied = s.projections.position();
    let lag = head.position.saturating_sub(applied);
    if lag > READY_LAG_EVENTS_MAX {
        return Err(ApiError::unavailable(format!(
            "the projections trail the log by {lag} events"
        )));
    }
    Ok(
        axum::Json(json!({"status": "ready", "head_position": head.position, "projection_position": applied}))
            .into_response(),
    )
}

pub async fn metrics(State(s): State<AppState>) -> Response {
    let mut out = String::new();
    let m = &s.metrics;
    use std::sync::atomic::Ordering::Relaxed;
    counter(
        &mut out,
        "wattledger_appends_total",
        "Events appended by this server",
        m.appends_total.load(Relaxed),
    );
    counter(
        &mut out,
        "wattledger_append_errors_total",
        "Appends refused by the store",
        m.append_errors_total.load(Relaxed),
    );
    m.append_latency_s.render(
        &mut out,
        "wattledger_append_latency_seconds",
        "Time from decision to durable append",
    );
    if let Some(h) = s.ledger.store().group_commit_sizes() {
        h.render(
            &mut out,
            "wattledger_group_commit_requests",
            "Append requests folded into one commit",
        );
    }
    let head = *s.ledger.store().watch_head().borrow();
    let applied = s.projections.position();
    gauge(
        &mut out,
        "wattledger_head_position",
        "Last durable position of the log",
        head,
    );
    gauge(
        &mut out,
        "wattledger_projection_position",
        "Last position applied by the projections",
        applied,
    );
    gauge(
        &mut out,
        "wattledger_projection_lag_events",
        "Events recorded but not yet projected",
        head.saturating_sub(applied),
    );
    m.render_http(&mut out);
    let mut res = out.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    res
}

pub async fn openapi() -> Response {
    let mut res = OPENAPI_YAML.into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/yaml"));
    res
}
