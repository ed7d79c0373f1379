//! `api.yaml` against the code: the routes it lists are the routes the router serves, it is a
//! sound OpenAPI 3.1 document whose schemas compile (JSON Schema 2020-12), the server serves
//! it byte for byte, its schemas accept the shapes the API answers and refuse wrong ones, and
//! every answer of a running server in a scenario that reaches every route matches it.

mod support;

use serde_json::{Value, json};
use std::collections::BTreeSet;
use wattledger::api::ROUTES;
use wattledger::api::auth::Role;

const DIALECT: &str = "https://json-schema.org/draft/2020-12/schema";
const HTTP_METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];
/// The routes anyone may call, without a token (the dashboard page and its assets too: the
/// page asks for a token and sends it with its own calls).
const ANONYMOUS: [&str; 6] = [
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.yaml",
    "/",
    "/assets/{file}",
];

fn spec_path() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("api.yaml")
}

fn spec() -> Value {
    let text = std::fs::read_to_string(spec_path()).expect("api.yaml is readable");
    let y: serde_yaml::Value = serde_yaml::from_str(&text).expect("api.yaml is YAML");
    serde_json::to_value(y).expect("api.yaml converts to JSON (string keys only)")
}

/// Every operation of the spec: `(METHOD, path, operation)`.
fn operations(spec: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in spec["paths"].as_object().expect("paths is an object") {
        for m in HTTP_METHODS {
            if let Some(op) = item.get(m) {
                out.push((m.to_ascii_uppercase(), path.clone(), op.clone()));
            }
        }
    }
    out
}

/// Resolves a local `$ref` (`#/…`) inside the document.
fn resolve<'a>(spec: &'a Value, r: &str) -> Option<&'a Value> {
    let pointer = r.strip_prefix('#')?;
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return None;
    }
    spec.pointer(pointer)
}

/// An object, or the object its `$ref` names.
fn deref<'a>(spec: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => resolve(spec, r).unwrap_or_else(|| panic!("unresolved $ref {r}")),
        None => v,
    }
}

/// Every `$ref` string in the document, with where it was found.
fn collect_refs(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "$ref"
                    && let Some(s) = x.as_str()
                {
                    out.push((at.to_string(), s.to_string()));
                }
                collect_refs(x, &format!("{at}/{k}"), out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                collect_refs(x, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// A validator for `schema`, with the spec's `components` embedded so that local
/// `#/components/…` references resolve (as `support::assert_matches_spec` does).
fn compile(spec: &Value, schema: &Value) -> Result<jsonschema::Validator, String> {
    let root = json!({"$schema": DIALECT, "allOf": [schema], "components": spec["components"]});
    jsonschema::draft202012::new(&root).map_err(|e| e.to_string())
}

fn component(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn errors_of(v: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    v.iter_errors(instance)
        .map(|e| format!("{e} at {:?}", e.instance_path.as_str()))
        .collect()
}

/// The errors of `body` against the schema the spec gives for `method path status
/// content_type` — the same lookup as `support::assert_matches_spec`, returning instead of
/// panicking.
fn response_errors(
    spec: &Value,
    method: &str,
    path: &str,
    status: u16,
    content_type: &str,
    body: &Value,
) -> Vec<String> {
    let op = &spec["paths"][path][method.to_ascii_lowercase()];
    assert!(op.is_object(), "api.yaml has no {method} {path}");
    let resp = deref(spec, &op["responses"][status.to_string()]);
    let schema = &resp["content"][content_type]["schema"];
    assert!(
        schema.is_object(),
        "api.yaml has no {content_type} schema for {status} of {method} {path}"
    );
    errors_of(&compile(spec, schema).expect("compiles"), body)
}

fn schema_errors(spec: &Value, name: &str, instance: &Value) -> Vec<String> {
    errors_of(&compile(spec, &component(name)).expect("compiles"), instance)
}

// ----- (a) the routes -----

#[test]
fn the_spec_lists_exactly_the_routes_the_router_serves() {
    let spec = spec();
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_ascii_uppercase(), p.to_string()))
        .collect();
    assert_eq!(served.len(), ROUTES.len(), "ROUTES lists a route twice");
    let documented: BTreeSet<(String, String)> = operations(&spec).into_iter().map(|(m, p, _)| (m, p)).collect();
    let missing: Vec<String> = served
        .difference(&documented)
        .map(|(m, p)| format!("  {m} {p}"))
        .collect();
    let extra: Vec<String> = documented
        .difference(&served)
        .map(|(m, p)| format!("  {m} {p}"))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "api.yaml and wattledger::api::ROUTES differ.\nServed but not in api.yaml ({}):\n{}\nIn api.yaml but not served ({}):\n{}",
        missing.len(),
        missing.join("\n"),
        extra.len(),
        extra.join("\n")
    );
}

// ----- (b) structure -----

#[test]
fn the_spec_is_structurally_sound() {
    let spec = spec();
    let mut problems: Vec<String> = Vec::new();
    let version = spec["openapi"].as_str().unwrap_or("");
    if !version.starts_with("3.1.") {
        problems.push(format!("openapi is {version:?}, not 3.1.x"));
    }
    if !spec["info"]["title"].is_string() || !spec["info"]["version"].is_string() {
        problems.push("info needs a title and a version".into());
    }
    if spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] != "bearer" {
        problems.push("components/securitySchemes/bearerAuth must be an HTTP bearer scheme".into());
    }

    let mut refs = Vec::new();
    collect_refs(&spec, "#", &mut refs);
    assert!(!refs.is_empty());
    for (at, r) in &refs {
        if !r.starts_with("#/") || resolve(&spec, r).is_none() {
            problems.push(format!("$ref {r:?} at {at} does not resolve inside the document"));
        }
    }

    let mut operation_ids = BTreeSet::new();
    for (method, path, op) in operations(&spec) {
        let name = format!("{method} {path}");
        for field in ["summary", "description", "operationId"] {
            if op[field].as_str().is_none_or(|s| s.trim().is_empty()) {
                problems.push(format!("{name}: no {field}"));
            }
        }
        if let Some(id) = op["operationId"].as_str()
            && !operation_ids.insert(id.to_string())
        {
            problems.push(format!("{name}: operationId {id} is used twice"));
        }
        if !op["description"].as_str().unwrap_or("").contains("Who may call it") {
            problems.push(format!("{name}: the description does not say who may call it"));
        }
        let anonymous = ANONYMOUS.contains(&path.as_str());
        let expected_security = if anonymous {
            json!([])
        } else {
            json!([{"bearerAuth": []}])
        };
        if op["security"] != expected_security {
            problems.push(format!(
                "{name}: security is {}, expected {expected_security}",
                op["security"]
            ));
        }

        let Some(responses) = op["responses"].as_object().filter(|r| !r.is_empty()) else {
            problems.push(format!("{name}: no responses"));
            continue;
        };
        let mut required: Vec<&str> = Vec::new();
        if !anonymous {
            required.extend(["401", "403"]);
        }
        if method == "POST" {
            required.extend(["413", "415"]);
        }
        for code in required {
            if !responses.contains_key(code) {
                problems.push(format!("{name}: no {code} response"));
            }
        }
        if !responses.keys().any(|c| c.starts_with('2')) {
            problems.push(format!("{name}: no success response"));
        }
        for (code, resp) in responses {
            let resp = deref(&spec, resp);
            if !resp["description"].is_string() {
                problems.push(format!("{name} {code}: no description"));
            }
            let content = resp["content"].as_object();
            if content.is_none_or(|c| c.is_empty()) {
                problems.push(format!("{name} {code}: no content"));
            }
            for (media, m) in content.into_iter().flatten() {
                if !m["schema"].is_object() {
                    problems.push(format!("{name} {code} {media}: no schema"));
                }
            }
            if code.starts_with('4') || code.starts_with('5') {
                if content.is_none_or(|c| c.keys().ne(["application/problem+json"].iter().copied())) {
                    problems.push(format!(
                        "{name} {code}: an error must be answered as application/problem+json only"
                    ));
                }
                if !op["responses"][code]["$ref"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("#/components/responses/"))
                {
                    problems.push(format!("{name} {code}: use the shared answer in components/responses"));
                }
            }
            if code == "401" && !resp["headers"]["WWW-Authenticate"].is_object() {
                problems.push(format!("{name} 401: WWW-Authenticate is not documented"));
            }
            if code == "503" && !resp["headers"]["Retry-After"].is_object() {
                problems.push(format!("{name} 503: Retry-After is not documented"));
            }
        }
        if method == "POST" {
            let body = deref(&spec, &op["requestBody"]);
            // Every command route takes JSON; the import route takes a meter's file instead.
            let file_route = path.ends_with("/imports");
            let has = |ct: &str| body["content"][ct]["schema"].is_object();
            if !(has("application/json") || file_route && has("text/csv") && has("application/xml")) {
                problems.push(format!("{name}: no application/json request body schema"));
            }
        }

        // Path parameters: exactly the path's `{name}`s, each required.
        let in_path: BTreeSet<String> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(str::to_string)
            .collect();
        let mut declared = BTreeSet::new();
        for p in op["parameters"].as_array().into_iter().flatten() {
            let p = deref(&spec, p);
            if !p["schema"].is_object() {
                problems.push(format!("{name}: parameter {} has no schema", p["name"]));
            }
            if p["in"] == "path" {
                declared.insert(p["name"].as_str().unwrap_or("").to_string());
                if p["required"] != true {
                    problems.push(format!("{name}: path parameter {} must be required", p["name"]));
                }
            }
        }
        if declared != in_path {
            problems.push(format!(
                "{name}: path parameters declared {declared:?}, the path has {in_path:?}"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "api.yaml is not sound:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn the_documented_query_parameters_are_the_ones_the_handlers_read() {
    let spec = spec();
    let params = |method: &str, path: &str| -> BTreeSet<String> {
        spec["paths"][path][method]["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| deref(&spec, p))
            .filter(|p| p["in"] == "query")
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect()
    };
    let set = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(params("get", "/v1/accounts/{account}"), set(&["min_position"]));
    assert_eq!(
        params("get", "/v1/tenants/{tenant_id}/statements/{period}"),
        set(&["format", "min_position"])
    );
    assert_eq!(
        params("get", "/v1/sites/{site_id}/energy-balance"),
        set(&["from", "to", "min_position"])
    );
    assert_eq!(params("get", "/v1/settlements/{period}"), set(&["min_position"]));
    assert_eq!(params("get", "/v1/storage"), set(&["min_position"]));
    assert_eq!(params("get", "/v1/streams/{stream}"), set(&["from_version", "limit"]));
    assert_eq!(params("get", "/v1/events"), set(&["from_position", "limit"]));
    assert_eq!(params("get", "/v1/events/live"), set(&["from_position", "types"]));
    assert_eq!(
        params("get", "/v1/tenants/{tenant_id}/holds"),
        set(&["status", "min_position"])
    );
    let limit = &spec["components"]["parameters"]["Limit"];
    assert_eq!(
        limit["schema"]["maximum"],
        json!(wattledger::api::stream::API_PAGE_EVENTS_MAX)
    );
    let posts_with_ndjson: Vec<String> = operations(&spec)
        .into_iter()
        .filter(|(_, _, op)| op["requestBody"]["content"]["application/x-ndjson"].is_object())
        .map(|(m, p, _)| format!("{m} {p}"))
        .collect();
    assert_eq!(posts_with_ndjson, ["POST /v1/readings"]);
}

// ----- (c) the schemas compile -----

#[test]
fn every_schema_compiles_as_json_schema_2020_12() {
    let spec = spec();
    let schemas = spec["components"]["schemas"].as_object().expect("components/schemas");
    assert!(schemas.len() > 20);
    let mut failures = Vec::new();
    for name in schemas.keys() {
        if let Err(e) = compile(&spec, &component(name)) {
            failures.push(format!("components/schemas/{name}: {e}"));
        }
    }
    // And every schema written in place: parameters, request bodies, responses, headers.
    let mut inline = Vec::new();
    fn walk(v: &Value, at: &str, out: &mut Vec<(String, Value)>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    if k == "schema" && x.is_object() {
                        out.push((format!("{at}/schema"), x.clone()));
                    } else {
                        walk(x, &format!("{at}/{k}"), out);
                    }
                }
            }
            Value::Array(a) => a
                .iter()
                .enumerate()
                .for_each(|(i, x)| walk(x, &format!("{at}/{i}"), out)),
            _ => {}
        }
    }
    walk(&spec["paths"], "#/paths", &mut inline);
    for part in ["parameters", "responses", "headers"] {
        walk(&spec["components"][part], &format!("#/components/{part}"), &mut inline);
    }
    assert!(inline.len() > 50);
    for (at, schema) in inline {
        if let Err(e) = compile(&spec, &schema) {
            failures.push(format!("{at}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "schemas that do not compile:\n  {}",
        failures.join("\n  ")
    );
}

#[test]
fn every_example_matches_its_schema() {
    let spec = spec();
    let mut checked = 0;
    let mut failures = Vec::new();
    let mut check = |at: String, media: &Value| {
        let mut examples: Vec<(String, &Value)> = Vec::new();
        if let Some(e) = media.get("example") {
            examples.push((at.clone(), e));
        }
        for (k, e) in media["examples"].as_object().into_iter().flatten() {
            examples.push((format!("{at} examples/{k}"), &e["value"]));
        }
        for (at, e) in examples {
            checked += 1;
            let v = compile(&spec, &media["schema"]).expect("compiles");
            let errs = errors_of(&v, e);
            if !errs.is_empty() {
                failures.push(format!("{at}: {}", errs.join("; ")));
            }
        }
    };
    for (method, path, op) in operations(&spec) {
        for (media, m) in deref(&spec, &op["requestBody"])["content"]
            .as_object()
            .into_iter()
            .flatten()
        {
            check(format!("{method} {path} request {media}"), m);
        }
        for (code, r) in op["responses"].as_object().into_iter().flatten() {
            for (media, m) in deref(&spec, r)["content"].as_object().into_iter().flatten() {
                check(format!("{method} {path} {code} {media}"), m);
            }
        }
    }
    assert!(checked >= 15, "only {checked} examples");
    assert!(
        failures.is_empty(),
        "examples that do not match their schema:\n  {}",
        failures.join("\n  ")
    );
}

// ----- (d) the served document -----

#[tokio::test]
async fn the_server_serves_this_very_file() {
    let app = support::spawn_app().await;
    let res = app.client.get(app.url("/openapi.yaml")).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(res.headers()["content-type"], "application/yaml");
    let served = res.bytes().await.unwrap();
    let file = std::fs::read(spec_path()).unwrap();
    assert!(
        served.as_ref() == file.as_slice(),
        "GET /openapi.yaml is not api.yaml byte for byte (rebuild?)"
    );
    assert_eq!(wattledger::api::ops::OPENAPI_YAML.as_bytes(), file.as_slice());
    app.stop().await;
}

// ----- (e) hand-written bodies -----

/// CONTRACT §2's accepted result of a reading, with the fields the code adds.
fn contract_reading_result() -> Value {
    json!({
        "ok": true, "event_id": "6f1e8f0e-3c52-4c1e-9f8e-1c1a4b0c5d11", "stream": "meter-rack-a1",
        "version": 3, "position": 1042, "duplicate": false, "event_type": "EnergyConsumed",
        "price": {"tariff_version": 1, "band": "peak", "multiplier": "1.5", "rate_eu_per_wh": "1.1",
                  "source_multiplier": "1", "eu_per_wh": "1.65", "amount_eu": "742500"}
    })
}

fn without(mut v: Value, pointer: &str) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    v.pointer_mut(parent)
        .unwrap()
        .as_object_mut()
        .unwrap()
        .remove(key)
        .expect("field to remove");
    v
}

fn with(mut v: Value, pointer: &str, x: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    v.pointer_mut(parent)
        .unwrap()
        .as_object_mut()
        .unwrap()
        .insert(key.to_string(), x);
    v
}

#[test]
fn the_contract_result_matches_and_broken_results_do_not() {
    let spec = spec();
    let ok = contract_reading_result();
    support::assert_matches_spec("POST", "/v1/readings", 201, "application/json", &ok);
    support::assert_matches_spec(
        "POST",
        "/v1/readings",
        200,
        "application/json",
        &with(ok.clone(), "/duplicate", json!(true)),
    );

    // assert_matches_spec itself refuses a result without its position.
    let no_position = without(ok.clone(), "/position");
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        support::assert_matches_spec("POST", "/v1/readings", 201, "application/json", &no_position)
    }));
    assert!(
        panicked.is_err(),
        "a result without position passed assert_matches_spec"
    );

    let broken = [
        ("no position", no_position.clone()),
        ("no event_id", without(ok.clone(), "/event_id")),
        ("no price", without(ok.clone(), "/price")),
        ("no event_type", without(ok.clone(), "/event_type")),
        ("position as a string", with(ok.clone(), "/position", json!("1042"))),
        ("version 0", with(ok.clone(), "/version", json!(0))),
        ("duplicate as a string", with(ok.clone(), "/duplicate", json!("false"))),
        ("ok false", with(ok.clone(), "/ok", json!(false))),
        ("event id not a UUID", with(ok.clone(), "/event_id", json!("…"))),
        (
            "amount as a number",
            with(ok.clone(), "/price/amount_eu", json!(742500)),
        ),
        (
            "amount with an exponent",
            with(ok.clone(), "/price/amount_eu", json!("7.425e5")),
        ),
        (
            "amount with 7 decimals",
            with(ok.clone(), "/price/amount_eu", json!("1.0000001")),
        ),
        ("negative amount", with(ok.clone(), "/price/amount_eu", json!("-1"))),
        ("price without its rate", without(ok.clone(), "/price/rate_eu_per_wh")),
        (
            "a source multiplier on consumption",
            with(ok.clone(), "/price/source_multiplier", json!("1.2")),
        ),
        (
            "mixed band without parts",
            with(ok.clone(), "/price/band", json!("mixed")),
        ),
        ("parts of one band", with(ok.clone(), "/price/parts", json!([]))),
        ("an unknown field", with(ok.clone(), "/extra", json!(1))),
        (
            "a tariff version on a reading",
            with(ok.clone(), "/tariff_version", json!(1)),
        ),
        (
            "a registration's event type",
            with(ok.clone(), "/event_type", json!("SiteRegistered")),
        ),
        ("another stream", with(ok.clone(), "/stream", json!("tenant-acme-ai"))),
    ];
    for (why, body) in broken {
        let errs = response_errors(&spec, "POST", "/v1/readings", 201, "application/json", &body);
        assert!(!errs.is_empty(), "a result with {why} matched the spec: {body}");
    }

    // A mixed-band reading, a correction, a tariff and a registration, as the server answers them.
    let mixed = json!({"duplicate":false,"event_id":"b0c19817-75e4-5a25-9bf6-6ee375be60cc","event_type":"EnergyGenerated","ok":true,"position":9,
        "price":{"amount_eu":"1350000","band":"mixed","eu_per_wh":"1.5","multiplier":"1.25","parts":[
            {"amount_eu":"540000","band":"standard","end":"2026-11-02T20:00:00Z","energy_wh":"450000","multiplier":"1","start":"2026-11-02T19:50:00Z"},
            {"amount_eu":"810000","band":"peak","end":"2026-11-02T20:10:00Z","energy_wh":"450000","multiplier":"1.5","start":"2026-11-02T20:00:00Z"}],
            "rate_eu_per_wh":"1","source_multiplier":"1.2","tariff_version":1},"stream":"meter-gt-01","version":2});
    support::assert_matches_spec("POST", "/v1/readings", 201, "application/json", &mixed);
    let correction = json!({"delta_eu":"-1100","duplicate":false,"event_id":"a66c4f4e-9163-5a6c-aafa-b667ffcfddc2","event_type":"ReadingCorrected","ok":true,"position":11,
        "price":{"amount_eu":"493900","band":"standard","eu_per_wh":"1.1","multiplier":"1","rate_eu_per_wh":"1.1","source_multiplier":"1","tariff_version":1},
        "stream":"meter-rack-a1","version":3});
    let correction_path = "/v1/readings/{event_id}/corrections";
    support::assert_matches_spec("POST", correction_path, 201, "application/json", &correction);
    assert!(
        !response_errors(
            &spec,
            "POST",
            correction_path,
            201,
            "application/json",
            &without(correction.clone(), "/delta_eu")
        )
        .is_empty()
    );
    assert!(!response_errors(&spec, "POST", "/v1/readings", 201, "application/json", &correction).is_empty());
    let tariff = json!({"duplicate":false,"event_id":"7db665da-38ff-58ad-9c71-81825be6fb6e","event_type":"TariffPublished","ok":true,"position":7,"stream":"site-memphis-1","tariff_version":1,"version":2});
    support::assert_matches_spec("POST", "/v1/sites/{site_id}/tariffs", 201, "application/json", &tariff);
    assert!(
        !response_errors(
            &spec,
            "POST",
            "/v1/sites/{site_id}/tariffs",
            201,
            "application/json",
            &without(tariff.clone(), "/tariff_version")
        )
        .is_empty()
    );
    let site = json!({"duplicate":true,"event_id":"ee781a28-c5fd-5b81-bd72-ba1866ac8d46","event_type":"SiteRegistered","ok":true,"position":1,"stream":"site-memphis-1","version":1});
    support::assert_matches_spec("POST", "/v1/sites", 200, "application/json", &site);
    assert!(!response_errors(&spec, "POST", "/v1/tenants", 200, "application/json", &site).is_empty());
}

#[test]
fn problems_match_and_broken_problems_do_not() {
    let spec = spec();
    let invalid = json!({"code":"validation","detail":"flow: must be one of generated, stored, dispatched, consumed; got \"sideways\"",
        "errors":[{"field":"flow","message":"must be one of generated, stored, dispatched, consumed; got \"sideways\""}],
        "status":422,"title":"Unprocessable Entity","type":"https://wattledger.dev/problems/validation"});
    support::assert_matches_spec("POST", "/v1/readings", 422, "application/problem+json", &invalid);
    let insufficient = json!({"code":"insufficient_credits","detail":"amount_eu: tenant \"beta-labs\" holds 2500000 EU",
        "errors":[{"field":"amount_eu","message":"tenant \"beta-labs\" holds 2500000 EU"}],
        "status":422,"title":"Unprocessable Entity","type":"https://wattledger.dev/problems/insufficient-credits"});
    support::assert_matches_spec("POST", "/v1/transfers", 422, "application/problem+json", &insufficient);
    let unauthorized = json!({"code":"unauthorized","detail":"a bearer token is required (Authorization: Bearer <JWT>)","status":401,"title":"Unauthorized","type":"https://wattledger.dev/problems/unauthorized"});
    support::assert_matches_spec("GET", "/v1/audit", 401, "application/problem+json", &unauthorized);
    let conflict = json!({"code":"conflict","detail":"effective_from: tariff version 1 …","errors":[{"field":"effective_from","message":"tariff version 1 …"}],
        "existing_event_id":"7db665da-38ff-58ad-9c71-81825be6fb6e","status":409,"title":"Conflict","type":"https://wattledger.dev/problems/conflict"});
    support::assert_matches_spec(
        "POST",
        "/v1/sites/{site_id}/tariffs",
        409,
        "application/problem+json",
        &conflict,
    );
    let busy = json!({"code":"busy","detail":"the writer is busy","status":503,"title":"Service Unavailable","type":"https://wattledger.dev/problems/busy"});
    support::assert_matches_spec("POST", "/v1/readings", 503, "application/problem+json", &busy);

    let broken = [
        ("no code", 422, without(invalid.clone(), "/code")),
        ("no detail", 422, without(invalid.clone(), "/detail")),
        (
            "the status of another answer",
            422,
            with(invalid.clone(), "/status", json!(400)),
        ),
        (
            "a status as a string",
            422,
            with(invalid.clone(), "/status", json!("422")),
        ),
        (
            "a code of another status",
            422,
            with(invalid.clone(), "/code", json!("conflict")),
        ),
        (
            "a type that is not its code's",
            422,
            with(
                invalid.clone(),
                "/type",
                json!("https://wattledger.dev/problems/storage-underflow"),
            ),
        ),
        (
            "errors without messages",
            422,
            with(invalid.clone(), "/errors", json!([{"field": "flow"}])),
        ),
        ("empty errors", 422, with(invalid.clone(), "/errors", json!([]))),
        ("an unknown field", 422, with(invalid.clone(), "/hint", json!("x"))),
        ("a 401 answered as 403", 403, unauthorized.clone()),
        ("a 503 code on a 409", 409, with(busy.clone(), "/status", json!(409))),
    ];
    for (why, status, body) in broken {
        let errs = response_errors(
            &spec,
            "POST",
            "/v1/transfers",
            status,
            "application/problem+json",
            &body,
        );
        assert!(!errs.is_empty(), "a problem with {why} matched the spec: {body}");
    }
}

#[test]
fn read_bodies_match_and_broken_ones_do_not() {
    let spec = spec();
    let balance = json!({"account":"tenant:acme-ai","balance_eu":"97006100","balance_wh":"-449000","credits_eu":"100001100","credits_wh":"1000","debits_eu":"2995000","debits_wh":"450000","normal_side":"credit","position":14,"held_eu":"6000","available_eu":"97000100"});
    support::assert_matches_spec("GET", "/v1/accounts/{account}", 200, "application/json", &balance);
    let bus = json!({"account":"site:memphis-1:bus","balance_eu":"854600","balance_wh":"450000","credits_eu":"496500","credits_wh":"451000","debits_eu":"1351100","debits_wh":"901000","normal_side":"debit","position":14});
    support::assert_matches_spec("GET", "/v1/accounts/{account}", 200, "application/json", &bus);
    for (why, body) in [
        ("no normal_side", without(balance.clone(), "/normal_side")),
        (
            "a tenant account that is debit-normal",
            with(balance.clone(), "/normal_side", json!("debit")),
        ),
        (
            "a bus account that is credit-normal",
            with(bus.clone(), "/normal_side", json!("credit")),
        ),
        (
            "a balance as a number",
            with(balance.clone(), "/balance_eu", json!(97006100)),
        ),
        (
            "a position as a string",
            with(balance.clone(), "/position", json!("14")),
        ),
        (
            "an account of no known shape",
            with(balance.clone(), "/account", json!("bogus")),
        ),
        ("negative debits", with(balance.clone(), "/debits_eu", json!("-1"))),
        (
            "a tenant without available_eu",
            without(balance.clone(), "/available_eu"),
        ),
        ("negative held EU", with(balance.clone(), "/held_eu", json!("-1"))),
        ("held EU on a bus account", with(bus.clone(), "/held_eu", json!("0"))),
    ] {
        assert!(
            !response_errors(&spec, "GET", "/v1/accounts/{account}", 200, "application/json", &body).is_empty(),
            "a balance with {why} matched"
        );
    }

    let statement = json!({"adjustments_eu":"0","adjustments_wh":"0","chain_hash":"b649d49f59973f942849842d8e7650903806b3139c4333a5af23428e4e764201","charges_eu":"493900","closing_balance_eu":"97006100","consumption_wh":"449000","credits_eu":"100000000","final":false,"first_position":8,"last_position":13,
        "lines":[{"amount_eu":"495000","band":"standard","date":"2026-11-02","energy_wh":"450000","kind":"consumption","site_id":"memphis-1"},
                 {"amount_eu":"-1100","band":"standard","date":"2026-11-02","energy_wh":"-1000","kind":"correction","memo":"correction of 6f1e8f0e-3c52-4c1e-9f8e-1c1a4b0c5d11: meter recalibrated","position":11,"site_id":"memphis-1"},
                 {"amount_eu":"100000000","date":"2026-11-28","kind":"credit","memo":"November allocation","position":12},
                 {"amount_eu":"2500000","counterparty":"beta-labs","date":"2026-11-28","kind":"transfer_out","memo":"spot purchase","position":13}],
        "opening_balance_eu":"0","period":"2026-11","tenant_id":"acme-ai","tenant_name":"Acme AI","transfers_in_eu":"0","transfers_out_eu":"2500000"});
    let st_path = "/v1/tenants/{tenant_id}/statements/{period}";
    support::assert_matches_spec("GET", st_path, 200, "application/json", &statement);
    let empty = json!({"adjustments_eu":"0","adjustments_wh":"0","chain_hash":"","charges_eu":"0","closing_balance_eu":"0","consumption_wh":"0","credits_eu":"0","final":false,"first_position":0,"last_position":0,"lines":[],"opening_balance_eu":"0","period":"2026-09","tenant_id":"acme-ai","tenant_name":"Acme AI","transfers_in_eu":"0","transfers_out_eu":"0"});
    support::assert_matches_spec("GET", st_path, 200, "application/json", &empty);
    for (why, body) in [
        ("no final", without(statement.clone(), "/final")),
        ("final as a string", with(statement.clone(), "/final", json!("false"))),
        ("a bad period", with(statement.clone(), "/period", json!("2026-13"))),
        ("a line without kind", without(statement.clone(), "/lines/0/kind")),
        (
            "a consumption line without energy",
            without(statement.clone(), "/lines/0/energy_wh"),
        ),
        (
            "a transfer without counterparty",
            without(statement.clone(), "/lines/3/counterparty"),
        ),
        (
            "a line of unknown kind",
            with(statement.clone(), "/lines/2/kind", json!("gift")),
        ),
        (
            "a short chain hash",
            with(statement.clone(), "/chain_hash", json!("abc")),
        ),
    ] {
        assert!(
            !response_errors(&spec, "GET", st_path, 200, "application/json", &body).is_empty(),
            "a statement with {why} matched"
        );
    }

    let eb = json!({"flagged_count":1,"from":"2026-11-02T19:00:00Z","interval_s":900,"intervals":[
        {"consumed_wh":"449000","dispatched_wh":"0","end":"2026-11-02T20:00:00Z","flagged":false,"generated_wh":"450000","losses_pct":"0.222","losses_wh":"1000","reason":null,"start":"2026-11-02T19:45:00Z","stored_wh":"0"},
        {"consumed_wh":"0","dispatched_wh":"0","end":"2026-11-02T20:15:00Z","flagged":true,"generated_wh":"450000","losses_pct":"99.778","losses_wh":"449000","reason":"losses above the site's tolerance","start":"2026-11-02T20:00:00Z","stored_wh":"1000"}],
        "loss_tolerance_pct":"5","position":14,"site_id":"memphis-1","to":"2026-11-02T21:00:00.123456789Z"});
    let eb_path = "/v1/sites/{site_id}/energy-balance";
    support::assert_matches_spec("GET", eb_path, 200, "application/json", &eb);
    let no_supply = with(
        with(eb.clone(), "/intervals/0/losses_pct", Value::Null),
        "/intervals/0/losses_wh",
        json!("-449000"),
    );
    support::assert_matches_spec("GET", eb_path, 200, "application/json", &no_supply);
    for (why, body) in [
        (
            "flagged without a reason",
            with(eb.clone(), "/intervals/1/reason", Value::Null),
        ),
        (
            "a reason but not flagged",
            with(eb.clone(), "/intervals/1/flagged", json!(false)),
        ),
        ("no losses_pct", without(eb.clone(), "/intervals/0/losses_pct")),
        (
            "losses_pct as a number",
            with(eb.clone(), "/intervals/0/losses_pct", json!(0.222)),
        ),
        (
            "a time with an offset",
            with(eb.clone(), "/from", json!("2026-11-02T19:00:00+00:00")),
        ),
    ] {
        assert!(
            !response_errors(&spec, "GET", eb_path, 200, "application/json", &body).is_empty(),
            "an energy balance with {why} matched"
        );
    }

    let settlement = json!({"accounts":[{"account":"asset:turbine-01","net_eu":"-1350000","net_wh":"-900000"},{"account":"issuance","net_eu":"100000000","net_wh":"0"}],"final":false,"period":"2026-11","position":14,"sum_eu":"0","sum_wh":"0"});
    support::assert_matches_spec("GET", "/v1/settlements/{period}", 200, "application/json", &settlement);
    assert!(
        !response_errors(
            &spec,
            "GET",
            "/v1/settlements/{period}",
            200,
            "application/json",
            &with(settlement, "/sum_eu", json!("1"))
        )
        .is_empty()
    );

    let page = json!({"events":[{"data":{"name":"Acme AI","tenant_id":"acme-ai"},"event_id":"8d1e9260-4a9c-58dd-b840-01e8a4415ca0","event_type":"TenantRegistered",
        "hash":"52bafa98008da88986e432142e8d3d2c8d0a2b0e0470be5cab3b7f6c54ba6823","position":2,"prev_hash":"92312822390a61c617d970c5846d0be38d796b91e8ad76bcbe6e3d86e9dd22dd",
        "recorded_at":"2026-11-28T20:47:24.413Z","schema_version":1,"stream":"tenant-acme-ai","version":1}],"next_position":3});
    support::assert_matches_spec("GET", "/v1/events", 200, "application/json", &page);
    assert!(
        !response_errors(&spec, "GET", "/v1/streams/{stream}", 200, "application/json", &page).is_empty(),
        "next_position on a stream page"
    );
    assert!(
        !response_errors(
            &spec,
            "GET",
            "/v1/events",
            200,
            "application/json",
            &without(page.clone(), "/events/0/prev_hash")
        )
        .is_empty()
    );

    let audit = json!({"clean":true,"events":14,"head_position":14,"chain_hash":"3935a3356c70a226dde32fe042e16e97bc5c227f4872b076213b8efac4a3850c","first_failing_position":null,"findings":[],"findings_omitted":0,"snapshot":"compared with the replay at position 14"});
    support::assert_matches_spec("GET", "/v1/audit", 200, "application/json", &audit);
    let dirty = with(
        with(audit.clone(), "/clean", json!(false)),
        "/findings",
        json!([{"position": 3, "kind": "hash", "message": "altered"}]),
    );
    support::assert_matches_spec(
        "GET",
        "/v1/audit",
        200,
        "application/json",
        &with(dirty.clone(), "/first_failing_position", json!(3)),
    );
    assert!(
        !response_errors(
            &spec,
            "GET",
            "/v1/audit",
            200,
            "application/json",
            &with(audit.clone(), "/clean", json!(false))
        )
        .is_empty(),
        "unclean without findings"
    );
    assert!(
        !response_errors(
            &spec,
            "GET",
            "/v1/audit",
            200,
            "application/json",
            &without(audit, "/snapshot")
        )
        .is_empty()
    );

    support::assert_matches_spec(
        "GET",
        "/readyz",
        200,
        "application/json",
        &json!({"head_position":14,"projection_position":14,"status":"ready"}),
    );
    support::assert_matches_spec("GET", "/healthz", 200, "application/json", &json!({"status":"ok"}));
    assert!(
        !response_errors(
            &spec,
            "GET",
            "/healthz",
            200,
            "application/json",
            &json!({"status":"ready"})
        )
        .is_empty()
    );
}

#[test]
fn bulk_lines_match_and_broken_ones_do_not() {
    let spec = spec();
    let accepted = with(
        with(contract_reading_result(), "/line", json!(1)),
        "/status",
        json!(201),
    );
    let refused = json!({"error":{"code":"not_found","errors":[{"field":"meter_id","message":"no meter \"nope\" is registered"}],"field":"meter_id","message":"meter_id: no meter \"nope\" is registered"},"line":5,"ok":false,"status":404});
    let malformed = json!({"error":{"code":"malformed","message":"malformed JSON: key must be a string at line 1 column 2"},"line":2,"ok":false,"status":400});
    for line in [&accepted, &refused, &malformed] {
        support::assert_matches_spec("POST", "/v1/readings", 200, "application/x-ndjson", line);
    }
    for (why, body) in [
        ("no line number", without(accepted.clone(), "/line")),
        (
            "a new event answered 200",
            with(accepted.clone(), "/status", json!(200)),
        ),
        (
            "a duplicate answered 201",
            with(accepted.clone(), "/duplicate", json!(true)),
        ),
        (
            "a status that is not a result's",
            with(accepted.clone(), "/status", json!(422)),
        ),
        ("a refusal without error", without(refused.clone(), "/error")),
        (
            "a refusal with field but no errors",
            without(refused.clone(), "/error/errors"),
        ),
        ("a refusal answered 201", with(refused.clone(), "/status", json!(201))),
        (
            "a refusal with a problem's fields",
            with(refused.clone(), "/error/detail", json!("x")),
        ),
    ] {
        assert!(
            !response_errors(&spec, "POST", "/v1/readings", 200, "application/x-ndjson", &body).is_empty(),
            "a bulk line with {why} matched"
        );
    }
}

#[test]
fn the_request_schemas_take_the_contract_commands_and_refuse_what_the_parser_refuses() {
    let spec = spec();
    let good = [
        (
            "RegisterSite",
            json!({"site_id":"memphis-1","time_zone":"America/Chicago","loss_tolerance_pct":"5"}),
        ),
        (
            "RegisterSite",
            json!({"command":"register_site","site_id":"memphis-1","time_zone":"America/Chicago","loss_tolerance_pct":5}),
        ),
        ("RegisterTenant", json!({"tenant_id":"acme-ai","name":"Acme AI"})),
        (
            "RegisterMeter",
            json!({"meter_id":"gt-01","site_id":"memphis-1","kind":"generation","asset_id":"turbine-01","source":"gas_turbine","rated_power_w":"35000000"}),
        ),
        (
            "RegisterMeter",
            json!({"meter_id":"bess-01","site_id":"memphis-1","kind":"storage","asset_id":"megapack-01","rated_power_w":"1900000","capacity_wh":"3900000","initial_wh":"0"}),
        ),
        (
            "RegisterMeter",
            json!({"meter_id":"rack-a1","site_id":"memphis-1","kind":"load","tenant_id":"acme-ai","rated_power_w":"2000000","active_from":"2026-01-01T00:00:00-06:00","capacity_wh":null}),
        ),
        (
            "PublishTariff",
            json!({"site_id":"memphis-1","effective_from":"2026-01-01T00:00:00Z",
            "rates_eu_per_wh":{"generated":"1","stored":"1","dispatched":"1","consumed":"1.1"},
            "bands":[{"name":"peak","days":["mon","tue","wed","thu","fri"],"start":"14:00","end":"20:00","multiplier":"1.5"},
                     {"name":"night","days":["mon","tue","wed","thu","fri","sat","sun"],"start":"00:00","end":"24:00","multiplier":0.6}],
            "default_band":{"name":"standard","multiplier":"1"},"source_multipliers":{"gas_turbine":"1.2","solar":"0.9","grid":"1"}}),
        ),
        (
            "PostReading",
            json!({"meter_id":"rack-a1","flow":"consumed","start":"2026-11-02T20:00:00Z","end":"2026-11-02T20:15:00Z","wh":"450000"}),
        ),
        (
            "PostReading",
            json!({"command":"post_reading","event_id":"6f1e8f0e-3c52-4c1e-9f8e-1c1a4b0c5d11","meter_id":"rack-a1","flow":"consumed","start":"2026-11-02T20:00:00Z","end":"2026-11-02T20:15:00Z","wh":450000.125,"quality":"estimated"}),
        ),
        ("CorrectReading", json!({"wh":"449000","reason":"meter recalibrated"})),
        (
            "IssueCredits",
            json!({"amount_eu":"100000000","memo":"November allocation"}),
        ),
        (
            "TransferCredits",
            json!({"from_tenant":"acme-ai","to_tenant":"beta-labs","amount_eu":"2500000","memo":"spot purchase"}),
        ),
        ("ClosePeriod", json!({})),
        ("ClosePeriod", json!({"period":"2026-11"})),
    ];
    for (name, body) in good {
        let errs = schema_errors(&spec, name, &body);
        assert!(errs.is_empty(), "{name} refused {body}: {errs:?}");
    }
    let bad = [
        ("RegisterSite", json!({"site_id":"memphis-1"}), "no time zone"),
        (
            "RegisterSite",
            json!({"site_id":"Memphis","time_zone":"UTC"}),
            "an id with capitals",
        ),
        (
            "RegisterSite",
            json!({"site_id":"m","time_zone":"UTC","loss_tolerance_pct":"101"}),
            "a percentage above 100",
        ),
        (
            "RegisterSite",
            json!({"site_id":"m","time_zone":"UTC","loss_tolerance_pct":"1e1"}),
            "an exponent",
        ),
        (
            "RegisterSite",
            json!({"site_id":"m","time_zone":"UTC","loss":"5"}),
            "an unknown field",
        ),
        ("RegisterTenant", json!({"tenant_id":"a","name":"  "}), "a blank name"),
        (
            "RegisterMeter",
            json!({"meter_id":"m","site_id":"s","kind":"load","rated_power_w":"1","capacity_wh":"5"}),
            "a load meter without tenant, with a capacity",
        ),
        (
            "RegisterMeter",
            json!({"meter_id":"m","site_id":"s","kind":"generation","asset_id":"a","rated_power_w":"1"}),
            "a generation meter without source",
        ),
        (
            "RegisterMeter",
            json!({"meter_id":"m","site_id":"s","kind":"storage","asset_id":"a","rated_power_w":"1"}),
            "a storage meter without capacity",
        ),
        (
            "RegisterMeter",
            json!({"meter_id":"m","site_id":"s","kind":"wind","rated_power_w":"1"}),
            "an unknown kind",
        ),
        (
            "RegisterMeter",
            json!({"meter_id":"m","site_id":"s","kind":"load","tenant_id":"t","rated_power_w":0}),
            "no rated power",
        ),
        (
            "PublishTariff",
            json!({"effective_from":"2026-01-01T00:00:00Z","rates_eu_per_wh":{"generated":"1","stored":"1","dispatched":"1"},"default_band":{"name":"s","multiplier":"1"}}),
            "a missing rate",
        ),
        (
            "PublishTariff",
            json!({"effective_from":"2026-01-01T00:00:00Z","rates_eu_per_wh":{"generated":"1","stored":"1","dispatched":"1","consumed":"1"},"default_band":{"name":"mixed","multiplier":"1"}}),
            "the reserved band name",
        ),
        (
            "PublishTariff",
            json!({"effective_from":"2026-01-01T00:00:00Z","rates_eu_per_wh":{"generated":"1","stored":"1","dispatched":"1","consumed":"1"},"default_band":{"name":"s","multiplier":"1"},
            "bands":[{"name":"b","days":["mon","mon"],"start":"10:00","end":"12:00","multiplier":"1"}]}),
            "a day twice",
        ),
        (
            "PublishTariff",
            json!({"effective_from":"2026-01-01T00:00:00Z","rates_eu_per_wh":{"generated":"1","stored":"1","dispatched":"1","consumed":"1"},"default_band":{"name":"s","multiplier":"1"},
            "bands":[{"name":"b","days":["mon"],"start":"10:00","end":"24:30","multiplier":"1"}]}),
            "a time past 24:00",
        ),
        (
            "PublishTariff",
            json!({"effective_from":"2026-01-01T00:00:00Z","rates_eu_per_wh":{"generated":"1","stored":"1","dispatched":"1","consumed":"1"},"default_band":{"name":"s","multiplier":"1"},
            "source_multipliers":{"coal":"2"}}),
            "an unknown source",
        ),
        (
            "PostReading",
            json!({"meter_id":"rack-a1","flow":"sideways","start":"2026-11-02T20:00:00Z","end":"2026-11-02T20:15:00Z","wh":"1"}),
            "an unknown flow",
        ),
        (
            "PostReading",
            json!({"meter_id":"rack-a1","flow":"consumed","start":"2026-11-02T20:00:00Z","end":"2026-11-02T20:15:00Z","wh":"-1"}),
            "negative energy",
        ),
        (
            "PostReading",
            json!({"meter_id":"rack-a1","flow":"consumed","start":"2026-11-02T20:00:00Z","end":"2026-11-02T20:15:00Z","wh":-1}),
            "a negative number",
        ),
        (
            "PostReading",
            json!({"meter_id":"rack-a1","flow":"consumed","start":"2026-11-02T20:00:00Z","end":"2026-11-02T20:15:00Z","wh":"1","command":"issue_credits"}),
            "another command",
        ),
        (
            "PostReading",
            json!({"meter_id":"rack-a1","flow":"consumed","start":"2026-11-02T20:00:00Z","wh":"1"}),
            "no end",
        ),
        ("CorrectReading", json!({"wh":"1"}), "no reason"),
        ("IssueCredits", json!({"amount_eu":"0"}), "zero credits"),
        ("IssueCredits", json!({"amount_eu":-5}), "negative credits"),
        (
            "TransferCredits",
            json!({"from_tenant":"a","amount_eu":"1"}),
            "no recipient",
        ),
        ("ClosePeriod", json!({"period":"2026-1"}), "a bad period"),
    ];
    for (name, body, why) in bad {
        assert!(
            !schema_errors(&spec, name, &body).is_empty(),
            "{name} took a body with {why}: {body}"
        );
    }
}

#[test]
fn the_decimal_input_patterns_agree_with_the_parser() {
    use rust_decimal::Decimal;
    use wattledger::domain::quantity::{AmountEu, EnergyWh, parse_decimal};
    let spec = spec();
    let d = |s: &str| parse_decimal(s).ok();
    let hundred = Decimal::ONE_HUNDRED;
    let million = Decimal::from(1_000_000);
    type Rule = Box<dyn Fn(&str) -> bool>;
    let rules: [(&str, Rule); 8] = [
        ("DecimalInput", Box::new(move |s| d(s).is_some())),
        ("EnergyWhInput", Box::new(|s| EnergyWh::parse(s).is_ok())),
        (
            "PositiveEnergyWhInput",
            Box::new(|s| EnergyWh::parse(s).is_ok_and(|e| !e.is_zero())),
        ),
        (
            "PositiveAmountEuInput",
            Box::new(|s| AmountEu::parse(s).is_ok_and(|a| a.value() > Decimal::ZERO)),
        ),
        (
            "PositiveDecimalInput",
            Box::new(move |s| d(s).is_some_and(|x| x > Decimal::ZERO)),
        ),
        (
            "PercentInput",
            Box::new(move |s| d(s).is_some_and(|x| x >= Decimal::ZERO && x <= hundred)),
        ),
        (
            "PositivePercentInput",
            Box::new(move |s| d(s).is_some_and(|x| x > Decimal::ZERO && x <= hundred)),
        ),
        (
            "FactorInput",
            Box::new(move |s| d(s).is_some_and(|x| (x >= Decimal::ZERO || x.is_zero()) && x <= million)),
        ),
    ];
    let samples = [
        "0",
        "1",
        "1.5",
        "1.500",
        "1.0001",
        "1.000100",
        "-1",
        "-0",
        "-0.000",
        "-.0",
        "+0",
        "+1",
        "+.5",
        " 1 ",
        "\t7\n",
        ".5",
        "5.",
        ".",
        "+",
        "-",
        "1e3",
        "1E3",
        "",
        " ",
        "abc",
        "01",
        "007.50",
        "1.2.3",
        "--1",
        "1-",
        "+-1",
        "-.5",
        "99.999",
        "100",
        "100.0",
        "100.",
        "100.5",
        "101",
        "0100",
        "999999.999999",
        "1000000",
        "1000000.000",
        "1000000.1",
        "1000001",
        "0.001",
        "0.0001",
        "0.000001",
        "0.0000001",
        "0.0000010",
        "1_000",
        "1 000",
        "0x10",
        "12345678901234.123",
        "NaN",
        "inf",
        "٣",
    ];
    let mut disagreements = Vec::new();
    for (name, rule) in &rules {
        let v = compile(&spec, &component(name)).expect("compiles");
        for s in samples {
            let schema_says = v.is_valid(&json!(s));
            let parser_says = rule(s);
            if schema_says != parser_says {
                disagreements.push(format!("{name} {s:?}: schema {schema_says}, parser {parser_says}"));
            }
        }
        // JSON numbers: sign and range are the schema's to check.
        for (n, ok) in [
            ("0", "nonneg"),
            ("5", "any"),
            ("-1", "neg"),
            ("100.5", "big"),
            ("0.5", "any"),
        ] {
            let x: Value = serde_json::from_str(n).unwrap();
            let schema_says = v.is_valid(&x);
            let parser_says = rule(n);
            if schema_says != parser_says {
                disagreements.push(format!(
                    "{name} number {n} ({ok}): schema {schema_says}, parser {parser_says}"
                ));
            }
        }
    }
    assert!(
        disagreements.is_empty(),
        "the spec's decimal inputs and the parser disagree:\n  {}",
        disagreements.join("\n  ")
    );
}

// ----- a running server answers as documented -----

enum Body {
    None,
    Json(Value),
    Raw(&'static str, String),
}

struct Client<'a> {
    app: &'a support::App,
    spec: Value,
}

struct Answer {
    status: u16,
    json: Value,
    text: String,
}

impl Client<'_> {
    /// Sends a request and holds the answer against the spec: its status and content type
    /// are documented for the operation, a JSON (or NDJSON) body matches the schema, a 401
    /// carries `WWW-Authenticate` and a 503 `Retry-After`.
    #[allow(clippy::too_many_arguments)]
    async fn call(
        &self,
        method: &str,
        uri: &str,
        spec_path: &str,
        token: Option<&str>,
        body: Body,
        headers: &[(&str, &str)],
        expect: u16,
    ) -> Answer {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut rb = self.app.client.request(m, self.app.url(uri));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        rb = match body {
            Body::None => rb,
            Body::Json(v) => rb.header("content-type", "application/json").body(v.to_string()),
            Body::Raw(ctype, s) => rb.header("content-type", ctype).body(s),
        };
        let res = rb.send().await.unwrap();
        let status = res.status().as_u16();
        let h = res.headers().clone();
        let text = res.text().await.unwrap();
        assert_eq!(
            status, expect,
            "{method} {uri} answered {status}, expected {expect}: {text}"
        );
        let ctype = h.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
        let media = ctype.split(';').next().unwrap().trim().to_string();
        let op = &self.spec["paths"][spec_path][method.to_ascii_lowercase()];
        let resp = &op["responses"][status.to_string()];
        assert!(
            resp.is_object(),
            "api.yaml has no {status} response for {method} {spec_path} ({uri}): {text}"
        );
        let resp = deref(&self.spec, resp);
        assert!(
            resp["content"][&media].is_object(),
            "api.yaml has no {media} content for {status} of {method} {spec_path}"
        );
        if status == 401 {
            assert_eq!(h["www-authenticate"], "Bearer");
        }
        if status == 503 {
            assert!(h.contains_key("retry-after"), "a 503 without Retry-After");
        }
        assert!(h.contains_key("x-request-id"));
        let json = match media.as_str() {
            "application/json" | "application/problem+json" => {
                let v: Value = serde_json::from_str(&text).unwrap();
                support::assert_matches_spec(method, spec_path, status, &media, &v);
                v
            }
            "application/x-ndjson" => {
                let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
                for l in &lines {
                    support::assert_matches_spec(method, spec_path, status, &media, l);
                }
                Value::Array(lines)
            }
            _ => Value::Null,
        };
        Answer { status, json, text }
    }
}

#[tokio::test]
async fn a_running_server_answers_every_route_as_documented() {
    use chrono::{Datelike, Duration, DurationRound, TimeDelta, Utc};
    let app = support::spawn_app().await;
    let c = Client {
        app: &app,
        spec: spec(),
    };
    let op = app.operator();
    let au = app.auditor();
    let op = Some(op.as_str());
    let au = Some(au.as_str());
    let acme = app.token(Role::Tenant, Some("acme-ai"), None, None);
    let beta = app.token(Role::Tenant, Some("beta-labs"), None, None);
    let gt_meter = app.token(Role::Meter, None, None, Some(&["gt-01"]));
    let site_meter = app.token(Role::Meter, None, Some(&["memphis-1"]), None);
    let t = |d: chrono::DateTime<Utc>| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    // Two days ago at 11:45 UTC; the site is in UTC and its peak band starts at 12:00.
    let day = (Utc::now() - Duration::days(2))
        .duration_trunc(TimeDelta::days(1))
        .unwrap();
    let at = |h: i64, m: i64| day + Duration::hours(h) + Duration::minutes(m);
    let period = format!("{:04}-{:02}", day.year(), day.month());

    // Commands.
    let site = json!({"site_id":"memphis-1","time_zone":"UTC","loss_tolerance_pct":"5"});
    c.call("POST", "/v1/sites", "/v1/sites", op, Body::Json(site.clone()), &[], 201)
        .await;
    c.call("POST", "/v1/sites", "/v1/sites", op, Body::Json(site), &[], 200)
        .await;
    let other = json!({"site_id":"memphis-1","time_zone":"America/Chicago"});
    let r = c
        .call("POST", "/v1/sites", "/v1/sites", op, Body::Json(other), &[], 409)
        .await;
    assert_eq!(r.json["code"], "conflict");
    for (tenant, name) in [("acme-ai", "Acme AI"), ("beta-labs", "Beta Labs")] {
        let b = json!({"tenant_id": tenant, "name": name});
        c.call("POST", "/v1/tenants", "/v1/tenants", op, Body::Json(b), &[], 201)
            .await;
    }
    let meters = [
        json!({"meter_id":"gt-01","site_id":"memphis-1","kind":"generation","asset_id":"turbine-01","source":"gas_turbine","rated_power_w":"35000000"}),
        json!({"meter_id":"bess-01","site_id":"memphis-1","kind":"storage","asset_id":"megapack-01","rated_power_w":"1900000","capacity_wh":"3900000","initial_wh":"0"}),
        json!({"meter_id":"rack-a1","site_id":"memphis-1","kind":"load","tenant_id":"acme-ai","rated_power_w":"2000000"}),
    ];
    for m in meters {
        c.call("POST", "/v1/meters", "/v1/meters", op, Body::Json(m), &[], 201)
            .await;
    }
    let r = c
        .call(
            "POST",
            "/v1/meters",
            "/v1/meters",
            op,
            Body::Json(
                json!({"meter_id":"x","site_id":"nowhere","kind":"load","tenant_id":"acme-ai","rated_power_w":"1"}),
            ),
            &[],
            404,
        )
        .await;
    assert_eq!(r.json["errors"][0]["field"], "site_id");
    let tariff = json!({"effective_from":"2020-01-01T00:00:00Z",
        "rates_eu_per_wh":{"generated":"1","stored":"1","dispatched":"1","consumed":"1.1"},
        "bands":[{"name":"peak","days":["mon","tue","wed","thu","fri","sat","sun"],"start":"12:00","end":"18:00","multiplier":"1.5"}],
        "default_band":{"name":"standard","multiplier":"1"},
        "source_multipliers":{"gas_turbine":"1.2"}});
    let tp = "/v1/sites/{site_id}/tariffs";
    let r = c
        .call(
            "POST",
            "/v1/sites/memphis-1/tariffs",
            tp,
            op,
            Body::Json(tariff.clone()),
            &[],
            201,
        )
        .await;
    assert_eq!(r.json["tariff_version"], 1);
    let r = c
        .call(
            "POST",
            "/v1/sites/memphis-1/tariffs",
            tp,
            op,
            Body::Json(with(tariff.clone(), "/site_id", json!("elsewhere"))),
            &[],
            422,
        )
        .await;
    assert_eq!(r.json["errors"][0]["field"], "site_id");
    let changed = with(
        tariff.clone(),
        "/default_band",
        json!({"name":"standard","multiplier":"2"}),
    );
    let r = c
        .call(
            "POST",
            "/v1/sites/memphis-1/tariffs",
            tp,
            op,
            Body::Json(changed),
            &[],
            409,
        )
        .await;
    assert!(r.json["existing_event_id"].is_string());
    c.call(
        "POST",
        "/v1/sites/memphis-1/tariffs",
        tp,
        op,
        Body::Json(tariff),
        &[],
        200,
    )
    .await;

    // Readings: one JSON, a duplicate, a mixed band, NDJSON with refusals, a correction.
    let reading = json!({"meter_id":"rack-a1","flow":"consumed","start":t(at(11, 45)),"end":t(at(12, 0)),"wh":"450000","event_id":"6f1e8f0e-3c52-4c1e-9f8e-1c1a4b0c5d11"});
    let r = c
        .call(
            "POST",
            "/v1/readings",
            "/v1/readings",
            op,
            Body::Json(reading.clone()),
            &[],
            201,
        )
        .await;
    assert_eq!(r.json["price"]["band"], "standard");
    let reading_position = r.json["position"].as_u64().unwrap();
    c.call(
        "POST",
        "/v1/readings",
        "/v1/readings",
        op,
        Body::Json(reading.clone()),
        &[],
        200,
    )
    .await;
    let r = c
        .call(
            "POST",
            "/v1/readings",
            "/v1/readings",
            op,
            Body::Json(with(reading.clone(), "/wh", json!("1"))),
            &[],
            409,
        )
        .await;
    assert_eq!(r.json["code"], "conflict");
    let mixed = json!({"meter_id":"gt-01","flow":"generated","start":t(at(11, 50)),"end":t(at(12, 10)),"wh":900000});
    let r = c
        .call(
            "POST",
            "/v1/readings",
            "/v1/readings",
            Some(&gt_meter),
            Body::Json(mixed),
            &[],
            201,
        )
        .await;
    assert_eq!(r.json["price"]["band"], "mixed");
    assert_eq!(r.json["price"]["parts"].as_array().unwrap().len(), 2);
    let r = c
        .call(
            "POST",
            "/v1/readings",
            "/v1/readings",
            Some(&gt_meter),
            Body::Json(with(reading.clone(), "/event_id", Value::Null)),
            &[],
            403,
        )
        .await;
    assert_eq!(r.json["code"], "forbidden");
    let bad = json!({"meter_id":"rack-a1","flow":"sideways","start":"x","wh":"-1","extra":1});
    let r = c
        .call("POST", "/v1/readings", "/v1/readings", op, Body::Json(bad), &[], 422)
        .await;
    assert!(r.json["errors"].as_array().unwrap().len() >= 4);
    let underflow =
        json!({"meter_id":"bess-01","flow":"dispatched","start":t(at(13, 0)),"end":t(at(13, 15)),"wh":"1000"});
    let r = c
        .call(
            "POST",
            "/v1/readings",
            "/v1/readings",
            op,
            Body::Json(underflow),
            &[],
            422,
        )
        .await;
    assert_eq!(r.json["code"], "storage_underflow");
    let nd = [
        json!({"meter_id":"bess-01","flow":"stored","start":t(at(12, 0)),"end":t(at(12, 15)),"wh":"1000"}).to_string(),
        "{bad".to_string(),
        String::new(),
        json!({"meter_id":"bess-01","flow":"dispatched","start":t(at(12, 0)),"end":t(at(12, 15)),"wh":"999999999"})
            .to_string(),
        json!({"meter_id":"nope","flow":"stored","start":t(at(12, 0)),"end":t(at(12, 15)),"wh":"1"}).to_string(),
        reading.to_string(),
        with(reading.clone(), "/wh", json!("450001")).to_string(),
        json!({"command":"issue_credits","wh":"a"}).to_string(),
        "[1]".to_string(),
    ]
    .join("\n");
    let r = c
        .call(
            "POST",
            "/v1/readings",
            "/v1/readings",
            Some(&site_meter),
            Body::Raw("application/x-ndjson", nd),
            &[],
            200,
        )
        .await;
    let lines = r.json.as_array().unwrap();
    let got: Vec<(u64, u64)> = lines
        .iter()
        .map(|l| (l["line"].as_u64().unwrap(), l["status"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            (1, 201),
            (2, 400),
            (4, 422),
            (5, 403),
            (6, 200),
            (7, 409),
            (8, 422),
            (9, 400)
        ]
    );
    let cp = "/v1/readings/{event_id}/corrections";
    let corr = json!({"wh":"449000","reason":"meter recalibrated"});
    let r = c
        .call(
            "POST",
            "/v1/readings/6f1e8f0e-3c52-4c1e-9f8e-1c1a4b0c5d11/corrections",
            cp,
            op,
            Body::Json(corr.clone()),
            &[],
            201,
        )
        .await;
    assert_eq!(r.json["delta_eu"], "-1100");
    c.call(
        "POST",
        "/v1/readings/6f1e8f0e-3c52-4c1e-9f8e-1c1a4b0c5d11/corrections",
        cp,
        Some(&gt_meter),
        Body::Json(corr.clone()),
        &[],
        403,
    )
    .await;
    c.call(
        "POST",
        "/v1/readings/00000000-0000-4000-8000-000000000000/corrections",
        cp,
        op,
        Body::Json(corr.clone()),
        &[],
        404,
    )
    .await;
    c.call(
        "POST",
        "/v1/readings/not-a-uuid/corrections",
        cp,
        op,
        Body::Json(corr),
        &[],
        422,
    )
    .await;

    // Credits, transfers, a period close and a late reading into the closed period.
    let cr = "/v1/tenants/{tenant_id}/credits";
    let credits =
        json!({"amount_eu":"100000000","memo":"allocation","event_id":"0b7f1f3c-8a57-4f55-b6a8-2f4f6a0c9d01"});
    c.call(
        "POST",
        "/v1/tenants/acme-ai/credits",
        cr,
        op,
        Body::Json(credits.clone()),
        &[],
        201,
    )
    .await;
    c.call(
        "POST",
        "/v1/tenants/acme-ai/credits",
        cr,
        op,
        Body::Json(credits.clone()),
        &[],
        200,
    )
    .await;
    c.call(
        "POST",
        "/v1/tenants/nobody/credits",
        cr,
        op,
        Body::Json(without(credits.clone(), "/event_id")),
        &[],
        404,
    )
    .await;
    c.call(
        "POST",
        "/v1/tenants/acme-ai/credits",
        cr,
        Some(&acme),
        Body::Json(credits),
        &[],
        403,
    )
    .await;
    let transfer =
        json!({"from_tenant":"acme-ai","to_tenant":"beta-labs","amount_eu":"2500000","memo":"spot purchase"});
    c.call(
        "POST",
        "/v1/transfers",
        "/v1/transfers",
        Some(&acme),
        Body::Json(transfer.clone()),
        &[],
        201,
    )
    .await;
    c.call(
        "POST",
        "/v1/transfers",
        "/v1/transfers",
        Some(&beta),
        Body::Json(transfer),
        &[],
        403,
    )
    .await;
    let overdraw = json!({"from_tenant":"beta-labs","to_tenant":"acme-ai","amount_eu":"250000000"});
    let r = c
        .call(
            "POST",
            "/v1/transfers",
            "/v1/transfers",
            Some(&beta),
            Body::Json(overdraw),
            &[],
            422,
        )
        .await;
    assert_eq!(r.json["code"], "insufficient_credits");
    let close = "/v1/periods/{period}/close";
    c.call("POST", "/v1/periods/2021-01/close", close, op, Body::None, &[], 201)
        .await;
    c.call(
        "POST",
        "/v1/periods/2021-01/close",
        close,
        op,
        Body::Json(json!({"period":"2021-01"})),
        &[],
        200,
    )
    .await;
    c.call(
        "POST",
        "/v1/periods/2021-01/close",
        close,
        op,
        Body::Raw("text/plain", "now".into()),
        &[],
        415,
    )
    .await;
    c.call("POST", "/v1/periods/2021-13/close", close, op, Body::None, &[], 422)
        .await;
    c.call("POST", "/v1/periods/9999-12/close", close, op, Body::None, &[], 422)
        .await;
    let late = json!({"meter_id":"rack-a1","flow":"consumed","start":"2021-01-15T13:00:00Z","end":"2021-01-15T13:15:00Z","wh":"1000","event_id":"a1a1a1a1-0000-4000-8000-000000000001"});
    c.call("POST", "/v1/readings", "/v1/readings", op, Body::Json(late), &[], 201)
        .await;
    let late_corr = json!({"wh":"900","reason":"late fix"});
    c.call(
        "POST",
        "/v1/readings/a1a1a1a1-0000-4000-8000-000000000001/corrections",
        cp,
        op,
        Body::Json(late_corr),
        &[],
        201,
    )
    .await;

    // Malformed, unauthorized, too large, wrong content type.
    c.call(
        "POST",
        "/v1/sites",
        "/v1/sites",
        op,
        Body::Raw("application/json", "{bad".into()),
        &[],
        400,
    )
    .await;
    c.call(
        "POST",
        "/v1/sites",
        "/v1/sites",
        op,
        Body::Raw("application/json", "[1]".into()),
        &[],
        400,
    )
    .await;
    c.call("POST", "/v1/sites", "/v1/sites", None, Body::Json(json!({})), &[], 401)
        .await;
    c.call(
        "POST",
        "/v1/sites",
        "/v1/sites",
        Some("not.a.token"),
        Body::Json(json!({})),
        &[],
        401,
    )
    .await;
    c.call("POST", "/v1/sites", "/v1/sites", au, Body::Json(json!({})), &[], 403)
        .await;
    c.call(
        "POST",
        "/v1/tenants",
        "/v1/tenants",
        op,
        Body::Raw("application/json", "x".repeat(70_000)),
        &[],
        413,
    )
    .await;
    c.call(
        "POST",
        "/v1/meters",
        "/v1/meters",
        op,
        Body::Raw("text/plain", "x".into()),
        &[],
        415,
    )
    .await;
    c.call(
        "POST",
        "/v1/readings",
        "/v1/readings",
        op,
        Body::Raw("text/csv", "x".into()),
        &[],
        415,
    )
    .await;

    // Reads.
    let acct = "/v1/accounts/{account}";
    let mp = format!("?min_position={reading_position}");
    let r = c
        .call(
            "GET",
            &format!("/v1/accounts/tenant:acme-ai{mp}"),
            acct,
            Some(&acme),
            Body::None,
            &[],
            200,
        )
        .await;
    assert_eq!(r.json["normal_side"], "credit");
    for a in [
        "site:memphis-1:bus",
        "issuance",
        "asset:turbine-01",
        "storage:megapack-01",
        "tenant:beta-labs",
    ] {
        c.call("GET", &format!("/v1/accounts/{a}"), acct, au, Body::None, &[], 200)
            .await;
    }
    c.call(
        "GET",
        "/v1/accounts/tenant:beta-labs",
        acct,
        Some(&acme),
        Body::None,
        &[],
        403,
    )
    .await;
    c.call("GET", "/v1/accounts/asset:nothing", acct, op, Body::None, &[], 404)
        .await;
    c.call("GET", "/v1/accounts/bogus", acct, op, Body::None, &[], 422)
        .await;
    c.call(
        "GET",
        "/v1/accounts/issuance",
        acct,
        Some(&gt_meter),
        Body::None,
        &[],
        403,
    )
    .await;
    c.call(
        "GET",
        "/v1/accounts/issuance?min_position=1000000000",
        acct,
        op,
        Body::None,
        &[],
        422,
    )
    .await;

    let st = "/v1/tenants/{tenant_id}/statements/{period}";
    let r = c
        .call(
            "GET",
            &format!("/v1/tenants/acme-ai/statements/{period}"),
            st,
            Some(&acme),
            Body::None,
            &[],
            200,
        )
        .await;
    assert!(r.json["lines"].as_array().unwrap().len() >= 3);
    let r = c
        .call(
            "GET",
            "/v1/tenants/acme-ai/statements/2021-01",
            st,
            au,
            Body::None,
            &[],
            200,
        )
        .await;
    assert_eq!(r.json["final"], true);
    let r = c
        .call(
            "GET",
            "/v1/tenants/acme-ai/statements/2021-02",
            st,
            op,
            Body::None,
            &[],
            200,
        )
        .await;
    let kinds: Vec<&str> = r.json["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["adjustment", "adjustment"]);
    let r = c
        .call(
            "GET",
            &format!("/v1/tenants/acme-ai/statements/{period}?format=csv"),
            st,
            op,
            Body::None,
            &[],
            200,
        )
        .await;
    assert!(r.text.starts_with("tenant_id,period,kind,"));
    let r = c
        .call(
            "GET",
            &format!("/v1/tenants/acme-ai/statements/{period}"),
            st,
            op,
            Body::None,
            &[("accept", "text/html")],
            200,
        )
        .await;
    assert!(r.text.contains("<"));
    c.call(
        "GET",
        &format!("/v1/tenants/acme-ai/statements/{period}?format=pdf"),
        st,
        op,
        Body::None,
        &[],
        422,
    )
    .await;
    c.call(
        "GET",
        "/v1/tenants/acme-ai/statements/2026-1",
        st,
        op,
        Body::None,
        &[],
        422,
    )
    .await;
    c.call(
        "GET",
        &format!("/v1/tenants/nobody/statements/{period}"),
        st,
        op,
        Body::None,
        &[],
        404,
    )
    .await;
    c.call(
        "GET",
        &format!("/v1/tenants/acme-ai/statements/{period}"),
        st,
        Some(&beta),
        Body::None,
        &[],
        403,
    )
    .await;

    let eb = "/v1/sites/{site_id}/energy-balance";
    let range = format!("?from={}&to={}", t(at(11, 0)), t(at(14, 0)));
    let r = c
        .call(
            "GET",
            &format!("/v1/sites/memphis-1/energy-balance{range}"),
            eb,
            au,
            Body::None,
            &[],
            200,
        )
        .await;
    assert!(!r.json["intervals"].as_array().unwrap().is_empty());
    c.call(
        "GET",
        "/v1/sites/memphis-1/energy-balance",
        eb,
        op,
        Body::None,
        &[],
        200,
    )
    .await;
    c.call(
        "GET",
        &format!("/v1/sites/nowhere/energy-balance{range}"),
        eb,
        op,
        Body::None,
        &[],
        404,
    )
    .await;
    c.call(
        "GET",
        "/v1/sites/memphis-1/energy-balance?from=yesterday",
        eb,
        op,
        Body::None,
        &[],
        422,
    )
    .await;
    c.call(
        "GET",
        "/v1/sites/memphis-1/energy-balance",
        eb,
        Some(&acme),
        Body::None,
        &[],
        403,
    )
    .await;

    let se = "/v1/settlements/{period}";
    let r = c
        .call(
            "GET",
            &format!("/v1/settlements/{period}"),
            se,
            au,
            Body::None,
            &[],
            200,
        )
        .await;
    assert!(!r.json["accounts"].as_array().unwrap().is_empty());
    c.call("GET", "/v1/settlements/2021-01", se, op, Body::None, &[], 200)
        .await;
    c.call("GET", "/v1/settlements/november", se, op, Body::None, &[], 422)
        .await;
    c.call("GET", "/v1/settlements/2021-01", se, Some(&acme), Body::None, &[], 403)
        .await;

    let r = c
        .call("GET", "/v1/storage", "/v1/storage", au, Body::None, &[], 200)
        .await;
    assert_eq!(r.json["batteries"][0]["asset_id"], "megapack-01");
    c.call(
        "GET",
        "/v1/storage",
        "/v1/storage",
        Some(&site_meter),
        Body::None,
        &[],
        403,
    )
    .await;

    // The log.
    let sp = "/v1/streams/{stream}";
    let r = c
        .call("GET", "/v1/streams/meter-rack-a1?limit=1", sp, au, Body::None, &[], 200)
        .await;
    assert_eq!(r.json["next_version"], 2);
    c.call(
        "GET",
        "/v1/streams/meter-rack-a1?from_version=2&limit=1000",
        sp,
        op,
        Body::None,
        &[],
        200,
    )
    .await;
    c.call("GET", "/v1/streams/nothing-here", sp, op, Body::None, &[], 404)
        .await;
    c.call("GET", "/v1/streams/meter-rack-a1?limit=0", sp, op, Body::None, &[], 422)
        .await;
    c.call(
        "GET",
        "/v1/streams/meter-rack-a1",
        sp,
        Some(&acme),
        Body::None,
        &[],
        403,
    )
    .await;
    let r = c
        .call(
            "GET",
            "/v1/events?from_position=2&limit=2",
            "/v1/events",
            au,
            Body::None,
            &[],
            200,
        )
        .await;
    assert_eq!(r.json["next_position"], 4);
    let r = c
        .call("GET", "/v1/events?limit=1000", "/v1/events", op, Body::None, &[], 200)
        .await;
    assert!(r.json.get("next_position").is_none());
    let all = r.json["events"].as_array().unwrap().len();
    assert!(all > 10);
    c.call("GET", "/v1/events?limit=1001", "/v1/events", op, Body::None, &[], 422)
        .await;
    c.call("GET", "/v1/events", "/v1/events", None, Body::None, &[], 401)
        .await;

    let live = "/v1/events/live";
    c.call("GET", live, live, au, Body::None, &[("last-event-id", "x")], 422)
        .await;
    c.call("GET", live, live, Some(&acme), Body::None, &[], 403).await;
    let mut res = app
        .client
        .get(app.url("/v1/events/live?from_position=2"))
        .bearer_auth(app.operator())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert!(c.spec["paths"][live]["get"]["responses"]["200"]["content"]["text/event-stream"].is_object());
    let mut buf = String::new();
    while !buf.contains("\n\n") {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), res.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let event = buf.split("\n\n").next().unwrap();
    let field = |name: &str| {
        event
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(field("id:"), "2");
    assert_eq!(field("event:"), "TenantRegistered");
    let data: Value = serde_json::from_str(&field("data:")).unwrap();
    let errs = schema_errors(&c.spec, "RecordedEvent", &data);
    assert!(
        errs.is_empty(),
        "a live event does not match RecordedEvent: {errs:?}\n{data}"
    );
    drop(res);

    c.call("GET", "/v1/audit", "/v1/audit", op, Body::None, &[], 403).await;
    let r = c.call("GET", "/v1/audit", "/v1/audit", au, Body::None, &[], 200).await;
    assert_eq!(r.json["clean"], true, "{}", r.json);

    // Operations.
    c.call("GET", "/healthz", "/healthz", None, Body::None, &[], 200).await;
    let r = c.call("GET", "/readyz", "/readyz", None, Body::None, &[], 200).await;
    assert_eq!(r.json["head_position"], json!(all));
    let r = c.call("GET", "/metrics", "/metrics", None, Body::None, &[], 200).await;
    assert!(r.text.contains("wattledger_http_requests_total"));
    let r = c
        .call("GET", "/openapi.yaml", "/openapi.yaml", None, Body::None, &[], 200)
        .await;
    assert_eq!(r.status, 200);
    app.stop().await;
}
