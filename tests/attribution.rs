//! Hourly supply-mix attribution, worked by hand (issue 9): the ledger records the readings,
//! the projections attribute them, and every figure below is computed in the comments.
//!
//! Emission factors (gCO2e/kWh): solar 41, wind 11, gas_turbine 490, grid 400, hydro 24,
//! nuclear 12, other 700 (the highest: `unknown` energy is counted at it); carbon-free:
//! solar, wind, hydro, nuclear.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use std::str::FromStr;
use std::sync::Arc;
use wattledger::audit::{Live, audit, replay_books};
use wattledger::domain::time::{Period, parse_time};
use wattledger::ledger::{FixedClock, Ledger};
use wattledger::projections::attribution::{check_invariants, site_attribution, tenant_attribution};
use wattledger::projections::engine::Projections;
use wattledger::store::sqlite::SqliteStore;

fn t(s: &str) -> DateTime<Utc> {
    parse_time(s).unwrap()
}

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

struct Campus {
    _dir: tempfile::TempDir,
    ledger: Arc<Ledger>,
    projections: Arc<Projections>,
}

fn factors(site: &str, from: &str) -> Value {
    json!({"command":"publish_emission_factors","site_id":site,"effective_from":from,
        "gco2e_per_kwh":{"solar":"41","wind":"11","gas_turbine":"490","grid":"400","hydro":"24","nuclear":"12","other":"700"},
        "carbon_free":["solar","wind","hydro","nuclear"]})
}

/// Site `s1` (UTC, 5 % tolerance): gas turbine `gas`, solar `pv`, battery `bat` (asset `b1`,
/// 90 % round trip, empty), loads `la` (tenant `a`) and `lb` (tenant `b`).
async fn campus(tz: &str) -> Campus {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("w.db")).await.unwrap();
    let ledger = Ledger::open(store, Arc::new(FixedClock::new(t("2026-11-28T12:00:00Z"))))
        .await
        .unwrap();
    let c = Campus {
        projections: Projections::open(ledger.store().clone(), None).await.unwrap(),
        ledger,
        _dir: dir,
    };
    c.run(&[
        json!({"command":"register_site","site_id":"s1","time_zone":tz,"loss_tolerance_pct":"5"}),
        json!({"command":"register_tenant","tenant_id":"a","name":"A"}),
        json!({"command":"register_tenant","tenant_id":"b","name":"B"}),
        json!({"command":"register_meter","meter_id":"gas","site_id":"s1","kind":"generation","asset_id":"gt","source":"gas_turbine","rated_power_w":"10000000"}),
        json!({"command":"register_meter","meter_id":"pv","site_id":"s1","kind":"generation","asset_id":"pv","source":"solar","rated_power_w":"10000000"}),
        json!({"command":"register_meter","meter_id":"bat","site_id":"s1","kind":"storage","asset_id":"b1","rated_power_w":"10000000","capacity_wh":"100000","round_trip_efficiency_pct":"90"}),
        json!({"command":"register_meter","meter_id":"la","site_id":"s1","kind":"load","tenant_id":"a","rated_power_w":"10000000"}),
        json!({"command":"register_meter","meter_id":"lb","site_id":"s1","kind":"load","tenant_id":"b","rated_power_w":"10000000"}),
        json!({"command":"publish_tariff","site_id":"s1","effective_from":"2026-01-01T00:00:00Z",
            "rates_eu_per_wh":{"generated":"1","stored":"1","dispatched":"1","consumed":"1"},
            "default_band":{"name":"flat","multiplier":"1"}}),
        factors("s1", "2026-01-01T00:00:00Z"),
    ])
    .await;
    c
}

impl Campus {
    async fn run(&self, cmds: &[Value]) {
        for c in cmds {
            self.ledger.execute_json(c).await.unwrap_or_else(|e| panic!("{c}: {e}"));
        }
        self.projections.catch_up().await.unwrap();
    }

    /// One hour-long reading from `hour`.
    async fn hour(&self, hour: &str, readings: &[(&str, &str, &str)]) {
        let s = t(hour);
        let e = s + chrono::Duration::hours(1);
        let cmds: Vec<Value> = readings
            .iter()
            .map(|(meter, flow, wh)| {
                json!({"command":"post_reading","meter_id":meter,"flow":flow,
                    "start":s.to_rfc3339(),"end":e.to_rfc3339(),"wh":wh})
            })
            .collect();
        self.run(&cmds).await;
    }

    fn tenant(&self, tenant: &str, period: &str) -> Value {
        self.projections.read_attribution(|b, sites| {
            tenant_attribution(b, sites, tenant, Period::parse(period).unwrap()).to_json(b.position)
        })
    }

    fn mix(&self, from: &str, to: &str) -> Value {
        self.projections.read_attribution(|b, sites| {
            sites
                .iter()
                .find(|s| s.site_id == "s1")
                .unwrap()
                .mix_json(b, t(from), t(to))
        })
    }

    /// Every hour keeps the invariants, and a replay of the log attributes the same.
    async fn assert_sound(&self) {
        let replayed = replay_books(self.ledger.store().as_ref()).await.unwrap();
        let fresh = site_attribution(&replayed, "s1").unwrap();
        check_invariants(&fresh, Decimal::ZERO).unwrap();
        let live = self.projections.read_attribution(|_, sites| sites[0].clone());
        assert_eq!(live, fresh, "the live attribution equals a replay's");
    }
}

fn hour_of<'a>(tenant: &'a Value, hour: &str) -> &'a Value {
    tenant["hours"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["hour"] == hour)
        .unwrap_or_else(|| panic!("no hour {hour} in {tenant}"))
}

/// 10:00–11:00: gas 600 Wh and solar 400 Wh supply; `a` takes 700, `b` 300.
/// a: gas 700×0.6 = 420, solar 700×0.4 = 280; b: gas 180, solar 120.
/// a's carbon: 420×490/1000 + 280×41/1000 = 205.8 + 11.48 = 217.28 g = 0.21728 kg; carbon-free
/// share 280/700 = 0.4. b: 180×0.49 + 120×0.041 = 88.2 + 4.92 = 93.12 g.
#[tokio::test]
async fn an_hour_of_gas_and_solar_is_split_between_two_tenants_pro_rata() {
    let c = campus("UTC").await;
    c.hour(
        "2026-11-02T10:00:00Z",
        &[
            ("gas", "generated", "600"),
            ("pv", "generated", "400"),
            ("la", "consumed", "700"),
            ("lb", "consumed", "300"),
        ],
    )
    .await;
    let a = c.tenant("a", "2026-11");
    assert_eq!(a["by_source_wh"], json!({"gas_turbine": "420", "solar": "280"}));
    assert_eq!(a["consumption_wh"], "700");
    assert_eq!(a["carbon_kg"], "0.21728");
    assert_eq!(a["carbon_free_wh"], "280");
    assert_eq!(a["carbon_free_share"], "0.4");
    assert_eq!(a["hourly_cfe_score"], "0.4");
    assert_eq!(a["flagged_hours"], 0);
    assert!(a["method"].as_str().unwrap().contains("first-in first-out"));
    let b = c.tenant("b", "2026-11");
    assert_eq!(b["by_source_wh"], json!({"gas_turbine": "180", "solar": "120"}));
    assert_eq!(b["carbon_kg"], "0.09312");
    // The positions behind it: the four readings are 11–14.
    assert_eq!(
        (a["first_position"].as_u64(), a["last_position"].as_u64()),
        (Some(11), Some(14))
    );

    let mix = c.mix("2026-11-02T00:00:00Z", "2026-11-03T00:00:00Z");
    let h = &mix["hours"][0];
    assert_eq!(h["hour"], "2026-11-02T10:00:00Z");
    assert_eq!(h["supply_wh"], "1000");
    assert_eq!(h["demand_wh"], "1000");
    assert_eq!(h["mix"], json!({"gas_turbine": "0.6", "solar": "0.4"}));
    // 600×0.49 + 400×0.041 = 294 + 16.4 = 310.4 g per 1 kWh.
    assert_eq!(h["carbon_intensity_g_per_kwh"], "310.4");
    assert_eq!(h["carbon_free_share"], "0.4");
    assert_eq!(h["flags"], json!([]));
    c.assert_sound().await;
}

/// 12:00 solar 1000: the battery stores 500 (keeps 450 after its 10 % losses), `a` takes 500.
/// 13:00 gas 1000: the battery stores 500 (keeps 450 gas), `a` takes 500.
/// 18:00 the battery dispatches 600 and gas makes 400; `a` takes 1000. First in, first out:
/// 450 solar (charged at 12:00) then 150 gas (charged at 13:00); so a gets solar 450 and gas
/// 550 at 18:00, and 300 Wh of gas stay in the battery.
#[tokio::test]
async fn a_battery_charged_at_noon_gives_back_solar_at_six_after_its_losses_first_in_first_out() {
    let c = campus("UTC").await;
    c.hour(
        "2026-11-02T12:00:00Z",
        &[
            ("pv", "generated", "1000"),
            ("bat", "stored", "500"),
            ("la", "consumed", "500"),
        ],
    )
    .await;
    c.hour(
        "2026-11-02T13:00:00Z",
        &[
            ("gas", "generated", "1000"),
            ("bat", "stored", "500"),
            ("la", "consumed", "500"),
        ],
    )
    .await;
    c.hour(
        "2026-11-02T18:00:00Z",
        &[
            ("bat", "dispatched", "600"),
            ("gas", "generated", "400"),
            ("la", "consumed", "1000"),
        ],
    )
    .await;
    let a = c.tenant("a", "2026-11");
    let six = hour_of(&a, "2026-11-02T18:00:00Z");
    assert_eq!(six["by_source_wh"], json!({"gas_turbine": "550", "solar": "450"}));
    assert_eq!(six["carbon_free_wh"], "450");
    // Month: noon solar 500, 13:00 gas 500, 18:00 solar 450 + gas 550.
    assert_eq!(a["by_source_wh"], json!({"gas_turbine": "1050", "solar": "950"}));
    assert_eq!(a["consumption_wh"], "2000");

    let mix = c.mix("2026-11-02T18:00:00Z", "2026-11-02T19:00:00Z");
    let releases = &mix["hours"][0]["battery_releases"];
    assert_eq!(
        releases,
        &json!([
            {"battery":"b1","charged_hour":"2026-11-02T12:00:00Z","wh":"450","by_source_wh":{"solar":"450"}},
            {"battery":"b1","charged_hour":"2026-11-02T13:00:00Z","wh":"150","by_source_wh":{"gas_turbine":"150"}},
        ])
    );
    let held = c.projections.read_attribution(|_, sites| sites[0].held.clone());
    assert_eq!(
        held["b1"],
        [("gas_turbine".to_string(), d("300"))].into_iter().collect()
    );
    c.assert_sound().await;
}

/// 20:00: `a` takes 1000 and nothing is metered as supply: all of it is `unknown`, counted
/// at the highest factor (other, 700 g/kWh): 0.7 kg, and the hour is flagged.
/// 21:00: gas 500, `a` takes 1000: 500 gas and 500 unknown, flagged (the gap is 50 %).
#[tokio::test]
async fn an_hour_without_enough_metered_supply_is_flagged_and_the_rest_is_unknown() {
    let c = campus("UTC").await;
    c.hour("2026-11-02T20:00:00Z", &[("la", "consumed", "1000")]).await;
    c.hour(
        "2026-11-02T21:00:00Z",
        &[("gas", "generated", "500"), ("la", "consumed", "1000")],
    )
    .await;
    let a = c.tenant("a", "2026-11");
    let eight = hour_of(&a, "2026-11-02T20:00:00Z");
    assert_eq!(eight["by_source_wh"], json!({"unknown": "1000"}));
    assert_eq!(eight["carbon_kg"], "0.7");
    assert!(
        eight["flags"][0].as_str().unwrap().contains("no metered supply"),
        "{eight}"
    );
    let nine = hour_of(&a, "2026-11-02T21:00:00Z");
    assert_eq!(nine["by_source_wh"], json!({"gas_turbine": "500", "unknown": "500"}));
    assert!(nine["flags"][0].as_str().unwrap().contains("loss tolerance"), "{nine}");
    assert_eq!(a["flagged_hours"], 2);
    // 0.7 + 500×0.49/1000 + 500×0.7/1000 = 0.7 + 0.245 + 0.35 = 1.295 kg.
    assert_eq!(a["carbon_kg"], "1.295");
    assert_eq!(a["carbon_free_share"], "0");
    c.assert_sound().await;
}

/// Within the loss tolerance (supply 1030, demand 1000: 2.9 %) the hour is not flagged; the
/// 30 Wh of losses are simply not attributed (each source gives 1000/1030 of itself).
#[tokio::test]
async fn losses_within_the_tolerance_are_not_flagged_and_no_source_gives_more_than_it_made() {
    let c = campus("UTC").await;
    c.hour(
        "2026-11-02T10:00:00Z",
        &[
            ("gas", "generated", "515"),
            ("pv", "generated", "515"),
            ("la", "consumed", "1000"),
        ],
    )
    .await;
    let a = c.tenant("a", "2026-11");
    assert_eq!(a["by_source_wh"], json!({"gas_turbine": "500", "solar": "500"}));
    assert_eq!(a["flagged_hours"], 0);
    c.assert_sound().await;
}

/// New York leaves daylight time on 2026-11-01: its local day runs 04:00Z–05:00Z the next
/// day, 25 hours. A reading every UTC hour (solar 100, gas 100, `a` 200): the mix read over
/// the local day has 25 hours, and `a` is attributed 2,500 Wh of each.
#[tokio::test]
async fn a_daylight_saving_day_has_twenty_five_hours_of_attribution() {
    let c = campus("America/New_York").await;
    let start = t("2026-11-01T04:00:00Z");
    for h in 0..25 {
        let at = (start + chrono::Duration::hours(h)).to_rfc3339();
        c.hour(
            &at,
            &[
                ("pv", "generated", "100"),
                ("gas", "generated", "100"),
                ("la", "consumed", "200"),
            ],
        )
        .await;
    }
    let mix = c.mix("2026-11-01T00:00:00-04:00", "2026-11-02T00:00:00-05:00");
    assert_eq!(mix["hours"].as_array().unwrap().len(), 25);
    let a = c.tenant("a", "2026-11");
    assert_eq!(a["by_source_wh"], json!({"gas_turbine": "2500", "solar": "2500"}));
    assert_eq!(a["consumption_wh"], "5000");
    c.assert_sound().await;
}

/// A reading that spans hours is spread over them by time; a correction moves the hours it
/// touches; totals are conserved hour by hour; a second factors version applies from its
/// `effective_from`; the statement carries the attribution.
#[tokio::test]
async fn corrections_spread_readings_and_new_factor_versions_keep_every_hour_conserved() {
    let c = campus("UTC").await;
    // 10:30–11:30: gas 1000 over both hours (500 each); a 600 over both (300 each).
    let s = "2026-11-02T10:30:00Z";
    let e = "2026-11-02T11:30:00Z";
    c.run(&[
        json!({"command":"post_reading","meter_id":"gas","flow":"generated","start":s,"end":e,"wh":"1000"}),
        json!({"command":"post_reading","meter_id":"pv","flow":"generated","start":s,"end":e,"wh":"300"}),
        json!({"command":"post_reading","meter_id":"la","flow":"consumed","start":s,"end":e,"wh":"1300"}),
        factors("s1", "2026-11-02T11:00:00Z"),
    ])
    .await;
    let id = c
        .ledger
        .store()
        .read_stream("meter-la", 1, 10)
        .await
        .unwrap()
        .last()
        .unwrap()
        .event_id;
    c.run(&[json!({"command":"correct_reading","event_id":id,"wh":"1000","reason":"meter swap"})])
        .await;
    // After the correction a takes 500 per hour of 650 supplied.
    let a = c.tenant("a", "2026-11");
    assert_eq!(a["consumption_wh"], "1000");
    let ten = hour_of(&a, "2026-11-02T10:00:00Z");
    assert_eq!(ten["consumption_wh"], "500");
    // 500 of 650 each hour: gas 500×500/650, solar 500×150/650.
    let by: Decimal = ten["by_source_wh"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| d(v.as_str().unwrap()))
        .sum();
    assert_eq!(by.round_dp(6), d("500"));
    let mix = c.mix("2026-11-02T10:00:00Z", "2026-11-02T12:00:00Z");
    assert_eq!(mix["hours"][0]["factors_version"], 1);
    assert_eq!(mix["hours"][1]["factors_version"], 2);
    let st = c.projections.statement("a", Period::parse("2026-11").unwrap()).unwrap();
    let j = st.to_json();
    assert_eq!(j["attribution"]["consumption_wh"], "1000");
    assert!(
        wattledger::projections::render::statement_csv(&st).contains("attributed_source"),
        "the CSV statement lists the sources"
    );
    assert!(wattledger::projections::render::statement_html(&st).contains("Sources of this consumption"));
    c.assert_sound().await;
    let report = audit(c.ledger.store().as_ref(), Live::None, |_, _| {}).await.unwrap();
    assert!(report.clean, "{}", report.human());
    assert!(
        report
            .attribution
            .as_deref()
            .unwrap()
            .starts_with("2 site-hours of 1 sites"),
        "{}",
        report.human()
    );
}

/// Live books whose hourly flows were altered (here: solar turned into gas in one hour) are
/// found by the audit, which replays the attribution and compares it.
#[tokio::test]
async fn the_audit_finds_an_attribution_that_differs_from_the_replay() {
    let c = campus("UTC").await;
    c.hour(
        "2026-11-02T10:00:00Z",
        &[
            ("gas", "generated", "600"),
            ("pv", "generated", "400"),
            ("la", "consumed", "1000"),
        ],
    )
    .await;
    let mut live = c.projections.read(|b| b.clone());
    let hour = live.hours.get_mut("s1").unwrap().values_mut().next().unwrap();
    let solar = hour.generated.remove("solar").unwrap();
    *hour.generated.get_mut("gas_turbine").unwrap() += solar;
    let report = audit(c.ledger.store().as_ref(), Live::Books(Box::new(live)), |_, _| {})
        .await
        .unwrap();
    assert!(!report.clean);
    assert!(
        report.findings.iter().any(|f| f.kind == "attribution"),
        "{}",
        report.human()
    );
}

/// Emission factors are versioned forward, refused with the field named when incomplete.
#[tokio::test]
async fn emission_factors_are_versioned_forward_and_checked() {
    let c = campus("UTC").await;
    let same = c
        .ledger
        .execute_json(&factors("s1", "2026-01-01T00:00:00Z"))
        .await
        .unwrap();
    assert!(same.duplicate, "the same version again is a duplicate");
    assert_eq!(same.to_json()["factors_version"], 1);
    let mut other = factors("s1", "2026-01-01T00:00:00Z");
    other["gco2e_per_kwh"]["grid"] = json!("399");
    let e = c.ledger.execute_json(&other).await.unwrap_err();
    assert!(e.to_string().contains("effective_from"), "{e}");
    let earlier = c
        .ledger
        .execute_json(&factors("s1", "2025-06-01T00:00:00Z"))
        .await
        .unwrap_err();
    assert!(earlier.to_string().contains("versioned forward"), "{earlier}");
    let mut missing = factors("s1", "2026-12-01T00:00:00Z");
    missing["gco2e_per_kwh"].as_object_mut().unwrap().remove("wind");
    let e = c.ledger.execute_json(&missing).await.unwrap_err();
    assert!(e.to_string().contains("gco2e_per_kwh.wind"), "{e}");
    let mut bad = factors("s1", "2026-12-01T00:00:00Z");
    bad["carbon_free"] = json!(["solar", "coal"]);
    let e = c.ledger.execute_json(&bad).await.unwrap_err();
    assert!(e.to_string().contains("carbon_free"), "{e}");
    let mut neg = factors("s1", "2026-12-01T00:00:00Z");
    neg["gco2e_per_kwh"]["solar"] = json!("-1");
    let e = c.ledger.execute_json(&neg).await.unwrap_err();
    assert!(e.to_string().contains("gco2e_per_kwh.solar"), "{e}");
    let ghost = c
        .ledger
        .execute_json(&factors("nowhere", "2026-12-01T00:00:00Z"))
        .await
        .unwrap_err();
    assert!(ghost.to_string().contains("site_id"), "{ghost}");
}

/// A closed period's statement keeps the attribution it had at the close, like its money;
/// a generation reading for that month arriving later changes the hour (and the attribution
/// read), not the final statement.
#[tokio::test]
async fn a_closed_period_statement_keeps_its_attribution_and_late_supply_moves_only_the_hours() {
    let c = campus("UTC").await;
    c.hour(
        "2026-10-20T10:00:00Z",
        &[("gas", "generated", "500"), ("la", "consumed", "1000")],
    )
    .await;
    c.run(&[json!({"command":"close_period","period":"2026-10"})]).await;
    let october = Period::parse("2026-10").unwrap();
    let at_close = c.projections.statement("a", october).unwrap().to_json();
    assert_eq!(
        at_close["attribution"]["by_source_wh"],
        json!({"gas_turbine": "500", "unknown": "500"})
    );
    // The solar meter's reading for that hour arrives late.
    c.hour("2026-10-20T10:00:00Z", &[("pv", "generated", "500")]).await;
    assert_eq!(c.projections.statement("a", october).unwrap().to_json(), at_close);
    let now = c.tenant("a", "2026-10");
    assert_eq!(now["by_source_wh"], json!({"gas_turbine": "500", "solar": "500"}));
    c.assert_sound().await;
}
