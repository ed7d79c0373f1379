//! Restart from snapshots: the ledger's write state and the SQLite store's index are saved
//! when they close and read back on open, then the log after them is folded. Whatever the
//! route (snapshot and tail, a snapshot of another log, a damaged one, none), the state and
//! the index are exactly what a full replay of the log builds, and the ledger decides the
//! same way.

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use wattledger::domain::time::{fmt_time, parse_time};
use wattledger::ledger::{FixedClock, Ledger, replay_state, snapshot};
use wattledger::store::sqlite::{SqliteStore, id_map_path, index_snapshot_path};
use wattledger::store::{AppendBatch, EventStore, EventToAppend, ExpectedVersion, StoreError};

const NOW: &str = "2026-11-28T12:00:00Z";

fn t(s: &str) -> DateTime<Utc> {
    parse_time(s).unwrap()
}

fn setup() -> Vec<Value> {
    vec![
        json!({"command":"register_site","site_id":"memphis-1","time_zone":"America/Chicago"}),
        json!({"command":"register_tenant","tenant_id":"acme-ai","name":"Acme AI"}),
        json!({"command":"register_tenant","tenant_id":"beta-labs","name":"Beta Labs"}),
        json!({"command":"register_meter","meter_id":"gt-01","site_id":"memphis-1","kind":"generation","asset_id":"turbine-01","source":"gas_turbine","rated_power_w":"35000000"}),
        json!({"command":"register_meter","meter_id":"bess-1","site_id":"memphis-1","kind":"storage","asset_id":"bess-1","capacity_wh":"4000000","round_trip_efficiency_pct":"90","rated_power_w":"1000000"}),
        json!({"command":"register_meter","meter_id":"rack-a1","site_id":"memphis-1","kind":"load","tenant_id":"acme-ai","rated_power_w":"2000000"}),
        json!({"command":"publish_tariff","site_id":"memphis-1","effective_from":"2026-01-01T00:00:00Z",
            "rates_eu_per_wh":{"generated":"1","stored":"1","dispatched":"1","consumed":"1.1"},
            "default_band":{"name":"standard","multiplier":"1"}}),
        json!({"command":"issue_credits","tenant_id":"acme-ai","amount_eu":"10000000","memo":"seed"}),
        json!({"command":"set_spending_limit","tenant_id":"acme-ai","limit_eu":"5000000","period":"2026-11"}),
    ]
}

/// Reading `k` of `meter` and `flow`: the `k`th 15-minute slot from 2026-11-20 00:00Z.
fn reading(meter: &str, flow: &str, k: i64, wh: &str, job: Option<&str>) -> Value {
    let s = t("2026-11-20T00:00:00Z") + Duration::minutes(15 * k);
    let mut v = json!({"command":"post_reading","meter_id":meter,"flow":flow,
        "start":fmt_time(&s),"end":fmt_time(&(s + Duration::minutes(15))),"wh":wh});
    if let Some(j) = job {
        v["job_id"] = json!(j);
    }
    v
}

/// Events of every kind the write state folds: readings of each flow (some for a job),
/// corrections, holds placed, captured, released and drawn, transfers, a closed period.
fn round(r: i64) -> Vec<Value> {
    let mut out = Vec::new();
    let h = format!("h{r}");
    out.push(
        json!({"command":"place_hold","hold_id":h,"tenant_id":"acme-ai","amount_eu":"300",
        "expires_at":"2026-11-29T12:00:00Z","job_id":format!("job-{r}")}),
    );
    for k in r * 20..r * 20 + 20 {
        out.push(reading("gt-01", "generated", k, &format!("{}", 1000 + k), None));
        out.push(reading(
            "bess-1",
            if k % 2 == 0 { "stored" } else { "dispatched" },
            k,
            "10",
            None,
        ));
        let job = (k % 5 == 0).then(|| format!("job-{r}"));
        out.push(reading(
            "rack-a1",
            "consumed",
            k,
            &format!("{}", 50 + k % 7),
            job.as_deref(),
        ));
    }
    out.push(json!({"command":"capture_hold","hold_id":h,"amount_eu":"20"}));
    if r % 2 == 1 {
        out.push(json!({"command":"release_hold","hold_id":h}));
    }
    out.push(json!({"command":"transfer_credits","from_tenant":"acme-ai","to_tenant":"beta-labs","amount_eu":"2.5","memo":"spot"}));
    out
}

async fn run(ledger: &Ledger, cmds: &[Value]) -> Vec<Value> {
    let mut answers = Vec::new();
    for c in cmds {
        answers.push(match ledger.execute_json(c).await {
            Ok(a) => a.to_json(),
            Err(e) => e.to_json(),
        });
    }
    answers
}

/// Corrects the first consumption reading of round `r`.
async fn correct(ledger: &Ledger, r: i64, wh: &str) -> Value {
    let id = ledger
        .execute_json(&reading(
            "rack-a1",
            "consumed",
            r * 20,
            &format!("{}", 50 + (r * 20) % 7),
            Some(&format!("job-{r}")),
        ))
        .await
        .unwrap()
        .event_id;
    ledger
        .execute_json(&json!({"command":"correct_reading","event_id":id,"wh":wh,"reason":"meter swap"}))
        .await
        .unwrap()
        .to_json()
}

async fn open(db: &Path, snap: Option<&Path>) -> Arc<Ledger> {
    let store = SqliteStore::open(db).await.unwrap();
    let clock = Arc::new(FixedClock::new(t(NOW)));
    Ledger::open_with(store, clock, snap.map(Path::to_path_buf))
        .await
        .unwrap()
}

/// The ledger's state equals a full replay of its log.
async fn assert_state_is_a_replay(ledger: &Ledger) {
    // The replay keeps its readings' slots in memory, the ledger in its slot file.
    let (replayed, _) = replay_state(ledger.store().as_ref()).await.unwrap();
    let (has_readings, same) = ledger
        .with_state(|live| (!live.readings.is_empty(), *live == replayed))
        .await;
    assert!(has_readings, "the log has readings");
    assert!(same, "the state opened from a snapshot differs from a full replay");
}

#[tokio::test]
async fn the_state_from_a_snapshot_and_the_tail_is_the_state_a_replay_builds() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("w.db");
    let snap = snapshot::path_for(&format!("sqlite://{}", db.display()));
    assert_eq!(snap, dir.path().join("w.db.state.snapshot"));

    let ledger = open(&db, Some(&snap)).await;
    assert!(
        ledger.opened_from.contains("no write-state snapshot yet"),
        "{}",
        ledger.opened_from
    );
    run(&ledger, &setup()).await;
    for r in 0..3 {
        run(&ledger, &round(r)).await;
    }
    correct(&ledger, 1, "70").await;
    correct(&ledger, 1, "69").await;
    ledger.close().await;
    drop(ledger);
    assert!(snap.exists(), "close saves the write state");

    // Reopened: from the snapshot, nothing after it.
    let ledger = open(&db, Some(&snap)).await;
    let head = ledger.store().head().await.unwrap().position;
    assert_eq!(
        ledger.opened_from,
        format!("the write-state snapshot at position {head} and 0 events after it")
    );
    assert_state_is_a_replay(&ledger).await;
    // Events recorded by a ledger that does not save (as after a crash): the tail.
    ledger.store().shutdown().await;
    drop(ledger);
    let plain = open(&db, None).await;
    run(&plain, &round(3)).await;
    correct(&plain, 3, "71").await;
    correct(&plain, 1, "72").await;
    plain
        .execute_json(&json!({"command":"close_period","period":"2026-10"}))
        .await
        .unwrap();
    let tail = plain.store().head().await.unwrap().position - head;
    plain.store().shutdown().await;
    drop(plain);
    // A copy of the log, opened without a snapshot, answers the probes below for comparison.
    let dir2 = tempfile::tempdir().unwrap();
    let db2 = dir2.path().join("w.db");
    for suffix in ["", "-wal", "-shm"] {
        let from = dir.path().join(format!("w.db{suffix}"));
        if from.exists() {
            std::fs::copy(&from, dir2.path().join(format!("w.db{suffix}"))).unwrap();
        }
    }

    let ledger = open(&db, Some(&snap)).await;
    assert_eq!(
        ledger.opened_from,
        format!("the write-state snapshot at position {head} and {tail} events after it")
    );
    assert_state_is_a_replay(&ledger).await;

    // And it decides as a ledger opened from the whole log does: retries, overlaps,
    // corrections, holds, a closed period.
    let probes = {
        let mut p = round(4);
        p.extend(round(2)); // all retries or conflicts now
        p.push(reading("rack-a1", "consumed", 41, "999", None)); // same interval, other Wh
        p.push(json!({"command":"post_reading","meter_id":"rack-a1","flow":"consumed",
            "start":"2026-11-20T00:05:00Z","end":"2026-11-20T00:20:00Z","wh":"1"})); // overlaps
        p.push(json!({"command":"capture_hold","hold_id":"h3","amount_eu":"1"}));
        p.push(json!({"command":"capture_hold","hold_id":"h0","amount_eu":"1"}));
        p
    };
    let from_snapshot = run(&ledger, &probes).await;
    ledger.store().shutdown().await;
    let replayed = open(&db2, None).await;
    let from_log = run(&replayed, &probes).await;
    replayed.store().shutdown().await;
    assert_eq!(from_snapshot.len(), from_log.len());
    for (i, (a, b)) in from_snapshot.iter().zip(&from_log).enumerate() {
        assert_eq!(a, b, "probe {i}: {}", probes[i]);
    }
    assert!(
        from_log.iter().any(|a| a["ok"] == json!(false)),
        "the probes include refusals"
    );
}

#[tokio::test]
async fn a_snapshot_of_another_log_is_kept_aside_and_a_damaged_one_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let (snap_a, snap_b) = (dir.path().join("a.snap"), dir.path().join("b.snap"));
    for (db, snap, rounds) in [(&a, &snap_a, 2), (&b, &snap_b, 1)] {
        let l = open(db, Some(snap)).await;
        if rounds == 1 {
            // B's log differs from A's from its first event on.
            run(
                &l,
                &[json!({"command":"register_tenant","tenant_id":"zeta","name":"Zeta"})],
            )
            .await;
        }
        run(&l, &setup()).await;
        for r in 0..rounds {
            run(&l, &round(r)).await;
        }
        l.close().await;
    }
    // B's snapshot over A's log: A's log has an event at B's position, with another hash.
    copy_snapshot(&snap_b, &snap_a);
    let l = open(&a, Some(&snap_a)).await;
    assert!(
        l.opened_from
            .starts_with("the whole log: write-state snapshot ignored: the log's hash at position"),
        "{}",
        l.opened_from
    );
    assert!(
        dir.path().join("a.snap.rejected").exists(),
        "the contradicted snapshot is kept"
    );
    assert!(!snap_a.exists());
    assert_state_is_a_replay(&l).await;
    l.close().await;
    drop(l);
    assert!(snap_a.exists(), "a fresh snapshot replaces it on close");

    // A's snapshot over B's shorter log: B does not reach its position.
    copy_snapshot(&snap_a, &snap_b);
    let l = open(&b, Some(&snap_b)).await;
    assert!(l.opened_from.contains("the log does not reach it"), "{}", l.opened_from);
    assert_state_is_a_replay(&l).await;
    l.store().shutdown().await;
    drop(l);

    // A snapshot whose slot file is gone, then one whose slot file is cut short: ignored,
    // saying why, and the state is replayed from the log into a new slot file.
    let home = snapshot::readings_home(&snap_a);
    let named = std::fs::read_dir(&home)
        .unwrap()
        .map(|f| f.unwrap().path())
        .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with("slots-"))
        .expect("the snapshot's slot file");
    let kept = std::fs::read(&named).unwrap();
    std::fs::remove_file(&named).unwrap();
    let l = open(&a, Some(&snap_a)).await;
    assert!(
        l.opened_from.contains("its slot file") && l.opened_from.contains("is missing"),
        "{}",
        l.opened_from
    );
    assert_state_is_a_replay(&l).await;
    l.store().shutdown().await;
    drop(l);
    std::fs::remove_dir_all(&home).unwrap();
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(&named, &kept[..kept.len() - 10]).unwrap();
    let l = open(&a, Some(&snap_a)).await;
    assert!(l.opened_from.contains("slots of"), "{}", l.opened_from);
    assert_state_is_a_replay(&l).await;
    l.store().shutdown().await;
    drop(l);

    // A damaged snapshot: ignored (not kept: it is no evidence of anything).
    let mut bytes = std::fs::read(&snap_a).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&snap_a, &bytes).unwrap();
    let l = open(&a, Some(&snap_a)).await;
    assert!(l.opened_from.contains("ignored: it is damaged: "), "{}", l.opened_from);
    assert_state_is_a_replay(&l).await;
    l.store().shutdown().await;
}

#[tokio::test]
async fn a_second_ledger_on_the_same_snapshot_keeps_its_readings_in_memory_and_leaves_the_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("w.db");
    let snap = dir.path().join("w.snap");
    let store = SqliteStore::open(&db).await.unwrap();
    let clock = Arc::new(FixedClock::new(t(NOW)));
    let first = Ledger::open_with(store.clone(), clock.clone(), Some(snap.clone()))
        .await
        .unwrap();
    run(&first, &setup()).await;
    run(&first, &round(0)).await;
    let second = Ledger::open_with(store.clone(), clock, Some(snap.clone()))
        .await
        .unwrap();
    assert!(second.with_state(|s| s.readings.home().is_none()).await);
    assert!(first.with_state(|s| s.readings.home().is_some()).await);
    run(&second, &round(1)).await;
    let refused = second.save_snapshot().await.unwrap_err();
    assert!(
        refused.contains("this process keeps its readings in memory"),
        "{refused}"
    );
    assert!(!snap.exists());
    // The first one's slots are intact: it answers as a replay of the log it wrote.
    run(&first, &round(2)).await;
    first.save_snapshot().await.unwrap();
    drop((first, second));
    store.shutdown().await;
    drop(store);
    let l = open(&db, Some(&snap)).await;
    assert!(
        l.opened_from.starts_with("the write-state snapshot at position"),
        "{}",
        l.opened_from
    );
    assert_state_is_a_replay(&l).await;
    l.store().shutdown().await;
}

/// Puts a write-state snapshot and its readings' slot file in another's place.
fn copy_snapshot(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
    let (from, to) = (snapshot::readings_home(from), snapshot::readings_home(to));
    let _ = std::fs::remove_dir_all(&to);
    copy_dir(&from, &to);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in std::fs::read_dir(from).unwrap() {
        let f = f.unwrap().path();
        let into = to.join(f.file_name().unwrap());
        if f.is_dir() {
            copy_dir(&f, &into);
        } else {
            std::fs::copy(&f, into).unwrap();
        }
    }
}

fn event(id: u128, kind: &str) -> EventToAppend {
    EventToAppend {
        event_id: uuid::Uuid::from_u128(id),
        event_type: kind.to_string(),
        schema_version: 1,
        recorded_at: t(NOW),
        data: json!({"n": id.to_string()}).to_string(),
        memo: None,
    }
}

async fn append(store: &SqliteStore, stream: &str, expected: u64, ids: &[u128]) -> Result<u64, StoreError> {
    let batch = AppendBatch {
        stream: stream.to_string(),
        expected: ExpectedVersion::at(expected),
        events: ids.iter().map(|i| event(*i, "Probe")).collect(),
        fence: None,
    };
    let a = store.append(batch).wait().await?;
    assert!(!a.duplicate, "a new batch");
    Ok(a.recorded.last().unwrap().0)
}

async fn stream_positions(store: &SqliteStore, stream: &str) -> Vec<u64> {
    store
        .read_stream(stream, 0, 10_000)
        .await
        .unwrap()
        .iter()
        .map(|r| r.position)
        .collect()
}

#[tokio::test]
async fn the_store_index_is_read_back_from_its_snapshot_and_checked_against_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let idx = index_snapshot_path(&db);
    let store = SqliteStore::open(&db).await.unwrap();
    for i in 0..50u128 {
        append(&store, &format!("s-{}", i % 3), (i / 3) as u64, &[i + 1])
            .await
            .unwrap();
    }
    store.shutdown().await;
    assert!(idx.exists(), "shutdown saves the index");
    drop(store);

    // Reopened from the snapshot, then appended to without saving (dropped after a
    // failed shutdown is the same as a crash for the snapshot: it is not rewritten).
    let store = SqliteStore::open(&db).await.unwrap();
    assert_eq!(stream_positions(&store, "s-1").await.len(), 17);
    assert!(
        matches!(
            append(&store, "s-0", 17, &[8]).await,
            Err(StoreError::DuplicateEventId(_))
        ),
        "a known id is refused after a restart from the index snapshot"
    );
    assert!(matches!(
        append(&store, "s-0", 16, &[1000]).await,
        Err(StoreError::VersionConflict { .. })
    ));
    assert_eq!(append(&store, "s-0", 17, &[1000]).await.unwrap(), 51);
    let saved = std::fs::read(&idx).unwrap();
    drop(store);
    std::fs::write(&idx, &saved).unwrap(); // as if the process had died before saving

    // The old snapshot and the tail after it.
    let store = SqliteStore::open(&db).await.unwrap();
    assert_eq!(stream_positions(&store, "s-0").await.last(), Some(&51));
    assert!(matches!(
        append(&store, "s-1", 17, &[1000]).await,
        Err(StoreError::DuplicateEventId(_))
    ));
    assert_eq!(store.head().await.unwrap().position, 51);
    store.shutdown().await;
    drop(store);

    // A damaged snapshot, and one of another file: both ignored, the index is rebuilt.
    let other = dir.path().join("o.db");
    let o = SqliteStore::open(&other).await.unwrap();
    for i in 0..60u128 {
        append(&o, "x", i as u64, &[5000 + i]).await.unwrap();
    }
    o.shutdown().await;
    drop(o);
    for bad in [std::fs::read(index_snapshot_path(&other)).unwrap(), {
        let mut b = std::fs::read(&idx).unwrap();
        let n = b.len();
        b[n - 40] ^= 0x40;
        b
    }] {
        std::fs::write(&idx, &bad).unwrap();
        let store = SqliteStore::open(&db).await.unwrap();
        assert_eq!(stream_positions(&store, "s-2").await.len(), 16);
        assert!(stream_positions(&store, "x").await.is_empty());
        assert_eq!(
            append(&store, "s-2", 16, &[9999]).await.unwrap(),
            52,
            "the head is the file's"
        );
        assert!(matches!(
            append(&store, "x", 0, &[1]).await,
            Err(StoreError::DuplicateEventId(_))
        ));
        store.shutdown().await;
        drop(store);
        // Undo the append so that both rounds see the same file.
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute("DELETE FROM events WHERE position = 52", []).unwrap();
    }

    // The writer's id map: another file's (it maps ids this log never had), then none at all
    // (lost before it was ever saved). Either way the ids are read again from the log.
    let ids = id_map_path(&db);
    for round in 0..2 {
        std::fs::remove_dir_all(&ids).unwrap();
        if round == 0 {
            copy_dir(&id_map_path(&other), &ids);
        }
        let store = SqliteStore::open(&db).await.unwrap();
        assert!(matches!(
            append(&store, "s-0", 18, &[20]).await,
            Err(StoreError::DuplicateEventId(_))
        ));
        assert_eq!(
            append(&store, "s-0", 18, &[5001]).await.unwrap(),
            52,
            "an id of the other file is new here"
        );
        store.shutdown().await;
        drop(store);
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute("DELETE FROM events WHERE position = 52", []).unwrap();
    }
}

#[path = "pg/mod.rs"]
mod pg;

/// On a shared (PostgreSQL) log the snapshot is taken after catching up with other
/// writers, and the tail folded on open includes what another server appended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_the_snapshot_covers_other_writers_and_the_tail_too() {
    let Some(base) = pg::base_url("on_postgresql_the_snapshot_covers_other_writers_and_the_tail_too") else {
        return;
    };
    let url = pg::fresh_schema_url(&base).await;
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("pg.state.snapshot");
    let open_pg = |snap: Option<std::path::PathBuf>| {
        let url = url.clone();
        async move {
            let store = wattledger::store::open(&url, wattledger::store::Access::Write)
                .await
                .unwrap();
            Ledger::open_with(store, Arc::new(FixedClock::new(t(NOW))), snap)
                .await
                .unwrap()
        }
    };
    let a = open_pg(Some(snap.clone())).await;
    let b = open_pg(None).await;
    run(&a, &setup()).await;
    run(&b, &round(0)).await; // another server's appends, not yet folded by `a`
    run(&a, &round(1)).await;
    a.close().await;
    let head = b.store().head().await.unwrap().position;
    run(&b, &round(2)).await;
    let tail = b.store().head().await.unwrap().position - head;
    b.store().shutdown().await;

    let c = open_pg(Some(snap.clone())).await;
    assert_eq!(
        c.opened_from,
        format!("the write-state snapshot at position {head} and {tail} events after it")
    );
    assert_state_is_a_replay(&c).await;
    c.store().shutdown().await;
}
