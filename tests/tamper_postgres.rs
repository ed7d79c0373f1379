//! The tamper cases (`tests/tamper_cases`) on PostgreSQL (skipped, with the reason printed,
//! without `WATTLEDGER_TEST_POSTGRES_URL`): each store is its own schema, each copy a new
//! schema with the same tables, constraints and rows, changed with plain SQL as the database
//! user the store connects as. The schema has no triggers or rules guarding `events` (its
//! constraints — primary key, unique event id and stream version — shape what a tamperer must
//! do, e.g. renumber in one transaction to insert a row, but refuse none of it), so no
//! trigger needs disabling. Plus `GET /v1/audit` of a running server over a database changed
//! under it.

mod pg;
mod support;
#[macro_use]
mod tamper_cases;

use serde_json::Value;
use sqlx::{Connection, PgConnection, Row as _};
use std::path::Path;
use std::time::Duration;
use tamper_cases::{Backend, Db, Row};
use wattledger::api::auth::{AuthConfig, Role};
use wattledger::domain::time::{fmt_time, parse_time};
use wattledger::store::canonical_json;

struct Pg {
    base: String,
}

fn postgres(test: &str) -> Option<Pg> {
    Some(Pg {
        base: pg::base_url(test)?,
    })
}

/// Runs the future `make` gives to completion on a runtime of its own, on a thread of its
/// own (so that it works whether or not the caller is inside a runtime).
fn block<T: Send, F: std::future::Future<Output = T>>(make: impl FnOnce() -> F + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(make())
        })
        .join()
        .expect("the database work panicked")
    })
}

impl Backend for Pg {
    fn new_store(&self, _dir: &Path) -> String {
        block(|| pg::fresh_schema_url(&self.base))
    }

    fn copy_store(&self, from: &str, _dir: &Path) -> String {
        block(|| pg::copy_schema_url(&self.base, from))
    }

    fn open_db(&self, url: &str) -> Box<dyn Db + '_> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let conn = rt.block_on(PgConnection::connect(url)).expect("connect to the copy");
        Box::new(PgDb { rt, conn: Some(conn) })
    }
}

/// A connection to the store's schema, with the runtime it lives on (the caller is not in a
/// runtime: the cases are synchronous). Closed on drop.
struct PgDb {
    rt: tokio::runtime::Runtime,
    conn: Option<PgConnection>,
}

impl PgDb {
    fn with<T>(&mut self, f: impl AsyncFnOnce(&mut PgConnection) -> T) -> T {
        self.rt.block_on(f(self.conn.as_mut().expect("open")))
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            self.rt.block_on(c.close()).ok();
        }
    }
}

fn to_row(r: &sqlx::postgres::PgRow) -> Row {
    let data: String = r.get("data");
    let at: chrono::DateTime<chrono::Utc> = r.get("recorded_at");
    Row {
        position: r.get("position"),
        stream: r.get("stream"),
        version: r.get("version"),
        event_id: r.get::<uuid::Uuid, _>("event_id").to_string(),
        event_type: r.get("event_type"),
        schema_version: r.get::<i32, _>("schema_version") as i64,
        recorded_at: fmt_time(&at),
        data: canonical_json(&serde_json::from_str::<Value>(&data).unwrap()),
        hash: r.get("hash"),
        prev_hash: r.get("prev_hash"),
    }
}

impl Db for PgDb {
    fn data_at(&mut self, position: u64) -> String {
        let text: String = self.with(async |c| {
            sqlx::query_scalar("SELECT data::text FROM events WHERE position = $1")
                .bind(position as i64)
                .fetch_one(c)
                .await
                .unwrap()
        });
        canonical_json(&serde_json::from_str::<Value>(&text).unwrap())
    }

    fn set_data(&mut self, position: u64, data: &str) -> u64 {
        self.with(async |c| {
            sqlx::query("UPDATE events SET data = $1::text::jsonb WHERE position = $2")
                .bind(data)
                .bind(position as i64)
                .execute(c)
                .await
                .unwrap()
                .rows_affected()
        })
    }

    fn event_type_at(&mut self, position: u64) -> String {
        self.with(async |c| {
            sqlx::query_scalar("SELECT event_type FROM events WHERE position = $1")
                .bind(position as i64)
                .fetch_one(c)
                .await
                .unwrap()
        })
    }

    fn delete_positions(&mut self, first: u64, last: u64) -> u64 {
        self.with(async |c| {
            sqlx::query("DELETE FROM events WHERE position BETWEEN $1 AND $2")
                .bind(first as i64)
                .bind(last as i64)
                .execute(c)
                .await
                .unwrap()
                .rows_affected()
        })
    }

    fn rows(&mut self) -> Vec<Row> {
        self.with(async |c| {
            sqlx::query("SELECT position, stream, version, event_id, event_type, schema_version, recorded_at, data::text AS data, hash, prev_hash FROM events ORDER BY position")
                .fetch_all(c)
                .await
                .unwrap()
                .iter()
                .map(to_row)
                .collect()
        })
    }

    fn replace_rows(&mut self, rows: &[Row]) {
        self.with(async |c| {
            let mut tx = c.begin().await.unwrap();
            sqlx::query("DELETE FROM events").execute(&mut *tx).await.unwrap();
            for r in rows {
                sqlx::query(
                    "INSERT INTO events (position, stream, version, event_id, event_type, schema_version, recorded_at, data, hash, prev_hash) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text::jsonb, $9, $10)",
                )
                .bind(r.position)
                .bind(&r.stream)
                .bind(r.version)
                .bind(uuid::Uuid::parse_str(&r.event_id).unwrap())
                .bind(&r.event_type)
                .bind(r.schema_version as i32)
                .bind(parse_time(&r.recorded_at).unwrap())
                .bind(&r.data)
                .bind(&r.hash)
                .bind(&r.prev_hash)
                .execute(&mut *tx)
                .await
                .unwrap();
            }
            tx.commit().await.unwrap();
        })
    }
}

tamper_suite!(postgres);

/// The HS256 secret the test server verifies with (not a real secret).
const SECRET: &str = "tamper-test-secret-0123456789-abcdefghijklmnopq";

/// A server runs over the store while a row of its log is edited in the database under it:
/// `GET /v1/audit` (which replays the log as it is in the database now) names the edited
/// position first.
#[test]
fn get_audit_of_a_running_server_names_the_first_bad_position() {
    let Some(backend) = postgres("get_audit_of_a_running_server_names_the_first_bad_position") else {
        return;
    };
    let b = tamper_cases::build(&backend);
    let store = b.fresh_copy("served", true);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut cmd = support::process::command();
    cmd.env("WATTLEDGER_JWT_SECRET", SECRET).current_dir(&store.dir);
    let server = rt.block_on(support::process::serve(
        cmd,
        support::process::Start {
            dir: &store.dir,
            log_name: "serve.log",
            store: &store.url,
            extra_args: &[],
            ready_path: "/readyz",
            wait: Duration::from_secs(60),
        },
    ));
    let auditor = AuthConfig::hs256(SECRET.as_bytes(), "test")
        .unwrap()
        .mint(support::claims(Role::Auditor, None, None, None, 3600))
        .unwrap();
    let client = reqwest::Client::new();
    let get_audit = || {
        rt.block_on(async {
            let res = client
                .get(server.url("/v1/audit"))
                .bearer_auth(&auditor)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            let body: Value = res.json().await.unwrap();
            support::assert_matches_spec("GET", "/v1/audit", 200, "application/json", &body);
            body
        })
    };

    let before = get_audit();
    assert_eq!(before["clean"], Value::Bool(true), "{before}");
    assert_eq!(before["head_position"].as_u64(), Some(tamper_cases::HEAD));

    b.tamper(&store, |db| tamper_cases::change_a_digit(db, tamper_cases::EDITED));
    let after = get_audit();
    assert_eq!(after["clean"], Value::Bool(false), "{after}");
    assert_eq!(
        after["first_failing_position"].as_u64(),
        Some(tamper_cases::EDITED),
        "{after}"
    );
    assert!(tamper_cases::has(&after, tamper_cases::EDITED, "hash"), "{after}");
    // The server's live projections still hold the reading as it was recorded; a replay of
    // the edited log does not reach them.
    assert!(tamper_cases::has(&after, tamper_cases::HEAD, "projection"), "{after}");
    drop(server);
}
