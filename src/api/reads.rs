//! Read routes, answered from the projections in memory. `?min_position=N` waits (bounded)
//! until the projections have applied position N: read-your-writes across servers.

use super::AppState;
use super::auth::{Auth, Role};
use super::body::Path;
use super::body::Query;
use super::error::ApiError;
use crate::domain::Event;
use crate::domain::postings::parse_account;
use crate::domain::time::{Period, fmt_time, parse_time};
use crate::projections::attribution::{HOUR_READINGS_MAX, HOUR_S, MIX_DEFAULT_DAYS, MIX_HOURS_MAX, tenant_attribution};
use crate::projections::render::{statement_csv, statement_html};
use crate::store::READ_PAGE_EVENTS_MAX;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::{TimeZone, Utc};
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

/// Waits (bounded) until the projections have applied position `min`. A position past the
/// store's durable head is refused at once (422): no server has recorded it, so waiting could
/// only end in a 503 that invites a retry that cannot succeed.
pub async fn wait_min_position(s: &AppState, min: Option<u64>) -> Result<(), ApiError> {
    let Some(p) = min else { return Ok(()) };
    if s.projections.position() >= p {
        return Ok(());
    }
    let head = s.ledger.store().head().await?.position;
    if p > head {
        return Err(ApiError::invalid(
            "min_position",
            format!("the log ends at position {head}; position {p} is not recorded"),
        ));
    }
    if !s
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

/// A site read's range: `to` defaults to the end of the site's data (`data_end`; now,
/// before any), `from` to `default_days` before `to`; `from` must be before `to`.
fn range_or_default(
    from: Option<chrono::DateTime<Utc>>,
    to: Option<chrono::DateTime<Utc>>,
    data_end: Option<chrono::DateTime<Utc>>,
    default_days: i64,
) -> Result<(chrono::DateTime<Utc>, chrono::DateTime<Utc>), ApiError> {
    let to = to.unwrap_or_else(|| data_end.unwrap_or_else(Utc::now));
    let from = from.unwrap_or(to - chrono::Duration::days(default_days));
    if from >= to {
        return Err(ApiError::invalid("to", "must be after from"));
    }
    Ok((from, to))
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
        .statement(&tenant_id, period)
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
            let data_end = b.site_extent(&site_id).map(|(_, end)| end);
            match range_or_default(from, to, data_end, FLOWS_DEFAULT_DAYS) {
                Ok((from, to)) => b.flows(&site_id, from, to).map(Ok),
                Err(e) => Some(Err(e)),
            }
        })
        .ok_or_else(|| ApiError::not_found(format!("no site {site_id:?} is registered")))?
        .map(json)
}

/// A tenant's supply-mix attribution for a period: Wh by source, carbon, carbon-free share,
/// hourly carbon-free score, the positions of the readings behind it, and every hour.
pub async fn attribution(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path((tenant_id, period)): Path<(String, String)>,
    Query(q): Query<ReadQuery>,
) -> Result<Response, ApiError> {
    c.require(&[Role::Operator, Role::Auditor, Role::Tenant])?;
    c.require_tenant_scope(&tenant_id)?;
    let period = Period::parse(&period).map_err(|m| ApiError::invalid("period", m))?;
    wait_min_position(&s, q.min_position).await?;
    s.projections
        .read_attribution(|b, sites| {
            b.tenants
                .contains_key(&tenant_id)
                .then(|| tenant_attribution(b, sites, &tenant_id, period).to_json(b.position))
        })
        .map(json)
        .ok_or_else(|| ApiError::not_found(format!("no tenant {tenant_id:?} is registered")))
}

/// A site's supply mix per UTC hour over `[from, to)` (at most `MIX_HOURS_MAX` hours).
/// Without `to`: the end of the site's last hour with energy (now, before any); without
/// `from`: `MIX_DEFAULT_DAYS` before `to`.
pub async fn mix(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(site_id): Path<String>,
    Query(q): Query<ReadQuery>,
) -> Result<Response, ApiError> {
    c.require(&[Role::Operator, Role::Auditor])?;
    let (from, to) = (opt_time("from", &q.from)?, opt_time("to", &q.to)?);
    wait_min_position(&s, q.min_position).await?;
    s.projections
        .read_attribution(|b, sites| {
            let site = sites.iter().find(|a| a.site_id == site_id)?;
            let data_end = site
                .hours
                .last()
                .and_then(|h| Utc.timestamp_opt(h.hour + HOUR_S, 0).single());
            let (from, to) = match range_or_default(from, to, data_end, MIX_DEFAULT_DAYS) {
                Ok(r) => r,
                Err(e) => return Some(Err(e)),
            };
            if (to - from).num_seconds() > MIX_HOURS_MAX as i64 * HOUR_S {
                return Some(Err(ApiError::invalid(
                    "to",
                    format!("a mix read spans at most {MIX_HOURS_MAX} hours"),
                )));
            }
            Some(Ok(site.mix_json(b, from, to)))
        })
        .ok_or_else(|| ApiError::not_found(format!("no site {site_id:?} is registered")))?
        .map(json)
}

/// The readings (and corrections) behind one site-hour of the mix, read back from the log:
/// every figure of the attribution can be traced to them.
pub async fn hour_readings(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path((site_id, hour)): Path<(String, String)>,
    Query(q): Query<ReadQuery>,
) -> Result<Response, ApiError> {
    c.require(&[Role::Operator, Role::Auditor])?;
    let at = parse_time(&hour).map_err(|m| ApiError::invalid("hour", m))?;
    if at.timestamp().rem_euclid(HOUR_S) != 0 || at.timestamp_subsec_nanos() != 0 {
        return Err(ApiError::invalid(
            "hour",
            "must be the start of a UTC clock hour (HH:00:00Z)",
        ));
    }
    wait_min_position(&s, q.min_position).await?;
    let h = at.timestamp();
    let range = s.projections.read(|b| {
        b.sites.contains_key(&site_id).then(|| {
            b.hours
                .get(&site_id)
                .and_then(|m| m.get(&h))
                .map(|f| (f.first_position, f.last_position))
        })
    });
    let Some(range) = range else {
        return Err(ApiError::not_found(format!("no site {site_id:?} is registered")));
    };
    let (first, last) = range.unwrap_or((0, 0));
    let (mut readings, mut truncated, mut after) = (Vec::new(), false, first.saturating_sub(1));
    let hour_end = at + chrono::Duration::seconds(HOUR_S);
    while first > 0 && after < last && !truncated {
        let page = s.ledger.store().read_all(after, READ_PAGE_EVENTS_MAX).await?;
        let Some(end) = page.last().map(|r| r.position) else {
            break;
        };
        for r in page.iter().take_while(|r| r.position <= last) {
            let Ok(ev) = Event::from_parts(&r.event_type, &r.data) else {
                continue;
            };
            let behind = match &ev {
                Event::ReadingCorrected(c) => c.site_id.as_str() == site_id && c.start < hour_end && c.end > at,
                e => e
                    .as_reading()
                    .is_some_and(|x| x.site_id.as_str() == site_id && x.start < hour_end && x.end > at),
            };
            if behind {
                if readings.len() == HOUR_READINGS_MAX {
                    truncated = true;
                    break;
                }
                readings.push(r.to_json());
            }
        }
        after = end;
    }
    Ok(json(serde_json::json!({
        "site_id": site_id,
        "hour": fmt_time(&at),
        "first_position": first,
        "last_position": last,
        "readings": readings,
        "truncated": truncated,
    })))
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
