//! Read routes, answered from the projections in memory. `?min_position=N` waits (bounded)
//! until the projections have applied position N: read-your-writes across servers.

use super::AppState;
use super::auth::{Auth, Role};
use super::body::Path;
use super::body::Query;
use super::error::ApiError;
use crate::domain::postings::parse_account;
use crate::domain::time::{Period, parse_time};
use crate::projections::render::{statement_csv, statement_html};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;
use serde_json::Value;
use std::time::Duration;

/// Longest wait for `min_position`, in milliseconds; then 503 with `Retry-After`.
pub const MIN_POSITION_WAIT_MS_MAX: u64 = 5_000;

#[derive(Deserialize, Default)]
pub struct ReadQuery {
    pub min_position: Option<u64>,
    pub format: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub status: Option<String>,
}

pub async fn wait_min_position(s: &AppState, min: Option<u64>) -> Result<(), ApiError> {
    if let Some(p) = min
        && !s
            .projections
            .wait_for(p, Duration::from_millis(MIN_POSITION_WAIT_MS_MAX))
            .await
    {
        return Err(ApiError::unavailable(format!(
            "the projections have applied position {}, not yet {p}; retry shortly",
            s.projections.position()
        )));
    }
    Ok(())
}

/// An optional RFC 3339 query parameter.
fn opt_time(field: &'static str, v: &Option<String>) -> Result<Option<chrono::DateTime<Utc>>, ApiError> {
    v.as_deref()
        .map(parse_time)
        .transpose()
        .map_err(|m| ApiError::invalid(field, m))
}

fn json(v: Value) -> Response {
    axum::Json(v).into_response()
}

pub async fn account(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(account): Path<String>,
    Query(q): Query<ReadQuery>,
) -> Result<Response, ApiError> {
    c.require(&[Role::Operator, Role::Auditor, Role::Tenant])?;
    parse_account(&account).map_err(|m| ApiError::invalid("account", m))?;
    if c.role == Role::Tenant {
        let own = format!("tenant:{}", c.tenant_id.as_deref().unwrap_or(""));
        if account != own {
            tracing::warn!(sub = %c.sub, account, "refused: account out of scope");
            return Err(ApiError::forbidden(format!(
                "a tenant token reads only its own account ({own})"
            )));
        }
    }
    wait_min_position(&s, q.min_position).await?;
    s.projections
        .read(|b| b.balance(&account))
        .map(json)
        .ok_or_else(|| ApiError::not_found(format!("nothing has been posted to account {account:?}")))
}

pub async fn statement(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path((tenant_id, period)): Path<(String, String)>,
    Query(q): Query<ReadQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    c.require(&[Role::Operator, Role::Auditor, Role::Tenant])?;
    c.require_tenant_scope(&tenant_id)?;
    let period = Period::parse(&period).map_err(|m| ApiError::invalid("period", m))?;
    let format = match q.format.as_deref() {
        Some(f) => f.to_string(),
        None => {
            let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
            if accept.contains("text/csv") {
                "csv".into()
            } else if accept.contains("text/html") {
                "html".into()
            } else {
                "json".into()
            }
        }
    };
    if !["json", "csv", "html"].contains(&format.as_str()) {
        return Err(ApiError::invalid("format", "must be json, csv or html"));
    }
    wait_min_position(&s, q.min_position).await?;
    let st = s
        .projections
        .read(|b| b.statement(&tenant_id, period))
        .ok_or_else(|| ApiError::not_found(format!("no tenant {tenant_id:?} is registered")))?;
    let (body, ctype) = match format.as_str() {
        "csv" => (statement_csv(&st), "text/csv; charset=utf-8"),
        "html" => (statement_html(&st), "text/html; charset=utf-8"),
        _ => return Ok(json(st.to_json())),
    };
    let mut res = body.into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    Ok(res)
}

pub async fn energy_balance(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(site_id): Path<String>,
    Query(q): Query<ReadQuery>,
) -> Result<Response, ApiError> {
    c.require(&[Role::Operator, Role::Auditor])?;
    let to = opt_time("to", &q.to)?.unwrap_or_else(Utc::now);
    let from = opt_time("from", &q.from)?.unwrap_or(to - chrono::Duration::days(1));
    if from >= to {
        return Err(ApiError::invalid("to", "must be after from"));
    }
    wait_min_position(&s, q.min_position).await?;
    s.projections
        .read(|b| b.energy_balance(&site_id, from, to))
        .map(json)
        .ok_or_else(|| ApiError::not_found(format!("no site {site_id:?} is registered")))
}

pub async fn settlement(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(period): Path<String>,
    Query(q): Query<ReadQuery>,
) -> Result<Response, ApiError> {
    c.require(&[Role::Operator, Role::Auditor])?;
    let period = Period::parse(&period).map_err(|m| ApiError::invalid("period", m))?;
    wait_min_position(&s, q.min_position).await?;
    Ok(json(s.projections.read(|b| b.settlement(period))))
}

pub async fn storage(
    State(s): State<AppState>,
    Auth(c): Auth,
    Query(q): Query<ReadQuery>,
) -> Result<Response, ApiError> {
    c.require(&[Role::Operator, Role::Auditor])?;
    wait_min_position(&s, q.min_position).await?;
    Ok(json(s.projections.read(|b| b.storage())))
}

/// Every registered site, with the span of time its energy covers (for pickers).
pub async fn sites(State(s): State<AppState>, Auth(c): Auth, Query(q): Query<ReadQuery>) -> Result<Response, ApiError> {
    c.require(&[Role::Operator, Role::Auditor])?;
    wait_min_position(&s, q.min_position).await?;
    Ok(json(s.projections.read(|b| b.sites_list())))
}

/// A site's energy flows per grid interval: generation by source, battery charge and
/// discharge, consumption by tenant, losses. Without `to`: the end of the site's last
/// interval with energy (now, before any); without `from`: `FLOWS_DEFAULT_DAYS` before `to`.
pub async fn flows(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(site_id): Path<String>,
    Query(q): Query<ReadQuery>,
) -> Result<Response, ApiError> {
    use crate::projections::FLOWS_DEFAULT_DAYS;
    c.require(&[Role::Operator, Role::Auditor])?;
    let (from, to) = (opt_time("from", &q.from)?, opt_time("to", &q.to)?);
    wait_min_position(&s, q.min_position).await?;
    s.projections
        .read(|b| {
            let to = to.unwrap_or_else(|| b.site_extent(&site_id).map_or_else(Utc::now, |(_, end)| end));
            let from = from.unwrap_or(to - chrono::Duration::days(FLOWS_DEFAULT_DAYS));
            if from >= to {
                return Some(Err(ApiError::invalid("to", "must be after from")));
            }
            b.flows(&site_id, from, to).map(Ok)
        })
        .ok_or_else(|| ApiError::not_found(format!("no site {site_id:?} is registered")))?
        .map(json)
}

/// A tenant's holds with its total and available balance (`?status=active|released|expired`).
pub async fn holds(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(tenant_id): Path<String>,
    Query(q): Query<ReadQuery>,
) -> Result<Response, ApiError> {
    c.require(&[Role::Operator, Role::Auditor, Role::Tenant])?;
    c.require_tenant_scope(&tenant_id)?;
    if let Some(st) = q.status.as_deref()
        && !["active", "released", "expired"].contains(&st)
    {
        return Err(ApiError::invalid("status", "must be active, released or expired"));
    }
    wait_min_position(&s, q.min_position).await?;
    s.projections
        .read(|b| b.holds_of(&tenant_id, q.status.as_deref()))
        .map(json)
        .ok_or_else(|| ApiError::not_found(format!("no tenant {tenant_id:?} is registered")))
}

/// One hold of a tenant.
pub async fn hold(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path((tenant_id, hold_id)): Path<(String, String)>,
    Query(q): Query<ReadQuery>,
) -> Result<Response, ApiError> {
    c.require(&[Role::Operator, Role::Auditor, Role::Tenant])?;
    c.require_tenant_scope(&tenant_id)?;
    wait_min_position(&s, q.min_position).await?;
    s.projections
        .read(|b| b.hold(&tenant_id, &hold_id))
        .map(json)
        .ok_or_else(|| ApiError::not_found(format!("tenant {tenant_id:?} has no hold {hold_id:?}")))
}
