//! The write routes: each takes the body of a CONTRACT §1 command and answers 201 with the
//! result for a new event, 200 for a recognised duplicate.

use super::AppState;
use super::auth::{Auth, Role};
use super::body::Path;
use super::body::{self, Kind, NDJSON_BODY_BYTES_MAX, NDJSON_LINES_MAX};
use super::error::ApiError;
use crate::domain::Command;
use crate::ledger::Outcome;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// The answer to one command: 201 new, 200 duplicate, problem+json otherwise.
fn answer(out: Outcome) -> Result<Response, ApiError> {
    let a = out?;
    let status = if a.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(match a.reading_json(None) {
        Some(text) => (
            status,
            [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            text,
        )
            .into_response(),
        None => (status, axum::Json(a.to_json())).into_response(),
    })
}

/// Puts a path parameter into the body; a body that names another value is refused.
fn with_path_field(mut obj: Map<String, Value>, field: &str, value: &str) -> Result<Map<String, Value>, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == value => {}
        Some(other) => {
            return Err(ApiError::invalid(
                field,
                format!("the body says {other} but the path says {value:?}"),
            ));
        }
    }
    obj.insert(field.into(), Value::String(value.into()));
    Ok(obj)
}

/// A body may name its command (as `apply` lines do), but only this route's.
fn check_command_field(name: &str, obj: &Map<String, Value>) -> Result<(), ApiError> {
    match obj.get("command") {
        None => Ok(()),
        Some(Value::String(s)) if s == name => Ok(()),
        Some(other) => Err(ApiError::invalid(
            "command",
            format!("this route takes {name:?}, the body says {other}"),
        )),
    }
}

async fn run(state: &AppState, name: &str, obj: &Map<String, Value>) -> Result<Response, ApiError> {
    check_command_field(name, obj)?;
    let cmd = Command::parse(name, obj)?;
    answer(state.ledger.execute(&cmd).await)
}

pub async fn register_site(
    State(s): State<AppState>,
    Auth(c): Auth,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    c.require(&[Role::Operator])?;
    run(&s, "register_site", &body::json_object(&headers, body).await?).await
}

pub async fn register_tenant(
    State(s): State<AppState>,
    Auth(c): Auth,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    c.require(&[Role::Operator])?;
    run(&s, "register_tenant", &body::json_object(&headers, body).await?).await
}

pub async fn register_meter(
    State(s): State<AppState>,
    Auth(c): Auth,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    c.require(&[Role::Operator])?;
    run(&s, "register_meter", &body::json_object(&headers, body).await?).await
}

pub async fn publish_tariff(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(site_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    c.require(&[Role::Operator])?;
    let obj = with_path_field(body::json_object(&headers, body).await?, "site_id", &site_id)?;
    run(&s, "publish_tariff", &obj).await
}

pub async fn publish_emission_factors(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(site_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    c.require(&[Role::Operator])?;
    let obj = with_path_field(body::json_object(&headers, body).await?, "site_id", &site_id)?;
    run(&s, "publish_emission_factors", &obj).await
}

pub async fn issue_credits(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(tenant_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    c.require(&[Role::Operator])?;
    let obj = with_path_field(body::json_object(&headers, body).await?, "tenant_id", &tenant_id)?;
    run(&s, "issue_credits", &obj).await
}

pub async fn transfer_credits(
    State(s): State<AppState>,
    Auth(c): Auth,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    c.require(&[Role::Operator, Role::Tenant])?;
    let obj = body::json_object(&headers, body).await?;
    check_command_field("transfer_credits", &obj)?;
    let cmd = Command::parse("transfer_credits", &obj)?;
    if let Command::TransferCredits { from_tenant, .. } = &cmd {
        c.require_tenant_scope(from_tenant.as_str())?;
    }
    answer(s.ledger.execute(&cmd).await)
}

pub async fn close_period(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(period): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    c.require(&[Role::Operator])?;
    let obj = with_path_field(optional_object(&headers, body).await?, "period", &period)?;
    run(&s, "close_period", &obj).await
}

/// A body that may be left out; when given it must be a JSON object.
async fn optional_object(headers: &HeaderMap, body: Body) -> Result<Map<String, Value>, ApiError> {
    if !headers.contains_key(header::CONTENT_TYPE) {
        return Ok(Map::new());
    }
    let bytes = body::read_limited(headers, body, body::JSON_BODY_BYTES_MAX).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        Ok(Map::new())
    } else {
        body::kind(headers, false)?;
        body::parse_object(&bytes)
    }
}

/// Places a hold on a tenant's EU: the tenant itself, or an operator.
pub async fn place_hold(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(tenant_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    c.require(&[Role::Operator, Role::Tenant])?;
    c.require_tenant_scope(&tenant_id)?;
    let obj = with_path_field(body::json_object(&headers, body).await?, "tenant_id", &tenant_id)?;
    run(&s, "place_hold", &obj).await
}

/// Captures part (or all) of a hold; the hold must be the path's tenant's.
pub async fn capture_hold(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path((tenant_id, hold_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    c.require(&[Role::Operator, Role::Tenant])?;
    c.require_tenant_scope(&tenant_id)?;
    let obj = with_path_field(body::json_object(&headers, body).await?, "tenant_id", &tenant_id)?;
    let obj = with_path_field(obj, "hold_id", &hold_id)?;
    run(&s, "capture_hold", &obj).await
}

/// Frees what is left of a hold (the body may be left out).
pub async fn release_hold(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path((tenant_id, hold_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    c.require(&[Role::Operator, Role::Tenant])?;
    c.require_tenant_scope(&tenant_id)?;
    let obj = with_path_field(optional_object(&headers, body).await?, "tenant_id", &tenant_id)?;
    let obj = with_path_field(obj, "hold_id", &hold_id)?;
    run(&s, "release_hold", &obj).await
}

/// Sets (or lifts, with `"limit_eu": null`) a tenant's spending limit: operators only.
pub async fn set_spending_limit(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(tenant_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    c.require(&[Role::Operator])?;
    let obj = with_path_field(body::json_object(&headers, body).await?, "tenant_id", &tenant_id)?;
    run(&s, "set_spending_limit", &obj).await
}

/// Whether a meter token may post for this meter (its meter, or a meter of its sites).
async fn meter_allowed(s: &AppState, c: &super::auth::Claims, meter: &str) -> bool {
    if c.role != Role::Meter {
        return true;
    }
    // A state that cannot be rebuilt knows no meter: the token is then refused.
    let site = s
        .ledger
        .with_fresh_state(|st| {
            crate::domain::ids::MeterId::parse(meter)
                .ok()
                .and_then(|m| st.meters.get(&m).map(|m| m.reg.site_id.to_string()))
        })
        .await
        .ok()
        .flatten();
    c.meter_in_scope(meter, site.as_deref())
}

fn forbidden_meter(meter: &str) -> ApiError {
    ApiError::forbidden(format!("this token may not post readings for meter {meter:?}"))
}

/// Reads one reading line into its command, within the token's scope; a refusal is answered
/// on its own.
async fn reading_command(s: &AppState, c: &super::auth::Claims, obj: &Map<String, Value>) -> Result<Command, ApiError> {
    check_command_field("post_reading", obj)?;
    in_scope(s, c, Command::parse("post_reading", obj)?).await
}

/// The reading, if the token may post for its meter.
async fn in_scope(s: &AppState, c: &super::auth::Claims, cmd: Command) -> Result<Command, ApiError> {
    if let Command::PostReading { meter_id, .. } = &cmd
        && !meter_allowed(s, c, meter_id.as_str()).await
    {
        tracing::warn!(sub = %c.sub, meter = %meter_id, "refused: meter out of scope");
        return Err(forbidden_meter(meter_id.as_str()));
    }
    Ok(cmd)
}

/// One reading (JSON) or many (NDJSON: one result line per input line, in order).
pub async fn post_readings(
    State(s): State<AppState>,
    Auth(c): Auth,
    req: axum::extract::Request,
) -> Result<Response, ApiError> {
    c.require(&[Role::Operator, Role::Meter])?;
    // The request's own headers (a `HeaderMap` extractor would copy them).
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    match body::kind(&headers, true)? {
        Kind::Json => {
            let bytes = body::read_limited(&headers, body, body::JSON_BODY_BYTES_MAX).await?;
            let cmd = line_command(&s, &c, Line::read(&bytes)?).await?;
            answer(s.ledger.submit(&cmd).await.wait().await)
        }
        Kind::Ndjson => bulk(s, c, headers, body).await,
    }
}

fn line_answer(line: usize, r: Result<crate::ledger::Accepted, ApiError>) -> Value {
    match r {
        Ok(a) => {
            let mut v = a.to_json();
            v["line"] = json!(line);
            v["status"] = json!(if a.duplicate { 200 } else { 201 });
            v
        }
        Err(e) => {
            let mut err = json!({"code": e.code, "message": e.detail});
            if let Some(f) = e.errors.first() {
                err["field"] = json!(f.field);
                err["errors"] = serde_json::to_value(&e.errors).expect("errors");
            }
            if let Some(id) = e.existing_event_id {
                err["existing_event_id"] = json!(id);
            }
            json!({"ok": false, "line": line, "status": e.status.as_u16(), "error": err})
        }
    }
}

async fn bulk(s: AppState, c: super::auth::Claims, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let bytes = body::read_limited(&headers, body, NDJSON_BODY_BYTES_MAX).await?;
    // Each line is decoded on its own: a line that is not UTF-8 is refused alone.
    let lines: Vec<(usize, &[u8])> = bytes
        .split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, l)| !l.trim_ascii().is_empty())
        .map(|(i, l)| (i + 1, l))
        .collect();
    if lines.len() > NDJSON_LINES_MAX {
        return Err(ApiError::too_large(format!(
            "{} lines; a bulk request carries at most {NDJSON_LINES_MAX}",
            lines.len()
        )));
    }
    let items = lines.into_iter().map(|(n, line)| (n, Line::read(line))).collect();
    Ok(answer_lines(s, c, items).await)
}

/// A numbered reading (its line in the request or file), or why it could not be read.
type Item = (usize, Result<Line, ApiError>);

/// A reading read straight from its text into its command, or an object for
/// [`Command::parse`].
enum Line {
    Command(Command),
    Object(Map<String, Value>),
}

impl Line {
    /// A plain reading straight from its text; anything else (and every refusal's wording)
    /// through the object.
    fn read(bytes: &[u8]) -> Result<Line, ApiError> {
        match std::str::from_utf8(bytes)
            .ok()
            .and_then(Command::reading_body_from_text)
        {
            Some(cmd) => Ok(Line::Command(cmd)),
            None => body::parse_object(bytes).map(Line::Object),
        }
    }
}

/// A line's command, within the token's scope.
async fn line_command(s: &AppState, c: &super::auth::Claims, line: Line) -> Result<Command, ApiError> {
    match line {
        Line::Command(cmd) => in_scope(s, c, cmd).await,
        Line::Object(obj) => reading_command(s, c, &obj).await,
    }
}

/// Answer lines are sent in chunks of about this many bytes, or sooner when the next answer is
/// not durable yet.
const ANSWER_CHUNK_BYTES: usize = 32 * 1024;

/// Decides every item in order, under as few acquisitions of the ledger's lock as
/// [`crate::ledger::Ledger::submit_many`] takes (each queued to the writer as it is decided),
/// then answers each as it becomes durable, in order, one NDJSON line per item. Answers that
/// are already durable go out together in one chunk; a chunk is sent as soon as the next
/// answer would have to wait.
async fn answer_lines(s: AppState, c: super::auth::Claims, items: Vec<Item>) -> Response {
    let mut numbers = Vec::with_capacity(items.len());
    let mut cmds = Vec::with_capacity(items.len());
    for (n, item) in items {
        numbers.push(n);
        cmds.push(match item {
            Ok(line) => line_command(&s, &c, line).await,
            Err(e) => Err(e),
        });
    }
    let decided = s.ledger.submit_each(cmds).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(64);
    tokio::spawn(async move {
        // A client that went away stops reading; every answer is still awaited (the appends
        // complete in the writer anyway, and a failed one marks the state for a rebuild).
        let send = |chunk: String| {
            let tx = tx.clone();
            async move { chunk.is_empty() || tx.send(Ok(chunk)).await.is_ok() }
        };
        let mut chunk = String::new();
        let mut open = true;
        for (n, decided) in numbers.into_iter().zip(decided) {
            let r = match decided {
                Ok(p) => {
                    let wait = p.wait();
                    let mut wait = std::pin::pin!(wait);
                    match futures_util::FutureExt::now_or_never(wait.as_mut()) {
                        Some(r) => r,
                        None => {
                            // Not durable yet: send what is ready before waiting.
                            open = open && send(std::mem::take(&mut chunk)).await;
                            wait.await
                        }
                    }
                    .map_err(ApiError::from)
                }
                Err(e) => Err(e),
            };
            if open {
                match r.as_ref().ok().and_then(|a| a.reading_json(Some(n))) {
                    Some(text) => chunk.push_str(&text),
                    None => chunk.push_str(&line_answer(n, r).to_string()),
                }
                chunk.push('\n');
                if chunk.len() >= ANSWER_CHUNK_BYTES {
                    open = send(std::mem::take(&mut chunk)).await;
                }
            }
        }
        if open {
            send(chunk).await;
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    let mut res = Response::new(Body::from_stream(stream));
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    res
}

#[derive(serde::Deserialize)]
pub struct ImportQuery {
    pub format: Option<String>,
    pub interval: Option<String>,
    pub flow: Option<String>,
}

/// A meter's file (CSV or Green Button XML) as one bulk request: one NDJSON result line per
/// reading of the file, in order, exactly as `wattledger import` does.
pub async fn import_readings(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(meter_id): Path<String>,
    body::Query(q): body::Query<ImportQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    c.require(&[Role::Operator, Role::Meter])?;
    let format = match (q.format.as_deref(), body::media_type(&headers).as_deref()) {
        (Some(f), _) => f.to_string(),
        (None, Some("text/csv")) => "csv".into(),
        (None, Some("application/xml" | "text/xml" | "application/atom+xml")) => "greenbutton".into(),
        (None, other) => {
            return Err(ApiError::unsupported_media(format!(
                "content type {} is not a meter file; send text/csv or application/xml (or say ?format=)",
                other.unwrap_or("(none)")
            )));
        }
    };
    let meter = crate::domain::ids::MeterId::parse(&meter_id).map_err(|m| ApiError::invalid("meter_id", m))?;
    if !meter_allowed(&s, &c, meter.as_str()).await {
        return Err(forbidden_meter(meter.as_str()));
    }
    let kind = s
        .ledger
        .with_fresh_state(|st| st.meters.get(&meter).map(|m| m.reg.kind))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no meter {meter_id:?} is registered")))?;
    let flow = crate::import::flow_for(&meter_id, kind, q.flow.as_deref()).map_err(|m| ApiError::invalid("flow", m))?;
    let bytes = body::read_limited(&headers, body, NDJSON_BODY_BYTES_MAX).await?;
    let text = std::str::from_utf8(&bytes).map_err(|e| ApiError::bad_request(format!("the body is not UTF-8: {e}")))?;
    let readings =
        crate::import::parse_file(&format, text, q.interval.as_deref()).map_err(|m| ApiError::invalid("body", m))?;
    if readings.len() > NDJSON_LINES_MAX {
        return Err(ApiError::too_large(format!(
            "{} readings; one import carries at most {NDJSON_LINES_MAX}",
            readings.len()
        )));
    }
    let items = readings
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let obj = match r.command(meter.as_str(), flow) {
                Value::Object(m) => m,
                _ => unreachable!("a command is an object"),
            };
            (i + 1, Ok(Line::Object(obj)))
        })
        .collect();
    Ok(answer_lines(s, c, items).await)
}

pub async fn correct_reading(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(event_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    c.require(&[Role::Operator, Role::Meter])?;
    let obj = with_path_field(body::json_object(&headers, body).await?, "event_id", &event_id)?;
    check_command_field("correct_reading", &obj)?;
    let cmd = Command::parse("correct_reading", &obj)?;
    if c.role == Role::Meter
        && let Command::CorrectReading { corrected_event_id, .. } = &cmd
    {
        let meter = s
            .ledger
            .with_fresh_state(|st| st.readings.get(corrected_event_id).map(|r| r.meter_id.to_string()))
            .await?;
        match meter {
            Some(m) if meter_allowed(&s, &c, &m).await => {}
            Some(m) => return Err(forbidden_meter(&m)),
            None => {}
        }
    }
    answer(s.ledger.execute(&cmd).await)
}
