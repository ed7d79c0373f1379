//! The audit: replay the whole log from position zero and verify, independently of the
//! live system, everything the ledger claims — positions, stream versions, unique event
//! ids, the hash chain, each event's schema, each recorded price against the tariff then
//! in force, each event's postings, the chain hashes pinned by closed periods, and that the
//! live projection snapshot equals the replayed projections.

use crate::domain::LedgerState;
use crate::domain::events::Event;
use crate::domain::ids::HoldId;
use crate::domain::postings::{balanced, postings};
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
use std::collections::{HashMap, HashSet};
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

struct Walk {
    report: AuditReport,
    state: LedgerState,
    books: Books,
    versions: HashMap<String, u64>,
    ids: HashSet<uuid::Uuid>,
    expected_position: u64,
    running_hash: String,
    closes: Vec<(u64, u64, String)>,
}

impl Walk {
    fn check(&mut self, r: &RecordedEvent) {
        let p = Some(r.position);
        if r.position != self.expected_position {
            self.report.add(
                p,
                "position",
                format!(
                    "expected position {}, found {} (a gap, an insertion or a reordering)",
                    self.expected_position, r.position
                ),
            );
        }
        self.expected_position = r.position + 1;
        if r.prev_hash != self.running_hash {
            self.report.add(
                p,
                "chain",
                format!(
                    "prev_hash {} does not continue the chain (expected {})",
                    short(&r.prev_hash),
                    short(&self.running_hash)
                ),
            );
        }
        if r.expected_hash() != r.hash {
            self.report.add(
                p,
                "hash",
                "the record's content does not match its hash (altered after it was written)".into(),
            );
        }
        self.running_hash = r.hash.clone();
        let v = self.versions.entry(r.stream.clone()).or_insert(0);
        if r.version != *v + 1 {
            self.report.add(
                p,
                "version",
                format!("stream {:?} jumps from version {} to {}", r.stream, v, r.version),
            );
        }
        *v = r.version;
        if !self.ids.insert(r.event_id) {
            self.report
                .add(p, "event_id", format!("event id {} is recorded twice", r.event_id));
        }
        let ev = match Event::from_parts(&r.event_type, &r.data) {
            Ok(ev) => ev,
            Err(m) => {
                self.report.add(p, "decode", m);
                return;
            }
        };
        if !balanced(&postings(&ev)) {
            self.report
                .add(p, "postings", "the event's debits and credits differ".into());
        }
        self.check_price(r.position, &ev);
        self.check_holds(r, &ev);
        if let Event::PeriodClosed(c) = &ev {
            self.closes.push((r.position, c.last_position, c.chain_hash.clone()));
        }
        self.state.evolve(r.event_id, &r.stream, r.version, &ev);
        self.books.apply(r, &ev);
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

/// Audits the whole log against the live projections, if any; `progress(position, head)`
/// is called after each page.
pub async fn audit(
    store: &dyn EventStore,
    live: Live,
    mut progress: impl FnMut(u64, u64),
) -> Result<AuditReport, StoreError> {
    let head = store.head().await?;
    let mut w = Walk {
        report: AuditReport::default(),
        state: LedgerState::default(),
        books: Books::default(),
        versions: HashMap::new(),
        ids: HashSet::new(),
        expected_position: 1,
        running_hash: GENESIS_HASH.to_string(),
        closes: Vec::new(),
    };
    let live = match live {
        Live::None => None,
        Live::Books(b) => Some(*b),
        Live::Unreadable(why) => {
            w.report.add(None, "snapshot", why);
            None
        }
    };
    let mut compared = false;
    let compare = |w: &mut Walk, live: &Books, compared: &mut bool| {
        *compared = true;
        if all_sites(&w.books) != all_sites(live) {
            w.report.add(
                Some(live.position.max(1)),
                "attribution",
                format!(
                    "the live supply-mix attribution at position {} differs from a replay of the log",
                    live.position
                ),
            );
        }
        if w.books != *live {
            w.report.add(
                Some(live.position.max(1)),
                "projection",
                format!(
                    "the live projections at position {} differ from a replay of the log",
                    live.position
                ),
            );
        }
    };
    if let Some(l) = &live
        && l.position == 0
    {
        compare(&mut w, l, &mut compared);
    }
    let mut after = 0u64;
    loop {
        let page = store.read_all(after, READ_PAGE_EVENTS_MAX).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        for r in &page {
            w.check(r);
            w.report.events += 1;
            if let Some(l) = &live
                && !compared
                && r.position == l.position
            {
                compare(&mut w, l, &mut compared);
            }
        }
        progress(after, head.position);
    }
    w.report.head_position = after;
    w.report.chain_hash = w.running_hash.clone();
    if let Some(l) = &live {
        if compared {
            w.report.snapshot = Some(format!("compared with the replay at position {}", l.position));
        } else {
            w.report.add(
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
    let sites = all_sites(&w.books);
    let hours: usize = sites.iter().map(|s| s.hours.len()).sum();
    for site in &sites {
        if let Err(e) = check_invariants(site, rust_decimal::Decimal::new(1, 9)) {
            w.report.add(None, "attribution", e);
        }
    }
    w.report.attribution = Some(format!(
        "{hours} site-hours of {} sites attributed and checked (conservation, no source over-attributed, battery provenance)",
        sites.len()
    ));
    for (at, last_position, chain_hash) in std::mem::take(&mut w.closes) {
        if last_position == 0 {
            continue;
        }
        let found = store.read_all(last_position - 1, 1).await?;
        match found.first() {
            Some(r) if r.position == last_position && r.hash == chain_hash => {}
            _ => w.report.add(
                Some(last_position),
                "period",
                format!("the period closed at position {at} pinned chain hash {} at position {last_position}; the log no longer has it", short(&chain_hash)),
            ),
        }
    }
    w.report.clean = w.report.findings.is_empty() && w.report.findings_omitted == 0;
    Ok(w.report)
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
