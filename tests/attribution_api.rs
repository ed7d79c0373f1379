//! The attribution over HTTP: publishing emission factors, a site's mix, the readings behind
//! one hour, a tenant's attribution (scoped to the tenant), and the statement carrying it.
//! Every body is held against `api.yaml`.

mod support;

use serde_json::{Value, json};
use support::{assert_matches_spec, spawn_app};
use wattledger::api::auth::Role;

async fn call(app: &support::App, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value, String) {
    let mut req = match method {
        "POST" => app.client.post(app.url(path)),
        _ => app.client.get(app.url(path)),
    }
    .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = support::read_reply(req.send().await.unwrap()).await;
    (r.status, r.json, r.content_type)
}

fn factors() -> Value {
    json!({"effective_from":"2026-01-01T00:00:00Z",
        "gco2e_per_kwh":{"solar":"41","wind":"11","gas_turbine":"490","grid":"400","hydro":"24","nuclear":"12","other":"700"},
        "carbon_free":["solar","wind","hydro","nuclear"]})
}

#[tokio::test]
async fn the_mix_the_hour_readings_and_the_attribution_are_served_and_match_the_spec() {
    let app = spawn_app().await;
    let op = app.operator();
    for (path, body) in [
        (
            "/v1/sites",
            json!({"site_id":"s1","time_zone":"UTC","loss_tolerance_pct":"5"}),
        ),
        ("/v1/tenants", json!({"tenant_id":"a","name":"A"})),
        ("/v1/tenants", json!({"tenant_id":"b","name":"B"})),
        (
            "/v1/meters",
            json!({"meter_id":"pv","site_id":"s1","kind":"generation","asset_id":"pv","source":"solar","rated_power_w":"10000000"}),
        ),
        (
            "/v1/meters",
            json!({"meter_id":"gas","site_id":"s1","kind":"generation","asset_id":"gt","source":"gas_turbine","rated_power_w":"10000000"}),
        ),
        (
            "/v1/meters",
            json!({"meter_id":"la","site_id":"s1","kind":"load","tenant_id":"a","rated_power_w":"10000000"}),
        ),
        (
            "/v1/sites/s1/tariffs",
            json!({"effective_from":"2026-01-01T00:00:00Z","rates_eu_per_wh":{"generated":"1","stored":"1","dispatched":"1","consumed":"1"},
                "default_band":{"name":"flat","multiplier":"1"}}),
        ),
    ] {
        let (st, body, _) = call(&app, "POST", path, &op, Some(body)).await;
        assert_eq!(st, 201, "{path}: {body}");
    }
    let path = "/v1/sites/{site_id}/emission-factors";
    let (st, body, ct) = call(&app, "POST", "/v1/sites/s1/emission-factors", &op, Some(factors())).await;
    assert_eq!(st, 201, "{body}");
    assert_eq!(body["factors_version"], 1);
    assert_matches_spec("POST", path, st, &ct, &body);
    let (st, body, ct) = call(&app, "POST", "/v1/sites/s1/emission-factors", &op, Some(factors())).await;
    assert_eq!((st, body["duplicate"].clone()), (200, json!(true)));
    assert_matches_spec("POST", path, st, &ct, &body);
    let mut missing = factors();
    missing["gco2e_per_kwh"].as_object_mut().unwrap().remove("grid");
    let (st, body, ct) = call(&app, "POST", "/v1/sites/s1/emission-factors", &op, Some(missing)).await;
    assert_eq!(st, 422, "{body}");
    assert!(body.to_string().contains("gco2e_per_kwh.grid"), "{body}");
    assert_matches_spec("POST", path, st, &ct, &body);
    let tenant_token = app.token(Role::Tenant, Some("a"), None, None);
    let (st, body, ct) = call(
        &app,
        "POST",
        "/v1/sites/s1/emission-factors",
        &tenant_token,
        Some(factors()),
    )
    .await;
    assert_eq!(st, 403);
    assert_matches_spec("POST", path, st, &ct, &body);

    // One hour: solar 300, gas 700; `a` takes 1000.
    let mut last = 0;
    for (meter, flow, wh) in [
        ("pv", "generated", "300"),
        ("gas", "generated", "700"),
        ("la", "consumed", "1000"),
    ] {
        let (st, body, _) = call(
            &app,
            "POST",
            "/v1/readings",
            &op,
            Some(json!({"meter_id":meter,"flow":flow,"start":"2026-11-02T18:00:00Z","end":"2026-11-02T19:00:00Z","wh":wh})),
        )
        .await;
        assert_eq!(st, 201, "{body}");
        last = body["position"].as_u64().unwrap();
    }

    let mix_path = format!("/v1/sites/s1/mix?from=2026-11-02T00:00:00Z&to=2026-11-03T00:00:00Z&min_position={last}");
    let (st, mix, ct) = call(&app, "GET", &mix_path, &op, None).await;
    assert_eq!(st, 200, "{mix}");
    assert_matches_spec("GET", "/v1/sites/{site_id}/mix", st, &ct, &mix);
    assert_eq!(mix["hours"][0]["mix"], json!({"gas_turbine":"0.7","solar":"0.3"}));
    // 700×0.49 + 300×0.041 = 343 + 12.3 = 355.3 g per kWh.
    assert_eq!(mix["hours"][0]["carbon_intensity_g_per_kwh"], "355.3");
    let (st, dflt, _) = call(&app, "GET", "/v1/sites/s1/mix", &op, None).await;
    assert_eq!((st, dflt["to"].clone()), (200, json!("2026-11-02T19:00:00Z")), "{dflt}");
    let (st, e, ct) = call(
        &app,
        "GET",
        "/v1/sites/s1/mix?from=2026-01-01T00:00:00Z&to=2026-11-03T00:00:00Z",
        &op,
        None,
    )
    .await;
    assert_eq!(st, 422, "a year of hours is refused: {e}");
    assert_matches_spec("GET", "/v1/sites/{site_id}/mix", st, &ct, &e);
    let (st, e, _) = call(&app, "GET", "/v1/sites/nowhere/mix", &op, None).await;
    assert_eq!(st, 404, "{e}");

    let (st, hr, ct) = call(&app, "GET", "/v1/sites/s1/mix/2026-11-02T18:00:00Z/readings", &op, None).await;
    assert_eq!(st, 200, "{hr}");
    assert_matches_spec("GET", "/v1/sites/{site_id}/mix/{hour}/readings", st, &ct, &hr);
    let types: Vec<&str> = hr["readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["EnergyGenerated", "EnergyGenerated", "EnergyConsumed"]);
    let (st, e, ct) = call(&app, "GET", "/v1/sites/s1/mix/2026-11-02T18:30:00Z/readings", &op, None).await;
    assert_eq!(st, 422, "not the start of an hour: {e}");
    assert_matches_spec("GET", "/v1/sites/{site_id}/mix/{hour}/readings", st, &ct, &e);
    let (st, empty, _) = call(&app, "GET", "/v1/sites/s1/mix/2026-11-02T03:00:00Z/readings", &op, None).await;
    assert_eq!((st, empty["readings"].clone()), (200, json!([])));

    let ap = "/v1/tenants/{tenant_id}/attribution/{period}";
    let (st, a, ct) = call(&app, "GET", "/v1/tenants/a/attribution/2026-11", &tenant_token, None).await;
    assert_eq!(st, 200, "{a}");
    assert_matches_spec("GET", ap, st, &ct, &a);
    assert_eq!(a["by_source_wh"], json!({"gas_turbine":"700","solar":"300"}));
    assert_eq!(a["carbon_kg"], "0.3553");
    assert_eq!(a["carbon_free_share"], "0.3");
    let (st, e, ct) = call(&app, "GET", "/v1/tenants/b/attribution/2026-11", &tenant_token, None).await;
    assert_eq!(st, 403, "a tenant reads only its own attribution: {e}");
    assert_matches_spec("GET", ap, st, &ct, &e);
    let (st, b, _) = call(&app, "GET", "/v1/tenants/b/attribution/2026-11", &op, None).await;
    assert_eq!(
        (st, b["consumption_wh"].clone(), b["hourly_cfe_score"].clone()),
        (200, json!("0"), Value::Null)
    );
    let (st, _, _) = call(&app, "GET", "/v1/tenants/ghost/attribution/2026-11", &op, None).await;
    assert_eq!(st, 404);
    let (st, e, _) = call(&app, "GET", "/v1/tenants/a/attribution/2026-13", &op, None).await;
    assert_eq!(st, 422, "{e}");

    let sp = "/v1/tenants/{tenant_id}/statements/{period}";
    let (st, s, ct) = call(&app, "GET", "/v1/tenants/a/statements/2026-11", &tenant_token, None).await;
    assert_eq!(st, 200, "{s}");
    assert_matches_spec("GET", sp, st, &ct, &s);
    assert_eq!(s["attribution"]["carbon_free_wh"], "300");
    app.stop().await;
}
