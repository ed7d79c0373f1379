//! The store contract on KurrentDB / EventStoreDB (feature `kurrentdb`), twice: against a live
//! server, and against `FakeServer`, an in-memory stand-in with the semantics the store relies
//! on (see its documentation). Plus, on both: the subscription's start boundary (live only), a
//! reader following the writer, the writer lease, a wrong expected version resolved from the
//! stream's tail; and on the fake only, the faults a live server cannot be made to produce on
//! demand (a lost answer, a failed leader, a dropped subscription, a forked log).
//!
//! Every test that needs a server reads `WATTLEDGER_TEST_KURRENTDB_URL` (for example
//! `kurrentdb://admin:changeit@127.0.0.1:2113?tls=false`) and skips, saying so, without it.
//! Each test writes under its own stream prefix, so they run in parallel on one server.

#![cfg(feature = "kurrentdb")]

mod contract;

use std::sync::Arc;
use std::time::Duration;
use wattledger::store::kurrentdb::fake::{FakeServer, Fault};
use wattledger::store::kurrentdb::{
    KurrentStore, LEASE_STREAM_SUFFIX, NewEvent, Server, encode, kdb_stream, stream_regex,
};
use wattledger::store::{Access, EventStore, ExpectedVersion, GENESIS_HASH, StoreError, stage};

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

/// Appends one event to a new stream and returns where it was recorded.
async fn append_first(store: &dyn EventStore, stream: &str) -> wattledger::store::Appended {
    store
        .append(contract::batch(
            stream,
            ExpectedVersion::NoStream,
            vec![contract::ev("{}")],
        ))
        .wait()
        .await
        .unwrap()
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
    append_first(writer.as_ref(), "r").await;
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
    append_first(first.as_ref(), "l").await;
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
    let first = append_first(store.as_ref(), "w").await;
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

// ---------------------------------------------------------------------------------------
// On the fake server: always run
// ---------------------------------------------------------------------------------------

const TTL: Duration = Duration::from_millis(1_000);

async fn on_fake(server: &Arc<FakeServer>, access: Access) -> Arc<KurrentStore> {
    KurrentStore::open_with(server.clone(), "wl-", TTL, access)
        .await
        .unwrap()
}

mod fake_server {
    use super::*;

    async fn fresh_fake() -> Option<Arc<dyn EventStore>> {
        let s: Arc<dyn EventStore> = on_fake(&FakeServer::new(), Access::Write).await;
        Some(s)
    }

    contract_suite!(fresh_fake);
}

/// The answer to an append is lost, then the leader fails twice: the caller gets "may or may
/// not be recorded", the failure is counted, and the next append first resolves that batch
/// (recorded after all: counted again, so what was decided in between is fenced) before taking
/// the next position. With or without the server's own de-duplication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_an_append_without_answer_holds_its_position_until_resolved() {
    for dedup in [true, false] {
        let server = FakeServer::new();
        server.dedup.store(dedup, std::sync::atomic::Ordering::SeqCst);
        let store = on_fake(&server, Access::Write).await;
        server.script(&[Fault::LoseAnswer, Fault::Fail, Fault::Fail]);
        let lost = contract::ev(r#"{"lost":1}"#);
        let e = store
            .append(contract::batch("a", ExpectedVersion::NoStream, vec![lost.clone()]))
            .wait()
            .await
            .unwrap_err();
        assert!(
            matches!(e, StoreError::Unavailable(ref m) if m.contains("may or may not")),
            "{e}"
        );
        assert_eq!(store.failures(), 1);
        // Decided before the failure was known: fenced, and the lost batch is resolved first.
        let e = store
            .append(wattledger::store::AppendBatch {
                fence: Some(1),
                ..contract::batch("b", ExpectedVersion::NoStream, vec![contract::ev("{}")])
            })
            .wait()
            .await
            .unwrap_err();
        assert!(
            matches!(e, StoreError::Unavailable(ref m) if m.contains("decided before")),
            "{e}"
        );
        assert_eq!(store.failures(), 2, "recorded after all: counted again");
        let next = store
            .append(wattledger::store::AppendBatch {
                fence: Some(2),
                ..contract::batch("b", ExpectedVersion::NoStream, vec![contract::ev("{}")])
            })
            .wait()
            .await
            .unwrap();
        assert_eq!(next.recorded, vec![(2, 1)]);
        // The client's retry of the lost one is recognised.
        let again = store
            .append(contract::batch("a", ExpectedVersion::NoStream, vec![lost.clone()]))
            .wait()
            .await
            .unwrap();
        assert_eq!((again.recorded, again.duplicate), (vec![(1, 1)], true));
        let all = all_of(store.as_ref()).await;
        assert_eq!(all.len(), 2, "dedup {dedup}: each event once");
        assert_eq!(all[0].event_id, lost.event_id);
        contract::assert_sound_chain(&all);
        store.shutdown().await;
    }
}

/// A lost answer retried at once: recorded once, and answered as this append's own (not a
/// duplicate), whether the server de-duplicates the retry or answers a wrong expected version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_a_lost_answer_retried_at_once_is_recorded_once() {
    for dedup in [true, false] {
        let server = FakeServer::new();
        server.dedup.store(dedup, std::sync::atomic::Ordering::SeqCst);
        let store = on_fake(&server, Access::Write).await;
        server.script(&[Fault::LoseAnswer]);
        let r = append_first(store.as_ref(), "a").await;
        assert_eq!((r.recorded, r.duplicate), (vec![(1, 1)], false), "dedup {dedup}");
        assert_eq!(store.failures(), 0);
        assert_eq!(all_of(store.as_ref()).await.len(), 1);
        store.shutdown().await;
    }
}

/// The writer's index is behind (an event appended behind its back, as a late landing of
/// ours would be): without the server's de-duplication, the wrong expected version is resolved
/// from the tail (a duplicate, with the original result); with it, the server acknowledges the
/// repeat and the record is the same. Either way, other events are a conflict and the chain
/// stays one chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_a_wrong_expected_version_is_resolved_from_the_tail() {
    for dedup in [false, true] {
        let server = FakeServer::new();
        server.dedup.store(dedup, std::sync::atomic::Ordering::SeqCst);
        // Held back, so that the writer's own subscription cannot tell it first.
        let store = on_fake(&server, Access::Write).await;
        append_first(store.as_ref(), "w").await;
        let head = store.head().await.unwrap();
        let late = contract::ev(r#"{"late":true}"#);
        let rec = stage(
            &contract::batch("w", ExpectedVersion::Any, vec![late.clone()]),
            1,
            1,
            &head.hash,
        );
        let (id, event_type, data, metadata) = encode(&rec[0]);
        server.hold_subscriptions(true);
        server
            .append(
                "wl-w",
                kurrentdb::StreamState::StreamRevision(0),
                vec![NewEvent {
                    id,
                    event_type,
                    data,
                    metadata,
                }],
                Duration::from_secs(1),
            )
            .await
            .unwrap();
        let again = store
            .append(contract::batch("w", ExpectedVersion::Exact(1), vec![late.clone()]))
            .wait()
            .await
            .unwrap();
        assert_eq!(again.recorded, vec![(2, 2)], "dedup {dedup}");
        if !dedup {
            assert!(again.duplicate, "found in the tail: the original result");
        }
        server.hold_subscriptions(false);
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
            .append(contract::batch("w", ExpectedVersion::Any, vec![contract::ev("{}")]))
            .wait()
            .await
            .unwrap();
        assert_eq!(next.recorded, vec![(3, 3)]);
        contract::assert_sound_chain(&all_of(store.as_ref()).await);
        store.shutdown().await;
    }
}

/// The lease: refused while renewed; after a crash (dropped without shutdown) taken over only
/// once a TTL passed unrenewed; a holder whose lease was taken stops appending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_the_writer_lease() {
    let server = FakeServer::new();
    let first = on_fake(&server, Access::Write).await;
    append_first(first.as_ref(), "l").await;
    match KurrentStore::open_with(server.clone(), "wl-", TTL, Access::Write).await {
        Err(e) => assert!(e.to_string().contains("holds the writer lease"), "{e}"),
        Ok(_) => panic!("a second writer is refused while the lease is renewed"),
    }
    // Readers take no lease.
    let reader = on_fake(&server, Access::Read).await;
    assert_eq!(reader.head().await.unwrap().position, 1);
    drop(first);
    let started = std::time::Instant::now();
    let second = on_fake(&server, Access::Write).await;
    assert!(
        started.elapsed() >= TTL,
        "a crashed holder's lease is taken only after its TTL"
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
    // Someone takes the lease from under it: its next renewal finds out, and it stops.
    server
        .append(
            &kdb_stream("wl-", LEASE_STREAM_SUFFIX),
            kurrentdb::StreamState::Any,
            vec![NewEvent {
                id: uuid::Uuid::new_v4(),
                event_type: "WriterLease".into(),
                data: format!(
                    r#"{{"holder":"{}","ttl_ms":1000,"released":false}}"#,
                    uuid::Uuid::new_v4()
                )
                .into_bytes(),
                metadata: Vec::new(),
            }],
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    tokio::time::sleep(TTL / 2).await;
    let e = second
        .append(contract::batch(
            "l",
            ExpectedVersion::Exact(2),
            vec![contract::ev("{}")],
        ))
        .wait()
        .await
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Unavailable(ref m) if m.contains("took the writer lease")),
        "{e}"
    );
    second.shutdown().await;
    contract::assert_sound_chain(&all_of(reader.as_ref()).await);
}

/// A reader follows the writer through its subscription, and resubscribes (from where it was)
/// after the connection drops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_a_reader_resubscribes_after_a_lost_connection() {
    let server = FakeServer::new();
    let writer = on_fake(&server, Access::Write).await;
    let reader = on_fake(&server, Access::Read).await;
    let mut w = reader.watch_head();
    for round in 0..3u64 {
        for _ in 0..5 {
            writer
                .append(contract::batch("f", ExpectedVersion::Any, vec![contract::ev("{}")]))
                .wait()
                .await
                .unwrap();
        }
        tokio::time::timeout(Duration::from_secs(5), w.wait_for(|h| *h == 5 * (round + 1)))
            .await
            .expect("the reader's subscription follows")
            .unwrap();
        server.drop_subscriptions();
    }
    let all = all_of(reader.as_ref()).await;
    assert_eq!(all.len(), 15);
    contract::assert_sound_chain(&all);
    assert!(matches!(
        reader
            .append(contract::batch("f", ExpectedVersion::Any, vec![contract::ev("{}")]))
            .wait()
            .await,
        Err(StoreError::Invalid(_))
    ));
    writer.shutdown().await;
}

/// Two claims of one position (a second writer behind the lease's back): every read that
/// crosses it is refused as damaged, and the writer refuses to extend the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_a_forked_log_is_refused_not_renumbered() {
    let server = FakeServer::new();
    let writer = on_fake(&server, Access::Write).await;
    for _ in 0..2 {
        writer
            .append(contract::batch("k", ExpectedVersion::Any, vec![contract::ev("{}")]))
            .wait()
            .await
            .unwrap();
    }
    let all = all_of(writer.as_ref()).await;
    // Position 2 claimed a second time, on another stream.
    let rec = stage(
        &contract::batch("intruder", ExpectedVersion::Any, vec![contract::ev("{}")]),
        0,
        1,
        &all[0].hash,
    );
    let (id, event_type, data, metadata) = encode(&rec[0]);
    server
        .append(
            "wl-intruder",
            kurrentdb::StreamState::NoStream,
            vec![NewEvent {
                id,
                event_type,
                data,
                metadata,
            }],
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    let reader = on_fake(&server, Access::Read).await;
    assert_eq!(reader.read_all(0, 2).await.unwrap().len(), 2, "the sound part reads");
    let e = reader.read_all(0, 100).await.unwrap_err();
    assert!(
        matches!(e, StoreError::Corrupt(ref m) if m.contains("carries position 2")),
        "{e}"
    );
    assert!(matches!(reader.head().await, Err(StoreError::Corrupt(_))));
    let refused = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let r = writer
                .append(contract::batch("k", ExpectedVersion::Any, vec![contract::ev("{}")]))
                .wait()
                .await;
            if let Err(StoreError::Corrupt(m)) = r {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the writer learns of the fork through its subscription");
    assert!(refused.contains("audit"), "{refused}");
    writer.shutdown().await;
}

/// The whole ledger on the fake server: a simulated campus day goes through `Ledger` exactly as
/// on SQLite, `audit` verifies the chain clean, and the chain hash equals the SQLite one for the
/// same commands at the same clock — the mapping loses nothing that is hashed. A forged claim
/// of an existing position then makes the audit fail loudly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_a_simulated_day_audits_clean_and_matches_sqlite() {
    use chrono::TimeZone;
    use wattledger::ledger::{Clock, FixedClock, Ledger};
    let start = chrono::Utc.with_ymd_and_hms(2026, 3, 2, 0, 0, 0).unwrap();
    let mut commands = Vec::new();
    wattledger::sim::simulate(&wattledger::sim::SimConfig::new(1, 2, 7, start), &mut |v| {
        commands.push(v)
    })
    .unwrap();
    let clock: Arc<dyn Clock> = Arc::new(FixedClock::new(start + chrono::Duration::days(40)));
    let run = |store: Arc<dyn EventStore>| {
        let commands = commands.clone();
        let clock = clock.clone();
        async move {
            let ledger = Ledger::open(store.clone(), clock).await.unwrap();
            for c in &commands {
                ledger.execute_json(c).await.unwrap();
            }
            wattledger::audit::audit(store.as_ref(), wattledger::audit::Live::None, |_, _| {})
                .await
                .unwrap()
        }
    };
    let server = FakeServer::new();
    let kurrent = on_fake(&server, Access::Write).await;
    let on_kurrent = run(kurrent.clone()).await;
    assert!(on_kurrent.clean, "{:?}", on_kurrent.findings);
    assert!(on_kurrent.events > 100, "{} events", on_kurrent.events);
    let dir = tempfile::tempdir().unwrap();
    let sqlite = wattledger::store::open(
        &format!("sqlite://{}", dir.path().join("l.db").display()),
        Access::Write,
    )
    .await
    .unwrap();
    let on_sqlite = run(sqlite.clone()).await;
    assert_eq!(
        (on_kurrent.head_position, &on_kurrent.chain_hash),
        (on_sqlite.head_position, &on_sqlite.chain_hash),
        "one chain, whichever backend keeps it"
    );
    sqlite.shutdown().await;
    // A second claim of position 5, behind the lease's back.
    let fifth = kurrent.read_all(4, 1).await.unwrap().remove(0);
    let forged = stage(
        &contract::batch("intruder", ExpectedVersion::Any, vec![contract::ev("{}")]),
        0,
        4,
        &fifth.prev_hash,
    );
    let (id, event_type, data, metadata) = encode(&forged[0]);
    server
        .append(
            "wl-intruder",
            kurrentdb::StreamState::NoStream,
            vec![NewEvent {
                id,
                event_type,
                data,
                metadata,
            }],
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    let reader = on_fake(&server, Access::Read).await;
    let e = wattledger::audit::audit(reader.as_ref(), wattledger::audit::Live::None, |_, _| {})
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Corrupt(_)), "{e}");
    kurrent.shutdown().await;
}
