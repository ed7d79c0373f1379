//! The write path through a real (SQLite) store: every refusal, each in its own test, with
//! its code and field, and proof that it changed nothing; duplicates answer the first result.

mod support;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::sync::Arc;
use wattledger::domain::Code;
use wattledger::ledger::{CommandError, FixedClock, Ledger, Outcome};
use wattledger::store::sqlite::SqliteStore;

const NOW: &str = "2026-11-28T12:00:00Z";

struct World {
    ledger: Arc<Ledger>,
    _dir: tempfile::TempDir,
}

fn t(s: &str) -> DateTime<Utc> {
    wattledger::domain::time::parse_time(s).unwrap()
}

impl World {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("w.db")).await.unwrap();
        let ledger = Ledger::open(store, Arc::new(FixedClock::new(t(NOW)))).await.unwrap();
        let w = Self { ledger, _dir: dir };
        for c in setup() {
            w.ok(c).await;
        }
        w
    }

    async fn run(&self, c: Value) -> Outcome {
        self.ledger.execute_json(&c).await
    }

    async fn ok(&self, c: Value) -> Value {
        match self.run(c.clone()).await {
            Ok(a) => a.to_json(),
            Err(e) => panic!("{c} was refused: {e}"),
        }
    }

    async fn head(&self) -> u64 {
        self.ledger.store().head().await.unwrap().position
    }

    /// Runs a command that must be refused with `code` on `field`; checks nothing changed.
    async fn refused(&self, c: Value, code: Code, field: &str) -> String {
        support::assert_refused(&self.ledger, c, code, field).await
    }
}

fn setup() -> Vec<Value> {
    vec![
        json!({"command":"register_site","site_id":"memphis-1","time_zone":"America/Chicago"}),
        json!({"command":"register_tenant","tenant_id":"acme-ai","name":"Acme AI"}),
        json!({"command":"register_tenant","tenant_id":"beta-labs","name":"Beta Labs"}),
        json!({"command":"register_meter","meter_id":"gt-01","site_id":"memphis-1","kind":"generation","asset_id":"turbine-01","source":"gas_turbine","rated_power_w":"35000000"}),
        json!({"command":"register_meter","meter_id":"bess-01","site_id":"memphis-1","kind":"storage","asset_id":"megapack-01","rated_power_w":"1900000","capacity_wh":"3900000","initial_wh":"100000"}),
        json!({"command":"register_meter","meter_id":"rack-a1","site_id":"memphis-1","kind":"load","tenant_id":"acme-ai","rated_power_w":"2000000","active_from":"2026-06-01T00:00:00Z"}),
        tariff("2026-01-01T00:00:00Z"),
        json!({"command":"issue_credits","tenant_id":"acme-ai","amount_eu":"1000","memo":"seed"}),
    ]
}

fn tariff(from: &str) -> Value {
    json!({"command":"publish_tariff","site_id":"memphis-1","effective_from":from,
        "rates_eu_per_wh":{"generated":"1","stored":"1","dispatched":"1","consumed":"1.1"},
        "bands":[{"name":"peak","days":["mon","tue","wed","thu","fri"],"start":"14:00","end":"20:00","multiplier":"1.5"},
                 {"name":"night","days":["mon","tue","wed","thu","fri","sat","sun"],"start":"00:00","end":"06:00","multiplier":"0.6"}],
        "default_band":{"name":"standard","multiplier":"1"},
        "source_multipliers":{"gas_turbine":"1.2","solar":"0.9","grid":"1"}})
}

fn reading(meter: &str, flow: &str, start: &str, end: &str, wh: &str) -> Value {
    json!({"command":"post_reading","meter_id":meter,"flow":flow,"start":start,"end":end,"wh":wh})
}

#[tokio::test]
async fn unknown_site_is_refused() {
    let w = World::new().await;
    w.refused(
        json!({"command":"register_meter","meter_id":"m2","site_id":"nowhere","kind":"generation","asset_id":"a","source":"solar","rated_power_w":"1"}),
        Code::NotFound,
        "site_id",
    )
    .await;
    w.refused(json!({"command":"publish_tariff","site_id":"nowhere","effective_from":"2026-01-01T00:00:00Z",
        "rates_eu_per_wh":{"generated":"1","stored":"1","dispatched":"1","consumed":"1"},"default_band":{"name":"s","multiplier":"1"}}),
        Code::NotFound, "site_id").await;
}

#[tokio::test]
async fn unknown_meter_is_refused() {
    let w = World::new().await;
    w.refused(
        reading("ghost", "consumed", "2026-11-02T20:00:00Z", "2026-11-02T20:15:00Z", "1"),
        Code::NotFound,
        "meter_id",
    )
    .await;
}

#[tokio::test]
async fn unknown_tenant_is_refused() {
    let w = World::new().await;
    w.refused(
        json!({"command":"issue_credits","tenant_id":"nobody","amount_eu":"1"}),
        Code::NotFound,
        "tenant_id",
    )
    .await;
    w.refused(
        json!({"command":"transfer_credits","from_tenant":"acme-ai","to_tenant":"nobody","amount_eu":"1"}),
        Code::NotFound,
        "to_tenant",
    )
    .await;
    w.refused(
        json!({"command":"transfer_credits","from_tenant":"nobody","to_tenant":"acme-ai","amount_eu":"1"}),
        Code::NotFound,
        "from_tenant",
    )
    .await;
    w.refused(
        json!({"command":"register_meter","meter_id":"rack-z","site_id":"memphis-1","kind":"load","tenant_id":"nobody","rated_power_w":"1"}),
        Code::NotFound,
        "tenant_id",
    )
    .await;
}

#[tokio::test]
async fn a_flow_the_meter_kind_cannot_post_is_refused() {
    let w = World::new().await;
    w.refused(
        reading(
            "rack-a1",
            "generated",
            "2026-11-02T20:00:00Z",
            "2026-11-02T20:15:00Z",
            "1",
        ),
        Code::Validation,
        "flow",
    )
    .await;
    w.refused(
        reading("gt-01", "consumed", "2026-11-02T20:00:00Z", "2026-11-02T20:15:00Z", "1"),
        Code::Validation,
        "flow",
    )
    .await;
    w.refused(
        reading(
            "bess-01",
            "generated",
            "2026-11-02T20:00:00Z",
            "2026-11-02T20:15:00Z",
            "1",
        ),
        Code::Validation,
        "flow",
    )
    .await;
}

#[tokio::test]
async fn energy_above_rated_power_times_duration_is_refused() {
    let w = World::new().await;
    // 2 MW × 0.25 h = 500,000 Wh; + 5 % = 525,000 Wh is the most a reading may carry.
    w.ok(reading(
        "rack-a1",
        "consumed",
        "2026-11-02T20:00:00Z",
        "2026-11-02T20:15:00Z",
        "525000",
    ))
    .await;
    let m = w
        .refused(
            reading(
                "rack-a1",
                "consumed",
                "2026-11-02T20:15:00Z",
                "2026-11-02T20:30:00Z",
                "525000.001",
            ),
            Code::Validation,
            "wh",
        )
        .await;
    assert!(m.contains("525000"), "{m}");
}

#[tokio::test]
async fn an_interval_ending_in_the_future_is_refused() {
    let w = World::new().await;
    // Now is 12:00; an end up to 12:05 is tolerated (meter clocks drift), 12:05:01 is not.
    w.ok(reading(
        "rack-a1",
        "consumed",
        "2026-11-28T11:50:00Z",
        "2026-11-28T12:05:00Z",
        "1",
    ))
    .await;
    w.refused(
        reading(
            "rack-a1",
            "consumed",
            "2026-11-28T12:05:00Z",
            "2026-11-28T12:05:01Z",
            "1",
        ),
        Code::Validation,
        "end",
    )
    .await;
}

#[tokio::test]
async fn a_reading_before_the_meter_is_active_is_refused() {
    let w = World::new().await;
    w.refused(
        reading(
            "rack-a1",
            "consumed",
            "2026-05-31T23:45:00Z",
            "2026-06-01T00:00:00Z",
            "1",
        ),
        Code::Validation,
        "start",
    )
    .await;
    w.ok(reading(
        "rack-a1",
        "consumed",
        "2026-06-01T00:00:00Z",
        "2026-06-01T00:15:00Z",
        "1",
    ))
    .await;
}

#[tokio::test]
async fn the_same_reading_with_another_value_is_a_conflict_naming_the_original() {
    let w = World::new().await;
    let first = w
        .ok(reading(
            "rack-a1",
            "consumed",
            "2026-11-02T20:00:00Z",
            "2026-11-02T20:15:00Z",
            "450000",
        ))
        .await;
    let r = match w
        .run(reading(
            "rack-a1",
            "consumed",
            "2026-11-02T20:00:00Z",
            "2026-11-02T20:15:00Z",
            "450001",
        ))
        .await
    {
        Err(CommandError::Rejected(r)) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(r.code, Code::Conflict);
    assert_eq!(
        r.existing_event_id.unwrap().to_string(),
        first["event_id"].as_str().unwrap()
    );
    assert!(r.message.contains(first["event_id"].as_str().unwrap()));
}

#[tokio::test]
async fn an_overlapping_interval_is_a_conflict() {
    let w = World::new().await;
    let first = w
        .ok(reading(
            "rack-a1",
            "consumed",
            "2026-11-02T20:00:00Z",
            "2026-11-02T20:15:00Z",
            "1",
        ))
        .await;
    for (s, e) in [
        ("2026-11-02T20:10:00Z", "2026-11-02T20:20:00Z"),
        ("2026-11-02T19:50:00Z", "2026-11-02T20:01:00Z"),
        ("2026-11-02T19:00:00Z", "2026-11-02T21:00:00Z"),
        ("2026-11-02T20:05:00Z", "2026-11-02T20:10:00Z"),
    ] {
        w.refused(reading("rack-a1", "consumed", s, e, "1"), Code::Conflict, "start")
            .await;
    }
    // Adjacent intervals do not overlap: [20:15, 20:30) follows [20:00, 20:15).
    w.ok(reading(
        "rack-a1",
        "consumed",
        "2026-11-02T20:15:00Z",
        "2026-11-02T20:30:00Z",
        "1",
    ))
    .await;
    w.ok(reading(
        "rack-a1",
        "consumed",
        "2026-11-02T19:45:00Z",
        "2026-11-02T20:00:00Z",
        "1",
    ))
    .await;
    assert!(first["ok"].as_bool().unwrap());
}

#[tokio::test]
async fn a_dispatch_below_empty_is_refused() {
    let w = World::new().await;
    // The battery starts with 100,000 Wh.
    w.ok(reading(
        "bess-01",
        "dispatched",
        "2026-11-02T20:00:00Z",
        "2026-11-02T20:15:00Z",
        "60000",
    ))
    .await;
    w.refused(
        reading(
            "bess-01",
            "dispatched",
            "2026-11-02T20:15:00Z",
            "2026-11-02T20:30:00Z",
            "40000.001",
        ),
        Code::StorageUnderflow,
        "wh",
    )
    .await;
    w.ok(reading(
        "bess-01",
        "dispatched",
        "2026-11-02T20:15:00Z",
        "2026-11-02T20:30:00Z",
        "40000",
    ))
    .await;
}

#[tokio::test]
async fn a_charge_above_capacity_is_refused() {
    let w = World::new().await;
    // 100,000 initial + 8 × 475,000 = 3,900,000 = capacity exactly (1.9 MW × 0.25 h = 475,000 Wh).
    for i in 0..8 {
        let s = t("2026-11-03T08:00:00Z") + chrono::Duration::minutes(15 * i);
        let e = s + chrono::Duration::minutes(15);
        w.ok(reading("bess-01", "stored", &s.to_rfc3339(), &e.to_rfc3339(), "475000"))
            .await;
    }
    w.refused(
        reading(
            "bess-01",
            "stored",
            "2026-11-03T10:00:00Z",
            "2026-11-03T10:15:00Z",
            "0.001",
        ),
        Code::StorageOverflow,
        "wh",
    )
    .await;
}

#[tokio::test]
async fn a_transfer_that_overdraws_is_refused() {
    let w = World::new().await;
    let m = w
        .refused(
            json!({"command":"transfer_credits","from_tenant":"acme-ai","to_tenant":"beta-labs","amount_eu":"1000.000001"}),
            Code::InsufficientCredits,
            "amount_eu",
        )
        .await;
    assert!(m.contains("1000"), "{m}");
    w.ok(json!({"command":"transfer_credits","from_tenant":"acme-ai","to_tenant":"beta-labs","amount_eu":"1000"}))
        .await;
    // Consumption lowers what can be transferred.
    w.ok(reading(
        "rack-a1",
        "consumed",
        "2026-11-02T20:00:00Z",
        "2026-11-02T20:15:00Z",
        "10",
    ))
    .await;
    w.refused(
        json!({"command":"transfer_credits","from_tenant":"beta-labs","to_tenant":"acme-ai","amount_eu":"1000.000001"}),
        Code::InsufficientCredits,
        "amount_eu",
    )
    .await;
}

#[tokio::test]
async fn a_transfer_to_oneself_is_refused() {
    let w = World::new().await;
    w.refused(
        json!({"command":"transfer_credits","from_tenant":"acme-ai","to_tenant":"acme-ai","amount_eu":"1"}),
        Code::Validation,
        "to_tenant",
    )
    .await;
}

#[tokio::test]
async fn a_transfer_that_is_not_positive_is_refused() {
    let w = World::new().await;
    for amount in ["0", "-5", "0.0000000"] {
        w.refused(
            json!({"command":"transfer_credits","from_tenant":"acme-ai","to_tenant":"beta-labs","amount_eu":amount}),
            Code::Validation,
            "amount_eu",
        )
        .await;
    }
}

#[tokio::test]
async fn a_tariff_with_overlapping_bands_is_refused() {
    let w = World::new().await;
    let mut t = tariff("2026-12-01T00:00:00Z");
    t["bands"][1]["end"] = json!("14:30");
    t["bands"][1]["start"] = json!("13:00");
    w.refused(t, Code::Validation, "bands[1]").await;
}

#[tokio::test]
async fn an_unknown_time_zone_is_refused() {
    let w = World::new().await;
    w.refused(
        json!({"command":"register_site","site_id":"mars-1","time_zone":"Mars/Olympus_Mons"}),
        Code::Validation,
        "time_zone",
    )
    .await;
}

#[tokio::test]
async fn re_registering_with_other_attributes_is_a_conflict() {
    let w = World::new().await;
    w.refused(
        json!({"command":"register_site","site_id":"memphis-1","time_zone":"America/New_York"}),
        Code::Conflict,
        "site_id",
    )
    .await;
    w.refused(
        json!({"command":"register_tenant","tenant_id":"acme-ai","name":"Acme"}),
        Code::Conflict,
        "tenant_id",
    )
    .await;
    w.refused(
        json!({"command":"register_meter","meter_id":"gt-01","site_id":"memphis-1","kind":"generation","asset_id":"turbine-01","source":"solar","rated_power_w":"35000000"}),
        Code::Conflict,
        "meter_id",
    )
    .await;
}

#[tokio::test]
async fn a_tariff_cannot_be_rewritten_or_back_dated() {
    let w = World::new().await;
    let mut same_day = tariff("2026-01-01T00:00:00Z");
    same_day["default_band"]["multiplier"] = json!("2");
    w.refused(same_day, Code::Conflict, "effective_from").await;
    w.refused(tariff("2025-06-01T00:00:00Z"), Code::Validation, "effective_from")
        .await;
    let v2 = w.ok(tariff("2026-11-01T00:00:00Z")).await;
    assert_eq!(v2["tariff_version"], 2);
}

#[tokio::test]
async fn a_reading_without_a_tariff_in_force_is_refused() {
    let w = World::new().await;
    w.refused(
        reading(
            "gt-01",
            "generated",
            "2025-12-31T23:45:00Z",
            "2026-01-01T00:00:00Z",
            "1",
        ),
        Code::Validation,
        "start",
    )
    .await;
}

#[tokio::test]
async fn closing_a_period_that_has_not_ended_is_refused() {
    let w = World::new().await;
    w.refused(
        json!({"command":"close_period","period":"2026-11"}),
        Code::Validation,
        "period",
    )
    .await;
}

#[tokio::test]
async fn correcting_an_unknown_reading_is_refused() {
    let w = World::new().await;
    w.refused(
        json!({"command":"correct_reading","event_id":"00000000-0000-0000-0000-000000000001","wh":"1","reason":"x"}),
        Code::NotFound,
        "event_id",
    )
    .await;
}

#[tokio::test]
async fn malformed_commands_name_every_bad_field() {
    let w = World::new().await;
    let r = match w.run(json!({"command":"post_reading","meter_id":"rack-a1","flow":"consumed","start":"2026-11-02T20:00:00Z","end":"2026-11-02T20:15:00Z","wh":"1e400"})).await {
        Err(CommandError::Rejected(r)) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!((r.code, r.field.as_deref()), (Code::Validation, Some("wh")));
    let r = match w.run(json!({"command":"post_reading","meter_id":"rack-a1","flow":"consumed","start":"2026-11-02T20:00:00Z","end":"2026-11-03T20:15:00Z","wh":"1"})).await {
        Err(CommandError::Rejected(r)) => r,
        other => panic!("{other:?}"),
    };
    assert!(r.message.contains("24 hours"), "{}", r.message);
}

/// The same command twice is recognised and answers with the first result.
#[tokio::test]
async fn every_command_repeated_is_a_duplicate_with_the_first_result() {
    let w = World::new().await;
    let r = w
        .ok(reading(
            "rack-a1",
            "consumed",
            "2026-10-02T20:00:00Z",
            "2026-10-02T20:15:00Z",
            "100",
        ))
        .await;
    let rid = r["event_id"].as_str().unwrap().to_string();
    let mut commands = setup();
    commands.extend([
        reading("rack-a1", "consumed", "2026-10-02T20:00:00Z", "2026-10-02T20:15:00Z", "100"),
        json!({"command":"correct_reading","event_id":rid,"wh":"90","reason":"meter recalibrated"}),
        json!({"command":"transfer_credits","from_tenant":"acme-ai","to_tenant":"beta-labs","amount_eu":"2.5","memo":"spot"}),
        json!({"command":"close_period","period":"2026-10"}),
    ]);
    for c in commands {
        let first = match w.run(c.clone()).await {
            Ok(a) => a,
            Err(e) => panic!("{c}: {e}"),
        };
        let head = w.head().await;
        let again = w.run(c.clone()).await.unwrap();
        assert!(again.duplicate, "{c} again is a duplicate");
        assert_eq!(
            (again.event_id, again.position, again.version, &again.stream),
            (first.event_id, first.position, first.version, &first.stream),
            "{c}"
        );
        assert_eq!(again.to_json()["price"], first.to_json()["price"]);
        assert_eq!(w.head().await, head, "{c}: a duplicate appends nothing");
    }
}

/// The contract's example: a peak-hour consumption of 450,000 Wh costs 742,500 EU.
#[tokio::test]
async fn the_contract_example_prices_as_documented() {
    let w = World::new().await;
    let r = w
        .ok(reading(
            "rack-a1",
            "consumed",
            "2026-11-02T20:00:00Z",
            "2026-11-02T20:15:00Z",
            "450000",
        ))
        .await;
    assert_eq!(
        r["price"],
        json!({"tariff_version":1,"band":"peak","multiplier":"1.5","rate_eu_per_wh":"1.1","source_multiplier":"1","eu_per_wh":"1.65","amount_eu":"742500"})
    );
    assert_eq!(
        (r["stream"].as_str(), r["version"].as_u64(), r["duplicate"].as_bool()),
        (Some("meter-rack-a1"), Some(2), Some(false))
    );
}

/// A correction records the difference and is booked into the first open period when its
/// reading's period is closed.
#[tokio::test]
async fn a_correction_into_a_closed_period_is_a_prior_period_adjustment() {
    let w = World::new().await;
    let r = w
        .ok(reading(
            "rack-a1",
            "consumed",
            "2026-10-02T20:00:00Z",
            "2026-10-02T20:15:00Z",
            "1000",
        ))
        .await;
    w.ok(json!({"command":"close_period","period":"2026-10"})).await;
    let c = w
        .ok(json!({"command":"correct_reading","event_id":r["event_id"],"wh":"800","reason":"meter recalibrated"}))
        .await;
    // 1000 Wh × 1.65 = 1650 EU; 800 Wh × 1.65 = 1320 EU; the difference is −330 EU.
    assert_eq!(c["delta_eu"], "-330");
    let data = w
        .ledger
        .store()
        .read_all(c["position"].as_u64().unwrap() - 1, 1)
        .await
        .unwrap();
    let ev: Value = serde_json::from_str(&data[0].data).unwrap();
    assert_eq!(
        (ev["period"].as_str(), ev["booked_period"].as_str()),
        (Some("2026-10"), Some("2026-11"))
    );
}

/// A correction back to an earlier value (same reason) is a new correction; a retry of the
/// latest correction is recognised as a duplicate.
#[tokio::test]
async fn a_correction_back_to_an_earlier_value_is_recorded() {
    let w = World::new().await;
    let r = w
        .ok(reading(
            "rack-a1",
            "consumed",
            "2026-11-02T20:00:00Z",
            "2026-11-02T20:15:00Z",
            "100",
        ))
        .await;
    let correct =
        |wh: &str, reason: &str| json!({"command":"correct_reading","event_id":r["event_id"],"wh":wh,"reason":reason});
    let first = w.ok(correct("90", "recalibrated")).await;
    let back = w.ok(correct("100", "undo")).await;
    let again = w.ok(correct("90", "recalibrated")).await;
    assert_eq!(again["duplicate"], false, "{again}");
    assert_ne!(again["event_id"], first["event_id"]);
    assert_ne!(again["event_id"], back["event_id"]);
    let retry = w.ok(correct("90", "recalibrated")).await;
    assert_eq!(
        (retry["duplicate"].as_bool(), &retry["event_id"]),
        (Some(true), &again["event_id"])
    );
    // 90 Wh at 1.65 EU/Wh: the last correction's delta from 165 EU is −16.5 EU.
    assert_eq!(again["delta_eu"], "-16.5");
}

/// A client's `event_id` names one event, whatever the route: credits that reuse the id of a
/// recorded transfer are a conflict naming it (through `apply` as through the API), and the
/// transfer itself again is still a duplicate.
#[tokio::test]
async fn an_event_id_reused_by_another_kind_of_command_is_a_conflict() {
    let w = World::new().await;
    let id = "5b0c2f4e-1d2a-4c3b-9e8f-7a6b5c4d3e2f";
    let transfer = json!({"command":"transfer_credits","event_id":id,"from_tenant":"acme-ai","to_tenant":"beta-labs","amount_eu":"5","memo":"x"});
    w.ok(transfer.clone()).await;
    let msg = w
        .refused(
            json!({"command":"issue_credits","event_id":id,"tenant_id":"acme-ai","amount_eu":"5","memo":"x"}),
            Code::Conflict,
            "event_id",
        )
        .await;
    assert!(msg.contains("CreditsTransferred"), "{msg}");
    assert_eq!(w.ok(transfer).await["duplicate"], true);
}

/// A leap second (`:60`) is refused on the field that names it (found by fuzzing the
/// emission-factors route), and changes nothing.
#[tokio::test]
async fn a_leap_second_is_refused() {
    let w = World::new().await;
    let msg = w
        .refused(
            reading(
                "rack-a1",
                "consumed",
                "2026-11-02T20:14:60Z",
                "2026-11-02T20:30:00Z",
                "1",
            ),
            Code::Validation,
            "start",
        )
        .await;
    assert!(msg.contains("leap second"), "{msg}");
}

/// `submit_many` (a bulk request's path: many commands under one acquisition of the lock)
/// answers each command exactly as submitting them one by one does, and records the same
/// log: new readings, a repost of one of them inside the same batch, a conflicting value,
/// an overlap, a refused line, and a correction of a reading decided earlier in the batch.
#[tokio::test]
async fn submit_many_answers_as_one_by_one_submission_does() {
    let corrected = {
        let mut c = json!({"command":"correct_reading","wh":"1500","reason":"meter swap"});
        let w = World::new().await;
        let first = w
            .ok(reading(
                "rack-a1",
                "consumed",
                "2026-11-02T10:00:00Z",
                "2026-11-02T10:15:00Z",
                "1000",
            ))
            .await;
        c["event_id"] = first["event_id"].clone();
        c
    };
    let mut cmds = vec![
        reading(
            "rack-a1",
            "consumed",
            "2026-11-02T10:00:00Z",
            "2026-11-02T10:15:00Z",
            "1000",
        ),
        reading(
            "rack-a1",
            "consumed",
            "2026-11-02T10:15:00Z",
            "2026-11-02T10:30:00Z",
            "2000",
        ),
        reading(
            "rack-a1",
            "consumed",
            "2026-11-02T10:00:00Z",
            "2026-11-02T10:15:00Z",
            "1000",
        ),
        reading(
            "rack-a1",
            "consumed",
            "2026-11-02T10:15:00Z",
            "2026-11-02T10:30:00Z",
            "2500",
        ),
        reading(
            "rack-a1",
            "consumed",
            "2026-11-02T10:20:00Z",
            "2026-11-02T10:35:00Z",
            "100",
        ),
        reading(
            "rack-a1",
            "consumed",
            "2026-11-02T10:30:00Z",
            "2026-11-02T10:45:00Z",
            "900000",
        ),
        reading(
            "gt-01",
            "generated",
            "2026-11-02T10:00:00Z",
            "2026-11-02T10:15:00Z",
            "9000",
        ),
    ];
    cmds.push(corrected);
    let parsed: Vec<_> = cmds
        .iter()
        .map(|c| wattledger::domain::Command::from_json(c).unwrap_or_else(|r| panic!("{c}: {r:?}")))
        .collect();
    let (one, many) = (World::new().await, World::new().await);
    let mut by_one = Vec::new();
    for c in &parsed {
        by_one.push(one.ledger.submit(c).await.wait().await);
    }
    let mut by_many = Vec::new();
    for p in many.ledger.submit_many(&parsed).await {
        by_many.push(p.wait().await);
    }
    let show = |o: &Outcome| match o {
        Ok(a) => a.to_json(),
        Err(e) => e.to_json(),
    };
    for (i, (a, b)) in by_one.iter().zip(&by_many).enumerate() {
        assert_eq!(show(a), show(b), "command {i}: {}", cmds[i]);
    }
    let oks = by_one.iter().filter(|o| o.is_ok()).count();
    assert_eq!(
        oks,
        5,
        "3 new readings, a repost and a correction: {:?}",
        by_one.iter().map(show).collect::<Vec<_>>()
    );
    let log = |w: &World| {
        let store = w.ledger.store().clone();
        async move {
            store
                .read_all(0, 1000)
                .await
                .unwrap()
                .into_iter()
                .map(|r| (r.stream, r.version, r.event_id, r.event_type, r.data))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(log(&one).await, log(&many).await);
}

/// Concurrent single submissions are decided together by whoever holds the lock (one
/// `prepare` per batch); each caller still gets the answer to its own command: accepted
/// readings carry their own interval, refusals name their own meter, and of two identical
/// readings submitted at once exactly one is recorded and the other is its duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_submissions_each_get_their_own_answer() {
    const READINGS: usize = 120;
    const UNKNOWN: usize = 20;
    const PAIRS: usize = 20;
    let w = World::new().await;
    let before = w.head().await;
    let slot = |k: usize| {
        let s = t("2026-11-03T00:00:00Z") + chrono::Duration::minutes(15 * k as i64);
        let e = s + chrono::Duration::minutes(15);
        (
            wattledger::domain::time::fmt_time(&s),
            wattledger::domain::time::fmt_time(&e),
        )
    };
    let mut cmds = Vec::new();
    for k in 0..READINGS {
        let (s, e) = slot(k);
        cmds.push(reading("gt-01", "generated", &s, &e, &format!("{}", 100 + k)));
    }
    for k in 0..UNKNOWN {
        let (s, e) = slot(k);
        cmds.push(reading(&format!("nope-{k}"), "generated", &s, &e, "1"));
    }
    for k in 0..PAIRS {
        let (s, e) = slot(1000 + k);
        for _ in 0..2 {
            cmds.push(reading("rack-a1", "consumed", &s, &e, "7"));
        }
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(cmds.len()));
    let mut tasks = Vec::new();
    for c in cmds.clone() {
        let (ledger, barrier) = (w.ledger.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            ledger.execute_json(&c).await
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    let mut pair_ids: std::collections::HashMap<String, Vec<(bool, String)>> = Default::default();
    for (c, a) in cmds.iter().zip(&answers) {
        let meter = c["meter_id"].as_str().unwrap();
        match a {
            Ok(a) => {
                let v: Value = serde_json::from_str(&a.event.canonical_data()).unwrap();
                assert_eq!(v["meter_id"], c["meter_id"], "{c} got {v}");
                assert_eq!(v["start"], c["start"], "{c} got {v}");
                assert_eq!(v["energy_wh"], c["wh"], "{c} got {v}");
                if meter == "rack-a1" {
                    let key = c["start"].as_str().unwrap().to_string();
                    pair_ids
                        .entry(key)
                        .or_default()
                        .push((a.duplicate, a.event_id.to_string()));
                } else {
                    assert!(!a.duplicate, "{c}: {v}");
                }
            }
            Err(e) => {
                let v = e.to_json();
                assert!(meter.starts_with("nope-"), "{c} was refused: {v}");
                let msg = v["error"]["message"].as_str().unwrap();
                assert!(msg.contains(&format!("{meter:?}")), "{c}: {msg}");
            }
        }
    }
    assert_eq!(pair_ids.len(), PAIRS);
    for (start, p) in &pair_ids {
        assert_eq!(p.len(), 2, "{start}");
        assert_eq!(p[0].1, p[1].1, "{start}: one event id for both");
        assert_eq!(
            p.iter().filter(|(dup, _)| *dup).count(),
            1,
            "{start}: one recorded, one duplicate"
        );
    }
    assert_eq!(w.head().await - before, (READINGS + PAIRS) as u64);
}

/// A single command whose caller goes away while it waits for the lock (a client that hung
/// up) is not decided later by whoever takes the lock next: it never reaches the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_abandoned_while_waiting_for_the_lock_is_never_decided() {
    let w = World::new().await;
    let before = w.head().await;
    let abandoned = reading(
        "gt-01",
        "generated",
        "2026-11-04T00:00:00Z",
        "2026-11-04T00:15:00Z",
        "5",
    );
    let later = reading(
        "gt-01",
        "generated",
        "2026-11-04T00:15:00Z",
        "2026-11-04T00:30:00Z",
        "6",
    );
    // Hold the ledger's lock for a while on a thread of its own.
    let holder = {
        let ledger = w.ledger.clone();
        tokio::spawn(async move {
            ledger
                .with_state(|_| std::thread::sleep(std::time::Duration::from_millis(400)))
                .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let waiting = {
        let ledger = w.ledger.clone();
        tokio::spawn(async move { ledger.execute_json(&abandoned).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(!holder.is_finished(), "the lock is still held: nothing was tested");
    waiting.abort();
    assert!(waiting.await.unwrap_err().is_cancelled());
    holder.await.unwrap();
    w.ok(later).await;
    let head = w.head().await;
    assert_eq!(head, before + 1, "only the later reading is recorded");
    let last = w.ledger.store().read_all(before, 10).await.unwrap();
    assert!(last[0].data.contains("2026-11-04T00:15:00Z"), "{}", last[0].data);
}

/// A store whose `head()` waits while `held` is set: it lets a test stop a lock holder in
/// the middle of deciding a `close_period` (which asks the store for its head).
struct HeldHead {
    inner: Arc<dyn wattledger::store::EventStore>,
    held: std::sync::atomic::AtomicBool,
    entered: tokio::sync::Notify,
}

#[async_trait::async_trait]
impl wattledger::store::EventStore for HeldHead {
    fn append(&self, batch: wattledger::store::AppendBatch) -> wattledger::store::AppendTicket {
        self.inner.append(batch)
    }
    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<wattledger::store::RecordedEvent>, wattledger::store::StoreError> {
        self.inner.read_stream(stream, from_version, limit).await
    }
    async fn read_all(
        &self,
        after_position: u64,
        limit: usize,
    ) -> Result<Vec<wattledger::store::RecordedEvent>, wattledger::store::StoreError> {
        self.inner.read_all(after_position, limit).await
    }
    async fn head(&self) -> Result<wattledger::store::Head, wattledger::store::StoreError> {
        if self.held.load(std::sync::atomic::Ordering::SeqCst) {
            self.entered.notify_one();
            std::future::pending::<()>().await;
        }
        self.inner.head().await
    }
    fn watch_head(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.watch_head()
    }
    async fn shutdown(&self) {
        self.inner.shutdown().await
    }
    fn failures(&self) -> u64 {
        self.inner.failures()
    }
}

/// Commands decided together: when the task that took the lock (and with it the queue) is
/// cancelled before it reaches a queued command, that command's caller still gets its
/// answer — it queues again and is decided — instead of waiting forever or failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_whose_batch_holder_is_cancelled_is_decided_all_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(&dir.path().join("w.db")).await.unwrap();
    let store = Arc::new(HeldHead {
        inner: sqlite,
        held: std::sync::atomic::AtomicBool::new(false),
        entered: tokio::sync::Notify::new(),
    });
    let ledger = Ledger::open(store.clone(), Arc::new(FixedClock::new(t(NOW))))
        .await
        .unwrap();
    for c in setup() {
        ledger.execute_json(&c).await.unwrap();
    }
    let before = ledger.store().head().await.unwrap().position;
    // Hold the lock so that both commands queue behind it, the close first.
    let holder = {
        let ledger = ledger.clone();
        tokio::spawn(async move {
            ledger
                .with_state(|_| std::thread::sleep(std::time::Duration::from_millis(300)))
                .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    store.held.store(true, std::sync::atomic::Ordering::SeqCst);
    let closer = {
        let ledger = ledger.clone();
        tokio::spawn(async move {
            ledger
                .execute_json(&json!({"command":"close_period","period":"2026-10"}))
                .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let queued = {
        let ledger = ledger.clone();
        let c = reading(
            "gt-01",
            "generated",
            "2026-11-05T00:00:00Z",
            "2026-11-05T00:15:00Z",
            "8",
        );
        tokio::spawn(async move { ledger.execute_json(&c).await })
    };
    // The closer takes the lock with both queued, and stops in `head()`; cancel it there.
    tokio::time::timeout(std::time::Duration::from_secs(10), store.entered.notified())
        .await
        .expect("the lock holder reaches the store's head");
    assert!(holder.is_finished(), "the first lock holder is done");
    store.held.store(false, std::sync::atomic::Ordering::SeqCst);
    closer.abort();
    assert!(closer.await.unwrap_err().is_cancelled());
    let answer = tokio::time::timeout(std::time::Duration::from_secs(10), queued)
        .await
        .expect("the queued command is answered")
        .unwrap()
        .expect("and recorded");
    assert!(!answer.duplicate);
    assert_eq!(ledger.store().head().await.unwrap().position, before + 1);
}
