//! The KurrentDB / EventStoreDB store (`kurrentdb://…`, `esdb://…`, feature `kurrentdb`),
//! through the official `kurrentdb` client (the maintained successor of `eventstore`).
//!
//! **One chain, one writer.** Each wattledger stream is one KurrentDB stream
//! (`{prefix}{stream}`); the event id is the KurrentDB event id, the event type its type, the
//! data its (JSON) data, and the event's custom metadata carries what KurrentDB does not:
//! the global gap-free `position`, `schema_version`, `recorded_at`, `hash` and `prev_hash`.
//! KurrentDB commit positions are not gap-free, and appends to different streams are not
//! atomic with each other, so positions and the chain are assigned by a single writer: the
//! process holding the writer lease (a stream of lease records renewed every third of
//! `leaseTtlMs`). It appends one batch at a time, with the exact expected revision its index
//! knows, so the order of `$all` is the order of positions. Readers find events by their
//! rank among wattledger events in `$all` (an in-memory rank → commit position index kept by
//! a catch-up subscription) and refuse a log whose recorded position differs from its rank.
//! See `docs/kurrentdb.md`.

use super::*;
use ::kurrentdb::{
    AppendToStreamOptions, Client, ClientSettings, CurrentRevision, EventData, Position, ReadAllOptions,
    ReadStreamOptions, StreamPosition, StreamState, SubscribeToAllOptions, SubscriptionEvent, SubscriptionFilter,
};
use futures_util::stream::{BoxStream, StreamExt};
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Prefix of every KurrentDB stream wattledger writes, unless the URL says `streamPrefix=`.
pub const STREAM_PREFIX_DEFAULT: &str = "wattledger-";
/// Longest stream prefix accepted.
pub const STREAM_PREFIX_CHARS_MAX: usize = 64;
/// How long a writer lease lasts without renewal, unless the URL says `leaseTtlMs=`.
pub const LEASE_TTL_MS_DEFAULT: u64 = 10_000;
/// Bounds of `leaseTtlMs`.
pub const LEASE_TTL_MS_MIN: u64 = 1_000;
pub const LEASE_TTL_MS_MAX: u64 = 600_000;
/// The lease stream's name after the prefix; the `$` keeps it out of the wattledger filter
/// (wattledger stream names never contain `$`).
pub const LEASE_STREAM_SUFFIX: &str = "writer$lease";
/// Attempts at one append before it is answered as failed (and kept "in doubt").
pub const APPEND_ATTEMPTS_MAX: u32 = 3;
/// Lease records KurrentDB keeps (`$maxCount` of the lease stream); older ones are scavenged.
pub const LEASE_RECORDS_KEPT: u64 = 100;
/// Deadline of one read request.
pub const READ_DEADLINE_MS: u64 = 30_000;
/// The longest pause between attempts to resubscribe to `$all` after a lost connection.
pub const RESUBSCRIBE_BACKOFF_MS_MAX: u64 = 5_000;
/// The metadata format written by this code (`"wattledger"` key of the custom metadata).
pub const META_FORMAT: u32 = 1;

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("KurrentDB: {e}"))
}

// ---------------------------------------------------------------------------------------
// Connection string
// ---------------------------------------------------------------------------------------

/// A store URL split into the client's connection string and wattledger's own settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub settings: ClientSettings,
    pub prefix: String,
    pub lease_ttl: Duration,
}

/// Parses `kurrentdb[+discover]://…` or `esdb[+discover]://…`. wattledger's parameters
/// (`streamPrefix`, `leaseTtlMs`, any case) are removed before the client sees the rest; every
/// error names the URL without its password.
pub fn parse_url(url: &str) -> Result<Config, StoreError> {
    let redacted = redact_url(url);
    let invalid = |m: String| StoreError::Invalid(format!("{redacted}: {m}"));
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut prefix = STREAM_PREFIX_DEFAULT.to_string();
    let mut ttl_ms = LEASE_TTL_MS_DEFAULT;
    let mut kept = Vec::new();
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k.to_ascii_lowercase().as_str() {
            "streamprefix" => {
                if v.len() > STREAM_PREFIX_CHARS_MAX
                    || !v
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                {
                    return Err(invalid(format!(
                        "streamPrefix is 0 to {STREAM_PREFIX_CHARS_MAX} characters of A-Z a-z 0-9 - _ ."
                    )));
                }
                prefix = v.to_string();
            }
            "leasettlms" => {
                ttl_ms = v
                    .parse()
                    .ok()
                    .filter(|n| (LEASE_TTL_MS_MIN..=LEASE_TTL_MS_MAX).contains(n))
                    .ok_or_else(|| invalid(format!("leaseTtlMs must be {LEASE_TTL_MS_MIN} to {LEASE_TTL_MS_MAX}")))?;
            }
            _ => kept.push(kv),
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let settings = ClientSettings::from_str(&rest).map_err(|e| {
        // The client's message may quote the whole connection string, password included.
        let mut msg = e.to_string();
        if let Some(pw) = password_of(url)
            && !pw.is_empty()
        {
            msg = msg.replace(pw, "***");
        }
        invalid(format!("not a KurrentDB connection string: {msg}"))
    })?;
    Ok(Config {
        settings,
        prefix,
        lease_ttl: Duration::from_millis(ttl_ms),
    })
}

fn password_of(url: &str) -> Option<&str> {
    let s = url.find("://")? + 3;
    let at = url.rfind('@').filter(|at| *at > s)?;
    url[s..at].split_once(':').map(|(_, p)| p)
}

// ---------------------------------------------------------------------------------------
// Mapping: wattledger records <-> KurrentDB events (pure)
// ---------------------------------------------------------------------------------------

/// What travels in a KurrentDB event's custom metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventMeta {
    /// The format of this metadata ([`META_FORMAT`]).
    pub wattledger: u32,
    /// The global, gap-free wattledger position.
    pub position: u64,
    pub schema_version: u32,
    /// `fmt_time` text (hashed as such).
    pub recorded_at: String,
    pub hash: String,
    pub prev_hash: String,
}

/// The KurrentDB stream of a wattledger stream.
pub fn kdb_stream(prefix: &str, stream: &str) -> String {
    format!("{prefix}{stream}")
}

/// The wattledger stream of a KurrentDB stream, if it is one of ours.
pub fn wattledger_stream<'a>(prefix: &str, kdb: &'a str) -> Option<&'a str> {
    kdb.strip_prefix(prefix).filter(|s| check_stream(s).is_ok())
}

/// wattledger stream names are not empty and never contain `$` (which keeps them apart from
/// the lease stream and KurrentDB's system streams).
pub fn check_stream(stream: &str) -> Result<(), StoreError> {
    if stream.is_empty() || stream.contains('$') || stream.len() > 500 {
        return Err(StoreError::Invalid(format!(
            "stream name {stream:?}: 1 to 500 characters, without '$'"
        )));
    }
    Ok(())
}

/// The server-side filter of `$all`: the prefix's streams, without the lease stream.
pub fn stream_regex(prefix: &str) -> String {
    format!("^{}[^$]+$", prefix.replace('.', "\\."))
}

/// Event id, type, data bytes and custom metadata bytes of a record, as appended.
pub fn encode(r: &RecordedEvent) -> (Uuid, String, Vec<u8>, Vec<u8>) {
    let meta = EventMeta {
        wattledger: META_FORMAT,
        position: r.position,
        schema_version: r.schema_version,
        recorded_at: crate::domain::time::fmt_time(&r.recorded_at),
        hash: r.hash.clone(),
        prev_hash: r.prev_hash.clone(),
    };
    (
        r.event_id,
        r.event_type.clone(),
        r.data.as_bytes().to_vec(),
        serde_json::to_vec(&meta).expect("metadata serialises"),
    )
}

fn new_event(r: &RecordedEvent) -> Result<NewEvent, StoreError> {
    let (id, event_type, data, metadata) = encode(r);
    serde_json::from_slice::<&serde_json::value::RawValue>(&data)
        .map_err(|e| StoreError::Invalid(format!("event {id}: data is not JSON: {e}")))?;
    Ok(NewEvent {
        id,
        event_type,
        data,
        metadata,
    })
}

/// A KurrentDB event, as its parts, back to a wattledger record. `Ok(None)`: not one of
/// wattledger's streams. Data is kept byte for byte (the chain hashes it as stored).
pub fn decode(
    prefix: &str,
    kdb_stream: &str,
    event_id: Uuid,
    revision: u64,
    event_type: &str,
    data: &[u8],
    custom_metadata: &[u8],
) -> Result<Option<RecordedEvent>, StoreError> {
    let Some(stream) = wattledger_stream(prefix, kdb_stream) else {
        return Ok(None);
    };
    let bad = |m: String| StoreError::Corrupt(format!("event {event_id} in {kdb_stream} at revision {revision}: {m}"));
    let meta: EventMeta =
        serde_json::from_slice(custom_metadata).map_err(|e| bad(format!("not wattledger metadata: {e}")))?;
    if meta.wattledger != META_FORMAT {
        return Err(bad(format!("unknown metadata format {}", meta.wattledger)));
    }
    let recorded_at =
        crate::domain::time::parse_time(&meta.recorded_at).map_err(|e| bad(format!("recorded_at: {e}")))?;
    let data = String::from_utf8(data.to_vec()).map_err(|_| bad("data is not UTF-8".into()))?;
    Ok(Some(RecordedEvent {
        position: meta.position,
        stream: stream.to_string(),
        version: version_of(revision),
        event_id,
        event_type: event_type.to_string(),
        schema_version: meta.schema_version,
        recorded_at,
        data,
        hash: meta.hash,
        prev_hash: meta.prev_hash,
    }))
}

fn decode_event(prefix: &str, e: &StoredEvent) -> Result<Option<RecordedEvent>, StoreError> {
    decode(prefix, &e.stream, e.id, e.revision, &e.event_type, &e.data, &e.metadata)
}

// ---------------------------------------------------------------------------------------
// The server, as the store uses it
// ---------------------------------------------------------------------------------------

/// An event as read back from KurrentDB.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    pub stream: String,
    pub id: Uuid,
    pub revision: u64,
    pub event_type: String,
    pub data: Vec<u8>,
    /// The custom metadata.
    pub metadata: Vec<u8>,
    pub position: Position,
}

/// An event to append (JSON data).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    pub id: Uuid,
    pub event_type: String,
    pub data: Vec<u8>,
    pub metadata: Vec<u8>,
}

/// The few KurrentDB calls the store makes: the `kurrentdb` client implements it, and so does
/// [`fake::FakeServer`], an in-memory stand-in for tests without a server.
#[async_trait]
pub trait Server: Send + Sync + 'static {
    /// Appends to one stream atomically; answers the revision of its last event.
    async fn append(
        &self,
        stream: &str,
        expected: StreamState,
        events: Vec<NewEvent>,
        deadline: Duration,
    ) -> Result<u64, ::kurrentdb::Error>;

    /// Up to `max` events of `$all` whose stream matches `regex`, forwards from `from`.
    async fn read_all(
        &self,
        from: StreamPosition<Position>,
        regex: &str,
        max: usize,
        leader: bool,
    ) -> Result<Vec<StoredEvent>, ::kurrentdb::Error>;

    /// Up to `max` events of a stream, forwards from a revision, or backwards from `End`.
    async fn read_stream(
        &self,
        stream: &str,
        from: StreamPosition<u64>,
        max: usize,
        leader: bool,
    ) -> Result<Vec<StoredEvent>, ::kurrentdb::Error>;

    /// A catch-up subscription to `$all` (streams matching `regex`), after `from`; it ends
    /// with an error when the connection is lost.
    fn subscribe_all(
        &self,
        from: StreamPosition<Position>,
        regex: &str,
    ) -> BoxStream<'static, Result<StoredEvent, ::kurrentdb::Error>>;

    /// Sets a stream's `$maxCount` (only ever for the lease stream).
    async fn set_max_count(&self, stream: &str, max_count: u64) -> Result<(), ::kurrentdb::Error>;
}

fn stored(e: &::kurrentdb::ResolvedEvent) -> StoredEvent {
    let e = e.get_original_event();
    StoredEvent {
        stream: e.stream_id().to_string(),
        id: e.id,
        revision: e.revision,
        event_type: e.event_type.clone(),
        data: e.data.to_vec(),
        metadata: e.custom_metadata.to_vec(),
        position: e.position,
    }
}

fn read_deadline() -> Duration {
    Duration::from_millis(READ_DEADLINE_MS)
}

async fn drain(mut s: ::kurrentdb::ReadStream) -> Result<Vec<StoredEvent>, ::kurrentdb::Error> {
    let mut out = Vec::new();
    while let Some(e) = s.next().await? {
        out.push(stored(&e));
    }
    Ok(out)
}

#[async_trait]
impl Server for Client {
    async fn append(
        &self,
        stream: &str,
        expected: StreamState,
        events: Vec<NewEvent>,
        deadline: Duration,
    ) -> Result<u64, ::kurrentdb::Error> {
        let mut data = Vec::with_capacity(events.len());
        for e in events {
            let raw: Box<serde_json::value::RawValue> = serde_json::from_slice(&e.data)
                .map_err(|err| ::kurrentdb::Error::InternalParsingError(err.to_string()))?;
            let ev = EventData::json(&e.event_type, &raw)
                .map_err(|err| ::kurrentdb::Error::InternalParsingError(err.to_string()))?;
            data.push(ev.id(e.id).metadata(e.metadata.into()));
        }
        let opts = AppendToStreamOptions::default()
            .stream_state(expected)
            .deadline(deadline);
        Ok(self.append_to_stream(stream, &opts, data).await?.next_expected_version)
    }

    async fn read_all(
        &self,
        from: StreamPosition<Position>,
        regex: &str,
        max: usize,
        leader: bool,
    ) -> Result<Vec<StoredEvent>, ::kurrentdb::Error> {
        let opts = ReadAllOptions::default()
            .position(from)
            .forwards()
            .filter(SubscriptionFilter::on_stream_name().regex(regex))
            .max_count(max)
            .requires_leader(leader)
            .deadline(read_deadline());
        drain(Client::read_all(self, &opts).await?).await
    }

    async fn read_stream(
        &self,
        stream: &str,
        from: StreamPosition<u64>,
        max: usize,
        leader: bool,
    ) -> Result<Vec<StoredEvent>, ::kurrentdb::Error> {
        let opts = ReadStreamOptions::default()
            .position(from)
            .max_count(max)
            .requires_leader(leader)
            .deadline(read_deadline());
        drain(Client::read_stream(self, stream, &opts).await?).await
    }

    fn subscribe_all(
        &self,
        from: StreamPosition<Position>,
        regex: &str,
    ) -> BoxStream<'static, Result<StoredEvent, ::kurrentdb::Error>> {
        let client = self.clone();
        let opts = SubscribeToAllOptions::default()
            .position(from)
            .filter(SubscriptionFilter::on_stream_name().regex(regex));
        futures_util::stream::once(async move { client.subscribe_to_all(&opts).await })
            .flat_map(|sub| {
                futures_util::stream::unfold(Some(sub), |sub| async move {
                    let mut sub = sub?;
                    loop {
                        match sub.next_subscription_event().await {
                            Ok(SubscriptionEvent::EventAppeared(e)) => return Some((Ok(stored(&e)), Some(sub))),
                            Ok(_) => continue,
                            // The subscription is over after an error.
                            Err(e) => return Some((Err(e), None)),
                        }
                    }
                })
            })
            .boxed()
    }

    async fn set_max_count(&self, stream: &str, max_count: u64) -> Result<(), ::kurrentdb::Error> {
        let meta = ::kurrentdb::StreamMetadata::builder().max_count(max_count).build();
        self.set_stream_metadata(stream, &AppendToStreamOptions::default(), &meta)
            .await
            .map(|_| ())
    }
}

// ---------------------------------------------------------------------------------------
// Revision and position arithmetic (pure)
// ---------------------------------------------------------------------------------------

/// KurrentDB revisions start at 0, wattledger versions at 1.
pub fn version_of(revision: u64) -> u64 {
    revision + 1
}

/// The first revision to read for `from_version` (versions 0 and 1 both start at the top).
pub fn revision_of(from_version: u64) -> u64 {
    from_version.saturating_sub(1)
}

/// The exact expectation for a stream at wattledger version `current` (0: no stream).
pub fn expected_state(current: u64) -> StreamState {
    if current == 0 {
        StreamState::NoStream
    } else {
        StreamState::StreamRevision(current - 1)
    }
}

/// A stream's wattledger version from KurrentDB's answer to a wrong expected version.
pub fn current_version(c: CurrentRevision) -> u64 {
    match c {
        CurrentRevision::NoStream => 0,
        CurrentRevision::Current(r) => version_of(r),
    }
}

/// Where a catch-up subscription (or a read of `$all`) resumes after the last event applied.
/// The client's start positions are exclusive, so the last event is not delivered again;
/// [`is_after`] still drops it should a server deliver it.
pub fn resume_from(last: Option<Position>) -> StreamPosition<Position> {
    match last {
        None => StreamPosition::Start,
        Some(p) => StreamPosition::Position(p),
    }
}

/// Whether an event at `p` comes after the last one applied.
pub fn is_after(last: Option<Position>, p: Position) -> bool {
    last.is_none_or(|l| p > l)
}

// ---------------------------------------------------------------------------------------
// Duplicate or conflict (pure)
// ---------------------------------------------------------------------------------------

/// What a wrong-expected-version answer means for a batch.
#[derive(Debug, PartialEq, Eq)]
pub enum WrongVersion {
    /// The batch is already recorded (same ids, stream, type and data): its original result.
    Duplicate(Vec<(u64, u64)>),
    /// Some id is recorded with other content, or only part of the batch is.
    DuplicateEventId(Uuid),
    /// Another write moved the stream: a real conflict.
    Conflict,
}

/// Decides, from the stream's tail read from the version the batch was meant to start at,
/// whether the batch is already there. `recorded_at` is not compared (a retry decided a
/// millisecond later is the same event).
pub fn decide_wrong_version(batch: &[EventToAppend], tail: &[RecordedEvent]) -> WrongVersion {
    let mut recorded = Vec::with_capacity(batch.len());
    for (i, e) in batch.iter().enumerate() {
        match tail.get(i) {
            Some(r) if r.event_id == e.event_id => {
                if r.event_type != e.event_type || r.data != e.data {
                    return WrongVersion::DuplicateEventId(e.event_id);
                }
                recorded.push((r.position, r.version));
            }
            _ => {
                return match batch.iter().find(|e| tail.iter().any(|r| r.event_id == e.event_id)) {
                    Some(e) => WrongVersion::DuplicateEventId(e.event_id),
                    None => WrongVersion::Conflict,
                };
            }
        }
    }
    WrongVersion::Duplicate(recorded)
}

// ---------------------------------------------------------------------------------------
// The writer lease (pure decision)
// ---------------------------------------------------------------------------------------

/// One record of the lease stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub holder: Uuid,
    pub ttl_ms: u64,
    pub released: bool,
}

/// What an opener does next about the lease.
#[derive(Debug, PartialEq, Eq)]
pub enum LeaseStep {
    /// Append our lease with this expectation.
    Take(StreamState),
    /// Look again later.
    Wait,
    /// A live holder renewed it while we watched.
    Refuse(Uuid),
}

/// Decides from the lease stream's last record (`(revision, record)`) and what we saw of it
/// before (`seen`: the revision and when we first saw it). A held lease is taken over only
/// after its revision stayed unchanged for its TTL (and ours) as measured on our own clock;
/// any change while we watch means a live holder.
pub fn lease_step(
    last: Option<&(u64, LeaseRecord)>,
    seen: &mut Option<(u64, Instant)>,
    now: Instant,
    ttl: Duration,
) -> LeaseStep {
    let Some((rev, rec)) = last else {
        return LeaseStep::Take(StreamState::NoStream);
    };
    if rec.released {
        return LeaseStep::Take(StreamState::StreamRevision(*rev));
    }
    match *seen {
        None => {
            *seen = Some((*rev, now));
            LeaseStep::Wait
        }
        Some((r, since)) if r == *rev => {
            let ttl = ttl.max(Duration::from_millis(rec.ttl_ms));
            if now.duration_since(since) >= ttl {
                LeaseStep::Take(StreamState::StreamRevision(*rev))
            } else {
                LeaseStep::Wait
            }
        }
        Some(_) => LeaseStep::Refuse(rec.holder),
    }
}

// ---------------------------------------------------------------------------------------
// The index
// ---------------------------------------------------------------------------------------

/// What this process knows of the log.
#[derive(Debug)]
struct Index {
    /// The `$all` position of the n-th wattledger event seen (rank n = position n).
    ranks: Vec<Position>,
    /// The writer's head: at least `ranks.len()` (its own appends count before they are seen).
    head: u64,
    head_hash: String,
    /// Writer only: event id → position, stream → version.
    tracking: bool,
    ids: HashMap<Uuid, u64>,
    versions: HashMap<String, u64>,
    /// Writer only: `(position, hash)` of its own appends not yet seen in `$all`.
    unseen: std::collections::VecDeque<(u64, String)>,
    /// The log is inconsistent from here on (the index stops growing).
    broken: Option<String>,
}

impl Index {
    fn new(tracking: bool) -> Self {
        Self {
            ranks: Vec::new(),
            head: 0,
            head_hash: GENESIS_HASH.to_string(),
            tracking,
            ids: HashMap::new(),
            versions: HashMap::new(),
            unseen: std::collections::VecDeque::new(),
            broken: None,
        }
    }

    fn last(&self) -> Option<Position> {
        self.ranks.last().copied()
    }

    /// Takes the next wattledger event of `$all` (in order). Events at or before the last one
    /// seen are ignored, so two readers of `$all` may feed it.
    fn observe(&mut self, at: Position, r: &RecordedEvent) {
        if self.broken.is_some() || !is_after(self.last(), at) {
            return;
        }
        let rank = self.ranks.len() as u64 + 1;
        if r.position != rank {
            self.broken = Some(format!(
                "event {} (stream {}) is wattledger event {rank} of $all but carries position {}",
                r.event_id, r.stream, r.position
            ));
            return;
        }
        self.ranks.push(at);
        if rank <= self.head {
            // Appended by this writer and already counted: it must be the same record (a
            // server that acknowledged a repeat of someone else's append would show here).
            while self.unseen.front().is_some_and(|(p, _)| *p < rank) {
                self.unseen.pop_front();
            }
            let same = match self.unseen.front() {
                Some((p, hash)) if *p == rank => *hash == r.hash,
                _ => true,
            };
            if !same || (self.tracking && self.ids.get(&r.event_id) != Some(&rank)) {
                self.broken = Some(format!(
                    "position {rank} holds event {} with other content than this writer appended \
                     (another process writes to these streams)",
                    r.event_id
                ));
            }
            return;
        }
        if r.prev_hash != self.head_hash {
            self.broken = Some(format!("position {rank} does not continue the chain"));
            return;
        }
        self.adopt(r);
    }

    fn adopt(&mut self, r: &RecordedEvent) {
        self.head = r.position;
        self.head_hash = r.hash.clone();
        if self.tracking {
            self.ids.insert(r.event_id, r.position);
            self.versions.insert(r.stream.clone(), r.version);
        }
    }

    /// The writer's own records, once KurrentDB acknowledged them (the subscription may have
    /// seen them first).
    fn apply_own(&mut self, records: &[RecordedEvent]) {
        for r in records {
            if r.position <= self.head {
                continue;
            }
            debug_assert_eq!(r.position, self.head + 1);
            self.adopt(r);
            if self.tracking && r.position > self.ranks.len() as u64 {
                self.unseen.push_back((r.position, r.hash.clone()));
            }
        }
    }

    fn version(&self, stream: &str) -> u64 {
        self.versions.get(stream).copied().unwrap_or(0)
    }
}

// ---------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------

struct Shared {
    server: Arc<dyn Server>,
    prefix: String,
    /// The `$all` filter ([`stream_regex`]).
    regex: String,
    index: std::sync::Mutex<Index>,
    head_tx: watch::Sender<u64>,
    /// One catch-up read of `$all` at a time.
    scan: tokio::sync::Mutex<()>,
}

fn bump(cur: &mut u64, p: u64) -> bool {
    if p > *cur {
        *cur = p;
        true
    } else {
        false
    }
}

impl Shared {
    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().expect("index lock")
    }

    fn publish(&self) {
        let head = self.index().head;
        self.head_tx.send_if_modified(|cur| bump(cur, head));
    }

    fn observe(&self, at: Position, r: &RecordedEvent) {
        self.index().observe(at, r);
        self.publish();
    }

    /// Reads `$all` from the last event seen to the end, feeding the index.
    async fn catch_up(&self, leader: bool) -> Result<(), StoreError> {
        let _one = self.scan.lock().await;
        loop {
            let last = self.index().last();
            let page = self
                .server
                .read_all(resume_from(last), &self.regex, READ_PAGE_EVENTS_MAX, leader)
                .await
                .map_err(unavailable)?;
            let n = page.len();
            for e in &page {
                if !is_after(last, e.position) {
                    continue;
                }
                match decode_event(&self.prefix, e) {
                    Ok(Some(r)) => self.observe(e.position, &r),
                    Ok(None) => {}
                    Err(err) => {
                        self.index().broken.get_or_insert_with(|| err.to_string());
                        return Err(err);
                    }
                }
            }
            if let Some(why) = &self.index().broken {
                return Err(StoreError::Corrupt(why.clone()));
            }
            if n < READ_PAGE_EVENTS_MAX {
                return Ok(());
            }
        }
    }

    /// Events after rank `after`, at most `limit`, checking that each carries its rank.
    async fn read_all(&self, after: u64, limit: usize, leader: bool) -> Result<Vec<RecordedEvent>, StoreError> {
        let limit = limit.min(READ_PAGE_EVENTS_MAX);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (start, mut skip) = {
            let idx = self.index();
            let known = after.min(idx.ranks.len() as u64);
            let start = (known > 0).then(|| idx.ranks[known as usize - 1]);
            (start, after - known)
        };
        let page = self
            .server
            .read_all(resume_from(start), &self.regex, limit + skip as usize + 1, leader)
            .await
            .map_err(unavailable)?;
        let mut out = Vec::with_capacity(limit);
        for e in &page {
            if !is_after(start, e.position) {
                continue;
            }
            let Some(r) = decode_event(&self.prefix, e)? else {
                continue;
            };
            if skip > 0 {
                skip -= 1;
                continue;
            }
            let rank = after + out.len() as u64 + 1;
            if r.position != rank {
                return Err(StoreError::Corrupt(format!(
                    "event {} (stream {}) is wattledger event {rank} of $all but carries position {}",
                    r.event_id, r.stream, r.position
                )));
            }
            out.push(r);
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        limit: usize,
        leader: bool,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let limit = limit.min(READ_PAGE_EVENTS_MAX);
        if limit == 0 || check_stream(stream).is_err() {
            return Ok(Vec::new());
        }
        let name = kdb_stream(&self.prefix, stream);
        let from = StreamPosition::Position(revision_of(from_version));
        match self.server.read_stream(&name, from, limit, leader).await {
            Ok(page) => {
                let mut out = Vec::with_capacity(page.len());
                for e in &page {
                    if let Some(r) = decode_event(&self.prefix, e)? {
                        out.push(r);
                    }
                }
                Ok(out)
            }
            Err(::kurrentdb::Error::ResourceNotFound) => Ok(Vec::new()),
            Err(e) => Err(read_error(&name, e)),
        }
    }
}

fn read_error(stream: &str, e: ::kurrentdb::Error) -> StoreError {
    match e {
        ::kurrentdb::Error::ResourceDeleted => StoreError::Corrupt(format!(
            "stream {stream} was deleted in KurrentDB; the log has lost events"
        )),
        e => unavailable(e),
    }
}

/// Follows `$all` (filtered to the prefix) from the last event seen, resubscribing with
/// backoff after a lost connection.
async fn follow(shared: Arc<Shared>) {
    let mut backoff_ms = 100;
    loop {
        let from = resume_from(shared.index().last());
        let mut sub = shared.server.subscribe_all(from, &shared.regex);
        loop {
            match sub.next().await {
                Some(Ok(e)) => {
                    backoff_ms = 100;
                    match decode_event(&shared.prefix, &e) {
                        Ok(Some(r)) => shared.observe(e.position, &r),
                        Ok(None) => {}
                        Err(err) => {
                            tracing::error!(error = %err, "an event in $all is not a wattledger record");
                            shared.index().broken.get_or_insert_with(|| err.to_string());
                        }
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "lost the $all subscription; resubscribing");
                    break;
                }
                None => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
        backoff_ms = (backoff_ms * 2).min(RESUBSCRIBE_BACKOFF_MS_MAX);
    }
}

// ---------------------------------------------------------------------------------------
// The lease
// ---------------------------------------------------------------------------------------

struct Lease {
    stream: String,
    holder: Uuid,
    ttl: Duration,
    state: std::sync::Mutex<LeaseState>,
}

struct LeaseState {
    /// The revision of our last lease record.
    revision: u64,
    /// Appends may start until then (half the TTL after the last renewal was sent).
    valid_until: Instant,
    lost: bool,
}

impl Lease {
    fn record(&self, released: bool) -> NewEvent {
        let rec = LeaseRecord {
            holder: self.holder,
            ttl_ms: self.ttl.as_millis() as u64,
            released,
        };
        NewEvent {
            id: Uuid::new_v4(),
            event_type: "WriterLease".into(),
            data: serde_json::to_vec(&rec).expect("a lease record serialises"),
            metadata: Vec::new(),
        }
    }

    fn append_deadline(&self) -> Duration {
        self.ttl / 4
    }

    /// `Err` with the reason when this process may not append now.
    fn check(&self) -> Result<(), StoreError> {
        let s = self.state.lock().expect("lease lock");
        if s.lost {
            return Err(StoreError::Unavailable(format!(
                "another process took the writer lease ({}); restart this one",
                self.stream
            )));
        }
        if Instant::now() >= s.valid_until {
            return Err(StoreError::Unavailable(
                "the writer lease could not be renewed in time (KurrentDB unreachable?)".into(),
            ));
        }
        Ok(())
    }
}

async fn last_lease(server: &dyn Server, stream: &str) -> Result<Option<(u64, LeaseRecord)>, StoreError> {
    let page = match server.read_stream(stream, StreamPosition::End, 1, true).await {
        Ok(p) => p,
        Err(::kurrentdb::Error::ResourceNotFound) => return Ok(None),
        Err(e) => return Err(unavailable(e)),
    };
    match page.first() {
        Some(e) => {
            let rec: LeaseRecord = serde_json::from_slice(&e.data).map_err(|err| {
                StoreError::Corrupt(format!("the lease stream {stream} holds a foreign event: {err}"))
            })?;
            Ok(Some((e.revision, rec)))
        }
        None => Ok(None),
    }
}

async fn acquire(server: &dyn Server, stream: String, ttl: Duration) -> Result<Arc<Lease>, StoreError> {
    let lease = Lease {
        stream,
        holder: Uuid::new_v4(),
        ttl,
        state: std::sync::Mutex::new(LeaseState {
            revision: 0,
            valid_until: Instant::now(),
            lost: false,
        }),
    };
    let mut seen = None;
    loop {
        let last = last_lease(server, &lease.stream).await?;
        match lease_step(last.as_ref(), &mut seen, Instant::now(), ttl) {
            LeaseStep::Take(expected) => {
                let sent = Instant::now();
                match server
                    .append(
                        &lease.stream,
                        expected,
                        vec![lease.record(false)],
                        lease.append_deadline(),
                    )
                    .await
                {
                    Ok(revision) => {
                        *lease.state.lock().expect("lease lock") = LeaseState {
                            revision,
                            valid_until: sent + ttl / 2,
                            lost: false,
                        };
                        if let Err(e) = server.set_max_count(&lease.stream, LEASE_RECORDS_KEPT).await {
                            tracing::warn!(error = %e, "cannot limit the lease stream's length");
                        }
                        return Ok(Arc::new(lease));
                    }
                    Err(::kurrentdb::Error::WrongExpectedVersion { .. }) => seen = None,
                    Err(e) => return Err(unavailable(e)),
                }
            }
            LeaseStep::Wait => tokio::time::sleep(ttl / 5).await,
            LeaseStep::Refuse(holder) => {
                return Err(StoreError::Unavailable(format!(
                    "another wattledger process (writer {holder}) holds the writer lease {} and renews it; \
                     stop it, or send commands through its API",
                    lease.stream
                )));
            }
        }
    }
}

/// Hands the lease over at once (a clean stop).
async fn release(server: &dyn Server, lease: &Lease) {
    let revision = lease.state.lock().expect("lease lock").revision;
    let expected = StreamState::StreamRevision(revision);
    if let Err(e) = server
        .append(
            &lease.stream,
            expected,
            vec![lease.record(true)],
            lease.append_deadline(),
        )
        .await
    {
        tracing::warn!(error = %e, "cannot release the writer lease; the next writer waits for it to expire");
    }
}

/// Renews the lease every third of its TTL; a renewal refused as a wrong expected version
/// means another process took it over: this one stops appending.
async fn renew(server: Arc<dyn Server>, lease: Arc<Lease>) {
    let mut next = tokio::time::Instant::now() + lease.ttl / 3;
    loop {
        tokio::time::sleep_until(next).await;
        let revision = lease.state.lock().expect("lease lock").revision;
        let sent = Instant::now();
        // Renewals are spaced from when the previous one was sent, however long it took.
        next = tokio::time::Instant::now() + lease.ttl / 3;
        let expected = StreamState::StreamRevision(revision);
        match server
            .append(
                &lease.stream,
                expected,
                vec![lease.record(false)],
                lease.append_deadline(),
            )
            .await
        {
            Ok(revision) => {
                let mut s = lease.state.lock().expect("lease lock");
                s.revision = revision;
                s.valid_until = sent + lease.ttl / 2;
            }
            Err(::kurrentdb::Error::WrongExpectedVersion { .. }) => {
                // Our previous renewal may have landed with its answer lost: then the last
                // record is still ours.
                match last_lease(server.as_ref(), &lease.stream).await {
                    Ok(Some((revision, rec))) if rec.holder == lease.holder && !rec.released => {
                        lease.state.lock().expect("lease lock").revision = revision;
                    }
                    Ok(_) => {
                        tracing::error!(stream = %lease.stream, "another process took the writer lease; this one stops appending");
                        lease.state.lock().expect("lease lock").lost = true;
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot read the writer lease; retrying"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot renew the writer lease; retrying"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The writer
// ---------------------------------------------------------------------------------------

/// A batch whose append got no definite answer: it may or may not be recorded. Nothing else
/// is appended until it is resolved, by appending it again (same ids, same expectation).
struct Staged {
    batch: AppendBatch,
    current: u64,
    records: Vec<RecordedEvent>,
}

enum Attempt {
    Done(Result<Appended, StoreError>),
    /// No definite answer from KurrentDB.
    InDoubt(StoreError),
}

struct Writer {
    shared: Arc<Shared>,
    lease: Arc<Lease>,
    failures: Arc<AtomicU64>,
    in_doubt: Option<Staged>,
}

impl Writer {
    async fn run(mut self, mut rx: tokio::sync::mpsc::Receiver<WriterMsg>) {
        while let Some(m) = rx.recv().await {
            match m {
                WriterMsg::Append(batch, reply) => {
                    let r = self.append(batch).await;
                    let _ = reply.send(r);
                }
                WriterMsg::Head(reply) => {
                    let r = self.settle().await.map(|()| {
                        let idx = self.shared.index();
                        Head {
                            position: idx.head,
                            hash: idx.head_hash.clone(),
                        }
                    });
                    let _ = reply.send(r);
                }
            }
        }
        // Drained. Release the lease only when nothing is in doubt; otherwise let it expire,
        // so that the next writer waits until anything in flight has landed.
        if self.in_doubt.is_none() && self.lease.check().is_ok() {
            release(self.shared.server.as_ref(), &self.lease).await;
        }
    }

    fn fail(&self) {
        self.failures.fetch_add(1, Ordering::SeqCst);
    }

    /// Resolves a batch left in doubt, and checks that this process may append.
    async fn settle(&mut self) -> Result<(), StoreError> {
        if let Some(why) = &self.shared.index().broken {
            return Err(StoreError::Corrupt(format!("{why}; run wattledger audit")));
        }
        self.lease.check()?;
        if let Some(st) = self.in_doubt.take() {
            match self.attempt(&st).await {
                Attempt::Done(Ok(_)) => {
                    // Recorded after its append was answered as failed: whatever was decided
                    // since then must be decided again.
                    tracing::warn!(stream = %st.batch.stream, "an append answered as failed was recorded after all");
                    self.fail();
                }
                Attempt::Done(Err(_)) => {}
                Attempt::InDoubt(e) => {
                    self.in_doubt = Some(st);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Appends one batch. A batch refused for a reason other than its own content (the store
    /// cannot append now) counts as a failure, so that what was decided on top of it is
    /// fenced too (see [`AppendBatch::fence`]).
    async fn append(&mut self, batch: AppendBatch) -> Result<Appended, StoreError> {
        if let Err(e) = self.settle().await {
            self.fail();
            return Err(e);
        }
        if batch.fence.is_some_and(|f| f != self.failures.load(Ordering::SeqCst)) {
            return Err(StoreError::Unavailable(
                "decided before an earlier append failed; retry".into(),
            ));
        }
        let before = self.failures.load(Ordering::SeqCst);
        let r = self.append_checked(batch).await;
        if matches!(r, Err(StoreError::Unavailable(_) | StoreError::Corrupt(_)))
            && self.failures.load(Ordering::SeqCst) == before
        {
            self.fail();
        }
        r
    }

    async fn append_checked(&mut self, batch: AppendBatch) -> Result<Appended, StoreError> {
        check_stream(&batch.stream)?;
        let mut seen = HashSet::new();
        for e in &batch.events {
            if !seen.insert(e.event_id) {
                return Err(StoreError::DuplicateEventId(e.event_id));
            }
        }
        // Ids already recorded: a retry of the whole batch, or a refusal.
        let known: Vec<Option<u64>> = {
            let idx = self.shared.index();
            batch.events.iter().map(|e| idx.ids.get(&e.event_id).copied()).collect()
        };
        if known.iter().any(Option::is_some) {
            let mut recorded = Vec::new();
            for (e, pos) in batch.events.iter().zip(&known) {
                let Some(pos) = pos else {
                    return Err(StoreError::DuplicateEventId(e.event_id));
                };
                let r = self.shared.read_all(pos - 1, 1, true).await?;
                match r.first() {
                    Some(r)
                        if r.event_id == e.event_id
                            && r.stream == batch.stream
                            && r.event_type == e.event_type
                            && r.data == e.data =>
                    {
                        recorded.push((r.position, r.version))
                    }
                    _ => return Err(StoreError::DuplicateEventId(e.event_id)),
                }
            }
            return Ok(Appended {
                recorded,
                duplicate: true,
            });
        }
        for _ in 0..2 {
            let st = {
                let idx = self.shared.index();
                let current = idx.version(&batch.stream);
                if !batch.expected.admits(current) {
                    return Err(StoreError::VersionConflict {
                        stream: batch.stream.clone(),
                        expected: batch.expected,
                        actual: current,
                    });
                }
                Staged {
                    records: stage(&batch, current, idx.head, &idx.head_hash),
                    batch: batch.clone(),
                    current,
                }
            };
            match self.attempt(&st).await {
                Attempt::Done(Err(StoreError::VersionConflict { .. })) => {
                    // The index was behind (it has caught up in `attempt`): check again.
                    continue;
                }
                Attempt::Done(r) => return r,
                Attempt::InDoubt(e) => {
                    self.fail();
                    self.in_doubt = Some(st);
                    return Err(e);
                }
            }
        }
        let actual = self.shared.index().version(&batch.stream);
        Err(StoreError::VersionConflict {
            stream: batch.stream.clone(),
            expected: batch.expected,
            actual,
        })
    }

    /// Appends a staged batch with the exact expected revision, retrying what got no definite
    /// answer a few times. On a wrong expected version, reads the stream's tail and decides
    /// whether the batch is already there.
    async fn attempt(&self, st: &Staged) -> Attempt {
        let name = kdb_stream(&self.shared.prefix, &st.batch.stream);
        let mut events = Vec::with_capacity(st.records.len());
        for r in &st.records {
            match new_event(r) {
                Ok(e) => events.push(e),
                Err(e) => return Attempt::Done(Err(e)),
            }
        }
        let expected = expected_state(st.current);
        let mut last_err = None;
        for attempt in 0..APPEND_ATTEMPTS_MAX {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                if let Err(e) = self.lease.check() {
                    return Attempt::InDoubt(e);
                }
            }
            match self
                .shared
                .server
                .append(&name, expected, events.clone(), self.lease.append_deadline())
                .await
            {
                Ok(_) => {
                    self.shared.index().apply_own(&st.records);
                    self.shared.publish();
                    return Attempt::Done(Ok(Appended {
                        recorded: st.records.iter().map(|r| (r.position, r.version)).collect(),
                        duplicate: false,
                    }));
                }
                Err(::kurrentdb::Error::WrongExpectedVersion { current, .. }) => {
                    let mut r = self.wrong_version(st, current_version(current)).await;
                    // Found after one of our own tries got no answer: recorded by this append.
                    if attempt > 0
                        && let Attempt::Done(Ok(a)) = &mut r
                        && a.recorded == st.records.iter().map(|r| (r.position, r.version)).collect::<Vec<_>>()
                    {
                        a.duplicate = false;
                    }
                    return r;
                }
                Err(::kurrentdb::Error::AccessDenied) => {
                    return Attempt::Done(Err(StoreError::Unavailable(format!(
                        "KurrentDB refused to append to {name}: access denied"
                    ))));
                }
                Err(::kurrentdb::Error::ResourceDeleted) => {
                    return Attempt::Done(Err(StoreError::Corrupt(format!(
                        "stream {name} was deleted in KurrentDB"
                    ))));
                }
                Err(e) => {
                    tracing::warn!(error = %e, stream = %name, "append got no answer; retrying");
                    last_err = Some(e);
                }
            }
        }
        Attempt::InDoubt(unavailable(format!(
            "no answer to an append ({}); it may or may not be recorded: retry",
            last_err.map(|e| e.to_string()).unwrap_or_default()
        )))
    }

    async fn wrong_version(&self, st: &Staged, actual: u64) -> Attempt {
        // Someone else wrote (or an earlier append of ours landed late): learn it first.
        if let Err(e) = self.shared.catch_up(true).await {
            return Attempt::InDoubt(e);
        }
        let tail = match self
            .shared
            .read_stream(&st.batch.stream, st.current + 1, st.records.len(), true)
            .await
        {
            Ok(t) => t,
            Err(e) => return Attempt::InDoubt(e),
        };
        match decide_wrong_version(&st.batch.events, &tail) {
            WrongVersion::Duplicate(recorded) => Attempt::Done(Ok(Appended {
                recorded,
                duplicate: true,
            })),
            WrongVersion::DuplicateEventId(id) => Attempt::Done(Err(StoreError::DuplicateEventId(id))),
            WrongVersion::Conflict => Attempt::Done(Err(StoreError::VersionConflict {
                stream: st.batch.stream.clone(),
                expected: st.batch.expected,
                actual,
            })),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------------------

pub struct KurrentStore {
    shared: Arc<Shared>,
    write: bool,
    queue: WriterQueue,
    head_rx: watch::Receiver<u64>,
    failures: Arc<AtomicU64>,
    writer: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl KurrentStore {
    /// Connects; for [`Access::Write`], takes the writer lease (waiting up to its TTL when a
    /// previous holder stopped without releasing it). Then reads the wattledger events of
    /// `$all` once to build the index, and follows `$all` with a catch-up subscription.
    pub async fn open(url: &str, access: Access) -> Result<Arc<Self>, StoreError> {
        let cfg = parse_url(url)?;
        let client = Client::new(cfg.settings.clone())
            .map_err(|e| StoreError::Unavailable(format!("cannot connect to {}: {e}", redact_url(url))))?;
        Self::open_with(Arc::new(client), &cfg.prefix, cfg.lease_ttl, access)
            .await
            .map_err(|e| match e {
                StoreError::Unavailable(m) => StoreError::Unavailable(format!("{}: {m}", redact_url(url))),
                e => e,
            })
    }

    /// Opens the store over any [`Server`] (the client, or a fake in tests).
    pub async fn open_with(
        server: Arc<dyn Server>,
        prefix: &str,
        lease_ttl: Duration,
        access: Access,
    ) -> Result<Arc<Self>, StoreError> {
        let write = access == Access::Write;
        let mut tasks = Vec::new();
        let lease = if write {
            let stream = kdb_stream(prefix, LEASE_STREAM_SUFFIX);
            let lease = acquire(server.as_ref(), stream, lease_ttl).await?;
            // Renewed from now on: reading a long log below must not let the lease lapse.
            tasks.push(tokio::spawn(renew(server.clone(), lease.clone())));
            Some(lease)
        } else {
            None
        };
        let (head_tx, head_rx) = watch::channel(0);
        let shared = Arc::new(Shared {
            server: server.clone(),
            prefix: prefix.to_string(),
            regex: stream_regex(prefix),
            index: std::sync::Mutex::new(Index::new(write)),
            head_tx,
            scan: tokio::sync::Mutex::new(()),
        });
        match shared.catch_up(write).await {
            Ok(()) => {}
            // A reader opens a damaged log (the audit reports it); a writer must not extend it.
            Err(StoreError::Corrupt(m)) if !write => tracing::error!("{m}"),
            Err(e) => {
                for t in &tasks {
                    t.abort();
                }
                if let Some(lease) = &lease {
                    release(server.as_ref(), lease).await;
                }
                return Err(e);
            }
        }
        let failures = Arc::new(AtomicU64::new(0));
        tasks.push(tokio::spawn(follow(shared.clone())));
        let (queue, writer) = match lease {
            Some(lease) => {
                let (queue, rx) = WriterQueue::new();
                let w = Writer {
                    shared: shared.clone(),
                    lease,
                    failures: failures.clone(),
                    in_doubt: None,
                };
                (queue, Some(tokio::spawn(w.run(rx))))
            }
            None => (WriterQueue::closed(), None),
        };
        Ok(Arc::new(Self {
            shared,
            write,
            queue,
            head_rx,
            failures,
            writer: std::sync::Mutex::new(writer),
            tasks,
        }))
    }
}

#[async_trait]
impl EventStore for KurrentStore {
    fn append(&self, batch: AppendBatch) -> AppendTicket {
        if !self.write {
            return AppendTicket::refused(StoreError::Invalid("the store is open read-only".into()));
        }
        self.queue.append(batch)
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.shared.read_stream(stream, from_version, limit, false).await
    }

    async fn read_all(&self, after_position: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        self.shared.read_all(after_position, limit, false).await
    }

    async fn head(&self) -> Result<Head, StoreError> {
        if self.write {
            return self.queue.head().await;
        }
        self.shared.catch_up(false).await?;
        let idx = self.shared.index();
        Ok(Head {
            position: idx.head,
            hash: idx.head_hash.clone(),
        })
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.head_rx.clone()
    }

    async fn shutdown(&self) {
        self.queue.close();
        let handle = self.writer.lock().expect("writer lock").take();
        if let Some(h) = handle {
            let _ = h.await;
        }
        for t in &self.tasks {
            t.abort();
        }
    }

    fn failures(&self) -> u64 {
        self.failures.load(Ordering::SeqCst)
    }
}

/// Dropped without `shutdown` (the process is going away): everything stops at once and the
/// lease is left to expire, as after a crash.
impl Drop for KurrentStore {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(h) = self.writer.lock().expect("writer lock").take() {
            h.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------
// A fake server, for tests without KurrentDB
// ---------------------------------------------------------------------------------------

/// An in-memory stand-in for a KurrentDB server, so that the store's own logic (the contract
/// suite, the lease, a lost answer, a wrong expected version, a lost subscription) can be
/// tested where no server can run. It is not an emulator: it implements the semantics the store
/// relies on, as the client's source and documentation describe them — appends atomic per
/// stream with expected revisions; `$all` ordered by commit position, with gaps between
/// positions; a read of `$all` from a position includes it, a subscription excludes it; a
/// server-side regex filter (only the form [`stream_regex`] produces); a repeated append (same
/// ids at the same expected revision) answered as a success when `dedup` is on, as the
/// server's best-effort de-duplication would. What the real server does beyond this is tested
/// only by the live tests.
pub mod fake {
    use super::*;
    use ::kurrentdb::Error;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicBool;

    #[derive(Clone, Debug)]
    enum Live {
        Event(StoredEvent),
        Drop,
    }

    #[derive(Default)]
    struct State {
        all: Vec<StoredEvent>,
        /// Events not yet delivered to subscriptions (see `hold_subscriptions`).
        held: Option<Vec<StoredEvent>>,
        streams: HashMap<String, Vec<usize>>,
        next_commit: u64,
    }

    /// What happens to the next append.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Fault {
        /// Nothing: it is answered.
        None,
        /// It fails before anything is recorded (the leader went away).
        Fail,
        /// It is recorded, but its answer is lost (a deadline exceeded).
        LoseAnswer,
    }

    pub struct FakeServer {
        state: Mutex<State>,
        live: tokio::sync::broadcast::Sender<Live>,
        faults: Mutex<std::collections::VecDeque<Fault>>,
        /// A repeated append is answered as a success (off: as a wrong expected version).
        pub dedup: AtomicBool,
        /// Appends that reached the server (recorded or not).
        pub appends: AtomicU64,
    }

    fn prefix_of(regex: &str) -> String {
        regex
            .strip_prefix('^')
            .and_then(|r| r.strip_suffix("[^$]+$"))
            .expect("the fake understands only stream_regex filters")
            .replace("\\.", ".")
    }

    fn matches(prefix: &str, stream: &str) -> bool {
        stream
            .strip_prefix(prefix)
            .is_some_and(|rest| !rest.is_empty() && !rest.contains('$'))
    }

    impl FakeServer {
        pub fn new() -> Arc<Self> {
            Arc::new(Self {
                state: Mutex::new(State {
                    next_commit: 1_000,
                    ..State::default()
                }),
                live: tokio::sync::broadcast::channel(1 << 16).0,
                faults: Mutex::new(Default::default()),
                dedup: AtomicBool::new(true),
                appends: AtomicU64::new(0),
            })
        }

        /// The faults of the next appends to wattledger streams, in order (then none).
        pub fn script(&self, faults: &[Fault]) {
            self.faults.lock().expect("fake lock").extend(faults);
        }

        /// Holds back live deliveries to subscriptions (a slow subscription), or delivers what
        /// was held.
        pub fn hold_subscriptions(&self, hold: bool) {
            let mut st = self.state.lock().expect("fake lock");
            if hold {
                st.held.get_or_insert_with(Vec::new);
            } else {
                for ev in st.held.take().unwrap_or_default() {
                    let _ = self.live.send(Live::Event(ev));
                }
            }
        }

        /// Ends every open subscription with an error, as a lost connection does.
        pub fn drop_subscriptions(&self) {
            let _ = self.live.send(Live::Drop);
        }

        /// Every event of `$all`, system-wide (lease records included).
        pub fn all(&self) -> Vec<StoredEvent> {
            self.state.lock().expect("fake lock").all.clone()
        }
    }

    #[async_trait]
    impl Server for FakeServer {
        async fn append(
            &self,
            stream: &str,
            expected: StreamState,
            events: Vec<NewEvent>,
            _deadline: Duration,
        ) -> Result<u64, Error> {
            self.appends.fetch_add(1, Ordering::SeqCst);
            // Faults hit the ledger's appends, not the lease's.
            let fault = if stream.contains('$') {
                Fault::None
            } else {
                self.faults
                    .lock()
                    .expect("fake lock")
                    .pop_front()
                    .unwrap_or(Fault::None)
            };
            if fault == Fault::Fail {
                return Err(Error::ServerError("injected: the leader went away".into()));
            }
            let mut st = self.state.lock().expect("fake lock");
            let count = st.streams.get(stream).map_or(0, Vec::len) as u64;
            let current = match count {
                0 => CurrentRevision::NoStream,
                n => CurrentRevision::Current(n - 1),
            };
            let first = match expected {
                StreamState::NoStream => Some(0),
                StreamState::StreamRevision(r) => Some(r + 1),
                _ => None,
            };
            if let Some(first) = first
                && self.dedup.load(Ordering::SeqCst)
                && count >= first + events.len() as u64
                && !events.is_empty()
            {
                let idx = &st.streams[stream];
                let same = events
                    .iter()
                    .enumerate()
                    .all(|(i, e)| st.all[idx[first as usize + i]].id == e.id);
                if same {
                    return Ok(first + events.len() as u64 - 1);
                }
            }
            let ok = match expected {
                StreamState::Any => true,
                StreamState::StreamExists => count > 0,
                StreamState::NoStream => count == 0,
                StreamState::StreamRevision(r) => count == r + 1,
            };
            if !ok {
                return Err(Error::WrongExpectedVersion { expected, current });
            }
            let mut revision = count;
            for e in events {
                let commit = st.next_commit;
                st.next_commit += 137 + e.data.len() as u64;
                let ev = StoredEvent {
                    stream: stream.to_string(),
                    id: e.id,
                    revision,
                    event_type: e.event_type,
                    data: e.data,
                    metadata: e.metadata,
                    position: Position {
                        commit,
                        prepare: commit,
                    },
                };
                revision += 1;
                let at = st.all.len();
                st.all.push(ev.clone());
                st.streams.entry(stream.to_string()).or_default().push(at);
                match &mut st.held {
                    Some(held) => held.push(ev),
                    None => {
                        let _ = self.live.send(Live::Event(ev));
                    }
                }
            }
            drop(st);
            if fault == Fault::LoseAnswer {
                return Err(Error::DeadlineExceeded);
            }
            Ok(revision - 1)
        }

        async fn read_all(
            &self,
            from: StreamPosition<Position>,
            regex: &str,
            max: usize,
            _leader: bool,
        ) -> Result<Vec<StoredEvent>, Error> {
            let prefix = prefix_of(regex);
            let st = self.state.lock().expect("fake lock");
            Ok(st
                .all
                .iter()
                .filter(|e| match from {
                    StreamPosition::Position(p) => e.position >= p,
                    StreamPosition::Start => true,
                    StreamPosition::End => false,
                })
                .filter(|e| matches(&prefix, &e.stream))
                .take(max)
                .cloned()
                .collect())
        }

        async fn read_stream(
            &self,
            stream: &str,
            from: StreamPosition<u64>,
            max: usize,
            _leader: bool,
        ) -> Result<Vec<StoredEvent>, Error> {
            let st = self.state.lock().expect("fake lock");
            let idx = st.streams.get(stream).ok_or(Error::ResourceNotFound)?;
            let pick = |i: &usize| st.all[*i].clone();
            Ok(match from {
                StreamPosition::End => idx.iter().rev().take(max).map(pick).collect(),
                StreamPosition::Start => idx.iter().take(max).map(pick).collect(),
                StreamPosition::Position(r) => idx.iter().skip(r as usize).take(max).map(pick).collect(),
            })
        }

        fn subscribe_all(
            &self,
            from: StreamPosition<Position>,
            regex: &str,
        ) -> BoxStream<'static, Result<StoredEvent, Error>> {
            let prefix = prefix_of(regex);
            let rx = self.live.subscribe();
            let after = match from {
                StreamPosition::Position(p) => Some(p),
                _ => None,
            };
            let past: Vec<StoredEvent> = self
                .state
                .lock()
                .expect("fake lock")
                .all
                .iter()
                .filter(|e| is_after(after, e.position) && matches(&prefix, &e.stream))
                .cloned()
                .collect();
            let last = past.last().map(|e| e.position).or(after);
            let live = futures_util::stream::unfold(Some((rx, last)), move |state| {
                let prefix = prefix.clone();
                async move {
                    let (mut rx, mut last) = state?;
                    loop {
                        match rx.recv().await {
                            Ok(Live::Event(e)) if is_after(last, e.position) && matches(&prefix, &e.stream) => {
                                last = Some(e.position);
                                return Some((Ok(e), Some((rx, last))));
                            }
                            Ok(Live::Event(_)) => {}
                            Ok(Live::Drop) | Err(_) => return Some((Err(Error::ConnectionClosed), None)),
                        }
                    }
                }
            });
            futures_util::stream::iter(past.into_iter().map(Ok)).chain(live).boxed()
        }

        async fn set_max_count(&self, _stream: &str, _max_count: u64) -> Result<(), Error> {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn ev(data: &str) -> EventToAppend {
        EventToAppend {
            event_id: Uuid::new_v4(),
            event_type: "EnergyConsumed".into(),
            schema_version: 1,
            recorded_at: Utc.with_ymd_and_hms(2026, 11, 2, 20, 0, 0).unwrap() + chrono::Duration::milliseconds(123),
            data: data.into(),
            memo: None,
        }
    }

    fn batch(stream: &str, events: Vec<EventToAppend>) -> AppendBatch {
        AppendBatch {
            stream: stream.into(),
            expected: ExpectedVersion::Any,
            events,
            fence: None,
        }
    }

    fn pos(c: u64) -> Position {
        Position { commit: c, prepare: c }
    }

    #[test]
    fn a_record_survives_the_trip_through_kurrentdb_byte_for_byte() {
        let b = batch(
            "meter-rack-a1",
            vec![ev(r#"{"a":"é \"q\"","n":1}"#), ev(r#"{ "spaced" : [1, 2] }"#)],
        );
        let records = stage(&b, 4, 41, GENESIS_HASH);
        for r in &records {
            let (id, ty, data, meta) = encode(r);
            assert_eq!(
                String::from_utf8(data.clone()).unwrap(),
                r.data,
                "data is sent as given"
            );
            let stream = kdb_stream("wl-", &r.stream);
            assert_eq!(stream, "wl-meter-rack-a1");
            let back = decode("wl-", &stream, id, r.version - 1, &ty, &data, &meta)
                .unwrap()
                .unwrap();
            assert_eq!(&back, r);
            assert_eq!(back.hash, back.expected_hash(), "the chain survives the mapping");
        }
        let m: serde_json::Value = serde_json::from_slice(&encode(&records[1]).3).unwrap();
        assert_eq!(m["position"], 43);
        assert_eq!(m["prev_hash"].as_str(), Some(records[0].hash.as_str()));
        assert_eq!(m["recorded_at"], "2026-11-02T20:00:00.123Z");
        assert_eq!(m["schema_version"], 1);
        assert_eq!(m["wattledger"], META_FORMAT);
        assert!(
            m.get("version").is_none(),
            "the version is the revision, not a copy of it"
        );
    }

    #[test]
    fn foreign_and_damaged_events_are_told_apart() {
        let r = &stage(&batch("s", vec![ev("{}")]), 0, 0, GENESIS_HASH)[0];
        let (id, ty, data, meta) = encode(r);
        // Another application's stream, the lease stream, a system stream: not ours.
        for s in ["orders-1", "wl-writer$lease", "$stats-127.0.0.1:2113", "wl-"] {
            assert_eq!(decode("wl-", s, id, 0, &ty, &data, &meta).unwrap(), None, "{s}");
        }
        // Ours, but its metadata is not wattledger's, or its data not UTF-8: damage.
        for (d, m) in [
            (&data[..], &b"{}"[..]),
            (&data[..], &br#"{"wattledger":2,"position":1,"schema_version":1,"recorded_at":"2026-01-01T00:00:00Z","hash":"","prev_hash":""}"#[..]),
            (&b"\xff"[..], &meta[..]),
        ] {
            let e = decode("wl-", "wl-s", id, 0, &ty, d, m).unwrap_err();
            assert!(matches!(e, StoreError::Corrupt(ref m) if m.contains("wl-s")), "{e}");
        }
        // Tampering shows in the chain: the record decodes, its hash no longer matches.
        let tampered = decode("wl-", "wl-s", id, 0, &ty, br#"{"x":1}"#, &meta)
            .unwrap()
            .unwrap();
        assert_ne!(tampered.hash, tampered.expected_hash());
        // Moved to another revision: the version (and so the hash) changes.
        let moved = decode("wl-", "wl-s", id, 5, &ty, &data, &meta).unwrap().unwrap();
        assert_eq!(moved.version, 6);
        assert_ne!(moved.hash, moved.expected_hash());
    }

    #[test]
    fn the_filter_keeps_exactly_the_prefix_streams() {
        assert_eq!(stream_regex("wl."), r"^wl\.[^$]+$");
        assert_eq!(stream_regex(""), r"^[^$]+$");
        assert!(check_stream("meter-rack-a1").is_ok());
        for bad in ["", "a$b", &"x".repeat(501)] {
            assert!(matches!(check_stream(bad), Err(StoreError::Invalid(_))));
        }
        assert_eq!(wattledger_stream("wl-", "wl-site-x"), Some("site-x"));
        assert_eq!(wattledger_stream("wl-", "wl-writer$lease"), None);
        assert_eq!(wattledger_stream("", "site-x"), Some("site-x"));
    }

    #[test]
    fn revisions_and_versions() {
        assert_eq!(version_of(0), 1);
        assert_eq!((revision_of(0), revision_of(1), revision_of(7)), (0, 0, 6));
        assert_eq!(expected_state(0), StreamState::NoStream);
        assert_eq!(expected_state(1), StreamState::StreamRevision(0));
        assert_eq!(expected_state(42), StreamState::StreamRevision(41));
        assert_eq!(current_version(CurrentRevision::NoStream), 0);
        assert_eq!(current_version(CurrentRevision::Current(0)), 1);
        assert_eq!(current_version(CurrentRevision::Current(9)), 10);
        // The expectation sent for a stream at version v is exactly what the server reports
        // back as current when it is at v.
        for v in [0, 1, 2, 1000] {
            let back = match expected_state(v) {
                StreamState::NoStream => CurrentRevision::NoStream,
                StreamState::StreamRevision(r) => CurrentRevision::Current(r),
                s => panic!("{s:?}"),
            };
            assert_eq!(current_version(back), v);
        }
    }

    #[test]
    fn staging_continues_the_chain_and_the_stream() {
        let b = batch("s", vec![ev("{}"), ev(r#"{"a":1}"#), ev("[]")]);
        let rs = stage(&b, 7, 100, &"a".repeat(64));
        assert_eq!(
            rs.iter().map(|r| (r.position, r.version)).collect::<Vec<_>>(),
            vec![(101, 8), (102, 9), (103, 10)]
        );
        assert_eq!(rs[0].prev_hash, "a".repeat(64));
        for w in rs.windows(2) {
            assert_eq!(w[1].prev_hash, w[0].hash);
        }
        for r in &rs {
            assert_eq!(r.hash, r.expected_hash());
        }
    }

    #[test]
    fn a_wrong_expected_version_is_a_duplicate_only_when_the_batch_is_there() {
        let mine = vec![ev(r#"{"a":1}"#), ev(r#"{"a":2}"#)];
        let recorded = stage(&batch("s", mine.clone()), 3, 10, GENESIS_HASH);
        // Our earlier append landed (a retry after a lost answer): the original result.
        let mut later = mine.clone();
        later[0].recorded_at += chrono::Duration::milliseconds(5);
        assert_eq!(
            decide_wrong_version(&later, &recorded),
            WrongVersion::Duplicate(vec![(11, 4), (12, 5)])
        );
        // The tail is longer than the batch (more was appended after it): still a duplicate.
        let mut longer = recorded.clone();
        longer.extend(stage(&batch("s", vec![ev("{}")]), 5, 12, &recorded[1].hash));
        assert!(matches!(
            decide_wrong_version(&mine, &longer),
            WrongVersion::Duplicate(_)
        ));
        // Someone else's events: a real conflict.
        let other = stage(&batch("s", vec![ev("{}")]), 3, 10, GENESIS_HASH);
        assert_eq!(decide_wrong_version(&mine, &other), WrongVersion::Conflict);
        assert_eq!(decide_wrong_version(&mine, &[]), WrongVersion::Conflict);
        // Same id, other content: the id is taken.
        let mut changed = mine.clone();
        changed[1].data = r#"{"a":99}"#.into();
        assert_eq!(
            decide_wrong_version(&changed, &recorded),
            WrongVersion::DuplicateEventId(mine[1].event_id)
        );
        let mut retyped = mine.clone();
        retyped[0].event_type = "Other".into();
        assert_eq!(
            decide_wrong_version(&retyped, &recorded),
            WrongVersion::DuplicateEventId(mine[0].event_id)
        );
        // Only part of the batch is there (or in another order): the recorded id is taken.
        let part = stage(&batch("s", vec![mine[0].clone()]), 3, 10, GENESIS_HASH);
        assert_eq!(
            decide_wrong_version(&mine, &part),
            WrongVersion::DuplicateEventId(mine[0].event_id)
        );
        let swapped = vec![mine[1].clone(), mine[0].clone()];
        assert!(matches!(
            decide_wrong_version(&swapped, &recorded),
            WrongVersion::DuplicateEventId(_)
        ));
    }

    #[test]
    fn the_subscription_resumes_after_the_last_event_applied() {
        assert_eq!(resume_from(None), StreamPosition::Start);
        assert_eq!(resume_from(Some(pos(42))), StreamPosition::Position(pos(42)));
        // The boundary: the last applied event itself is not taken again.
        assert!(is_after(None, pos(0)));
        assert!(!is_after(Some(pos(42)), pos(42)));
        assert!(!is_after(Some(pos(42)), pos(41)));
        assert!(is_after(Some(pos(42)), pos(43)));
        assert!(is_after(
            Some(Position {
                commit: 42,
                prepare: 40
            }),
            Position {
                commit: 42,
                prepare: 41
            }
        ));
    }

    #[test]
    fn the_index_ranks_events_and_refuses_a_broken_log() {
        let rs = stage(&batch("s", vec![ev("{}"), ev("{}"), ev("{}")]), 0, 0, GENESIS_HASH);
        // A reader: every event is seen once, in order; a redelivery changes nothing.
        let mut idx = Index::new(false);
        idx.observe(pos(10), &rs[0]);
        idx.observe(pos(10), &rs[0]);
        idx.observe(pos(20), &rs[1]);
        assert_eq!((idx.ranks.len(), idx.head, idx.broken.clone()), (2, 2, None));
        assert_eq!(idx.last(), Some(pos(20)));
        assert_eq!(idx.head_hash, rs[1].hash);
        // A writer counts its own appends before it sees them come back.
        let mut w = Index::new(true);
        w.apply_own(&rs[..2]);
        assert_eq!((w.head, w.ranks.len(), w.version("s")), (2, 0, 2));
        w.observe(pos(10), &rs[0]);
        w.observe(pos(20), &rs[1]);
        w.observe(pos(30), &rs[2]);
        w.apply_own(&rs[2..]);
        assert_eq!(
            (w.head, w.ranks.len(), w.version("s"), w.broken.clone()),
            (3, 3, 3, None)
        );
        assert_eq!(w.ids.get(&rs[2].event_id), Some(&3));
        // The server acknowledged an append of ours, but position 3 holds other content (it
        // acknowledged a repeat of someone else's append): caught when it is seen.
        let mut acked = Index::new(true);
        acked.observe(pos(10), &rs[0]);
        acked.observe(pos(20), &rs[1]);
        let mine = stage(&batch("s", vec![ev(r#"{"mine":1}"#)]), 2, 2, &rs[1].hash);
        acked.apply_own(&mine);
        assert_eq!(acked.unseen.len(), 1);
        // Same id (so the id check passes), other content.
        let mut theirs = mine[0].clone();
        theirs.hash = rs[2].hash.clone();
        acked.observe(pos(30), &theirs);
        assert!(acked.broken.as_deref().unwrap().contains("other content"));
        // A second claim of position 2 (another writer): the index stops and says why.
        let mut fork = Index::new(false);
        fork.observe(pos(10), &rs[0]);
        let other = stage(&batch("t", vec![ev("{}")]), 0, 1, &rs[0].hash);
        fork.observe(pos(20), &other[0]);
        fork.observe(pos(30), &rs[1]);
        assert!(fork.broken.as_deref().unwrap().contains("carries position 2"));
        assert_eq!(fork.head, 2);
        // A chain that does not continue.
        let mut gap = Index::new(false);
        gap.observe(pos(10), &rs[0]);
        let mut bad = rs[1].clone();
        bad.prev_hash = "f".repeat(64);
        gap.observe(pos(20), &bad);
        assert!(gap.broken.as_deref().unwrap().contains("chain"));
    }

    #[test]
    fn the_lease_is_taken_over_only_after_it_stayed_unrenewed_for_its_ttl() {
        let ttl = Duration::from_secs(10);
        let t0 = Instant::now();
        let holder = Uuid::new_v4();
        let held = |rev| {
            (
                rev,
                LeaseRecord {
                    holder,
                    ttl_ms: 10_000,
                    released: false,
                },
            )
        };
        let mut seen = None;
        assert_eq!(
            lease_step(None, &mut seen, t0, ttl),
            LeaseStep::Take(StreamState::NoStream)
        );
        let released = (
            4,
            LeaseRecord {
                holder,
                ttl_ms: 10_000,
                released: true,
            },
        );
        assert_eq!(
            lease_step(Some(&released), &mut seen, t0, ttl),
            LeaseStep::Take(StreamState::StreamRevision(4))
        );
        // Held: watch it for a TTL.
        assert_eq!(lease_step(Some(&held(7)), &mut seen, t0, ttl), LeaseStep::Wait);
        assert_eq!(
            lease_step(Some(&held(7)), &mut seen, t0 + Duration::from_secs(9), ttl),
            LeaseStep::Wait
        );
        assert_eq!(
            lease_step(Some(&held(7)), &mut seen, t0 + ttl, ttl),
            LeaseStep::Take(StreamState::StreamRevision(7))
        );
        // Renewed while we watch: a live holder.
        let mut seen = None;
        assert_eq!(lease_step(Some(&held(7)), &mut seen, t0, ttl), LeaseStep::Wait);
        assert_eq!(
            lease_step(Some(&held(8)), &mut seen, t0 + Duration::from_secs(3), ttl),
            LeaseStep::Refuse(holder)
        );
        // The holder's longer TTL is respected.
        let long = (
            1,
            LeaseRecord {
                holder,
                ttl_ms: 60_000,
                released: false,
            },
        );
        let mut seen = None;
        lease_step(Some(&long), &mut seen, t0, ttl);
        assert_eq!(
            lease_step(Some(&long), &mut seen, t0 + Duration::from_secs(30), ttl),
            LeaseStep::Wait
        );
    }

    #[test]
    fn urls_are_parsed_and_errors_hide_the_password() {
        let c = parse_url("kurrentdb://admin:changeit@localhost:2113?tls=false").unwrap();
        assert_eq!(
            (c.prefix.as_str(), c.lease_ttl),
            (STREAM_PREFIX_DEFAULT, Duration::from_secs(10))
        );
        let c = parse_url(
            "esdb+discover://admin:changeit@cluster.example:2113?nodePreference=leader&streamPrefix=ledger.eu-&leaseTtlMs=3000",
        )
        .unwrap();
        assert_eq!((c.prefix.as_str(), c.lease_ttl), ("ledger.eu-", Duration::from_secs(3)));
        assert!(parse_url("kurrentdb://n1:2113,n2:2113,n3:2113?tls=true&tlsVerifyCert=true").is_ok());
        assert!(parse_url("kurrentdb://h?streamprefix=").unwrap().prefix.is_empty());
        for (url, says) in [
            ("kurrentdb://u:s3cret@h?streamPrefix=a$b", "streamPrefix"),
            ("kurrentdb://u:s3cret@h?leaseTtlMs=10", "leaseTtlMs"),
            (
                "kurrentdb://u:s3cret@h?nodePreference=nearest",
                "not a KurrentDB connection string",
            ),
            ("kurrentdb://u:s3cret@h/some/path", "not a KurrentDB connection string"),
        ] {
            let e = parse_url(url).unwrap_err().to_string();
            assert!(e.contains(says), "{url}: {e}");
            assert!(!e.contains("s3cret"), "{url}: {e}");
        }
    }
}
