//! A meter's file imported through the API: one NDJSON result line per reading, a re-import
//! all duplicates, and the refusals of a file route.

mod support;

use serde_json::{Value, json};
use wattledger::api::auth::Role;

const PATH: &str = "/v1/meters/{meter_id}/imports";

async fn setup(app: &support::App) {
    let op = app.operator();
    for (path, body) in [
        ("/v1/sites", json!({"site_id":"s1","time_zone":"America/Chicago"})),
        ("/v1/tenants", json!({"tenant_id":"t1","name":"T"})),
        (
            "/v1/meters",
            json!({"meter_id":"rack","site_id":"s1","kind":"load","tenant_id":"t1","rated_power_w":"2000000"}),
        ),
        (
            "/v1/meters",
            json!({"meter_id":"bess","site_id":"s1","kind":"storage","asset_id":"b1","rated_power_w":"1000000","capacity_wh":"1000000"}),
        ),
        (
            "/v1/sites/s1/tariffs",
            json!({"effective_from":"2026-01-01T00:00:00Z",
            "rates_eu_per_wh":{"generated":"1","stored":"1","dispatched":"1","consumed":"1.1"},
            "default_band":{"name":"flat","multiplier":"1"}}),
        ),
    ] {
        let r = app
            .client
            .post(app.url(path))
            .bearer_auth(&op)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{path}");
    }
}

async fn import(
    app: &support::App,
    token: &str,
    meter: &str,
    query: &str,
    ctype: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut req = app
        .client
        .post(app.url(&format!("/v1/meters/{meter}/imports{query}")))
        .bearer_auth(token)
        .body(body.to_string());
    if let Some(c) = ctype {
        req = req.header("content-type", c);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn lines(text: &str) -> Vec<Value> {
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test]
async fn a_csv_file_is_imported_once() {
    let app = support::spawn_app().await;
    setup(&app).await;
    let op = app.operator();
    let csv = "start,wh\n2026-11-02T20:00:00Z,1000\n2026-11-02T20:15:00Z,2000\n2026-11-02T20:30:00Z,-5\n";
    let (status, text) = import(&app, &op, "rack", "?interval=15m", Some("text/csv"), csv).await;
    // The third reading cannot be read (negative Wh): the whole file is refused (422, naming the
    // line), and nothing of it is recorded — the next import's readings are new.
    assert_eq!(status, 422, "{text}");
    assert!(text.contains("line 4"), "{text}");
    let csv = "start,wh\n2026-11-02T20:00:00Z,1000\n2026-11-02T20:15:00Z,2000\n";
    let (status, text) = import(&app, &op, "rack", "?interval=15m", Some("text/csv"), csv).await;
    assert_eq!(status, 200, "{text}");
    let got = lines(&text);
    assert_eq!(got.len(), 2);
    for (i, l) in got.iter().enumerate() {
        support::assert_matches_spec("POST", PATH, 200, "application/x-ndjson", l);
        assert_eq!(
            (l["line"].as_u64(), l["status"].as_u64(), l["duplicate"].as_bool()),
            (Some(i as u64 + 1), Some(201), Some(false))
        );
    }
    // 1000 Wh × 1.1 EU/Wh = 1100 EU.
    assert_eq!(got[0]["price"]["amount_eu"], "1100");
    let (_, text) = import(&app, &op, "rack", "?interval=15m", Some("text/csv"), csv).await;
    assert!(
        lines(&text)
            .iter()
            .all(|l| l["duplicate"] == true && l["status"] == 200),
        "{text}"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_file_route_refuses_what_it_cannot_take() {
    let app = support::spawn_app().await;
    setup(&app).await;
    let op = app.operator();
    let csv = "start,end,wh\n2026-11-02T20:00:00Z,2026-11-02T20:15:00Z,1000\n";
    let check = |status: u16, text: &str, want: u16| {
        assert_eq!(status, want, "{text}");
        let v: Value = serde_json::from_str(text).unwrap();
        support::assert_matches_spec("POST", PATH, want, "application/problem+json", &v);
    };
    let (s, t) = import(&app, &op, "rack", "", Some("application/json"), csv).await;
    check(s, &t, 415);
    let (s, t) = import(&app, &op, "bess", "", Some("text/csv"), csv).await;
    check(s, &t, 422);
    assert!(t.contains("flow"), "{t}");
    let (s, t) = import(&app, &op, "nope", "", Some("text/csv"), csv).await;
    check(s, &t, 404);
    let (s, t) = import(&app, &op, "rack", "", Some("application/xml"), "<feed><entry>").await;
    check(s, &t, 422);
    let other = app.token(Role::Meter, None, None, Some(&["bess"]));
    let (s, t) = import(&app, &other, "rack", "", Some("text/csv"), csv).await;
    check(s, &t, 403);
    let tenant = app.token(Role::Tenant, Some("t1"), None, None);
    let (s, t) = import(&app, &tenant, "rack", "", Some("text/csv"), csv).await;
    check(s, &t, 403);
    // Nothing of the refused requests was recorded: the storage meter accepts the file with a flow.
    let (s, t) = import(&app, &op, "bess", "?flow=stored", Some("text/csv"), csv).await;
    assert_eq!(s, 200, "{t}");
    assert_eq!(lines(&t)[0]["stream"], "meter-bess");
    app.stop().await;
}
