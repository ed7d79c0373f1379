//! Black-box tests of the HTTP API (CONTRACT §3): the real router on `127.0.0.1:0`, driven
//! with reqwest (and, where a client library would get in the way, a raw socket).
//!
//! Every JSON or problem+json body a test receives is held against `api.yaml` with
//! `support::assert_matches_spec`.
//!
//! # The campus (`build_campus`), and its numbers worked out by hand
//!
//! Site `memphis-1` (America/Chicago) with the CONTRACT's tariff effective 2026-01-01: rates
//! generated 1, stored 1, dispatched 1, consumed 1.1 EU/Wh; peak mon–fri 14–20 local ×1.5,
//! night every day 00–06 ×0.6, else standard ×1; gas_turbine ×1.2.
//! 2026-11-02 is a Monday, CST (UTC−6): 08:00Z is 02:00 (night), 20:00Z is 14:00 (peak).
//! 2026-10-14 is a Wednesday, CDT (UTC−5): 18:00Z is 13:00 (standard).
//!
//! | pos | event                                                  | price (EU)                      |
//! |-----|--------------------------------------------------------|---------------------------------|
//! | 1   | site memphis-1                                         |                                 |
//! | 2–3 | tenants acme-ai, beta-labs                             |                                 |
//! | 4–7 | meters gt-01, bess-01, rack-a1, rack-b1                |                                 |
//! | 8   | tariff v1                                              |                                 |
//! | 9   | gt-01 generated 11-02 08:00Z 102000 Wh (night)         | 102000×0.6×1.2 = 73440          |
//! | 10  | bess-01 stored 11-02 08:00Z 100000 Wh (night)          | 100000×0.6 = 60000              |
//! | 11  | gt-01 generated 11-02 20:00Z 580000 Wh (peak)          | 580000×1.5×1.2 = 1044000        |
//! | 12  | bess-01 dispatched 11-02 20:00Z 90000 Wh (peak)        | 90000×1.5 = 135000              |
//! | 13  | rack-a1 consumed 11-02 20:00Z 450000 Wh (peak)         | 450000×1.65 = 742500            |
//! | 14  | rack-b1 consumed 11-02 20:00Z 200000 Wh (peak)         | 200000×1.65 = 330000            |
//! | 15  | rack-a1 consumed 10-14 18:00Z 400000 Wh (standard)     | 400000×1.1 = 440000             |
//! | 16  | correction of 13: 449000 Wh                            | 740850, delta −1650             |
//! | 17  | credits acme-ai 100000000                              |                                 |
//! | 18  | credits beta-labs 50000000                             |                                 |
//! | 19  | transfer acme-ai → beta-labs 2500000 (acme's own token)|                                 |
//! | 20  | close 2026-10 (pins position 19)                       |                                 |
//!
//! Credits and the transfer are booked into the period of the ledger's clock (the current
//! month); the tests work that out from `Utc::now()`.
//!
//! - tenant:acme-ai: debits 440000 + 742500 + 2500000 = 3682500; credits 100000000 + 1650 =
//!   100001650; balance 96319150. Wh debits 850000, credits 1000.
//! - tenant:beta-labs: balance 50000000 + 2500000 − 330000 = 52170000.
//! - statement acme 2026-10: opening 0, charges 440000, closing −440000, consumption 400000,
//!   final once closed. 2026-11: charges 742500 − 1650 = 740850, consumption 449000.
//! - energy balance 2026-11-02: 08:00Z generated 102000, stored 100000, losses 2000 (1.96 %);
//!   20:00Z generated 580000 + dispatched 90000 = 670000, consumed 449000 + 200000 = 649000,
//!   losses 21000 (3.134 %); nothing above the 5 % tolerance.
//! - battery megapack-01: stored 100000, dispatched 90000, level 10000.

mod support;

use futures_util::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use reqwest::Method;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{App, TEST_SECRET, assert_matches_spec, claims, spawn_app, spawn_app_with};
use wattledger::api::auth::{AuthConfig, Claims, Role};
use wattledger::ledger::SystemClock;

const SITE: &str = "memphis-1";
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
/// Longest wait for any one SSE frame.
const SSE_WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Requests and replies
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
    /// The parsed body when it is JSON (`application/json` or `application/problem+json`).
    json: Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn media_type(&self) -> String {
        self.header("content-type")
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    }
}

/// A request body: its content type and bytes.
struct Body {
    content_type: &'static str,
    bytes: Vec<u8>,
}

fn json_body(v: &Value) -> Body {
    Body {
        content_type: "application/json",
        bytes: serde_json::to_vec(v).unwrap(),
    }
}

/// Sends one request and, when the answer is JSON, checks it against `api.yaml` under
/// `spec_path` (the route as the spec writes it).
async fn send(
    app: &App,
    method: Method,
    path: &str,
    spec_path: &str,
    token: Option<&str>,
    body: Option<Body>,
    headers: &[(&str, &str)],
) -> Reply {
    send_with(&app.client, &app.base, method, path, spec_path, token, body, headers).await
}

#[allow(clippy::too_many_arguments)]
async fn send_with(
    client: &reqwest::Client,
    base: &str,
    method: Method,
    path: &str,
    spec_path: &str,
    token: Option<&str>,
    body: Option<Body>,
    headers: &[(&str, &str)],
) -> Reply {
    let mut req = client.request(method.clone(), format!("{base}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.header("content-type", b.content_type).body(b.bytes);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let text = res
        .text()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: body: {e}"));
    let mut reply = Reply {
        status,
        headers,
        text,
        json: Value::Null,
    };
    let media = reply.media_type();
    if media == "application/json" || media == "application/problem+json" {
        reply.json = serde_json::from_str(&reply.text)
            .unwrap_or_else(|e| panic!("{method} {path}: {media} body is not JSON ({e}): {}", reply.text));
        assert_matches_spec(method.as_str(), spec_path, status, &media, &reply.json);
    }
    reply
}

async fn get(app: &App, path: &str, spec_path: &str, token: &str) -> Reply {
    send(app, Method::GET, path, spec_path, Some(token), None, &[]).await
}

async fn post(app: &App, path: &str, spec_path: &str, token: &str, body: &Value) -> Reply {
    send(
        app,
        Method::POST,
        path,
        spec_path,
        Some(token),
        Some(json_body(body)),
        &[],
    )
    .await
}

fn dec(v: &Value) -> Decimal {
    match v {
        Value::String(s) => Decimal::from_str(s).unwrap_or_else(|e| panic!("{s:?} is not a decimal: {e}")),
        Value::Number(n) => Decimal::from_str(&n.to_string()).unwrap(),
        other => panic!("expected a decimal string, got {other}"),
    }
}

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

/// A problem+json answer with the given status and the RFC 9457 members.
fn assert_problem(r: &Reply, status: u16) {
    assert_eq!(r.status, status, "expected {status}, got {}: {}", r.status, r.text);
    assert_eq!(
        r.media_type(),
        "application/problem+json",
        "content type of a {status}: {}",
        r.text
    );
    for k in ["type", "title", "detail"] {
        assert!(r.json[k].is_string(), "problem member {k} is missing: {}", r.json);
    }
    assert_eq!(r.json["status"], json!(status), "problem status: {}", r.json);
}

/// A new event: 201 with the result object at the expected position.
fn assert_created(r: &Reply, position: u64) -> Value {
    assert_eq!(r.status, 201, "expected 201: {}", r.text);
    assert_eq!(r.media_type(), "application/json");
    assert_eq!(r.json["ok"], json!(true), "{}", r.json);
    assert_eq!(r.json["duplicate"], json!(false), "{}", r.json);
    assert_eq!(r.json["position"], json!(position), "{}", r.json);
    assert!(
        r.json["event_id"]
            .as_str()
            .is_some_and(|s| uuid::Uuid::parse_str(s).is_ok())
    );
    assert!(r.json["stream"].is_string());
    assert!(r.json["version"].as_u64().is_some_and(|v| v >= 1));
    r.json.clone()
}

/// The same command again: 200, duplicate, the original's event and position.
fn assert_duplicate_of(r: &Reply, original: &Value) {
    assert_eq!(r.status, 200, "expected 200 for a duplicate: {}", r.text);
    assert_eq!(r.json["ok"], json!(true));
    assert_eq!(r.json["duplicate"], json!(true), "{}", r.json);
    for k in ["event_id", "position", "stream", "version"] {
        assert_eq!(r.json[k], original[k], "duplicate's {k}: {} vs {}", r.json, original);
    }
}

// ---------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------

fn site_cmd() -> Value {
    json!({"site_id": SITE, "time_zone": "America/Chicago", "loss_tolerance_pct": "5"})
}

fn tenant_cmd(id: &str, name: &str) -> Value {
    json!({"tenant_id": id, "name": name})
}

fn load_meter(id: &str, tenant: &str, rated_w: &str) -> Value {
    json!({"meter_id": id, "site_id": SITE, "kind": "load", "tenant_id": tenant, "rated_power_w": rated_w})
}

fn tariff_cmd() -> Value {
    json!({
        "effective_from": "2026-01-01T00:00:00Z",
        "rates_eu_per_wh": {"generated": "1", "stored": "1", "dispatched": "1", "consumed": "1.1"},
        "bands": [
            {"name": "peak", "days": ["mon", "tue", "wed", "thu", "fri"], "start": "14:00", "end": "20:00", "multiplier": "1.5"},
            {"name": "night", "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": "00:00", "end": "06:00", "multiplier": "0.6"}
        ],
        "default_band": {"name": "standard", "multiplier": "1"},
        "source_multipliers": {"gas_turbine": "1.2", "solar": "0.9", "grid": "1"}
    })
}

fn reading(meter: &str, flow: &str, start: &str, end: &str, wh: &str) -> Value {
    json!({"meter_id": meter, "flow": flow, "start": start, "end": end, "wh": wh})
}

fn acme_peak_reading() -> Value {
    reading(
        "rack-a1",
        "consumed",
        "2026-11-02T20:00:00Z",
        "2026-11-02T20:15:00Z",
        "450000",
    )
}

fn correction_cmd() -> Value {
    json!({"wh": "449000", "reason": "meter recalibrated"})
}

fn acme_credits() -> Value {
    json!({"amount_eu": "100000000", "memo": "November allocation"})
}

fn transfer_cmd() -> Value {
    json!({"from_tenant": "acme-ai", "to_tenant": "beta-labs", "amount_eu": "2500000", "memo": "spot purchase"})
}

fn tenant_token(app: &App, tenant: &str) -> String {
    app.token(Role::Tenant, Some(tenant), None, None)
}

/// What `build_campus` recorded.
struct Campus {
    site: Value,
    tariff: Value,
    acme_peak: Value,
    correction: Value,
    credits: Value,
    transfer: Value,
    close: Value,
    head: u64,
}

/// Records the campus of the module documentation through the API, checking each answer.
async fn build_campus(app: &App) -> Campus {
    let op = app.operator();
    let site = assert_created(&post(app, "/v1/sites", "/v1/sites", &op, &site_cmd()).await, 1);
    assert_eq!(site["stream"], json!("site-memphis-1"));
    assert_created(
        &post(
            app,
            "/v1/tenants",
            "/v1/tenants",
            &op,
            &tenant_cmd("acme-ai", "Acme AI"),
        )
        .await,
        2,
    );
    assert_created(
        &post(
            app,
            "/v1/tenants",
            "/v1/tenants",
            &op,
            &tenant_cmd("beta-labs", "Beta Labs"),
        )
        .await,
        3,
    );
    let meters = [
        json!({"meter_id": "gt-01", "site_id": SITE, "kind": "generation", "asset_id": "turbine-01",
               "source": "gas_turbine", "rated_power_w": "35000000"}),
        json!({"meter_id": "bess-01", "site_id": SITE, "kind": "storage", "asset_id": "megapack-01",
               "rated_power_w": "1900000", "capacity_wh": "3900000", "initial_wh": "0"}),
        load_meter("rack-a1", "acme-ai", "2000000"),
        load_meter("rack-b1", "beta-labs", "1000000"),
    ];
    for (i, m) in meters.iter().enumerate() {
        assert_created(&post(app, "/v1/meters", "/v1/meters", &op, m).await, 4 + i as u64);
    }
    let tariff = assert_created(
        &post(
            app,
            "/v1/sites/memphis-1/tariffs",
            "/v1/sites/{site_id}/tariffs",
            &op,
            &tariff_cmd(),
        )
        .await,
        8,
    );
    assert_eq!(tariff["tariff_version"], json!(1), "{tariff}");

    // Readings, with the price each must carry.
    let readings = [
        (
            reading(
                "gt-01",
                "generated",
                "2026-11-02T08:00:00Z",
                "2026-11-02T08:15:00Z",
                "102000",
            ),
            "night",
            "73440",
        ),
        (
            reading(
                "bess-01",
                "stored",
                "2026-11-02T08:00:00Z",
                "2026-11-02T08:15:00Z",
                "100000",
            ),
            "night",
            "60000",
        ),
        (
            reading(
                "gt-01",
                "generated",
                "2026-11-02T20:00:00Z",
                "2026-11-02T20:15:00Z",
                "580000",
            ),
            "peak",
            "1044000",
        ),
        (
            reading(
                "bess-01",
                "dispatched",
                "2026-11-02T20:00:00Z",
                "2026-11-02T20:15:00Z",
                "90000",
            ),
            "peak",
            "135000",
        ),
        (acme_peak_reading(), "peak", "742500"),
        (
            reading(
                "rack-b1",
                "consumed",
                "2026-11-02T20:00:00Z",
                "2026-11-02T20:15:00Z",
                "200000",
            ),
            "peak",
            "330000",
        ),
        (
            reading(
                "rack-a1",
                "consumed",
                "2026-10-14T18:00:00Z",
                "2026-10-14T18:15:00Z",
                "400000",
            ),
            "standard",
            "440000",
        ),
    ];
    let mut acme_peak = Value::Null;
    for (i, (body, band, amount)) in readings.iter().enumerate() {
        let r = assert_created(
            &post(app, "/v1/readings", "/v1/readings", &op, body).await,
            9 + i as u64,
        );
        assert_eq!(r["price"]["band"], json!(band), "{r}");
        assert_eq!(r["price"]["tariff_version"], json!(1), "{r}");
        assert_eq!(dec(&r["price"]["amount_eu"]), d(amount), "{r}");
        if i == 4 {
            assert_eq!(dec(&r["price"]["eu_per_wh"]), d("1.65"));
            assert_eq!(dec(&r["price"]["multiplier"]), d("1.5"));
            assert_eq!(r["stream"], json!("meter-rack-a1"));
            acme_peak = r;
        }
    }
    let reading_id = acme_peak["event_id"].as_str().unwrap().to_string();
    let correction = assert_created(
        &post(
            app,
            &format!("/v1/readings/{reading_id}/corrections"),
            "/v1/readings/{event_id}/corrections",
            &op,
            &correction_cmd(),
        )
        .await,
        16,
    );
    assert_eq!(dec(&correction["price"]["amount_eu"]), d("740850"), "{correction}");
    assert_eq!(dec(&correction["delta_eu"]), d("-1650"), "{correction}");
    let credits = assert_created(
        &post(
            app,
            "/v1/tenants/acme-ai/credits",
            "/v1/tenants/{tenant_id}/credits",
            &op,
            &acme_credits(),
        )
        .await,
        17,
    );
    assert_created(
        &post(
            app,
            "/v1/tenants/beta-labs/credits",
            "/v1/tenants/{tenant_id}/credits",
            &op,
            &json!({"amount_eu": "50000000", "memo": "November allocation"}),
        )
        .await,
        18,
    );
    // A tenant moves its own credits.
    let transfer = assert_created(
        &post(
            app,
            "/v1/transfers",
            "/v1/transfers",
            &tenant_token(app, "acme-ai"),
            &transfer_cmd(),
        )
        .await,
        19,
    );
    let close = send(
        app,
        Method::POST,
        "/v1/periods/2026-10/close",
        "/v1/periods/{period}/close",
        Some(&op),
        None,
        &[],
    )
    .await;
    let close = assert_created(&close, 20);
    Campus {
        site,
        tariff,
        acme_peak,
        correction,
        credits,
        transfer,
        close,
        head: 20,
    }
}

/// Stops the server gracefully: in-flight requests finish, then it must be gone, bounded.
async fn stop(app: App) {
    tokio::time::timeout(Duration::from_secs(30), app.stop())
        .await
        .expect("the server stops within 30 s once its clients are done");
}

fn current_period() -> String {
    chrono::Utc::now().format("%Y-%m").to_string()
}

// ---------------------------------------------------------------------------------------
// Success paths
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_campus_through_every_route() {
    let app = spawn_app().await;
    let op = app.operator();
    let auditor = app.auditor();
    let campus = build_campus(&app).await;
    let head = campus.head;

    // The same commands again: 200, duplicate, the original's position.
    let reading_id = campus.acme_peak["event_id"].as_str().unwrap().to_string();
    let again = [
        (
            post(&app, "/v1/sites", "/v1/sites", &op, &site_cmd()).await,
            &campus.site,
        ),
        (
            post(
                &app,
                "/v1/sites/memphis-1/tariffs",
                "/v1/sites/{site_id}/tariffs",
                &op,
                &tariff_cmd(),
            )
            .await,
            &campus.tariff,
        ),
        (
            post(&app, "/v1/readings", "/v1/readings", &op, &acme_peak_reading()).await,
            &campus.acme_peak,
        ),
        (
            post(
                &app,
                &format!("/v1/readings/{reading_id}/corrections"),
                "/v1/readings/{event_id}/corrections",
                &op,
                &correction_cmd(),
            )
            .await,
            &campus.correction,
        ),
        (
            post(
                &app,
                "/v1/tenants/acme-ai/credits",
                "/v1/tenants/{tenant_id}/credits",
                &op,
                &acme_credits(),
            )
            .await,
            &campus.credits,
        ),
        (
            post(&app, "/v1/transfers", "/v1/transfers", &op, &transfer_cmd()).await,
            &campus.transfer,
        ),
        (
            send(
                &app,
                Method::POST,
                "/v1/periods/2026-10/close",
                "/v1/periods/{period}/close",
                Some(&op),
                None,
                &[],
            )
            .await,
            &campus.close,
        ),
    ];
    for (r, original) in &again {
        assert_duplicate_of(r, original);
    }
    // A duplicate reading answers with the price it was recorded at.
    assert_eq!(dec(&again[2].0.json["price"]["amount_eu"]), d("742500"));

    let now_p = current_period();
    let mp = format!("min_position={head}");

    // Accounts.
    let acme = get(
        &app,
        &format!("/v1/accounts/tenant:acme-ai?{mp}"),
        "/v1/accounts/{account}",
        &op,
    )
    .await;
    assert_eq!(acme.status, 200, "{}", acme.text);
    assert_eq!(acme.json["account"], json!("tenant:acme-ai"));
    assert_eq!(dec(&acme.json["balance_eu"]), d("96319150"), "{}", acme.json);
    assert_eq!(dec(&acme.json["debits_eu"]), d("3682500"), "{}", acme.json);
    assert_eq!(dec(&acme.json["credits_eu"]), d("100001650"), "{}", acme.json);
    assert_eq!(dec(&acme.json["debits_wh"]), d("850000"), "{}", acme.json);
    assert_eq!(dec(&acme.json["credits_wh"]), d("1000"), "{}", acme.json);
    assert!(acme.json["position"].as_u64().is_some_and(|p| p >= head));
    let beta = get(
        &app,
        &format!("/v1/accounts/tenant:beta-labs?{mp}"),
        "/v1/accounts/{account}",
        &auditor,
    )
    .await;
    assert_eq!(dec(&beta.json["balance_eu"]), d("52170000"), "{}", beta.json);
    // A tenant reads its own account.
    let own = get(
        &app,
        "/v1/accounts/tenant:acme-ai",
        "/v1/accounts/{account}",
        &tenant_token(&app, "acme-ai"),
    )
    .await;
    assert_eq!(own.status, 200, "{}", own.text);
    assert_eq!(dec(&own.json["balance_eu"]), d("96319150"));
    let battery = get(
        &app,
        &format!("/v1/accounts/storage:megapack-01?{mp}"),
        "/v1/accounts/{account}",
        &op,
    )
    .await;
    assert_eq!(battery.status, 200, "{}", battery.text);
    assert_eq!(dec(&battery.json["debits_wh"]), d("100000"), "{}", battery.json);
    assert_eq!(dec(&battery.json["credits_wh"]), d("90000"), "{}", battery.json);

    // Statements. October is closed: consumption only, final.
    let oct = get(
        &app,
        &format!("/v1/tenants/acme-ai/statements/2026-10?{mp}"),
        "/v1/tenants/{tenant_id}/statements/{period}",
        &tenant_token(&app, "acme-ai"),
    )
    .await;
    assert_eq!(oct.status, 200, "{}", oct.text);
    let s = &oct.json;
    assert_eq!(s["tenant_id"], json!("acme-ai"));
    assert_eq!(s["period"], json!("2026-10"));
    assert_eq!(dec(&s["opening_balance_eu"]), Decimal::ZERO);
    assert_eq!(dec(&s["charges_eu"]), d("440000"), "{s}");
    assert_eq!(dec(&s["closing_balance_eu"]), d("-440000"), "{s}");
    assert_eq!(dec(&s["consumption_wh"]), d("400000"), "{s}");
    assert_eq!(s["final"], json!(true), "{s}");
    let lines = s["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 1, "{s}");
    assert_eq!(lines[0]["kind"], json!("consumption"));
    assert_eq!(lines[0]["band"], json!("standard"));
    assert_eq!(lines[0]["site_id"], json!(SITE));
    assert_eq!(dec(&lines[0]["energy_wh"]), d("400000"));
    assert_eq!(dec(&lines[0]["amount_eu"]), d("440000"));
    for k in ["first_position", "last_position", "chain_hash"] {
        assert!(!s[k].is_null(), "statement member {k}: {s}");
    }

    // November: the corrected peak reading, and the credits and transfer if this is November.
    let nov = get(
        &app,
        &format!("/v1/tenants/acme-ai/statements/2026-11?{mp}"),
        "/v1/tenants/{tenant_id}/statements/{period}",
        &op,
    )
    .await;
    assert_eq!(nov.status, 200, "{}", nov.text);
    let s = &nov.json;
    let in_nov = now_p == "2026-11";
    assert_eq!(dec(&s["opening_balance_eu"]), d("-440000"), "{s}");
    assert_eq!(dec(&s["charges_eu"]), d("740850"), "{s}");
    assert_eq!(dec(&s["consumption_wh"]), d("449000"), "{s}");
    assert_eq!(
        dec(&s["credits_eu"]),
        if in_nov { d("100000000") } else { Decimal::ZERO },
        "{s}"
    );
    assert_eq!(
        dec(&s["transfers_out_eu"]),
        if in_nov { d("2500000") } else { Decimal::ZERO },
        "{s}"
    );
    assert_eq!(dec(&s["transfers_in_eu"]), Decimal::ZERO, "{s}");
    assert_eq!(dec(&s["adjustments_eu"]), Decimal::ZERO, "{s}");
    let closing =
        dec(&s["opening_balance_eu"]) - dec(&s["charges_eu"]) + dec(&s["credits_eu"]) + dec(&s["transfers_in_eu"])
            - dec(&s["transfers_out_eu"])
            + dec(&s["adjustments_eu"]);
    assert_eq!(
        dec(&s["closing_balance_eu"]),
        closing,
        "closing = opening − charges + …: {s}"
    );
    if in_nov {
        assert_eq!(closing, d("96319150"));
    }
    assert_eq!(s["final"], json!(false));
    let kinds: Vec<&str> = s["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"consumption") && kinds.contains(&"correction"),
        "{kinds:?}"
    );
    if in_nov {
        assert!(
            kinds.contains(&"credit") && kinds.contains(&"transfer_out"),
            "{kinds:?}"
        );
    }
    let beta_now = get(
        &app,
        &format!("/v1/tenants/beta-labs/statements/{now_p}?{mp}"),
        "/v1/tenants/{tenant_id}/statements/{period}",
        &auditor,
    )
    .await;
    assert_eq!(
        dec(&beta_now.json["transfers_in_eu"]),
        d("2500000"),
        "{}",
        beta_now.json
    );
    assert_eq!(dec(&beta_now.json["credits_eu"]), d("50000000"), "{}", beta_now.json);

    // The statement as CSV and HTML, by ?format= and by Accept.
    let stmt = "/v1/tenants/acme-ai/statements/2026-10";
    let spec = "/v1/tenants/{tenant_id}/statements/{period}";
    for (path, accept) in [
        (format!("{stmt}?format=csv"), None),
        (stmt.to_string(), Some("text/csv")),
    ] {
        let hdrs: Vec<(&str, &str)> = accept.iter().map(|a| ("accept", *a)).collect();
        let r = send(&app, Method::GET, &path, spec, Some(&op), None, &hdrs).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.media_type(), "text/csv");
        let mut rows = r.text.lines();
        assert!(rows.next().unwrap().starts_with("tenant_id,period,kind"), "{}", r.text);
        assert!(r.text.contains("acme-ai,2026-10,consumption"), "{}", r.text);
        assert!(r.text.contains("closing_balance"), "{}", r.text);
        assert!(r.text.contains("-440000"), "{}", r.text);
    }
    for (path, accept) in [
        (format!("{stmt}?format=html"), None),
        (stmt.to_string(), Some("text/html,application/xhtml+xml")),
    ] {
        let hdrs: Vec<(&str, &str)> = accept.iter().map(|a| ("accept", *a)).collect();
        let r = send(&app, Method::GET, &path, spec, Some(&op), None, &hdrs).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.media_type(), "text/html");
        assert!(r.text.contains("<table") || r.text.contains("<html"), "{}", r.text);
        assert!(r.text.contains("acme-ai") && r.text.contains("2026-10"), "{}", r.text);
    }
    let r = send(
        &app,
        Method::GET,
        stmt,
        spec,
        Some(&op),
        None,
        &[("accept", "application/json")],
    )
    .await;
    assert_eq!(r.media_type(), "application/json");
    assert_eq!(dec(&r.json["charges_eu"]), d("440000"));

    // The energy balance of the site's Monday.
    let eb = get(
        &app,
        &format!("/v1/sites/{SITE}/energy-balance?from=2026-11-02T00:00:00Z&to=2026-11-03T00:00:00Z&{mp}"),
        "/v1/sites/{site_id}/energy-balance",
        &op,
    )
    .await;
    assert_eq!(eb.status, 200, "{}", eb.text);
    let iv = eb.json["intervals"].as_array().unwrap();
    assert_eq!(iv.len(), 2, "{}", eb.json);
    let expect = [
        ("2026-11-02T08:00:00Z", "102000", "100000", "0", "0", "2000"),
        ("2026-11-02T20:00:00Z", "580000", "0", "90000", "649000", "21000"),
    ];
    for (i, (start, g, st, di, c, l)) in expect.iter().enumerate() {
        let x = &iv[i];
        assert_eq!(x["start"], json!(start), "{x}");
        assert_eq!(dec(&x["generated_wh"]), d(g), "{x}");
        assert_eq!(dec(&x["stored_wh"]), d(st), "{x}");
        assert_eq!(dec(&x["dispatched_wh"]), d(di), "{x}");
        assert_eq!(dec(&x["consumed_wh"]), d(c), "{x}");
        assert_eq!(dec(&x["losses_wh"]), d(l), "{x}");
        assert_eq!(x["flagged"], json!(false), "{x}");
    }
    assert_eq!(eb.json["flagged_count"], json!(0));

    // Settlements: every account's net; the nets sum to zero; a tenant's net mirrors its
    // statement.
    for period in ["2026-10", "2026-11"] {
        let st = get(
            &app,
            &format!("/v1/settlements/{period}?{mp}"),
            "/v1/settlements/{period}",
            &auditor,
        )
        .await;
        assert_eq!(st.status, 200, "{}", st.text);
        let accounts = st.json["accounts"].as_array().unwrap();
        assert!(accounts.len() >= 2, "{}", st.json);
        let sum_eu: Decimal = accounts.iter().map(|a| dec(&a["net_eu"])).sum();
        let sum_wh: Decimal = accounts.iter().map(|a| dec(&a["net_wh"])).sum();
        assert_eq!(sum_eu, Decimal::ZERO, "{}", st.json);
        assert_eq!(sum_wh, Decimal::ZERO, "{}", st.json);
        assert_eq!(dec(&st.json["sum_eu"]), Decimal::ZERO);
        assert_eq!(st.json["final"], json!(period == "2026-10"));
        let stmt = get(
            &app,
            &format!("/v1/tenants/acme-ai/statements/{period}"),
            "/v1/tenants/{tenant_id}/statements/{period}",
            &op,
        )
        .await;
        let acme_net = accounts
            .iter()
            .find(|a| a["account"] == json!("tenant:acme-ai"))
            .map(|a| dec(&a["net_eu"]))
            .unwrap();
        let movement = dec(&stmt.json["closing_balance_eu"]) - dec(&stmt.json["opening_balance_eu"]);
        assert_eq!(
            acme_net, -movement,
            "acme's net in {period} (debit-positive) against its statement"
        );
    }

    // Storage.
    let storage = get(&app, &format!("/v1/storage?{mp}"), "/v1/storage", &op).await;
    assert_eq!(storage.status, 200, "{}", storage.text);
    let b = &storage.json["batteries"][0];
    assert_eq!(b["asset_id"], json!("megapack-01"), "{}", storage.json);
    assert_eq!(dec(&b["stored_wh"]), d("100000"));
    assert_eq!(dec(&b["dispatched_wh"]), d("90000"));
    assert_eq!(dec(&b["level_wh"]), d("10000"));
    assert_eq!(dec(&b["capacity_wh"]), d("3900000"));

    // A stream: registration, two readings, the correction; paged by two.
    let mut versions = Vec::new();
    let mut next = Some(1u64);
    while let Some(from) = next {
        let r = get(
            &app,
            &format!("/v1/streams/meter-rack-a1?from_version={from}&limit=2"),
            "/v1/streams/{stream}",
            &auditor,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        for e in r.json["events"].as_array().unwrap() {
            assert_eq!(e["stream"], json!("meter-rack-a1"));
            for k in [
                "position",
                "version",
                "hash",
                "prev_hash",
                "event_id",
                "event_type",
                "data",
            ] {
                assert!(!e[k].is_null(), "event member {k}: {e}");
            }
            versions.push(e["version"].as_u64().unwrap());
        }
        next = r.json["next_version"].as_u64();
        assert!(versions.len() <= 10, "paging does not end");
    }
    assert_eq!(versions, [1, 2, 3, 4]);

    // The global log, paged by seven: gap-free positions, each hash chained to the last.
    let mut events = Vec::new();
    let mut next = Some(1u64);
    let mut pages = 0;
    while let Some(from) = next {
        let r = get(
            &app,
            &format!("/v1/events?from_position={from}&limit=7"),
            "/v1/events",
            &op,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        events.extend(r.json["events"].as_array().unwrap().iter().cloned());
        next = r.json["next_position"].as_u64();
        pages += 1;
        assert!(pages <= 10, "paging does not end");
    }
    assert_eq!(pages, 3, "20 events by 7: two full pages, then the rest");
    assert_eq!(events.len() as u64, head);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["position"], json!(i as u64 + 1));
        if i > 0 {
            assert_eq!(e["prev_hash"], events[i - 1]["hash"], "the chain at {}", i + 1);
        }
    }
    assert_eq!(events[12]["event_id"], campus.acme_peak["event_id"]);
    assert_eq!(events[19]["event_type"], json!("PeriodClosed"));

    // The audit (auditor only): clean.
    let audit = get(&app, "/v1/audit", "/v1/audit", &auditor).await;
    assert_eq!(audit.status, 200, "{}", audit.text);
    assert_eq!(audit.json["clean"], json!(true), "{}", audit.json);
    assert_eq!(audit.json["head_position"], json!(head));

    // Operations: anyone.
    let h = send(&app, Method::GET, "/healthz", "/healthz", None, None, &[]).await;
    assert_eq!(h.status, 200, "{}", h.text);
    let ready = send(&app, Method::GET, "/readyz", "/readyz", None, None, &[]).await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert_eq!(ready.json["head_position"], json!(head));
    let m = send(&app, Method::GET, "/metrics", "/metrics", None, None, &[]).await;
    assert_eq!(m.status, 200);
    assert_eq!(m.media_type(), "text/plain");
    let appends = m
        .text
        .lines()
        .find_map(|l| l.strip_prefix("wattledger_appends_total "))
        .unwrap_or_else(|| panic!("no wattledger_appends_total sample:\n{}", m.text));
    assert_eq!(
        appends.trim().parse::<f64>().unwrap(),
        head as f64,
        "every new event counted once"
    );
    assert!(m.text.contains("# TYPE wattledger_appends_total counter"), "{}", m.text);
    assert!(
        m.text.lines().any(|l| l.starts_with("wattledger_http_requests_total{")
            && l.contains("route=\"/v1/readings\"")
            && l.contains("status=\"201\"")),
        "{}",
        m.text
    );
    let o = send(&app, Method::GET, "/openapi.yaml", "/openapi.yaml", None, None, &[]).await;
    assert_eq!(o.status, 200);
    assert!(o.media_type().contains("yaml"), "{}", o.media_type());
    let spec: serde_yaml::Value = serde_yaml::from_str(&o.text).expect("openapi.yaml parses");
    assert!(spec.get("openapi").is_some(), "no openapi version");
    for (_, path) in wattledger::api::ROUTES {
        assert!(spec["paths"].get(*path).is_some(), "openapi.yaml does not list {path}");
    }
    stop(app).await;
}

// ---------------------------------------------------------------------------------------
// min_position
// ---------------------------------------------------------------------------------------

/// Every answer carries a request id: the caller's when it sent a fit one, otherwise a new
/// version-4 UUID, different for each request.
#[tokio::test]
async fn request_ids_are_echoed_or_new_random_uuids() {
    let app = spawn_app().await;
    let op = app.operator();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..50 {
        let r = get(&app, "/v1/sites", "/v1/sites", &op).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let id = r.headers["x-request-id"].to_str().unwrap().to_string();
        let parsed = uuid::Uuid::parse_str(&id).unwrap_or_else(|e| panic!("{id:?}: {e}"));
        assert_eq!(parsed.get_version_num(), 4, "{id}");
        assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122, "{id}");
        assert!(seen.insert(id.clone()), "request id {id} given twice");
    }
    let r = send(
        &app,
        Method::GET,
        "/v1/sites",
        "/v1/sites",
        Some(&op),
        None,
        &[("x-request-id", "trace-42")],
    )
    .await;
    assert_eq!(r.headers["x-request-id"], "trace-42");
    // Unmatched requests get an id and a count too; matched ones are counted by their route
    // as the router names it.
    for (method, path, status) in [
        (Method::GET, "/v1/nowhere", 404),
        (Method::DELETE, "/v1/sites", 405),
        (Method::GET, "/v1/accounts/tenant:nobody", 404),
    ] {
        let res = app
            .client
            .request(method.clone(), app.url(path))
            .bearer_auth(&op)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), status, "{method} {path}");
        assert!(res.headers().contains_key("x-request-id"), "{method} {path}");
    }
    let m = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for want in [
        r#"{method="GET",route="/v1/sites",status="200"} 51"#,
        r#"{method="GET",route="unmatched",status="404"} 1"#,
        r#"{method="DELETE",route="/v1/sites",status="405"} 1"#,
        r#"{method="GET",route="/v1/accounts/{account}",status="404"} 1"#,
    ] {
        assert!(m.lines().any(|l| l.ends_with(want)), "no line ending {want}:\n{m}");
    }
    stop(app).await;
}

#[tokio::test]
async fn min_position_answers_at_once_when_applied_and_422_past_the_head() {
    let app = spawn_app().await;
    let op = app.operator();
    let campus = build_campus(&app).await;
    let started = Instant::now();
    let r = get(
        &app,
        &format!("/v1/accounts/tenant:acme-ai?min_position={}", campus.head),
        "/v1/accounts/{account}",
        &op,
    )
    .await;
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.json["position"].as_u64().unwrap() >= campus.head);
    assert!(
        took < Duration::from_secs(2),
        "an applied position answers at once, took {took:?}"
    );

    // A position past the durable head has been recorded by no server: waiting could only end
    // in a 503 inviting a retry that cannot succeed, so it is refused at once.
    let started = Instant::now();
    let r = get(
        &app,
        "/v1/settlements/2026-10?min_position=1000000",
        "/v1/settlements/{period}",
        &op,
    )
    .await;
    let took = started.elapsed();
    assert_problem(&r, 422);
    assert_eq!(r.json["errors"][0]["field"], json!("min_position"), "{}", r.json);
    assert!(
        r.json["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("position {}", campus.head)),
        "names the head: {}",
        r.json
    );
    assert!(took < Duration::from_secs(2), "refused at once, took {took:?}");
    stop(app).await;
}

/// A client `event_id` names one event: another kind of command that reuses it is a 409
/// naming that event, not answered as its duplicate (found by schemathesis: credits answered
/// 200 with the result of a transfer). The first command's own retry is still a duplicate.
#[tokio::test]
async fn an_event_id_reused_by_another_kind_of_command_is_a_conflict() {
    let app = spawn_app().await;
    let op = app.operator();
    let campus = build_campus(&app).await;
    let id = "5b0e8a4e-9f3c-4d2a-8c61-2f0d6c1e7a90";
    let transfer = json!({"from_tenant": "acme-ai", "to_tenant": "beta-labs", "amount_eu": "1", "event_id": id});
    let first = assert_created(
        &post(&app, "/v1/transfers", "/v1/transfers", &op, &transfer).await,
        campus.head + 1,
    );
    let credits = json!({"amount_eu": "1", "event_id": id});
    for (path, spec_path, body) in [
        (
            "/v1/tenants/acme-ai/credits",
            "/v1/tenants/{tenant_id}/credits",
            &credits,
        ),
        (
            &format!(
                "/v1/readings/{}/corrections",
                campus.acme_peak["event_id"].as_str().unwrap()
            ),
            "/v1/readings/{event_id}/corrections",
            &json!({"correction_id": id, "wh": "1000", "reason": "meter swap"}),
        ),
    ] {
        let r = post(&app, path, spec_path, &op, body).await;
        assert_problem(&r, 409);
        assert_eq!(r.json["existing_event_id"], json!(id), "{}", r.json);
        assert!(
            r.json["detail"].as_str().unwrap().contains("CreditsTransferred"),
            "{}",
            r.json
        );
    }
    let again = post(&app, "/v1/transfers", "/v1/transfers", &op, &transfer).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.json["duplicate"], json!(true));
    assert_eq!(again.json["position"], first["position"]);
    stop(app).await;
}

// ---------------------------------------------------------------------------------------
// Roles and scopes
// ---------------------------------------------------------------------------------------

/// A route, the spec path, a body, and the roles it admits.
type RoleCase = (Method, String, &'static str, Option<Value>, Vec<Role>);

#[tokio::test]
async fn every_role_reaches_exactly_its_routes() {
    let app = spawn_app().await;
    let campus = build_campus(&app).await;
    let reading_id = campus.acme_peak["event_id"].as_str().unwrap().to_string();
    let correction_path = format!("/v1/readings/{reading_id}/corrections");
    let tokens = [
        (Role::Operator, app.operator()),
        (Role::Auditor, app.auditor()),
        (Role::Tenant, tenant_token(&app, "acme-ai")),
        (Role::Meter, app.token(Role::Meter, None, None, Some(&["rack-a1"]))),
    ];
    use Role::*;
    // (method, path, spec path, body, roles allowed). Bodies repeat recorded commands, so an
    // allowed write is a duplicate and changes nothing.
    let table: Vec<RoleCase> = vec![
        (
            Method::POST,
            "/v1/sites".into(),
            "/v1/sites",
            Some(site_cmd()),
            vec![Operator],
        ),
        (
            Method::POST,
            "/v1/tenants".into(),
            "/v1/tenants",
            Some(tenant_cmd("acme-ai", "Acme AI")),
            vec![Operator],
        ),
        (
            Method::POST,
            "/v1/meters".into(),
            "/v1/meters",
            Some(load_meter("rack-a1", "acme-ai", "2000000")),
            vec![Operator],
        ),
        (
            Method::POST,
            "/v1/sites/memphis-1/tariffs".into(),
            "/v1/sites/{site_id}/tariffs",
            Some(tariff_cmd()),
            vec![Operator],
        ),
        (
            Method::POST,
            "/v1/readings".into(),
            "/v1/readings",
            Some(acme_peak_reading()),
            vec![Operator, Meter],
        ),
        (
            Method::POST,
            correction_path.clone(),
            "/v1/readings/{event_id}/corrections",
            Some(correction_cmd()),
            vec![Operator, Meter],
        ),
        (
            Method::POST,
            "/v1/tenants/acme-ai/credits".into(),
            "/v1/tenants/{tenant_id}/credits",
            Some(acme_credits()),
            vec![Operator],
        ),
        (
            Method::POST,
            "/v1/transfers".into(),
            "/v1/transfers",
            Some(transfer_cmd()),
            vec![Operator, Tenant],
        ),
        (
            Method::POST,
            "/v1/periods/2026-10/close".into(),
            "/v1/periods/{period}/close",
            None,
            vec![Operator],
        ),
        (
            Method::GET,
            "/v1/accounts/tenant:acme-ai".into(),
            "/v1/accounts/{account}",
            None,
            vec![Operator, Auditor, Tenant],
        ),
        (
            Method::GET,
            "/v1/tenants/acme-ai/statements/2026-10".into(),
            "/v1/tenants/{tenant_id}/statements/{period}",
            None,
            vec![Operator, Auditor, Tenant],
        ),
        (
            Method::GET,
            "/v1/sites/memphis-1/energy-balance?from=2026-11-02T00:00:00Z&to=2026-11-03T00:00:00Z".into(),
            "/v1/sites/{site_id}/energy-balance",
            None,
            vec![Operator, Auditor],
        ),
        (
            Method::GET,
            "/v1/settlements/2026-10".into(),
            "/v1/settlements/{period}",
            None,
            vec![Operator, Auditor],
        ),
        (
            Method::GET,
            "/v1/storage".into(),
            "/v1/storage",
            None,
            vec![Operator, Auditor],
        ),
        (
            Method::GET,
            "/v1/streams/site-memphis-1".into(),
            "/v1/streams/{stream}",
            None,
            vec![Operator, Auditor],
        ),
        (
            Method::GET,
            "/v1/events".into(),
            "/v1/events",
            None,
            vec![Operator, Auditor],
        ),
        (Method::GET, "/v1/audit".into(), "/v1/audit", None, vec![Auditor]),
    ];
    for (method, path, spec, body, allowed) in &table {
        for (role, token) in &tokens {
            let r = send(
                &app,
                method.clone(),
                path,
                spec,
                Some(token),
                body.as_ref().map(json_body),
                &[],
            )
            .await;
            if allowed.contains(role) {
                assert_eq!(
                    r.status, 200,
                    "{role:?} {method} {path} is allowed (a duplicate or a read): {}",
                    r.text
                );
            } else {
                assert_problem(&r, 403);
                assert!(
                    r.header("www-authenticate").is_none(),
                    "a 403 is not an authentication challenge: {method} {path}"
                );
            }
        }
    }
    // The live stream (its body never ends: only the head is read).
    for (role, token) in &tokens {
        let res = app
            .client
            .get(app.url("/v1/events/live"))
            .bearer_auth(token)
            .header("last-event-id", "20")
            .send()
            .await
            .unwrap();
        let allowed = matches!(role, Operator | Auditor);
        if allowed {
            assert_eq!(res.status().as_u16(), 200, "{role:?} reads the live stream");
            let ct = res.headers()["content-type"].to_str().unwrap().to_string();
            assert!(ct.starts_with("text/event-stream"), "{ct}");
        } else {
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap();
            assert_eq!(status, 403, "{role:?} may not read the live stream: {body}");
            assert_matches_spec("GET", "/v1/events/live", 403, "application/problem+json", &body);
        }
    }

    // Tenant scope: another tenant's statement and account, another tenant's credits.
    let acme = tenant_token(&app, "acme-ai");
    let r = get(
        &app,
        "/v1/tenants/beta-labs/statements/2026-11",
        "/v1/tenants/{tenant_id}/statements/{period}",
        &acme,
    )
    .await;
    assert_problem(&r, 403);
    let r = get(&app, "/v1/accounts/tenant:beta-labs", "/v1/accounts/{account}", &acme).await;
    assert_problem(&r, 403);
    let r = get(&app, "/v1/accounts/site:memphis-1:bus", "/v1/accounts/{account}", &acme).await;
    assert_problem(&r, 403);
    let theft = json!({"from_tenant": "beta-labs", "to_tenant": "acme-ai", "amount_eu": "1", "memo": "mine now"});
    let r = post(&app, "/v1/transfers", "/v1/transfers", &acme, &theft).await;
    assert_problem(&r, 403);
    // A tenant may not post readings, even for its own rack.
    let own_rack = reading(
        "rack-a1",
        "consumed",
        "2026-11-02T20:15:00Z",
        "2026-11-02T20:30:00Z",
        "1000",
    );
    let r = post(&app, "/v1/readings", "/v1/readings", &acme, &own_rack).await;
    assert_problem(&r, 403);
    // The auditor writes nothing, new or not.
    let auditor = app.auditor();
    let r = post(&app, "/v1/readings", "/v1/readings", &auditor, &own_rack).await;
    assert_problem(&r, 403);
    let r = post(
        &app,
        "/v1/sites",
        "/v1/sites",
        &auditor,
        &json!({"site_id": "new-site", "time_zone": "UTC"}),
    )
    .await;
    assert_problem(&r, 403);

    // Meter scope, by `meters` and by `sites`.
    let b1_only = app.token(Role::Meter, None, None, Some(&["rack-b1"]));
    let r = post(&app, "/v1/readings", "/v1/readings", &b1_only, &own_rack).await;
    assert_problem(&r, 403);
    let r = post(
        &app,
        &correction_path,
        "/v1/readings/{event_id}/corrections",
        &b1_only,
        &json!({"wh": "448000", "reason": "x"}),
    )
    .await;
    assert_problem(&r, 403);
    let b1 = reading(
        "rack-b1",
        "consumed",
        "2026-11-02T20:15:00Z",
        "2026-11-02T20:30:00Z",
        "100000",
    );
    assert_created(&post(&app, "/v1/readings", "/v1/readings", &b1_only, &b1).await, 21);
    let other_site = app.token(Role::Meter, None, Some(&["elsewhere-1"]), None);
    let r = post(&app, "/v1/readings", "/v1/readings", &other_site, &own_rack).await;
    assert_problem(&r, 403);
    // A bulk request from an out-of-scope meter: each line refused on its own.
    let bulk = Body {
        content_type: "application/x-ndjson",
        bytes: format!("{own_rack}\n").into_bytes(),
    };
    let res = send(
        &app,
        Method::POST,
        "/v1/readings",
        "/v1/readings",
        Some(&other_site),
        Some(bulk),
        &[],
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text);
    let line: Value = serde_json::from_str(res.text.lines().next().unwrap()).unwrap();
    assert_eq!(line["ok"], json!(false), "{line}");
    assert_eq!(line["status"], json!(403), "{line}");
    let site_scope = app.token(Role::Meter, None, Some(&[SITE]), None);
    assert_created(
        &post(&app, "/v1/readings", "/v1/readings", &site_scope, &own_rack).await,
        22,
    );
    // …and it may correct a reading of its site.
    let r = post(
        &app,
        &correction_path,
        "/v1/readings/{event_id}/corrections",
        &site_scope,
        &json!({"wh": "448000", "reason": "again"}),
    )
    .await;
    assert_created(&r, 23);
    stop(app).await;
}

// ---------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------

fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        let chars = [18, 12, 6, 0].map(|s| A[((n >> s) & 63) as usize] as char);
        out.extend(&chars[..c.len() + 1]);
    }
    out
}

fn alg_none_token(c: &Claims) -> String {
    format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(&serde_json::to_vec(c).unwrap())
    )
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap()
}

/// Sends an authenticated read the operator may make; returns the reply.
async fn probe(app: &App, token: Option<&str>) -> Reply {
    send(app, Method::GET, "/v1/events?limit=1", "/v1/events", token, None, &[]).await
}

fn assert_unauthorized(r: &Reply, why: &str) {
    assert_eq!(r.status, 401, "{why}: {}", r.text);
    assert_problem(r, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer"),
        "{why}: a 401 challenges for a bearer token"
    );
}

#[tokio::test]
async fn bad_tokens_are_refused_with_401() {
    let app = spawn_app().await;
    assert_eq!(probe(&app, Some(&app.operator())).await.status, 200);

    assert_unauthorized(&probe(&app, None).await, "no token");
    let r = send(
        &app,
        Method::GET,
        "/v1/events",
        "/v1/events",
        None,
        None,
        &[("authorization", "Basic b3A6b3A=")],
    )
    .await;
    assert_unauthorized(&r, "not a bearer token");
    assert_unauthorized(&probe(&app, Some("not-a-jwt")).await, "garbage");
    let r = post(&app, "/v1/sites", "/v1/sites", "", &site_cmd()).await;
    assert_unauthorized(&r, "empty bearer token on a write");

    // Expired well beyond the 30 s leeway; just expired (inside it) still passes.
    let expired = app.auth.mint(claims(Role::Operator, None, None, None, -300)).unwrap();
    assert_unauthorized(&probe(&app, Some(&expired)).await, "expired 5 min ago");
    let just = app.auth.mint(claims(Role::Operator, None, None, None, -5)).unwrap();
    assert_eq!(
        probe(&app, Some(&just)).await.status,
        200,
        "5 s past exp is within the leeway"
    );

    // alg: none.
    let none = alg_none_token(&claims(Role::Operator, None, None, None, 3600));
    assert_unauthorized(&probe(&app, Some(&none)).await, "alg none");
    // HS256 with another secret.
    let wrong = encode(
        &Header::new(Algorithm::HS256),
        &claims(Role::Operator, None, None, None, 3600),
        &EncodingKey::from_secret(b"another-secret-another-secret-0123456789"),
    )
    .unwrap();
    assert_unauthorized(&probe(&app, Some(&wrong)).await, "wrong HS256 secret");
    // The right secret, but a signature taken from another token.
    let good = app.operator();
    let auditor = app.auditor();
    let spliced = format!(
        "{}.{}",
        good.rsplit_once('.').unwrap().0,
        auditor.rsplit_once('.').unwrap().1
    );
    assert_unauthorized(&probe(&app, Some(&spliced)).await, "spliced signature");
    // A tenant token must name its tenant.
    let tenantless = app.auth.mint(claims(Role::Tenant, None, None, None, 3600)).unwrap();
    let r = get(
        &app,
        "/v1/accounts/tenant:acme-ai",
        "/v1/accounts/{account}",
        &tenantless,
    )
    .await;
    assert_unauthorized(&r, "tenant token without tenant_id");
    // A role the contract does not know.
    let mut odd = serde_json::to_value(claims(Role::Operator, None, None, None, 3600)).unwrap();
    odd["role"] = json!("superuser");
    let odd = encode(
        &Header::new(Algorithm::HS256),
        &odd,
        &EncodingKey::from_secret(TEST_SECRET.as_bytes()),
    )
    .unwrap();
    assert_unauthorized(&probe(&app, Some(&odd)).await, "unknown role");
    // No exp at all.
    let mut forever = serde_json::to_value(claims(Role::Operator, None, None, None, 3600)).unwrap();
    forever.as_object_mut().unwrap().remove("exp");
    let forever = encode(
        &Header::new(Algorithm::HS256),
        &forever,
        &EncodingKey::from_secret(TEST_SECRET.as_bytes()),
    )
    .unwrap();
    assert_unauthorized(&probe(&app, Some(&forever)).await, "no exp");
    stop(app).await;
}

#[tokio::test]
async fn an_rs256_server_refuses_other_keys_and_hs_rs_confusion() {
    let public = fixture("rsa-public.pem");
    let auth = AuthConfig::public_key(Algorithm::RS256, &public, Some(&fixture("rsa-private.pem")), "test").unwrap();
    let app = spawn_app_with(auth, Arc::new(SystemClock)).await;
    let c = claims(Role::Operator, None, None, None, 3600);
    // Its own key: accepted.
    assert_eq!(probe(&app, Some(&app.operator())).await.status, 200);
    // Another RSA key.
    let other = encode(
        &Header::new(Algorithm::RS256),
        &c,
        &EncodingKey::from_rsa_pem(&fixture("rsa-other-private.pem")).unwrap(),
    )
    .unwrap();
    assert_unauthorized(&probe(&app, Some(&other)).await, "RS256 with another key");
    // HS256 keyed with the server's public key PEM: the classic confusion.
    let confused = encode(&Header::new(Algorithm::HS256), &c, &EncodingKey::from_secret(&public)).unwrap();
    assert_unauthorized(
        &probe(&app, Some(&confused)).await,
        "HS256 keyed with the RSA public key",
    );
    // HS256 with the test servers' secret, and alg none.
    let hs = encode(
        &Header::new(Algorithm::HS256),
        &c,
        &EncodingKey::from_secret(TEST_SECRET.as_bytes()),
    )
    .unwrap();
    assert_unauthorized(&probe(&app, Some(&hs)).await, "HS256 on an RS256 server");
    assert_unauthorized(
        &probe(&app, Some(&alg_none_token(&c))).await,
        "alg none on an RS256 server",
    );
    stop(app).await;
}

#[tokio::test]
async fn an_eddsa_server_accepts_eddsa_tokens_only() {
    let auth = AuthConfig::public_key(Algorithm::EdDSA, &fixture("ed25519-public.pem"), None, "test").unwrap();
    let app = spawn_app_with(auth, Arc::new(SystemClock)).await;
    let c = claims(Role::Operator, None, None, None, 3600);
    let ed = encode(
        &Header::new(Algorithm::EdDSA),
        &c,
        &EncodingKey::from_ed_pem(&fixture("ed25519-private.pem")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        probe(&app, Some(&ed)).await.status,
        200,
        "an EdDSA token signed with the server's key"
    );
    let rs = encode(
        &Header::new(Algorithm::RS256),
        &c,
        &EncodingKey::from_rsa_pem(&fixture("rsa-private.pem")).unwrap(),
    )
    .unwrap();
    assert_unauthorized(&probe(&app, Some(&rs)).await, "RS256 on an EdDSA server");
    let hs = encode(
        &Header::new(Algorithm::HS256),
        &c,
        &EncodingKey::from_secret(&fixture("ed25519-public.pem")),
    )
    .unwrap();
    assert_unauthorized(&probe(&app, Some(&hs)).await, "HS256 keyed with the Ed25519 public key");
    stop(app).await;
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_configured() {
    let auth = AuthConfig::hs256(TEST_SECRET.as_bytes(), "test")
        .unwrap()
        .with_issuer_audience(Some("wattledger".into()), Some("campus".into()));
    let app = spawn_app_with(auth, Arc::new(SystemClock)).await;
    let sign = |iss: Option<&str>, aud: Option<&str>| {
        let mut c = claims(Role::Operator, None, None, None, 3600);
        c.iss = iss.map(str::to_string);
        c.aud = aud.map(str::to_string);
        encode(
            &Header::new(Algorithm::HS256),
            &c,
            &EncodingKey::from_secret(TEST_SECRET.as_bytes()),
        )
        .unwrap()
    };
    assert_eq!(
        probe(&app, Some(&sign(Some("wattledger"), Some("campus"))))
            .await
            .status,
        200
    );
    // Minted by the server's own config: iss and aud filled in.
    assert_eq!(probe(&app, Some(&app.operator())).await.status, 200);
    assert_unauthorized(
        &probe(&app, Some(&sign(Some("wattledger"), Some("other")))).await,
        "wrong audience",
    );
    assert_unauthorized(
        &probe(&app, Some(&sign(Some("someone-else"), Some("campus")))).await,
        "wrong issuer",
    );
    assert_unauthorized(&probe(&app, Some(&sign(None, Some("campus")))).await, "no issuer");
    assert_unauthorized(&probe(&app, Some(&sign(Some("wattledger"), None))).await, "no audience");
    stop(app).await;
}

// ---------------------------------------------------------------------------------------
// Error statuses
// ---------------------------------------------------------------------------------------

/// One HTTP/1.1 exchange over a raw socket: `head` (request line and headers, ending in a
/// blank line) then `body`, written while the answer is read. Returns status, lower-cased
/// headers and body.
fn raw_exchange(addr: &str, head: String, body: Vec<u8>) -> (u16, HashMap<String, String>, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let mut w = s.try_clone().unwrap();
    // The server may answer (and close) before reading the body: write errors are expected.
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&body);
    });
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let parsed = loop {
        match s.read(&mut chunk) {
            Ok(0) => break parse_response(&buf),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if let Some(p) = parse_response(&buf) {
                    break Some(p);
                }
            }
            Err(e) => {
                let p = parse_response(&buf);
                assert!(
                    p.is_some(),
                    "reading the answer: {e}; got {:?}",
                    String::from_utf8_lossy(&buf)
                );
                break p;
            }
        }
    };
    let _ = s.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
    parsed.unwrap_or_else(|| panic!("no complete answer: {:?}", String::from_utf8_lossy(&buf)))
}

/// A complete response (with a Content-Length body) in `buf`, if there is one.
fn parse_response(buf: &[u8]) -> Option<(u16, HashMap<String, String>, String)> {
    let text = String::from_utf8_lossy(buf);
    let (head, rest) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers.get("content-length")?.parse().ok()?;
    (rest.len() >= len).then(|| (status, headers, rest[..len].to_string()))
}

async fn raw(app: &App, head: String, body: Vec<u8>) -> (u16, HashMap<String, String>, Value) {
    let addr = app.base.trim_start_matches("http://").to_string();
    let (status, headers, text) = tokio::task::spawn_blocking(move || raw_exchange(&addr, head, body))
        .await
        .unwrap();
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status} body is not JSON ({e}): {text}"));
    (status, headers, v)
}

fn assert_raw_problem(r: &(u16, HashMap<String, String>, Value), status: u16, method: &str, spec: &str) {
    assert_eq!(r.0, status, "{}", r.2);
    let ct = r.1.get("content-type").map(String::as_str).unwrap_or("");
    assert!(ct.starts_with("application/problem+json"), "{ct}");
    assert_eq!(r.2["status"], json!(status));
    for k in ["type", "title", "detail"] {
        assert!(r.2[k].is_string(), "problem member {k}: {}", r.2);
    }
    assert_matches_spec(method, spec, status, "application/problem+json", &r.2);
}

#[tokio::test]
async fn every_error_status_is_a_problem_document() {
    let app = spawn_app().await;
    let op = app.operator();
    let campus = build_campus(&app).await;

    // 400: malformed JSON, located.
    let bad = Body {
        content_type: "application/json",
        bytes: b"{\n  \"tenant_id\": \"gamma-ml\",\n  \"name\": ]\n}".to_vec(),
    };
    let r = send(
        &app,
        Method::POST,
        "/v1/tenants",
        "/v1/tenants",
        Some(&op),
        Some(bad),
        &[],
    )
    .await;
    assert_problem(&r, 400);
    let detail = r.json["detail"].as_str().unwrap();
    assert!(
        detail.contains("line 3") && detail.contains("column"),
        "the detail locates the mistake: {detail}"
    );
    // A JSON value that is not an object.
    let r = send(
        &app,
        Method::POST,
        "/v1/tenants",
        "/v1/tenants",
        Some(&op),
        Some(json_body(&json!([1, 2]))),
        &[],
    )
    .await;
    assert_problem(&r, 400);

    // 401.
    let r = post(&app, "/v1/tenants", "/v1/tenants", "", &tenant_cmd("gamma-ml", "Gamma")).await;
    assert_unauthorized(&r, "no token");

    // 403.
    let r = post(
        &app,
        "/v1/tenants",
        "/v1/tenants",
        &app.auditor(),
        &tenant_cmd("gamma-ml", "Gamma"),
    )
    .await;
    assert_problem(&r, 403);

    // 404: an unknown tenant's statement, an unknown meter, an unknown reading, an unknown
    // route (held against the shape of any 404).
    let r = get(
        &app,
        "/v1/tenants/nobody/statements/2026-11",
        "/v1/tenants/{tenant_id}/statements/{period}",
        &op,
    )
    .await;
    assert_problem(&r, 404);
    let r = post(
        &app,
        "/v1/readings",
        "/v1/readings",
        &op,
        &reading(
            "no-such-meter",
            "consumed",
            "2026-11-02T20:00:00Z",
            "2026-11-02T20:15:00Z",
            "1",
        ),
    )
    .await;
    assert_problem(&r, 404);
    assert_eq!(r.json["errors"][0]["field"], json!("meter_id"), "{}", r.json);
    let r = post(
        &app,
        &format!("/v1/readings/{}/corrections", uuid::Uuid::new_v4()),
        "/v1/readings/{event_id}/corrections",
        &op,
        &correction_cmd(),
    )
    .await;
    assert_problem(&r, 404);
    let r = send(
        &app,
        Method::GET,
        "/v1/no-such-route",
        "/v1/tenants/{tenant_id}/statements/{period}",
        Some(&op),
        None,
        &[],
    )
    .await;
    assert_problem(&r, 404);
    let r = get(&app, "/v1/streams/meter-nothing", "/v1/streams/{stream}", &op).await;
    assert_problem(&r, 404);

    // 409: the same reading identity with another value names the recorded event.
    let mut other_value = acme_peak_reading();
    other_value["wh"] = json!("440000");
    let r = post(&app, "/v1/readings", "/v1/readings", &op, &other_value).await;
    assert_problem(&r, 409);
    assert_eq!(r.json["existing_event_id"], campus.acme_peak["event_id"], "{}", r.json);
    // A site registered again with other attributes.
    let r = post(
        &app,
        "/v1/sites",
        "/v1/sites",
        &op,
        &json!({"site_id": SITE, "time_zone": "Europe/Paris"}),
    )
    .await;
    assert_problem(&r, 409);

    // 413: a JSON body above 64 KiB, declared; and one sent chunked, without a length.
    let addr = app.base.trim_start_matches("http://").to_string();
    let big = 70 * 1024;
    let r = raw(
        &app,
        format!(
            "POST /v1/tenants HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {op}\r\ncontent-type: application/json\r\ncontent-length: {big}\r\n\r\n"
        ),
        Vec::new(),
    )
    .await;
    assert_raw_problem(&r, 413, "POST", "/v1/tenants");
    let name = "x".repeat(big);
    let payload = serde_json::to_vec(&tenant_cmd("gamma-ml", &name)).unwrap();
    let mut chunked = Vec::new();
    for c in payload.chunks(8 * 1024) {
        chunked.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        chunked.extend_from_slice(c);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let r = raw(
        &app,
        format!(
            "POST /v1/tenants HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {op}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
        ),
        chunked,
    )
    .await;
    assert_raw_problem(&r, 413, "POST", "/v1/tenants");
    // NDJSON: more than 100,000 lines…
    let lines = "{}\n".repeat(100_001).into_bytes();
    let r = send(
        &app,
        Method::POST,
        "/v1/readings",
        "/v1/readings",
        Some(&op),
        Some(Body {
            content_type: "application/x-ndjson",
            bytes: lines,
        }),
        &[],
    )
    .await;
    assert_problem(&r, 413);
    // …or more than 32 MiB, refused on its declared length before any of it is read.
    let r = raw(
        &app,
        format!(
            "POST /v1/readings HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {op}\r\ncontent-type: application/x-ndjson\r\ncontent-length: {}\r\n\r\n",
            32 * 1024 * 1024 + 1
        ),
        Vec::new(),
    )
    .await;
    assert_raw_problem(&r, 413, "POST", "/v1/readings");

    // 415: a body that is not JSON, or has no content type.
    let r = send(
        &app,
        Method::POST,
        "/v1/tenants",
        "/v1/tenants",
        Some(&op),
        Some(Body {
            content_type: "text/plain",
            bytes: br#"{"tenant_id":"gamma-ml","name":"Gamma"}"#.to_vec(),
        }),
        &[],
    )
    .await;
    assert_problem(&r, 415);
    let r = send(
        &app,
        Method::POST,
        "/v1/readings",
        "/v1/readings",
        Some(&op),
        Some(Body {
            content_type: "text/csv",
            bytes: b"rack-a1,consumed\n".to_vec(),
        }),
        &[],
    )
    .await;
    assert_problem(&r, 415);

    // 422: an invalid field, named.
    let r = post(
        &app,
        "/v1/sites",
        "/v1/sites",
        &op,
        &json!({"site_id": "mars-1", "time_zone": "Mars/Olympus_Mons"}),
    )
    .await;
    assert_problem(&r, 422);
    assert_eq!(r.json["errors"][0]["field"], json!("time_zone"), "{}", r.json);
    assert!(r.json["errors"][0]["message"].is_string());
    let r = post(
        &app,
        "/v1/readings",
        "/v1/readings",
        &op,
        &reading(
            "rack-a1",
            "consumed",
            "2026-11-03T20:00:00Z",
            "2026-11-03T20:15:00Z",
            "-5",
        ),
    )
    .await;
    assert_problem(&r, 422);
    assert_eq!(r.json["errors"][0]["field"], json!("wh"), "{}", r.json);
    // An interval that ends in the future.
    let start = chrono::Utc::now() + chrono::Duration::hours(1);
    let future = reading(
        "rack-a1",
        "consumed",
        &start.format("%Y-%m-%dT%H:00:00Z").to_string(),
        &(start + chrono::Duration::hours(1))
            .format("%Y-%m-%dT%H:00:00Z")
            .to_string(),
        "1",
    );
    let r = post(&app, "/v1/readings", "/v1/readings", &op, &future).await;
    assert_problem(&r, 422);
    assert_eq!(r.json["errors"][0]["field"], json!("end"), "{}", r.json);
    // A period that is not a month, a limit out of range.
    let r = get(&app, "/v1/settlements/2026-13", "/v1/settlements/{period}", &op).await;
    assert_problem(&r, 422);
    assert_eq!(r.json["errors"][0]["field"], json!("period"), "{}", r.json);
    let r = get(&app, "/v1/events?limit=0", "/v1/events", &op).await;
    assert_problem(&r, 422);
    assert_eq!(r.json["errors"][0]["field"], json!("limit"), "{}", r.json);
    // A transfer the tenant cannot afford.
    let r = post(
        &app,
        "/v1/transfers",
        "/v1/transfers",
        &op,
        &json!({"from_tenant": "beta-labs", "to_tenant": "acme-ai", "amount_eu": "999999999999", "memo": "too much"}),
    )
    .await;
    assert_problem(&r, 422);
    assert_eq!(r.json["errors"][0]["field"], json!("amount_eu"), "{}", r.json);

    // Nothing above changed the log.
    let ready = send(&app, Method::GET, "/readyz", "/readyz", None, None, &[]).await;
    assert_eq!(
        ready.json["head_position"],
        json!(campus.head),
        "refused commands change nothing"
    );
    stop(app).await;
}

// ---------------------------------------------------------------------------------------
// Bulk NDJSON
// ---------------------------------------------------------------------------------------

const BULK_TENANTS: usize = 5;
const BULK_READINGS: usize = 50_000;

/// The `k`th bulk reading: tenant `k % 5`, slots going back in time from 2026-11-01 00:00Z.
fn bulk_reading(k: usize) -> (usize, chrono::DateTime<chrono::Utc>, u64) {
    let tenant = k % BULK_TENANTS;
    let slot = (k / BULK_TENANTS) as i64;
    let nov = chrono::DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let start = nov - chrono::Duration::minutes(15 * (slot + 1));
    // Rated 1 MW: at most 262500 Wh in 15 minutes; these stay far below.
    let wh = 1_000 * (tenant as u64 + 1) + (slot as u64 % 97);
    (tenant, start, wh)
}

fn bulk_line(tenant: usize, start: chrono::DateTime<chrono::Utc>, wh: i64) -> String {
    let end = start + chrono::Duration::minutes(15);
    json!({
        "meter_id": format!("bulk-{tenant}"),
        "flow": "consumed",
        "start": start.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "end": end.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "wh": wh.to_string(),
    })
    .to_string()
}

enum Expect {
    /// The `k`th good reading.
    New(usize),
    /// An exact repeat of the line with this (1-based) number.
    Repeat(usize),
    Refused(u16, Option<&'static str>),
    /// Same identity as that line, another value.
    Conflict(usize),
}

#[tokio::test]
async fn a_bulk_request_of_50000_readings_answers_every_line_in_order() {
    let app = spawn_app().await;
    let op = app.operator();
    assert_created(&post(&app, "/v1/sites", "/v1/sites", &op, &site_cmd()).await, 1);
    let mut pos = 1;
    for t in 0..BULK_TENANTS {
        pos += 1;
        assert_created(
            &post(
                &app,
                "/v1/tenants",
                "/v1/tenants",
                &op,
                &tenant_cmd(&format!("t-{t}"), "Bulk"),
            )
            .await,
            pos,
        );
        pos += 1;
        let m = load_meter(&format!("bulk-{t}"), &format!("t-{t}"), "1000000");
        assert_created(&post(&app, "/v1/meters", "/v1/meters", &op, &m).await, pos);
    }
    pos += 1;
    let mut tariff = tariff_cmd();
    tariff["effective_from"] = json!("2025-01-01T00:00:00Z");
    assert_created(
        &post(
            &app,
            "/v1/sites/memphis-1/tariffs",
            "/v1/sites/{site_id}/tariffs",
            &op,
            &tariff,
        )
        .await,
        pos,
    );
    let setup = pos;

    // The body: 50,000 good readings, with bad lines among them.
    let mut lines: Vec<String> = Vec::new();
    let mut expect: Vec<Expect> = Vec::new();
    let mut consumption: BTreeMap<(usize, String), u64> = BTreeMap::new();
    for k in 0..BULK_READINGS {
        let (t, start, wh) = bulk_reading(k);
        lines.push(bulk_line(t, start, wh as i64));
        expect.push(Expect::New(k));
        *consumption.entry((t, start.format("%Y-%m").to_string())).or_default() += wh;
        match k {
            99 => {
                lines.push(r#"{"meter_id": "bulk-0", "flow": "consumed", "start": "2026-01-01T00:00:00Z""#.into());
                expect.push(Expect::Refused(400, None));
            }
            1_999 => {
                let (t, start, _) = bulk_reading(BULK_READINGS + 7);
                lines.push(bulk_line(t, start, -250));
                expect.push(Expect::Refused(422, Some("wh")));
            }
            29_999 => {
                let (_, start, _) = bulk_reading(3);
                lines.push(bulk_line(0, start, 10).replace("bulk-0", "no-such-meter"));
                expect.push(Expect::Refused(404, Some("meter_id")));
            }
            44_999 => {
                // Line 1 again with another value: a conflict naming line 1's event.
                let (t, start, wh) = bulk_reading(0);
                lines.push(bulk_line(t, start, wh as i64 + 1));
                expect.push(Expect::Conflict(1));
                // Line 2 again, exactly: a duplicate at line 2's position.
                let (t, start, wh) = bulk_reading(1);
                lines.push(bulk_line(t, start, wh as i64));
                expect.push(Expect::Repeat(2));
            }
            _ => {}
        }
    }
    let body = lines.join("\n") + "\n";
    let body_len = body.len();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    let started = Instant::now();
    let res = client
        .post(app.url("/v1/readings"))
        .bearer_auth(&op)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    let first_byte = started.elapsed();
    assert_eq!(res.status().as_u16(), 200);
    let ct = res.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("application/x-ndjson"), "{ct}");
    let text = res.text().await.unwrap();
    let took = started.elapsed();
    println!(
        "bulk: {} lines ({} bytes) answered in {took:?} (headers after {first_byte:?}): {:.0} readings/s",
        lines.len(),
        body_len,
        BULK_READINGS as f64 / took.as_secs_f64()
    );

    let answers: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("answer line is not JSON ({e}): {l}")))
        .collect();
    assert_eq!(answers.len(), lines.len(), "one answer per line");
    let mut positions: HashMap<u64, String> = HashMap::new();
    for (i, (a, e)) in answers.iter().zip(&expect).enumerate() {
        let n = i + 1;
        assert_eq!(a["line"], json!(n), "answers in order: {a}");
        match e {
            Expect::New(k) => {
                assert_eq!(a["ok"], json!(true), "line {n}: {a}");
                assert_eq!(a["status"], json!(201), "line {n}: {a}");
                assert_eq!(a["duplicate"], json!(false), "line {n}: {a}");
                let p = a["position"].as_u64().unwrap();
                assert_eq!(p, setup + 1 + *k as u64, "line {n}: positions follow the lines' order");
                positions.insert(p, a["event_id"].as_str().unwrap().to_string());
            }
            Expect::Repeat(m) => {
                assert_eq!(a["status"], json!(200), "line {n}: {a}");
                assert_eq!(a["duplicate"], json!(true), "line {n}: {a}");
                assert_eq!(a["position"], answers[m - 1]["position"], "line {n}");
                assert_eq!(a["event_id"], answers[m - 1]["event_id"], "line {n}");
            }
            Expect::Refused(status, field) => {
                assert_eq!(a["ok"], json!(false), "line {n}: {a}");
                assert_eq!(a["status"], json!(status), "line {n}: {a}");
                assert!(
                    a["error"]["code"].is_string() && a["error"]["message"].is_string(),
                    "line {n}: {a}"
                );
                if let Some(f) = field {
                    assert_eq!(a["error"]["field"], json!(f), "line {n}: {a}");
                }
                if *status == 400 {
                    let m = a["error"]["message"].as_str().unwrap();
                    assert!(m.contains("line") && m.contains("column"), "line {n}: {m}");
                }
            }
            Expect::Conflict(m) => {
                assert_eq!(a["ok"], json!(false), "line {n}: {a}");
                assert_eq!(a["status"], json!(409), "line {n}: {a}");
                assert_eq!(
                    a["error"]["existing_event_id"],
                    answers[m - 1]["event_id"],
                    "line {n}: {a}"
                );
            }
        }
    }
    // Each kind of answer line is shaped as api.yaml says.
    for (i, e) in expect.iter().enumerate() {
        if !matches!(e, Expect::New(_)) || i == 0 || i + 1 == answers.len() {
            assert_matches_spec("POST", "/v1/readings", 200, "application/x-ndjson", &answers[i]);
        }
    }

    // The log holds exactly the good readings, each at its acknowledged position.
    let head = setup + BULK_READINGS as u64;
    let mut next = Some(1u64);
    let mut count = 0u64;
    let read_started = Instant::now();
    while let Some(from) = next {
        let r = send_with(
            &client,
            &app.base,
            Method::GET,
            &format!("/v1/events?from_position={from}&limit=1000"),
            "/v1/events",
            Some(&op),
            None,
            &[],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        for e in r.json["events"].as_array().unwrap() {
            count += 1;
            let p = e["position"].as_u64().unwrap();
            assert_eq!(p, count, "gap-free");
            if p > setup {
                assert_eq!(
                    e["event_id"].as_str(),
                    positions.get(&p).map(String::as_str),
                    "position {p}"
                );
            }
        }
        next = r.json["next_position"].as_u64();
    }
    assert_eq!(count, head);
    println!("bulk: read back {count} events in {:?}", read_started.elapsed());

    // Each tenant's consumption, per period, against the sums above.
    assert_eq!(
        consumption.len(),
        BULK_TENANTS * 4,
        "July to October: {:?}",
        consumption.keys()
    );
    for ((t, period), wh) in &consumption {
        let path = format!("/v1/tenants/t-{t}/statements/{period}?min_position={head}");
        let spec = "/v1/tenants/{tenant_id}/statements/{period}";
        let mut r = send_with(&client, &app.base, Method::GET, &path, spec, Some(&op), None, &[]).await;
        for _ in 0..12 {
            if r.status != 503 {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            r = send_with(&client, &app.base, Method::GET, &path, spec, Some(&op), None, &[]).await;
        }
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(
            dec(&r.json["consumption_wh"]),
            Decimal::from(*wh),
            "t-{t} {period}: {}",
            r.json["consumption_wh"]
        );
    }
    let r = get(&app, "/readyz", "/readyz", &op).await;
    assert_eq!(r.json["head_position"], json!(head));
    stop(app).await;
}

// ---------------------------------------------------------------------------------------
// Server-sent events
// ---------------------------------------------------------------------------------------

struct SseFrame {
    id: Option<u64>,
    event: Option<String>,
    data: String,
}

/// The next frame that carries data, within `SSE_WAIT`.
async fn next_frame<S, B, E>(stream: &mut S, buf: &mut String) -> SseFrame
where
    S: futures_util::Stream<Item = Result<B, E>> + Unpin,
    B: AsRef<[u8]>,
    E: std::fmt::Debug,
{
    let deadline = tokio::time::Instant::now() + SSE_WAIT;
    loop {
        let normalized = buf.replace("\r\n", "\n");
        if let Some((frame, rest)) = normalized.split_once("\n\n") {
            let (frame, rest) = (frame.to_string(), rest.to_string());
            *buf = rest;
            let mut f = SseFrame {
                id: None,
                event: None,
                data: String::new(),
            };
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    f.id = Some(v.trim().parse().unwrap());
                } else if let Some(v) = line.strip_prefix("event:") {
                    f.event = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("data:") {
                    f.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                }
            }
            if !f.data.is_empty() {
                return f;
            }
            continue;
        }
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("an SSE frame within the wait")
            .expect("the stream stays open")
            .expect("the stream reads");
        buf.push_str(std::str::from_utf8(chunk.as_ref()).unwrap());
    }
}

#[tokio::test]
async fn live_events_resume_after_last_event_id_and_follow_appends() {
    let app = spawn_app().await;
    let op = app.operator();
    let campus = build_campus(&app).await;
    let res = app
        .client
        .get(app.url("/v1/events/live"))
        .bearer_auth(app.auditor())
        .header("last-event-id", "15")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let ct = res.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let mut stream = res.bytes_stream();
    let mut buf = String::new();
    for p in 16..=campus.head {
        let f = next_frame(&mut stream, &mut buf).await;
        assert_eq!(f.id, Some(p), "events follow Last-Event-ID in order");
        let data: Value = serde_json::from_str(&f.data).unwrap();
        assert_eq!(data["position"], json!(p));
        assert_eq!(f.event.as_deref(), data["event_type"].as_str());
        for k in ["event_id", "stream", "version", "hash", "prev_hash"] {
            assert!(!data[k].is_null(), "{k}: {data}");
        }
    }

    // A reading posted while listening arrives.
    let posted = assert_created(
        &post(
            &app,
            "/v1/readings",
            "/v1/readings",
            &op,
            &reading(
                "rack-b1",
                "consumed",
                "2026-11-02T20:15:00Z",
                "2026-11-02T20:30:00Z",
                "100000",
            ),
        )
        .await,
        campus.head + 1,
    );
    let f = next_frame(&mut stream, &mut buf).await;
    assert_eq!(f.id, Some(campus.head + 1));
    assert_eq!(f.event.as_deref(), Some("EnergyConsumed"));
    let data: Value = serde_json::from_str(&f.data).unwrap();
    assert_eq!(data["event_id"], posted["event_id"]);
    assert_eq!(data["data"]["meter_id"], json!("rack-b1"), "{data}");

    // `?from_position=` is inclusive.
    let res = app
        .client
        .get(app.url("/v1/events/live?from_position=3"))
        .bearer_auth(&op)
        .send()
        .await
        .unwrap();
    let mut from_three = res.bytes_stream();
    let mut buf = String::new();
    assert_eq!(next_frame(&mut from_three, &mut buf).await.id, Some(3));
    // A Last-Event-ID that is not a position.
    let r = send(
        &app,
        Method::GET,
        "/v1/events/live",
        "/v1/events/live",
        Some(&op),
        None,
        &[("last-event-id", "abc")],
    )
    .await;
    assert_problem(&r, 422);
    // The listeners hang up; then the server can stop.
    drop(stream);
    drop(from_three);
    stop(app).await;
}
