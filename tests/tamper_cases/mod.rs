//! The tamper cases, shared by every backend (`tests/tamper.rs` for SQLite,
//! `tests/tamper_postgres.rs` for PostgreSQL): build a small store through `wattledger apply`,
//! then, each on a fresh copy of the store, change the database directly — as someone with
//! access to the file or the database would, with no help from wattledger — and check that
//! `wattledger audit` exits 1 and names the position where the log stops verifying.
//!
//! The store (positions):
//!   1 SiteRegistered · 2 TariffPublished · 3 TenantRegistered · 4 MeterRegistered ·
//!   5..=14 ten January 2025 readings · 15 PeriodClosed 2025-01 (pins position 14 and its
//!   chain hash) · 16..=19 four February readings · 20 a late January reading (booked into
//!   February). `statement` is then run once, so the store's projection snapshot holds the
//!   projections at position 20 with the chain hash there.
//!
//! For edits, deletions, insertions and swaps in the middle of the log the snapshot is
//! removed, so the finding comes from the chain itself; the tail cases keep it, because a
//! truncated tail is still a valid prefix of a chain and only something recorded elsewhere
//! can tell.
//!
//! A backend says how to make a store, copy it, and open its database directly ([`Backend`],
//! [`Db`]); [`tamper_suite!`] turns every case into a test for it.

#![allow(dead_code)]

use crate::support::process;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use wattledger::domain::time::parse_time;
use wattledger::projections::engine::snapshot_path_for;
use wattledger::store::{GENESIS_HASH, record_hash};

/// Longest one run of the binary may take.
const WAIT: Duration = Duration::from_secs(60);

pub const JANUARY: std::ops::RangeInclusive<u64> = 5..=14;
pub const CLOSE_POSITION: u64 = 15;
pub const HEAD: u64 = 20;
/// Past every position (for "delete from here to the end").
pub const LAST: u64 = i64::MAX as u64;
/// The meter's stream (every reading is in it).
pub const METER_STREAM: &str = "meter-rack-a1";

/// One record as stored: the columns of `events`, as text where the database has another
/// type (`data` in its canonical JSON form, the text the chain hashes).
#[derive(Clone, Debug)]
pub struct Row {
    pub position: i64,
    pub stream: String,
    pub version: i64,
    pub event_id: String,
    pub event_type: String,
    pub schema_version: i64,
    pub recorded_at: String,
    pub data: String,
    pub hash: String,
    pub prev_hash: String,
}

impl Row {
    /// The hash the store would have given this record (what a tamperer who knows the
    /// algorithm computes to make a forged row verify).
    pub fn rehash(&mut self) {
        self.hash = record_hash(
            &self.prev_hash,
            self.position as u64,
            &self.stream,
            self.version as u64,
            &uuid::Uuid::parse_str(&self.event_id).unwrap(),
            &self.event_type,
            self.schema_version as u32,
            &parse_time(&self.recorded_at).unwrap(),
            &self.data,
        );
    }
}

/// Direct access to a store's database, bypassing wattledger.
pub trait Db {
    /// The `data` of the record at `position`, in canonical JSON.
    fn data_at(&mut self, position: u64) -> String;
    /// Overwrites the `data` of the record at `position`; returns the rows changed.
    fn set_data(&mut self, position: u64, data: &str) -> u64;
    fn event_type_at(&mut self, position: u64) -> String;
    /// Deletes the records at positions `first..=last`; returns how many.
    fn delete_positions(&mut self, first: u64, last: u64) -> u64;
    /// Every record, in position order.
    fn rows(&mut self) -> Vec<Row>;
    /// Replaces every record with `rows`, as given (no hash is recomputed), in one transaction.
    fn replace_rows(&mut self, rows: &[Row]);
}

/// A kind of store the cases run on.
pub trait Backend {
    /// The URL of a new, empty store whose companion files live in `dir`.
    fn new_store(&self, dir: &Path) -> String;
    /// Copies the database of the store at `from` (no process has it open) into a new store
    /// whose companion files live in `dir`; returns its URL.
    fn copy_store(&self, from: &str, dir: &Path) -> String;
    /// Opens the database of the store at `url` directly. Changes are durable once the
    /// returned value is dropped.
    fn open_db(&self, url: &str) -> Box<dyn Db + '_>;
}

/// A store and the folder the binary runs in for it (which holds its snapshot, or for
/// SQLite the file itself).
pub struct Store {
    pub url: String,
    pub dir: PathBuf,
}

impl Store {
    pub fn snapshot(&self) -> PathBuf {
        self.dir.join(snapshot_path_for(&self.url))
    }

    /// Runs wattledger on this store to completion (bounded), returning exit code, stdout
    /// and stderr.
    pub fn run(&self, args: &[&str]) -> (i32, String, String) {
        let mut child = process::command()
            .env("RUST_LOG", "warn")
            .current_dir(&self.dir)
            .arg("--store")
            .arg(&self.url)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wattledger");
        let deadline = Instant::now() + WAIT;
        loop {
            if child.try_wait().expect("try_wait").is_some() {
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("wattledger {args:?} did not finish within {WAIT:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // The outputs are small (far below a pipe's buffer), so the child never blocked on them.
        let out = child.wait_with_output().expect("output");
        (
            out.status.code().expect("exited normally, not by a signal"),
            String::from_utf8(out.stdout).expect("UTF-8"),
            String::from_utf8(out.stderr).expect("UTF-8"),
        )
    }
}

fn reading(start: &str, end: &str, wh: &str) -> Value {
    json!({"command":"post_reading","meter_id":"rack-a1","flow":"consumed","start":start,"end":end,"wh":wh})
}

pub struct Built<'b> {
    pub backend: &'b dyn Backend,
    pub dir: tempfile::TempDir,
    pub store: Store,
    /// The January statement as printed before any tampering.
    pub january: Value,
}

/// Builds the store described at the top of this file and checks it audits clean.
pub fn build(backend: &dyn Backend) -> Built<'_> {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("original");
    std::fs::create_dir(&home).unwrap();
    let store = Store {
        url: backend.new_store(&home),
        dir: home,
    };
    let mut cmds = vec![
        json!({"command":"register_site","site_id":"memphis-1","time_zone":"America/Chicago","loss_tolerance_pct":"5"}),
        json!({"command":"publish_tariff","site_id":"memphis-1","effective_from":"2024-12-01T00:00:00Z",
               "rates_eu_per_wh":{"generated":"1","stored":"1","dispatched":"1","consumed":"1.1"},
               "bands":[{"name":"peak","days":["mon","tue","wed","thu","fri"],"start":"14:00","end":"20:00","multiplier":"1.5"},
                        {"name":"night","days":["mon","tue","wed","thu","fri","sat","sun"],"start":"00:00","end":"06:00","multiplier":"0.6"}],
               "default_band":{"name":"standard","multiplier":"1"},
               "source_multipliers":{"gas_turbine":"1.2","solar":"0.9","grid":"1"}}),
        json!({"command":"register_tenant","tenant_id":"acme-ai","name":"Acme AI"}),
        json!({"command":"register_meter","meter_id":"rack-a1","site_id":"memphis-1","kind":"load","tenant_id":"acme-ai","rated_power_w":"2000000"}),
    ];
    // Ten January readings, every six hours from Thursday 2 January (so they fall in
    // different bands), each a different value.
    for k in 0..10u32 {
        let h = 6 * k;
        let (d, hh) = (2 + h / 24, h % 24);
        cmds.push(reading(
            &format!("2025-01-{d:02}T{hh:02}:00:00Z"),
            &format!("2025-01-{d:02}T{hh:02}:15:00Z"),
            &format!("{}.5", 123_456 + 1_111 * k),
        ));
    }
    cmds.push(json!({"command":"close_period","period":"2025-01"}));
    for d in 3..7u32 {
        cmds.push(reading(
            &format!("2025-02-{d:02}T15:00:00Z"),
            &format!("2025-02-{d:02}T15:15:00Z"),
            &format!("{}", 200_000 + d),
        ));
    }
    cmds.push(reading("2025-01-31T23:45:00Z", "2025-02-01T00:00:00Z", "98765"));

    let input = dir.path().join("commands.ndjson");
    let text: String = cmds.iter().map(|c| format!("{c}\n")).collect();
    std::fs::write(&input, text).expect("write commands");
    let (code, out, err) = store.run(&["apply", input.to_str().unwrap()]);
    assert_eq!(code, 0, "apply: {out}\n{err}");
    let results: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("result JSON"))
        .collect();
    assert_eq!(results.len() as u64, HEAD, "{out}");
    for (k, r) in results.iter().enumerate() {
        assert_eq!(r["ok"], json!(true), "command {k}: {r}");
        assert_eq!(r["position"].as_u64(), Some(k as u64 + 1), "command {k}: {r}");
    }
    assert_eq!(
        results[CLOSE_POSITION as usize - 1]["event_type"],
        json!("PeriodClosed")
    );
    assert!(
        JANUARY
            .clone()
            .all(|p| results[p as usize - 1]["event_type"] == json!("EnergyConsumed"))
    );

    let (code, out, err) = store.run(&["audit", "--json"]);
    assert_eq!(
        code, 0,
        "the untouched store (no snapshot yet) audits clean: {out}\n{err}"
    );

    // A statement writes the projection snapshot.
    let (code, out, err) = store.run(&["statement", "--tenant", "acme-ai", "--period", "2025-01"]);
    assert_eq!(code, 0, "statement: {out}\n{err}");
    let january: Value = serde_json::from_str(&out).expect("statement JSON");
    assert_eq!(january["final"], json!(true), "{out}");
    assert!(
        store.snapshot().exists(),
        "statement writes {}",
        store.snapshot().display()
    );

    let (code, out, err) = store.run(&["audit", "--json"]);
    assert_eq!(
        code, 0,
        "the untouched store with its snapshot audits clean: {out}\n{err}"
    );
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["clean"], json!(true));
    assert_eq!(report["head_position"].as_u64(), Some(HEAD));
    assert!(
        report["snapshot"]
            .as_str()
            .is_some_and(|s| s.contains(&format!("position {HEAD}"))),
        "the audit compared the snapshot at the head: {out}"
    );
    let (code, out, _) = store.run(&["audit"]);
    assert_eq!(code, 0);
    assert!(out.contains("clean"), "{out}");
    Built {
        backend,
        dir,
        store,
        january,
    }
}

impl Built<'_> {
    /// A copy of the store (the writer has exited: `run` waited for it), with or without the
    /// projection snapshot.
    pub fn fresh_copy(&self, name: &str, keep_snapshot: bool) -> Store {
        let dir = self.dir.path().join(name);
        std::fs::create_dir(&dir).expect("copy dir");
        let copy = Store {
            url: self.backend.copy_store(&self.store.url, &dir),
            dir,
        };
        if keep_snapshot {
            let to = copy.snapshot();
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(self.store.snapshot(), &to).expect("copy the snapshot");
        }
        copy
    }

    /// Changes the copy's database directly.
    pub fn tamper(&self, store: &Store, f: impl FnOnce(&mut dyn Db)) {
        let mut db = self.backend.open_db(&store.url);
        f(db.as_mut());
    }
}

pub struct Report {
    pub json: Value,
    pub human: String,
}

impl Report {
    pub fn first_failing(&self) -> Option<u64> {
        self.json["first_failing_position"].as_u64()
    }
    pub fn findings(&self) -> Vec<(Option<u64>, String, String)> {
        findings(&self.json)
    }
    pub fn has(&self, position: u64, kind: &str) -> bool {
        has(&self.json, position, kind)
    }
}

/// The findings of an audit report (`audit --json` or `GET /v1/audit`).
pub fn findings(report: &Value) -> Vec<(Option<u64>, String, String)> {
    report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            (
                f["position"].as_u64(),
                f["kind"].as_str().unwrap().to_string(),
                f["message"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Whether an audit report lists a finding of `kind` at `position`.
pub fn has(report: &Value, position: u64, kind: &str) -> bool {
    findings(report)
        .iter()
        .any(|(p, k, _)| *p == Some(position) && k == kind)
}

/// Runs the audit twice (`--json` and for people) and checks the exit code of both.
pub fn audit(store: &Store, expected_exit: i32) -> Report {
    let (code, out, err) = store.run(&["audit", "--json"]);
    let json: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("audit --json is JSON ({e}): {out}\n{err}"));
    assert_eq!(
        code, expected_exit,
        "audit --json exit code; report: {out}\nstderr: {err}"
    );
    assert_eq!(json["clean"], json!(expected_exit == 0), "{out}");
    let (code, human, err) = store.run(&["audit"]);
    assert_eq!(code, expected_exit, "audit exit code; report: {human}\nstderr: {err}");
    Report { json, human }
}

/// The human report names `position` as the first failing one, and lists a finding of
/// `kind` there.
pub fn assert_human_names(r: &Report, position: u64, kind: &str) {
    assert!(
        r.human.contains(&format!("first failing position: {position}")),
        "the human report names position {position} first:\n{}",
        r.human
    );
    assert!(
        r.human.contains(&format!("position {position}: {kind}")),
        "the human report lists a {kind} finding at position {position}:\n{}",
        r.human
    );
}

/// The position whose payload [`change_a_digit`] edits in the edit case.
pub const EDITED: u64 = 8;

/// Changes one digit of the reading's `energy_wh` at `position`, in place.
pub fn change_a_digit(db: &mut dyn Db, position: u64) {
    let data = db.data_at(position);
    let key = "\"energy_wh\":\"";
    let at = data.find(key).expect("a reading carries energy_wh") + key.len();
    let digit = data.as_bytes()[at];
    assert!(digit.is_ascii_digit(), "{data}");
    let replacement = if digit == b'9' { b'1' } else { digit + 1 };
    let mut bytes = data.clone().into_bytes();
    bytes[at] = replacement;
    let edited = String::from_utf8(bytes).unwrap();
    assert_eq!(db.set_data(position, &edited), 1);
    assert_eq!(db.data_at(position), edited, "the edit is stored");
}

pub fn a_changed_byte_in_a_payload_is_found_at_its_position(backend: &dyn Backend) {
    let b = build(backend);
    let store = b.fresh_copy("edit", false);
    b.tamper(&store, |db| change_a_digit(db, EDITED));
    let r = audit(&store, 1);
    // The row's content no longer matches its own hash; the next row's prev_hash still equals
    // the stored (unchanged) hash, so nothing else breaks before it.
    assert_eq!(r.first_failing(), Some(EDITED), "{}", r.json);
    assert!(r.has(EDITED, "hash"), "{}", r.json);
    assert_human_names(&r, EDITED, "hash");
}

pub fn a_deleted_middle_row_is_found_where_the_gap_shows(backend: &dyn Backend) {
    let b = build(backend);
    let store = b.fresh_copy("delete", false);
    let deleted = 10;
    b.tamper(&store, |db| assert_eq!(db.delete_positions(deleted, deleted), 1));
    let r = audit(&store, 1);
    // The audit reports where a problem shows in the log it reads, and position 10 is not in
    // it any more: the first record that fails is 11, whose position is not the expected 10,
    // whose prev_hash is the hash of the deleted row rather than of row 9, and whose stream
    // version skips the deleted reading's. The message names the missing position 10.
    let after = deleted + 1;
    assert_eq!(r.first_failing(), Some(after), "{}", r.json);
    assert!(r.has(after, "position"), "{}", r.json);
    assert!(r.has(after, "chain"), "{}", r.json);
    assert!(r.has(after, "version"), "{}", r.json);
    assert!(
        r.findings().iter().any(|(p, k, m)| *p == Some(after)
            && k == "position"
            && m.contains(&format!("expected position {deleted}"))),
        "the gap's finding names the missing position: {}",
        r.json
    );
    assert_human_names(&r, after, "position");
}

/// A forged reading inserted at `at`, the records from there on moved up one position (and
/// the meter stream's versions up one), as one transaction. The forged record is a copy of the
/// reading before it with a new event id; with `rehash` its hash is computed as the store
/// would (chained to the record before it), else it carries a made-up hash.
fn insert_forged_reading(db: &mut dyn Db, at: u64, rehash: bool) {
    let rows = db.rows();
    let at = at as i64;
    let before = rows[at as usize - 2].clone();
    assert_eq!(before.stream, METER_STREAM);
    let mut forged = Row {
        position: at,
        version: before.version + 1,
        event_id: uuid::Uuid::new_v4().to_string(),
        prev_hash: before.hash.clone(),
        hash: "f".repeat(64),
        ..before
    };
    if rehash {
        forged.rehash();
    }
    let mut out = Vec::with_capacity(rows.len() + 1);
    for mut r in rows {
        if r.position == at {
            out.push(forged.clone());
        }
        if r.position >= at {
            r.position += 1;
            if r.stream == METER_STREAM {
                r.version += 1;
            }
        }
        out.push(r);
    }
    db.replace_rows(&out);
}

pub fn an_inserted_row_is_found(backend: &dyn Backend) {
    let b = build(backend);
    let at = 9u64;

    // 1. A forged row with a made-up hash: it fails at its own position.
    let store = b.fresh_copy("insert", false);
    b.tamper(&store, |db| insert_forged_reading(db, at, false));
    let r = audit(&store, 1);
    assert_eq!(r.json["head_position"].as_u64(), Some(HEAD + 1), "{}", r.json);
    assert_eq!(r.first_failing(), Some(at), "{}", r.json);
    assert!(r.has(at, "hash"), "{}", r.json);
    assert_human_names(&r, at, "hash");

    // 2. A forged row whose hash the tamperer computed, chained to the row before it, with
    //    positions and versions after it renumbered: the forged row itself verifies (it is
    //    a well-formed, correctly priced reading). The log stops verifying at the next
    //    position, whose record still carries the prev_hash of the row before the insertion
    //    and whose own hash covers the position it was written at. The audit names that
    //    position, the first place the insertion shows.
    let store = b.fresh_copy("insert-rehashed", false);
    b.tamper(&store, |db| insert_forged_reading(db, at, true));
    let r = audit(&store, 1);
    let next = at + 1;
    assert_eq!(r.first_failing(), Some(next), "{}", r.json);
    assert!(r.has(next, "chain"), "{}", r.json);
    assert!(r.has(next, "hash"), "{}", r.json);
    assert!(
        !r.findings().iter().any(|(p, _, _)| *p == Some(at)),
        "the forged row itself verifies: {}",
        r.json
    );
    assert_human_names(&r, next, "chain");
}

pub fn two_swapped_rows_are_found_at_the_lower_position(backend: &dyn Backend) {
    let b = build(backend);
    let store = b.fresh_copy("swap", false);
    let (low, high) = (7i64, 12i64);
    b.tamper(&store, |db| {
        let mut rows = db.rows();
        let (i, j) = ((low - 1) as usize, (high - 1) as usize);
        let (a, z) = (rows[i].clone(), rows[j].clone());
        rows[i] = Row { position: low, ..z };
        rows[j] = Row { position: high, ..a };
        db.replace_rows(&rows);
    });
    let r = audit(&store, 1);
    // Each record's hash covers its own position and its prev_hash: the content of 12 now
    // sitting at 7 neither hashes to its stored hash nor continues the chain from 6.
    assert_eq!(r.first_failing(), Some(low as u64), "{}", r.json);
    assert!(r.has(low as u64, "hash"), "{}", r.json);
    assert!(r.has(low as u64, "chain"), "{}", r.json);
    assert!(
        r.has(high as u64, "hash"),
        "the other swapped row fails too: {}",
        r.json
    );
    assert_human_names(&r, low as u64, "hash");
}

pub fn deleted_tail_rows_are_found_against_the_snapshot(backend: &dyn Backend) {
    let b = build(backend);
    let store = b.fresh_copy("tail", true);
    b.tamper(&store, |db| {
        assert_eq!(db.delete_positions(HEAD - 1, LAST), 2);
    });
    let r = audit(&store, 1);
    // What remains (1..=18) is a valid chain; the snapshot says the log reached position 20,
    // so the first missing position, 19, is reported.
    let missing = HEAD - 1;
    assert_eq!(r.first_failing(), Some(missing), "{}", r.json);
    let tail: Vec<_> = r.findings().into_iter().filter(|(_, k, _)| k == "tail").collect();
    assert_eq!(tail.len(), 1, "{}", r.json);
    assert_eq!(tail[0].0, Some(missing), "{}", r.json);
    assert!(
        tail[0].2.contains(&format!("position {HEAD}")),
        "names the snapshot's position: {}",
        r.json
    );
    assert_eq!(r.json["head_position"].as_u64(), Some(HEAD - 2));
    assert_human_names(&r, missing, "tail");
}

/// A report read after the tail was cut does not erase the evidence: the contradicted
/// snapshot is kept aside (not overwritten with projections of the shorter log), and the
/// audit still finds the cut.
pub fn reading_a_cut_log_keeps_the_evidence_for_the_audit(backend: &dyn Backend) {
    let b = build(backend);
    let store = b.fresh_copy("tail-then-read", true);
    b.tamper(&store, |db| {
        assert_eq!(db.delete_positions(HEAD - 1, LAST), 2);
    });
    let (code, _, err) = store.run(&["statement", "--tenant", "acme-ai", "--period", "2025-02"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("kept as"),
        "the statement says the snapshot was set aside: {err}"
    );
    let r = audit(&store, 1);
    assert!(r.has(HEAD, "tail"), "{}", r.json);
}

pub fn a_tail_deleted_back_through_a_period_close(backend: &dyn Backend) {
    let b = build(backend);

    // 1. The PeriodClosed row and everything after it deleted; the snapshot (at 20) kept.
    //    The log 1..=14 is a valid chain, and the one event that pinned anything after it
    //    (PeriodClosed pins 14, its own last position before the close) is gone with it. The
    //    snapshot recorded position 20 and its chain hash: the tail finding names 15, the
    //    first missing position.
    let store = b.fresh_copy("close-tail", true);
    b.tamper(&store, |db| {
        assert_eq!(db.event_type_at(CLOSE_POSITION), "PeriodClosed");
        let n = db.delete_positions(CLOSE_POSITION, LAST);
        assert_eq!(n, HEAD - CLOSE_POSITION + 1);
    });
    let r = audit(&store, 1);
    assert_eq!(r.first_failing(), Some(CLOSE_POSITION), "{}", r.json);
    assert!(r.has(CLOSE_POSITION, "tail"), "{}", r.json);
    assert_human_names(&r, CLOSE_POSITION, "tail");

    // 2. The same deletion without the snapshot. Nothing left in the log refers past 14 (the
    //    remaining log is exactly the log as it stood when the period was closed, and the
    //    PeriodClosed's own pin — position 14 and its hash — still holds), so the audit
    //    cannot see it: DESIGN §6 promises detection through what the closed periods and
    //    the statements/snapshot *record*, and here the only record was deleted. This pins
    //    that limit; the evidence left is outside the log: the January statement printed
    //    before, which was final and whose chain hash and last position are still in the log.
    let store = b.fresh_copy("close-tail-no-snapshot", false);
    b.tamper(&store, |db| {
        db.delete_positions(CLOSE_POSITION, LAST);
    });
    let r = audit(&store, 0);
    assert_eq!(r.json["head_position"].as_u64(), Some(CLOSE_POSITION - 1));
    let pinned_position = b.january["last_position"].as_u64().expect("statement last_position");
    assert!(pinned_position < CLOSE_POSITION);
    assert_eq!(b.january["final"], json!(true));
    let (code, out, err) = store.run(&["statement", "--tenant", "acme-ai", "--period", "2025-01"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let now: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        now["final"],
        json!(false),
        "with the close deleted, January reads as open again: only the statement kept from before shows it was final"
    );

    // 3. What the close's pin does buy: a tamperer who rewrites history before the close and
    //    recomputes the whole chain (here: deletes January reading 9, renumbers the later
    //    rows and the meter stream's versions, and re-hashes every record) leaves positions,
    //    versions and the chain all consistent. But the PeriodClosed event (now at 14) still
    //    says "position 14 had chain hash H", and it does not: the audit names position 14.
    let store = b.fresh_copy("rewrite-before-close", false);
    let removed = 9i64;
    b.tamper(&store, |db| {
        let rows = db.rows();
        let mut out: Vec<Row> = Vec::new();
        let mut prev = GENESIS_HASH.to_string();
        for r in rows.into_iter().filter(|r| r.position != removed) {
            let mut r = r;
            if r.position > removed {
                r.position -= 1;
                if r.stream == METER_STREAM {
                    r.version -= 1;
                }
            }
            r.prev_hash = prev.clone();
            r.rehash();
            prev = r.hash.clone();
            out.push(r);
        }
        db.replace_rows(&out);
    });
    let r = audit(&store, 1);
    let pinned = CLOSE_POSITION - 1;
    assert_eq!(r.first_failing(), Some(pinned), "{}", r.json);
    let kinds: Vec<String> = r.findings().into_iter().map(|(_, k, _)| k).collect();
    assert_eq!(
        kinds,
        vec!["period".to_string()],
        "only the close's pin catches a re-hashed chain: {}",
        r.json
    );
    assert_human_names(&r, pinned, "period");
}

/// One test per case for a backend: `$backend(test_name)` gives `Some(backend)`, or `None`
/// (having printed why the test is skipped).
#[macro_export]
macro_rules! tamper_suite {
    ($backend:expr) => {
        mod tamper_suite {
            use super::*;
            $crate::tamper_suite!(@cases $backend;
                a_changed_byte_in_a_payload_is_found_at_its_position,
                a_deleted_middle_row_is_found_where_the_gap_shows,
                an_inserted_row_is_found,
                two_swapped_rows_are_found_at_the_lower_position,
                deleted_tail_rows_are_found_against_the_snapshot,
                reading_a_cut_log_keeps_the_evidence_for_the_audit,
                a_tail_deleted_back_through_a_period_close
            );
        }
    };
    (@cases $backend:expr; $($case:ident),*) => {
        $(
            #[test]
            fn $case() {
                if let Some(b) = $backend(stringify!($case)) {
                    tamper_cases::$case(&b);
                }
            }
        )*
    };
}
