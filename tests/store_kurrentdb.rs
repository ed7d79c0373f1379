//! The store contract on KurrentDB / EventStoreDB (feature `kurrentdb`), plus what only a live
//! server shows: the subscription's start boundary, a reader following the writer, the
//! writer lease, and a wrong expected version resolved from the stream's tail.
//!
//! Every test that needs a server reads `WATTLEDGER_TEST_KURRENTDB_URL` (for example
//! `kurrentdb://admin:changeit@127.0.0.1:2113?tls=false`) and skips, saying so, without it.
//! Each test writes under its own stream prefix, so they run in parallel on one server.

#![cfg(feature = "kurrentdb")]

mod contract;

use std::sync::Arc;
use std::time::Duration;
use wattledger::store::kurrentdb::{KurrentStore, encode, kdb_stream, stage, stream_regex};
use wattledger::store::{Access, EventStore, ExpectedVersion, GENESIS_HASH, StoreError};

fn base_url(test: &str) -> Option<String> {
    match std::env::var("WATTLEDGER_TEST_KURRENTDB_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            eprintln!(
                "SKIPPED {test}: WATTLEDGER_TEST_KURRENTDB_URL is not set (no KurrentDB server here; \
                 e.g. kurrentdb://admin:changeit@127.0.0.1:2113?tls=false)"
            );
            None
        }
    }
}

/// The test URL with a fresh stream prefix (and a short lease, so takeovers are quick).
fn fresh_url(base: &str) -> (String, String) {
    let prefix = format!("t{}-", uuid::Uuid::new_v4().simple());
    let sep = if base.contains('?') { '&' } else { '?' };
    (format!("{base}{sep}streamPrefix={prefix}&leaseTtlMs=2000"), prefix)
}

async fn fresh() -> Option<Arc<dyn EventStore>> {
    let base = base_url("a KurrentDB contract test")?;
    let (url, _) = fresh_url(&base);
    Some(KurrentStore::open(&url, Access::Write).await.unwrap())
}

contract_suite!(fresh);

fn client(base: &str) -> kurrentdb::Client {
    kurrentdb::Client::new(base.parse().unwrap()).unwrap()
}

async fn all_of(store: &dyn EventStore) -> Vec<wattledger::store::RecordedEvent> {
    let mut out = Vec::new();
    loop {
        let page = store.read_all(out.len() as u64, 1000).await.unwrap();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// A catch-up subscription to `$all` started at an event's position delivers the events
/// after it, not the event itself (the client's start positions are exclusive).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_start_position_is_exclusive() {
    let Some(base) = base_url("subscription_start_position_is_exclusive") else {
        return;
    };
    let (url, prefix) = fresh_url(&base);
    let store = KurrentStore::open(&url, Access::Write).await.unwrap();
    for i in 0..3 {
        store
            .append(contract::batch(
                "b",
                ExpectedVersion::Any,
                vec![contract::ev(&format!(r#"{{"i":{i}}}"#))],
            ))
            .wait()
            .await
            .unwrap();
    }
    let c = client(&base);
    let filter = || kurrentdb::SubscriptionFilter::on_stream_name().regex(stream_regex(&prefix));
    let mut s = c
        .read_all(&kurrentdb::ReadAllOptions::default().filter(filter()).max_count(3))
        .await
        .unwrap();
    let mut at = Vec::new();
    while let Some(e) = s.next().await.unwrap() {
        at.push((e.get_original_event().id, e.get_original_event().position));
    }
    assert_eq!(at.len(), 3);
    let mut sub = c
        .subscribe_to_all(
            &kurrentdb::SubscribeToAllOptions::default()
                .position(kurrentdb::StreamPosition::Position(at[1].1))
                .filter(filter()),
        )
        .await;
    let first = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("an event arrives")
        .unwrap();
    assert_eq!(
        first.get_original_event().id,
        at[2].0,
        "the subscription starts after the given position"
    );
    store.shutdown().await;
}

/// A read-only store (another process: `audit`, `statement`) follows the writer through its
/// subscription, sees one sound chain, and cannot append.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_follows_the_writer() {
    let Some(base) = base_url("a_reader_follows_the_writer") else {
        return;
    };
    let (url, _) = fresh_url(&base);
    let writer = KurrentStore::open(&url, Access::Write).await.unwrap();
    writer
        .append(contract::batch(
            "r",
            ExpectedVersion::NoStream,
            vec![contract::ev("{}")],
        ))
        .wait()
        .await
        .unwrap();
    let reader = KurrentStore::open(&url, Access::Read).await.unwrap();
    assert_eq!(reader.head().await.unwrap().position, 1);
    for v in 1..20u64 {
        writer
            .append(contract::batch(
                "r",
                ExpectedVersion::Exact(v),
                vec![contract::ev(&format!(r#"{{"v":{v}}}"#))],
            ))
            .wait()
            .await
            .unwrap();
    }
    let mut w = reader.watch_head();
    tokio::time::timeout(Duration::from_secs(10), w.wait_for(|h| *h == 20))
        .await
        .expect("the reader's subscription follows the writer")
        .unwrap();
    let all = all_of(reader.as_ref()).await;
    assert_eq!(all.len(), 20);
    contract::assert_sound_chain(&all);
    assert_eq!(reader.head().await.unwrap(), writer.head().await.unwrap());
    let e = reader
        .append(contract::batch("r", ExpectedVersion::Any, vec![contract::ev("{}")]))
        .wait()
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Invalid(_)), "{e}");
    writer.shutdown().await;
    reader.shutdown().await;
}

/// One writer at a time: a second one is refused while the first renews its lease, and takes
/// over at once when the first releases it on shutdown; the chain goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_writer_holds_the_lease() {
    let Some(base) = base_url("one_writer_holds_the_lease") else {
        return;
    };
    let (url, _) = fresh_url(&base);
    let first = KurrentStore::open(&url, Access::Write).await.unwrap();
    first
        .append(contract::batch(
            "l",
            ExpectedVersion::NoStream,
            vec![contract::ev("{}")],
        ))
        .wait()
        .await
        .unwrap();
    let e = match KurrentStore::open(&url, Access::Write).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a second writer is refused while the lease is renewed"),
    };
    assert!(e.contains("holds the writer lease"), "{e}");
    first.shutdown().await;
    let started = std::time::Instant::now();
    let second = KurrentStore::open(&url, Access::Write).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a released lease is taken at once"
    );
    let r = second
        .append(contract::batch(
            "l",
            ExpectedVersion::Exact(1),
            vec![contract::ev("{}")],
        ))
        .wait()
        .await
        .unwrap();
    assert_eq!(r.recorded, vec![(2, 2)]);
    contract::assert_sound_chain(&all_of(second.as_ref()).await);
    second.shutdown().await;
}

/// The writer's index is behind the server (here: an event appended behind its back, as an
/// earlier append of ours that landed late would be). Its next append gets a wrong expected
/// version; it reads the tail: the same batch is a duplicate with its original result, other
/// events are a version conflict, and the chain stays one chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_expected_version_is_resolved_from_the_tail() {
    let Some(base) = base_url("a_wrong_expected_version_is_resolved_from_the_tail") else {
        return;
    };
    let (url, prefix) = fresh_url(&base);
    let store = KurrentStore::open(&url, Access::Write).await.unwrap();
    let first = store
        .append(contract::batch(
            "w",
            ExpectedVersion::NoStream,
            vec![contract::ev("{}")],
        ))
        .wait()
        .await
        .unwrap();
    assert_eq!(first.recorded, vec![(1, 1)]);
    let head = store.head().await.unwrap();
    // The record the writer would make next, appended directly.
    let late = contract::ev(r#"{"late":true}"#);
    let rec = stage(
        &contract::batch("w", ExpectedVersion::Any, vec![late.clone()]),
        1,
        1,
        &head.hash,
    );
    let (id, ty, data, meta) = encode(&rec[0]);
    let raw: Box<serde_json::value::RawValue> = serde_json::from_slice(&data).unwrap();
    let ev = kurrentdb::EventData::json(&ty, &raw)
        .unwrap()
        .id(id)
        .metadata(meta.into());
    client(&base)
        .append_to_stream(
            kdb_stream(&prefix, "w"),
            &kurrentdb::AppendToStreamOptions::default().stream_state(kurrentdb::StreamState::StreamRevision(0)),
            ev,
        )
        .await
        .unwrap();
    // The retry of that event: its original result.
    let again = store
        .append(contract::batch("w", ExpectedVersion::Exact(1), vec![late.clone()]))
        .wait()
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.recorded, vec![(2, 2)]);
    // Another event decided on the stale version: a conflict naming the real one.
    let e = store
        .append(contract::batch(
            "w",
            ExpectedVersion::Exact(1),
            vec![contract::ev("{}")],
        ))
        .wait()
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::VersionConflict { actual: 2, .. }), "{e}");
    let next = store
        .append(contract::batch(
            "w",
            ExpectedVersion::Exact(2),
            vec![contract::ev("{}")],
        ))
        .wait()
        .await
        .unwrap();
    assert_eq!(next.recorded, vec![(3, 3)]);
    let all = all_of(store.as_ref()).await;
    assert_eq!(all.len(), 3);
    contract::assert_sound_chain(&all);
    assert_eq!(all[0].prev_hash, GENESIS_HASH);
    store.shutdown().await;
}

/// Needs no server: a URL error names the URL without its password, and an unreachable
/// server is a clear error, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_urls_and_unreachable_servers_are_clear_errors() {
    for url in [
        "kurrentdb://alice:s3cret@127.0.0.1:1?leaseTtlMs=5",
        "esdb://alice:s3cret@127.0.0.1:1?nodePreference=nearest",
    ] {
        let e = match wattledger::store::open(url, Access::Write).await {
            Err(e) => e,
            Ok(_) => panic!("{url} is refused"),
        };
        assert!(matches!(e, StoreError::Invalid(_)), "{e}");
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }
    let url = "kurrentdb://alice:s3cret@127.0.0.1:1?tls=false&maxDiscoverAttempts=1";
    let e = tokio::time::timeout(Duration::from_secs(60), wattledger::store::open(url, Access::Read))
        .await
        .expect("an unreachable server is answered, not waited for forever")
        .err()
        .expect("nothing listens on port 1");
    assert!(matches!(e, StoreError::Unavailable(_)), "{e}");
    assert!(!e.to_string().contains("s3cret"), "{e}");
}
