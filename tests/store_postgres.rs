//! The store contract on PostgreSQL (skipped, with the reason printed, without
//! `WATTLEDGER_TEST_POSTGRES_URL`), plus what only several writers on one database show.

mod contract;
mod pg;

use std::sync::Arc;
use wattledger::store::postgres::PgStore;
use wattledger::store::{EventStore, ExpectedVersion};

async fn fresh() -> Option<Arc<dyn EventStore>> {
    let base = pg::base_url("a PostgreSQL contract test")?;
    let url = pg::fresh_schema_url(&base).await;
    Some(PgStore::open(&url).await.unwrap())
}

contract_suite!(fresh);

/// Two stores (two "servers") append concurrently to one schema: one gap-free chain, and
/// each one's head watch follows the other's appends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_share_one_gap_free_chain() {
    let Some(base) = pg::base_url("two_writers_share_one_gap_free_chain") else {
        return;
    };
    let url = pg::fresh_schema_url(&base).await;
    let a = PgStore::open(&url).await.unwrap();
    let b = PgStore::open(&url).await.unwrap();
    let mut tasks = Vec::new();
    for (n, s) in [(0, a.clone()), (1, b.clone()), (2, a.clone()), (3, b.clone())] {
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            for v in 0..100u64 {
                let e = contract::ev(&format!(r#"{{"v":{v},"w":{n}}}"#));
                let id = e.event_id;
                let r = s
                    .append(contract::batch(&format!("w-{n}"), ExpectedVersion::at(v), vec![e]))
                    .wait()
                    .await
                    .unwrap();
                acks.push((r.recorded[0].0, id));
            }
            acks
        }));
    }
    let mut acks = Vec::new();
    for t in tasks {
        acks.extend(t.await.unwrap());
    }
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = a.read_all(after, 1000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.position;
        all.extend(page);
    }
    assert_eq!(all.len(), 400);
    contract::assert_sound_chain(&all);
    for (pos, id) in acks {
        assert_eq!(all[pos as usize - 1].event_id, id);
    }
    // Each store's head watch reaches the common head (b's through NOTIFY or its own writes).
    for s in [&a, &b] {
        let mut w = s.watch_head();
        tokio::time::timeout(std::time::Duration::from_secs(5), w.wait_for(|h| *h == 400))
            .await
            .expect("the head watch follows the other writer")
            .unwrap();
    }
    // A stream version conflict between the two writers is refused at the database.
    let e = b
        .append(contract::batch(
            "w-0",
            ExpectedVersion::Exact(99),
            vec![contract::ev("{}")],
        ))
        .wait()
        .await
        .unwrap_err();
    assert!(
        matches!(e, wattledger::store::StoreError::VersionConflict { actual: 100, .. }),
        "{e}"
    );
}

#[tokio::test]
async fn migrations_run_twice_and_concurrently() {
    let Some(base) = pg::base_url("migrations_run_twice_and_concurrently") else {
        return;
    };
    let url = pg::fresh_schema_url(&base).await;
    let (a, b) = tokio::join!(PgStore::open(&url), PgStore::open(&url));
    a.unwrap();
    b.unwrap();
    PgStore::open(&url).await.unwrap();
}

#[tokio::test]
async fn a_bad_url_is_a_clear_error_without_the_password() {
    let e = match PgStore::open("postgres://alice:s3cret@127.0.0.1:1/none?pool_max_connections=0").await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("pool_max_connections=0 is refused"),
    };
    assert!(e.contains("pool_max_connections"), "{e}");
    assert!(!e.contains("s3cret"), "{e}");
    let e = match PgStore::open("postgres://alice:s3cret@127.0.0.1:1/none").await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("nothing listens on port 1"),
    };
    assert!(e.contains("cannot connect"), "{e}");
    assert!(!e.contains("s3cret"), "{e}");
}

/// TLS as PostgreSQL users expect it: `sslmode=require` encrypts; `verify-full` refuses a
/// server certificate no trusted authority signed (the local cluster's is self-signed).
#[tokio::test]
async fn sslmode_in_the_url_is_honoured() {
    let Some(base) = pg::base_url("sslmode_in_the_url_is_honoured") else {
        return;
    };
    let url = pg::fresh_schema_url(&base).await;
    let tls: Option<bool> = {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&format!("{url}&sslmode=require"))
            .await
            .ok();
        match c.as_mut() {
            Some(c) => sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .fetch_one(c)
                .await
                .ok(),
            None => None,
        }
    };
    if tls != Some(true) {
        eprintln!("skipped sslmode_in_the_url_is_honoured: the test server does not offer TLS");
        return;
    }
    let s = PgStore::open(&format!("{url}&sslmode=require")).await.unwrap();
    s.append(contract::batch(
        "tls",
        ExpectedVersion::NoStream,
        vec![contract::ev("{}")],
    ))
    .wait()
    .await
    .unwrap();
    let e = PgStore::open(&format!("{url}&sslmode=verify-full"))
        .await
        .err()
        .expect("refused");
    assert!(e.to_string().contains("cannot connect"), "{e}");
}

/// A writer trusts what it knows of the streams only while nobody else wrote: after another
/// writer appended to its stream, it sees the new version (and the other's event ids).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_sees_what_another_wrote_to_its_stream() {
    let Some(base) = pg::base_url("a_writer_sees_what_another_wrote_to_its_stream") else {
        return;
    };
    let url = pg::fresh_schema_url(&base).await;
    let (a, b) = (PgStore::open(&url).await.unwrap(), PgStore::open(&url).await.unwrap());
    let append = |s: &Arc<PgStore>, expected, e| {
        let s = s.clone();
        async move { s.append(contract::batch("s", expected, vec![e])).wait().await }
    };
    append(&a, ExpectedVersion::NoStream, contract::ev("{}")).await.unwrap();
    append(&a, ExpectedVersion::Exact(1), contract::ev("{}")).await.unwrap();
    let theirs = contract::ev(r#"{"b":1}"#);
    append(&b, ExpectedVersion::Exact(2), theirs.clone()).await.unwrap();
    // `a` last knew version 2: it must not accept 2 again, and must accept 3.
    let stale = append(&a, ExpectedVersion::Exact(2), contract::ev("{}")).await;
    assert!(
        matches!(
            stale,
            Err(wattledger::store::StoreError::VersionConflict { actual: 3, .. })
        ),
        "{stale:?}"
    );
    append(&a, ExpectedVersion::Exact(3), contract::ev("{}")).await.unwrap();
    // The other writer's event, sent again through `a`, is a duplicate of it.
    let again = append(&a, ExpectedVersion::Exact(2), theirs).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.recorded, vec![(3, 3)]);
    // And `a`'s own: a retry after it wrote more is recognised too.
    let mine = contract::ev(r#"{"a":5}"#);
    append(&a, ExpectedVersion::Exact(4), mine.clone()).await.unwrap();
    append(&a, ExpectedVersion::Exact(5), contract::ev("{}")).await.unwrap();
    let again = append(&a, ExpectedVersion::Exact(4), mine).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.recorded, vec![(5, 5)]);
    assert_eq!(a.head().await.unwrap().position, 6);
}
