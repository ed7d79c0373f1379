//! The event log: one trait, several backends, one contract suite (`tests/contract/`).
//!
//! Positions are global, gap-free and start at 1; stream versions start at 1 (0 means "no
//! stream"). Every recorded event carries `hash = SHA-256(prev_hash ‖ canonical record)`.

pub mod chain;
#[cfg(feature = "kurrentdb")]
pub mod kurrentdb;
pub mod postgres;
pub mod sqlite;

pub use chain::{GENESIS_HASH, canonical_json, record_hash};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

/// Most events one read returns; callers page through longer ranges.
pub const READ_PAGE_EVENTS_MAX: usize = 10_000;
/// Most append requests folded into one transaction (one fsync) by a writer.
pub const GROUP_COMMIT_REQUESTS_MAX: usize = 4_096;
/// Most append requests waiting for a writer; beyond it an append is refused as busy.
pub const WRITER_QUEUE_DEPTH_MAX: usize = 65_536;
/// Most events in one atomic batch.
pub const BATCH_EVENTS_MAX: usize = 1_000;

/// An event to be appended.
#[derive(Clone, Debug, PartialEq)]
pub struct EventToAppend {
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    pub recorded_at: DateTime<Utc>,
    /// Canonical JSON (object keys sorted), as produced by [`canonical_json`].
    pub data: String,
    /// Handed back with the record to readers in this process ([`EventStore::recent`]);
    /// never stored.
    pub memo: Option<Memo>,
}

/// What an appender attaches to an event for readers in the same process: the ledger
/// attaches the decided [`crate::domain::Event`], so that the projections fold it without
/// reading the row back and decoding its JSON again. It is not part of the event: it is never
/// stored, compares equal to any other memo, and a record read from the store has none.
#[derive(Clone)]
pub struct Memo(pub Arc<dyn std::any::Any + Send + Sync>);

impl Memo {
    pub fn new<T: std::any::Any + Send + Sync>(value: T) -> Self {
        Self(Arc::new(value))
    }

    pub fn get<T: std::any::Any>(&self) -> Option<&T> {
        self.0.downcast_ref()
    }
}

impl std::fmt::Debug for Memo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Memo")
    }
}

impl PartialEq for Memo {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// A record this process's writer committed, with the memo its appender attached.
#[derive(Debug)]
pub struct Committed {
    pub record: RecordedEvent,
    pub memo: Option<Memo>,
}

impl Committed {
    /// The memo, if there is one of type `T`.
    pub fn memo<T: std::any::Any>(&self) -> Option<&T> {
        self.memo.as_ref().and_then(Memo::get)
    }
}

/// Most records a writer keeps in its [`Recent`] tail (four full group commits).
pub const RECENT_EVENTS_MAX: usize = 16_384;

/// The last records this process's writer committed, in position order and without gaps,
/// for readers in the same process that follow the head (the projections, and the ledger
/// catching up on a shared store): they take them from here instead of reading the rows
/// back. A reader that fell further behind, or a position another process wrote, is read
/// from the store as before.
#[derive(Default)]
pub struct Recent(std::sync::Mutex<Ring>);

/// The tail's groups, each as its writer committed it (one allocation a group, not one a
/// record: the records leave the tail on another thread than the one that made them); the
/// front group's first `skip` records have left already, and are freed with the group (a
/// group holds at most [`RECENT_EVENTS_MAX`] records, so the tail holds fewer than twice
/// that).
#[derive(Default)]
struct Ring {
    groups: VecDeque<Arc<Vec<Committed>>>,
    skip: usize,
    len: usize,
}

impl Ring {
    fn first(&self) -> Option<u64> {
        Some(self.groups.front()?.get(self.skip)?.record.position)
    }

    fn last(&self) -> Option<u64> {
        Some(self.groups.back()?.last()?.record.position)
    }
}

/// Records taken from a [`Recent`] tail, in position order.
pub struct Tail {
    parts: Vec<(Arc<Vec<Committed>>, std::ops::Range<usize>)>,
    len: usize,
}

impl Tail {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = &Committed> {
        self.parts.iter().flat_map(|(g, r)| &g[r.clone()])
    }
}

impl Recent {
    /// Adds records just committed, in position order. A record that does not follow the
    /// last one (another process wrote in between) starts the tail afresh.
    pub fn push(&self, mut committed: Vec<Committed>) {
        // Only the records after the group's last gap, if it has one, and at most as many as
        // the tail keeps (a group of many large batches is not kept whole).
        let gap = committed
            .windows(2)
            .rposition(|w| w[0].record.position + 1 != w[1].record.position)
            .map_or(0, |i| i + 1);
        let start = gap.max(committed.len().saturating_sub(RECENT_EVENTS_MAX));
        let before = committed.drain(..start).collect::<Vec<_>>();
        if start > 0 {
            committed.shrink_to_fit();
        }
        let Some(first) = committed.first().map(|c| c.record.position) else {
            return;
        };
        let mut gone: Vec<Arc<Vec<Committed>>> = Vec::new();
        let mut ring = self.0.lock().expect("recent lock");
        if ring.last().is_some_and(|last| last + 1 != first) || start > 0 {
            // A gap, or a group that fills the tail alone: nothing before it stays.
            gone.extend(ring.groups.drain(..));
            (ring.skip, ring.len) = (0, 0);
        }
        ring.len += committed.len();
        ring.groups.push_back(Arc::new(committed));
        while ring.len > RECENT_EVENTS_MAX {
            let over = ring.len - RECENT_EVENTS_MAX;
            let front = ring.groups.front().expect("a group").len() - ring.skip;
            if front <= over {
                gone.extend(ring.groups.pop_front());
                ring.skip = 0;
                ring.len -= front;
            } else {
                ring.skip += over;
                ring.len -= over;
            }
        }
        drop(ring);
        // Freed outside the lock, which the readers take too.
        drop((gone, before));
    }

    /// Up to `limit` records after `after`, if the tail holds the very next one; `None` when
    /// it does not (the reader must ask the store).
    pub fn after(&self, after: u64, limit: usize) -> Option<Tail> {
        let ring = self.0.lock().expect("recent lock");
        let (first, last) = (ring.first()?, ring.last()?);
        if after + 1 < first || after >= last {
            return None;
        }
        // The group holding `after + 1`, then on from there.
        let at = ring
            .groups
            .partition_point(|g| g.last().is_some_and(|c| c.record.position <= after));
        let mut tail = Tail {
            parts: Vec::new(),
            len: 0,
        };
        for g in ring.groups.range(at..) {
            if tail.len == limit {
                break;
            }
            let from = (after + 1).saturating_sub(g[0].record.position) as usize;
            let to = g.len().min(from + limit - tail.len);
            tail.len += to - from;
            tail.parts.push((Arc::clone(g), from..to));
        }
        Some(tail)
    }
}

/// The records of a batch on top of a head: positions, versions and the chain (the
/// PostgreSQL writer's rows, KurrentDB's staged records).
pub fn stage(batch: &AppendBatch, current: u64, head: u64, head_hash: &str) -> Vec<RecordedEvent> {
    let mut prev = head_hash.to_string();
    batch
        .events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let position = head + 1 + i as u64;
            let version = current + 1 + i as u64;
            let hash = record_hash(
                &prev,
                position,
                &batch.stream,
                version,
                &e.event_id,
                &e.event_type,
                e.schema_version,
                &e.recorded_at,
                &e.data,
            );
            RecordedEvent {
                position,
                stream: batch.stream.clone(),
                version,
                event_id: e.event_id,
                event_type: e.event_type.clone(),
                schema_version: e.schema_version,
                recorded_at: e.recorded_at,
                data: e.data.clone(),
                hash: hash.clone(),
                prev_hash: std::mem::replace(&mut prev, hash),
            }
        })
        .collect()
}

/// What a batch expects of its stream before it is appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "version")]
pub enum ExpectedVersion {
    Any,
    NoStream,
    Exact(u64),
}

impl ExpectedVersion {
    /// The expectation for a stream whose current version is `v` (0: no stream).
    pub fn at(v: u64) -> Self {
        if v == 0 { Self::NoStream } else { Self::Exact(v) }
    }

    pub fn admits(self, current: u64) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream => current == 0,
            Self::Exact(v) => current == v,
        }
    }
}

/// Events appended to one stream atomically.
#[derive(Clone, Debug)]
pub struct AppendBatch {
    pub stream: String,
    pub expected: ExpectedVersion,
    pub events: Vec<EventToAppend>,
    /// Append only if the store has seen exactly this many failed commits
    /// ([`EventStore::failures`]). A writer that queues decisions ahead of durability
    /// fences them, so that nothing decided on top of a failed append is recorded.
    pub fence: Option<u64>,
}

/// Where each event of a batch was recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    /// `(position, version)` of each event, in batch order.
    pub recorded: Vec<(u64, u64)>,
    /// The whole batch was already recorded (same event ids on the same stream).
    pub duplicate: bool,
}

/// A recorded event, as read back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RecordedEvent {
    pub position: u64,
    pub stream: String,
    pub version: u64,
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    #[serde(with = "crate::domain::time::time_str")]
    pub recorded_at: DateTime<Utc>,
    /// The event's data as canonical JSON text.
    #[serde(skip)]
    pub data: String,
    pub hash: String,
    pub prev_hash: String,
}

impl RecordedEvent {
    /// Whether the stored hash is [`RecordedEvent::expected_hash`], without making a
    /// `String` of the latter (the audit asks it of every record).
    pub fn hash_matches(&self) -> bool {
        self.hash_hex(&mut [0; 64]) == self.hash
    }

    /// The hash this record should carry, given its own `prev_hash`.
    pub fn expected_hash(&self) -> String {
        self.hash_hex(&mut [0; 64]).to_string()
    }

    /// The hash this record should carry, written into `out`.
    fn hash_hex<'a>(&self, out: &'a mut [u8; 64]) -> &'a str {
        crate::store::chain::record_hash_hex(
            &self.prev_hash,
            self.position,
            &self.stream,
            self.version,
            &self.event_id,
            &self.event_type,
            self.schema_version,
            &crate::domain::time::fmt_time(&self.recorded_at),
            &self.data,
            out,
        )
    }

    /// The record as JSON, with its data parsed (for export and the API).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("records serialise");
        let data: serde_json::Value =
            serde_json::from_str(&self.data).unwrap_or(serde_json::Value::String(self.data.clone()));
        v.as_object_mut().expect("object").insert("data".into(), data);
        v
    }
}

/// The log's last position and the chain hash there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub position: u64,
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("stream {stream:?} is at version {actual}, expected {expected:?}")]
    VersionConflict {
        stream: String,
        expected: ExpectedVersion,
        actual: u64,
    },
    #[error("event id {0} is already recorded with other content or on another stream")]
    DuplicateEventId(Uuid),
    #[error("the store is busy: {0}")]
    Busy(String),
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("the store's content is damaged: {0}")]
    Corrupt(String),
    #[error("invalid store: {0}")]
    Invalid(String),
}

/// A pending append: resolves once the batch is durable (or refused).
pub enum AppendTicket {
    Queued(oneshot::Receiver<Result<Appended, StoreError>>),
    /// Refused before anything was queued (busy, shut down, invalid).
    Refused(StoreError),
}

impl AppendTicket {
    pub fn new(rx: oneshot::Receiver<Result<Appended, StoreError>>) -> Self {
        Self::Queued(rx)
    }

    pub fn refused(e: StoreError) -> Self {
        Self::Refused(e)
    }

    /// The refusal, if the batch was refused without being queued.
    pub fn refusal(&self) -> Option<&StoreError> {
        match self {
            Self::Refused(e) => Some(e),
            Self::Queued(_) => None,
        }
    }

    pub async fn wait(self) -> Result<Appended, StoreError> {
        match self {
            Self::Queued(rx) => rx
                .await
                .unwrap_or_else(|_| Err(StoreError::Unavailable("the writer stopped".into()))),
            Self::Refused(e) => Err(e),
        }
    }
}

#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Queues a batch for appending. Batches are committed in the order of the calls, so a
    /// caller that decides under a lock and queues before releasing it keeps its order.
    fn append(&self, batch: AppendBatch) -> AppendTicket;

    /// Events of one stream from `from_version` (inclusive), at most `limit`.
    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Events of the whole log after `after_position` (exclusive), at most `limit`.
    async fn read_all(&self, after_position: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError>;

    /// The head, once everything queued before this call is durable.
    async fn head(&self) -> Result<Head, StoreError>;

    /// Follows the last durable position.
    fn watch_head(&self) -> watch::Receiver<u64>;

    /// Records after `after_position` that this process's writer committed lately, with their
    /// memos (see [`Recent`]); `None` when they are not at hand, and the caller reads the
    /// store. Never a reason to skip reading the store when it returns `None`.
    fn recent(&self, _after_position: u64, _limit: usize) -> Option<Tail> {
        None
    }

    /// Finishes queued work and stops the writer.
    async fn shutdown(&self);

    /// Saves, while the store keeps running, what lets the next open skip reading the log
    /// (the embedded store's index); its caches only, never a source of truth.
    async fn checkpoint(&self) -> Result<(), String> {
        Ok(())
    }

    /// Whether other processes may append to this store too (their events must be folded
    /// before deciding).
    fn shared(&self) -> bool {
        false
    }

    /// How many commits have failed since the store was opened (see [`AppendBatch::fence`]).
    fn failures(&self) -> u64 {
        0
    }

    /// Sizes of the groups of requests committed together (one transaction each).
    fn group_commit_sizes(&self) -> Option<&crate::metrics::Histogram> {
        None
    }
}

/// What a backend's writer task receives, in queue order.
pub enum WriterMsg {
    Append(AppendBatch, oneshot::Sender<Result<Appended, StoreError>>),
    /// The head once everything queued before it is durable.
    Head(oneshot::Sender<Result<Head, StoreError>>),
}

/// The bounded queue in front of a backend's single writer, shared by the backends: batch
/// bounds, back-pressure (`busy` past [`WRITER_QUEUE_DEPTH_MAX`]) and shutdown.
pub struct WriterQueue(std::sync::Mutex<Option<tokio::sync::mpsc::Sender<WriterMsg>>>);

impl WriterQueue {
    /// A queue and the receiving end for the writer task.
    pub fn new() -> (Self, tokio::sync::mpsc::Receiver<WriterMsg>) {
        let (tx, rx) = tokio::sync::mpsc::channel(WRITER_QUEUE_DEPTH_MAX);
        (Self(std::sync::Mutex::new(Some(tx))), rx)
    }

    /// A queue with no writer behind it (a read-only store).
    pub fn closed() -> Self {
        Self(std::sync::Mutex::new(None))
    }

    fn sender(&self) -> Option<tokio::sync::mpsc::Sender<WriterMsg>> {
        self.0.lock().expect("writer queue lock").clone()
    }

    pub fn has_writer(&self) -> bool {
        self.sender().is_some()
    }

    pub fn append(&self, batch: AppendBatch) -> AppendTicket {
        use tokio::sync::mpsc::error::TrySendError;
        if batch.events.is_empty() || batch.events.len() > BATCH_EVENTS_MAX {
            return AppendTicket::refused(StoreError::Invalid(format!(
                "a batch holds 1 to {BATCH_EVENTS_MAX} events, got {}",
                batch.events.len()
            )));
        }
        // Sent under the lock, which `try_send` never waits in: cloning the sender for each
        // append showed in the deciding thread's profile.
        let queue = self.0.lock().expect("writer queue lock");
        let Some(tx) = queue.as_ref() else {
            return AppendTicket::refused(StoreError::Unavailable("the store is shut down".into()));
        };
        let (reply, rx) = oneshot::channel();
        match tx.try_send(WriterMsg::Append(batch, reply)) {
            Ok(()) => AppendTicket::new(rx),
            Err(TrySendError::Full(_)) => AppendTicket::refused(StoreError::Busy(format!(
                "{WRITER_QUEUE_DEPTH_MAX} appends are already queued"
            ))),
            Err(TrySendError::Closed(_)) => AppendTicket::refused(StoreError::Unavailable("the writer stopped".into())),
        }
    }

    /// The head after everything queued before this call.
    pub async fn head(&self) -> Result<Head, StoreError> {
        let stopped = || StoreError::Unavailable("the writer stopped".into());
        let tx = self
            .sender()
            .ok_or_else(|| StoreError::Unavailable("the store is shut down".into()))?;
        let (reply, rx) = oneshot::channel();
        tx.send(WriterMsg::Head(reply)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Stops taking appends; the writer drains what is queued and ends.
    pub fn close(&self) {
        self.0.lock().expect("writer queue lock").take();
    }
}

/// Catch up from a position, then follow live appends.
pub struct Subscription {
    store: Arc<dyn EventStore>,
    after: u64,
    buf: VecDeque<RecordedEvent>,
    head: watch::Receiver<u64>,
}

impl Subscription {
    pub fn new(store: Arc<dyn EventStore>, after_position: u64) -> Self {
        let head = store.watch_head();
        Self {
            store,
            after: after_position,
            buf: VecDeque::new(),
            head,
        }
    }

    /// The next event after the last one returned; waits for new appends at the head.
    pub async fn next(&mut self) -> Result<RecordedEvent, StoreError> {
        loop {
            if let Some(e) = self.buf.pop_front() {
                self.after = e.position;
                return Ok(e);
            }
            let page = self.store.read_all(self.after, READ_PAGE_EVENTS_MAX).await?;
            if page.is_empty() {
                // Wait for the head to move past what we have; a bounded wait also covers
                // appends made by other processes that this one's watch does not see.
                let after = self.after;
                let _ = tokio::time::timeout(
                    std::time::Duration::from_millis(500),
                    self.head.wait_for(|h| *h > after),
                )
                .await;
                continue;
            }
            self.buf.extend(page);
        }
    }

    /// The next event, if one is already recorded.
    pub async fn try_next(&mut self) -> Result<Option<RecordedEvent>, StoreError> {
        if self.buf.is_empty() {
            let page = self.store.read_all(self.after, READ_PAGE_EVENTS_MAX).await?;
            self.buf.extend(page);
        }
        Ok(self.buf.pop_front().inspect(|e| self.after = e.position))
    }
}

/// Whether a store is opened to write (the ledger) or only to read (audit, reports).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Write,
    Read,
}

/// Opens the store a URL names: `sqlite://path` (or a bare path) for the embedded store,
/// `postgres://…`, or `kurrentdb://…` / `esdb://…` (feature `kurrentdb`).
pub async fn open(url: &str, access: Access) -> Result<Arc<dyn EventStore>, StoreError> {
    let sqlite = |path: &str| {
        let path = std::path::PathBuf::from(path);
        async move {
            let s: Arc<dyn EventStore> = match access {
                Access::Write => sqlite::SqliteStore::open(&path).await?,
                Access::Read => sqlite::SqliteStore::open_read_only(&path).await?,
            };
            Ok::<_, StoreError>(s)
        }
    };
    if let Some(path) = url.strip_prefix("sqlite://") {
        return sqlite(path).await;
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        // Readers and writers share one database; a read-only opening is a normal opening
        // whose writer simply never receives an append.
        let s: Arc<dyn EventStore> = postgres::PgStore::open(url).await?;
        return Ok(s);
    }
    if is_kurrentdb_url(url) {
        #[cfg(feature = "kurrentdb")]
        {
            let s: Arc<dyn EventStore> = kurrentdb::KurrentStore::open(url, access).await?;
            return Ok(s);
        }
        #[cfg(not(feature = "kurrentdb"))]
        return Err(StoreError::Invalid(format!(
            "{}: this wattledger was built without the `kurrentdb` feature; rebuild it with \
             `cargo build --release --features kurrentdb` to use KurrentDB / EventStoreDB",
            redact_url(url)
        )));
    }
    if url.contains("://") {
        return Err(StoreError::Invalid(format!(
            "unsupported store URL {:?}: use sqlite://PATH, postgres://… or kurrentdb://…",
            redact_url(url)
        )));
    }
    sqlite(url).await
}

/// Whether a store URL names KurrentDB / EventStoreDB (`kurrentdb://`, `esdb://`, and their
/// `+discover` forms).
pub fn is_kurrentdb_url(url: &str) -> bool {
    ["kurrentdb://", "kurrentdb+discover://", "esdb://", "esdb+discover://"]
        .iter()
        .any(|s| url.starts_with(s))
}

/// A URL with any password replaced, fit for logs and messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..s + 3], user, &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kurrentdb_urls_are_recognised() {
        for u in [
            "kurrentdb://h:2113",
            "kurrentdb+discover://h",
            "esdb://a:b@h",
            "esdb+discover://h",
        ] {
            assert!(is_kurrentdb_url(u), "{u}");
        }
        for u in ["sqlite://x", "postgres://h/db", "kurrent://h", "data/x.db"] {
            assert!(!is_kurrentdb_url(u), "{u}");
        }
    }

    /// Without the feature, a KurrentDB URL says how to get a binary that takes it.
    #[cfg(not(feature = "kurrentdb"))]
    #[tokio::test]
    async fn without_the_feature_a_kurrentdb_url_says_so() {
        for u in ["kurrentdb://admin:s3cret@h:2113", "esdb+discover://h"] {
            let e = match open(u, Access::Read).await {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{u} needs the kurrentdb feature"),
            };
            assert!(e.contains("built without the `kurrentdb` feature"), "{e}");
            assert!(!e.contains("s3cret"), "{e}");
        }
    }

    fn committed(position: u64) -> Committed {
        Committed {
            record: RecordedEvent {
                position,
                stream: "s".into(),
                version: position,
                event_id: Uuid::from_u128(position as u128),
                event_type: "T".into(),
                schema_version: 1,
                recorded_at: chrono::DateTime::UNIX_EPOCH,
                data: "{}".into(),
                hash: String::new(),
                prev_hash: String::new(),
            },
            memo: None,
        }
    }

    fn positions(tail: Option<Tail>) -> Option<Vec<u64>> {
        tail.map(|t| {
            assert_eq!(t.len(), t.iter().count(), "the tail counts what it holds");
            t.iter().map(|c| c.record.position).collect()
        })
    }

    /// The tail answers only from the very next position, holds no gap (a position written
    /// by another process starts it afresh) and keeps at most `RECENT_EVENTS_MAX` records.
    #[test]
    fn the_recent_tail_answers_only_without_a_gap() {
        let recent = Recent::default();
        assert_eq!(positions(recent.after(0, 10)), None, "empty");
        recent.push((1..=3).map(committed).collect());
        assert_eq!(positions(recent.after(0, 10)), Some(vec![1, 2, 3]));
        assert_eq!(positions(recent.after(1, 1)), Some(vec![2]));
        assert_eq!(positions(recent.after(3, 10)), None, "nothing after the last");
        recent.push(vec![committed(5)]);
        assert_eq!(positions(recent.after(0, 10)), None, "4 is not ours: 1..3 went");
        assert_eq!(positions(recent.after(3, 10)), None, "4 must be read from the store");
        assert_eq!(positions(recent.after(4, 10)), Some(vec![5]));
        let n = RECENT_EVENTS_MAX as u64;
        recent.push((6..=n + 10).map(committed).collect());
        // 5..=n+10 is n+6 records: 5..=10 went.
        assert_eq!(positions(recent.after(9, 1)), None, "evicted");
        assert_eq!(positions(recent.after(10, 2)), Some(vec![11, 12]));
        // Across groups, from inside one, up to the limit; the oldest records leave first.
        recent.push((n + 11..=n + 13).map(committed).collect());
        recent.push((n + 14..=n + 20).map(committed).collect());
        assert_eq!(positions(recent.after(n + 8, 7)), Some((n + 9..=n + 15).collect()));
        assert_eq!(positions(recent.after(n + 19, 10)), Some(vec![n + 20]));
        assert_eq!(positions(recent.after(19, 1)), None, "10 more records, 10 more gone");
        assert_eq!(positions(recent.after(20, 1)), Some(vec![21]));
        // A group larger than the tail: only its last records stay.
        recent.push((n + 100..n + 100 + n + 5).map(committed).collect());
        assert_eq!(positions(recent.after(n + 103, 1)), None, "its first 5 went");
        assert_eq!(positions(recent.after(n + 104, 2)), Some(vec![n + 105, n + 106]));
        recent.push(vec![committed(2 * n + 105)]);
        assert_eq!(positions(recent.after(n + 104, 1)), None, "evicted");
        assert_eq!(
            positions(recent.after(2 * n + 103, 9)),
            Some(vec![2 * n + 104, 2 * n + 105])
        );
        // A gap inside a group: only what follows it stays.
        recent.push([n + 21, n + 23, n + 24].into_iter().map(committed).collect());
        assert_eq!(positions(recent.after(n + 20, 10)), None, "n+22 is not ours");
        assert_eq!(positions(recent.after(n + 22, 10)), Some(vec![n + 23, n + 24]));
    }
}
