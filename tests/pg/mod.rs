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
