//! Black-box test support: start the real application on a random loopback port, mint
//! tokens, and hold response bodies against the schemas in `api.yaml`.

#![allow(dead_code)]

pub mod process;

use serde_json::Value;
use std::sync::{Arc, OnceLock};
use wattledger::api::auth::{AuthConfig, Claims, Role};
use wattledger::api::{RunningServer, start};
use wattledger::ledger::{Clock, Ledger, SystemClock};
use wattledger::projections::engine::Projections;
use wattledger::store::sqlite::SqliteStore;

/// The HS256 secret of test servers (not a real secret).
pub const TEST_SECRET: &str = "test-secret-test-secret-test-secret-0123456789";

pub struct App {
    pub base: String,
    pub client: reqwest::Client,
    pub server: Option<RunningServer>,
    pub auth: AuthConfig,
    pub dir: tempfile::TempDir,
}

impl App {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn token(&self, role: Role, tenant: Option<&str>, sites: Option<&[&str]>, meters: Option<&[&str]>) -> String {
        self.auth.mint(claims(role, tenant, sites, meters, 3600)).unwrap()
    }

    pub fn operator(&self) -> String {
        self.token(Role::Operator, None, None, None)
    }

    pub fn auditor(&self) -> String {
        self.token(Role::Auditor, None, None, None)
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await.unwrap();
        }
    }
}

pub fn claims(role: Role, tenant: Option<&str>, sites: Option<&[&str]>, meters: Option<&[&str]>, ttl_s: i64) -> Claims {
    let now = chrono::Utc::now().timestamp();
    Claims {
        sub: format!("test-{role:?}"),
        role,
        exp: (now + ttl_s).max(0) as u64,
        iat: Some(now as u64),
        tenant_id: tenant.map(str::to_string),
        sites: sites.map(|s| s.iter().map(|x| x.to_string()).collect()),
        meters: meters.map(|s| s.iter().map(|x| x.to_string()).collect()),
        iss: None,
        aud: None,
    }
}

/// Starts the application on `127.0.0.1:0` over a fresh SQLite store, with HS256.
pub async fn spawn_app() -> App {
    spawn_app_with(
        AuthConfig::hs256(TEST_SECRET.as_bytes(), "test").unwrap(),
        Arc::new(SystemClock),
    )
    .await
}

pub async fn spawn_app_with(auth: AuthConfig, clock: Arc<dyn Clock>) -> App {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("w.db")).await.unwrap();
    let ledger = Ledger::open(store.clone(), clock).await.unwrap();
    let projections = Projections::open(store, Some(dir.path().join("w.db.snapshot.json")))
        .await
        .unwrap();
    let server = start("127.0.0.1:0", ledger, projections, auth.clone()).await.unwrap();
    App {
        base: format!("http://{}", server.addr),
        client: reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .unwrap(),
        server: Some(server),
        auth,
        dir,
    }
}

fn spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/api.yaml")).unwrap();
        let y: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        serde_json::to_value(y).unwrap()
    })
}

/// Checks a JSON response body against the schema `api.yaml` gives for `method path status`
/// (`path` as written in the spec, e.g. `/v1/accounts/{account}`). Panics with every
/// violation when it does not match, or when the spec has no schema for that response.
pub fn assert_matches_spec(method: &str, path: &str, status: u16, content_type: &str, body: &Value) {
    let spec = spec();
    let op = &spec["paths"][path][method.to_ascii_lowercase()];
    assert!(op.is_object(), "api.yaml has no {method} {path}");
    let responses = &op["responses"];
    let mut resp = &responses[status.to_string()];
    if resp.is_null() {
        resp = &responses["default"];
    }
    assert!(
        resp.is_object(),
        "api.yaml has no {status} response for {method} {path}"
    );
    // Follow a $ref to components/responses.
    let resp = match resp.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.rsplit('/').next().unwrap();
            &spec["components"]["responses"][name]
        }
        None => resp,
    };
    let schema = &resp["content"][content_type]["schema"];
    assert!(
        schema.is_object(),
        "api.yaml has no {content_type} schema for {status} of {method} {path}"
    );
    let root = serde_json::json!({"$schema": "https://json-schema.org/draft/2020-12/schema", "allOf": [schema], "components": spec["components"]});
    let validator =
        jsonschema::draft202012::new(&root).unwrap_or_else(|e| panic!("schema of {method} {path} {status}: {e}"));
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {path} {status} body does not match api.yaml:\n{}\nbody: {body}",
        errors.join("\n")
    );
}

/// Runs a command through the ledger that must be refused with `code` on `field`, with a
/// message naming the field, and checks that it appended nothing. Returns the message.
pub async fn assert_refused(ledger: &Ledger, c: Value, code: wattledger::domain::Code, field: &str) -> String {
    let head = || async { ledger.store().head().await.unwrap().position };
    let before = head().await;
    let r = match ledger.execute_json(&c).await {
        Err(wattledger::ledger::CommandError::Rejected(r)) => r,
        other => panic!("{c} should be refused, got {other:?}"),
    };
    assert_eq!(r.code, code, "{c}: {}", r.message);
    assert_eq!(r.field.as_deref(), Some(field), "{c}: {}", r.message);
    assert!(r.message.contains(field), "the message names the field: {}", r.message);
    assert_eq!(head().await, before, "a refused command appends nothing");
    r.message
}

/// An HTTP answer as the tests read it: status, media type (lower case, without parameters),
/// `Retry-After`, body text, and the body as JSON (`Null` when it is not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub retry_after: Option<String>,
    pub text: String,
    pub json: Value,
}

pub async fn read_reply(res: reqwest::Response) -> Reply {
    let header = |name: &str| {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let status = res.status().as_u16();
    let retry_after = header("retry-after");
    let content_type = header("content-type")
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let text = res.text().await.unwrap_or_default();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        status,
        content_type,
        retry_after,
        text,
        json,
    }
}
