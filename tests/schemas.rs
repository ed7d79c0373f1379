//! The JSON Schemas in `schemas/` are public contract: one per event type, each validating
//! the stored event document `{event_id, event_type, schema_version, recorded_at, data}`.
//!
//! These tests drive the real write model (`LedgerState::decide` / `evolve`) through a small
//! campus scenario so that the documents checked are the ones the ledger actually writes,
//! then check that every schema accepts them, accepts nothing of another type, and refuses
//! broken variants for the right reason.

use chrono::{DateTime, Utc};
use jsonschema::Validator;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use uuid::Uuid;
use wattledger::digest::Sha256;
use wattledger::domain::events::{EVENT_TYPES, SCHEMA_VERSION};
use wattledger::domain::time::{fmt_time, parse_time};
use wattledger::domain::{Command, DecideContext, Decision, Event, LedgerState};

const SCHEMA_DIALECT: &str = "https://json-schema.org/draft/2020-12/schema";
const SCHEMA_BASE: &str = "https://wattledger.dev/schemas/";

fn schemas_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas")
}

fn load_schema(event_type: &str) -> Value {
    let path = schemas_dir().join(format!("{event_type}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Draft 2020-12 treats `format` as an annotation by default; assert it here.
fn compile(event_type: &str, schema: &Value) -> Validator {
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(schema)
        .unwrap_or_else(|e| panic!("schemas/{event_type}.json does not compile: {e}"))
}

fn validators() -> BTreeMap<&'static str, Validator> {
    EVENT_TYPES.iter().map(|t| (*t, compile(t, &load_schema(t)))).collect()
}

fn errors_of(v: &Validator, doc: &Value) -> Vec<String> {
    v.iter_errors(doc)
        .map(|e| format!("at {:?}: {e}", e.instance_path.as_str()))
        .collect()
}

/// The stored document of an event, as the ledger appends it.
fn document(event_id: Uuid, recorded_at: DateTime<Utc>, ev: &Event) -> Value {
    json!({
        "event_id": event_id.to_string(),
        "event_type": ev.event_type(),
        "schema_version": SCHEMA_VERSION,
        "recorded_at": fmt_time(&recorded_at),
        "data": ev.to_data(),
    })
}

/// A ledger without a store: decides commands and folds the events they record.
struct Scenario {
    state: LedgerState,
    position: u64,
    /// (label, event, document), in the order recorded.
    recorded: Vec<(&'static str, Event, Value)>,
}

impl Scenario {
    fn new() -> Self {
        Self {
            state: LedgerState::default(),
            position: 0,
            recorded: Vec::new(),
        }
    }

    fn head_hash(&self) -> String {
        hex::encode(Sha256::digest(format!("record {}", self.position)))
    }

    /// Runs a command at `now` and returns the id of the event it recorded.
    fn run(&mut self, label: &'static str, now: &str, cmd: Value) -> Uuid {
        let command = Command::from_json(&cmd).unwrap_or_else(|r| panic!("{label}: command refused: {r:?}"));
        let head = matches!(command, Command::ClosePeriod { .. }).then(|| (self.position, self.head_hash()));
        let ctx = DecideContext {
            now: parse_time(now).unwrap(),
            head,
        };
        let new = match self.state.decide(&command, &ctx) {
            Ok(Decision::Append(new)) => new,
            other => panic!("{label}: expected an event to append, got {other:?}"),
        };
        self.position += 1;
        self.state
            .evolve(new.event_id, &new.stream, new.expected_version + 1, &new.event);
        let doc = document(new.event_id, new.recorded_at, &new.event);
        self.recorded
            .push((label, std::sync::Arc::unwrap_or_clone(new.event), doc));
        new.event_id
    }

    /// Records what the ledger owes the log at `now` (an expiry, a spending limit flag).
    fn due(&mut self, label: &'static str, now: &str) {
        let new = self
            .state
            .next_due(parse_time(now).unwrap())
            .unwrap_or_else(|| panic!("{label}: nothing is due at {now}"));
        self.position += 1;
        self.state
            .evolve(new.event_id, &new.stream, new.expected_version + 1, &new.event);
        let doc = document(new.event_id, new.recorded_at, &new.event);
        self.recorded
            .push((label, std::sync::Arc::unwrap_or_clone(new.event), doc));
    }
}

/// A campus in Memphis (America/Chicago) through one billing month: every event type, a
/// reading split across the standard/peak boundary, a battery with a round-trip efficiency,
/// holds (placed, captured, released, drawn by a job, expired), a spending limit set and
/// exceeded, a downward correction and the month's close.
fn scenario() -> Scenario {
    let mut s = Scenario::new();
    let setup = "2026-10-15T09:30:00Z";
    s.run(
        "SiteRegistered",
        setup,
        json!({"command": "register_site", "site_id": "memphis-1", "time_zone": "America/Chicago", "loss_tolerance_pct": "2.5"}),
    );
    s.run(
        "TenantRegistered",
        setup,
        json!({"command": "register_tenant", "tenant_id": "acme-ai", "name": "Acme AI Labs, Inc."}),
    );
    s.run(
        "TenantRegistered:beta",
        setup,
        json!({"command": "register_tenant", "tenant_id": "beta.compute", "name": "Beta Compute"}),
    );
    s.run(
        "TariffPublished",
        setup,
        json!({
            "command": "publish_tariff",
            "site_id": "memphis-1",
            "effective_from": "2026-01-01T00:00:00Z",
            "rates_eu_per_wh": {"generated": "1", "stored": "0.95", "dispatched": "1", "consumed": "1.1"},
            "bands": [
                {"name": "peak", "days": ["mon", "tue", "wed", "thu", "fri"], "start": "14:00", "end": "20:00", "multiplier": "1.5"},
                {"name": "night", "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": "00:00", "end": "06:00", "multiplier": "0.6"}
            ],
            "default_band": {"name": "standard", "multiplier": "1"},
            "source_multipliers": {"gas_turbine": "1.2", "solar": "0.9", "grid": "1"}
        }),
    );
    s.run(
        "EmissionFactorsPublished",
        setup,
        json!({"command": "publish_emission_factors", "site_id": "memphis-1", "effective_from": "2026-01-01T00:00:00Z",
               "gco2e_per_kwh": {"solar": "41", "wind": "11", "gas_turbine": "490.5", "grid": "400", "hydro": "24",
                                  "nuclear": "12", "other": "700"},
               "carbon_free": ["wind", "solar", "hydro", "nuclear"]}),
    );
    s.run(
        "MeterRegistered:generation",
        setup,
        json!({"command": "register_meter", "meter_id": "pv-meter-1", "site_id": "memphis-1", "kind": "generation",
               "asset_id": "pv-array-1", "source": "solar", "rated_power_w": "5000000"}),
    );
    s.run(
        "MeterRegistered",
        setup,
        json!({"command": "register_meter", "meter_id": "bess-meter-1", "site_id": "memphis-1", "kind": "storage",
               "asset_id": "bess-1", "rated_power_w": "2000000", "capacity_wh": "8000000", "initial_wh": "1000000",
               "round_trip_efficiency_pct": "92.5"}),
    );
    s.run(
        "MeterRegistered:load",
        setup,
        json!({"command": "register_meter", "meter_id": "hall-a.acme", "site_id": "memphis-1", "kind": "load",
               "tenant_id": "acme-ai", "rated_power_w": "3000000", "active_from": "2026-11-01T00:00:00Z"}),
    );
    let credits = "2026-11-01T08:00:00.250Z";
    s.run(
        "CreditsIssued",
        credits,
        json!({"command": "issue_credits", "tenant_id": "acme-ai", "amount_eu": "5000000", "memo": "November prepayment"}),
    );
    s.run(
        "CreditsTransferred",
        credits,
        json!({"command": "transfer_credits", "from_tenant": "acme-ai", "to_tenant": "beta.compute", "amount_eu": "2500.5"}),
    );
    s.run(
        "SpendingLimitSet",
        credits,
        json!({"command": "set_spending_limit", "tenant_id": "acme-ai", "limit_eu": "3000000", "period": "2026-11"}),
    );
    s.run(
        "HoldPlaced",
        credits,
        json!({"command": "place_hold", "hold_id": "train-7.res", "tenant_id": "acme-ai", "amount_eu": "100000",
               "expires_at": "2026-11-02T23:00:00Z", "memo": "36 h training run", "job_id": "train-7"}),
    );
    s.run(
        "HoldPlaced:plain",
        credits,
        json!({"command": "place_hold", "hold_id": "h_2", "tenant_id": "acme-ai", "amount_eu": "5000",
               "expires_at": "2026-11-02T22:00:00Z"}),
    );
    // Monday 2 November 2026; CST = UTC-6.
    let readings = "2026-11-02T21:00:00Z";
    s.run(
        "EnergyStored",
        readings,
        json!({"command": "post_reading", "meter_id": "bess-meter-1", "flow": "stored",
               "start": "2026-11-02T09:00:00Z", "end": "2026-11-02T09:15:00Z", "wh": "250000"}),
    );
    s.run(
        "EnergyDispatched",
        readings,
        json!({"command": "post_reading", "meter_id": "bess-meter-1", "flow": "dispatched",
               "start": "2026-11-02T20:00:00Z", "end": "2026-11-02T20:15:00Z", "wh": "400000.5"}),
    );
    s.run(
        "EnergyGenerated",
        readings,
        json!({"command": "post_reading", "meter_id": "pv-meter-1", "flow": "generated",
               "start": "2026-11-02T20:15:00Z", "end": "2026-11-02T20:30:00Z", "wh": "1100000.125", "quality": "estimated"}),
    );
    s.run(
        "HoldCaptured",
        readings,
        json!({"command": "capture_hold", "hold_id": "h_2", "amount_eu": "1000.5"}),
    );
    s.run(
        "HoldReleased",
        readings,
        json!({"command": "release_hold", "hold_id": "h_2"}),
    );
    // 13:30–14:30 CST: half standard, half peak; the job's hold pays the first 100000 EU.
    let consumed = s.run(
        "EnergyConsumed",
        readings,
        json!({"command": "post_reading", "meter_id": "hall-a.acme", "flow": "consumed",
               "start": "2026-11-02T19:30:00Z", "end": "2026-11-02T20:30:00Z", "wh": "2400000", "job_id": "train-7"}),
    );
    s.due("SpendingLimitExceeded", readings);
    s.due("HoldExpired", "2026-11-03T10:15:00Z");
    s.run(
        "ReadingCorrected",
        "2026-11-03T10:15:00Z",
        json!({"command": "correct_reading", "event_id": consumed.to_string(), "wh": "2350000.5",
               "reason": "CT ratio of hall A was misconfigured"}),
    );
    s.run(
        "PeriodClosed",
        "2026-12-01T00:05:00Z",
        json!({"command": "close_period", "period": "2026-11"}),
    );
    s
}

/// One document per label; the label of an event type's main example is the type's name.
fn fixtures() -> BTreeMap<&'static str, Value> {
    let mut out = BTreeMap::new();
    for (label, _, doc) in scenario().recorded {
        assert!(out.insert(label, doc).is_none(), "label {label} used twice");
    }
    out
}

#[test]
fn every_event_type_has_exactly_one_schema_file() {
    let types: BTreeSet<&str> = EVENT_TYPES.iter().copied().collect();
    assert_eq!(types.len(), EVENT_TYPES.len(), "EVENT_TYPES lists a name twice");
    let mut files = BTreeSet::new();
    for entry in std::fs::read_dir(schemas_dir()).expect("schemas/ exists") {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) == Some("json") {
            files.insert(path.file_stem().unwrap().to_str().unwrap().to_string());
        }
    }
    let expected: BTreeSet<String> = types.iter().map(|t| t.to_string()).collect();
    let missing: Vec<_> = expected.difference(&files).collect();
    let extra: Vec<_> = files.difference(&expected).collect();
    assert!(missing.is_empty(), "event types without a schema: {missing:?}");
    assert!(extra.is_empty(), "schema files for no event type: {extra:?}");
}

fn walk<'a>(v: &'a Value, at: String, visit: &mut impl FnMut(&str, &'a Value)) {
    visit(&at, v);
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                walk(x, format!("{at}/{k}"), visit);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                walk(x, format!("{at}/{i}"), visit);
            }
        }
        _ => {}
    }
}

#[test]
fn schemas_are_standalone_strict_draft_2020_12() {
    for t in EVENT_TYPES {
        let schema = load_schema(t);
        compile(t, &schema);
        assert_eq!(schema["$schema"], SCHEMA_DIALECT, "{t}: $schema");
        assert_eq!(schema["$id"], format!("{SCHEMA_BASE}{t}.json"), "{t}: $id");
        assert_eq!(schema["title"], t, "{t}: title");
        assert!(
            schema["description"].as_str().is_some_and(|d| !d.trim().is_empty()),
            "{t}: description"
        );
        assert_eq!(schema["properties"]["event_type"]["const"], t, "{t}: event_type");
        assert_eq!(
            schema["properties"]["schema_version"]["const"],
            json!(SCHEMA_VERSION),
            "{t}: schema_version"
        );
        let defs = schema["$defs"].as_object().unwrap_or_else(|| panic!("{t}: no $defs"));
        walk(&schema, String::new(), &mut |at, v| {
            let Value::Object(m) = v else { return };
            if let Some(r) = m.get("$ref") {
                let r = r.as_str().unwrap_or_else(|| panic!("{t}{at}: $ref is not a string"));
                let name = r
                    .strip_prefix("#/$defs/")
                    .unwrap_or_else(|| panic!("{t}{at}: $ref {r:?} leaves the file"));
                assert!(defs.contains_key(name), "{t}{at}: $ref {r:?} names no definition");
            }
            if m.get("type") == Some(&json!("object")) {
                let closed = m.get("additionalProperties") == Some(&json!(false));
                let keyed = m.contains_key("propertyNames");
                assert!(closed || keyed, "{t}{at}: an object schema must refuse unknown fields");
            }
        });
    }
}

#[test]
fn the_ledger_writes_documents_its_schemas_accept() {
    let validators = validators();
    let s = scenario();
    let seen: BTreeSet<&str> = s.recorded.iter().map(|(_, ev, _)| ev.event_type()).collect();
    let all: BTreeSet<&str> = EVENT_TYPES.iter().copied().collect();
    assert_eq!(seen, all, "the scenario must record every event type");

    for (label, ev, doc) in &s.recorded {
        let t = ev.event_type();
        let errors = errors_of(&validators[t], doc);
        assert!(
            errors.is_empty(),
            "{label}: schemas/{t}.json refuses\n{doc:#}\n{}",
            errors.join("\n")
        );
        // The document is enough to rebuild the event: the data is the whole contract.
        let back = Event::from_parts(t, &doc["data"].to_string()).unwrap();
        assert_eq!(&back, ev, "{label}: the data does not round-trip");
    }

    // The scenario exercises what the schemas are most particular about.
    let f = fixtures();
    let mixed = &f["EnergyConsumed"]["data"]["price"];
    assert_eq!(mixed["band"], "mixed", "{mixed:#}");
    let parts = mixed["parts"].as_array().expect("a mixed price lists its parts");
    assert_eq!(
        parts.iter().map(|p| p["band"].as_str().unwrap()).collect::<Vec<_>>(),
        ["standard", "peak"]
    );
    let storage = &f["MeterRegistered"]["data"];
    assert_eq!(storage["kind"], "storage");
    assert_eq!(storage["capacity_wh"], "8000000");
    assert_eq!(storage["initial_wh"], "1000000");
    assert_eq!(storage["round_trip_efficiency_pct"], "92.5");
    let correction = &f["ReadingCorrected"]["data"];
    assert_eq!(correction["delta_wh"], "-49999.5", "{correction:#}");
    assert!(
        correction["delta_eu"].as_str().unwrap().starts_with('-'),
        "{correction:#}"
    );
    assert!(f["EnergyGenerated"]["data"]["price"].get("parts").is_none());
    assert_eq!(f["PeriodClosed"]["data"]["chain_hash"].as_str().unwrap().len(), 64);
}

/// The stored `data` is written straight from the typed event; it must be byte for byte
/// what the `Value` route gives, for every event type, or the hash chain would change.
#[test]
fn the_direct_encoding_is_the_canonical_json_of_every_event_type() {
    let s = scenario();
    let seen: BTreeSet<&str> = s.recorded.iter().map(|(_, ev, _)| ev.event_type()).collect();
    assert_eq!(
        seen.len(),
        EVENT_TYPES.len(),
        "the scenario must record every event type"
    );
    for (label, ev, _) in &s.recorded {
        let expected = wattledger::store::canonical_json(&ev.to_data());
        assert_eq!(ev.canonical_data(), expected, "{label}");
    }
}

#[test]
fn a_document_is_accepted_only_by_its_own_schema() {
    let validators = validators();
    for (label, doc) in fixtures() {
        let own = doc["event_type"].as_str().unwrap();
        for (t, v) in &validators {
            assert_eq!(
                v.is_valid(&doc),
                *t == own,
                "{label} ({own}) against schemas/{t}.json: {:?}",
                errors_of(v, &doc)
            );
        }
    }
}

/// A change to a fixture document, at a JSON pointer.
enum Change {
    Remove,
    Set(Value),
}
use Change::{Remove, Set};

struct Case {
    fixture: &'static str,
    at: &'static str,
    change: Change,
    /// Whether the schema must still accept the changed document.
    valid: bool,
}

fn reject(fixture: &'static str, at: &'static str, change: Change) -> Case {
    Case {
        fixture,
        at,
        change,
        valid: false,
    }
}

fn accept(fixture: &'static str, at: &'static str, change: Change) -> Case {
    Case {
        fixture,
        at,
        change,
        valid: true,
    }
}

fn apply(doc: &Value, at: &str, change: &Change) -> Value {
    let mut doc = doc.clone();
    let (parent, key) = at.rsplit_once('/').expect("a JSON pointer");
    let target = doc
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("no {parent:?} in the fixture"));
    match (target, change) {
        (Value::Object(m), Remove) => {
            assert!(m.remove(key).is_some(), "nothing to remove at {at}");
        }
        (Value::Object(m), Set(v)) => {
            m.insert(key.to_string(), v.clone());
        }
        (Value::Array(a), Remove) => {
            a.remove(key.parse::<usize>().unwrap());
        }
        (Value::Array(a), Set(v)) => {
            a[key.parse::<usize>().unwrap()] = v.clone();
        }
        (other, _) => panic!("{parent:?} is {other}, not a container"),
    }
    doc
}

fn cases() -> Vec<Case> {
    let s = |x: &str| Set(json!(x));
    let long = |n: usize| Set(json!("x".repeat(n)));
    vec![
        // The envelope (every schema shares it).
        reject("SiteRegistered", "/event_type", s("TenantRegistered")),
        reject("SiteRegistered", "/schema_version", Set(json!(2))),
        reject("SiteRegistered", "/schema_version", s("1")),
        reject("SiteRegistered", "/event_id", s("site-memphis-1")),
        reject("SiteRegistered", "/event_id", s("6F1E2C3A-9B7D-4E21-8A55-77C01D3E9F42")),
        reject("SiteRegistered", "/recorded_at", s("2026-10-15 09:30:00")),
        reject("SiteRegistered", "/recorded_at", Remove),
        reject("SiteRegistered", "/stream", s("site-memphis-1")),
        reject("SiteRegistered", "/data", Remove),
        accept("SiteRegistered", "/recorded_at", s("2026-10-15T09:30:00.123Z")),
        // SiteRegistered
        reject("SiteRegistered", "/data/time_zone", Remove),
        reject("SiteRegistered", "/data/time_zone", s("Chicago time")),
        reject("SiteRegistered", "/data/loss_tolerance_pct", Set(json!(2.5))),
        reject("SiteRegistered", "/data/loss_tolerance_pct", s("100.5")),
        reject("SiteRegistered", "/data/loss_tolerance_pct", s("-1")),
        reject("SiteRegistered", "/data/site_id", s("Memphis 1")),
        reject("SiteRegistered", "/data/site_id", s("")),
        reject("SiteRegistered", "/data/region", s("us-south")),
        accept("SiteRegistered", "/data/loss_tolerance_pct", s("100")),
        // TariffPublished
        reject("TariffPublished", "/data/rates_eu_per_wh/consumed", Set(json!(1.1))),
        reject("TariffPublished", "/data/rates_eu_per_wh/consumed", s("-1.1")),
        reject("TariffPublished", "/data/rates_eu_per_wh/consumed", s("1e3")),
        reject("TariffPublished", "/data/rates_eu_per_wh/stored", Remove),
        reject("TariffPublished", "/data/rates_eu_per_wh/exported", s("1")),
        reject("TariffPublished", "/data/bands/0/days", Set(json!(["mon", "funday"]))),
        reject("TariffPublished", "/data/bands/0/days", Set(json!(["mon", "mon"]))),
        reject("TariffPublished", "/data/bands/0/days", Set(json!([]))),
        reject("TariffPublished", "/data/bands/0/start", s("7:00")),
        reject("TariffPublished", "/data/bands/0/start", s("24:00")),
        reject("TariffPublished", "/data/bands/0/end", s("24:01")),
        reject("TariffPublished", "/data/bands/0/end", s("20:60")),
        reject("TariffPublished", "/data/bands/0/name", s("mixed")),
        reject("TariffPublished", "/data/bands/0/name", s("")),
        reject("TariffPublished", "/data/bands/0/multiplier", s("2000000")),
        reject("TariffPublished", "/data/bands/0/colour", s("red")),
        reject("TariffPublished", "/data/bands", Remove),
        reject("TariffPublished", "/data/source_multipliers/coal", s("2")),
        reject("TariffPublished", "/data/source_multipliers/solar", Set(json!(0.9))),
        reject("TariffPublished", "/data/tariff_version", Set(json!(0))),
        reject("TariffPublished", "/data/tariff_version", s("1")),
        reject("TariffPublished", "/data/default_band/name", s("mixed")),
        reject("TariffPublished", "/data/default_band/colour", s("grey")),
        reject(
            "TariffPublished",
            "/data/effective_from",
            s("2026-01-01T00:00:00+01:00"),
        ),
        accept("TariffPublished", "/data/bands/1/end", s("24:00")),
        accept("TariffPublished", "/data/bands", Set(json!([]))),
        accept("TariffPublished", "/data/source_multipliers", Set(json!({}))),
        accept("TariffPublished", "/data/rates_eu_per_wh/consumed", s("1000000")),
        // PeriodClosed
        reject("PeriodClosed", "/data/period", s("2026-13")),
        reject("PeriodClosed", "/data/period", s("2026-1")),
        reject("PeriodClosed", "/data/period", s("1969-12")),
        reject("PeriodClosed", "/data/last_position", Set(json!(-1))),
        reject("PeriodClosed", "/data/last_position", s("14")),
        reject("PeriodClosed", "/data/chain_hash", s("")),
        reject("PeriodClosed", "/data/chain_hash", Set(json!("AB".repeat(32)))),
        reject("PeriodClosed", "/data/chain_hash", Remove),
        accept("PeriodClosed", "/data/last_position", Set(json!(0))),
        // MeterRegistered: storage
        reject("MeterRegistered", "/data/kind", s("battery")),
        reject("MeterRegistered", "/data/capacity_wh", s("-5")),
        reject("MeterRegistered", "/data/capacity_wh", s("0")),
        reject("MeterRegistered", "/data/capacity_wh", Set(json!(8000000))),
        reject("MeterRegistered", "/data/capacity_wh", Remove),
        reject("MeterRegistered", "/data/initial_wh", s("1.0005")),
        reject("MeterRegistered", "/data/initial_wh", Remove),
        reject("MeterRegistered", "/data/round_trip_efficiency_pct", s("0")),
        reject("MeterRegistered", "/data/round_trip_efficiency_pct", s("101")),
        reject("MeterRegistered", "/data/source", s("solar")),
        reject("MeterRegistered", "/data/tenant_id", s("acme-ai")),
        reject("MeterRegistered", "/data/asset_id", Remove),
        reject("MeterRegistered", "/data/rated_power_w", s("0")),
        reject("MeterRegistered", "/data/rated_power_w", s("-2000000")),
        reject("MeterRegistered", "/data/active_from", s("yesterday")),
        accept("MeterRegistered", "/data/round_trip_efficiency_pct", Remove),
        accept("MeterRegistered", "/data/round_trip_efficiency_pct", s("100")),
        accept("MeterRegistered", "/data/active_from", s("2026-11-01T00:00:00Z")),
        // MeterRegistered: generation and load
        reject("MeterRegistered:generation", "/data/source", Remove),
        reject("MeterRegistered:generation", "/data/source", s("coal")),
        reject("MeterRegistered:generation", "/data/capacity_wh", s("100")),
        reject("MeterRegistered:generation", "/data/round_trip_efficiency_pct", s("90")),
        reject("MeterRegistered:load", "/data/tenant_id", Remove),
        reject("MeterRegistered:load", "/data/asset_id", s("hall-a")),
        reject("MeterRegistered:load", "/data/initial_wh", s("0")),
        // EnergyGenerated
        reject("EnergyGenerated", "/data/flow", s("consumed")),
        reject("EnergyGenerated", "/data/flow", Remove),
        reject("EnergyGenerated", "/data/energy_wh", s("-1")),
        reject("EnergyGenerated", "/data/energy_wh", Set(json!(1100000.125))),
        reject("EnergyGenerated", "/data/energy_wh", s("1.0001")),
        reject("EnergyGenerated", "/data/energy_wh", s("1e6")),
        reject("EnergyGenerated", "/data/energy_wh", s("01")),
        reject("EnergyGenerated", "/data/source", Remove),
        reject("EnergyGenerated", "/data/asset_id", Remove),
        reject("EnergyGenerated", "/data/tenant_id", s("acme-ai")),
        reject("EnergyGenerated", "/data/quality", s("guessed")),
        reject("EnergyGenerated", "/data/price/amount_eu", s("1.0000001")),
        reject("EnergyGenerated", "/data/price/amount_eu", s("-1")),
        reject("EnergyGenerated", "/data/price/parts", Set(json!([]))),
        reject("EnergyGenerated", "/data/price/tariff_version", Remove),
        reject("EnergyGenerated", "/data/price/discount", s("0")),
        reject("EnergyGenerated", "/data/price/band", s("")),
        reject("EnergyGenerated", "/data/price/band", s("mixed")),
        reject("EnergyGenerated", "/data/period", s("2026-11-02")),
        reject("EnergyGenerated", "/data/price", Remove),
        accept("EnergyGenerated", "/data/quality", s("actual")),
        accept("EnergyGenerated", "/data/energy_wh", s("0")),
        // EnergyStored
        reject("EnergyStored", "/data/flow", s("dispatched")),
        reject("EnergyStored", "/data/source", s("solar")),
        reject("EnergyStored", "/data/price/source_multiplier", s("0.9")),
        reject("EnergyStored", "/data/asset_id", Remove),
        reject("EnergyStored", "/data/meter_id", s("BESS/1")),
        reject("EnergyStored", "/data/energy_wh", s("-250000")),
        reject("EnergyStored", "/data/energy_wh", Set(json!(250000))),
        // EnergyDispatched
        reject("EnergyDispatched", "/data/flow", s("stored")),
        reject("EnergyDispatched", "/data/tenant_id", s("acme-ai")),
        reject("EnergyDispatched", "/data/booked_period", s("2026-11-01")),
        reject("EnergyDispatched", "/data/end", s("2026-11-02T20:15:00")),
        reject("EnergyDispatched", "/data/energy_wh", s("400000.0005")),
        reject("EnergyDispatched", "/data/price/amount_eu", Set(json!(400000.5))),
        // EnergyConsumed (a price split across bands)
        reject("EnergyConsumed", "/data/flow", s("generated")),
        reject("EnergyConsumed", "/data/price/parts", Remove),
        reject("EnergyConsumed", "/data/price/parts/1", Remove),
        reject("EnergyConsumed", "/data/price/parts/0/energy_wh", s("-1200000")),
        reject("EnergyConsumed", "/data/price/parts/0/amount_eu", Set(json!(1320000))),
        reject("EnergyConsumed", "/data/price/parts/0/band", s("mixed")),
        reject("EnergyConsumed", "/data/price/parts/0/start", Remove),
        reject("EnergyConsumed", "/data/price/parts/1/note", s("peak")),
        reject("EnergyConsumed", "/data/price/eu_per_wh", s("-1")),
        reject("EnergyConsumed", "/data/price/multiplier", s("1.25e0")),
        reject("EnergyConsumed", "/data/price/source_multiplier", s("0.9")),
        reject("EnergyConsumed", "/data/asset_id", s("bess-1")),
        reject("EnergyConsumed", "/data/source", s("grid")),
        reject("EnergyConsumed", "/data/tenant_id", Remove),
        reject("EnergyConsumed", "/data/start", s("2026-11-02T19:30:00")),
        reject("EnergyConsumed", "/data/energy_wh", s("-2400000")),
        // ReadingCorrected (a downward correction of a consumed reading)
        reject("ReadingCorrected", "/data/delta_wh", s("0")),
        reject("ReadingCorrected", "/data/delta_wh", s("-1.0005")),
        reject("ReadingCorrected", "/data/delta_wh", Set(json!(-49999.5))),
        reject("ReadingCorrected", "/data/delta_eu", s("-1.0000001")),
        reject("ReadingCorrected", "/data/delta_eu", Set(json!(-1))),
        reject("ReadingCorrected", "/data/energy_wh", s("-1")),
        reject("ReadingCorrected", "/data/previous_wh", Remove),
        reject("ReadingCorrected", "/data/previous_amount_eu", Remove),
        reject("ReadingCorrected", "/data/previous_amount_eu", s("-1")),
        reject("ReadingCorrected", "/data/corrected_event_id", s("EVT-1")),
        reject("ReadingCorrected", "/data/reason", s("")),
        reject("ReadingCorrected", "/data/reason", s("   ")),
        reject("ReadingCorrected", "/data/reason", s("line\nbreak")),
        reject("ReadingCorrected", "/data/reason", long(501)),
        reject("ReadingCorrected", "/data/flow", s("sideways")),
        reject("ReadingCorrected", "/data/source", s("solar")),
        reject("ReadingCorrected", "/data/tenant_id", Remove),
        reject("ReadingCorrected", "/data/quality", s("actual")),
        reject("ReadingCorrected", "/data/price/parts", Remove),
        accept("ReadingCorrected", "/data/delta_wh", s("0.001")),
        accept("ReadingCorrected", "/data/reason", long(500)),
        // TenantRegistered
        reject("TenantRegistered", "/data/name", Remove),
        reject("TenantRegistered", "/data/name", s("")),
        reject("TenantRegistered", "/data/name", long(501)),
        reject("TenantRegistered", "/data/name", s("tab\there")),
        reject("TenantRegistered", "/data/tenant_id", long(65)),
        reject("TenantRegistered", "/data/tenant_id", s("ACME")),
        reject("TenantRegistered", "/data/tenant_id", Set(json!(7))),
        accept("TenantRegistered", "/data/tenant_id", long(64)),
        accept("TenantRegistered", "/data/name", s("Ünïcödé GmbH — Rechenzentrum")),
        // CreditsIssued
        reject("CreditsIssued", "/data/amount_eu", s("0")),
        reject("CreditsIssued", "/data/amount_eu", s("0.000000")),
        reject("CreditsIssued", "/data/amount_eu", s("-5")),
        reject("CreditsIssued", "/data/amount_eu", s("1.0000001")),
        reject("CreditsIssued", "/data/amount_eu", Set(json!(5000000))),
        reject("CreditsIssued", "/data/memo", Remove),
        reject("CreditsIssued", "/data/memo", long(501)),
        reject("CreditsIssued", "/data/booked_period", s("1969-12")),
        reject("CreditsIssued", "/data/tenant", s("acme-ai")),
        accept("CreditsIssued", "/data/amount_eu", s("0.000001")),
        accept("CreditsIssued", "/data/memo", s("")),
        // EmissionFactorsPublished
        reject("EmissionFactorsPublished", "/data/gco2e_per_kwh/wind", Remove),
        reject("EmissionFactorsPublished", "/data/gco2e_per_kwh/solar", s("-1")),
        reject("EmissionFactorsPublished", "/data/gco2e_per_kwh/solar", s("10000.5")),
        reject("EmissionFactorsPublished", "/data/gco2e_per_kwh/solar", Set(json!(41))),
        reject("EmissionFactorsPublished", "/data/gco2e_per_kwh/coal", s("1000")),
        reject("EmissionFactorsPublished", "/data/carbon_free/0", s("coal")),
        reject("EmissionFactorsPublished", "/data/factors_version", Set(json!(0))),
        reject("EmissionFactorsPublished", "/data/effective_from", s("yesterday")),
        accept("EmissionFactorsPublished", "/data/gco2e_per_kwh/solar", s("0.125")),
        accept("EmissionFactorsPublished", "/data/carbon_free", Set(json!([]))),
        // CreditsTransferred
        reject("CreditsTransferred", "/data/from_tenant", s("Acme")),
        reject("CreditsTransferred", "/data/to_tenant", Remove),
        reject("CreditsTransferred", "/data/amount_eu", s("-2500.5")),
        reject("CreditsTransferred", "/data/amount_eu", s("0")),
        reject("CreditsTransferred", "/data/memo", Set(json!(null))),
        reject("CreditsTransferred", "/data/booked_period", Remove),
        accept("CreditsTransferred", "/data/memo", s("rebalancing")),
        // Holds
        reject("HoldPlaced", "/data/amount_eu", s("0")),
        reject("HoldPlaced", "/data/expires_at", s("tomorrow")),
        reject("HoldPlaced", "/data/hold_id", s("Hold 1")),
        reject("HoldPlaced", "/data/job_id", Set(json!(null))),
        reject("HoldPlaced", "/data/booked_period", Remove),
        accept("HoldPlaced", "/data/job_id", Remove),
        reject("HoldCaptured", "/data/amount_eu", s("-1")),
        reject("HoldCaptured", "/data/remaining_eu", s("-0.5")),
        reject("HoldCaptured", "/data/remaining_eu", Remove),
        accept("HoldCaptured", "/data/remaining_eu", s("0")),
        reject("HoldReleased", "/data/released_eu", s("1e3")),
        reject("HoldReleased", "/data/expires_at", Remove),
        reject("HoldReleased", "/data/reason", s("done")),
        reject("HoldExpired", "/data/released_eu", Remove),
        reject("HoldExpired", "/data/tenant_id", s("ACME")),
        reject("HoldExpired", "/data/expires_at", s("2026-11-02 23:00:00")),
        accept("HoldExpired", "/data/released_eu", s("0")),
        // Spending limits
        reject("SpendingLimitSet", "/data/limit_eu", s("-1")),
        reject("SpendingLimitSet", "/data/limit_eu", Set(json!(null))),
        reject("SpendingLimitSet", "/data/period", s("2026-13")),
        accept("SpendingLimitSet", "/data/limit_eu", Remove),
        accept("SpendingLimitSet", "/data/limit_eu", s("0")),
        reject("SpendingLimitExceeded", "/data/caused_by", s("the reading")),
        reject("SpendingLimitExceeded", "/data/limit_eu", Remove),
        reject("SpendingLimitExceeded", "/data/charged_eu", s("1.0000001")),
        // Jobs on readings
        reject("EnergyConsumed", "/data/hold_draws", Set(json!([]))),
        reject("EnergyConsumed", "/data/hold_draws/0/amount_eu", s("0")),
        reject("EnergyConsumed", "/data/job_id", s("Train 7")),
        accept("EnergyConsumed", "/data/hold_draws", Remove),
        reject("ReadingCorrected", "/data/job_id", Set(json!(7))),
    ]
}

/// The parent of a JSON pointer (`/data/x` → `/data`).
fn parent(at: &str) -> &str {
    at.rsplit_once('/').map_or("", |(p, _)| p)
}

#[test]
fn each_schema_rejects_broken_documents_for_the_right_reason() {
    let validators = validators();
    let fixtures = fixtures();
    let cases = cases();
    let mut rejections_per_type: BTreeMap<&str, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for c in &cases {
        let base = fixtures
            .get(c.fixture)
            .unwrap_or_else(|| panic!("no fixture {:?}", c.fixture));
        let t = base["event_type"].as_str().unwrap();
        let doc = apply(base, c.at, &c.change);
        let v = &validators[t];
        let errors: Vec<_> = v.iter_errors(&doc).collect();
        let what = match &c.change {
            Remove => format!("{} without {}", c.fixture, c.at),
            Set(x) => format!("{} with {} = {x}", c.fixture, c.at),
        };
        if c.valid {
            if !errors.is_empty() {
                let shown: Vec<String> = errors
                    .iter()
                    .map(|e| format!("at {:?}: {e}", e.instance_path.as_str()))
                    .collect();
                failures.push(format!("{what}: must be accepted, but {shown:?}"));
            }
            continue;
        }
        *rejections_per_type.entry(t).or_default() += 1;
        if errors.is_empty() {
            failures.push(format!("{what}: accepted, must be refused"));
            continue;
        }
        // Refused where the change was made: at it, inside it, or by its object (a missing
        // or unknown field).
        let on_target = errors.iter().any(|e| {
            let p = e.instance_path.as_str();
            p == c.at || p == parent(c.at) || p.starts_with(&format!("{}/", c.at))
        });
        if !on_target {
            let shown: Vec<String> = errors
                .iter()
                .map(|e| format!("at {:?}: {e}", e.instance_path.as_str()))
                .collect();
            failures.push(format!("{what}: refused elsewhere: {shown:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    for t in EVENT_TYPES {
        let n = rejections_per_type.get(t).copied().unwrap_or(0);
        assert!(n >= 3, "{t}: only {n} broken documents are checked");
    }
}
