//! Energy reservations over HTTP: the hold routes under `/v1/tenants/{tenant_id}/holds`
//! with their roles and scopes, every answer held against `api.yaml`, spending limits, the
//! live stream filtered to `SpendingLimitExceeded`, and 16 clients placing holds on one
//! tenant at once without ever overdrawing it.

mod support;

use chrono::{Duration, Utc};
use reqwest::Method;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use std::str::FromStr;
use support::{App, assert_matches_spec, spawn_app};
use wattledger::api::auth::Role;
use wattledger::domain::time::{Period, fmt_time};

/// Sends a request; a JSON answer is checked against `api.yaml` under `spec_path`.
async fn call(
    app: &App,
    method: Method,
    path: &str,
    spec_path: &str,
    token: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut req = app.client.request(method.clone(), app.url(path)).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(b);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let media = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let v: Value = res.json().await.unwrap();
    assert_matches_spec(method.as_str(), spec_path, status, &media, &v);
    (status, v)
}

async fn post(app: &App, path: &str, spec_path: &str, token: &str, body: &Value) -> (u16, Value) {
    call(app, Method::POST, path, spec_path, token, Some(body)).await
}

async fn get(app: &App, path: &str, spec_path: &str, token: &str) -> (u16, Value) {
    call(app, Method::GET, path, spec_path, token, None).await
}

fn d(v: &Value) -> Decimal {
    Decimal::from_str(v.as_str().unwrap()).unwrap()
}

const HOLDS: &str = "/v1/tenants/{tenant_id}/holds";
const HOLD: &str = "/v1/tenants/{tenant_id}/holds/{hold_id}";
const CAPTURES: &str = "/v1/tenants/{tenant_id}/holds/{hold_id}/captures";
const RELEASE: &str = "/v1/tenants/{tenant_id}/holds/{hold_id}/release";
const LIMIT: &str = "/v1/tenants/{tenant_id}/spending-limit";

async fn campus(app: &App, credits: &str) {
    let op = app.operator();
    for (path, body) in [
        (
            "/v1/sites",
            json!({"site_id":"memphis-1","time_zone":"America/Chicago"}),
        ),
        ("/v1/tenants", json!({"tenant_id":"acme-ai","name":"Acme AI"})),
        ("/v1/tenants", json!({"tenant_id":"beta-labs","name":"Beta Labs"})),
        (
            "/v1/meters",
            json!({"meter_id":"rack-a1","site_id":"memphis-1","kind":"load","tenant_id":"acme-ai","rated_power_w":"2000000"}),
        ),
        (
            "/v1/sites/memphis-1/tariffs",
            json!({"effective_from":"2026-01-01T00:00:00Z","rates_eu_per_wh":{"generated":"1","stored":"1","dispatched":"1","consumed":"1.1"},
                "default_band":{"name":"standard","multiplier":"1"}}),
        ),
        (
            "/v1/tenants/acme-ai/credits",
            json!({"amount_eu":credits,"memo":"seed"}),
        ),
    ] {
        let res = app
            .client
            .post(app.url(path))
            .bearer_auth(&op)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 201, "{path}: {}", res.text().await.unwrap());
    }
}

fn in_an_hour() -> String {
    fmt_time(&(Utc::now() + Duration::hours(1)))
}

#[tokio::test]
async fn a_tenant_places_captures_and_releases_its_own_holds() {
    let app = spawn_app().await;
    campus(&app, "1000").await;
    let acme = app.token(Role::Tenant, Some("acme-ai"), None, None);
    let beta = app.token(Role::Tenant, Some("beta-labs"), None, None);
    let meter = app.token(Role::Meter, None, None, Some(&["rack-a1"]));
    let hold = json!({"hold_id":"train-7","amount_eu":"600","expires_at":in_an_hour(),"memo":"2 MW for 36 h","job_id":"train-7"});

    let (s, v) = post(&app, "/v1/tenants/acme-ai/holds", HOLDS, &acme, &hold).await;
    assert_eq!(
        (s, v["event_type"].as_str(), v["remaining_eu"].as_str()),
        (201, Some("HoldPlaced"), Some("600"))
    );
    let (s, v) = post(&app, "/v1/tenants/acme-ai/holds", HOLDS, &acme, &hold).await;
    assert_eq!((s, v["duplicate"].as_bool()), (200, Some(true)));
    // Another tenant's token, and a meter's, may not place it.
    assert_eq!(
        post(&app, "/v1/tenants/acme-ai/holds", HOLDS, &beta, &hold).await.0,
        403
    );
    assert_eq!(
        post(&app, "/v1/tenants/acme-ai/holds", HOLDS, &meter, &hold).await.0,
        403
    );
    // The path's tenant wins over a body that names another.
    let (s, _) = post(
        &app,
        "/v1/tenants/acme-ai/holds",
        HOLDS,
        &acme,
        &json!({"hold_id":"x","tenant_id":"beta-labs","amount_eu":"1","expires_at":in_an_hour()}),
    )
    .await;
    assert_eq!(s, 422);
    // 400 available: a hold of 401 overdraws; a transfer too.
    let (s, v) = post(
        &app,
        "/v1/tenants/acme-ai/holds",
        HOLDS,
        &acme,
        &json!({"hold_id":"h2","amount_eu":"401","expires_at":in_an_hour()}),
    )
    .await;
    assert_eq!((s, v["code"].as_str()), (422, Some("insufficient_credits")));
    let (s, _) = post(
        &app,
        "/v1/transfers",
        "/v1/transfers",
        &acme,
        &json!({"from_tenant":"acme-ai","to_tenant":"beta-labs","amount_eu":"400.5"}),
    )
    .await;
    assert_eq!(s, 422);

    let (s, v) = post(
        &app,
        "/v1/tenants/acme-ai/holds/train-7/captures",
        CAPTURES,
        &acme,
        &json!({"amount_eu":"250"}),
    )
    .await;
    assert_eq!((s, v["remaining_eu"].as_str()), (201, Some("350")));
    let (s, v) = post(
        &app,
        "/v1/tenants/acme-ai/holds/train-7/captures",
        CAPTURES,
        &acme,
        &json!({"amount_eu":"351"}),
    )
    .await;
    assert_eq!(
        (s, v["type"].as_str()),
        (422, Some("https://wattledger.dev/problems/insufficient-hold"))
    );
    // Through another tenant's route the hold does not exist.
    let op = app.operator();
    let (s, _) = post(
        &app,
        "/v1/tenants/beta-labs/holds/train-7/captures",
        CAPTURES,
        &op,
        &json!({"amount_eu":"1"}),
    )
    .await;
    assert_eq!(s, 404);

    // Release takes no body.
    let res = app
        .client
        .post(app.url("/v1/tenants/acme-ai/holds/train-7/release"))
        .bearer_auth(&acme)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 201);
    let v: Value = res.json().await.unwrap();
    assert_matches_spec("POST", RELEASE, 201, "application/json", &v);
    assert_eq!(v["released_eu"], "350");
    let (s, v) = post(
        &app,
        "/v1/tenants/acme-ai/holds/train-7/captures",
        CAPTURES,
        &acme,
        &json!({"amount_eu":"1"}),
    )
    .await;
    assert_eq!((s, v["code"].as_str()), (409, Some("hold_closed")));
    assert_eq!(v["type"], "https://wattledger.dev/problems/hold-closed");

    let position = v["existing_event_id"].is_string();
    assert!(position, "the refusal names the release: {v}");
    // Reads: the list with total and available balance, one hold, the account.
    let head = app
        .server
        .as_ref()
        .unwrap()
        .state
        .ledger
        .store()
        .head()
        .await
        .unwrap()
        .position;
    let (s, list) = get(
        &app,
        &format!("/v1/tenants/acme-ai/holds?min_position={head}"),
        HOLDS,
        &acme,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        (d(&list["balance_eu"]), d(&list["held_eu"]), d(&list["available_eu"])),
        (Decimal::from(750), Decimal::ZERO, Decimal::from(750))
    );
    assert_eq!(list["holds"][0]["status"], "released");
    let (s, _) = get(&app, "/v1/tenants/acme-ai/holds?status=pending", HOLDS, &acme).await;
    assert_eq!(s, 422);
    assert_eq!(get(&app, "/v1/tenants/acme-ai/holds", HOLDS, &beta).await.0, 403);
    let (s, h) = get(&app, "/v1/tenants/acme-ai/holds/train-7", HOLD, &app.auditor()).await;
    assert_eq!((s, h["captured_eu"].as_str()), (200, Some("250")));
    assert_eq!(get(&app, "/v1/tenants/beta-labs/holds/train-7", HOLD, &op).await.0, 404);
    let (_, acct) = get(&app, "/v1/accounts/tenant:acme-ai", "/v1/accounts/{account}", &acme).await;
    assert_eq!(acct["available_eu"], "750");
    app.stop().await;
}

#[tokio::test]
async fn a_limit_crossed_by_consumption_is_flagged_on_the_live_stream() {
    let app = spawn_app().await;
    campus(&app, "1000").await;
    let op = app.operator();
    let acme = app.token(Role::Tenant, Some("acme-ai"), None, None);
    let period = Period::of(Utc::now()).to_string();
    let body = json!({"limit_eu":"300","period":period});
    assert_eq!(
        post(&app, "/v1/tenants/acme-ai/spending-limit", LIMIT, &acme, &body)
            .await
            .0,
        403
    );
    let (s, v) = post(&app, "/v1/tenants/acme-ai/spending-limit", LIMIT, &op, &body).await;
    assert_eq!((s, v["event_type"].as_str()), (201, Some("SpendingLimitSet")));
    let (s, v) = post(
        &app,
        "/v1/tenants/acme-ai/holds",
        HOLDS,
        &acme,
        &json!({"hold_id":"big","amount_eu":"301","expires_at":in_an_hour()}),
    )
    .await;
    assert_eq!((s, v["code"].as_str()), (422, Some("spending_limit")));

    // Subscribe to the flag only, then cross the limit with consumption.
    let auditor = app.auditor();
    let mut live = app
        .client
        .get(app.url("/v1/events/live?types=SpendingLimitExceeded"))
        .bearer_auth(&auditor)
        .send()
        .await
        .unwrap();
    assert_eq!(live.status().as_u16(), 200);
    let bad = app
        .client
        .get(app.url("/v1/events/live?types=Nonsense"))
        .bearer_auth(&auditor)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 422);
    let start = Period::of(Utc::now()).start();
    let reading = json!({"meter_id":"rack-a1","flow":"consumed","start":fmt_time(&start),
        "end":fmt_time(&(start + Duration::minutes(15))),"wh":"300"});
    let (s, v) = post(&app, "/v1/readings", "/v1/readings", &op, &reading).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["triggered"][0]["event_type"], "SpendingLimitExceeded");
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !text.contains("\n\n") {
        let chunk = tokio::time::timeout_at(deadline, live.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let events: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
    assert_eq!(events, ["SpendingLimitExceeded"], "{text}");
    app.stop().await;
}

/// 16 clients place holds on one tenant at once: exactly as many as its EU cover are placed,
/// the rest are refused, and the tenant is never overdrawn.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_clients_placing_holds_at_once_never_overdraw_the_tenant() {
    let app = spawn_app().await;
    campus(&app, "1000").await;
    let acme = app.token(Role::Tenant, Some("acme-ai"), None, None);
    let expires = in_an_hour();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (client, url, token, expires) = (
            app.client.clone(),
            app.url("/v1/tenants/acme-ai/holds"),
            acme.clone(),
            expires.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let body = json!({"hold_id":format!("job-{i}"),"amount_eu":"150","expires_at":expires});
            let res = client.post(url).bearer_auth(token).json(&body).send().await.unwrap();
            let status = res.status().as_u16();
            let v: Value = res.json().await.unwrap();
            (status, v)
        }));
    }
    let mut placed = 0;
    for t in tasks {
        let (status, v) = t.await.unwrap();
        assert_matches_spec(
            "POST",
            HOLDS,
            status,
            if status == 201 {
                "application/json"
            } else {
                "application/problem+json"
            },
            &v,
        );
        match status {
            201 => placed += 1,
            422 => assert_eq!(v["code"], "insufficient_credits"),
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!(placed, 6, "1000 EU cover six holds of 150");
    let ledger = &app.server.as_ref().unwrap().state.ledger;
    let head = ledger.store().head().await.unwrap().position;
    let (_, list) = get(
        &app,
        &format!("/v1/tenants/acme-ai/holds?min_position={head}"),
        HOLDS,
        &acme,
    )
    .await;
    assert_eq!(
        (d(&list["held_eu"]), d(&list["available_eu"])),
        (Decimal::from(900), Decimal::from(100))
    );
    assert_eq!(list["active_holds"], 6);
    let (_, report) = get(&app, "/v1/audit", "/v1/audit", &app.auditor()).await;
    assert_eq!(report["clean"], true, "{report}");
    app.stop().await;
}

/// `serve` records an expiry without any traffic: its sweep runs every second.
#[tokio::test]
async fn the_server_expires_holds_without_traffic() {
    use chrono::DurationRound;
    use std::sync::Arc;
    use wattledger::ledger::FixedClock;
    let now = Utc::now().duration_trunc(chrono::TimeDelta::seconds(1)).unwrap();
    let clock = Arc::new(FixedClock::new(now));
    let app = support::spawn_app_with(
        wattledger::api::auth::AuthConfig::hs256(support::TEST_SECRET.as_bytes(), "test").unwrap(),
        clock.clone(),
    )
    .await;
    campus(&app, "1000").await;
    let acme = app.token(Role::Tenant, Some("acme-ai"), None, None);
    let expires = now + Duration::minutes(5);
    let (s, placed) = post(
        &app,
        "/v1/tenants/acme-ai/holds",
        HOLDS,
        &acme,
        &json!({"hold_id":"short","amount_eu":"10","expires_at":fmt_time(&expires)}),
    )
    .await;
    assert_eq!(s, 201);
    let ledger = app.server.as_ref().unwrap().state.ledger.clone();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(
        ledger.store().head().await.unwrap().position,
        placed["position"].as_u64().unwrap(),
        "nothing is due before expires_at"
    );
    clock.set(expires);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let log = ledger.store().read_all(0, 1000).await.unwrap();
        let last = log.last().unwrap();
        if last.event_type == "HoldExpired" {
            assert_eq!(last.recorded_at, expires, "recorded at the log's time");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no HoldExpired within 10 s");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (_, list) = get(
        &app,
        &format!(
            "/v1/tenants/acme-ai/holds/short?min_position={}",
            ledger.store().head().await.unwrap().position
        ),
        HOLD,
        &acme,
    )
    .await;
    assert_eq!(
        (list["status"].as_str(), list["released_eu"].as_str()),
        (Some("expired"), Some("10"))
    );
    app.stop().await;
}
