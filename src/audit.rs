//! The audit: replay the whole log from position zero and verify, independently of the
//! live system, everything the ledger claims — positions, stream versions, unique event
//! ids, the hash chain, each event's schema, each recorded price against the tariff then
//! in force, each event's postings, the chain hashes pinned by closed periods, and that the
//! live projection snapshot equals the replayed projections.

use crate::domain::LedgerState;
use crate::domain::events::Event;
use crate::domain::ids::HoldId;
use crate::domain::postings::{Posting, balanced, postings};
use crate::domain::quantity::fmt_decimal;
use crate::domain::quantity::round_eu;
use crate::domain::state::HoldStatus;
use crate::domain::tariff::price;
use crate::domain::time::fmt_time;
use crate::projections::Books;
use crate::projections::attribution::{all_sites, check_invariants};
use crate::projections::engine::read_snapshot;
use crate::store::{EventStore, GENESIS_HASH, READ_PAGE_EVENTS_MAX, RecordedEvent, StoreError};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::HashSet;
use std::path::Path;

/// Most findings one report lists; the count of the rest is still reported.
pub const FINDINGS_MAX: usize = 1_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The position where the problem shows (absent for problems of the log as a whole).
    pub position: Option<u64>,
    pub kind: &'static str,
    pub message: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct AuditReport {
    pub clean: bool,
    pub events: u64,
    pub head_position: u64,
    pub chain_hash: String,
    pub first_failing_position: Option<u64>,
    pub findings: Vec<Finding>,
    pub findings_omitted: u64,
    /// What was compared with the live snapshot, if one exists.
    pub snapshot: Option<String>,
    /// What the replay of the supply-mix attribution verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attribution: Option<String>,
}

impl AuditReport {
    pub fn add(&mut self, position: Option<u64>, kind: &'static str, message: String) {
        if let Some(p) = position {
            self.first_failing_position = Some(self.first_failing_position.map_or(p, |f| f.min(p)));
        }
        if self.findings.len() < FINDINGS_MAX {
            self.findings.push(Finding {
                position,
                kind,
                message,
            });
        } else {
            self.findings_omitted += 1;
        }
    }

    /// A report for people.
    pub fn human(&self) -> String {
        let mut s = format!(
            "audited {} events, head position {}, chain hash {}\n",
            self.events,
            self.head_position,
            if self.chain_hash.is_empty() {
                "-"
            } else {
                &self.chain_hash
            }
        );
        if let Some(snap) = &self.snapshot {
            s.push_str(&format!("snapshot: {snap}\n"));
        }
        if let Some(a) = &self.attribution {
            s.push_str(&format!("attribution: {a}\n"));
        }
        if self.clean {
            s.push_str("clean: the chain, versions, positions, prices, postings and projections all verify\n");
        } else {
            s.push_str(&format!(
                "FINDINGS: {} (first failing position: {})\n",
                self.findings.len() as u64 + self.findings_omitted,
                self.first_failing_position.map_or("-".to_string(), |p| p.to_string())
            ));
            for f in &self.findings {
                let at = f.position.map_or("-".to_string(), |p| p.to_string());
                s.push_str(&format!("  position {at}: {}: {}\n", f.kind, f.message));
            }
            if self.findings_omitted > 0 {
                s.push_str(&format!("  … and {} more\n", self.findings_omitted));
            }
        }
        s
    }
}

/// Where a finding falls in the order of a one-record-at-a-time walk: the record's number in
/// the walk (1 for the first; 0 before any record) and the step that found it. The audit
/// runs as a pipeline, and its parts find things out of that order; sorting by this key gives
/// back the sequential order, so the report is the same as a sequential walk's.
type Key = (u64, u8);
/// Position, chain, content hash and stream version of the record.
const STEP_RECORD: u8 = 0;
/// The event id's uniqueness.
const STEP_ID: u8 = 1;
/// Decoding, postings, price, holds (against the write state replayed so far).
const STEP_EVENT: u8 = 2;
/// The live projections, compared after the record they have seen last.
const STEP_SNAPSHOT: u8 = 3;

/// Findings of one part of the pipeline, each with its [`Key`], in key order; like
/// [`AuditReport`], at most [`FINDINGS_MAX`] are kept and the rest counted.
#[derive(Default)]
struct Keyed {
    /// The key of the findings added next.
    key: Key,
    items: Vec<(Key, Finding)>,
    omitted: u64,
    first_failing_position: Option<u64>,
}

impl Keyed {
    fn add(&mut self, position: Option<u64>, kind: &'static str, message: String) {
        if let Some(p) = position {
            self.first_failing_position = Some(self.first_failing_position.map_or(p, |f| f.min(p)));
        }
        if self.items.len() < FINDINGS_MAX {
            self.items.push((
                self.key,
                Finding {
                    position,
                    kind,
                    message,
                },
            ));
        } else {
            self.omitted += 1;
        }
    }
}

/// Puts the parts' findings into `report` in key order. Each part kept its first
/// [`FINDINGS_MAX`] findings, so the first [`FINDINGS_MAX`] of all are among them.
fn merge_findings(report: &mut AuditReport, parts: Vec<Keyed>) {
    let mut items = Vec::new();
    for part in parts {
        report.findings_omitted += part.omitted;
        if let Some(p) = part.first_failing_position {
            report.first_failing_position = Some(report.first_failing_position.map_or(p, |f| f.min(p)));
        }
        items.extend(part.items);
    }
    // Stable: a part's findings under one key keep their order.
    items.sort_by_key(|(k, _)| *k);
    for (_, f) in items {
        report.add(f.position, f.kind, f.message);
    }
}

/// The checks that need the records in order but not their events: positions, the chain
/// links, stream versions; and the event ids, for the uniqueness check.
struct Sequence {
    records: u64,
    expected_position: u64,
    running_hash: String,
    versions: foldhash::HashMap<String, u64>,
    /// Every event id seen (→ its record number), mostly on disk in the audit's scratch
    /// directory.
    ids: crate::idmap::IdMap,
    /// The ids seen more than once.
    repeated: HashSet<u128>,
    /// Why the id map could not be read, if it could not: the audit cannot vouch for ids.
    failed: Option<String>,
}

/// What [`Sequence::check`] found about one record, to be reported in order by the walk.
#[derive(Default)]
struct Early {
    /// Position and chain findings, which come before the content hash's.
    before_hash: Vec<(&'static str, String)>,
    /// The stream version's finding, which comes after the content hash's.
    version: Option<String>,
}

impl Sequence {
    fn check(&mut self, r: &RecordedEvent) -> Early {
        let mut early = Early::default();
        self.records += 1;
        if r.position != self.expected_position {
            early.before_hash.push((
                "position",
                format!(
                    "expected position {}, found {} (a gap, an insertion or a reordering)",
                    self.expected_position, r.position
                ),
            ));
        }
        self.expected_position = r.position + 1;
        if r.prev_hash != self.running_hash {
            early.before_hash.push((
                "chain",
                format!(
                    "prev_hash {} does not continue the chain (expected {})",
                    short(&r.prev_hash),
                    short(&self.running_hash)
                ),
            ));
        }
        self.running_hash.clone_from(&r.hash);
        let jump = |v: u64| {
            (r.version != v + 1).then(|| format!("stream {:?} jumps from version {} to {}", r.stream, v, r.version))
        };
        match self.versions.get_mut(r.stream.as_str()) {
            Some(v) => {
                early.version = jump(*v);
                *v = r.version;
            }
            None => {
                early.version = jump(0);
                self.versions.insert(r.stream.clone(), r.version);
            }
        }
        let id = r.event_id.as_u128();
        match self.ids.get(id) {
            Ok(Some(_)) => {
                self.repeated.insert(id);
            }
            Ok(None) => {}
            Err(e) => {
                self.failed.get_or_insert_with(|| e.to_string());
            }
        }
        if let Err(e) = self.ids.insert(id, self.records) {
            tracing::warn!("audit: the id map could not write to disk ({e}); it keeps the ids in memory meanwhile");
        }
        early
    }
}

/// What a decoding worker found about one record: independent of every other record.
struct Checked {
    hash_ok: bool,
    event: Result<Event, String>,
    balanced: bool,
    /// The event's postings, checked above and handed to the books.
    posted: Vec<Posting>,
}

impl Checked {
    fn of(r: &RecordedEvent) -> Self {
        let hash_ok = r.hash_matches();
        let event = Event::from_parts(&r.event_type, &r.data);
        let posted = event.as_ref().map(postings).unwrap_or_default();
        let balanced = event.is_ok() && balanced(&posted);
        Checked {
            posted,
            hash_ok,
            event,
            balanced,
        }
    }
}

/// A run of consecutive records, checked; `first` is the walk number of the first.
struct Chunk {
    first: u64,
    records: Vec<RecordedEvent>,
    early: Vec<Early>,
    checked: Vec<Checked>,
}

/// The write-state side of the walk: everything that needs the state replayed so far.
struct Walk {
    report: Keyed,
    state: LedgerState,
    closes: Vec<(u64, u64, String)>,
}

impl Walk {
    fn check(&mut self, n: u64, r: &RecordedEvent, early: Early, checked: &Checked) {
        let p = Some(r.position);
        self.report.key = (n, STEP_RECORD);
        for (kind, message) in early.before_hash {
            self.report.add(p, kind, message);
        }
        if !checked.hash_ok {
            self.report.add(
                p,
                "hash",
                "the record's content does not match its hash (altered after it was written)".into(),
            );
        }
        if let Some(message) = early.version {
            self.report.add(p, "version", message);
        }
        self.report.key = (n, STEP_EVENT);
        let ev = match &checked.event {
            Ok(ev) => ev,
            Err(m) => {
                self.report.add(p, "decode", m.clone());
                return;
            }
        };
        if !checked.balanced {
            self.report
                .add(p, "postings", "the event's debits and credits differ".into());
        }
        self.check_price(r.position, ev);
        self.check_holds(r, ev);
        if let Event::PeriodClosed(c) = ev {
            self.closes.push((r.position, c.last_position, c.chain_hash.clone()));
        }
        self.state.evolve(r.event_id, &r.stream, r.version, ev);
    }

    /// Holds and spending limits, against the state replayed so far: expiries recorded at
    /// their time and before anything later, no capture, draw or release of a hold that was
    /// closed or expired, never more than what is left of it, no hold that overdrew its tenant,
    /// and no spending-limit flag that the charges do not justify.
    fn check_holds(&mut self, r: &RecordedEvent, ev: &Event) {
        let p = Some(r.position);
        let at = r.recorded_at;
        if !matches!(ev, Event::HoldExpired(_))
            && let Some((expiry, id)) = self.state.expiries.first()
            && *expiry <= at
        {
            self.report.add(
                p,
                "expiry",
                format!(
                    "hold {id} expired at {}, but this event (recorded at {}) comes before its HoldExpired",
                    fmt_time(expiry),
                    fmt_time(&at)
                ),
            );
        }
        // A hold that may be used at `at`: known, active, not expired; `None` after a finding.
        let usable = |w: &mut Walk, id: &HoldId, what: &str| -> Option<(Decimal, DateTime<Utc>)> {
            let Some(h) = w.state.holds.get(id) else {
                w.report
                    .add(p, "hold", format!("{what} of hold {id}, which was never placed"));
                return None;
            };
            if h.status != HoldStatus::Active {
                w.report.add(
                    p,
                    "hold",
                    format!("{what} of hold {id}, which was already {}", h.status.as_str()),
                );
                return None;
            }
            Some((h.remaining_eu(), h.placed.expires_at))
        };
        match ev {
            Event::HoldPlaced(h) => {
                if self.state.holds.contains_key(&h.hold_id) {
                    self.report
                        .add(p, "hold", format!("hold {} is placed a second time", h.hold_id));
                } else if let Some(available) = self.state.available_eu(&h.tenant_id, at)
                    && h.amount_eu.value() > available
                {
                    self.report.add(
                        p,
                        "hold",
                        format!(
                            "hold {} of {} EU overdrew tenant {} ({} EU available)",
                            h.hold_id,
                            h.amount_eu,
                            h.tenant_id,
                            fmt_decimal(&available)
                        ),
                    );
                }
            }
            Event::HoldCaptured(c) => {
                if let Some((left, expires)) = usable(self, &c.hold_id, "a capture") {
                    if at >= expires {
                        self.report.add(
                            p,
                            "expiry",
                            format!(
                                "hold {} was captured after it expired at {}",
                                c.hold_id,
                                fmt_time(&expires)
                            ),
                        );
                    }
                    if c.amount_eu.value() > left || c.remaining_eu.value() != left - c.amount_eu.value() {
                        self.report.add(
                            p,
                            "hold",
                            format!(
                                "hold {} had {} EU left: a capture of {} EU leaving {} EU does not fit",
                                c.hold_id,
                                fmt_decimal(&left),
                                c.amount_eu,
                                c.remaining_eu
                            ),
                        );
                    }
                }
            }
            Event::HoldReleased(c) | Event::HoldExpired(c) => {
                let expired = matches!(ev, Event::HoldExpired(_));
                if let Some((left, expires)) = usable(self, &c.hold_id, if expired { "an expiry" } else { "a release" })
                {
                    if expired && (at < expires || c.expires_at != expires) {
                        self.report.add(
                            p,
                            "expiry",
                            format!(
                                "hold {} expires at {}, but its HoldExpired was recorded at {}",
                                c.hold_id,
                                fmt_time(&expires),
                                fmt_time(&at)
                            ),
                        );
                    }
                    if !expired && at >= expires {
                        self.report.add(
                            p,
                            "expiry",
                            format!(
                                "hold {} was released after it expired at {}",
                                c.hold_id,
                                fmt_time(&expires)
                            ),
                        );
                    }
                    if c.released_eu.value() != left {
                        self.report.add(
                            p,
                            "hold",
                            format!(
                                "hold {} had {} EU left, but {} EU were freed",
                                c.hold_id,
                                fmt_decimal(&left),
                                c.released_eu
                            ),
                        );
                    }
                }
            }
            Event::EnergyConsumed(reading) if !reading.hold_draws.is_empty() => {
                let drawn: Decimal = reading.hold_draws.iter().map(|d| d.amount_eu.value()).sum();
                if drawn > reading.price.amount_eu {
                    self.report
                        .add(p, "hold", "the reading draws more from holds than it is charged".into());
                }
                for d in &reading.hold_draws {
                    let Some((left, expires)) = usable(self, &d.hold_id, "a draw") else {
                        continue;
                    };
                    let h = &self.state.holds[&d.hold_id].placed;
                    if h.job_id != reading.job_id || Some(&h.tenant_id) != reading.tenant_id.as_ref() {
                        self.report.add(
                            p,
                            "hold",
                            format!("hold {} is not a hold of this reading's tenant and job", d.hold_id),
                        );
                    }
                    if at >= expires {
                        self.report.add(
                            p,
                            "expiry",
                            format!(
                                "hold {} was drawn after it expired at {}",
                                d.hold_id,
                                fmt_time(&expires)
                            ),
                        );
                    }
                    if d.amount_eu.value() > left {
                        self.report.add(
                            p,
                            "hold",
                            format!(
                                "hold {} had {} EU left; {} EU were drawn",
                                d.hold_id,
                                fmt_decimal(&left),
                                d.amount_eu
                            ),
                        );
                    }
                }
            }
            Event::SpendingLimitExceeded(x) => {
                let key = (x.tenant_id.clone(), x.period);
                let charged = self.state.tenants.get(&x.tenant_id).map(|t| t.charged_in(x.period));
                if !self.state.over_limit.contains_key(&key) || charged != Some(x.charged_eu) {
                    self.report.add(
                        p,
                        "limit",
                        format!(
                            "tenant {} was not past its spending limit in {} (or was flagged already)",
                            x.tenant_id, x.period
                        ),
                    );
                }
            }
            _ => {}
        }
    }

    /// Re-derives a reading's price from the tariff then in force (as the log stood when
    /// the reading was appended) and compares it with the recorded one.
    fn check_price(&mut self, position: u64, ev: &Event) {
        let p = Some(position);
        if let Some(r) = ev.as_reading() {
            let Some(site) = self.state.sites.get(&r.site_id) else {
                self.report.add(
                    p,
                    "price",
                    format!("site {} was not registered before the reading", r.site_id),
                );
                return;
            };
            let Some(tariff) = site.tariff_at(r.start) else {
                self.report
                    .add(p, "price", "no tariff was in force for the reading".into());
                return;
            };
            match price(tariff, &site.tz, r.flow, r.source, &r.interval(), r.energy_wh.value()) {
                Ok(expected) if expected == r.price => {}
                Ok(expected) => self.report.add(
                    p,
                    "price",
                    format!(
                        "recorded {} EU (tariff v{}, band {}), re-derived {} EU (tariff v{}, band {})",
                        r.price.amount_eu,
                        r.price.tariff_version,
                        r.price.band,
                        expected.amount_eu,
                        expected.tariff_version,
                        expected.band
                    ),
                ),
                Err(m) => self.report.add(p, "price", m),
            }
        } else if let Event::ReadingCorrected(c) = ev {
            let Some(orig) = self.state.readings.get(&c.corrected_event_id) else {
                self.report.add(
                    p,
                    "price",
                    format!("corrected event {} is not an earlier reading", c.corrected_event_id),
                );
                return;
            };
            let Some(site) = self.state.sites.get(&c.site_id) else {
                return;
            };
            let Some(tariff) = site.tariffs.iter().find(|t| t.tariff_version == orig.tariff_version) else {
                self.report
                    .add(p, "price", "the corrected reading's tariff is not recorded".into());
                return;
            };
            match price(tariff, &site.tz, c.flow, c.source, &c.interval(), c.energy_wh.value()) {
                Ok(expected) if expected == c.price => {
                    let delta = round_eu(expected.amount_eu - orig.current_eu);
                    if delta != c.delta_eu || c.delta_wh != c.energy_wh.value() - orig.current_wh.value() {
                        self.report.add(
                            p,
                            "price",
                            "the correction's delta does not match the value it corrects".into(),
                        );
                    }
                }
                Ok(expected) => self.report.add(
                    p,
                    "price",
                    format!(
                        "recorded {} EU, re-derived {} EU",
                        c.price.amount_eu, expected.amount_eu
                    ),
                ),
                Err(m) => self.report.add(p, "price", m),
            }
        }
    }
}

fn short(h: &str) -> &str {
    &h[..h.len().min(16)]
}

/// The live projections to hold against the replay.
pub enum Live {
    None,
    Books(Box<Books>),
    /// A snapshot file that could not be read: itself a finding.
    Unreadable(String),
}

impl Live {
    /// The snapshot file at `path`, if there is one.
    pub fn from_file(path: &Path) -> Self {
        if !path.exists() {
            return Live::None;
        }
        match read_snapshot(path) {
            Ok(b) => Live::Books(Box::new(b)),
            Err(e) => Live::Unreadable(format!("{}: {e}", path.display())),
        }
    }
}

/// Records per chunk handed to a decoding worker.
const CHUNK_RECORDS: usize = 1_000;
/// Chunks read ahead of the write-state walk, and chunks the projections may lag behind
/// it: they bound the records in flight (~2.5 pages).
const CHUNKS_AHEAD: usize = 16;
const CHUNKS_BEHIND: usize = 8;

/// Compares the replayed books with the live ones; findings go to `out` (its key is set).
fn compare(books: &Books, live: &Books, out: &mut Keyed) {
    if all_sites(books) != all_sites(live) {
        out.add(
            Some(live.position.max(1)),
            "attribution",
            format!(
                "the live supply-mix attribution at position {} differs from a replay of the log",
                live.position
            ),
        );
    }
    if books != live {
        out.add(
            Some(live.position.max(1)),
            "projection",
            format!(
                "the live projections at position {} differ from a replay of the log",
                live.position
            ),
        );
    }
}

/// The projections side of the walk: `Books::apply` of every decoded event, and the
/// comparison with the live projections after the record they have seen last.
struct Replay {
    books: Books,
    live: Option<Books>,
    compared: bool,
    report: Keyed,
}

impl Replay {
    fn apply(&mut self, chunk: Chunk) {
        for (i, (r, c)) in chunk.records.iter().zip(chunk.checked).enumerate() {
            if let Ok(ev) = &c.event {
                self.books.apply_posted(r, ev, c.posted);
            }
            if let Some(l) = &self.live
                && !self.compared
                && r.position == l.position
            {
                self.compared = true;
                self.report.key = (chunk.first + i as u64, STEP_SNAPSHOT);
                compare(&self.books, l, &mut self.report);
            }
        }
    }
}

/// Waits for a pipeline thread; its panic, if any, goes on in the caller.
fn join<T>(h: std::thread::JoinHandle<T>) -> T {
    h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Audits the whole log against the live projections, if any; `progress(position, head)`
/// is called after each page.
///
/// The walk is a pipeline over the machine's cores: this task reads pages and checks
/// positions, chain links and stream versions in order; workers re-hash and decode chunks
/// of records; one thread replays the write state (prices, holds, periods) and another the
/// projections, both in log order. Event ids are checked against those before them in an
/// on-disk map; only if one repeats is the log read again to say where. The findings, put
/// back in log order, are those of a one-record-at-a-time walk.
pub async fn audit(
    store: &dyn EventStore,
    live: Live,
    mut progress: impl FnMut(u64, u64),
) -> Result<AuditReport, StoreError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex, mpsc};
    let head = store.head().await?;
    let mut report = AuditReport::default();
    // Findings before the first record.
    let mut before = Keyed::default();
    let live = match live {
        Live::None => None,
        Live::Books(b) => Some(*b),
        Live::Unreadable(why) => {
            before.add(None, "snapshot", why);
            None
        }
    };
    let mut compared = false;
    if let Some(l) = &live
        && l.position == 0
    {
        compared = true;
        compare(&Books::default(), l, &mut before);
    }
    // The walk's write state and the id check keep what grows with the log in a scratch
    // directory, removed when the audit ends, so that the audit's memory does not grow with it.
    let scratch = crate::scratch::ScratchDir::new(None, "audit").map_err(|e| {
        StoreError::Unavailable(format!(
            "audit: a scratch directory under {}: {e}",
            std::env::temp_dir().display()
        ))
    })?;
    let ids_dir = scratch.0.join("log-ids");
    let mut seq = Sequence {
        records: 0,
        expected_position: 1,
        running_hash: GENESIS_HASH.to_string(),
        versions: foldhash::HashMap::default(),
        ids: crate::idmap::IdMap::open(&ids_dir, crate::idmap::DEFAULT_MEM_MAX)
            .map_err(|e| StoreError::Unavailable(format!("audit: {}: {e}", ids_dir.display())))?,
        repeated: HashSet::new(),
        failed: None,
    };

    // Decoding workers: a chunk in, its checks out on the chunk's own channel.
    type Job = (u64, Vec<RecordedEvent>, Vec<Early>, mpsc::Sender<Chunk>);
    let (jobs, job_rx) = mpsc::channel::<Job>();
    let job_rx = Arc::new(Mutex::new(job_rx));
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 4);
    let spawn = |name: &str| std::thread::Builder::new().name(name.to_string());
    let mut pool = Vec::new();
    for _ in 0..workers {
        let rx = Arc::clone(&job_rx);
        pool.push(
            spawn("audit-decode")
                .spawn(move || {
                    loop {
                        let job = rx.lock().expect("job queue").recv();
                        let Ok((first, records, early, reply)) = job else { break };
                        let checked = records.iter().map(Checked::of).collect();
                        let _ = reply.send(Chunk {
                            first,
                            records,
                            early,
                            checked,
                        });
                    }
                })
                .map_err(|e| StoreError::Unavailable(format!("audit: {e}")))?,
        );
    }
    // The walk's two folds, fed the chunks in log order.
    let (order, mut order_rx) = tokio::sync::mpsc::channel::<mpsc::Receiver<Chunk>>(CHUNKS_AHEAD);
    let (to_books, books_rx) = mpsc::sync_channel::<Chunk>(CHUNKS_BEHIND);
    let walked = Arc::new(AtomicU64::new(0));
    let walked_in = Arc::clone(&walked);
    let mut replay = Replay {
        books: Books::default(),
        live,
        compared,
        report: Keyed::default(),
    };
    let books_thread = spawn("audit-books")
        .spawn(move || {
            for chunk in books_rx {
                replay.apply(chunk);
            }
            replay
        })
        .map_err(|e| StoreError::Unavailable(format!("audit: {e}")))?;
    let state = crate::ledger::fresh_state(Some(&scratch.0));
    let state_thread = spawn("audit-state")
        .spawn(move || {
            let mut w = Walk {
                report: Keyed::default(),
                state,
                closes: Vec::new(),
            };
            while let Some(rx) = order_rx.blocking_recv() {
                let chunk = rx.recv().expect("a decoding worker stopped");
                let Chunk {
                    first,
                    records,
                    early,
                    checked,
                } = chunk;
                for (i, (e, (r, c))) in early.into_iter().zip(records.iter().zip(&checked)).enumerate() {
                    w.check(first + i as u64, r, e, c);
                }
                if let Some(last) = records.last() {
                    walked_in.store(last.position, Ordering::Relaxed);
                }
                let chunk = Chunk {
                    first,
                    records,
                    early: Vec::new(),
                    checked,
                };
                if to_books.send(chunk).is_err() {
                    break;
                }
            }
            // The write state is not needed after the walk: drop it here, beside the books.
            (w.report, w.closes)
        })
        .map_err(|e| StoreError::Unavailable(format!("audit: {e}")))?;

    let mut after = 0u64;
    let read = async {
        loop {
            let page = store.read_all(after, READ_PAGE_EVENTS_MAX).await?;
            let Some(last) = page.last() else { break };
            after = last.position;
            let mut page = page.into_iter();
            loop {
                let records: Vec<RecordedEvent> = page.by_ref().take(CHUNK_RECORDS).collect();
                if records.is_empty() {
                    break;
                }
                let first = seq.records + 1;
                let early = records.iter().map(|r| seq.check(r)).collect();
                let (reply, rx) = mpsc::channel();
                if order.send(rx).await.is_err() || jobs.send((first, records, early, reply)).is_err() {
                    // A thread of the pipeline stopped: its panic is raised below.
                    return Ok(());
                }
            }
            progress(walked.load(Ordering::Relaxed), head.position);
        }
        Ok::<(), StoreError>(())
    }
    .await;
    drop((order, jobs));
    let repeated = std::mem::take(&mut seq.repeated);
    seq.ids = crate::idmap::IdMap::memory();
    let ((walk_findings, closes), replay, repeated) = tokio::task::spawn_blocking(move || {
        let w = join(state_thread);
        let replay = join(books_thread);
        for h in pool {
            join(h);
        }
        (w, replay, repeated)
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    read?;
    // Every thread of the pipeline has ended: the scratch directory can go.
    if let Some(e) = seq.failed.take() {
        return Err(StoreError::Unavailable(format!(
            "audit: the id map {}: {e}",
            ids_dir.display()
        )));
    }
    progress(after, head.position);
    report.events = seq.records;
    // Where each repeated id shows again, from a second reading of the records walked.
    let mut twice = Keyed::default();
    if !repeated.is_empty() {
        let mut seen = HashSet::new();
        let (mut n, mut from) = (0u64, 0u64);
        'pages: loop {
            let page = store.read_all(from, READ_PAGE_EVENTS_MAX).await?;
            let Some(last) = page.last() else { break };
            from = last.position;
            for r in &page {
                n += 1;
                if n > seq.records {
                    break 'pages;
                }
                if repeated.contains(&r.event_id.as_u128()) && !seen.insert(r.event_id) {
                    twice.key = (n, STEP_ID);
                    twice.add(
                        Some(r.position),
                        "event_id",
                        format!("event id {} is recorded twice", r.event_id),
                    );
                }
            }
        }
    }
    let Replay {
        books,
        live,
        compared,
        report: books_findings,
    } = replay;
    merge_findings(&mut report, vec![before, walk_findings, twice, books_findings]);
    report.head_position = after;
    report.chain_hash = seq.running_hash.clone();
    if let Some(l) = &live {
        if compared {
            report.snapshot = Some(format!("compared with the replay at position {}", l.position));
        } else {
            report.add(
                Some(after + 1),
                "tail",
                format!(
                    "the live snapshot has seen position {} (chain hash {}), but the log ends at {}: events were removed from its tail",
                    l.position,
                    short(&l.chain_hash),
                    after
                ),
            );
        }
    }
    // The attribution, replayed: every site-hour conserves energy, no source gives more than
    // it supplied, no battery holds negative provenance.
    let sites = all_sites(&books);
    let hours: usize = sites.iter().map(|s| s.hours.len()).sum();
    for site in &sites {
        if let Err(e) = check_invariants(site, rust_decimal::Decimal::new(1, 9)) {
            report.add(None, "attribution", e);
        }
    }
    report.attribution = Some(format!(
        "{hours} site-hours of {} sites attributed and checked (conservation, no source over-attributed, battery provenance)",
        sites.len()
    ));
    for (at, last_position, chain_hash) in closes {
        if last_position == 0 {
            continue;
        }
        let found = store.read_all(last_position - 1, 1).await?;
        match found.first() {
            Some(r) if r.position == last_position && r.hash == chain_hash => {}
            _ => report.add(
                Some(last_position),
                "period",
                format!("the period closed at position {at} pinned chain hash {} at position {last_position}; the log no longer has it", short(&chain_hash)),
            ),
        }
    }
    report.clean = report.findings.is_empty() && report.findings_omitted == 0;
    Ok(report)
}

/// Checks a snapshot set aside because it disagreed with the log (see
/// [`crate::projections::engine::quarantine_path`]): if the log still does not reach what it
/// saw, that is a finding — the log lost events after the snapshot was written.
pub async fn check_quarantined(
    store: &dyn EventStore,
    path: &Path,
    report: &mut AuditReport,
) -> Result<(), StoreError> {
    if !path.exists() {
        return Ok(());
    }
    match read_snapshot(path) {
        Ok(b) => {
            if let Some(why) = crate::projections::engine::check_against_log(store, &b).await? {
                report.add(
                    Some(b.position),
                    "tail",
                    format!("a snapshot kept at {}: {why}", path.display()),
                );
            }
        }
        Err(e) => report.add(None, "snapshot", format!("{}: {e}", path.display())),
    }
    report.clean = report.findings.is_empty() && report.findings_omitted == 0;
    Ok(())
}

/// The books a full replay of the log gives (for tests and rebuilds).
pub async fn replay_books(store: &dyn EventStore) -> Result<Books, StoreError> {
    let mut books = Books::default();
    let mut after = 0;
    loop {
        let page = store.read_all(after, READ_PAGE_EVENTS_MAX).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        crate::projections::engine::fold(&mut books, &page)?;
    }
    Ok(books)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AppendBatch, AppendTicket, Head};
    use tokio::sync::watch;

    /// A log held in memory, as tampered with by the test.
    struct Records(Vec<RecordedEvent>);

    #[async_trait::async_trait]
    impl EventStore for Records {
        fn append(&self, _: AppendBatch) -> AppendTicket {
            AppendTicket::refused(StoreError::Unavailable("read-only".into()))
        }
        async fn read_stream(&self, stream: &str, from: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
            Ok(self
                .0
                .iter()
                .filter(|r| r.stream == stream && r.version >= from)
                .take(limit)
                .cloned()
                .collect())
        }
        async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
            Ok(self
                .0
                .iter()
                .filter(|r| r.position > after)
                .take(limit)
                .cloned()
                .collect())
        }
        async fn head(&self) -> Result<Head, StoreError> {
            Ok(self.0.last().map_or(
                Head {
                    position: 0,
                    hash: GENESIS_HASH.into(),
                },
                |r| Head {
                    position: r.position,
                    hash: r.hash.clone(),
                },
            ))
        }
        fn watch_head(&self) -> watch::Receiver<u64> {
            watch::channel(0).1
        }
        async fn shutdown(&self) {}
    }

    fn rehash(r: &mut RecordedEvent) {
        r.hash = r.expected_hash();
    }

    /// `n` chained records over a few streams, of an event type nothing decodes.
    fn log(n: u64) -> Vec<RecordedEvent> {
        let mut prev = GENESIS_HASH.to_string();
        (1..=n)
            .map(|p| {
                let mut r = RecordedEvent {
                    position: p,
                    stream: format!("s-{}", p % 7),
                    // Versions of a stream: p % 7 == k for p = k, k + 7, ...
                    version: p.div_ceil(7),
                    event_id: uuid::Uuid::from_u128(u128::from(p) * 0x9e37_79b9_7f4a_7c15),
                    event_type: "Unknown".into(),
                    schema_version: 1,
                    recorded_at: DateTime::from_timestamp(1_700_000_000 + p as i64, 0).unwrap(),
                    data: format!("{{\"n\":{p}}}"),
                    hash: String::new(),
                    prev_hash: prev.clone(),
                };
                rehash(&mut r);
                prev.clone_from(&r.hash);
                r
            })
            .collect()
    }

    /// The record-level checks of the audit, one record at a time, as the audit did before
    /// it was a pipeline: what the pipeline's findings must equal, in order.
    fn sequential(records: &[RecordedEvent]) -> AuditReport {
        let mut report = AuditReport::default();
        let mut expected = 1;
        let mut running = GENESIS_HASH.to_string();
        let mut versions: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
        let mut ids = HashSet::new();
        for r in records {
            let p = Some(r.position);
            if r.position != expected {
                report.add(
                    p,
                    "position",
                    format!(
                        "expected position {expected}, found {} (a gap, an insertion or a reordering)",
                        r.position
                    ),
                );
            }
            expected = r.position + 1;
            if r.prev_hash != running {
                report.add(
                    p,
                    "chain",
                    format!(
                        "prev_hash {} does not continue the chain (expected {})",
                        short(&r.prev_hash),
                        short(&running)
                    ),
                );
            }
            if !r.hash_matches() {
                report.add(
                    p,
                    "hash",
                    "the record's content does not match its hash (altered after it was written)".into(),
                );
            }
            running = r.hash.clone();
            let v = versions.entry(r.stream.clone()).or_insert(0);
            if r.version != *v + 1 {
                report.add(
                    p,
                    "version",
                    format!("stream {:?} jumps from version {} to {}", r.stream, v, r.version),
                );
            }
            *v = r.version;
            if !ids.insert(r.event_id) {
                report.add(p, "event_id", format!("event id {} is recorded twice", r.event_id));
            }
            if let Err(m) = Event::from_parts(&r.event_type, &r.data) {
                report.add(p, "decode", m);
            }
        }
        report
    }

    async fn both(records: Vec<RecordedEvent>) -> (AuditReport, AuditReport) {
        let want = sequential(&records);
        let got = audit(&Records(records), Live::None, |_, _| {}).await.unwrap();
        (want, got)
    }

    fn assert_same(want: &AuditReport, got: &AuditReport) {
        assert_eq!(got.findings, want.findings);
        assert_eq!(got.findings_omitted, want.findings_omitted);
        assert_eq!(got.first_failing_position, want.first_failing_position);
        assert!(!got.clean);
    }

    #[tokio::test]
    async fn repeated_ids_are_reported_where_they_repeat_in_log_order() {
        let mut records = log(25);
        // Record 9 takes record 2's id (and is re-hashed: only the id is wrong); record 12
        // takes it too, unhashed; record 20 takes record 5's; record 17 skips a version.
        for (at, from) in [(9, 2), (12, 2), (20, 5)] {
            records[at - 1].event_id = records[from - 1].event_id;
        }
        rehash(&mut records[8]);
        rehash(&mut records[19]);
        records[16].version += 1;
        let (want, got) = both(records).await;
        let at_9: Vec<_> = want
            .findings
            .iter()
            .filter(|f| f.position == Some(9))
            .map(|f| f.kind)
            .collect();
        assert_eq!(at_9, ["event_id", "decode"]);
        let at_12: Vec<_> = want
            .findings
            .iter()
            .filter(|f| f.position == Some(12))
            .map(|f| f.kind)
            .collect();
        assert_eq!(at_12, ["hash", "event_id", "decode"]);
        assert_same(&want, &got);
        assert_eq!(got.events, 25);
        assert_eq!(got.head_position, 25);
    }

    /// Over several pages and chunks: swapped, removed, altered and re-identified records,
    /// and more findings than a report keeps.
    #[tokio::test]
    async fn the_pipeline_reports_what_a_sequential_walk_does() {
        let mut records = log(23_456);
        records.swap(999, 1000);
        records.swap(10_000, 10_003);
        records.remove(15_000);
        records[17_000].data.push(' ');
        records[17_001].prev_hash = GENESIS_HASH.into();
        for at in [999, 1000, 1001, 9_999, 10_000, 20_000, 23_000] {
            records[at].event_id = records[at - 500].event_id;
            rehash(&mut records[at]);
        }
        let (want, got) = both(records).await;
        assert_eq!(want.findings.len(), FINDINGS_MAX);
        assert!(want.findings_omitted > 20_000);
        assert_same(&want, &got);
        assert_eq!(got.events, 23_455);
    }

    /// Only the first findings are kept: the repeated ids among them are the first ones.
    #[tokio::test]
    async fn every_id_the_same_keeps_the_first_findings_in_order() {
        let mut records = log(1_500);
        let id = records[0].event_id;
        let mut prev = GENESIS_HASH.to_string();
        for r in &mut records {
            r.event_id = id;
            r.prev_hash = prev;
            rehash(r);
            prev = r.hash.clone();
        }
        let (want, got) = both(records).await;
        assert_eq!(want.findings_omitted, 1_500 + 1_499 - FINDINGS_MAX as u64);
        assert_same(&want, &got);
    }
}
