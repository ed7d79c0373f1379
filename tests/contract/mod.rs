//! The event-store contract, written once and run against every backend.
//!
//! A backend's test file provides a function that makes a fresh, empty store and invokes
//! `contract_suite!` with it; every test below then runs against that backend.

#![allow(dead_code)]

use chrono::{TimeZone, Utc};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;
use wattledger::store::*;

pub fn ev(data: &str) -> EventToAppend {
    EventToAppend {
        event_id: Uuid::new_v4(),
        event_type: "TestEvent".into(),
        schema_version: 1,
        recorded_at: Utc.with_ymd_and_hms(2026, 11, 2, 20, 0, 0).unwrap() + chrono::Duration::milliseconds(123),
        data: data.into(),
        memo: None,
    }
}

pub fn batch(stream: &str, expected: ExpectedVersion, events: Vec<EventToAppend>) -> AppendBatch {
    AppendBatch {
        stream: stream.into(),
        expected,
        events,
        fence: None,
    }
}

async fn read_everything(store: &dyn EventStore) -> Vec<RecordedEvent> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = store.read_all(after, 100).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.position;
        out.extend(page);
    }
    out
}

/// Positions are 1..=n, every record's hash is right and chained to the previous one.
pub fn assert_sound_chain(all: &[RecordedEvent]) {
    let mut prev = GENESIS_HASH.to_string();
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r.position, i as u64 + 1, "positions are gap-free");
        assert_eq!(r.prev_hash, prev, "position {} continues the chain", r.position);
        assert_eq!(r.hash, r.expected_hash(), "position {} hash", r.position);
        prev = r.hash.clone();
    }
}

pub async fn append_and_read_back(store: Arc<dyn EventStore>) {
    let a = vec![ev(r#"{"n":1}"#), ev(r#"{"n":2}"#), ev(r#"{"n":3}"#)];
    let b = vec![ev(r#"{"n":4,"x":"é \"quoted\""}"#), ev(r#"{"n":5}"#)];
    let ra = store
        .append(batch("a-1", ExpectedVersion::NoStream, a.clone()))
        .wait()
        .await
        .unwrap();
    assert_eq!(ra.recorded, vec![(1, 1), (2, 2), (3, 3)]);
    assert!(!ra.duplicate);
    let rb = store
        .append(batch("b-1", ExpectedVersion::NoStream, b.clone()))
        .wait()
        .await
        .unwrap();
    assert_eq!(rb.recorded, vec![(4, 1), (5, 2)]);

    let sa = store.read_stream("a-1", 1, 100).await.unwrap();
    assert_eq!(sa.len(), 3);
    for (r, e) in sa.iter().zip(&a) {
        assert_eq!(
            (r.event_id, r.data.as_str(), r.event_type.as_str()),
            (e.event_id, e.data.as_str(), "TestEvent")
        );
        assert_eq!(r.recorded_at, e.recorded_at);
        assert_eq!(r.stream, "a-1");
    }
    let from2 = store.read_stream("a-1", 2, 1).await.unwrap();
    assert_eq!((from2.len(), from2[0].version, from2[0].position), (1, 2, 2));
    assert!(store.read_stream("nope", 1, 10).await.unwrap().is_empty());
    assert!(store.read_stream("a-1", 4, 10).await.unwrap().is_empty());

    let all = read_everything(store.as_ref()).await;
    assert_eq!(all.len(), 5);
    assert_sound_chain(&all);
    assert_eq!(all[3].data, b[0].data, "data comes back byte for byte");
    let after3 = store.read_all(3, 100).await.unwrap();
    assert_eq!(after3.iter().map(|r| r.position).collect::<Vec<_>>(), vec![4, 5]);
    let head = store.head().await.unwrap();
    assert_eq!(
        head,
        Head {
            position: 5,
            hash: all[4].hash.clone()
        }
    );
    assert_eq!(*store.watch_head().borrow(), 5);
}

pub async fn expected_version_is_enforced(store: Arc<dyn EventStore>) {
    store
        .append(batch("s", ExpectedVersion::NoStream, vec![ev("{}")]))
        .wait()
        .await
        .unwrap();
    let conflicts = [
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(2),
        ExpectedVersion::Exact(0),
    ];
    for expected in conflicts {
        let e = store
            .append(batch("s", expected, vec![ev("{}"), ev("{}")]))
            .wait()
            .await
            .unwrap_err();
        assert_eq!(
            e,
            StoreError::VersionConflict {
                stream: "s".into(),
                expected,
                actual: 1
            }
        );
    }
    let e = store
        .append(batch("t", ExpectedVersion::Exact(1), vec![ev("{}")]))
        .wait()
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::VersionConflict { actual: 0, .. }));
    // A refused batch appends none of its events.
    assert_eq!(store.head().await.unwrap().position, 1);
    let ok = store
        .append(batch("s", ExpectedVersion::Exact(1), vec![ev("{}")]))
        .wait()
        .await
        .unwrap();
    assert_eq!(ok.recorded, vec![(2, 2)]);
    let any = store
        .append(batch("s", ExpectedVersion::Any, vec![ev("{}")]))
        .wait()
        .await
        .unwrap();
    assert_eq!(any.recorded, vec![(3, 3)]);
    assert_sound_chain(&read_everything(store.as_ref()).await);
}

pub async fn duplicates_are_detected(store: Arc<dyn EventStore>) {
    let events = vec![ev(r#"{"a":1}"#), ev(r#"{"a":2}"#)];
    let first = store
        .append(batch("d", ExpectedVersion::NoStream, events.clone()))
        .wait()
        .await
        .unwrap();
    // The same batch again (a retry): recognised, with the original positions.
    let again = store
        .append(batch("d", ExpectedVersion::NoStream, events.clone()))
        .wait()
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.recorded, first.recorded);
    // The same id with other content, on another stream, or mixed with new events: refused.
    let mut changed = events[0].clone();
    changed.data = r#"{"a":99}"#.into();
    let e = store
        .append(batch("d", ExpectedVersion::Any, vec![changed]))
        .wait()
        .await
        .unwrap_err();
    assert_eq!(e, StoreError::DuplicateEventId(events[0].event_id));
    let e = store
        .append(batch("other", ExpectedVersion::Any, vec![events[1].clone()]))
        .wait()
        .await
        .unwrap_err();
    assert_eq!(e, StoreError::DuplicateEventId(events[1].event_id));
    let e = store
        .append(batch("d", ExpectedVersion::Any, vec![ev("{}"), events[0].clone()]))
        .wait()
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::DuplicateEventId(_)));
    let twice = ev("{}");
    let e = store
        .append(batch("e", ExpectedVersion::Any, vec![twice.clone(), twice.clone()]))
        .wait()
        .await
        .unwrap_err();
    assert_eq!(e, StoreError::DuplicateEventId(twice.event_id));
    assert_eq!(store.head().await.unwrap().position, 2, "refusals appended nothing");
}

pub async fn empty_and_oversized_batches_are_refused(store: Arc<dyn EventStore>) {
    let e = store
        .append(batch("x", ExpectedVersion::Any, vec![]))
        .wait()
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Invalid(_)));
    let big: Vec<_> = (0..BATCH_EVENTS_MAX + 1).map(|_| ev("{}")).collect();
    let e = store
        .append(batch("x", ExpectedVersion::Any, big))
        .wait()
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Invalid(_)));
    assert_eq!(store.head().await.unwrap().position, 0);
}

/// 8 tasks append concurrently, each to its own stream with exact versions, plus one task
/// that keeps conflicting: no gaps, no lost or doubled acknowledgements, and a refused
/// append in a group does not disturb its neighbours.
pub async fn concurrent_appenders(store: Arc<dyn EventStore>) {
    const TASKS: usize = 8;
    const EACH: u64 = 150;
    store
        .append(batch("spoiled", ExpectedVersion::NoStream, vec![ev("{}")]))
        .wait()
        .await
        .unwrap();
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            for v in 0..EACH {
                let e = ev(&format!(r#"{{"task":{t},"v":{v}}}"#));
                let id = e.event_id;
                let r = store
                    .append(batch(&format!("task-{t}"), ExpectedVersion::at(v), vec![e]))
                    .wait()
                    .await
                    .unwrap();
                assert_eq!(r.recorded[0].1, v + 1);
                acks.push((r.recorded[0].0, id));
            }
            acks
        }));
    }
    let spoiler = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut refused = 0;
            for _ in 0..50 {
                let r = store
                    .append(batch("spoiled", ExpectedVersion::NoStream, vec![ev("{}")]))
                    .wait()
                    .await;
                refused += usize::from(r.is_err());
            }
            refused
        })
    };
    let mut acks = Vec::new();
    for h in handles {
        acks.extend(h.await.unwrap());
    }
    let refused = spoiler.await.unwrap();
    let all = read_everything(store.as_ref()).await;
    assert_eq!(refused, 50, "every conflicting append is refused");
    assert_eq!(all.len(), 1 + TASKS * EACH as usize);
    assert_sound_chain(&all);
    let mut positions: Vec<u64> = acks.iter().map(|a| a.0).collect();
    positions.sort_unstable();
    positions.dedup();
    assert_eq!(positions.len(), acks.len(), "no position acknowledged twice");
    for (pos, id) in acks {
        assert_eq!(
            all[pos as usize - 1].event_id,
            id,
            "the acknowledged position holds the event"
        );
    }
}

/// Catch up from a position, then follow live appends.
pub async fn subscribe_catches_up_then_follows(store: Arc<dyn EventStore>) {
    for i in 0..10 {
        store
            .append(batch("sub", ExpectedVersion::Any, vec![ev(&format!(r#"{{"i":{i}}}"#))]))
            .wait()
            .await
            .unwrap();
    }
    let mut sub = Subscription::new(store.clone(), 4);
    for expected in 5..=10 {
        let r = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.position, expected);
    }
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..5 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                store
                    .append(batch(
                        "sub",
                        ExpectedVersion::Any,
                        vec![ev(&format!(r#"{{"live":{i}}}"#))],
                    ))
                    .wait()
                    .await
                    .unwrap();
            }
        })
    };
    for expected in 11..=15 {
        let r = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("a live event arrives")
            .unwrap();
        assert_eq!(r.position, expected);
    }
    writer.await.unwrap();
    assert!(sub.try_next().await.unwrap().is_none());
}

/// Reads are bounded pages: a long log is read a page at a time, never whole.
pub async fn reads_are_paged(store: Arc<dyn EventStore>) {
    let events: Vec<_> = (0..250).map(|i| ev(&format!(r#"{{"i":{i}}}"#))).collect();
    for chunk in events.chunks(50) {
        store
            .append(batch("p", ExpectedVersion::Any, chunk.to_vec()))
            .wait()
            .await
            .unwrap();
    }
    let page = store.read_all(0, 100).await.unwrap();
    assert_eq!((page.len(), page[0].position, page[99].position), (100, 1, 100));
    let page = store.read_all(200, 100).await.unwrap();
    assert_eq!(page.len(), 50);
    let page = store.read_stream("p", 101, 1000).await.unwrap();
    assert_eq!((page.len(), page[0].version), (150, 101));
    let huge = store.read_all(0, usize::MAX).await.unwrap();
    assert!(huge.len() <= READ_PAGE_EVENTS_MAX);
}

/// What a store hands back from its recent tail ([`EventStore::recent`]) is what it reads
/// back, with the memo each event was appended with, for every reader that asks; a backend
/// without a tail answers `None`, and so does one asked for what it does not hold.
pub async fn the_recent_tail_is_what_was_recorded(store: Arc<dyn EventStore>) {
    let memoed = |i: u32| EventToAppend {
        memo: Some(Memo::new(i)),
        ..ev(&format!(r#"{{"i":{i}}}"#))
    };
    for chunk in [vec![memoed(1), memoed(2)], vec![ev("{}")], vec![memoed(4)]] {
        store
            .append(batch("r", ExpectedVersion::Any, chunk))
            .wait()
            .await
            .unwrap();
    }
    let all = read_everything(store.as_ref()).await;
    let Some(tail) = store.recent(1, 10) else {
        return;
    };
    let records: Vec<RecordedEvent> = tail.iter().map(|c| c.record.clone()).collect();
    assert_eq!(
        records,
        all[1..].to_vec(),
        "the tail after position 1 is the log after it"
    );
    let memos: Vec<Option<u32>> = tail
        .iter()
        .map(|c| c.memo.as_ref().and_then(|m| m.get::<u32>()).copied())
        .collect();
    assert_eq!(memos, vec![Some(2), None, Some(4)], "each record keeps its own memo");
    assert!(
        store
            .recent(3, 1)
            .is_some_and(|t| t.len() == 1 && t.iter().next().is_some_and(|c| c.record.position == 4))
    );
    assert!(store.recent(4, 10).is_none(), "nothing after the head");
    let again = store.recent(0, 10).expect("two readers share the tail");
    assert_eq!(again.len(), 4);
    assert_eq!(again.iter().next().map(|c| &c.record), Some(&all[0]));
}

/// Batches larger than one write to the database (PostgreSQL sends a group's rows in
/// chunks of 128 KiB while it stages the next) are recorded whole, and a version conflict
/// queued right behind one is refused alone.
pub async fn large_batches_are_recorded_whole(store: Arc<dyn EventStore>) {
    let big = |n: u32| -> Vec<EventToAppend> {
        (0..n)
            .map(|i| ev(&format!(r#"{{"i":{i},"pad":"{}"}}"#, "x".repeat(300))))
            .collect()
    };
    store
        .append(batch("a", ExpectedVersion::Exact(0), big(1000)))
        .wait()
        .await
        .unwrap();
    // Queued together, so that one group may hold both: the conflict must not cost the
    // large batch beside it.
    let b = store.append(batch("b", ExpectedVersion::Exact(0), big(1000)));
    let c = store.append(batch("a", ExpectedVersion::Exact(0), vec![ev("{}")]));
    let b = b.wait().await.unwrap();
    assert_eq!(b.recorded.len(), 1000);
    assert!(!b.duplicate);
    let e = c.wait().await.unwrap_err();
    assert!(matches!(e, StoreError::VersionConflict { actual: 1000, .. }), "{e}");
    let all = read_everything(store.as_ref()).await;
    assert_eq!(all.len(), 2000);
    assert_sound_chain(&all);
    assert_eq!(store.read_stream("b", 0, 2000).await.unwrap().len(), 1000);
}

/// A store with a tail moves its head for its own appends only once its tail holds them: a
/// follower woken by the head finds the records there and does not read them back (on
/// PostgreSQL, the notification of the commit had often moved the head first).
pub async fn the_head_moves_once_the_tail_holds_the_records(store: Arc<dyn EventStore>) {
    store
        .append(batch("h", ExpectedVersion::Any, vec![ev("{}")]))
        .wait()
        .await
        .unwrap();
    if store.recent(0, 1).is_none() {
        println!("skipped: this store keeps no recent tail");
        return;
    }
    const APPENDS: u64 = 200;
    let mut head = store.watch_head();
    let start = *head.borrow_and_update();
    let watcher = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut early = Vec::new();
            // Bounded: it stops at the last append's head, or after a wait with no change.
            loop {
                let changed = tokio::time::timeout(std::time::Duration::from_secs(20), head.changed()).await;
                if !matches!(changed, Ok(Ok(()))) {
                    break;
                }
                let h = *head.borrow_and_update();
                if store.recent(h - 1, 1).is_none() {
                    early.push(h);
                }
                if h >= start + APPENDS {
                    break;
                }
            }
            early
        })
    };
    for i in 0..APPENDS {
        store
            .append(batch("h", ExpectedVersion::Any, vec![ev(&format!(r#"{{"i":{i}}}"#))]))
            .wait()
            .await
            .unwrap();
    }
    let early = watcher.await.unwrap();
    assert!(early.is_empty(), "the head reached {early:?} before the tail held them");
}

#[macro_export]
macro_rules! contract_suite {
    ($fresh:expr) => {
        $crate::contract_suite!(
            $fresh;
            append_and_read_back,
            expected_version_is_enforced,
            duplicates_are_detected,
            empty_and_oversized_batches_are_refused,
            concurrent_appenders,
            subscribe_catches_up_then_follows,
            the_recent_tail_is_what_was_recorded,
            the_head_moves_once_the_tail_holds_the_records,
            large_batches_are_recorded_whole,
            reads_are_paged,
        );
    };
    // One test per name: the contract's function of that name on a fresh store (skipped,
    // with the reason printed, when `$fresh` has none).
    ($fresh:expr; $($name:ident),* $(,)?) => {
        mod contract_suite {
            use super::*;

            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(s) = $fresh().await {
                        contract::$name(s).await;
                    }
                }
            )*
        }
    };
}
