//! The store contract on the embedded SQLite backend, plus what only a file can show.

mod contract;

use std::sync::Arc;
use wattledger::store::sqlite::SqliteStore;
use wattledger::store::{EventStore, ExpectedVersion, Head};

/// A fresh store in its own temporary directory (kept alive for the test's duration).
async fn fresh() -> Option<Arc<dyn EventStore>> {
    let dir = tempfile::tempdir().unwrap().keep();
    Some(SqliteStore::open(&dir.join("w.db")).await.unwrap())
}

contract_suite!(fresh);

/// The store at `path` with `events` events appended to the new stream "r", and its head.
async fn with_events(path: &std::path::Path, events: usize) -> (Arc<SqliteStore>, Head) {
    let s = SqliteStore::open(path).await.unwrap();
    let events = (0..events).map(|_| contract::ev("{}")).collect();
    s.append(contract::batch("r", ExpectedVersion::NoStream, events))
        .wait()
        .await
        .unwrap();
    let head = s.head().await.unwrap();
    (s, head)
}

#[tokio::test]
async fn a_reopened_store_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.db");
    let (s, head) = with_events(&path, 2).await;
    s.shutdown().await;
    drop(s);
    let s = SqliteStore::open(&path).await.unwrap();
    assert_eq!(s.head().await.unwrap(), head);
    let r = s
        .append(contract::batch(
            "r",
            ExpectedVersion::Exact(2),
            vec![contract::ev("{}")],
        ))
        .wait()
        .await
        .unwrap();
    assert_eq!(r.recorded, vec![(3, 3)]);
    let all = s.read_all(0, 10).await.unwrap();
    contract::assert_sound_chain(&all);
}

#[tokio::test]
async fn a_second_writer_on_one_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.db");
    let _first = SqliteStore::open(&path).await.unwrap();
    let second = SqliteStore::open(&path).await;
    let msg = second.err().expect("refused").to_string();
    assert!(msg.contains("another wattledger process"), "{msg}");
    // Reading beside the writer is fine.
    let reader = SqliteStore::open_read_only(&path).await.unwrap();
    assert_eq!(reader.head().await.unwrap().position, 0);
}

#[tokio::test]
async fn the_file_is_in_wal_mode_with_full_sync() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.db");
    let s = SqliteStore::open(&path).await.unwrap();
    s.append(contract::batch("w", ExpectedVersion::Any, vec![contract::ev("{}")]))
        .wait()
        .await
        .unwrap();
    let c = rusqlite::Connection::open(&path).unwrap();
    let mode: String = c.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    // The table has no index besides its integer key: the hot path is a pure append.
    let indexes: i64 = c
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(indexes, 0);
}

/// A group whose WAL sync fails is refused and never shown to readers, and the store then
/// refuses everything: what was written after the last good sync may not be on disk. On
/// reopening, the refused append may be found in the file (it was committed to the WAL, as
/// a reply lost on the way can leave it), and its retry is recognised as a duplicate.
#[tokio::test]
async fn a_failed_sync_refuses_its_group_and_everything_after() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.db");
    let (s, head) = with_events(&path, 1).await;
    s.fail_next_sync();
    let refused = contract::batch("r", ExpectedVersion::Exact(1), vec![contract::ev(r#"{"n":2}"#)]);
    let e = s.append(refused.clone()).wait().await.expect_err("its sync failed");
    assert!(e.to_string().contains("could not be synced"), "{e}");
    let after = s
        .append(contract::batch("q", ExpectedVersion::Any, vec![contract::ev("{}")]))
        .wait()
        .await
        .expect_err("nothing more is written");
    assert!(after.to_string().contains("could not be synced"), "{after}");
    assert!(s.head().await.is_err());
    assert!(s.failures() > 0);
    let all = s.read_all(0, 10).await.unwrap();
    assert_eq!(all.len(), 1, "only the synced event is shown");
    assert_eq!(all[0].hash, head.hash);
    s.shutdown().await;
    drop(s);

    let s = SqliteStore::open(&path).await.unwrap();
    let all = s.read_all(0, 10).await.unwrap();
    contract::assert_sound_chain(&all);
    assert!(all.len() <= 2, "{all:?}");
    let retry = s.append(refused).wait().await;
    if all.len() == 2 {
        assert!(
            retry.unwrap().duplicate,
            "the retry of what the file holds is a duplicate"
        );
    } else {
        retry.unwrap();
    }
    contract::assert_sound_chain(&s.read_all(0, 10).await.unwrap());
}

/// While the store is open, what was written reaches the database file through the
/// checkpoints of its own thread, not only at a clean stop: the WAL does not grow without
/// bound on a server that is never stopped.
#[tokio::test]
async fn the_wal_is_checkpointed_into_the_database_while_the_store_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.db");
    let s = SqliteStore::open(&path).await.unwrap();
    let before = std::fs::metadata(&path).unwrap().len();
    // Six groups of 1 MiB of rows: past the 4 MiB after which the syncer asks for one.
    let data = format!(r#"{{"pad":"{}"}}"#, "x".repeat(16 * 1024));
    for g in 0..6 {
        let events = (0..64).map(|_| contract::ev(&data)).collect();
        s.append(contract::batch(&format!("g{g}"), ExpectedVersion::NoStream, events))
            .wait()
            .await
            .unwrap();
    }
    // The checkpoint runs beside the appends: wait for it, for at most ten seconds.
    let mut after = before;
    for _ in 0..200 {
        after = std::fs::metadata(&path).unwrap().len();
        if after >= 4 << 20 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        after >= 4 << 20,
        "the database file held {after} bytes (from {before}) ten seconds after 6 MiB of rows"
    );
    s.shutdown().await;
}
