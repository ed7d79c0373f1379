//! `wattledger bench`: the ledger's throughput and latency measured beside the raw limits of
//! its own storage **in the same run** (issue 6; method and figures in `docs/PERFORMANCE.md`).
//!
//! - [`ingest`]: the full write path in process (JSON text → `Command` → `Ledger::submit` →
//!   durable group commit → projections), then the same rows appended by the plainest code
//!   into a fresh SQLite file (integer key only, WAL, `synchronous=FULL`, as many rows per
//!   transaction as the ledger's average group commit);
//! - [`replay`]: the audit (`wattledger audit`) over an existing log, then the raw
//!   read-and-parse limit (every row read, its data parsed with `serde_json`);
//! - [`read`]: statement and balance reads from the in-memory projections, with percentiles,
//!   and what a restart costs (store index, write state, projections);
//! - [`http`]: the API started in process on loopback, with C keep-alive clients posting
//!   single readings or NDJSON bulk bodies (a minimal HTTP/1.1 client over `TcpStream`).
//!
//! Every loop is bounded by a count from the command line or by a fixed time budget, and
//! every subcommand finishes on its own. Temporary stores are removed when done.

use crate::app::AppError;
use crate::domain::Command;
use crate::ledger::{CommandError, Ledger, Pending, SystemClock};
use crate::projections::engine::{Projections, snapshot_path_for};
use crate::scratch::ScratchDir;
use crate::store::{self, Access, EventStore};
use chrono::{DateTime, Duration as TimeDelta, DurationRound, TimeZone, Utc};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most readings one run posts.
pub const READINGS_MAX: u64 = 100_000_000;
/// Most meters one run registers.
pub const METERS_MAX: u64 = 1_000_000;
/// Largest pipeline window: stays below the writer's queue depth, so no append is refused as busy.
pub const WINDOW_MAX: usize = 60_000;
/// Most concurrent HTTP clients.
pub const CLIENTS_MAX: usize = 4_096;
/// Most repeat passes of `bench http`.
pub const REPEATS_MAX: u32 = 100;
/// Most iterations of one read kind.
pub const READ_ITERATIONS_MAX: u64 = 10_000_000;
/// Longest time one read kind is measured for.
pub const READ_SECONDS_MAX: u64 = 30;
/// Longest a client waits for one HTTP answer.
pub const HTTP_TIMEOUT_S: u64 = 120;
/// Longest the projections may take to reach the head after an ingest.
pub const PROJECTION_WAIT_S_MAX: u64 = 3_600;
/// Rows read per page when copying rows for the raw limit.
const RAW_PAGE_ROWS: i64 = 10_000;
/// The length of one reading interval.
const INTERVAL_MIN: i64 = 15;

// ---------------------------------------------------------------------------------------
// Arguments
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProjectionMode {
    /// Follow the log while ingesting (what `serve` does); the run ends when they reach the head.
    Live,
    /// Open the projections after the last append and catch up from position 0.
    End,
}

#[derive(Clone, Debug, clap::Args)]
pub struct IngestArgs {
    /// Readings to post.
    #[arg(long, default_value_t = 100_000)]
    pub readings: u64,
    /// Load meters the readings are spread over (round robin, 15-minute intervals).
    #[arg(long, default_value_t = 1_000)]
    pub meters: u64,
    /// Commands decided but not yet durable at one time (the pipeline window; it bounds the
    /// size of one group commit).
    #[arg(long, default_value_t = 4_096)]
    pub batch: usize,
    /// When the projections fold the readings.
    #[arg(long, value_enum, default_value = "live")]
    pub projections: ProjectionMode,
    /// Rows per transaction of the raw limit (default: the ledger's average group commit in
    /// this run).
    #[arg(long)]
    pub raw_rows_per_tx: Option<usize>,
    /// Folder for the temporary store and the raw-limit file (default: the system's temp folder).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Debug, clap::Args)]
pub struct ReplayArgs {
    /// Also time each stage of the verification (read, hash, decode, postings, price, state,
    /// projections) in a second, instrumented pass.
    #[arg(long)]
    pub breakdown: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Debug, clap::Args)]
pub struct RestartArgs {
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Debug, clap::Args)]
pub struct ReadArgs {
    /// Iterations of each read kind (each also stops after 30 s).
    #[arg(long, default_value_t = 100_000)]
    pub iterations: u64,
    /// Skip rebuilding the write state (the part of a restart that replays the log).
    #[arg(long)]
    pub no_ledger: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Debug, clap::Args)]
pub struct HttpArgs {
    /// Readings to post.
    #[arg(long, default_value_t = 100_000)]
    pub readings: u64,
    /// Concurrent keep-alive clients (one request in flight each).
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Load meters the readings are spread over.
    #[arg(long, default_value_t = 10_000)]
    pub meters: u64,
    /// Post NDJSON bodies of --batch readings instead of one reading per request.
    #[arg(long)]
    pub bulk: bool,
    /// Readings per bulk request.
    #[arg(long, default_value_t = 1_000)]
    pub batch: usize,
    /// After every reading was posted once, post them all again this many times. Each repeat
    /// is a retry, answered 200 `duplicate`, so the ledger's state does not grow after the
    /// first pass: the process's memory after the last pass, set against memory after the
    /// first, shows whether serving requests leaks (see `rss` in the report).
    #[arg(long, default_value_t = 0)]
    pub repeats: u32,
    /// Folder for the temporary store (default: the system's temp folder).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Whether `--store` was given on the command line or through `WATTLEDGER_STORE` (otherwise
/// `bench ingest` uses a fresh temporary store rather than the default one).
pub fn store_given() -> bool {
    std::env::var_os("WATTLEDGER_STORE").is_some()
        || std::env::args_os().any(|a| {
            let a = a.to_string_lossy();
            a == "--store" || a.starts_with("--store=")
        })
}

// ---------------------------------------------------------------------------------------
// Reports
// ---------------------------------------------------------------------------------------

/// One bench's result: a table for people and one JSON object.
pub struct Report {
    pub title: String,
    pub rows: Vec<(String, String)>,
    pub json: Value,
}

impl Report {
    fn new(title: &str, json: Value) -> Self {
        Self {
            title: title.to_string(),
            rows: Vec::new(),
            json,
        }
    }

    fn row(&mut self, what: &str, value: impl Into<String>) {
        self.rows.push((what.to_string(), value.into()));
    }

    /// The table for people.
    pub fn human(&self) -> String {
        let w = self.rows.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0);
        let mut s = format!("{}\n", self.title);
        for (k, v) in &self.rows {
            let pad = w - k.chars().count();
            let _ = writeln!(s, "  {k}{}  {v}", " ".repeat(pad));
        }
        s
    }

    /// Prints the JSON object (`json`) or the table.
    pub fn print(&self, json: bool) {
        if json {
            println!("{}", serde_json::to_string_pretty(&self.json).expect("json"));
        } else {
            print!("{}", self.human());
        }
    }
}

fn per_s(n: u64, d: Duration) -> f64 {
    let s = d.as_secs_f64();
    if s > 0.0 { n as f64 / s } else { 0.0 }
}

fn fmt_rate(x: f64) -> String {
    let n = x.round() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn usage(m: impl Into<String>) -> AppError {
    AppError::Usage(m.into())
}

fn io_err(e: impl std::fmt::Display) -> AppError {
    AppError::Io(std::io::Error::other(e.to_string()))
}

// ---------------------------------------------------------------------------------------
// The machine and the process (from /proc)
// ---------------------------------------------------------------------------------------

/// Cores, memory, CPU model and kernel, from `/proc`.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string());
    let processors = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = |key: &str| {
        meminfo
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|k| k * 1024)
    };
    json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "processors_in_proc_cpuinfo": processors,
        "cpu_model": model,
        "mem_total_bytes": kib("MemTotal:"),
        "mem_available_bytes": kib("MemAvailable:"),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_string()),
        "clocksource": std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
            .ok()
            .map(|s| s.trim().to_string()),
    })
}

/// The mount (device, type, mount point) a path lives on, from `/proc/mounts`.
pub fn filesystem_of(path: &Path) -> Value {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut best: Option<(usize, Value)> = None;
    for l in mounts.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 3 {
            continue;
        }
        let mp = Path::new(f[1]);
        if path.starts_with(mp) && best.as_ref().is_none_or(|(n, _)| f[1].len() > *n) {
            best = Some((f[1].len(), json!({"device": f[0], "mount_point": f[1], "type": f[2]})));
        }
    }
    best.map_or(Value::Null, |(_, v)| v)
}

/// Peak resident set (`VmHWM`) of this process, in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map(|k| k * 1024)
}

/// A number field of `/proc/self/status` (`VmRSS`, `Threads`, …).
fn proc_status(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.split(':').next() == Some(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
}

/// Resident set (`VmRSS`) of this process now, in bytes.
pub fn rss_bytes() -> Option<u64> {
    proc_status("VmRSS").map(|k| k * 1024)
}

/// Resets the peak resident set to the current one (Linux ≥ 4.0); false if refused.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// `read_bytes` and `write_bytes` of `/proc/self/io`: what this process sent to storage.
fn proc_io() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let get = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (get("read_bytes:"), get("write_bytes:"))
}

/// User + system CPU time of the whole process (threads that ended included), in seconds.
/// `/proc/self/stat` counts in clock ticks of 1/100 s on Linux.
fn process_cpu_s() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let Some(rest) = s.rfind(')').map(|i| &s[i + 1..]) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// CPU seconds the whole machine spent busy (all processes) and stolen by the hypervisor,
/// from the first line of `/proc/stat` (1/100 s ticks).
fn machine_cpu_s() -> (f64, f64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    let busy = at(0) + at(1) + at(2) + at(5) + at(6);
    (busy as f64 / 100.0, at(7) as f64 / 100.0)
}

/// What else ran on the machine while a bench ran: busy CPU seconds of other processes and
/// seconds stolen by the hypervisor, between two [`machine_cpu_s`] readings.
fn others_json(m0: (f64, f64), m1: (f64, f64), own_cpu_s: f64, wall: Duration) -> Value {
    let others = (m1.0 - m0.0 - own_cpu_s).max(0.0);
    json!({
        "other_processes_cpu_seconds": round3(others),
        "steal_seconds": round3(m1.1 - m0.1),
        "wall_seconds": round3(wall.as_secs_f64()),
    })
}

/// CPU nanoseconds of each live thread of this process: tid → (name, ns), from schedstat.
fn thread_cpu() -> HashMap<u64, (String, u64)> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(tid) = e.file_name().to_string_lossy().parse::<u64>() else {
            continue;
        };
        let name = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        let ns = std::fs::read_to_string(e.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
            .unwrap_or(0);
        out.insert(tid, (name.trim().to_string(), ns));
    }
    out
}

/// CPU seconds per thread name between two [`thread_cpu`] snapshots (threads still alive).
fn thread_cpu_delta(
    before: &HashMap<u64, (String, u64)>,
    after: &HashMap<u64, (String, u64)>,
) -> BTreeMap<String, f64> {
    let mut by_name: BTreeMap<String, f64> = BTreeMap::new();
    for (tid, (name, ns)) in after {
        let start = before.get(tid).map_or(0, |(_, n)| *n);
        let label = match name.as_str() {
            "wattledger-sqli" => "sqlite writer thread".to_string(),
            "tokio-runtime-w" | "tokio-rt-worker" => "tokio threads (workers and blocking pool)".to_string(),
            "wattledger" => "main thread (drives the bench)".to_string(),
            other => other.to_string(),
        };
        *by_name.entry(label).or_default() += ns.saturating_sub(start) as f64 / 1e9;
    }
    by_name.retain(|_, v| *v >= 0.0005);
    by_name
}

fn cpu_json(threads: &BTreeMap<String, f64>) -> Value {
    Value::Object(threads.iter().map(|(k, v)| (k.clone(), json!(round3(*v)))).collect())
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// `(sum, count)` of a store's group-commit histogram (requests per commit).
fn group_stats(store: &dyn EventStore) -> Option<(f64, f64)> {
    let h = store.group_commit_sizes()?;
    let mut s = String::new();
    h.render(&mut s, "g", "");
    let get = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
    };
    Some((get("g_sum ")?, get("g_count ")?))
}

/// The SQLite file a store URL names, if it names one.
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    if let Some(p) = url.strip_prefix("sqlite://") {
        return Some(PathBuf::from(p));
    }
    (!url.contains("://")).then(|| PathBuf::from(url))
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

use crate::store::sqlite::wal_path;

// ---------------------------------------------------------------------------------------
// The workload: one site, one tenant, one tariff, M load meters, N readings
// ---------------------------------------------------------------------------------------

/// The commands a bench posts. Reading `i` goes to meter `i mod M`, interval `i div M`
/// (15 minutes each, from `base`), with a Wh value that varies.
#[derive(Clone, Debug)]
pub struct Workload {
    pub readings: u64,
    pub meters: u64,
    /// Start of the first interval (a UTC quarter hour).
    pub base: DateTime<Utc>,
}

pub const SITE: &str = "bench-site";
pub const TENANT: &str = "bench-tenant";

/// The README's tariff: peak Mon–Fri 14:00–20:00 × 1.5, night 00:00–06:00 × 0.6.
pub fn tariff_command() -> Value {
    json!({"command":"publish_tariff","site_id":SITE,"effective_from":"2020-01-01T00:00:00Z",
        "rates_eu_per_wh":{"generated":"1","stored":"1","dispatched":"1","consumed":"1.1"},
        "bands":[{"name":"peak","days":["mon","tue","wed","thu","fri"],"start":"14:00","end":"20:00","multiplier":"1.5"},
                 {"name":"night","days":["mon","tue","wed","thu","fri","sat","sun"],"start":"00:00","end":"06:00","multiplier":"0.6"}],
        "default_band":{"name":"standard","multiplier":"1"},
        "source_multipliers":{"gas_turbine":"1.2","solar":"0.9","grid":"1"}})
}

pub fn meter_id(m: u64) -> String {
    format!("m-{m:06}")
}

impl Workload {
    /// Intervals start on 2026-01-01 when the whole run fits before `now`; otherwise they end
    /// a day before `now` (readings may not be in the future).
    pub fn new(readings: u64, meters: u64, now: DateTime<Utc>) -> Self {
        let per_meter = readings.div_ceil(meters.max(1)) as i64;
        let span = TimeDelta::minutes(INTERVAL_MIN * per_meter);
        let fixed = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().expect("date");
        let base = if fixed + span + TimeDelta::hours(1) <= now {
            fixed
        } else {
            let q = now.duration_trunc(TimeDelta::minutes(INTERVAL_MIN)).unwrap_or(now);
            q - span - TimeDelta::days(1)
        };
        Self {
            readings,
            meters: meters.max(1),
            base,
        }
    }

    /// Site, tenant, credits, tariff, then the meters, as NDJSON command lines.
    pub fn setup_lines(&self) -> Vec<String> {
        let mut v = vec![
            json!({"command":"register_site","site_id":SITE,"time_zone":"America/Chicago","loss_tolerance_pct":"5"})
                .to_string(),
            json!({"command":"register_tenant","tenant_id":TENANT,"name":"Bench Tenant"}).to_string(),
            json!({"command":"issue_credits","tenant_id":TENANT,"amount_eu":"1000000000000","memo":"bench allocation"})
                .to_string(),
            tariff_command().to_string(),
        ];
        for m in 0..self.meters {
            v.push(
                json!({"command":"register_meter","meter_id":meter_id(m),"site_id":SITE,"kind":"load",
                    "tenant_id":TENANT,"rated_power_w":"2000000"})
                .to_string(),
            );
        }
        v
    }

    /// The body of reading `i` (a `post_reading` command), written into `out`.
    pub fn reading_line(&self, i: u64, out: &mut String) {
        let m = i % self.meters;
        let k = (i / self.meters) as i64;
        let start = self.base + TimeDelta::minutes(INTERVAL_MIN * k);
        let end = start + TimeDelta::minutes(INTERVAL_MIN);
        let wh = 400_000 + (i.wrapping_mul(7_919) % 100_000);
        let _ = write!(
            out,
            r#"{{"command":"post_reading","meter_id":"m-{m:06}","flow":"consumed","start":"{}","end":"{}","wh":"{wh}"}}"#,
            crate::domain::time::fmt_time(&start),
            crate::domain::time::fmt_time(&end),
        );
    }
}

// ---------------------------------------------------------------------------------------
// The in-process pipeline (what `wattledger apply` does, with each stage timed)
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, Default)]
struct Outcomes {
    accepted: u64,
    duplicates: u64,
    refused: u64,
    first_refusal: Option<String>,
}

impl Outcomes {
    fn refuse(&mut self, m: String) {
        self.refused += 1;
        if self.first_refusal.is_none() {
            self.first_refusal = Some(m);
        }
    }
}

/// Time spent in each stage: writing and parsing the lines on the parsing thread, the rest
/// on the driving (deciding) task.
#[derive(Clone, Debug, Default)]
struct Stages {
    generate: Duration,
    parse: Duration,
    submit: Duration,
    /// Waiting for room in the window (for earlier commands to become durable).
    window_wait: Duration,
    /// The driving task waiting for the parsing thread.
    input_wait: Duration,
}

/// Lines the parsing thread hands over at once, and how many such chunks it may be ahead.
const PARSE_CHUNK_LINES: usize = 256;
const PARSE_CHUNKS_AHEAD: usize = 8;

/// Decides and queues `n` command lines one after another, with up to `window` awaiting
/// durability at once; their answers are awaited in order by a second task. The lines are
/// written and parsed (JSON text → `Command`, which needs no state) on a thread of their
/// own, `bench-parse`, so that the driving task only decides, as `wattledger apply` does.
async fn pipeline(
    ledger: &Arc<Ledger>,
    n: u64,
    window: usize,
    mut make: impl FnMut(u64, &mut String) + Send + 'static,
    stages: &mut Stages,
) -> Result<Outcomes, AppError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Pending, String>>(window.max(1));
    let waiter = tokio::spawn(async move {
        let mut o = Outcomes::default();
        while let Some(item) = rx.recv().await {
            match item {
                Err(m) => o.refuse(m),
                Ok(p) => match p.wait().await {
                    Ok(a) if a.duplicate => o.duplicates += 1,
                    Ok(_) => o.accepted += 1,
                    Err(e) => o.refuse(e.to_json().to_string()),
                },
            }
        }
        o
    });
    type Parsed = Result<Command, String>;
    let (ptx, mut prx) = tokio::sync::mpsc::channel::<Vec<Parsed>>(PARSE_CHUNKS_AHEAD);
    let parser = std::thread::Builder::new()
        .name("bench-parse".into())
        .spawn(move || {
            let (mut generate, mut parse) = (Duration::ZERO, Duration::ZERO);
            let mut line = String::with_capacity(256);
            let mut chunk: Vec<Parsed> = Vec::with_capacity(PARSE_CHUNK_LINES);
            for i in 0..n {
                let t0 = Instant::now();
                line.clear();
                make(i, &mut line);
                let t1 = Instant::now();
                let parsed = match Command::reading_from_text(&line) {
                    Some(cmd) => Ok(cmd),
                    None => serde_json::from_str::<Value>(&line)
                        .map_err(|e| format!("line {i} is not valid JSON: {e}"))
                        .and_then(|v| {
                            Command::from_json(&v).map_err(|r| CommandError::Rejected(r).to_json().to_string())
                        }),
                };
                let t2 = Instant::now();
                generate += t1 - t0;
                parse += t2 - t1;
                chunk.push(parsed);
                if (chunk.len() == PARSE_CHUNK_LINES || i + 1 == n)
                    && ptx
                        .blocking_send(std::mem::replace(&mut chunk, Vec::with_capacity(PARSE_CHUNK_LINES)))
                        .is_err()
                {
                    break;
                }
            }
            (generate, parse)
        })
        .map_err(io_err)?;
    'lines: loop {
        let t0 = Instant::now();
        let Some(chunk) = prx.recv().await else {
            break;
        };
        stages.input_wait += t0.elapsed();
        // A chunk is decided as `wattledger apply` and a bulk request decide theirs: under
        // one acquisition of the ledger's lock.
        let t2 = Instant::now();
        let decided = ledger.submit_each(chunk).await;
        stages.submit += t2.elapsed();
        for item in decided {
            let t3 = Instant::now();
            if tx.send(item).await.is_err() {
                break 'lines;
            }
            stages.window_wait += t3.elapsed();
        }
    }
    drop(prx);
    let (generate, parse) = tokio::task::spawn_blocking(move || parser.join())
        .await
        .map_err(io_err)?
        .map_err(|_| usage("the bench's parsing thread panicked"))?;
    stages.generate += generate;
    stages.parse += parse;
    drop(tx);
    waiter.await.map_err(io_err)
}

/// Registers the workload's site, tenant, tariff and meters; refuses if any is refused.
async fn setup(ledger: &Arc<Ledger>, w: &Workload, window: usize) -> Result<u64, AppError> {
    let lines = w.setup_lines();
    let count = lines.len() as u64;
    let mut stages = Stages::default();
    let o = pipeline(
        ledger,
        count,
        window,
        move |i, out| out.push_str(&lines[i as usize]),
        &mut stages,
    )
    .await?;
    if o.refused > 0 {
        return Err(usage(format!(
            "the bench's set-up was refused ({} commands): {}",
            o.refused,
            o.first_refusal.unwrap_or_default()
        )));
    }
    Ok(count)
}

// ---------------------------------------------------------------------------------------
// bench ingest
// ---------------------------------------------------------------------------------------

/// The raw append limit: the same rows copied into a fresh integer-keyed table.
#[derive(Clone, Debug)]
struct RawAppend {
    /// Busy CPU seconds of other processes while it ran.
    others_cpu_s: f64,
    rows: u64,
    rows_per_tx: usize,
    commits: u64,
    elapsed: Duration,
    row_bytes: u64,
    file_bytes: u64,
    write_bytes: u64,
    /// PostgreSQL: the same rows by text-CSV `COPY`, for comparison with the binary one.
    csv: Option<Box<RawAppend>>,
}

/// Copies the rows `(after, upto]` of the SQLite log at `src` into a fresh file in `dir`
/// with the plainest code: an integer-keyed table of the same columns, WAL,
/// `synchronous=FULL`, `rows_per_tx` rows per transaction. Only the inserts and commits
/// are timed (reading the source rows is not).
fn raw_append(src: &Path, after: u64, upto: u64, rows_per_tx: usize, dir: &Path) -> Result<RawAppend, AppError> {
    use rusqlite::{Connection, OpenFlags, params};
    let sql = |e: rusqlite::Error| io_err(format!("raw limit: {e}"));
    let raw = dir.join(format!("raw-limit-{}.db", std::process::id()));
    let remove = |p: &Path| {
        for f in [
            p.to_path_buf(),
            wal_path(p),
            PathBuf::from(format!("{}-shm", p.display())),
        ] {
            let _ = std::fs::remove_file(f);
        }
    };
    remove(&raw);
    let from = Connection::open_with_flags(src, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(sql)?;
    let to = Connection::open(&raw).map_err(sql)?;
    let mode: String = to.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).map_err(sql)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(io_err(format!("raw limit: could not enable WAL ({mode})")));
    }
    to.execute_batch(
        "PRAGMA synchronous=FULL;
         CREATE TABLE events (position INTEGER PRIMARY KEY, stream TEXT NOT NULL, version INTEGER NOT NULL,
             event_id TEXT NOT NULL, event_type TEXT NOT NULL, schema_version INTEGER NOT NULL,
             recorded_at TEXT NOT NULL, data TEXT NOT NULL, hash TEXT NOT NULL, prev_hash TEXT NOT NULL);",
    )
    .map_err(sql)?;
    type Row = (i64, String, i64, String, String, i64, String, String, String, String);
    let mut read = from
        .prepare("SELECT position, stream, version, event_id, event_type, schema_version, recorded_at, data, hash, prev_hash FROM events WHERE position > ?1 AND position <= ?2 ORDER BY position LIMIT ?3")
        .map_err(sql)?;
    let mut insert = to
        .prepare("INSERT INTO events (position, stream, version, event_id, event_type, schema_version, recorded_at, data, hash, prev_hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)")
        .map_err(sql)?;
    let (_, w0) = proc_io();
    let (m0, c0) = (machine_cpu_s(), process_cpu_s());
    let mut elapsed = Duration::ZERO;
    let (mut rows, mut commits, mut in_tx, mut row_bytes) = (0u64, 0u64, 0usize, 0u64);
    let mut cursor = after;
    // Bounded: each page advances the cursor by at least one row, up to `upto`.
    while cursor < upto {
        let page: Vec<Row> = read
            .query_map(params![cursor as i64, upto as i64, RAW_PAGE_ROWS], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                ))
            })
            .map_err(sql)?
            .collect::<Result<_, _>>()
            .map_err(sql)?;
        let Some(last) = page.last() else { break };
        cursor = last.0 as u64;
        let t = Instant::now();
        for r in &page {
            if in_tx == 0 {
                to.execute_batch("BEGIN").map_err(sql)?;
            }
            insert
                .execute(params![r.0, r.1, r.2, r.3, r.4, r.5, r.6, r.7, r.8, r.9])
                .map_err(sql)?;
            in_tx += 1;
            rows += 1;
            row_bytes +=
                (r.1.len() + r.3.len() + r.4.len() + r.6.len() + r.7.len() + r.8.len() + r.9.len() + 24) as u64;
            if in_tx == rows_per_tx {
                to.execute_batch("COMMIT").map_err(sql)?;
                commits += 1;
                in_tx = 0;
            }
        }
        elapsed += t.elapsed();
    }
    if in_tx > 0 {
        let t = Instant::now();
        to.execute_batch("COMMIT").map_err(sql)?;
        elapsed += t.elapsed();
        commits += 1;
    }
    let (_, w1) = proc_io();
    let others_cpu_s = (machine_cpu_s().0 - m0.0 - (process_cpu_s() - c0)).max(0.0);
    let file_bytes = file_len(&raw) + file_len(&wal_path(&raw));
    drop(insert);
    drop(to);
    drop(read);
    drop(from);
    remove(&raw);
    Ok(RawAppend {
        others_cpu_s,
        rows,
        rows_per_tx,
        commits,
        elapsed,
        row_bytes,
        file_bytes,
        write_bytes: w1.saturating_sub(w0),
        csv: None,
    })
}

/// The raw limit on PostgreSQL: the rows `(after, upto]` of the ledger's log copied with
/// `COPY … FROM STDIN (FORMAT binary)` into a fresh table of the same shape and constraints
/// (integer position key, unique event id, unique stream version) in the same schema,
/// `COPY_ROWS_PER_TX` rows per COPY (one transaction each). For comparison, each chunk is
/// also copied as text CSV (`COPY … (FORMAT csv)`, the earlier raw limit) into a second
/// fresh table, right after its binary copy; that figure is in `csv`. Only the COPYs are
/// timed (reading the rows and encoding them is not).
async fn raw_copy_pg(url: &str, after: u64, upto: u64) -> Result<RawAppend, AppError> {
    use sqlx::postgres::PgPoolCopyExt;
    const COPY_ROWS_PER_TX: usize = 10_000;
    let pg = |e: sqlx::Error| io_err(format!("raw limit: {e}"));
    let store = store::open(url, store::Access::Read).await?;
    let (opts, _) = store::postgres::connect_options(url)?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await
        .map_err(pg)?;
    let tables = [
        format!("raw_limit_{}", std::process::id()),
        format!("raw_limit_csv_{}", std::process::id()),
    ];
    for table in &tables {
        sqlx::query(&format!(
            "CREATE TABLE {table} (position BIGINT PRIMARY KEY, stream TEXT NOT NULL, version BIGINT NOT NULL, \
             event_id UUID NOT NULL UNIQUE, event_type TEXT NOT NULL, schema_version INTEGER NOT NULL, \
             recorded_at TIMESTAMPTZ NOT NULL, data JSONB NOT NULL, hash TEXT NOT NULL, prev_hash TEXT NOT NULL, \
             UNIQUE (stream, version))"
        ))
        .execute(&pool)
        .await
        .map_err(pg)?;
    }
    let csv = |f: &str| format!("\"{}\"", f.replace('"', "\"\""));
    let mut binary = RawAppend {
        others_cpu_s: 0.0,
        rows: 0,
        rows_per_tx: COPY_ROWS_PER_TX,
        commits: 0,
        elapsed: Duration::ZERO,
        row_bytes: 0,
        file_bytes: 0,
        write_bytes: 0,
        csv: None,
    };
    let mut text = binary.clone();
    let mut pos = after;
    while pos < upto {
        let mut chunk = String::new();
        let mut bin = crate::store::postgres::copy_binary::header();
        let mut n = 0;
        while n < COPY_ROWS_PER_TX && pos < upto {
            let page = store
                .read_all(pos, (COPY_ROWS_PER_TX - n).min(store::READ_PAGE_EVENTS_MAX))
                .await?;
            let Some(last) = page.last() else { break };
            pos = last.position;
            for r in &page {
                let line = format!(
                    "{},{},{},{},{},{},{},{},{},{}\n",
                    r.position,
                    csv(&r.stream),
                    r.version,
                    r.event_id,
                    csv(&r.event_type),
                    r.schema_version,
                    crate::domain::time::fmt_time(&r.recorded_at),
                    csv(&r.data),
                    r.hash,
                    r.prev_hash
                );
                text.row_bytes += line.len() as u64;
                chunk.push_str(&line);
                let before = bin.len();
                crate::store::postgres::copy_binary::row(&mut bin, r);
                binary.row_bytes += (bin.len() - before) as u64;
                n += 1;
            }
        }
        if n == 0 {
            break;
        }
        crate::store::postgres::copy_binary::trailer(&mut bin);
        for (what, table, body, into) in [
            ("binary", &tables[0], bin, &mut binary),
            ("csv", &tables[1], chunk.into_bytes(), &mut text),
        ] {
            let (m0, c0) = (machine_cpu_s(), process_cpu_s());
            let t = Instant::now();
            let mut copy = pool
                .copy_in_raw(&format!("COPY {table} FROM STDIN (FORMAT {what})"))
                .await
                .map_err(pg)?;
            copy.send(body).await.map_err(pg)?;
            into.rows += copy.finish().await.map_err(pg)?;
            into.elapsed += t.elapsed();
            into.commits += 1;
            into.others_cpu_s += (machine_cpu_s().0 - m0.0 - (process_cpu_s() - c0)).max(0.0);
        }
    }
    for (table, into) in tables.iter().zip([&mut binary, &mut text]) {
        let file_bytes: i64 = sqlx::query_scalar(&format!("SELECT pg_total_relation_size('{table}')"))
            .fetch_one(&pool)
            .await
            .map_err(pg)?;
        into.file_bytes = file_bytes.max(0) as u64;
        sqlx::query(&format!("DROP TABLE {table}"))
            .execute(&pool)
            .await
            .map_err(pg)?;
    }
    store.shutdown().await;
    binary.csv = Some(Box::new(text));
    Ok(binary)
}

/// `bench ingest`: see the module documentation. `store_url` is `None` for a fresh
/// temporary store (removed afterwards); a given store must be empty and is kept, with its
/// projection snapshot written at the end.
pub async fn ingest(store_url: Option<&str>, a: &IngestArgs) -> Result<Report, AppError> {
    if a.readings == 0 || a.readings > READINGS_MAX {
        return Err(usage(format!("--readings must be 1 to {READINGS_MAX}")));
    }
    if a.meters == 0 || a.meters > METERS_MAX {
        return Err(usage(format!("--meters must be 1 to {METERS_MAX}")));
    }
    if a.batch == 0 || a.batch > WINDOW_MAX {
        return Err(usage(format!("--batch must be 1 to {WINDOW_MAX}")));
    }
    if a.raw_rows_per_tx == Some(0) {
        return Err(usage("--raw-rows-per-tx must be at least 1"));
    }
    let temp = match store_url {
        Some(_) => None,
        None => Some(ScratchDir::new(a.dir.as_deref(), "bench-ingest")?),
    };
    let url = match (&temp, store_url) {
        (Some(t), _) => format!("sqlite://{}", t.0.join("ingest.db").display()),
        (None, Some(u)) => u.to_string(),
        (None, None) => unreachable!("a store or a temporary folder"),
    };
    let db = sqlite_path(&url);
    let work_dir = match (&temp, &db) {
        (Some(t), _) => t.0.clone(),
        (None, Some(p)) => p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
        (None, None) => a.dir.clone().unwrap_or_else(std::env::temp_dir),
    };
    let rss_reset = reset_peak_rss();
    let store = open_empty_store(&url, "ingest").await?;
    // The write state as `apply` and `serve` keep it: its readings on disk beside its snapshot.
    let state_snapshot = crate::ledger::snapshot::path_for(&url);
    let ledger = Ledger::open_with(store.clone(), Arc::new(SystemClock), Some(state_snapshot)).await?;
    let w = Workload::new(a.readings, a.meters, Utc::now());
    tracing::info!("bench ingest: registering {} meters", a.meters);
    let t_setup = Instant::now();
    let setup_events = setup(&ledger, &w, a.batch).await?;
    let setup_elapsed = t_setup.elapsed();
    let setup_head = store.head().await?.position;

    let snapshot = temp.is_none().then(|| snapshot_path_for(&url));
    let live = if a.projections == ProjectionMode::Live {
        let p = Projections::open(store.clone(), snapshot.clone()).await?;
        let follower = tokio::spawn(p.clone().follow());
        Some((p, follower))
    } else {
        None
    };

    let g0 = group_stats(store.as_ref());
    let (io_r0, io_w0) = proc_io();
    let cpu0 = process_cpu_s();
    let m0 = machine_cpu_s();
    let th0 = thread_cpu();
    tracing::info!("bench ingest: posting {} readings", a.readings);
    let mut stages = Stages::default();
    let t = Instant::now();
    let lines = w.clone();
    let outcomes = pipeline(
        &ledger,
        a.readings,
        a.batch,
        move |i, out| lines.reading_line(i, out),
        &mut stages,
    )
    .await?;
    let write_elapsed = t.elapsed();
    let head = store.head().await?;
    let g1 = group_stats(store.as_ref());

    // Projections: wait for the live follower, or catch up from position 0 now.
    let (projections, proj_elapsed, end_to_end) = match live {
        Some((p, follower)) => {
            let t_wait = Instant::now();
            let reached = p
                .wait_for(head.position, Duration::from_secs(PROJECTION_WAIT_S_MAX))
                .await;
            // Wait until the follower has really stopped: it may be writing its periodic
            // snapshot, and two writers of one snapshot file race on its temporary file.
            follower.abort();
            let _ = follower.await;
            if !reached {
                return Err(usage(format!(
                    "the projections did not reach position {} within {PROJECTION_WAIT_S_MAX} s",
                    head.position
                )));
            }
            (p, t_wait.elapsed(), t.elapsed())
        }
        None => {
            let t_catch = Instant::now();
            let p = Projections::open(store.clone(), snapshot.clone()).await?;
            let d = t_catch.elapsed();
            (p, d, write_elapsed + d)
        }
    };
    let cpu1 = process_cpu_s();
    let m1 = machine_cpu_s();
    let th1 = thread_cpu();
    let (io_r1, io_w1) = proc_io();
    let peak_rss = peak_rss_bytes();
    let projected = projections.position();
    let charges = projections.read(|b| {
        b.statements
            .get(TENANT)
            .map(|by| by.values().map(|s| s.charges_eu).sum::<rust_decimal::Decimal>())
    });
    let snapshot_write = if snapshot.is_some() {
        let t_snap = Instant::now();
        projections.save()?;
        Some(t_snap.elapsed())
    } else {
        None
    };
    let db_bytes = db.as_deref().map(file_len);
    let wal_bytes = db.as_deref().map(|p| file_len(&wal_path(p)));
    drop(projections);
    // As `apply` ends: the write-state snapshot, then the store's shutdown (its index).
    ledger.close().await;
    drop(ledger);
    drop(store);

    let readings_per_s = per_s(a.readings, end_to_end);
    let write_per_s = per_s(a.readings, write_elapsed);
    let (commits, avg_group) = match (g0, g1) {
        (Some((s0, c0)), Some((s1, c1))) if c1 > c0 => (Some(c1 - c0), Some((s1 - s0) / (c1 - c0))),
        _ => (None, None),
    };
    let threads = thread_cpu_delta(&th0, &th1);
    let cpu_s = cpu1 - cpu0;
    let disk_write = io_w1.saturating_sub(io_w0);

    // The raw limit, in the same run, on the same file system.
    let raw = match &db {
        Some(path) => {
            let rows_per_tx = a
                .raw_rows_per_tx
                .or(avg_group.map(|g| g.round().max(1.0) as usize))
                .unwrap_or(a.batch);
            tracing::info!("bench ingest: raw limit, {rows_per_tx} rows per transaction");
            let (src, dir) = (path.clone(), work_dir.clone());
            let (after, upto) = (setup_head, head.position);
            Some(
                tokio::task::spawn_blocking(move || raw_append(&src, after, upto, rows_per_tx, &dir))
                    .await
                    .map_err(io_err)??,
            )
        }
        None if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            tracing::info!("bench ingest: raw limit, COPY into a fresh table of the same shape");
            Some(raw_copy_pg(&url, setup_head, head.position).await?)
        }
        None => None,
    };
    let raw_per_s = raw.as_ref().map(|r| per_s(r.rows, r.elapsed));
    let ratio = |x: f64| raw_per_s.filter(|r| *r > 0.0).map(|r| x / r);

    let us = |d: Duration| round3(d.as_secs_f64() * 1e6 / a.readings as f64);
    let mut rep = Report::new(
        "wattledger bench ingest",
        json!({
            "bench": "ingest",
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "config": {
                "store": store::redact_url(&url),
                "store_kind": if temp.is_some() { "temporary" } else { "given" },
                "filesystem": filesystem_of(&work_dir),
                "readings": a.readings,
                "meters": a.meters,
                "readings_per_meter": a.readings.div_ceil(a.meters),
                "batch_window": a.batch,
                "projections": format!("{:?}", a.projections).to_lowercase(),
                "first_interval_start": crate::domain::time::fmt_time(&w.base),
                "interval_minutes": INTERVAL_MIN,
                "durability": if db.is_some() { "SQLite WAL, synchronous=FULL (fsync at every commit)" } else { "PostgreSQL, synchronous_commit as configured on the server (default on)" },
                "raw_rows_per_tx": raw.as_ref().map(|r| r.rows_per_tx),
            },
            "machine": machine(),
            "figures": {
                "readings_per_s": round1(readings_per_s),
                "seconds": round3(end_to_end.as_secs_f64()),
                "setup": {"events": setup_events, "seconds": round3(setup_elapsed.as_secs_f64())},
                "write": {
                    "seconds": round3(write_elapsed.as_secs_f64()),
                    "readings_per_s": round1(write_per_s),
                    "accepted": outcomes.accepted,
                    "duplicates": outcomes.duplicates,
                    "refused": outcomes.refused,
                    "first_refusal": outcomes.first_refusal,
                    "head_position": head.position,
                },
                "projections": {
                    "mode": format!("{:?}", a.projections).to_lowercase(),
                    "seconds_after_write": round3(proj_elapsed.as_secs_f64()),
                    "position": projected,
                    "tenant_charges_eu": charges.map(|c| c.to_string()),
                    "snapshot_write_seconds": snapshot_write.map(|d| round3(d.as_secs_f64())),
                },
                "group_commit": {
                    "commits": commits,
                    "avg_requests_per_commit": avg_group.map(round1),
                    "commits_per_s": commits.map(|c| round1(c / write_elapsed.as_secs_f64())),
                },
                "driver_us_per_reading": {
                    "generate_text": us(stages.generate),
                    "parse_json_and_command": us(stages.parse),
                    "submit_decide_encode_queue": us(stages.submit),
                    "window_wait_for_durability": us(stages.window_wait),
                    "input_wait_for_parsing": us(stages.input_wait),
                    "generate_and_parse_on": "the bench-parse thread, beside the driving task",
                },
                "cpu": {
                    "process_seconds": round3(cpu_s),
                    "us_per_reading": round3(cpu_s * 1e6 / a.readings as f64),
                    "threads_seconds": cpu_json(&threads),
                },
                "disk": {
                    "db_file_bytes": db_bytes,
                    "wal_file_bytes": wal_bytes,
                    "write_bytes": disk_write,
                    "write_bytes_per_reading": round1(disk_write as f64 / a.readings as f64),
                    "read_bytes": io_r1.saturating_sub(io_r0),
                },
                "peak_rss_bytes": peak_rss,
                "peak_rss_reset_at_start": rss_reset,
                "machine_load_during_run": others_json(m0, m1, cpu_s, end_to_end),
                "raw_limit": raw.as_ref().map(|r| json!({
                    "what": if db.is_some() {
                        "the same rows copied into a fresh SQLite file: table keyed only by an integer position, same columns, WAL, synchronous=FULL"
                    } else {
                        "the same rows copied with COPY (FORMAT binary) into a fresh PostgreSQL table of the same shape and unique constraints, 10,000 rows per COPY"
                    },
                    "rows": r.rows,
                    "rows_per_tx": r.rows_per_tx,
                    "commits": r.commits,
                    "seconds": round3(r.elapsed.as_secs_f64()),
                    "rows_per_s": round1(per_s(r.rows, r.elapsed)),
                    "avg_row_bytes": round1(r.row_bytes as f64 / r.rows.max(1) as f64),
                    "file_bytes": r.file_bytes,
                    "write_bytes_per_row": round1(r.write_bytes as f64 / r.rows.max(1) as f64),
                    "other_processes_cpu_seconds": round3(r.others_cpu_s),
                    "text_csv": r.csv.as_ref().map(|c| json!({
                        "what": "the same rows copied with COPY (FORMAT csv) into a second fresh table of the same shape, each chunk right after its binary COPY",
                        "rows": c.rows,
                        "commits": c.commits,
                        "seconds": round3(c.elapsed.as_secs_f64()),
                        "rows_per_s": round1(per_s(c.rows, c.elapsed)),
                        "avg_row_bytes": round1(c.row_bytes as f64 / c.rows.max(1) as f64),
                        "file_bytes": c.file_bytes,
                        "other_processes_cpu_seconds": round3(c.others_cpu_s),
                        "ratio_to_csv": (c.rows > 0).then(|| round3(readings_per_s / per_s(c.rows, c.elapsed))),
                    })),
                })).unwrap_or_else(|| json!({"not_measured": "the raw limit is measured for SQLite stores only"})),
                "ratio_to_raw": ratio(readings_per_s).map(round3),
                "write_ratio_to_raw": ratio(write_per_s).map(round3),
            },
        }),
    );
    rep.row(
        "readings",
        format!(
            "{} over {} meters ({} per meter)",
            a.readings,
            a.meters,
            a.readings.div_ceil(a.meters)
        ),
    );
    rep.row(
        "store",
        format!(
            "{} ({})",
            store::redact_url(&url),
            rep.json["config"]["store_kind"].as_str().unwrap_or("")
        ),
    );
    rep.row(
        "set-up",
        format!("{setup_events} events in {:.2} s", setup_elapsed.as_secs_f64()),
    );
    rep.row(
        "write path (durable)",
        format!(
            "{} readings/s ({:.2} s)",
            fmt_rate(write_per_s),
            write_elapsed.as_secs_f64()
        ),
    );
    rep.row(
        "write + projections",
        format!(
            "{} readings/s ({:.2} s, projections {:?}, +{:.2} s after the last commit)",
            fmt_rate(readings_per_s),
            end_to_end.as_secs_f64(),
            a.projections,
            proj_elapsed.as_secs_f64()
        ),
    );
    rep.row(
        "outcomes",
        format!(
            "{} accepted, {} duplicates, {} refused",
            outcomes.accepted, outcomes.duplicates, outcomes.refused
        ),
    );
    if let (Some(c), Some(g)) = (commits, avg_group) {
        rep.row("group commit", format!("{c} commits, {g:.1} requests per commit"));
    }
    rep.row(
        "driver µs/reading",
        format!(
            "text {:.2}, parse {:.2} (parsing thread); submit {:.2}, window wait {:.2}, input wait {:.2}",
            us(stages.generate),
            us(stages.parse),
            us(stages.submit),
            us(stages.window_wait),
            us(stages.input_wait)
        ),
    );
    rep.row(
        "CPU",
        format!("{:.2} s, {:.2} µs per reading", cpu_s, cpu_s * 1e6 / a.readings as f64),
    );
    for (k, v) in &threads {
        rep.row(&format!("  {k}"), format!("{v:.2} s"));
    }
    rep.row(
        "other processes' CPU",
        format!("{:.2} s during the run", (m1.0 - m0.0 - cpu_s).max(0.0)),
    );
    rep.row(
        "disk writes",
        format!(
            "{} ({:.0} B per reading)",
            mib(disk_write),
            disk_write as f64 / a.readings as f64
        ),
    );
    if let (Some(d), Some(wl)) = (db_bytes, wal_bytes) {
        rep.row("store file", format!("{} + WAL {}", mib(d), mib(wl)));
    }
    if let Some(p) = peak_rss {
        rep.row("peak RSS", mib(p));
    }
    match &raw {
        Some(r) => {
            rep.row(
                "raw limit",
                format!(
                    "{} rows/s ({} rows, {} per transaction, {:.2} s, {:.0} B written per row)",
                    fmt_rate(per_s(r.rows, r.elapsed)),
                    r.rows,
                    r.rows_per_tx,
                    r.elapsed.as_secs_f64(),
                    r.write_bytes as f64 / r.rows.max(1) as f64
                ),
            );
            rep.row(
                "ratio to raw",
                format!(
                    "{:.1} % (write path alone {:.1} %)",
                    ratio(readings_per_s).unwrap_or(0.0) * 100.0,
                    ratio(write_per_s).unwrap_or(0.0) * 100.0
                ),
            );
            if let Some(c) = &r.csv {
                rep.row(
                    "raw limit, text CSV COPY",
                    format!(
                        "{} rows/s ({:.2} s; the binary COPY above is the raw limit)",
                        fmt_rate(per_s(c.rows, c.elapsed)),
                        c.elapsed.as_secs_f64()
                    ),
                );
            }
        }
        None => rep.row("raw limit", "not measured (SQLite stores only)"),
    }
    rep.row(
        "machine",
        format!(
            "{} cores, {} RAM",
            rep.json["machine"]["cores"],
            mib(rep.json["machine"]["mem_total_bytes"].as_u64().unwrap_or(0))
        ),
    );
    drop(temp);
    Ok(rep)
}

// ---------------------------------------------------------------------------------------
// bench replay
// ---------------------------------------------------------------------------------------

/// Reads every row of the log and parses its data with `serde_json`: the floor under any
/// replay. Returns (rows, data bytes, elapsed).
fn raw_read_parse(path: &Path) -> Result<(u64, u64, Duration), AppError> {
    use rusqlite::{Connection, OpenFlags};
    let sql = |e: rusqlite::Error| io_err(format!("raw read: {e}"));
    let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(sql)?;
    let t = Instant::now();
    let mut stmt = c
        .prepare("SELECT position, stream, version, event_id, event_type, schema_version, recorded_at, data, hash, prev_hash FROM events ORDER BY position")
        .map_err(sql)?;
    let mut rows = stmt.query([]).map_err(sql)?;
    let (mut n, mut bytes) = (0u64, 0u64);
    // Bounded by the rows of the file.
    while let Some(r) = rows.next().map_err(sql)? {
        let mut text_len = 0usize;
        for i in [1, 3, 4, 6, 8, 9] {
            text_len += r.get_ref(i).map_err(sql)?.as_str().map_or(0, str::len);
        }
        let ints =
            r.get::<_, i64>(0).map_err(sql)? + r.get::<_, i64>(2).map_err(sql)? + r.get::<_, i64>(5).map_err(sql)?;
        let data = r
            .get_ref(7)
            .map_err(sql)?
            .as_str()
            .map_err(|e| io_err(format!("raw read: {e}")))?;
        let v: Value = serde_json::from_str(data).map_err(|e| io_err(format!("raw read: {e}")))?;
        std::hint::black_box((&v, ints, text_len));
        n += 1;
        bytes += data.len() as u64;
    }
    Ok((n, bytes, t.elapsed()))
}

/// Reads a file once, so that both measurements start from a warm page cache.
fn warm(path: &Path) -> u64 {
    use std::io::Read;
    let Ok(mut f) = std::fs::File::open(path) else {
        return 0;
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    // Bounded by the file's length.
    while let Ok(n) = f.read(&mut buf) {
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    total
}

/// Per-stage cost of the verification, with the crate's own functions, in one pass.
async fn replay_breakdown(store: &dyn EventStore) -> Result<Value, AppError> {
    use crate::domain::events::Event;
    use crate::domain::postings::{balanced, postings};
    use crate::domain::tariff::price;
    let mut state = crate::domain::LedgerState::default();
    let mut books = crate::projections::Books::default();
    let mut ids = std::collections::HashSet::new();
    let mut versions: HashMap<String, u64> = HashMap::new();
    let mut d = [Duration::ZERO; 9];
    let names = [
        "read_page_to_records",
        "rehash",
        "versions_and_ids",
        "decode_event",
        "postings_balanced",
        "reprice",
        "write_state_evolve",
        "projections_apply",
        "drop_records",
    ];
    let mut after = 0u64;
    let mut n = 0u64;
    loop {
        let t = Instant::now();
        let page = store.read_all(after, crate::store::READ_PAGE_EVENTS_MAX).await?;
        d[0] += t.elapsed();
        let Some(last) = page.last() else { break };
        after = last.position;
        for r in &page {
            let t0 = Instant::now();
            std::hint::black_box(r.expected_hash() == r.hash);
            let t1 = Instant::now();
            let v = versions.entry(r.stream.clone()).or_insert(0);
            *v = r.version;
            ids.insert(r.event_id);
            let t2 = Instant::now();
            let ev = Event::from_parts(&r.event_type, &r.data)
                .map_err(|m| usage(format!("position {}: {m}", r.position)))?;
            let t3 = Instant::now();
            std::hint::black_box(balanced(&postings(&ev)));
            let t4 = Instant::now();
            if let Some(rd) = ev.as_reading()
                && let Some(site) = state.sites.get(&rd.site_id)
                && let Some(tariff) = site.tariff_at(rd.start)
            {
                std::hint::black_box(
                    price(
                        tariff,
                        &site.tz,
                        rd.flow,
                        rd.source,
                        &rd.interval(),
                        rd.energy_wh.value(),
                    )
                    .ok(),
                );
            }
            let t5 = Instant::now();
            state.evolve(r.event_id, &r.stream, r.version, &ev);
            let t6 = Instant::now();
            books.apply(r, &ev);
            let t7 = Instant::now();
            d[1] += t1 - t0;
            d[2] += t2 - t1;
            d[3] += t3 - t2;
            d[4] += t4 - t3;
            d[5] += t5 - t4;
            d[6] += t6 - t5;
            d[7] += t7 - t6;
            n += 1;
        }
        let t = Instant::now();
        drop(page);
        d[8] += t.elapsed();
    }
    let mut m = serde_json::Map::new();
    for (k, v) in names.iter().zip(d) {
        m.insert((*k).to_string(), json!(round3(v.as_secs_f64() * 1e6 / n.max(1) as f64)));
    }
    let total: Duration = d.iter().sum();
    m.insert(
        "total".into(),
        json!(round3(total.as_secs_f64() * 1e6 / n.max(1) as f64)),
    );
    Ok(json!({"events": n, "us_per_event": m}))
}

/// `bench replay`: the audit over the log at `url`, beside the raw read-and-parse limit.
pub async fn replay(url: &str, a: &ReplayArgs) -> Result<Report, AppError> {
    let db = sqlite_path(url);
    let warmed = db.as_deref().map_or(0, |p| warm(p) + warm(&wal_path(p)));
    let rss_reset = reset_peak_rss();
    let cpu0 = process_cpu_s();
    let m0 = machine_cpu_s();
    tracing::info!("bench replay: auditing {}", store::redact_url(url));
    let t = Instant::now();
    let report = crate::app::audit(url, false).await?;
    let elapsed = t.elapsed();
    let cpu = process_cpu_s() - cpu0;
    let m1 = machine_cpu_s();
    let peak_rss = peak_rss_bytes();
    if report.events == 0 {
        return Err(usage(format!("{} holds no events", store::redact_url(url))));
    }
    let raw = match &db {
        Some(p) => {
            let p = p.clone();
            Some(
                tokio::task::spawn_blocking(move || raw_read_parse(&p))
                    .await
                    .map_err(io_err)??,
            )
        }
        None => None,
    };
    let breakdown = if a.breakdown {
        let store = store::open(url, Access::Read).await?;
        Some(replay_breakdown(store.as_ref()).await?)
    } else {
        None
    };
    let events_per_s = per_s(report.events, elapsed);
    let raw_per_s = raw.map(|(n, _, d)| per_s(n, d));
    let ratio = raw_per_s.filter(|r| *r > 0.0).map(|r| events_per_s / r);
    let mut rep = Report::new(
        "wattledger bench replay",
        json!({
            "bench": "replay",
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "config": {
                "store": store::redact_url(url),
                "what": "wattledger audit: positions, chain, hashes, versions, ids, decode, postings, prices, periods, snapshot",
                "page_cache": format!("warmed by reading {warmed} bytes of the store before measuring"),
                "filesystem": db.as_deref().and_then(Path::parent).map(filesystem_of),
            },
            "machine": machine(),
            "figures": {
                "events": report.events,
                "clean": report.clean,
                "findings": report.findings.len() as u64 + report.findings_omitted,
                "snapshot": report.snapshot,
                "seconds": round3(elapsed.as_secs_f64()),
                "events_per_s": round1(events_per_s),
                "cpu_seconds": round3(cpu),
                "cpu_us_per_event": round3(cpu * 1e6 / report.events as f64),
                "peak_rss_bytes": peak_rss,
                "peak_rss_reset_at_start": rss_reset,
                "machine_load_during_audit": others_json(m0, m1, cpu, elapsed),
                "raw_limit": raw.map(|(n, bytes, d)| json!({
                    "what": "every row read with rusqlite (all columns) and its data parsed with serde_json::from_str::<Value>",
                    "rows": n,
                    "data_bytes": bytes,
                    "seconds": round3(d.as_secs_f64()),
                    "rows_per_s": round1(per_s(n, d)),
                })).unwrap_or_else(|| json!({"not_measured": "the raw limit is measured for SQLite stores only"})),
                "ratio_to_raw": ratio.map(round3),
                "breakdown": breakdown,
            },
        }),
    );
    rep.row("store", store::redact_url(url));
    rep.row(
        "audit",
        format!(
            "{} events/s ({} events in {:.2} s, {})",
            fmt_rate(events_per_s),
            report.events,
            elapsed.as_secs_f64(),
            if report.clean { "clean" } else { "FINDINGS" }
        ),
    );
    rep.row(
        "CPU",
        format!("{cpu:.2} s, {:.2} µs per event", cpu * 1e6 / report.events as f64),
    );
    if let Some(p) = peak_rss {
        rep.row("peak RSS (audit)", mib(p));
    }
    rep.row(
        "other processes' CPU",
        format!("{:.2} s during the audit", (m1.0 - m0.0 - cpu).max(0.0)),
    );
    match raw {
        Some((n, _, d)) => {
            rep.row(
                "raw read + parse",
                format!(
                    "{} rows/s ({n} rows in {:.2} s)",
                    fmt_rate(per_s(n, d)),
                    d.as_secs_f64()
                ),
            );
            rep.row("ratio to raw", format!("{:.1} %", ratio.unwrap_or(0.0) * 100.0));
        }
        None => rep.row("raw read + parse", "not measured (SQLite stores only)"),
    }
    if let Some(b) = &rep.json["figures"]["breakdown"]["us_per_event"].as_object().cloned() {
        for (k, v) in b {
            rep.row(&format!("  µs/event {k}"), format!("{v}"));
        }
    }
    Ok(rep)
}

// ---------------------------------------------------------------------------------------
// bench read
// ---------------------------------------------------------------------------------------

/// Latency summary of nanosecond samples (sorted in place).
fn percentiles(ns: &mut [u64]) -> Value {
    if ns.is_empty() {
        return Value::Null;
    }
    ns.sort_unstable();
    let at = |q: f64| {
        let i = ((q * ns.len() as f64).ceil() as usize).clamp(1, ns.len()) - 1;
        round3(ns[i] as f64 / 1e3)
    };
    let mean = ns.iter().map(|x| *x as f64).sum::<f64>() / ns.len() as f64 / 1e3;
    json!({
        "samples": ns.len(),
        "p50_us": at(0.50),
        "p99_us": at(0.99),
        "p999_us": at(0.999),
        "max_us": round3(*ns.last().expect("non-empty") as f64 / 1e3),
        "mean_us": round3(mean),
    })
}

fn latency_row(v: &Value, unit_ms: bool) -> String {
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    if unit_ms {
        format!(
            "p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, max {:.2} ms",
            f("p50_us") / 1e3,
            f("p99_us") / 1e3,
            f("p999_us") / 1e3,
            f("max_us") / 1e3
        )
    } else {
        format!(
            "p50 {:.1} µs, p99 {:.1} µs, p999 {:.1} µs, max {:.1} µs ({} samples)",
            f("p50_us"),
            f("p99_us"),
            f("p999_us"),
            f("max_us"),
            v["samples"]
        )
    }
}

/// Runs `f` up to `iterations` times or for [`READ_SECONDS_MAX`], timing each call.
fn time_calls(iterations: u64, mut f: impl FnMut(u64) -> usize) -> (Vec<u64>, u64) {
    let deadline = Instant::now() + Duration::from_secs(READ_SECONDS_MAX);
    let mut ns = Vec::with_capacity(iterations.min(READ_ITERATIONS_MAX) as usize);
    let mut bytes = 0u64;
    for i in 0..iterations {
        let t = Instant::now();
        let n = f(i);
        ns.push(t.elapsed().as_nanos() as u64);
        bytes += n as u64;
        if i.is_multiple_of(1024) && Instant::now() > deadline {
            break;
        }
    }
    (ns, bytes)
}

/// `bench read`: statement and balance reads from the projections of the log at `url`,
/// and what opening costs (store index, write state, projections from the snapshot).
/// Every (tenant, period) with a statement: what `bench read` and `bench attribution` read.
fn statement_pairs(b: &crate::projections::Books) -> Vec<(String, crate::domain::time::Period)> {
    b.statements
        .iter()
        .flat_map(|(t, by)| {
            by.keys()
                .filter_map(|k| crate::domain::time::Period::parse(k).ok())
                .map(move |per| (t.clone(), per))
        })
        .collect()
}

pub async fn read(url: &str, a: &ReadArgs) -> Result<Report, AppError> {
    if a.iterations == 0 || a.iterations > READ_ITERATIONS_MAX {
        return Err(usage(format!("--iterations must be 1 to {READ_ITERATIONS_MAX}")));
    }
    let rss_reset = reset_peak_rss();
    let t = Instant::now();
    let store = store::open(url, Access::Read).await?;
    let store_open = t.elapsed();
    // The write state as `serve` builds it: from its snapshot and the tail if there is one.
    let (ledger_open, ledger_from) = if a.no_ledger {
        (None, None)
    } else {
        let t = Instant::now();
        let path = crate::ledger::snapshot::path_for(url);
        let l = Ledger::open_with(store.clone(), Arc::new(SystemClock), Some(path)).await?;
        let d = t.elapsed();
        let from = l.opened_from.clone();
        drop(l);
        (Some(d), Some(from))
    };
    let snap = snapshot_path_for(url);
    let snap_exists = snap.exists();
    let t = Instant::now();
    let p = Projections::open(store.clone(), Some(snap)).await?;
    let proj_open = t.elapsed();
    let peak_rss_open = peak_rss_bytes();
    let events = p.position();
    let (pairs, accounts, lines) = p.read(|b| {
        let pairs = statement_pairs(b);
        let accounts: Vec<String> = b.accounts.keys().take(10_000).cloned().collect();
        let lines = b
            .statements
            .values()
            .flat_map(|by| by.values())
            .map(|s| s.consumption.len() + s.entries.len())
            .max()
            .unwrap_or(0);
        (pairs, accounts, lines)
    });
    if pairs.is_empty() || accounts.is_empty() {
        return Err(usage(format!(
            "{} has no statements or accounts to read",
            store::redact_url(url)
        )));
    }
    // The JSON body the API would send (`GET /v1/tenants/{t}/statements/{p}`, `GET /v1/accounts/{a}`).
    let (mut st_ns, st_bytes) = time_calls(a.iterations, |i| {
        let (t, per) = &pairs[(i as usize) % pairs.len()];
        p.statement(t, *per)
            .map_or(0, |s| serde_json::to_string(&s.to_json()).expect("json").len())
    });
    let (mut bal_ns, bal_bytes) = time_calls(a.iterations, |i| {
        let acc = &accounts[(i as usize) % accounts.len()];
        p.read(|b| b.balance(acc))
            .map_or(0, |v| serde_json::to_string(&v).expect("json").len())
    });
    let st_n = st_ns.len() as u64;
    let bal_n = bal_ns.len() as u64;
    let st = percentiles(&mut st_ns);
    let bal = percentiles(&mut bal_ns);
    let ready = store_open + ledger_open.unwrap_or_default() + proj_open;
    let mut rep = Report::new(
        "wattledger bench read",
        json!({
            "bench": "read",
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "config": {
                "store": store::redact_url(url),
                "events": events,
                "statements": pairs.len(),
                "accounts": accounts.len(),
                "largest_statement_lines": lines,
                "iterations": a.iterations,
                "what": "Books::statement + Statement::to_json + serde_json::to_string, and Books::balance + to_string, under the projections' read lock, one thread",
            },
            "machine": machine(),
            "figures": {
                "statement": st,
                "statement_avg_body_bytes": st_bytes / st_n.max(1),
                "balance": bal,
                "balance_avg_body_bytes": bal_bytes / bal_n.max(1),
                "open": {
                    "store_index_seconds": round3(store_open.as_secs_f64()),
                    "write_state_seconds": ledger_open.map(|d| round3(d.as_secs_f64())),
                    "write_state_from": ledger_from,
                    "projections_seconds": round3(proj_open.as_secs_f64()),
                    "projections_snapshot_found": snap_exists,
                    "projections_snapshot_note": p.snapshot_note,
                    "sum_seconds": round3(ready.as_secs_f64()),
                },
                "peak_rss_bytes_after_open": peak_rss_open,
                "peak_rss_reset_at_start": rss_reset,
            },
        }),
    );
    rep.row("store", format!("{} ({events} events)", store::redact_url(url)));
    rep.row("statement", latency_row(&rep.json["figures"]["statement"], false));
    rep.row("balance", latency_row(&rep.json["figures"]["balance"], false));
    rep.row(
        "open",
        format!(
            "store index {:.2} s, write state {}, projections {:.2} s (snapshot {})",
            store_open.as_secs_f64(),
            ledger_open.map_or("skipped".to_string(), |d| format!("{:.2} s", d.as_secs_f64())),
            proj_open.as_secs_f64(),
            if snap_exists { "found" } else { "absent" }
        ),
    );
    if let Some(r) = peak_rss_open {
        rep.row("peak RSS after open", mib(r));
    }
    Ok(rep)
}

// ---------------------------------------------------------------------------------------
// bench http
// ---------------------------------------------------------------------------------------

/// A minimal HTTP/1.1 keep-alive client connection (Content-Length or chunked answers).
struct HttpConn {
    r: tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

/// Largest answer body read.
const HTTP_BODY_BYTES_MAX: usize = 256 << 20;
/// Most header lines read.
const HTTP_HEADERS_MAX: usize = 100;

impl HttpConn {
    async fn connect(addr: std::net::SocketAddr) -> std::io::Result<Self> {
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        Ok(Self {
            r: tokio::io::BufReader::with_capacity(64 * 1024, r),
            w,
        })
    }

    /// Sends one request and reads its answer into `body`; returns the status.
    async fn roundtrip(&mut self, req: &[u8], body: &mut Vec<u8>) -> std::io::Result<u16> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
        self.w.write_all(req).await?;
        body.clear();
        let mut line = String::new();
        if self.r.read_line(&mut line).await? == 0 {
            return Err(bad("the server closed the connection"));
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("no status line"))?;
        let (mut length, mut chunked) = (None, false);
        for _ in 0..HTTP_HEADERS_MAX {
            line.clear();
            self.r.read_line(&mut line).await?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "content-length" {
                    length = v.parse::<usize>().ok();
                } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                    chunked = true;
                }
            }
        }
        if chunked {
            loop {
                line.clear();
                self.r.read_line(&mut line).await?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|_| bad("bad chunk size"))?;
                if size == 0 {
                    for _ in 0..HTTP_HEADERS_MAX {
                        line.clear();
                        if self.r.read_line(&mut line).await? == 0 || line.trim().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                if body.len() + size > HTTP_BODY_BYTES_MAX {
                    return Err(bad("answer too large"));
                }
                let at = body.len();
                body.resize(at + size, 0);
                self.r.read_exact(&mut body[at..]).await?;
                let mut crlf = [0u8; 2];
                self.r.read_exact(&mut crlf).await?;
            }
        } else {
            let n = length.ok_or_else(|| bad("neither content-length nor chunked"))?;
            if n > HTTP_BODY_BYTES_MAX {
                return Err(bad("answer too large"));
            }
            body.resize(n, 0);
            self.r.read_exact(body).await?;
        }
        Ok(status)
    }
}

#[derive(Default)]
struct ClientResult {
    latencies_ns: Vec<u64>,
    ok: u64,
    failed: u64,
    /// Answers (or NDJSON lines) that were recognised retries.
    duplicates: u64,
    first_failure: Option<String>,
}

/// `bench http`: the API in process on loopback over a temporary store, or over the store
/// given with `--store` (which must be empty, and is kept); see the module docs.
pub async fn http(store_url: Option<&str>, a: &HttpArgs) -> Result<Report, AppError> {
    use crate::api::auth::{AuthConfig, Claims, Role};
    if a.readings == 0 || a.readings > READINGS_MAX {
        return Err(usage(format!("--readings must be 1 to {READINGS_MAX}")));
    }
    if a.meters == 0 || a.meters > METERS_MAX {
        return Err(usage(format!("--meters must be 1 to {METERS_MAX}")));
    }
    if a.clients == 0 || a.clients > CLIENTS_MAX {
        return Err(usage(format!("--clients must be 1 to {CLIENTS_MAX}")));
    }
    if a.batch == 0 || a.batch > crate::api::body::NDJSON_LINES_MAX {
        return Err(usage(format!(
            "--batch must be 1 to {}",
            crate::api::body::NDJSON_LINES_MAX
        )));
    }
    if a.repeats > REPEATS_MAX {
        return Err(usage(format!("--repeats must be 0 to {REPEATS_MAX}")));
    }
    let rss_reset = reset_peak_rss();
    let temp = ScratchDir::new(a.dir.as_deref(), "bench-http")?;
    let db = temp.0.join("http.db");
    let url = store_url.map_or_else(|| format!("sqlite://{}", db.display()), str::to_string);
    let store = open_empty_store(&url, "http").await?;
    // The write state as `serve` keeps it (its readings on disk), in the bench's own folder.
    let state_snapshot = temp.0.join("http.state.snapshot");
    let ledger = Ledger::open_with(store.clone(), Arc::new(SystemClock), Some(state_snapshot)).await?;
    let w = Arc::new(Workload::new(a.readings, a.meters, Utc::now()));
    tracing::info!("bench http: registering {} meters", a.meters);
    let setup_events = setup(&ledger, &w, 4_096).await?;
    // A given store gets no snapshot file: the bench leaves nothing behind but its events.
    let snapshot = store_url.is_none().then(|| snapshot_path_for(&url));
    let projections = Projections::open(store.clone(), snapshot).await?;
    let secret: String = {
        use rand::Rng;
        let mut rng = rand::thread_rng();
        (0..48).map(|_| format!("{:x}", rng.gen_range(0..16u8))).collect()
    };
    let auth = AuthConfig::hs256(secret.as_bytes(), "bench").map_err(usage)?;
    let now = Utc::now().timestamp() as u64;
    let token = auth
        .mint(Claims::unscoped("bench", Role::Operator, now, 24 * 3600))
        .map_err(usage)?;
    let server = crate::api::start("127.0.0.1:0", ledger.clone(), projections, auth).await?;
    let addr = server.addr;
    let g0 = group_stats(store.as_ref());
    let cpu0 = process_cpu_s();
    let m0 = machine_cpu_s();
    let th0 = thread_cpu();
    let (_, io_w0) = proc_io();
    let clients = a.clients;
    let (bulk, batch, n) = (a.bulk, a.batch as u64, a.readings);
    let requests = if bulk { n.div_ceil(batch) } else { n };
    tracing::info!(
        "bench http: {requests} requests from {clients} clients, {} pass(es)",
        a.repeats + 1
    );
    let token = Arc::new(token);
    // Every latency sample of the run has its place, written once now, so that keeping them
    // adds nothing to the resident set measured from here on.
    let per_client = (requests.div_ceil(clients as u64) * (a.repeats as u64 + 1)) as usize;
    let mut samples: Vec<Vec<u64>> = (0..clients)
        .map(|_| {
            let mut v = vec![u64::MAX; per_client];
            v.clear();
            v
        })
        .collect();
    let rss_start = rss_bytes();
    let mut all = ClientResult::default();
    let mut passes = Vec::new();
    let t = Instant::now();
    for pass in 0..=a.repeats {
        let pass_started = Instant::now();
        let (ok0, failed0, dup0) = (all.ok, all.failed, all.duplicates);
        let mut tasks = Vec::with_capacity(clients);
        for c in 0..clients as u64 {
            let w = w.clone();
            let token = token.clone();
            let samples = std::mem::take(&mut samples[c as usize]);
            tasks.push(tokio::spawn(async move {
            let mut res = ClientResult {
                latencies_ns: samples,
                ..ClientResult::default()
            };
            let mut conn = match HttpConn::connect(addr).await {
                Ok(c) => c,
                Err(e) => {
                    res.failed += 1;
                    res.first_failure = Some(format!("connect: {e}"));
                    return res;
                }
            };
            let (mut body, mut req, mut answer) = (String::new(), Vec::new(), Vec::new());
            // Every request's head but its length, written once.
            let head = |ctype: &str| {
                format!("POST /v1/readings HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: {ctype}\r\nContent-Length: ")
            };
            let (head_single, head_bulk) = (head("application/json"), head("application/x-ndjson"));
            // Request k of this client is request c + k·clients; bounded by `requests`.
            let mut k = c;
            while k < requests {
                body.clear();
                let (lines, head) = if bulk {
                    let (lo, hi) = (k * batch, ((k + 1) * batch).min(n));
                    for i in lo..hi {
                        w.reading_line(i, &mut body);
                        body.push('\n');
                    }
                    (hi - lo, &head_bulk)
                } else {
                    w.reading_line(k, &mut body);
                    (1, &head_single)
                };
                req.clear();
                req.extend_from_slice(head.as_bytes());
                req.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
                req.extend_from_slice(b"\r\n\r\n");
                req.extend_from_slice(body.as_bytes());
                let started = Instant::now();
                let out = tokio::time::timeout(
                    Duration::from_secs(HTTP_TIMEOUT_S),
                    conn.roundtrip(&req, &mut answer),
                )
                .await;
                res.latencies_ns.push(started.elapsed().as_nanos() as u64);
                match out {
                    Ok(Ok(status)) if (200..300).contains(&status) => {
                        // The answers are UTF-8 JSON, searched as text (`str`'s search is
                        // much faster than comparing every window of the bytes).
                        let text = String::from_utf8_lossy(&answer);
                        res.duplicates += text.matches("\"duplicate\":true").count() as u64;
                        if bulk {
                            let ok = text.lines().filter(|l| l.contains("\"ok\":true")).count() as u64;
                            res.ok += ok;
                            if ok < lines {
                                res.failed += lines - ok;
                                if res.first_failure.is_none() {
                                    res.first_failure = text
                                        .lines()
                                        .find(|l| !l.contains("\"ok\":true"))
                                        .map(|l| l.chars().take(400).collect());
                                }
                            }
                        } else {
                            res.ok += 1;
                        }
                    }
                    Ok(Ok(status)) => {
                        res.failed += lines;
                        if res.first_failure.is_none() {
                            res.first_failure = Some(format!(
                                "HTTP {status}: {}",
                                String::from_utf8_lossy(&answer).chars().take(400).collect::<String>()
                            ));
                        }
                    }
                    Ok(Err(e)) => {
                        res.failed += lines;
                        res.first_failure.get_or_insert_with(|| format!("I/O: {e}"));
                        return res;
                    }
                    Err(_) => {
                        res.failed += lines;
                        res.first_failure
                            .get_or_insert_with(|| format!("no answer within {HTTP_TIMEOUT_S} s"));
                        return res;
                    }
                }
                k += clients as u64;
            }
            res
        }));
        }
        for (c, task) in tasks.into_iter().enumerate() {
            let r = task.await.map_err(io_err)?;
            samples[c] = r.latencies_ns;
            all.ok += r.ok;
            all.failed += r.failed;
            all.duplicates += r.duplicates;
            if all.first_failure.is_none() {
                all.first_failure = r.first_failure;
            }
        }
        passes.push(json!({
            "pass": pass + 1,
            "seconds": round3(pass_started.elapsed().as_secs_f64()),
            "readings_ok": all.ok - ok0,
            "readings_failed": all.failed - failed0,
            "duplicates": all.duplicates - dup0,
            "rss_bytes_after": rss_bytes(),
            "threads_after": proc_status("Threads"),
        }));
    }
    let elapsed = t.elapsed();
    let cpu = process_cpu_s() - cpu0;
    let m1 = machine_cpu_s();
    let th1 = thread_cpu();
    let (_, io_w1) = proc_io();
    let g1 = group_stats(store.as_ref());
    let peak_rss = peak_rss_bytes();
    server.stop().await?;
    drop(ledger);
    store.shutdown().await;
    drop(store);
    let (commits, avg_group) = match (g0, g1) {
        (Some((s0, c0)), Some((s1, c1))) if c1 > c0 => (Some(c1 - c0), Some((s1 - s0) / (c1 - c0))),
        _ => (None, None),
    };
    let rss = rss_json(rss_start, &passes, requests);
    let threads = thread_cpu_delta(&th0, &th1);
    let readings_per_s = per_s(all.ok, elapsed);
    all.latencies_ns = samples.concat();
    let latency = percentiles(&mut all.latencies_ns);
    let mut rep = Report::new(
        "wattledger bench http",
        json!({
            "bench": "http",
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "config": {
                "store": if store_url.is_some() { store::redact_url(&url) } else { "temporary SQLite file (WAL, synchronous=FULL)".to_string() },
                "filesystem": filesystem_of(&temp.0),
                "readings": a.readings,
                "meters": a.meters,
                "clients": a.clients,
                "mode": if bulk { "bulk NDJSON" } else { "one reading per request" },
                "readings_per_request": if bulk { a.batch } else { 1 },
                "requests": requests,
                "repeats": a.repeats,
                "server": "wattledger::api::start on 127.0.0.1:0, HS256, in this process; clients are tokio tasks of the same process (they share the cores)",
                "client": "hand-rolled HTTP/1.1 keep-alive over tokio TcpStream, TCP_NODELAY, one request in flight per connection",
                "log_filter": std::env::var("RUST_LOG").ok(),
            },
            "machine": machine(),
            "figures": {
                "setup_events": setup_events,
                "readings_ok": all.ok,
                "readings_failed": all.failed,
                "duplicates": all.duplicates,
                "first_failure": all.first_failure,
                "seconds": round3(elapsed.as_secs_f64()),
                "passes": passes,
                "rss": rss,
                "readings_per_s": round1(readings_per_s),
                "requests_per_s": round1(per_s(requests, elapsed)),
                "latency": latency,
                "group_commit": {
                    "commits": commits,
                    "avg_requests_per_commit": avg_group.map(round1),
                },
                "cpu": {
                    "process_seconds": round3(cpu),
                    "us_per_reading": round3(cpu * 1e6 / a.readings as f64),
                    "threads_seconds": cpu_json(&threads),
                },
                "disk_write_bytes_per_reading": round1(io_w1.saturating_sub(io_w0) as f64 / a.readings as f64),
                "peak_rss_bytes": peak_rss,
                "peak_rss_reset_at_start": rss_reset,
                "machine_load_during_run": others_json(m0, m1, cpu, elapsed),
            },
        }),
    );
    rep.row(
        "load",
        format!(
            "{} readings, {} clients, {}",
            a.readings,
            a.clients,
            if bulk {
                format!("NDJSON bulk of {}", a.batch)
            } else {
                "one reading per request".into()
            }
        ),
    );
    rep.row(
        "throughput",
        format!(
            "{} readings/s ({} ok, {} failed, {:.2} s)",
            fmt_rate(readings_per_s),
            all.ok,
            all.failed,
            elapsed.as_secs_f64()
        ),
    );
    rep.row("latency", latency_row(&rep.json["figures"]["latency"], true));
    if a.repeats > 0 {
        rep.row(
            "repeats",
            format!(
                "{} pass(es) of retries, {} answered as duplicates",
                a.repeats, all.duplicates
            ),
        );
    }
    let mb = |k: &str| rep.json["figures"]["rss"][k].as_u64().map_or("-".to_string(), mib);
    let rss_line = format!(
        "{} at start, {} after the first pass, {} after the warm-up, {} at the end; peak {}",
        mb("start_bytes"),
        mb("after_first_pass_bytes"),
        mb("after_warm_up_bytes"),
        mb("end_bytes"),
        peak_rss.map_or("-".to_string(), mib)
    );
    rep.row("RSS", rss_line);
    let rss = &rep.json["figures"]["rss"];
    if let (Some(g), Some(n)) = (
        rss["growth_bytes_per_request_after_warm_up"].as_f64(),
        rss["requests_after_warm_up"].as_u64(),
    ) {
        let line = format!("{g:.1} bytes per request over the {n} requests after the warm-up");
        rep.row("RSS growth", line);
    }
    if let (Some(c), Some(g)) = (commits, avg_group) {
        rep.row("group commit", format!("{c} commits, {g:.1} requests per commit"));
    }
    rep.row(
        "CPU (server + clients)",
        format!("{cpu:.2} s, {:.2} µs per reading", cpu * 1e6 / a.readings as f64),
    );
    for (k, v) in &threads {
        rep.row(&format!("  {k}"), format!("{v:.2} s"));
    }
    rep.row(
        "other processes' CPU",
        format!("{:.2} s during the run", (m1.0 - m0.0 - cpu).max(0.0)),
    );
    if let Some(f) = rep.json["figures"]["first_failure"].as_str() {
        rep.row("first failure", f.to_string());
    }
    drop(temp);
    Ok(rep)
}

// ---------------------------------------------------------------------------------------
// bench attribution
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, clap::Args)]
pub struct AttributionArgs {
    /// Times the whole attribution is computed; the figures are the medians.
    #[arg(long, default_value_t = 5)]
    pub iterations: u32,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// The supply-mix attribution of a whole log: every site's hours (battery FIFO included),
/// then every tenant's attribution for every period it has a statement for; CPU time per
/// simulated day (site-hours / 24).
pub async fn attribution(url: &str, a: &AttributionArgs) -> Result<Report, AppError> {
    use crate::projections::attribution::{all_sites, tenant_attribution};
    if a.iterations == 0 || a.iterations > 1_000 {
        return Err(usage("--iterations must be 1 to 1000"));
    }
    let store = store::open(url, Access::Read).await?;
    let p = Projections::open(store, Some(snapshot_path_for(url))).await?;
    let (events, site_hours, pairs) = p.read(|b| {
        let hours: usize = b.hours.values().map(|h| h.len()).sum();
        let pairs = statement_pairs(b);
        (b.position, hours, pairs)
    });
    if site_hours == 0 {
        return Err(usage(format!(
            "{} has no readings to attribute",
            store::redact_url(url)
        )));
    }
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    let mut attributed_wh = rust_decimal::Decimal::ZERO;
    for _ in 0..a.iterations {
        let (c0, t0) = (process_cpu_s(), Instant::now());
        attributed_wh = p.read(|b| {
            let sites = all_sites(b);
            pairs
                .iter()
                .map(|(t, per)| tenant_attribution(b, &sites, t, *per).consumption_wh)
                .sum()
        });
        wall.push(t0.elapsed().as_secs_f64());
        cpu.push(process_cpu_s() - c0);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (wall_s, cpu_s) = (median(&mut wall), median(&mut cpu));
    let days = site_hours as f64 / 24.0;
    let mut rep = Report::new(
        "wattledger bench attribution",
        json!({
            "bench": "attribution",
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "config": {
                "store": store::redact_url(url),
                "events": events,
                "site_hours": site_hours,
                "tenant_periods": pairs.len(),
                "iterations": a.iterations,
                "what": "attribution::all_sites (every site-hour, battery FIFO) + tenant_attribution for every tenant and period with a statement, under the projections' read lock, one thread",
            },
            "machine": machine(),
            "figures": {
                "wall_seconds": round3(wall_s),
                "cpu_seconds": round3(cpu_s),
                "simulated_days": round3(days),
                "cpu_seconds_per_simulated_day": round3(cpu_s / days),
                "wall_ms_per_simulated_day": round3(wall_s * 1000.0 / days),
                "attributed_wh": crate::domain::quantity::fmt_decimal(&attributed_wh.round_dp(3)),
            },
        }),
    );
    rep.row("store", format!("{} ({events} events)", store::redact_url(url)));
    rep.row(
        "attributed",
        format!(
            "{site_hours} site-hours ({days:.1} days), {} tenant-periods",
            pairs.len()
        ),
    );
    rep.row(
        "time (median)",
        format!(
            "{:.3} s wall ({:.3} ms per simulated day), {:.2} s CPU (counted in 10 ms ticks)",
            wall_s,
            wall_s * 1000.0 / days,
            cpu_s
        ),
    );
    Ok(rep)
}

/// The process's resident set at the start, after the first pass (every reading recorded
/// once: the state is as large as it gets), after the warm-up and at the end, and its growth
/// after the warm-up per request. The warm-up is the first pass and the first half of the
/// repeats, which bring the retry path to its working size (the runtime's blocking threads,
/// SQLite reader connections, the allocator's arenas); the rest must not grow the process.
fn rss_json(start: Option<u64>, passes: &[Value], requests_per_pass: u64) -> Value {
    let after = |i: usize| passes.get(i).and_then(|p| p["rss_bytes_after"].as_u64());
    let repeats = passes.len().saturating_sub(1);
    let warm_passes = 1 + repeats / 2;
    let (first, warm) = (after(0), after(warm_passes - 1));
    let end = passes.len().checked_sub(1).and_then(after);
    let measured_requests = (passes.len().saturating_sub(warm_passes)) as u64 * requests_per_pass;
    let growth = match (warm, end) {
        (Some(w), Some(e)) if measured_requests > 0 => Some(round1((e as f64 - w as f64) / measured_requests as f64)),
        _ => None,
    };
    json!({
        "start_bytes": start,
        "after_first_pass_bytes": first,
        "warm_up_passes": warm_passes,
        "after_warm_up_bytes": warm,
        "end_bytes": end,
        "requests_after_warm_up": measured_requests,
        "growth_bytes_per_request_after_warm_up": growth,
    })
}

/// Opens a store for writing that must hold no events yet (`bench ingest` and `bench http`
/// measure a log from its first event).
async fn open_empty_store(url: &str, bench: &str) -> Result<Arc<dyn EventStore>, AppError> {
    let store = store::open(url, Access::Write).await?;
    let head = store.head().await?;
    if head.position > 0 {
        store.shutdown().await;
        return Err(usage(format!(
            "bench {bench} needs an empty store; {} holds {} events (omit --store for a temporary one)",
            store::redact_url(url),
            head.position
        )));
    }
    Ok(store)
}

// ---------------------------------------------------------------------------------------
// bench restart

/// One open as `serve` does it (store, write state, projections), then one clean stop.
struct OpenClose {
    open: Duration,
    from: String,
    close: Duration,
    peak_rss: Option<u64>,
}

async fn open_close(url: &str) -> Result<OpenClose, AppError> {
    reset_peak_rss();
    let t = Instant::now();
    let ledger = crate::app::open_ledger(url).await?;
    let projections = Projections::open(ledger.store().clone(), Some(snapshot_path_for(url))).await?;
    let open = t.elapsed();
    let peak_rss = peak_rss_bytes();
    let from = ledger.opened_from.clone();
    let t = Instant::now();
    if let Err(e) = projections.save() {
        return Err(usage(format!("could not save the projection snapshot: {e}")));
    }
    ledger.close().await;
    let close = t.elapsed();
    Ok(OpenClose {
        open,
        from,
        close,
        peak_rss,
    })
}

/// Opens an existing store for writing as `serve` does and stops it cleanly, twice: the
/// first open starts from whatever snapshots are there (or the whole log), the stop saves
/// them, the second open is a restart from them. Leaves the snapshots as `serve` would.
pub async fn restart(url: &str, _a: &RestartArgs) -> Result<Report, AppError> {
    let events = {
        let store = store::open(url, Access::Read).await?;
        store.head().await?.position
    };
    if events == 0 {
        return Err(usage(format!(
            "{} has no events to restart from",
            store::redact_url(url)
        )));
    }
    let first = open_close(url).await?;
    let second = open_close(url).await?;
    let one = |o: &OpenClose| {
        json!({
            "open_seconds": round3(o.open.as_secs_f64()),
            "write_state_from": o.from,
            "stop_seconds": round3(o.close.as_secs_f64()),
            "peak_rss_bytes_after_open": o.peak_rss,
        })
    };
    let mut rep = Report::new(
        "wattledger bench restart",
        json!({
            "bench": "restart",
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "config": {
                "store": store::redact_url(url),
                "events": events,
                "what": "app::open_ledger (store index, write state) + Projections::open, as serve opens before it listens; then the projection snapshot, Ledger::close (write-state snapshot, store shutdown and index snapshot), as serve stops; twice",
            },
            "machine": machine(),
            "figures": {
                "first": one(&first),
                "restart": one(&second),
            },
        }),
    );
    rep.row("store", format!("{} ({events} events)", store::redact_url(url)));
    for (name, o) in [("first open", &first), ("restart", &second)] {
        rep.row(
            name,
            format!(
                "ready in {:.2} s, stopped in {:.2} s; write state from {}",
                o.open.as_secs_f64(),
                o.close.as_secs_f64(),
                o.from
            ),
        );
        if let Some(r) = o.peak_rss {
            rep.row(&format!("{name}: peak RSS"), mib(r));
        }
    }
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How much RSS may rise per request after the warm-up of the load test and still count
    /// as flat. What a leak-free server still shows there is the runtime's blocking pool
    /// adding threads (each with its stack) and glibc's per-thread arenas settling: 330–350
    /// bytes per request in a debug build, 77 with `MALLOC_ARENA_MAX=1`, less in release
    /// (docs/RELIABILITY.md). A leak of a request's body and answer (about 450 bytes, plus
    /// the allocator's overhead) on top of that goes over.
    const RSS_GROWTH_BYTES_PER_REQUEST_MAX: f64 = 768.0;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ingest_reports_positive_figures_and_the_raw_ratio() {
        let a = IngestArgs {
            readings: 300,
            meters: 10,
            batch: 64,
            projections: ProjectionMode::Live,
            raw_rows_per_tx: None,
            dir: None,
            json: true,
        };
        let r = ingest(None, &a).await.unwrap();
        let f = &r.json["figures"];
        assert_eq!(f["write"]["accepted"], 300, "{f}");
        assert_eq!(f["write"]["refused"], 0, "{f}");
        assert!(f["readings_per_s"].as_f64().unwrap() > 0.0, "{f}");
        assert!(f["write"]["readings_per_s"].as_f64().unwrap() > 0.0, "{f}");
        assert_eq!(f["raw_limit"]["rows"], 300, "{f}");
        assert!(f["raw_limit"]["rows_per_s"].as_f64().unwrap() > 0.0, "{f}");
        assert!(f["ratio_to_raw"].as_f64().unwrap() > 0.0, "{f}");
        assert_eq!(f["projections"]["position"], f["write"]["head_position"], "{f}");
        assert!(r.human().contains("ratio to raw"));
    }

    /// Issue 7: a bounded load of 64 clients finishes with zero errors, reports throughput
    /// and p50/p99/p999 latency, and memory stays flat once the state stops growing (the
    /// first pass records every reading; the two repeat passes are retries, each answered as a
    /// duplicate, which add nothing to the state). Run from `.ci/run` with `--ignored`.
    #[ignore = "a bounded load test (well under 60 s); .ci/run runs it"]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn http_load_of_64_clients_has_no_errors_and_flat_memory() {
        let (readings, repeats) = (8_000u64, 9u32);
        let a = HttpArgs {
            readings,
            clients: 64,
            meters: 1_000,
            bulk: false,
            batch: 1_000,
            repeats,
            dir: None,
            json: true,
        };
        let started = Instant::now();
        let r = http(None, &a).await.unwrap();
        let took = started.elapsed();
        println!("{}", r.human());
        for p in r.json["figures"]["passes"].as_array().unwrap() {
            println!("{p}");
        }
        assert!(took < Duration::from_secs(60), "bounded to 60 s, took {took:?}");
        let f = &r.json["figures"];
        assert_eq!(f["readings_failed"], 0, "{f}");
        assert_eq!(f["readings_ok"], readings * (1 + repeats as u64), "{f}");
        assert_eq!(
            f["duplicates"],
            readings * repeats as u64,
            "every repeat is a retry: {f}"
        );
        assert!(f["readings_per_s"].as_f64().unwrap() > 0.0, "{f}");
        for p in ["p50_us", "p99_us", "p999_us"] {
            assert!(f["latency"][p].as_f64().unwrap() > 0.0, "{p}: {f}");
        }
        let rss = &f["rss"];
        assert_eq!(rss["requests_after_warm_up"], readings * 5, "{rss}");
        let growth = rss["growth_bytes_per_request_after_warm_up"]
            .as_f64()
            .expect("VmRSS is readable");
        assert!(
            growth <= RSS_GROWTH_BYTES_PER_REQUEST_MAX,
            "memory grew by {growth} bytes per request after the warm-up (at most {RSS_GROWTH_BYTES_PER_REQUEST_MAX}): {rss}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restart_opens_from_the_snapshots_the_first_stop_saved() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("r.db").display());
        let args = RestartArgs { json: true };
        let err = restart(&url, &args).await.err().expect("no store is refused");
        assert!(err.to_string().contains("no store at"), "{err}");
        let empty = store::open(&url, Access::Write).await.unwrap();
        empty.shutdown().await;
        drop(empty);
        let err = restart(&url, &args).await.err().expect("an empty store is refused");
        assert!(err.to_string().contains("has no events to restart from"), "{err}");
        let a = IngestArgs {
            readings: 200,
            meters: 10,
            batch: 64,
            projections: ProjectionMode::Live,
            raw_rows_per_tx: None,
            dir: Some(dir.path().to_path_buf()),
            json: true,
        };
        ingest(Some(&url), &a).await.unwrap();
        let again = ingest(Some(&url), &a)
            .await
            .err()
            .expect("a store with events is refused");
        assert!(
            again.to_string().contains("bench ingest needs an empty store"),
            "{again}"
        );
        // bench ingest ends as `apply` does: it saves the write state. Without it, the first
        // open replays the whole log.
        let state = crate::ledger::snapshot::path_for(&url);
        std::fs::remove_file(&state).expect("bench ingest saved the write state");
        let r = restart(&url, &args).await.unwrap();
        let f = &r.json["figures"];
        let events = r.json["config"]["events"].as_u64().unwrap();
        assert!(events > 200, "{}", r.json);
        assert_eq!(
            f["first"]["write_state_from"],
            json!("the whole log: no write-state snapshot yet"),
            "the snapshot bench ingest saved was removed"
        );
        assert_eq!(
            f["restart"]["write_state_from"],
            json!(format!(
                "the write-state snapshot at position {events} and 0 events after it"
            ))
        );
        for k in ["first", "restart"] {
            assert!(f[k]["open_seconds"].as_f64().unwrap() > 0.0, "{}", r.json);
            assert!(f[k]["stop_seconds"].as_f64().unwrap() > 0.0, "{}", r.json);
        }
    }

    #[test]
    fn readings_are_valid_commands_and_stay_in_the_past() {
        let now = Utc::now();
        let w = Workload::new(1_000, 7, now);
        let mut s = String::new();
        w.reading_line(999, &mut s);
        let v: Value = serde_json::from_str(&s).unwrap();
        assert!(Command::from_json(&v).is_ok(), "{s}");
        let end = crate::domain::time::parse_time(v["end"].as_str().unwrap()).unwrap();
        assert!(end <= now);
    }
}
