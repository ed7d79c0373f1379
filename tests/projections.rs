//! Projections through a real store: the snapshot is loaded and caught up on restart, a
//! damaged or foreign snapshot is detected and rebuilt, and the energy balance flags
//! intervals that break conservation.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::sync::Arc;
use wattledger::audit::replay_books;
use wattledger::domain::time::parse_time;
use wattledger::ledger::{FixedClock, Ledger};
use wattledger::projections::engine::Projections;
use wattledger::store::sqlite::SqliteStore;

fn t(s: &str) -> DateTime<Utc> {
    parse_time(s).unwrap()
}

async fn ledger(dir: &std::path::Path) -> Arc<Ledger> {
    let store = SqliteStore::open(&dir.join("w.db")).await.unwrap();
    Ledger::open(store, Arc::new(FixedClock::new(t("2026-11-28T12:00:00Z"))))
        .await
        .unwrap()
}

async fn run(l: &Ledger, cmds: &[Value]) {
    for c in cmds {
        l.execute_json(c).await.unwrap_or_else(|e| panic!("{c}: {e}"));
    }
}

fn setup() -> Vec<Value> {
    vec![
        json!({"command":"register_site","site_id":"s1","time_zone":"UTC","loss_tolerance_pct":"5"}),
        json!({"command":"register_tenant","tenant_id":"t1","name":"One"}),
        json!({"command":"register_meter","meter_id":"gen","site_id":"s1","kind":"generation","asset_id":"gt","source":"gas_turbine","rated_power_w":"10000000"}),
        json!({"command":"register_meter","meter_id":"load","site_id":"s1","kind":"load","tenant_id":"t1","rated_power_w":"10000000"}),
        json!({"command":"publish_tariff","site_id":"s1","effective_from":"2026-01-01T00:00:00Z",
            "rates_eu_per_wh":{"generated":"1","stored":"1","dispatched":"1","consumed":"1"},
            "default_band":{"name":"flat","multiplier":"1"}}),
    ]
}

fn reading(meter: &str, flow: &str, start: &str, minutes: i64, wh: &str) -> Value {
    let s = t(start);
    let e = s + chrono::Duration::minutes(minutes);
    json!({"command":"post_reading","meter_id":meter,"flow":flow,"start":s.to_rfc3339(),"end":e.to_rfc3339(),"wh":wh})
}

#[tokio::test]
async fn a_restart_loads_the_snapshot_and_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("w.db.snapshot.json");
    let l = ledger(dir.path()).await;
    run(&l, &setup()).await;
    run(&l, &[reading("load", "consumed", "2026-11-02T00:00:00Z", 15, "100")]).await;
    let p = Projections::open(l.store().clone(), Some(snap.clone())).await.unwrap();
    assert_eq!(p.position(), 6);
    p.save().unwrap();
    run(&l, &[reading("load", "consumed", "2026-11-02T00:15:00Z", 15, "50")]).await;
    drop(p);

    let p = Projections::open(l.store().clone(), Some(snap.clone())).await.unwrap();
    assert!(
        p.snapshot_note.is_none(),
        "the snapshot was used: {:?}",
        p.snapshot_note
    );
    assert_eq!(p.position(), 7, "caught up past the snapshot");
    let replayed = replay_books(l.store().as_ref()).await.unwrap();
    assert_eq!(p.read(|b| b.clone()), replayed);
    assert_eq!(
        p.read(|b| b.balance("tenant:t1").unwrap()["balance_eu"].clone()),
        json!("-150")
    );
}

#[tokio::test]
async fn a_damaged_snapshot_is_detected_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("w.db.snapshot.json");
    let l = ledger(dir.path()).await;
    run(&l, &setup()).await;
    run(&l, &[reading("load", "consumed", "2026-11-02T00:00:00Z", 15, "100")]).await;
    let p = Projections::open(l.store().clone(), Some(snap.clone())).await.unwrap();
    p.save().unwrap();
    let good = std::fs::read(&snap).unwrap();
    let replayed = replay_books(l.store().as_ref()).await.unwrap();

    // Truncated.
    std::fs::write(&snap, &good[..good.len() / 2]).unwrap();
    let p = Projections::open(l.store().clone(), Some(snap.clone())).await.unwrap();
    assert!(
        p.snapshot_note.as_deref().unwrap().contains("damaged"),
        "{:?}",
        p.snapshot_note
    );
    assert_eq!(p.read(|b| b.clone()), replayed);

    // One byte changed inside the books: the checksum catches it.
    let mut bad = good.clone();
    let i = String::from_utf8_lossy(&good)
        .find("-100")
        .expect("the balance is in the snapshot");
    bad[i + 1] = b'9';
    std::fs::write(&snap, &bad).unwrap();
    let p = Projections::open(l.store().clone(), Some(snap.clone())).await.unwrap();
    assert!(
        p.snapshot_note.as_deref().unwrap().contains("checksum"),
        "{:?}",
        p.snapshot_note
    );
    assert_eq!(p.read(|b| b.clone()), replayed);

    // A sound snapshot of another log (its chain hash does not match this log's).
    let other = tempfile::tempdir().unwrap();
    let lo = ledger(other.path()).await;
    run(&lo, &setup()).await;
    run(&lo, &[reading("load", "consumed", "2026-11-02T00:00:00Z", 15, "999")]).await;
    let po = Projections::open(lo.store().clone(), Some(snap.clone())).await.unwrap();
    assert!(po.snapshot_note.is_some());
    po.save().unwrap();
    let p = Projections::open(l.store().clone(), Some(snap.clone())).await.unwrap();
    assert!(
        p.snapshot_note.as_deref().unwrap().contains("hash"),
        "{:?}",
        p.snapshot_note
    );
    assert_eq!(p.read(|b| b.clone()), replayed);
}

#[tokio::test]
async fn the_energy_balance_flags_intervals_that_break_conservation() {
    let dir = tempfile::tempdir().unwrap();
    let l = ledger(dir.path()).await;
    run(&l, &setup()).await;
    run(
        &l,
        &[
            // 00:00 generated 1000, consumed 970: losses 30 = 3 % ≤ 5 %: fine.
            reading("gen", "generated", "2026-11-02T00:00:00Z", 15, "1000"),
            reading("load", "consumed", "2026-11-02T00:00:00Z", 15, "970"),
            // 00:15 generated 1000, consumed 900: losses 100 = 10 % > 5 %: flagged.
            reading("gen", "generated", "2026-11-02T00:15:00Z", 15, "1000"),
            reading("load", "consumed", "2026-11-02T00:15:00Z", 15, "900"),
            // 00:30 generated 1000, consumed 1100: negative losses: flagged.
            reading("gen", "generated", "2026-11-02T00:30:00Z", 15, "1000"),
            reading("load", "consumed", "2026-11-02T00:30:00Z", 15, "1100"),
            // 00:45–01:45 one hourly generation reading of 4000 Wh spreads 1000 into each of
            // four 15-minute intervals; the load posts 15-minute readings of 990.
            reading("gen", "generated", "2026-11-02T00:45:00Z", 60, "4000"),
            reading("load", "consumed", "2026-11-02T00:45:00Z", 15, "990"),
            reading("load", "consumed", "2026-11-02T01:00:00Z", 15, "990"),
            reading("load", "consumed", "2026-11-02T01:15:00Z", 15, "990"),
            reading("load", "consumed", "2026-11-02T01:30:00Z", 15, "990"),
        ],
    )
    .await;
    let p = Projections::open(l.store().clone(), None).await.unwrap();
    let eb = p.read(|b| {
        b.energy_balance("s1", t("2026-11-02T00:00:00Z"), t("2026-11-02T02:00:00Z"))
            .unwrap()
    });
    let iv = eb["intervals"].as_array().unwrap();
    assert_eq!(iv.len(), 7);
    let row = |i: usize| {
        (
            iv[i]["losses_wh"].as_str().unwrap().to_string(),
            iv[i]["flagged"].as_bool().unwrap(),
        )
    };
    assert_eq!(row(0), ("30".into(), false));
    assert_eq!(iv[0]["losses_pct"], "3");
    assert_eq!(row(1), ("100".into(), true));
    assert_eq!(row(2), ("-100".into(), true));
    for (i, x) in iv.iter().enumerate().skip(3) {
        assert_eq!(
            (x["losses_wh"].as_str(), x["flagged"].as_bool()),
            (Some("10"), Some(false)),
            "interval {i}"
        );
        assert_eq!(x["generated_wh"], "1000");
    }
    assert_eq!(eb["flagged_count"], 2);
    // A correction moves the balance: 00:15 consumed 900 → 960 brings losses to 4 %.
    let id = wattledger::domain::state::reading_id(
        &wattledger::domain::ids::MeterId::parse("load").unwrap(),
        wattledger::domain::tariff::Flow::Consumed,
        &wattledger::domain::time::Interval::new(t("2026-11-02T00:15:00Z"), t("2026-11-02T00:30:00Z")).unwrap(),
    );
    run(
        &l,
        &[json!({"command":"correct_reading","event_id":id,"wh":"960","reason":"recalibrated"})],
    )
    .await;
    p.catch_up().await.unwrap();
    let eb = p.read(|b| {
        b.energy_balance("s1", t("2026-11-02T00:15:00Z"), t("2026-11-02T00:30:00Z"))
            .unwrap()
    });
    assert_eq!(eb["intervals"][0]["losses_wh"], "40");
    assert_eq!(eb["intervals"][0]["flagged"], false);
}

/// A live follower folds the events as the ledger decided them, handed over by the store's
/// writer; the books it builds are the books rebuilt from the log, to the text of every
/// decimal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_books_are_the_books_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let l = ledger(dir.path()).await;
    let p = Projections::open(l.store().clone(), None).await.unwrap();
    let follower = tokio::spawn(p.clone().follow());
    run(&l, &setup()).await;
    for i in 0..40 {
        let start = format!("2026-11-02T{:02}:{:02}:00Z", i / 4, (i % 4) * 15);
        run(
            &l,
            &[
                reading("gen", "generated", &start, 15, &format!("{}.5", 100 + i)),
                reading("load", "consumed", &start, 15, &format!("{}.25", 90 + i)),
            ],
        )
        .await;
    }
    let head = l.store().head().await.unwrap().position;
    assert!(p.wait_for(head, std::time::Duration::from_secs(10)).await);
    let replayed = replay_books(l.store().as_ref()).await.unwrap();
    let live = p.read(|b| b.clone());
    assert_eq!(live, replayed);
    assert_eq!(
        serde_json::to_string(&live).unwrap(),
        serde_json::to_string(&replayed).unwrap()
    );
    follower.abort();
}
