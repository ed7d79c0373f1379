//! The write path: the only place that appends. A command is decided against the state
//! under one lock, its event is queued to the store before the lock is released (so the
//! log's order is the order of decisions), and the caller waits for durability outside the
//! lock — which lets the store fold many commands into one commit.

pub mod snapshot;

use crate::domain::{Command, DecideContext, Decision, Event, LedgerState, NewEvent, Rejection};
use crate::store::{
    AppendBatch, AppendTicket, EventStore, EventToAppend, ExpectedVersion, Memo, READ_PAGE_EVENTS_MAX, RecordedEvent,
    StoreError,
};
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use uuid::Uuid;

/// How long a duplicate's answer waits for its original to become durable.
pub const DUPLICATE_WAIT_MS_MAX: u64 = 10_000;
/// How often a command is retried after another writer moved a stream under it.
pub const CONFLICT_RETRIES_MAX: usize = 3;
/// Most commands [`Ledger::submit_many`] decides under one acquisition of the lock, so that
/// a long bulk request delays other requests by at most a few milliseconds.
pub const SUBMIT_CHUNK_COMMANDS: usize = 512;

/// The ledger's clock, injected so that tests decide "now".
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that stays where a test puts it.
pub struct FixedClock(std::sync::Mutex<DateTime<Utc>>);

impl FixedClock {
    pub fn new(t: DateTime<Utc>) -> Self {
        Self(std::sync::Mutex::new(t))
    }
    pub fn set(&self, t: DateTime<Utc>) {
        *self.0.lock().expect("clock lock") = t;
    }
}

impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().expect("clock lock")
    }
}

/// A command that was carried out (now or before).
#[derive(Clone, Debug)]
pub struct Accepted {
    pub event_id: Uuid,
    pub stream: String,
    pub version: u64,
    pub position: u64,
    pub duplicate: bool,
    pub event: Arc<Event>,
    /// Events the ledger recorded on its own right after this one (a spending limit the
    /// command took its tenant past): `(event id, position, event)`.
    pub triggered: Vec<(Uuid, u64, Arc<Event>)>,
}

impl Accepted {
    /// [`Accepted::to_json`]'s text for the most frequent answer, a reading priced in one
    /// band with no job and nothing triggered, written without building a `Value`; with
    /// `line`, the bulk answer's `line` and `status` members too. `None` for any other
    /// answer. The tests compare it with `to_json`'s text.
    pub fn reading_json(&self, line: Option<usize>) -> Option<String> {
        use crate::domain::jsontext::{key, string, uint};
        let r = self.event.as_reading()?;
        if r.job_id.is_some() || !self.triggered.is_empty() || !r.price.parts.is_empty() {
            return None;
        }
        let mut o = String::with_capacity(384);
        o.push('{');
        key(&mut o, "duplicate");
        o.push_str(if self.duplicate { "true" } else { "false" });
        key(&mut o, "event_id");
        o.push('"');
        o.push_str(
            self.event_id
                .hyphenated()
                .encode_lower(&mut uuid::Uuid::encode_buffer()),
        );
        o.push('"');
        key(&mut o, "event_type");
        string(&mut o, self.event.event_type());
        if let Some(l) = line {
            key(&mut o, "line");
            uint(&mut o, l as u64);
        }
        key(&mut o, "ok");
        o.push_str("true");
        key(&mut o, "position");
        uint(&mut o, self.position);
        key(&mut o, "price");
        crate::domain::jsontext::price(&mut o, &r.price)?;
        if line.is_some() {
            key(&mut o, "status");
            uint(&mut o, if self.duplicate { 200 } else { 201 });
        }
        key(&mut o, "stream");
        string(&mut o, &self.stream);
        key(&mut o, "version");
        uint(&mut o, self.version);
        o.push('}');
        Some(o)
    }

    /// The result object of CONTRACT §2.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "ok": true,
            "event_id": self.event_id,
            "stream": self.stream,
            "version": self.version,
            "position": self.position,
            "duplicate": self.duplicate,
            "event_type": self.event.event_type(),
        });
        let m = v.as_object_mut().expect("object");
        match &*self.event {
            Event::ReadingCorrected(c) => {
                m.insert("price".into(), serde_json::to_value(&c.price).expect("price"));
                m.insert(
                    "delta_eu".into(),
                    json!(crate::domain::quantity::fmt_decimal(&c.delta_eu)),
                );
            }
            Event::TariffPublished(t) => {
                m.insert("tariff_version".into(), json!(t.tariff_version));
            }
            Event::EmissionFactorsPublished(f) => {
                m.insert("factors_version".into(), json!(f.factors_version));
            }
            Event::HoldPlaced(h) => {
                m.insert("hold_id".into(), json!(h.hold_id));
                m.insert("remaining_eu".into(), json!(h.amount_eu));
                m.insert("expires_at".into(), json!(crate::domain::time::fmt_time(&h.expires_at)));
            }
            Event::HoldCaptured(h) => {
                m.insert("hold_id".into(), json!(h.hold_id));
                m.insert("amount_eu".into(), json!(h.amount_eu));
                m.insert("remaining_eu".into(), json!(h.remaining_eu));
            }
            Event::HoldReleased(h) => {
                m.insert("hold_id".into(), json!(h.hold_id));
                m.insert("released_eu".into(), json!(h.released_eu));
            }
            e => {
                if let Some(r) = e.as_reading() {
                    m.insert("price".into(), serde_json::to_value(&r.price).expect("price"));
                    if let Some(j) = &r.job_id {
                        m.insert("job_id".into(), json!(j));
                        m.insert("hold_draws".into(), serde_json::to_value(&r.hold_draws).expect("draws"));
                    }
                }
            }
        }
        if !self.triggered.is_empty() {
            let list: Vec<Value> = self
                .triggered
                .iter()
                .map(|(id, position, ev)| json!({"event_id": id, "event_type": ev.event_type(), "position": position}))
                .collect();
            m.insert("triggered".into(), Value::Array(list));
        }
        v
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CommandError {
    #[error("{0}")]
    Rejected(Rejection),
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl CommandError {
    pub fn code(&self) -> &'static str {
        match self {
            CommandError::Rejected(r) => r.code.as_str(),
            CommandError::Store(StoreError::Busy(_)) => "busy",
            CommandError::Store(StoreError::VersionConflict { .. }) => "conflict",
            CommandError::Store(StoreError::DuplicateEventId(_)) => "conflict",
            CommandError::Store(_) => "unavailable",
        }
    }

    /// The refusal object of CONTRACT §2.
    pub fn to_json(&self) -> Value {
        match self {
            CommandError::Rejected(r) => {
                let mut e = serde_json::to_value(r).expect("rejection");
                e.as_object_mut()
                    .expect("object")
                    .insert("code".into(), json!(r.code.as_str()));
                json!({"ok": false, "error": e})
            }
            CommandError::Store(s) => {
                json!({"ok": false, "error": {"code": self.code(), "message": s.to_string()}})
            }
        }
    }
}

pub type Outcome = Result<Accepted, CommandError>;

struct Inner {
    state: LedgerState,
    /// The store's failure count the state was built at (see [`AppendBatch::fence`]).
    fence: u64,
    /// The last log position folded into the state from the store.
    applied: u64,
    /// On a shared store: our own events already in the state but not yet seen in the log,
    /// so that catching up with other writers does not fold them twice.
    pending: HashSet<Uuid>,
    /// Where the readings' slots are kept (beside the snapshot), if not in memory.
    home: Option<std::path::PathBuf>,
    /// Set while an event is being folded: still set afterwards only if the fold was
    /// interrupted (a panic, such as a read error on the readings' files), and then the
    /// state is rebuilt from the log before it is used again.
    torn: bool,
}

impl Inner {
    /// Queues one event and folds it into the state (the log's order is the order of the
    /// calls). A refusal before queueing (busy) changes nothing.
    fn queue(&mut self, store: &dyn EventStore, new: &NewEvent) -> Result<AppendTicket, StoreError> {
        let ticket = store.append(AppendBatch {
            stream: new.stream.clone(),
            expected: ExpectedVersion::at(new.expected_version),
            events: vec![EventToAppend {
                event_id: new.event_id,
                event_type: new.event.event_type().to_string(),
                schema_version: crate::domain::events::SCHEMA_VERSION,
                recorded_at: new.recorded_at,
                data: new.event.canonical_data(),
                memo: Some(Memo(new.event.clone())),
            }],
            fence: Some(self.fence),
        });
        if let Some(e) = ticket.refusal() {
            return Err(e.clone());
        }
        self.torn = true;
        self.state
            .evolve(new.event_id, &new.stream, new.expected_version + 1, &new.event);
        self.torn = false;
        if store.shared() {
            self.pending.insert(new.event_id);
        }
        Ok(ticket)
    }

    /// Queues every event the ledger owes the log at `now` (see [`LedgerState::next_due`]).
    fn queue_due(
        &mut self,
        store: &dyn EventStore,
        now: DateTime<Utc>,
        after: bool,
        into: &mut Vec<Automatic>,
    ) -> Result<(), StoreError> {
        while let Some(new) = self.state.next_due(now) {
            let ticket = self.queue(store, &new)?;
            into.push(Automatic {
                ticket,
                new: Box::new(new),
                after,
            });
        }
        Ok(())
    }

    async fn rebuild(&mut self, store: &dyn EventStore) -> Result<(), StoreError> {
        let fence = store.failures();
        // The old state lets go of its slot file before a new generation replaces it.
        self.state = LedgerState::default();
        let (state, applied) = replay_from(store, fresh_state(self.home.as_deref()), 0).await?;
        (self.state, self.fence, self.applied) = (state, fence, applied);
        self.pending.clear();
        self.torn = false;
        Ok(())
    }

    /// Folds what other writers appended since the last look (shared stores only). It asks
    /// the store itself, not the head watch: a notification from another server may still be
    /// on its way when a client that saw that server's answer sends its next command here.
    /// What this process's own writer committed is taken from its recent tail (mostly our
    /// own events, only to be let go of), not read back; the loop ends on an empty read.
    async fn catch_up(&mut self, store: &dyn EventStore) -> Result<(), StoreError> {
        loop {
            if let Some(tail) = store.recent(self.applied, READ_PAGE_EVENTS_MAX) {
                for c in tail.iter() {
                    self.fold_other(&c.record, c.memo::<Event>())?;
                }
                continue;
            }
            let page = store.read_all(self.applied, READ_PAGE_EVENTS_MAX).await?;
            if page.is_empty() {
                break;
            }
            for r in &page {
                self.fold_other(r, None)?;
            }
        }
        Ok(())
    }

    /// Folds the next record of the log unless it is one of our own (already folded).
    fn fold_other(&mut self, r: &RecordedEvent, decided: Option<&Event>) -> Result<(), StoreError> {
        self.applied = r.position;
        if self.pending.remove(&r.event_id) {
            return Ok(());
        }
        let ev = Event::of_record(r, decided)?;
        self.torn = true;
        self.state.evolve(r.event_id, &r.stream, r.version, &ev);
        self.torn = false;
        Ok(())
    }
}

pub struct Ledger {
    store: Arc<dyn EventStore>,
    metrics: Arc<crate::metrics::Metrics>,
    clock: Arc<dyn Clock>,
    inner: tokio::sync::Mutex<Inner>,
    /// Set when an append the state already counted was not recorded: the state must be
    /// rebuilt from the log before the next decision.
    stale: Arc<AtomicBool>,
    /// Where the write state is saved on [`Ledger::close`] and read on open, if anywhere.
    snapshot: Option<std::path::PathBuf>,
    /// How the write state was built on open: from a snapshot and the tail, or why not.
    pub opened_from: String,
    /// Single commands waiting for the lock, decided together by whoever takes it next.
    waiting: std::sync::Mutex<Vec<(Command, tokio::sync::oneshot::Sender<Pending>)>>,
}

/// An event the ledger recorded on its own around a command: an expiry before it, or a
/// spending limit flag after it.
struct Automatic {
    ticket: AppendTicket,
    new: Box<NewEvent>,
    /// Recorded after the command's own event (because of it).
    after: bool,
}

/// A decided command waiting for its answer.
pub struct Pending {
    answer: Answer,
    automatic: Vec<Automatic>,
    stale: Arc<AtomicBool>,
    /// The event type a duplicate must have, for commands that recognise a retry by a
    /// client's `event_id` alone ([`same_kind`]).
    kind: Option<&'static str>,
}

/// A client's `event_id` names one event: a command that reuses the id of an event of
/// another kind is a conflict naming that event, not a retry of it. (Readings check this
/// when they decide; these commands recognise a retry by the id alone.)
fn expected_kind(cmd: &Command) -> Option<&'static str> {
    match cmd {
        Command::IssueCredits { .. } => Some("CreditsIssued"),
        Command::TransferCredits { .. } => Some("CreditsTransferred"),
        Command::CorrectReading { .. } => Some("ReadingCorrected"),
        _ => None,
    }
}

fn same_kind(expected: Option<&'static str>, out: Outcome) -> Outcome {
    match (expected, out) {
        (Some(expected), Ok(a)) if a.duplicate && a.event.event_type() != expected => {
            Err(CommandError::Rejected(Rejection::conflict(
                "event_id",
                format!(
                    "event {} is already recorded as a {}, not a {expected}; use a new event_id",
                    a.event_id,
                    a.event.event_type()
                ),
                Some(a.event_id),
            )))
        }
        (_, other) => other,
    }
}

enum Answer {
    Ready(Box<Outcome>),
    Append {
        ticket: AppendTicket,
        new: Box<NewEvent>,
        metrics: Arc<crate::metrics::Metrics>,
        started: std::time::Instant,
    },
    Duplicate {
        store: Arc<dyn EventStore>,
        event_id: Uuid,
        stream: String,
        version: u64,
    },
}

impl Pending {
    fn ready(stale: &Arc<AtomicBool>, automatic: Vec<Automatic>, out: Outcome) -> Self {
        Pending {
            answer: Answer::Ready(Box::new(out)),
            automatic,
            stale: stale.clone(),
            kind: None,
        }
    }

    pub async fn wait(self) -> Outcome {
        let stale = self.stale.clone();
        let mut out = same_kind(self.kind, self.answer.wait(&stale).await);
        for a in self.automatic {
            match a.ticket.wait().await {
                Ok(r) => {
                    if a.after
                        && let Ok(acc) = &mut out
                    {
                        acc.triggered.push((a.new.event_id, r.recorded[0].0, a.new.event));
                    }
                }
                // The state counted it: rebuild before the next decision (it is owed again).
                Err(_) => stale.store(true, Ordering::SeqCst),
            }
        }
        out
    }
}

impl Answer {
    async fn wait(self, stale: &AtomicBool) -> Outcome {
        match self {
            Answer::Ready(o) => *o,
            Answer::Append {
                ticket,
                new,
                metrics,
                started,
            } => match ticket.wait().await {
                Ok(a) => {
                    metrics.append_latency_s.observe(started.elapsed().as_secs_f64());
                    metrics.appends_total.fetch_add(1, Ordering::Relaxed);
                    let (position, version) = a.recorded[0];
                    Ok(Accepted {
                        event_id: new.event_id,
                        stream: new.stream,
                        version,
                        position,
                        duplicate: a.duplicate,
                        event: new.event,
                        triggered: Vec::new(),
                    })
                }
                Err(e) => {
                    metrics.append_errors_total.fetch_add(1, Ordering::Relaxed);
                    stale.store(true, Ordering::SeqCst);
                    Err(CommandError::Store(e))
                }
            },
            Answer::Duplicate {
                store,
                event_id,
                stream,
                version,
            } => recorded_result(store.as_ref(), event_id, &stream, version).await,
        }
    }
}

/// The result of an event already recorded (or about to be: its append may still be in
/// flight, so wait for it, bounded).
async fn recorded_result(store: &dyn EventStore, event_id: Uuid, stream: &str, version: u64) -> Outcome {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(DUPLICATE_WAIT_MS_MAX);
    let mut head = store.watch_head();
    loop {
        let found = store.read_stream(stream, version, 1).await?;
        if let Some(r) = found.into_iter().next()
            && r.event_id == event_id
        {
            let event = Event::from_parts(&r.event_type, &r.data).map_err(StoreError::Corrupt)?;
            return Ok(Accepted {
                event_id,
                stream: r.stream,
                version: r.version,
                position: r.position,
                duplicate: true,
                event: Arc::new(event),
                triggered: Vec::new(),
            });
        }
        if tokio::time::timeout_at(deadline, head.changed()).await.is_err() {
            return Err(CommandError::Store(StoreError::Unavailable(format!(
                "event {event_id} was decided but is not recorded yet"
            ))));
        }
    }
}

/// Folds the whole log into a fresh write state; returns it with the last position folded.
pub async fn replay_state(store: &dyn EventStore) -> Result<(LedgerState, u64), StoreError> {
    replay_from(store, LedgerState::default(), 0).await
}

/// An empty write state whose readings' slots are kept in `home` (a new generation), or in
/// memory (without a home, or one it cannot use: [`Readings::fresh`]).
pub fn fresh_state(home: Option<&Path>) -> LedgerState {
    LedgerState {
        readings: crate::domain::state::Readings::fresh(home),
        ..LedgerState::default()
    }
}

/// Folds the log after position `after` into `state`; returns it with the last position
/// folded.
async fn replay_from(
    store: &dyn EventStore,
    mut state: LedgerState,
    mut after: u64,
) -> Result<(LedgerState, u64), StoreError> {
    loop {
        let page = store.read_all(after, READ_PAGE_EVENTS_MAX).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        for r in &page {
            let ev = Event::of_record(r, None)?;
            state.evolve(r.event_id, &r.stream, r.version, &ev);
        }
    }
    Ok((state, after))
}

/// The write state from a snapshot that agrees with the log, with the position it stands
/// at; else why there is none (a contradicted snapshot is kept aside as evidence).
async fn load_snapshot(
    store: &dyn EventStore,
    path: &Path,
    read: snapshot::Read,
) -> Result<Result<(LedgerState, u64), String>, StoreError> {
    let (header, state) = match read {
        Ok(Some(found)) => found,
        Ok(None) => return Ok(Err("no write-state snapshot yet".into())),
        Err(e) => return Ok(Err(format!("write-state snapshot {} ignored: {e}", path.display()))),
    };
    if let Some(why) = crate::snapfile::check_against_log(store, header.position, &header.chain_hash).await? {
        let kept = crate::projections::engine::quarantine(path);
        return Ok(Err(format!(
            "write-state snapshot ignored: {why}; it is kept as {}",
            kept.display()
        )));
    }
    Ok(Ok((state, header.position)))
}

impl Ledger {
    /// Opens the ledger by replaying the whole log (tests, benchmarks, one-off commands).
    pub async fn open(store: Arc<dyn EventStore>, clock: Arc<dyn Clock>) -> Result<Arc<Self>, StoreError> {
        Self::open_with(store, clock, None).await
    }

    /// Opens the ledger from the write-state snapshot at `snapshot` and the log after it,
    /// or from the whole log when there is no snapshot that agrees with the log; saves
    /// the snapshot there again on [`Ledger::close`].
    pub async fn open_with(
        store: Arc<dyn EventStore>,
        clock: Arc<dyn Clock>,
        snapshot: Option<std::path::PathBuf>,
    ) -> Result<Arc<Self>, StoreError> {
        let snapshot = match snapshot {
            None => None,
            Some(path) => Some((path.clone(), snapshot::read_in_background(path).await)),
        };
        Self::open_preread(store, clock, snapshot).await
    }

    /// [`Ledger::open_with`] with the snapshot already read (`serve` reads it while the
    /// store opens).
    pub async fn open_preread(
        store: Arc<dyn EventStore>,
        clock: Arc<dyn Clock>,
        snapshot: Option<(std::path::PathBuf, snapshot::Read)>,
    ) -> Result<Arc<Self>, StoreError> {
        let fence = store.failures();
        let mut from_snapshot = false;
        let home = snapshot.as_ref().map(|(path, _)| snapshot::readings_home(path));
        let (snapshot, (start, mut opened_from)) = match snapshot {
            None => (
                None,
                (
                    (LedgerState::default(), 0),
                    "the whole log (no snapshot configured)".to_string(),
                ),
            ),
            Some((path, read)) => {
                let opened = match load_snapshot(store.as_ref(), &path, read).await? {
                    Ok((state, at)) => {
                        from_snapshot = true;
                        ((state, at), format!("the write-state snapshot at position {at}"))
                    }
                    Err(why) => ((fresh_state(home.as_deref()), 0), format!("the whole log: {why}")),
                };
                (Some(path), opened)
            }
        };
        let from = start.1;
        let (state, applied) = replay_from(store.as_ref(), start.0, start.1).await?;
        if from_snapshot {
            opened_from.push_str(&format!(" and {} events after it", applied - from));
        }
        Ok(Arc::new(Self {
            store,
            metrics: Arc::new(crate::metrics::Metrics::default()),
            clock,
            inner: tokio::sync::Mutex::new(Inner {
                state,
                fence,
                applied,
                pending: HashSet::new(),
                home,
                torn: false,
            }),
            stale: Arc::new(AtomicBool::new(false)),
            snapshot,
            opened_from,
            waiting: std::sync::Mutex::new(Vec::new()),
        }))
    }

    /// Saves the write state to the configured snapshot, as of the log position it
    /// reflects, once everything queued is durable. `Ok(None)`: no snapshot is configured.
    /// Refuses (and saves nothing) when the state is not exactly a prefix of the log: an
    /// append failed since it was built, or on a shared store, our own appends are not all
    /// seen yet.
    pub async fn save_snapshot(&self) -> Result<Option<crate::snapfile::Header>, String> {
        let Some(path) = &self.snapshot else { return Ok(None) };
        let mut inner = self.inner.lock().await;
        // Everything queued before this is durable once the head answers.
        let head = self.store.head().await.map_err(|e| e.to_string())?;
        if self.stale.load(Ordering::SeqCst) || self.store.failures() != inner.fence || inner.torn {
            return Err("an append failed since the state was built; it is rebuilt on the next command".into());
        }
        let header = if self.store.shared() {
            inner.catch_up(self.store.as_ref()).await.map_err(|e| e.to_string())?;
            if !inner.pending.is_empty() {
                return Err(format!("{} of our appends are not in the log yet", inner.pending.len()));
            }
            let hash = match inner.applied {
                0 => crate::store::GENESIS_HASH.to_string(),
                p => {
                    let page = self.store.read_all(p - 1, 1).await.map_err(|e| e.to_string())?;
                    page.first()
                        .filter(|r| r.position == p)
                        .map(|r| r.hash.clone())
                        .ok_or_else(|| format!("the log has no event at position {p}"))?
                }
            };
            crate::snapfile::Header {
                position: inner.applied,
                chain_hash: hash,
            }
        } else {
            crate::snapfile::Header {
                position: head.position,
                chain_hash: head.hash,
            }
        };
        let home = snapshot::readings_home(path);
        if inner.state.readings.home().is_none() {
            return Err(format!(
                "this process keeps its readings in memory, not in {} (its log says why)",
                home.display()
            ));
        }
        inner
            .state
            .readings
            .persist()
            .map_err(|e| format!("{}: {e}", home.display()))?;
        snapshot::write(path, &header, &inner.state).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Some(header))
    }

    /// Saves the write-state snapshot (a failure is logged: the next open replays more of
    /// the log), lets go of the readings' files (so that the next process can open them while
    /// this one winds down; a later command here rebuilds the state), then shuts the store
    /// down.
    pub async fn close(&self) {
        match self.save_snapshot().await {
            Ok(Some(h)) => tracing::info!(position = h.position, "saved the write-state snapshot"),
            Ok(None) => {}
            Err(e) => tracing::warn!("write-state snapshot not saved: {e}"),
        }
        if self.snapshot.is_some() {
            let mut inner = self.inner.lock().await;
            inner.state = LedgerState::default();
            self.stale.store(true, Ordering::SeqCst);
        }
        self.store.shutdown().await;
    }

    /// Saves the write-state snapshot and the store's caches while the ledger keeps running
    /// (`serve` does it every few minutes), so that a start after a crash folds only what
    /// followed. Holds the ledger's lock while the write state is saved.
    pub async fn checkpoint(&self) -> Result<Option<crate::snapfile::Header>, String> {
        let saved = self.save_snapshot().await?;
        self.store.checkpoint().await?;
        Ok(saved)
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// Decides a command and queues its event; await the returned [`Pending`] for the answer.
    ///
    /// Before deciding, the ledger records what it owes the log at this command's time
    /// (`HoldExpired` for every hold whose `expires_at` has come, in expiry order); after the
    /// command's event, what that event caused (`SpendingLimitExceeded`). All are queued under
    /// the same lock, so their positions in the log are fixed by the log itself.
    ///
    /// Commands submitted while another holds the lock wait in a queue, and whoever takes
    /// the lock next decides all of them in arrival order, after one [`Ledger::prepare`]
    /// (one catch-up on a shared log), as [`Ledger::submit_many`] would: concurrent requests
    /// do not each pay a round trip and a hand-over of the lock.
    pub async fn submit(&self, cmd: &Command) -> Pending {
        loop {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.waiting.lock().expect("waiting lock").push((cmd.clone(), tx));
            let mut inner = self.inner.lock().await;
            let batch = std::mem::take(&mut *self.waiting.lock().expect("waiting lock"));
            if !batch.is_empty() {
                self.decide_batch(&mut inner, batch).await;
            }
            drop(inner);
            // Ours was in our batch or in one decided before we got the lock. If the task
            // that took it was cancelled before it got to ours (its own caller went away
            // while it waited on the store), ours was not decided: queue it again.
            if let Ok(p) = rx.await {
                return p;
            }
        }
    }

    /// Under the lock: decides queued commands in order at one time, answering each.
    async fn decide_batch(&self, inner: &mut Inner, batch: Vec<(Command, tokio::sync::oneshot::Sender<Pending>)>) {
        let mut automatic = Vec::new();
        let now = match self.prepare(inner, &mut automatic).await {
            Ok(now) => now,
            Err(e) => {
                let e: CommandError = e.into();
                for (_, tx) in batch {
                    let _ = tx.send(Pending::ready(
                        &self.stale,
                        std::mem::take(&mut automatic),
                        Err(e.clone()),
                    ));
                }
                return;
            }
        };
        for (cmd, tx) in batch {
            // A caller that went away while it waited for the lock (a client that hung
            // up) is not decided for: without the queue, its command would never have run.
            if tx.is_closed() {
                continue;
            }
            let mut p = self
                .decide_locked(inner, &cmd, now, std::mem::take(&mut automatic))
                .await;
            p.kind = expected_kind(&cmd);
            // One that goes away from here on leaves its event queued, as before.
            let _ = tx.send(p);
        }
    }

    /// Decides and queues several commands in order under one acquisition of the lock (per
    /// [`SUBMIT_CHUNK_COMMANDS`]), all at the time of that acquisition: a bulk request's lines
    /// are not interleaved with other requests' and land in larger group commits. Each answer
    /// is the one [`Ledger::submit`] would give for its command at that time.
    pub async fn submit_many(&self, cmds: &[Command]) -> Vec<Pending> {
        let mut out = Vec::with_capacity(cmds.len());
        for chunk in cmds.chunks(SUBMIT_CHUNK_COMMANDS) {
            let mut inner = self.inner.lock().await;
            let mut automatic = Vec::new();
            let now = match self.prepare(&mut inner, &mut automatic).await {
                Ok(now) => now,
                Err(e) => {
                    let e: CommandError = e.into();
                    out.push(Pending::ready(&self.stale, automatic, Err(e.clone())));
                    out.extend((1..chunk.len()).map(|_| Pending::ready(&self.stale, Vec::new(), Err(e.clone()))));
                    continue;
                }
            };
            for cmd in chunk {
                let mut p = self
                    .decide_locked(&mut inner, cmd, now, std::mem::take(&mut automatic))
                    .await;
                p.kind = expected_kind(cmd);
                out.push(p);
            }
        }
        out
    }

    /// [`Ledger::submit_many`] over items some of which were refused before deciding (a
    /// line that did not parse, say): the commands are decided in order, and each refusal
    /// keeps its place among the answers.
    pub async fn submit_each<E>(&self, items: Vec<Result<Command, E>>) -> Vec<Result<Pending, E>> {
        let mut cmds = Vec::with_capacity(items.len());
        let places: Vec<Result<(), E>> = items.into_iter().map(|i| i.map(|c| cmds.push(c))).collect();
        let mut decided = self.submit_many(&cmds).await.into_iter();
        places
            .into_iter()
            .map(|p| p.map(|()| decided.next().expect("one decision per command")))
            .collect()
    }

    /// Under the lock, after [`Ledger::prepare`]: decides one command at `now` and queues its
    /// event and what it causes. `automatic` are the events owed before it.
    async fn decide_locked(
        &self,
        inner: &mut Inner,
        cmd: &Command,
        now: DateTime<Utc>,
        mut automatic: Vec<Automatic>,
    ) -> Pending {
        let head = if matches!(cmd, Command::ClosePeriod { .. }) {
            match self.store.head().await {
                Ok(h) => Some((h.position, h.hash)),
                Err(e) => return Pending::ready(&self.stale, automatic, Err(e.into())),
            }
        } else {
            None
        };
        let ctx = DecideContext { now, head };
        let answer = match inner.state.decide(cmd, &ctx) {
            Err(r) => Answer::Ready(Box::new(Err(CommandError::Rejected(r)))),
            Ok(Decision::Duplicate {
                event_id,
                stream,
                version,
            }) => Answer::Duplicate {
                store: self.store.clone(),
                event_id,
                stream,
                version,
            },
            Ok(Decision::Append(new)) => match inner.queue(self.store.as_ref(), &new) {
                // Refused before it was queued (busy): nothing to undo, the state stays.
                Err(e) => {
                    self.metrics.append_errors_total.fetch_add(1, Ordering::Relaxed);
                    Answer::Ready(Box::new(Err(CommandError::Store(e))))
                }
                Ok(ticket) => {
                    if let Err(e) = inner.queue_due(self.store.as_ref(), now, true, &mut automatic) {
                        tracing::warn!(error = %e, "an owed event was not queued; it is owed again next time");
                    }
                    Answer::Append {
                        ticket,
                        new,
                        metrics: self.metrics.clone(),
                        started: std::time::Instant::now(),
                    }
                }
            },
        };
        Pending {
            answer,
            automatic,
            stale: self.stale.clone(),
            kind: None,
        }
    }

    /// Under the lock: rebuilds the state from the log if an append failed since it was built
    /// (ours, or one queued ahead of ours: the state counts events that were not recorded),
    /// or if a fold was interrupted.
    async fn refresh(&self, inner: &mut Inner) -> Result<(), StoreError> {
        if self.stale.load(Ordering::SeqCst) || self.store.failures() != inner.fence || inner.torn {
            inner.rebuild(self.store.as_ref()).await?;
            self.stale.store(false, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Under the lock: rebuild a stale state, catch up with other writers, read the clock,
    /// and queue what is owed at that time. Returns the time of the decision.
    async fn prepare(&self, inner: &mut Inner, automatic: &mut Vec<Automatic>) -> Result<DateTime<Utc>, StoreError> {
        self.refresh(inner).await?;
        if self.store.shared() {
            inner.catch_up(self.store.as_ref()).await?;
        }
        // Millisecond precision: every backend stores it exactly.
        let now = self.clock.now();
        let now = now.duration_trunc(TimeDelta::milliseconds(1)).unwrap_or(now);
        inner.queue_due(self.store.as_ref(), now, false, automatic)?;
        Ok(now)
    }

    /// Records what the log is owed at the clock's time (expired holds, crossed spending
    /// limits) without any command: `serve` calls it periodically so that holds expire
    /// without traffic. Returns how many events were recorded.
    pub async fn sweep(&self) -> Result<usize, CommandError> {
        let mut automatic = Vec::new();
        {
            let mut inner = self.inner.lock().await;
            self.prepare(&mut inner, &mut automatic).await?;
        }
        let n = automatic.len();
        for a in automatic {
            if let Err(e) = a.ticket.wait().await {
                self.stale.store(true, Ordering::SeqCst);
                return Err(e.into());
            }
        }
        Ok(n)
    }

    /// Decides, appends and waits for one command. A version conflict (another writer moved
    /// the stream) rebuilds the state and decides again, a bounded number of times.
    pub async fn execute(&self, cmd: &Command) -> Outcome {
        let mut tries = 0;
        loop {
            let out = self.submit(cmd).await.wait().await;
            match out {
                Err(CommandError::Store(StoreError::VersionConflict { .. })) if tries < CONFLICT_RETRIES_MAX => {
                    tries += 1;
                }
                other => return other,
            }
        }
    }

    /// Parses and executes one JSON command (with its `"command"` field).
    pub async fn execute_json(&self, v: &Value) -> Outcome {
        let cmd = Command::from_json(v).map_err(CommandError::Rejected)?;
        self.execute(&cmd).await
    }

    /// A read of the write state as it stands (tests, benchmarks).
    pub async fn with_state<T>(&self, f: impl FnOnce(&LedgerState) -> T) -> T {
        f(&self.inner.lock().await.state)
    }

    /// A read of the write state as the next command would see it: rebuilt from the log
    /// first if it must be (checks that need the ledger's own view, such as a token's scope;
    /// a state that could not be rebuilt is never read).
    pub async fn with_fresh_state<T>(&self, f: impl FnOnce(&LedgerState) -> T) -> Result<T, StoreError> {
        let mut inner = self.inner.lock().await;
        self.refresh(&mut inner).await?;
        Ok(f(&inner.state))
    }
}
