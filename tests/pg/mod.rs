//! PostgreSQL test databases: one fresh schema per test, so tests run in parallel.

#![allow(dead_code)]

/// The base URL from `WATTLEDGER_TEST_POSTGRES_URL`, or `None` (with the reason printed).
pub fn base_url(test: &str) -> Option<String> {
    match std::env::var("WATTLEDGER_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            eprintln!("skipped {test}: WATTLEDGER_TEST_POSTGRES_URL is not set (.ci/run sets it)");
            None
        }
    }
}

/// Creates a fresh schema and returns a store URL whose connections use it.
pub async fn fresh_schema_url(base: &str) -> String {
    use sqlx::Connection;
    let schema = format!("wl_test_{}", uuid::Uuid::new_v4().simple());
    let mut c = sqlx::PgConnection::connect(base)
        .await
        .expect("connect to the test database");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut c)
        .await
        .unwrap();
    c.close().await.ok();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}

/// The schema a URL made by [`fresh_schema_url`] uses.
pub fn schema_of(url: &str) -> &str {
    url.rsplit_once("search_path%3D")
        .map(|(_, s)| s.split('&').next().unwrap_or(s))
        .expect("a URL made by fresh_schema_url")
}

/// Copies the schema of `from` (a URL made by [`fresh_schema_url`]) — its tables with their
/// constraints and rows — into a fresh schema, and returns a store URL that uses the copy.
pub async fn copy_schema_url(base: &str, from: &str) -> String {
    use sqlx::{Connection, Row};
    let old = schema_of(from).to_string();
    let url = fresh_schema_url(base).await;
    let new = schema_of(&url).to_string();
    let mut c = sqlx::PgConnection::connect(base)
        .await
        .expect("connect to the test database");
    let tables: Vec<String> =
        sqlx::query("SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1")
            .bind(&old)
            .fetch_all(&mut c)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
    assert!(!tables.is_empty(), "schema {old} has no tables");
    for t in tables {
        sqlx::query(&format!(
            "CREATE TABLE {new}.\"{t}\" (LIKE {old}.\"{t}\" INCLUDING ALL)"
        ))
        .execute(&mut c)
        .await
        .unwrap();
        sqlx::query(&format!("INSERT INTO {new}.\"{t}\" SELECT * FROM {old}.\"{t}\""))
            .execute(&mut c)
            .await
            .unwrap();
    }
    c.close().await.ok();
    url
}
