//! Property tests over random command sequences, folded through the pure decider and the
//! projections (no store): postings balance, books sum to zero, batteries stay physical,
//! statements reconcile, and folding twice gives the same state.

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use std::str::FromStr;
use wattledger::domain::postings::{balanced, postings};
use wattledger::domain::time::{Period, fmt_time, parse_time};
use wattledger::domain::{Command, DecideContext, Decision, Event, LedgerState};
use wattledger::projections::Books;
use wattledger::store::RecordedEvent;

fn t(s: &str) -> DateTime<Utc> {
    parse_time(s).unwrap()
}

fn setup() -> Vec<Value> {
    vec![
        json!({"command":"register_site","site_id":"s1","time_zone":"America/Chicago"}),
        json!({"command":"register_tenant","tenant_id":"t1","name":"One"}),
        json!({"command":"register_tenant","tenant_id":"t2","name":"Two"}),
        json!({"command":"register_tenant","tenant_id":"t3","name":"Three"}),
        json!({"command":"register_meter","meter_id":"gen","site_id":"s1","kind":"generation","asset_id":"gt","source":"gas_turbine","rated_power_w":"4000"}),
        json!({"command":"register_meter","meter_id":"pv","site_id":"s1","kind":"generation","asset_id":"pv","source":"solar","rated_power_w":"4000"}),
        json!({"command":"register_meter","meter_id":"bat","site_id":"s1","kind":"storage","asset_id":"b1","rated_power_w":"4000","capacity_wh":"3000","initial_wh":"500","round_trip_efficiency_pct":"90"}),
        json!({"command":"register_meter","meter_id":"l1","site_id":"s1","kind":"load","tenant_id":"t1","rated_power_w":"4000"}),
        json!({"command":"register_meter","meter_id":"l2","site_id":"s1","kind":"load","tenant_id":"t2","rated_power_w":"4000"}),
        json!({"command":"publish_tariff","site_id":"s1","effective_from":"2026-01-01T00:00:00Z",
            "rates_eu_per_wh":{"generated":"1","stored":"0.5","dispatched":"1.25","consumed":"1.1"},
            "bands":[{"name":"peak","days":["mon","tue","wed","thu","fri"],"start":"14:00","end":"20:00","multiplier":"1.5"},
                     {"name":"night","days":["mon","tue","wed","thu","fri","sat","sun"],"start":"00:00","end":"06:00","multiplier":"0.6"}],
            "default_band":{"name":"standard","multiplier":"1"},
            "source_multipliers":{"gas_turbine":"1.2","solar":"0.9"}}),
        json!({"command":"publish_emission_factors","site_id":"s1","effective_from":"2026-01-01T00:00:00Z",
            "gco2e_per_kwh":{"solar":"41","wind":"11","gas_turbine":"490","grid":"400","hydro":"24","nuclear":"12","other":"700"},
            "carbon_free":["solar","wind","hydro","nuclear"]}),
    ]
}

#[derive(Clone, Debug)]
enum Op {
    Reading {
        meter: usize,
        flow: usize,
        slot: u32,
        slots: u32,
        wh_milli: u64,
    },
    Correct {
        nth: usize,
        wh_milli: u64,
    },
    Issue {
        tenant: usize,
        eu_micro: u64,
    },
    Transfer {
        from: usize,
        to: usize,
        eu_micro: u64,
    },
    Close {
        month: u32,
    },
    Garbage(String),
}

const METERS: [&str; 5] = ["gen", "pv", "bat", "l1", "l2"];
const FLOWS: [&str; 4] = ["generated", "stored", "dispatched", "consumed"];
const TENANTS: [&str; 4] = ["t1", "t2", "t3", "ghost"];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..5usize, 0..4usize, 0..3000u32, 1..8u32, 0..1_200_000u64)
            .prop_map(|(meter, flow, slot, slots, wh_milli)| Op::Reading { meter, flow, slot, slots, wh_milli }),
        1 => (0..40usize, 0..1_200_000u64).prop_map(|(nth, wh_milli)| Op::Correct { nth, wh_milli }),
        1 => (0..4usize, 0..5_000_000_000u64).prop_map(|(tenant, eu_micro)| Op::Issue { tenant, eu_micro }),
        2 => (0..4usize, 0..4usize, 0..3_000_000_000u64).prop_map(|(from, to, eu_micro)| Op::Transfer { from, to, eu_micro }),
        1 => (1..11u32).prop_map(|month| Op::Close { month }),
        1 => "\\PC{0,40}".prop_map(Op::Garbage),
    ]
}

fn milli(n: u64) -> String {
    (Decimal::from(n) / Decimal::from(1000)).normalize().to_string()
}

fn micro(n: u64) -> String {
    (Decimal::from(n) / Decimal::from(1_000_000)).normalize().to_string()
}

/// Slots are 15 minutes from 2026-09-01 (spanning a month end and the DST change).
fn command(op: &Op, readings: &[String]) -> Value {
    let base = t("2026-09-20T00:00:00Z");
    match op {
        Op::Reading {
            meter,
            flow,
            slot,
            slots,
            wh_milli,
        } => {
            let start = base + Duration::minutes(15 * i64::from(*slot));
            let end = start + Duration::minutes(15 * i64::from(*slots));
            json!({"command":"post_reading","meter_id":METERS[*meter],"flow":FLOWS[*flow],
                "start":fmt_time(&start),"end":fmt_time(&end),"wh":milli(*wh_milli)})
        }
        Op::Correct { nth, wh_milli } => match readings.get(nth % readings.len().max(1)) {
            Some(id) => {
                json!({"command":"correct_reading","event_id":id,"wh":milli(*wh_milli),"reason":"recalibrated"})
            }
            None => {
                json!({"command":"correct_reading","event_id":"00000000-0000-0000-0000-000000000000","wh":"1","reason":"x"})
            }
        },
        Op::Issue { tenant, eu_micro } => {
            json!({"command":"issue_credits","tenant_id":TENANTS[*tenant],"amount_eu":micro(*eu_micro),"memo":"alloc"})
        }
        Op::Transfer { from, to, eu_micro } => {
            json!({"command":"transfer_credits","from_tenant":TENANTS[*from],
            "to_tenant":TENANTS[*to],"amount_eu":micro(*eu_micro),"memo":"trade"})
        }
        Op::Close { month } => {
            json!({"command":"close_period","period":format!("2026-{month:02}")})
        }
        Op::Garbage(s) => json!({"command":"post_reading","meter_id":s,"wh":s}),
    }
}

struct Run {
    recorded: Vec<(RecordedEvent, Event)>,
    state: LedgerState,
    books: Books,
}

fn run(ops: &[Op]) -> Result<Run, TestCaseError> {
    let mut state = LedgerState::default();
    let mut books = Books::default();
    let mut recorded = Vec::new();
    let mut readings: Vec<String> = Vec::new();
    let now = t("2026-11-28T12:00:00Z");
    let cmds: Vec<Value> = setup().into_iter().chain(ops.iter().map(|_| Value::Null)).collect();
    for (i, c) in cmds.into_iter().enumerate() {
        let c = if c.is_null() {
            command(&ops[i - setup().len()], &readings)
        } else {
            c
        };
        let cmd = match Command::from_json(&c) {
            Ok(cmd) => cmd,
            Err(r) => {
                prop_assert!(!r.message.is_empty());
                continue;
            }
        };
        let head = recorded
            .last()
            .map(|(r, _): &(RecordedEvent, Event)| (r.position, r.hash.clone()));
        let ctx = DecideContext { now, head };
        match state.decide(&cmd, &ctx) {
            Err(r) => prop_assert!(!r.message.is_empty() && r.field.is_some()),
            Ok(Decision::Duplicate { .. }) => {}
            Ok(Decision::Append(new)) => {
                let ps = postings(&new.event);
                prop_assert!(
                    balanced(&ps),
                    "postings of {} balance: {:?}",
                    new.event.event_type(),
                    ps
                );
                for p in &ps {
                    prop_assert!(p.amount_eu >= Decimal::ZERO && p.energy_wh >= Decimal::ZERO);
                }
                if new.event.as_reading().is_some() {
                    readings.push(new.event_id.to_string());
                }
                let position = recorded.len() as u64 + 1;
                let rec = RecordedEvent {
                    position,
                    stream: new.stream.clone(),
                    version: new.expected_version + 1,
                    event_id: new.event_id,
                    event_type: new.event.event_type().into(),
                    schema_version: 1,
                    recorded_at: new.recorded_at,
                    data: String::new(),
                    hash: format!("h{position}"),
                    prev_hash: format!("h{}", position - 1),
                };
                state.evolve(new.event_id, &new.stream, rec.version, &new.event);
                books.apply(&rec, &new.event);
                for b in state.batteries.values() {
                    prop_assert!(b.level_wh >= Decimal::ZERO, "a battery never holds less than nothing");
                    prop_assert!(
                        b.level_wh <= b.capacity_wh,
                        "a battery never holds more than its capacity"
                    );
                }
                recorded.push((rec, std::sync::Arc::unwrap_or_clone(new.event)));
            }
        }
    }
    Ok(Run { recorded, state, books })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn books_balance_and_reconcile(ops in prop::collection::vec(op(), 1..160)) {
        let r = run(&ops)?;
        // Every account's debits − credits, summed over all accounts, is zero (EU and Wh).
        let (mut eu, mut wh) = (Decimal::ZERO, Decimal::ZERO);
        for a in r.books.accounts.values() {
            eu += a.debits_eu - a.credits_eu;
            wh += a.debits_wh - a.credits_wh;
        }
        prop_assert_eq!(eu, Decimal::ZERO);
        prop_assert_eq!(wh, Decimal::ZERO);
        // Settlement of every period sums to zero.
        for nets in r.books.settlement.values() {
            let s: Decimal = nets.values().map(|n| n.0).sum();
            prop_assert_eq!(s, Decimal::ZERO);
        }
        // Statements: the closing identity holds exactly, each period opens where the last
        // closed, and the last closing equals the tenant account's balance.
        for tenant in ["t1", "t2", "t3"] {
            let mut p = Period::parse("2026-09").unwrap();
            let mut prev_closing = Decimal::ZERO;
            for _ in 0..4 {
                let s = r.books.statement(tenant, p).unwrap();
                prop_assert_eq!(s.opening_balance_eu, prev_closing);
                prop_assert_eq!(
                    s.closing_balance_eu,
                    s.opening_balance_eu - s.charges_eu + s.credits_eu + s.transfers_in_eu - s.transfers_out_eu + s.adjustments_eu
                );
                let lines: Decimal = s.lines.iter().filter(|l| l.kind == "consumption" || l.kind == "correction").map(|l| l.amount_eu).sum();
                prop_assert_eq!(lines, s.charges_eu, "charge lines sum to the charges");
                prev_closing = s.closing_balance_eu;
                p = p.next();
            }
            let bal = r.books.balance(&format!("tenant:{tenant}"))
                .map(|b| Decimal::from_str(b["balance_eu"].as_str().unwrap()).unwrap())
                .unwrap_or_default();
            prop_assert_eq!(prev_closing, bal);
            // The write model agrees with the read model.
            prop_assert_eq!(r.state.tenants[&wattledger::domain::ids::TenantId::parse(tenant).unwrap()].balance_eu, bal);
        }
    }

    /// The supply-mix attribution of random readings (all four flows, corrections, a battery
    /// with losses and an initial charge): every tenant's attributed Wh add up to what it
    /// consumed in every hour, no source is attributed more than it supplied, battery
    /// provenance never goes negative, each period's sources add up to its consumption, and
    /// folding the same events again attributes every hour the same.
    #[test]
    fn attribution_conserves_energy_hour_by_hour(ops in prop::collection::vec(op(), 1..160)) {
        use wattledger::projections::attribution::{check_invariants, site_attribution, tenant_attribution};
        let r = run(&ops)?;
        let site = site_attribution(&r.books, "s1").unwrap();
        let epsilon = Decimal::new(1, 9);
        if let Err(e) = check_invariants(&site, epsilon) {
            return Err(TestCaseError::fail(e));
        }
        for tenant in ["t1", "t2"] {
            for p in ["2026-09", "2026-10", "2026-11"] {
                let a = tenant_attribution(&r.books, std::slice::from_ref(&site), tenant, Period::parse(p).unwrap());
                let by: Decimal = a.by_source_wh.values().sum();
                prop_assert_eq!(by, a.consumption_wh);
                prop_assert!(a.carbon_free_wh <= a.consumption_wh && a.hourly_cfe_wh <= a.consumption_wh);
                prop_assert!(a.carbon_g >= Decimal::ZERO);
            }
        }
        let mut again = Books::default();
        for (rec, ev) in &r.recorded {
            again.apply(rec, ev);
        }
        prop_assert_eq!(site_attribution(&again, "s1").unwrap(), site);
    }

    #[test]
    fn folding_the_same_events_twice_gives_the_same_state(ops in prop::collection::vec(op(), 1..120)) {
        let r = run(&ops)?;
        let mut again = Books::default();
        let mut state = LedgerState::default();
        for (rec, ev) in &r.recorded {
            again.apply(rec, ev);
            state.evolve(rec.event_id, &rec.stream, rec.version, ev);
        }
        prop_assert_eq!(&again, &r.books);
        // And through a snapshot round trip.
        let json = serde_json::to_string(&again).unwrap();
        let back: Books = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(&back, &r.books);
        prop_assert_eq!(state.stream_versions, r.state.stream_versions);
        prop_assert_eq!(state.readings.len(), r.state.readings.len());
        for (id, b) in &r.state.batteries {
            prop_assert_eq!(state.batteries[id].level_wh, b.level_wh);
        }
    }

    /// Every event of a random sequence (readings of odd sizes and mixed prices,
    /// corrections, credits, holds) is encoded directly to the bytes the `Value` route gives.
    #[test]
    fn the_direct_encoding_is_the_canonical_json_of_every_event(ops in prop::collection::vec(op(), 1..120)) {
        let r = run(&ops)?;
        for (_, ev) in &r.recorded {
            prop_assert_eq!(ev.canonical_data(), wattledger::store::canonical_json(&ev.to_data()));
        }
    }

    /// The answer to a reading, written directly (`Accepted::reading_json`, plain and as a
    /// bulk line), is the text of `to_json`'s `Value`, for every event it takes; it takes
    /// every reading priced in one band without a job.
    #[test]
    fn the_direct_reading_answer_is_the_json_answer(ops in prop::collection::vec(op(), 1..120), duplicate in any::<bool>()) {
        let r = run(&ops)?;
        for (rec, ev) in &r.recorded {
            let a = wattledger::ledger::Accepted {
                event_id: rec.event_id,
                stream: rec.stream.clone(),
                version: rec.version,
                position: rec.position,
                duplicate,
                event: std::sync::Arc::new(ev.clone()),
                triggered: Vec::new(),
            };
            let simple = ev.as_reading().is_some_and(|x| x.job_id.is_none() && x.price.parts.is_empty());
            prop_assert_eq!(a.reading_json(None).is_some(), simple, "{}", ev.event_type());
            if let Some(text) = a.reading_json(None) {
                prop_assert_eq!(&text, &a.to_json().to_string());
                let mut line = a.to_json();
                line["line"] = json!(7);
                line["status"] = json!(if duplicate { 200 } else { 201 });
                prop_assert_eq!(a.reading_json(Some(7)).unwrap(), line.to_string());
            }
        }
    }

    /// The live projections fold the events as the ledger decided them (handed over by the
    /// writer, `store::Memo`); a restart folds them decoded from the log. Both give the same
    /// books to the last digit of every decimal's scale (compared as text: `Decimal`'s `==`
    /// would call 1.5 and 1.50 equal, and a statement would not).
    #[test]
    fn books_from_the_decided_events_are_the_books_from_the_log(ops in prop::collection::vec(op(), 1..160)) {
        let r = run(&ops)?;
        let mut decoded = Books::default();
        for (rec, ev) in &r.recorded {
            let back = Event::from_parts(ev.event_type(), &ev.canonical_data()).unwrap();
            decoded.apply(rec, &back);
        }
        prop_assert_eq!(serde_json::to_string(&decoded).unwrap(), serde_json::to_string(&r.books).unwrap());
    }

    /// Random JSON thrown at the command parser never panics, and every refusal is typed.
    #[test]
    fn the_parser_refuses_garbage_with_a_typed_error(
        name in prop_oneof![Just("post_reading".to_string()), Just("publish_tariff".to_string()), Just("register_meter".to_string()), "[a-z_]{0,20}"],
        keys in prop::collection::vec(prop_oneof![Just("wh".to_string()), Just("meter_id".to_string()), Just("start".to_string()), Just("bands".to_string()), "[a-z_]{1,12}"], 0..8),
        vals in prop::collection::vec(prop_oneof![
            Just(json!(null)), Just(json!(1e300)), Just(json!("1e400")), Just(json!(-1)), Just(json!("NaN")),
            Just(json!([{"name":"x"}])), Just(json!({"a":1})), "\\PC{0,30}".prop_map(Value::from), any::<i64>().prop_map(Value::from)
        ], 0..8),
    ) {
        let mut m = serde_json::Map::new();
        m.insert("command".into(), json!(name));
        for (k, v) in keys.iter().zip(vals) {
            m.insert(k.clone(), v);
        }
        if let Err(r) = Command::from_json(&Value::Object(m)) {
            prop_assert!(!r.errors.is_empty() || r.field.is_some());
            prop_assert!(!r.message.is_empty());
        }
    }
}

/// The generator reaches the interesting paths: readings of every flow, corrections,
/// transfers and closes are accepted in a typical run (so the properties are not vacuous).
#[test]
fn the_generator_exercises_every_kind_of_event() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let ops = prop::collection::vec(op(), 150..160)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let r = run(&ops).unwrap();
        for (_, ev) in &r.recorded {
            seen.insert(ev.event_type());
        }
    }
    for ty in [
        "EnergyGenerated",
        "EnergyStored",
        "EnergyDispatched",
        "EnergyConsumed",
        "ReadingCorrected",
        "CreditsIssued",
        "CreditsTransferred",
        "PeriodClosed",
    ] {
        assert!(seen.contains(ty), "{ty} never accepted: {seen:?}");
    }
}
