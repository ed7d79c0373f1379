//! The tamper test: build a small store through `wattledger apply`, then, each on a fresh
//! copy of the database file, change the SQLite file directly and check that `wattledger
//! audit` exits 1 and names the position where the log stops verifying.
//!
//! The store (positions):
//!   1 SiteRegistered · 2 TariffPublished · 3 TenantRegistered · 4 MeterRegistered ·
//!   5..=14 ten January 2025 readings · 15 PeriodClosed 2025-01 (pins position 14 and its
//!   chain hash) · 16..=19 four February readings · 20 a late January reading (booked into
//!   February). `statement` is then run once, so `<db>.snapshot.json` holds the projections
//!   at position 20 with the chain hash there.
//!
//! For edits, deletions and swaps in the middle of the log the snapshot is removed, so the
//! finding comes from the chain itself; the tail cases keep it, because a truncated tail is
//! still a valid prefix of a chain and only something recorded elsewhere can tell.

use rusqlite::{Connection, params};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use wattledger::domain::time::parse_time;
use wattledger::store::{GENESIS_HASH, record_hash};

const BIN: &str = env!("CARGO_BIN_EXE_wattledger");
const WAIT: Duration = Duration::from_secs(30);

const JANUARY: std::ops::RangeInclusive<u64> = 5..=14;
const CLOSE_POSITION: u64 = 15;
const HEAD: u64 = 20;

fn url(db: &Path) -> String {
    format!("sqlite://{}", db.display())
}

fn snapshot_of(db: &Path) -> PathBuf {
    PathBuf::from(format!("{}.snapshot.json", db.display()))
}

/// Runs wattledger to completion (bounded), returning exit code, stdout and stderr.
fn run(db: &Path, args: &[&str]) -> (i32, String, String) {
    let mut child = Command::new(BIN)
        .arg("--store")
        .arg(url(db))
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

fn reading(start: &str, end: &str, wh: &str) -> Value {
    json!({"command":"post_reading","meter_id":"rack-a1","flow":"consumed","start":start,"end":end,"wh":wh})
}

struct Built {
    dir: tempfile::TempDir,
    db: PathBuf,
    /// The January statement as printed before any tampering.
    january: Value,
}

/// Builds the store described at the top of this file and checks it audits clean.
fn build() -> Built {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("w.db");
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
    let (code, out, err) = run(&db, &["apply", input.to_str().unwrap()]);
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

    let (code, out, err) = run(&db, &["audit", "--json"]);
    assert_eq!(
        code, 0,
        "the untouched store (no snapshot yet) audits clean: {out}\n{err}"
    );

    // A statement writes the projection snapshot beside the database.
    let (code, out, err) = run(&db, &["statement", "--tenant", "acme-ai", "--period", "2025-01"]);
    assert_eq!(code, 0, "statement: {out}\n{err}");
    let january: Value = serde_json::from_str(&out).expect("statement JSON");
    assert_eq!(january["final"], json!(true), "{out}");
    assert!(
        snapshot_of(&db).exists(),
        "statement writes {}",
        snapshot_of(&db).display()
    );

    let (code, out, err) = run(&db, &["audit", "--json"]);
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
    let (code, out, _) = run(&db, &["audit"]);
    assert_eq!(code, 0);
    assert!(out.contains("clean"), "{out}");
    Built { dir, db, january }
}

/// A copy of the database file (the writer has exited: `run` waited for it), with or
/// without the projection snapshot.
fn fresh_copy(b: &Built, name: &str, keep_snapshot: bool) -> PathBuf {
    let dir = b.dir.path().join(name);
    std::fs::create_dir(&dir).expect("copy dir");
    let db = dir.join("w.db");
    std::fs::copy(&b.db, &db).expect("copy the database");
    // If the last connection did not checkpoint, committed pages are still in the WAL.
    let wal = PathBuf::from(format!("{}-wal", b.db.display()));
    if wal.exists() {
        std::fs::copy(&wal, format!("{}-wal", db.display())).expect("copy the WAL");
    }
    if keep_snapshot {
        std::fs::copy(snapshot_of(&b.db), snapshot_of(&db)).expect("copy the snapshot");
    }
    db
}

#[derive(Clone, Debug)]
struct Row {
    position: i64,
    stream: String,
    version: i64,
    event_id: String,
    event_type: String,
    schema_version: i64,
    recorded_at: String,
    data: String,
    hash: String,
    prev_hash: String,
}

fn read_rows(c: &Connection) -> Vec<Row> {
    let mut stmt = c
        .prepare("SELECT position, stream, version, event_id, event_type, schema_version, recorded_at, data, hash, prev_hash FROM events ORDER BY position")
        .unwrap();
    stmt.query_map([], |r| {
        Ok(Row {
            position: r.get(0)?,
            stream: r.get(1)?,
            version: r.get(2)?,
            event_id: r.get(3)?,
            event_type: r.get(4)?,
            schema_version: r.get(5)?,
            recorded_at: r.get(6)?,
            data: r.get(7)?,
            hash: r.get(8)?,
            prev_hash: r.get(9)?,
        })
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// Replaces the whole table with `rows`, as written (no hash is recomputed).
fn write_rows(c: &mut Connection, rows: &[Row]) {
    let tx = c.transaction().unwrap();
    tx.execute("DELETE FROM events", []).unwrap();
    for r in rows {
        tx.execute(
            "INSERT INTO events (position, stream, version, event_id, event_type, schema_version, recorded_at, data, hash, prev_hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![r.position, r.stream, r.version, r.event_id, r.event_type, r.schema_version, r.recorded_at, r.data, r.hash, r.prev_hash],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

fn tamper(db: &Path, f: impl FnOnce(&mut Connection)) {
    let mut c = Connection::open(db).expect("open the copy with rusqlite");
    f(&mut c);
    // Dropping the last connection checkpoints the WAL into the file.
}

struct Report {
    json: Value,
    human: String,
}

impl Report {
    fn first_failing(&self) -> Option<u64> {
        self.json["first_failing_position"].as_u64()
    }
    fn findings(&self) -> Vec<(Option<u64>, String, String)> {
        self.json["findings"]
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
    fn has(&self, position: u64, kind: &str) -> bool {
        self.findings()
            .iter()
            .any(|(p, k, _)| *p == Some(position) && k == kind)
    }
}

/// Runs the audit twice (`--json` and for people) and checks the exit code of both.
fn audit(db: &Path, expected_exit: i32) -> Report {
    let (code, out, err) = run(db, &["audit", "--json"]);
    let json: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("audit --json is JSON ({e}): {out}\n{err}"));
    assert_eq!(
        code, expected_exit,
        "audit --json exit code; report: {out}\nstderr: {err}"
    );
    assert_eq!(json["clean"], json!(expected_exit == 0), "{out}");
    let (code, human, err) = run(db, &["audit"]);
    assert_eq!(code, expected_exit, "audit exit code; report: {human}\nstderr: {err}");
    Report { json, human }
}

/// The human report names `position` as the first failing one, and lists a finding of
/// `kind` there.
fn assert_human_names(r: &Report, position: u64, kind: &str) {
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

#[test]
fn a_changed_byte_in_a_payload_is_found_at_its_position() {
    let b = build();
    let db = fresh_copy(&b, "edit", false);
    let target = 8;
    tamper(&db, |c| {
        let data: String = c
            .query_row("SELECT data FROM events WHERE position = ?1", [target], |r| r.get(0))
            .unwrap();
        let key = "\"energy_wh\":\"";
        let at = data.find(key).expect("a reading carries energy_wh") + key.len();
        let digit = data.as_bytes()[at];
        assert!(digit.is_ascii_digit(), "{data}");
        let replacement = if digit == b'9' { b'1' } else { digit + 1 };
        let mut bytes = data.clone().into_bytes();
        bytes[at] = replacement;
        let edited = String::from_utf8(bytes).unwrap();
        let n = c
            .execute(
                "UPDATE events SET data = ?1 WHERE position = ?2",
                params![edited, target],
            )
            .unwrap();
        assert_eq!(n, 1);
    });
    let r = audit(&db, 1);
    // The row's content no longer matches its own hash; the next row's prev_hash still equals
    // the stored (unchanged) hash, so nothing else breaks before it.
    assert_eq!(r.first_failing(), Some(target), "{}", r.json);
    assert!(r.has(target, "hash"), "{}", r.json);
    assert_human_names(&r, target, "hash");
}

#[test]
fn a_deleted_middle_row_is_found_where_the_gap_shows() {
    let b = build();
    let db = fresh_copy(&b, "delete", false);
    let deleted = 10;
    tamper(&db, |c| {
        assert_eq!(
            c.execute("DELETE FROM events WHERE position = ?1", [deleted]).unwrap(),
            1
        );
    });
    let r = audit(&db, 1);
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

#[test]
fn two_swapped_rows_are_found_at_the_lower_position() {
    let b = build();
    let db = fresh_copy(&b, "swap", false);
    let (low, high) = (7i64, 12i64);
    tamper(&db, |c| {
        let mut rows = read_rows(c);
        let (i, j) = ((low - 1) as usize, (high - 1) as usize);
        let (a, z) = (rows[i].clone(), rows[j].clone());
        rows[i] = Row { position: low, ..z };
        rows[j] = Row { position: high, ..a };
        write_rows(c, &rows);
    });
    let r = audit(&db, 1);
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

#[test]
fn deleted_tail_rows_are_found_against_the_snapshot() {
    let b = build();
    let db = fresh_copy(&b, "tail", true);
    tamper(&db, |c| {
        assert_eq!(
            c.execute("DELETE FROM events WHERE position > ?1", [HEAD - 2]).unwrap(),
            2
        );
    });
    let r = audit(&db, 1);
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
#[test]
fn reading_a_cut_log_keeps_the_evidence_for_the_audit() {
    let b = build();
    let db = fresh_copy(&b, "tail-then-read", true);
    tamper(&db, |c| {
        assert_eq!(
            c.execute("DELETE FROM events WHERE position > ?1", [HEAD - 2]).unwrap(),
            2
        );
    });
    let (code, _, err) = run(&db, &["statement", "--tenant", "acme-ai", "--period", "2025-02"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("kept as"),
        "the statement says the snapshot was set aside: {err}"
    );
    let r = audit(&db, 1);
    assert!(r.has(HEAD, "tail"), "{}", r.json);
}

#[test]
fn a_tail_deleted_back_through_a_period_close() {
    let b = build();

    // 1. The PeriodClosed row and everything after it deleted; the snapshot (at 20) kept.
    //    The log 1..=14 is a valid chain, and the one event that pinned anything after it
    //    (PeriodClosed pins 14, its own last position before the close) is gone with it. The
    //    snapshot recorded position 20 and its chain hash: the tail finding names 15, the
    //    first missing position.
    let db = fresh_copy(&b, "close-tail", true);
    tamper(&db, |c| {
        let t: String = c
            .query_row(
                "SELECT event_type FROM events WHERE position = ?1",
                [CLOSE_POSITION],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(t, "PeriodClosed");
        let n = c
            .execute("DELETE FROM events WHERE position >= ?1", [CLOSE_POSITION])
            .unwrap();
        assert_eq!(n as u64, HEAD - CLOSE_POSITION + 1);
    });
    let r = audit(&db, 1);
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
    let db = fresh_copy(&b, "close-tail-no-snapshot", false);
    tamper(&db, |c| {
        c.execute("DELETE FROM events WHERE position >= ?1", [CLOSE_POSITION])
            .unwrap();
    });
    let r = audit(&db, 0);
    assert_eq!(r.json["head_position"].as_u64(), Some(CLOSE_POSITION - 1));
    let pinned_position = b.january["last_position"].as_u64().expect("statement last_position");
    assert!(pinned_position < CLOSE_POSITION);
    assert_eq!(b.january["final"], json!(true));
    let (code, out, err) = run(&db, &["statement", "--tenant", "acme-ai", "--period", "2025-01"]);
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
    let db = fresh_copy(&b, "rewrite-before-close", false);
    let removed = 9i64;
    tamper(&db, |c| {
        let rows = read_rows(c);
        let mut out: Vec<Row> = Vec::new();
        let mut prev = GENESIS_HASH.to_string();
        for r in rows.into_iter().filter(|r| r.position != removed) {
            let mut r = r;
            if r.position > removed {
                r.position -= 1;
                if r.stream == "meter-rack-a1" {
                    r.version -= 1;
                }
            }
            r.prev_hash = prev.clone();
            r.hash = record_hash(
                &r.prev_hash,
                r.position as u64,
                &r.stream,
                r.version as u64,
                &uuid::Uuid::parse_str(&r.event_id).unwrap(),
                &r.event_type,
                r.schema_version as u32,
                &parse_time(&r.recorded_at).unwrap(),
                &r.data,
            );
            prev = r.hash.clone();
            out.push(r);
        }
        write_rows(c, &out);
    });
    let r = audit(&db, 1);
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
