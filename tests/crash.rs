//! The crash test: a `wattledger apply -` child is killed with SIGKILL at a random moment
//! while readings stream through it, five times over one store. After every kill the log must
//! hold every acknowledged event at its acknowledged position, with no gap and nothing
//! half-written, and the audit must be clean; the next round re-sends acknowledged readings
//! (they must come back as duplicates at their original positions) and new ones.
//!
//! The seed of the random delays and re-sends is printed; set `WATTLEDGER_CRASH_SEED` to
//! replay one run's choices.

use chrono::{DateTime, Duration as ChronoDuration, TimeZone, Utc};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use uuid::Uuid;
use wattledger::domain::Event;
use wattledger::domain::time::parse_time;
use wattledger::store::{GENESIS_HASH, canonical_json, record_hash};

const BIN: &str = env!("CARGO_BIN_EXE_wattledger");
const ROUNDS: usize = 5;
/// Load meters the readings are spread over (so the intervals stay in the past).
const METERS: u64 = 4;
/// New readings queued for each round: more than a child takes in 400 ms, so the kill lands
/// while readings are still flowing.
const NEW_READINGS_PER_ROUND: u64 = 30_000;
/// Earlier acknowledged readings re-sent at the start of each later round.
const RESEND_ACKED_MAX: usize = 200;
/// Readings queued but not acknowledged in the previous round, re-sent in the next.
const RESEND_UNACKED_MAX: usize = 100;
const KILL_DELAY_MS: (u64, u64) = (50, 400);
/// Longest wait for any single line, exit or helper thread.
const WAIT: Duration = Duration::from_secs(15);
/// The whole test must finish within this.
const TEST_DEADLINE: Duration = Duration::from_secs(55);

/// xorshift64*: enough randomness for delays and samples, and reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform-ish in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn seed() -> u64 {
    if let Ok(s) = std::env::var("WATTLEDGER_CRASH_SEED") {
        return s.parse().expect("WATTLEDGER_CRASH_SEED is a u64");
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64
}

fn setup_commands() -> Vec<Value> {
    let mut cmds = vec![
        json!({"command":"register_site","site_id":"crash-site","time_zone":"America/Chicago","loss_tolerance_pct":"5"}),
        json!({"command":"publish_tariff","site_id":"crash-site","effective_from":"2024-01-01T00:00:00Z",
               "rates_eu_per_wh":{"generated":"1","stored":"1","dispatched":"1","consumed":"1.1"},
               "bands":[{"name":"peak","days":["mon","tue","wed","thu","fri"],"start":"14:00","end":"20:00","multiplier":"1.5"},
                        {"name":"night","days":["mon","tue","wed","thu","fri","sat","sun"],"start":"00:00","end":"06:00","multiplier":"0.6"}],
               "default_band":{"name":"standard","multiplier":"1"},
               "source_multipliers":{"gas_turbine":"1.2","solar":"0.9","grid":"1"}}),
        json!({"command":"register_tenant","tenant_id":"crash-tenant","name":"Crash Test AI"}),
    ];
    for m in 0..METERS {
        cmds.push(
            json!({"command":"register_meter","meter_id":meter_id(m),"site_id":"crash-site","kind":"load",
                         "tenant_id":"crash-tenant","rated_power_w":"100000000"}),
        );
    }
    cmds
}

fn meter_id(m: u64) -> String {
    format!("crash-rack-{m}")
}

/// Reading `i`: meter `i % METERS`, the `i / METERS`-th quarter hour from 2025-01-01.
fn reading_meter_and_start(i: u64) -> (String, DateTime<Utc>) {
    let origin = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
    (
        meter_id(i % METERS),
        origin + ChronoDuration::minutes(15 * (i / METERS) as i64),
    )
}

fn reading_command(i: u64) -> Value {
    let (meter, start) = reading_meter_and_start(i);
    let end = start + ChronoDuration::minutes(15);
    json!({"command":"post_reading","meter_id":meter,"flow":"consumed",
           "start":fmt(start),"end":fmt(end),"wh":format!("{}", 1000 + (i * 7919) % 100_000)})
}

fn fmt(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// What one line of input was, so its result can be checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sent {
    Setup(usize),
    /// A reading acknowledged in an earlier round, re-sent.
    ResendAcked(u64),
    /// A reading queued but not acknowledged in the previous round, re-sent.
    ResendUnacked(u64),
    New(u64),
}

#[derive(Clone, Debug)]
struct Ack {
    event_id: Uuid,
    position: u64,
}

/// One exported record, checked.
#[derive(Clone, Debug)]
struct Exported {
    event_id: Uuid,
    event_type: String,
    hash: String,
    data: Value,
}

struct Store {
    dir: tempfile::TempDir,
}

impl Store {
    fn db(&self) -> PathBuf {
        self.dir.path().join("w.db")
    }
    fn url(&self) -> String {
        format!("sqlite://{}", self.db().display())
    }
}

/// Runs a wattledger command to completion, bounded by [`WAIT`].
fn run(url: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = Command::new(BIN)
        .arg("--store")
        .arg(url)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wattledger");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out, &mut s).map(|_| s)
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut err, &mut s).map(|_| s)
    });
    let status = wait_bounded(&mut child, WAIT).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("wattledger {args:?} did not finish within {WAIT:?}");
    });
    let out = join_bounded(t_out).expect("stdout reader").expect("stdout is UTF-8");
    let err = join_bounded(t_err).expect("stderr reader").expect("stderr is UTF-8");
    (status.code(), out, err)
}

fn wait_bounded(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn join_bounded<T>(h: JoinHandle<T>) -> Option<T> {
    let deadline = Instant::now() + WAIT;
    while !h.is_finished() {
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Some(h.join().expect("helper thread panicked"))
}

/// Exports the log and checks every line: it parses, carries a known event whose data
/// decodes, its hash is the hash of its content and it continues the chain, and positions are
/// exactly 1..=N. Returns the records by position (index 0 is position 1).
fn export_and_check(store: &Store, round: usize) -> Vec<Exported> {
    let (code, out, err) = run(&store.url(), &["export", "--format", "ndjson"]);
    assert_eq!(code, Some(0), "round {round}: export failed: {err}");
    let mut records = Vec::new();
    let mut prev_hash = GENESIS_HASH.to_string();
    for (i, line) in out.lines().enumerate() {
        let expected_position = i as u64 + 1;
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("round {round}: export line {expected_position} is not JSON ({e}): {line}"));
        let position = v["position"].as_u64().expect("position");
        assert_eq!(
            position, expected_position,
            "round {round}: the log's positions are not exactly 1..=N (a gap or a duplicate): line {expected_position} has position {position}"
        );
        let stream = v["stream"].as_str().expect("stream");
        let version = v["version"].as_u64().expect("version");
        let event_id = Uuid::parse_str(v["event_id"].as_str().expect("event_id")).expect("event_id is a UUID");
        let event_type = v["event_type"].as_str().expect("event_type").to_string();
        let schema_version = v["schema_version"].as_u64().expect("schema_version") as u32;
        let recorded_at = parse_time(v["recorded_at"].as_str().expect("recorded_at")).expect("recorded_at is RFC 3339");
        let hash = v["hash"].as_str().expect("hash").to_string();
        let data = v["data"].clone();
        assert!(
            data.is_object(),
            "round {round}: position {position}: data is not a JSON object (half-written?): {line}"
        );
        let data_text = canonical_json(&data);
        Event::from_parts(&event_type, &data_text)
            .unwrap_or_else(|e| panic!("round {round}: position {position}: not a valid {event_type}: {e}"));
        assert_eq!(
            v["prev_hash"].as_str(),
            Some(prev_hash.as_str()),
            "round {round}: position {position} does not continue the hash chain"
        );
        let expected = record_hash(
            &prev_hash,
            position,
            stream,
            version,
            &event_id,
            &event_type,
            schema_version,
            &recorded_at,
            &data_text,
        );
        assert_eq!(
            hash, expected,
            "round {round}: position {position}: the hash does not match the content"
        );
        prev_hash = hash.clone();
        records.push(Exported {
            event_id,
            event_type,
            hash,
            data,
        });
    }
    records
}

fn audit_is_clean(store: &Store, round: usize, log: &[Exported]) {
    let (code, out, err) = run(&store.url(), &["audit", "--json"]);
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| {
        panic!("round {round}: audit --json printed no JSON ({e}); stdout {out:?}, stderr {err:?}")
    });
    assert_eq!(
        code,
        Some(0),
        "round {round}: audit exits 0 on a crashed-and-recovered store: {out}\n{err}"
    );
    assert_eq!(report["clean"], json!(true), "round {round}: {out}");
    assert_eq!(
        report["events"].as_u64(),
        Some(log.len() as u64),
        "round {round}: {out}"
    );
    assert_eq!(
        report["head_position"].as_u64(),
        Some(log.len() as u64),
        "round {round}: {out}"
    );
    let head_hash = log.last().map_or(GENESIS_HASH, |r| r.hash.as_str());
    assert_eq!(report["chain_hash"].as_str(), Some(head_hash), "round {round}: {out}");
}

/// One round: start the child, feed it, kill it at a random moment. Returns what was sent,
/// in order, and the result lines that were completely printed before the kill.
struct RoundOutput {
    sent: Vec<Sent>,
    results: Vec<Value>,
    killed_after_ms: u64,
    stderr: String,
}

enum Line {
    Complete(String),
    /// The child died in the middle of a line: not an acknowledgement.
    Partial(String),
    Eof,
}

fn run_round(store: &Store, round: usize, sent: Vec<Sent>, rng: &mut Rng) -> RoundOutput {
    let stderr_path = store.dir.path().join(format!("round-{round}.stderr"));
    let mut child = Command::new(BIN)
        .arg("--store")
        .arg(store.url())
        .args(["apply", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("spawn wattledger apply");
    let stdin: ChildStdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();

    let setup = setup_commands();
    let lines: Vec<String> = sent
        .iter()
        .map(|s| {
            let v = match s {
                Sent::Setup(k) => setup[*k].clone(),
                Sent::ResendAcked(i) | Sent::ResendUnacked(i) | Sent::New(i) => reading_command(*i),
            };
            format!("{v}\n")
        })
        .collect();

    // Writer: feeds every line, then keeps stdin open until told to stop, so the child is
    // always alive (and never finishes on its own) when the kill comes.
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let writer = std::thread::spawn(move || {
        let mut w = BufWriter::with_capacity(16 * 1024, stdin);
        for l in &lines {
            if w.write_all(l.as_bytes()).is_err() {
                return; // the child is gone
            }
        }
        if w.flush().is_err() {
            return;
        }
        let _ = stop_rx.recv_timeout(WAIT);
    });

    // Reader: every line the child prints; only newline-terminated lines count.
    let (line_tx, line_rx) = mpsc::channel::<Line>();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        loop {
            let mut s = String::new();
            let msg = match r.read_line(&mut s) {
                Ok(0) | Err(_) => Line::Eof,
                Ok(_) if s.ends_with('\n') => Line::Complete(s.trim_end().to_string()),
                Ok(_) => Line::Partial(s),
            };
            let eof = matches!(msg, Line::Eof);
            if line_tx.send(msg).is_err() || eof {
                return;
            }
        }
    });

    let stderr_text = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let mut results = Vec::new();
    let mut eof = false;
    let receive = |results: &mut Vec<Value>, eof: &mut bool, timeout: Duration| -> bool {
        match line_rx.recv_timeout(timeout) {
            Ok(Line::Complete(s)) => {
                let v: Value = serde_json::from_str(&s)
                    .unwrap_or_else(|e| panic!("round {round}: a complete result line is not JSON ({e}): {s}"));
                results.push(v);
                true
            }
            Ok(Line::Partial(s)) => {
                eprintln!(
                    "round {round}: the kill cut a result line short ({} bytes); not counted",
                    s.len()
                );
                true
            }
            Ok(Line::Eof) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                *eof = true;
                false
            }
            Err(mpsc::RecvTimeoutError::Timeout) => false,
        }
    };

    // Wait until the readings start flowing: the first result after the set-up commands.
    let first_reading = sent
        .iter()
        .position(|s| !matches!(s, Sent::Setup(_)))
        .expect("readings to send");
    let started = Instant::now();
    while results.len() <= first_reading && !eof {
        if started.elapsed() > WAIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "round {round}: no reading was acknowledged within {WAIT:?}; stderr: {}",
                stderr_text()
            );
        }
        receive(&mut results, &mut eof, Duration::from_millis(100));
    }
    assert!(
        !eof,
        "round {round}: the child stopped before it was killed ({:?}); stderr: {}",
        child.try_wait(),
        stderr_text()
    );

    // Let it run for a random while, collecting acknowledgements, then SIGKILL.
    let delay = rng.between(KILL_DELAY_MS.0, KILL_DELAY_MS.1);
    let kill_at = Instant::now() + Duration::from_millis(delay);
    while !eof {
        let now = Instant::now();
        if now >= kill_at {
            break;
        }
        receive(&mut results, &mut eof, kill_at - now);
    }
    assert!(
        !eof,
        "round {round}: the child stopped before it was killed ({:?}); stderr: {}",
        child.try_wait(),
        stderr_text()
    );
    child.kill().expect("SIGKILL the child");
    let status = wait_bounded(&mut child, WAIT).expect("a killed child is reaped");
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(9),
            "round {round}: the child died of SIGKILL, not {status:?}"
        );
    }
    // Everything it printed before dying.
    let drain_deadline = Instant::now() + WAIT;
    while !eof {
        assert!(
            Instant::now() < drain_deadline,
            "round {round}: stdout did not close after the kill"
        );
        receive(&mut results, &mut eof, Duration::from_millis(100));
    }
    let _ = stop_tx.send(());
    join_bounded(writer).expect("the writer thread ends once the child is gone");
    join_bounded(reader).expect("the reader thread ends at EOF");
    RoundOutput {
        sent,
        results,
        killed_after_ms: delay,
        stderr: stderr_text(),
    }
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_event() {
    let test_started = Instant::now();
    let seed = seed();
    eprintln!("crash test seed: {seed} (set WATTLEDGER_CRASH_SEED={seed} to replay its choices)");
    let mut rng = Rng::new(seed);
    let store = Store {
        dir: tempfile::tempdir().expect("tempdir"),
    };
    let setup = setup_commands();

    // Everything acknowledged so far: set-up command index → ack, reading index → ack.
    let mut setup_acks: Vec<Option<Ack>> = vec![None; setup.len()];
    let mut reading_acks: BTreeMap<u64, Ack> = BTreeMap::new();
    // Readings queued but not acknowledged in the previous round.
    let mut unacked_last_round: Vec<u64> = Vec::new();
    let mut next_reading: u64 = 0;
    // The log as the previous round left it.
    let mut prev_log: Vec<Exported> = Vec::new();
    let mut prev_ids: HashMap<Uuid, u64> = HashMap::new();

    for round in 1..=ROUNDS {
        assert!(
            test_started.elapsed() < TEST_DEADLINE,
            "the crash test ran past {TEST_DEADLINE:?} before round {round}"
        );
        // What to send: the set-up again (duplicates after round 1), earlier acknowledged
        // readings, last round's unacknowledged ones, then new ones.
        let mut sent: Vec<Sent> = (0..setup.len()).map(Sent::Setup).collect();
        if !reading_acks.is_empty() {
            let acked: Vec<u64> = reading_acks.keys().copied().collect();
            let n = acked.len().min(RESEND_ACKED_MAX);
            for _ in 0..n {
                sent.push(Sent::ResendAcked(acked[rng.next() as usize % acked.len()]));
            }
        }
        for &i in unacked_last_round.iter().take(RESEND_UNACKED_MAX) {
            sent.push(Sent::ResendUnacked(i));
        }
        let first_new = next_reading;
        for i in first_new..first_new + NEW_READINGS_PER_ROUND {
            sent.push(Sent::New(i));
        }
        next_reading += NEW_READINGS_PER_ROUND;

        let out = run_round(&store, round, sent, &mut rng);
        let acked_count = out.results.len();
        assert!(
            acked_count < out.sent.len(),
            "round {round}: every command was answered before the kill; the test needs more input"
        );

        // Check each result against what was sent, in order.
        let prev_n = prev_log.len() as u64;
        let mut last_new_position = prev_n;
        let mut new_acks = 0usize;
        let (mut recovered_dups, mut recovered_new) = (0usize, 0usize);
        for (k, v) in out.results.iter().enumerate() {
            let what = out.sent[k];
            assert_eq!(
                v["ok"],
                json!(true),
                "round {round}: command {k} ({what:?}) was refused: {v}\nstderr: {}",
                out.stderr
            );
            let ack = Ack {
                event_id: Uuid::parse_str(v["event_id"].as_str().expect("event_id")).expect("uuid"),
                position: v["position"].as_u64().expect("position"),
            };
            let duplicate = v["duplicate"].as_bool().expect("duplicate flag");
            match what {
                Sent::Setup(s) => match &setup_acks[s] {
                    Some(first) => {
                        assert!(duplicate, "round {round}: set-up command {s} again is a duplicate: {v}");
                        assert_eq!(
                            (ack.event_id, ack.position),
                            (first.event_id, first.position),
                            "round {round}: set-up command {s} again names its original event: {v}"
                        );
                    }
                    None => {
                        assert!(!duplicate, "round {round}: set-up command {s} is new: {v}");
                        setup_acks[s] = Some(ack);
                    }
                },
                Sent::ResendAcked(i) => {
                    let first = &reading_acks[&i];
                    assert!(
                        duplicate,
                        "round {round}: re-sent reading {i} comes back as a duplicate: {v}"
                    );
                    assert_eq!(
                        (ack.event_id, ack.position),
                        (first.event_id, first.position),
                        "round {round}: re-sent reading {i} names its original event and position: {v}"
                    );
                }
                Sent::ResendUnacked(i) => {
                    // It may or may not have been committed before the kill: a duplicate if it
                    // was (at the position the log had), new (past the old head) if not.
                    if duplicate {
                        assert_eq!(
                            prev_ids.get(&ack.event_id),
                            Some(&ack.position),
                            "round {round}: unacknowledged reading {i} was recorded before the kill, at the position the log shows: {v}"
                        );
                        assert!(ack.position <= prev_n);
                        recovered_dups += 1;
                    } else {
                        assert!(
                            ack.position > last_new_position,
                            "round {round}: reading {i} is appended after everything before it: {v}"
                        );
                        last_new_position = ack.position;
                        recovered_new += 1;
                    }
                    reading_acks.insert(i, ack);
                }
                Sent::New(i) => {
                    assert!(!duplicate, "round {round}: new reading {i} is not a duplicate: {v}");
                    assert!(
                        ack.position > last_new_position,
                        "round {round}: new reading {i} at position {} must follow {last_new_position} (no position reused after a crash)",
                        ack.position
                    );
                    last_new_position = ack.position;
                    new_acks += 1;
                    reading_acks.insert(i, ack);
                }
            }
        }
        unacked_last_round = out.sent[acked_count..]
            .iter()
            .filter_map(|s| match s {
                Sent::New(i) | Sent::ResendUnacked(i) if !reading_acks.contains_key(i) => Some(*i),
                _ => None,
            })
            .collect();

        // The log after the crash.
        let log = export_and_check(&store, round);
        let n = log.len() as u64;
        eprintln!(
            "round {round}: killed {} ms after readings began flowing; {acked_count} of {} commands acknowledged \
             ({new_acks} new readings; of last round's unacknowledged ones re-sent, {recovered_dups} had been \
             recorded, {recovered_new} had not); the log holds {n} events (was {prev_n})",
            out.killed_after_ms,
            out.sent.len()
        );
        assert!(n >= prev_n, "round {round}: the log shrank from {prev_n} to {n}");
        if prev_n > 0 {
            assert_eq!(
                log[prev_n as usize - 1].hash,
                prev_log[prev_n as usize - 1].hash,
                "round {round}: the log before the previous head was rewritten"
            );
        }
        let max_acked = setup_acks
            .iter()
            .flatten()
            .chain(reading_acks.values())
            .map(|a| a.position)
            .max()
            .unwrap_or(0);
        assert!(
            max_acked <= n,
            "round {round}: position {max_acked} was acknowledged but the log ends at {n}"
        );
        for (s, ack) in setup_acks.iter().enumerate() {
            let ack = ack.as_ref().expect("every set-up command was acknowledged in round 1");
            assert_eq!(
                log[ack.position as usize - 1].event_id,
                ack.event_id,
                "round {round}: set-up command {s} acknowledged at position {} is not there",
                ack.position
            );
        }
        for (i, ack) in &reading_acks {
            let r = &log[ack.position as usize - 1];
            assert_eq!(
                r.event_id, ack.event_id,
                "round {round}: reading {i} acknowledged at position {} with event {} is not there (found {})",
                ack.position, ack.event_id, r.event_id
            );
            let (meter, start) = reading_meter_and_start(*i);
            assert_eq!(r.event_type, "EnergyConsumed");
            assert_eq!(
                r.data["meter_id"].as_str(),
                Some(meter.as_str()),
                "round {round}: reading {i}"
            );
            assert_eq!(
                r.data["start"].as_str(),
                Some(fmt(start).as_str()),
                "round {round}: reading {i}"
            );
        }
        audit_is_clean(&store, round, &log);
        prev_ids = log
            .iter()
            .enumerate()
            .map(|(k, r)| (r.event_id, k as u64 + 1))
            .collect();
        prev_log = log;
    }
    assert!(
        test_started.elapsed() < TEST_DEADLINE,
        "the crash test took {:?}, more than {TEST_DEADLINE:?}",
        test_started.elapsed()
    );
}
