//! Micro-benchmarks of the hot pure functions of the write and read paths (issue 6):
//! parsing a reading, deciding it, pricing it (one band, and an interval across a band
//! boundary), its postings, its id, encoding (through a `Value` as before, and directly) and
//! decoding its event, hashing its record, and folding it into the projections. Run with `cargo bench --bench hot_paths`.

use chrono::{DateTime, Utc};
use criterion::{Criterion, black_box, criterion_group, criterion_main};
use serde_json::Value;
use wattledger::bench::{SITE, TENANT, Workload, meter_id, tariff_command};
use wattledger::domain::events::Event;
use wattledger::domain::ids::MeterId;
use wattledger::domain::postings::{balanced, postings};
use wattledger::domain::state::reading_id;
use wattledger::domain::tariff::{Flow, price};
use wattledger::domain::time::{Interval, parse_time};
use wattledger::domain::{Command, DecideContext, Decision, LedgerState, NewEvent};
use wattledger::projections::Books;
use wattledger::store::chain::record_hash_hex;
use wattledger::store::{GENESIS_HASH, RecordedEvent, canonical_json, record_hash};

const READING: &str = r#"{"command":"post_reading","meter_id":"m-000001","flow":"consumed","start":"2026-11-02T20:00:00Z","end":"2026-11-02T20:15:00Z","wh":"450000"}"#;

fn t(s: &str) -> DateTime<Utc> {
    parse_time(s).unwrap()
}

fn ctx() -> DecideContext {
    DecideContext {
        now: t("2026-11-28T00:00:00Z"),
        head: None,
    }
}

/// Decides a command against the state and records its event (as the ledger would).
fn record(
    state: &mut LedgerState,
    books: &mut Books,
    position: &mut u64,
    prev: &mut String,
    v: &Value,
) -> RecordedEvent {
    let cmd = Command::from_json(v).unwrap();
    let Decision::Append(new) = state.decide(&cmd, &ctx()).unwrap() else {
        panic!("not appended: {v}")
    };
    let NewEvent {
        event_id,
        stream,
        expected_version,
        recorded_at,
        event,
    } = *new;
    *position += 1;
    let data = canonical_json(&event.to_data());
    let version = expected_version + 1;
    let hash = record_hash(
        prev,
        *position,
        &stream,
        version,
        &event_id,
        event.event_type(),
        1,
        &recorded_at,
        &data,
    );
    let rec = RecordedEvent {
        position: *position,
        stream: stream.clone(),
        version,
        event_id,
        event_type: event.event_type().to_string(),
        schema_version: 1,
        recorded_at,
        data,
        hash: hash.clone(),
        prev_hash: prev.clone(),
    };
    *prev = hash;
    state.evolve(event_id, &stream, version, &event);
    books.apply(&rec, &event);
    rec
}

struct Fixture {
    state: LedgerState,
    books: Books,
    reading: RecordedEvent,
    event: Event,
}

/// The bench workload's site, tenant, tariff and two meters, and one recorded reading.
fn fixture() -> Fixture {
    let mut state = LedgerState::default();
    let mut books = Books::default();
    let (mut position, mut prev) = (0u64, GENESIS_HASH.to_string());
    let w = Workload::new(10, 2, t("2026-11-28T00:00:00Z"));
    let setup: Vec<Value> = w
        .setup_lines()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for v in &setup {
        record(&mut state, &mut books, &mut position, &mut prev, v);
    }
    assert_eq!(setup[3], tariff_command());
    assert_eq!(meter_id(1), "m-000001");
    let v: Value = serde_json::from_str(READING).unwrap();
    let reading = record(&mut state, &mut books, &mut position, &mut prev, &v);
    let event = Event::from_parts(&reading.event_type, &reading.data).unwrap();
    Fixture {
        state,
        books,
        reading,
        event,
    }
}

fn hot_paths(c: &mut Criterion) {
    let f = fixture();
    let site = f.state.sites.values().next().unwrap();
    assert_eq!(site.reg.site_id.as_str(), SITE);
    let tariff = site.tariff_at(t("2026-11-02T20:00:00Z")).unwrap();
    let tz = site.tz;

    let line_value: Value = serde_json::from_str(READING).unwrap();
    c.bench_function("parse/json_text_to_value", |b| {
        b.iter(|| serde_json::from_str::<Value>(black_box(READING)).unwrap())
    });
    c.bench_function("parse/command_from_json", |b| {
        b.iter(|| Command::from_json(black_box(&line_value)).unwrap())
    });

    // A fresh interval of a registered meter: decided as an append each time (not evolved).
    let fresh: Value = serde_json::from_str(
        &READING
            .replace("20:00:00Z", "21:00:00Z")
            .replace("20:15:00Z", "21:15:00Z"),
    )
    .unwrap();
    let fresh_cmd = Command::from_json(&fresh).unwrap();
    let context = ctx();
    c.bench_function("decide/post_reading", |b| {
        b.iter(|| f.state.decide(black_box(&fresh_cmd), &context).unwrap())
    });

    let single = Interval::new(t("2026-11-02T20:00:00Z"), t("2026-11-02T20:15:00Z")).unwrap();
    let mixed = Interval::new(t("2026-11-02T19:50:00Z"), t("2026-11-02T20:05:00Z")).unwrap();
    let wh = rust_decimal::Decimal::from(450_000);
    assert_eq!(
        price(tariff, &tz, Flow::Consumed, None, &mixed, wh).unwrap().band,
        "mixed"
    );
    c.bench_function("price/single_band", |b| {
        b.iter(|| price(tariff, &tz, Flow::Consumed, None, black_box(&single), wh).unwrap())
    });
    c.bench_function("price/mixed_bands", |b| {
        b.iter(|| price(tariff, &tz, Flow::Consumed, None, black_box(&mixed), wh).unwrap())
    });

    c.bench_function("postings/reading_and_balanced", |b| {
        b.iter(|| balanced(&postings(black_box(&f.event))))
    });

    c.bench_function("encode/event_to_canonical_json", |b| {
        b.iter(|| canonical_json(&black_box(&f.event).to_data()))
    });
    // What the ledger writes now: the same bytes, straight from the typed event.
    assert_eq!(f.event.canonical_data(), canonical_json(&f.event.to_data()));
    c.bench_function("encode/event_canonical_data", |b| {
        b.iter(|| black_box(&f.event).canonical_data())
    });
    let mixed_event = {
        let mut e = f.event.clone();
        if let Event::EnergyConsumed(r) = &mut e {
            r.price = price(tariff, &tz, Flow::Consumed, None, &mixed, wh).unwrap();
        }
        e
    };
    assert_eq!(mixed_event.canonical_data(), canonical_json(&mixed_event.to_data()));
    c.bench_function("encode/mixed_price_event_canonical_data", |b| {
        b.iter(|| black_box(&mixed_event).canonical_data())
    });
    let meter = MeterId::parse("m-000001").unwrap();
    c.bench_function("id/reading_id", |b| {
        b.iter(|| reading_id(black_box(&meter), Flow::Consumed, black_box(&single)))
    });
    c.bench_function("decode/event_from_parts", |b| {
        b.iter(|| Event::from_parts(black_box(&f.reading.event_type), black_box(&f.reading.data)).unwrap())
    });

    let r = &f.reading;
    c.bench_function("hash/record_hash", |b| {
        b.iter(|| {
            record_hash(
                black_box(&r.prev_hash),
                r.position,
                &r.stream,
                r.version,
                &r.event_id,
                &r.event_type,
                r.schema_version,
                &r.recorded_at,
                black_box(&r.data),
            )
        })
    });

    let recorded_at = wattledger::domain::time::fmt_time(&r.recorded_at);
    c.bench_function("hash/record_hash_hex", |b| {
        let mut out = [0u8; 64];
        b.iter(|| {
            record_hash_hex(
                black_box(&r.prev_hash),
                r.position,
                &r.stream,
                r.version,
                &r.event_id,
                &r.event_type,
                r.schema_version,
                &recorded_at,
                black_box(&r.data),
                &mut out,
            )
            .len()
        })
    });

    // Steady state: the same reading folded again into books that already hold the site,
    // the tenant's statement and the interval cell.
    let mut books = f.books.clone();
    c.bench_function("projections/books_apply_reading", |b| {
        b.iter(|| books.apply(black_box(&f.reading), black_box(&f.event)))
    });
    assert!(books.tenants.contains_key(TENANT));
}

criterion_group!(benches, hot_paths);
criterion_main!(benches);
