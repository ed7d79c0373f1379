//! The embedded store: one SQLite file in WAL mode with `synchronous=FULL`, so an
//! acknowledged append survives power loss.
//!
//! One writer thread owns the write connection. It folds every request waiting in its queue
//! (up to [`GROUP_COMMIT_REQUESTS_MAX`]) into one transaction and one fsync, checks expected
//! versions and event ids against its in-memory index, assigns positions and the hash chain,
//! and answers each request only after the commit. If the commit fails, every request of
//! the group is refused and the index is left as it was.

use super::*;
use rusqlite::{Connection, OpenFlags, params};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use tokio::sync::mpsc;

const MIGRATIONS: &[(i64, &str)] = &[(1, include_str!("../../migrations/sqlite/0001_events.sql"))];
/// Read connections kept open for reuse.
const READ_CONNECTIONS_MAX: usize = 8;

/// A map hashed by foldhash with the index's own seed.
type SeededMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

struct Index {
    /// The hash seed of its maps: random when the index is first built, then kept in its
    /// snapshot, so that a snapshot lists the ids in the order of the table they are loaded
    /// into and loading them writes the table front to back (10M random inserts into a
    /// 400 MB table took seconds).
    seed: u64,
    /// Stream → positions of its events, in version order.
    streams: SeededMap<String, Vec<u64>>,
    /// Event id → position, mostly on disk (`<db>.ids/`); the writer's only (a read-only
    /// store never appends, and the writer holds the map's directory).
    ids: Option<crate::idmap::IdMap>,
    head: u64,
    head_hash: String,
}

impl Index {
    fn empty(seed: u64, streams: usize) -> Self {
        let state = foldhash::fast::FixedState::with_seed(seed);
        Self {
            seed,
            streams: HashMap::with_capacity_and_hasher(streams, state),
            ids: None,
            head: 0,
            head_hash: GENESIS_HASH.to_string(),
        }
    }

    /// The position of an event id, if recorded (writer only).
    fn position_of(&self, id: &Uuid) -> Result<Option<u64>, StoreError> {
        let ids = self.ids.as_ref().ok_or_else(|| unavailable("the store is read-only"))?;
        ids.get(id.as_u128())
            .map_err(|e| unavailable(format!("the store's id map: {e}")))
    }

    /// Indexes a recorded event id (in position order). A spill that fails keeps it in
    /// memory ([`crate::idmap::IdMap::insert`]).
    fn index_id(&mut self, id: &Uuid, position: u64) {
        if let Some(ids) = &mut self.ids
            && let Err(e) = ids.insert(id.as_u128(), position)
        {
            tracing::error!("the store's id map could not write to disk ({e}); it keeps the ids in memory meanwhile");
        }
    }
}

pub struct SqliteStore {
    path: PathBuf,
    /// Held while this process may write: a second writer on one file is refused.
    _lock: Option<std::fs::File>,
    queue: WriterQueue,
    index: Arc<RwLock<Index>>,
    head_rx: watch::Receiver<u64>,
    readers: Mutex<Vec<Connection>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    group_sizes: Arc<crate::metrics::Histogram>,
    failures: Arc<std::sync::atomic::AtomicU64>,
    /// What the writer committed last, for this process's followers.
    recent: Arc<Recent>,
}

impl Drop for SqliteStore {
    /// Lets the writer finish what it holds, then releases the write lock explicitly: a
    /// `flock` lives as long as any copy of its descriptor, and a process spawned by this one
    /// at the wrong moment holds a copy until it execs, so merely closing the file could leave
    /// the next opener refused.
    fn drop(&mut self) {
        self.queue.close();
        if let Some(h) = self.writer.get_mut().map(Option::take).unwrap_or(None) {
            let _ = h.join();
            self.save_index();
        }
        if let Some(f) = &self._lock {
            let _ = f.unlock();
        }
    }
}

const INDEX_KIND: &[u8; 8] = b"sqlindex";
/// Bump when [`Index`] or its encoding changes.
const INDEX_FORMAT: u32 = 3;

/// Where the index snapshot of the store at `db` lives.
pub fn index_snapshot_path(db: &Path) -> PathBuf {
    PathBuf::from(format!("{}.index", db.display()))
}

/// Where the writer keeps the event id → position map of the store at `db`.
pub fn id_map_path(db: &Path) -> PathBuf {
    PathBuf::from(format!("{}.ids", db.display()))
}

fn write_index(path: &Path, index: &Index) -> std::io::Result<()> {
    let header = crate::snapfile::Header {
        position: index.head,
        chain_hash: index.head_hash.clone(),
    };
    crate::snapfile::write(path, INDEX_KIND, INDEX_FORMAT, &header, |e| {
        e.u64(index.seed)?;
        e.u64(index.streams.len() as u64)?;
        for (stream, positions) in &index.streams {
            e.field(stream.as_bytes())?;
            e.u64(positions.len() as u64)?;
            for p in positions {
                e.u64(*p)?;
            }
        }
        Ok(())
    })
}

/// The index snapshot, if there is one and the file's log holds its head with its hash.
fn read_index(conn: &Connection, path: &Path) -> Result<Option<Index>, String> {
    let found = crate::snapfile::read(path, INDEX_KIND, INDEX_FORMAT, |h, d| {
        let seed = d.u64()?;
        let n = d.count(16)?;
        let mut index = Index::empty(seed, n);
        for _ in 0..n {
            let stream = d.string()?;
            let m = d.count(8)?;
            let mut positions = Vec::with_capacity(m);
            for _ in 0..m {
                positions.push(d.u64()?);
            }
            index.streams.insert(stream, positions);
        }
        index.head = h.position;
        index.head_hash = h.chain_hash.clone();
        Ok(index)
    })
    .map_err(|e| e.to_string())?;
    let Some((_, index)) = found else { return Ok(None) };
    if index.head == 0 {
        return Ok(Some(index));
    }
    let hash: Option<String> = conn
        .query_row(
            "SELECT hash FROM events WHERE position = ?1",
            [index.head as i64],
            |r| r.get(0),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e.to_string()),
        })?;
    match hash {
        Some(h) if h == index.head_hash => Ok(Some(index)),
        Some(_) => Err(format!(
            "the log's hash at position {} is not the snapshot's",
            index.head
        )),
        None => Err(format!("the log does not reach the snapshot's position {}", index.head)),
    }
}

/// Saves the stream index's snapshot beside the file and spills the id map, so that the
/// next open scans only the rows after them. Both are tried; what failed is returned.
fn save_index(db: &Path, index: &RwLock<Index>) -> Result<(), String> {
    let path = index_snapshot_path(db);
    let snapshot = write_index(&path, &index.read().expect("index lock"))
        .map_err(|e| format!("store index snapshot {} not saved: {e}", path.display()));
    let ids = match &mut index.write().expect("index lock").ids {
        Some(ids) => ids.flush().map_err(|e| {
            format!(
                "store id map {} not saved (the next open reads the ids again from the log): {e}",
                id_map_path(db).display()
            )
        }),
        None => Ok(()),
    };
    match (snapshot, ids) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
        (Err(a), Err(b)) => Err(format!("{a}; {b}")),
    }
}

/// At the writer's end: [`save_index`] (a failure is logged), then the id map is let go:
/// nothing is appended any more.
fn close_index(db: &Path, index: &RwLock<Index>) {
    if let Err(e) = save_index(db, index) {
        tracing::warn!("{e}");
    }
    index.write().expect("index lock").ids = None;
}

/// The writer's id map, agreeing with the log at `conn` up to what it covers: a map the
/// log contradicts (or that cannot be read) is started again.
fn open_id_map(conn: &Connection, db: &Path) -> Result<crate::idmap::IdMap, StoreError> {
    use crate::idmap::{DEFAULT_MEM_MAX, IdMap};
    let dir = id_map_path(db);
    let fail = |e: std::io::Error| unavailable(format!("{}: {e}", dir.display()));
    let why = match IdMap::open(&dir, DEFAULT_MEM_MAX) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Err(fail(e)),
        Err(e) => e.to_string(),
        Ok(ids) => {
            let Some(covered) = ids.covered() else { return Ok(ids) };
            let id: Option<String> = conn
                .query_row(
                    "SELECT event_id FROM events WHERE position = ?1",
                    [covered as i64],
                    |r| r.get(0),
                )
                .map(Some)
                .or_else(|e| match e {
                    rusqlite::Error::QueryReturnedNoRows => Ok(None),
                    e => Err(unavailable(e)),
                })?;
            let found = match id.as_deref().map(Uuid::parse_str) {
                Some(Ok(id)) => ids.get(id.as_u128()).map_err(fail)?,
                _ => None,
            };
            if found.is_some_and(|p| p >= covered) {
                return Ok(ids);
            }
            format!("the log has no event it maps to position {covered}")
        }
    };
    tracing::warn!("store id map {} started again from the log: {why}", dir.display());
    IdMap::create(&dir, DEFAULT_MEM_MAX).map_err(fail)
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn open_conn(path: &Path, write: bool) -> Result<Connection, StoreError> {
    let flags = if write {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags).map_err(unavailable)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(unavailable)?;
    if write {
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(unavailable)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Unavailable(format!(
                "could not enable WAL (journal_mode={mode})"
            )));
        }
        // A group commit of a few thousand events dirties more pages than the default
        // 2 MiB cache holds, and SQLite then spills them to the WAL mid-transaction.
        conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA cache_size=-16384;")
            .map_err(unavailable)?;
    }
    Ok(conn)
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)")
        .map_err(unavailable)?;
    for (version, sql) in MIGRATIONS {
        let done: bool = conn
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM schema_migrations WHERE version = ?1)",
                [version],
                |r| r.get(0),
            )
            .map_err(unavailable)?;
        if !done {
            conn.execute_batch(&format!(
                "BEGIN; {sql}; INSERT INTO schema_migrations(version) VALUES ({version}); COMMIT;"
            ))
            .map_err(unavailable)?;
        }
    }
    Ok(())
}

fn row_to_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<RecordedEvent> {
    let id: String = r.get(3)?;
    let at: String = r.get(6)?;
    let bad = |what: &str, v: &str| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, format!("bad {what} {v:?}").into())
    };
    Ok(RecordedEvent {
        position: r.get::<_, i64>(0)? as u64,
        stream: r.get(1)?,
        version: r.get::<_, i64>(2)? as u64,
        event_id: Uuid::parse_str(&id).map_err(|_| bad("event id", &id))?,
        event_type: r.get(4)?,
        schema_version: r.get::<_, i64>(5)? as u32,
        recorded_at: crate::domain::time::parse_time(&at).map_err(|_| bad("time", &at))?,
        data: r.get(7)?,
        hash: r.get(8)?,
        prev_hash: r.get(9)?,
    })
}

const SELECT: &str = "SELECT position, stream, version, event_id, event_type, schema_version, recorded_at, data, hash, prev_hash FROM events";

impl SqliteStore {
    /// Opens (creating if needed) the store for writing. Only one process may write to a
    /// file at a time; a second one is refused with a clear message.
    pub async fn open(path: &Path) -> Result<Arc<Self>, StoreError> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(path, true))
            .await
            .map_err(unavailable)?
    }

    /// Opens an existing store for reading only (audit, statements, export beside a server).
    pub async fn open_read_only(path: &Path) -> Result<Arc<Self>, StoreError> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(path, false))
            .await
            .map_err(unavailable)?
    }

    fn open_blocking(path: PathBuf, write: bool) -> Result<Arc<Self>, StoreError> {
        if !write && !path.exists() {
            return Err(StoreError::Invalid(format!("no store at {}", path.display())));
        }
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| unavailable(format!("{}: {e}", dir.display())))?;
        }
        let lock = if write {
            let lock_path = PathBuf::from(format!("{}.lock", path.display()));
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
                .map_err(|e| unavailable(format!("{}: {e}", lock_path.display())))?;
            if f.try_lock().is_err() {
                return Err(StoreError::Unavailable(format!(
                    "another wattledger process is writing to {}; stop it, or send commands through its API",
                    path.display()
                )));
            }
            Some(f)
        } else {
            None
        };
        let conn = open_conn(&path, write)?;
        if write {
            migrate(&conn)?;
        }
        let ids = if write { Some(open_id_map(&conn, &path)?) } else { None };
        let index = Self::load_index(&conn, &index_snapshot_path(&path), ids)?;
        let (head_tx, head_rx) = watch::channel(index.head);
        let index = Arc::new(RwLock::new(index));
        let group_sizes = Arc::new(crate::metrics::Histogram::new(crate::metrics::GROUP_SIZE_BOUNDS));
        let failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let recent = Arc::new(Recent::default());
        let (queue, writer) = if write {
            let (queue, rx) = WriterQueue::new();
            let writer = Writer {
                index: index.clone(),
                head_tx,
                group_sizes: group_sizes.clone(),
                failures: failures.clone(),
                recent: recent.clone(),
            };
            let writer = std::thread::Builder::new()
                .name("wattledger-sqlite-writer".into())
                .spawn(move || writer.run(conn, rx))
                .map_err(unavailable)?;
            (queue, Some(writer))
        } else {
            (WriterQueue::closed(), None)
        };
        Ok(Arc::new(Self {
            path,
            _lock: lock,
            queue,
            index,
            head_rx,
            readers: Mutex::new(Vec::new()),
            writer: Mutex::new(writer),
            group_sizes,
            failures,
            recent,
        }))
    }

    /// Builds the index: the streams from their snapshot when one agrees with the file, the
    /// ids from the writer's map, then one sequential scan of the narrow columns of what
    /// follows the older of the two.
    fn load_index(conn: &Connection, snapshot: &Path, ids: Option<crate::idmap::IdMap>) -> Result<Index, StoreError> {
        let mut index = match read_index(conn, snapshot) {
            Ok(Some(index)) => index,
            Ok(None) => Index::empty(rand::random(), 0),
            Err(why) => {
                tracing::warn!(
                    "store index snapshot {} ignored, the index is rebuilt from the log: {why}",
                    snapshot.display()
                );
                Index::empty(rand::random(), 0)
            }
        };
        let streams_from = index.head;
        let ids_from = match &ids {
            None => u64::MAX,
            Some(ids) => ids.covered().unwrap_or(0),
        };
        index.ids = ids;
        let mut stmt = conn
            .prepare("SELECT position, stream, event_id, hash FROM events WHERE position > ?1 ORDER BY position")
            .map_err(unavailable)?;
        let mut rows = stmt.query([streams_from.min(ids_from) as i64]).map_err(unavailable)?;
        while let Some(r) = rows.next().map_err(unavailable)? {
            let position = r.get::<_, i64>(0).map_err(unavailable)? as u64;
            if position > ids_from {
                let id: String = r.get(2).map_err(unavailable)?;
                let id = Uuid::parse_str(&id)
                    .map_err(|_| StoreError::Corrupt(format!("position {position}: event id {id:?} is not a UUID")))?;
                index.index_id(&id, position);
            }
            if position > streams_from {
                let stream: String = r.get(1).map_err(unavailable)?;
                crate::vecs::push_lean(index.streams.entry(stream).or_default(), position);
                index.head = position;
                index.head_hash = r.get(3).map_err(unavailable)?;
            }
        }
        Ok(index)
    }

    /// Saves the index beside the file, so the next open reads it instead of scanning the
    /// log (writer only, once its thread has ended: the index then holds every commit).
    fn save_index(&self) {
        close_index(&self.path, &self.index);
    }

    async fn with_reader<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.readers.lock().expect("readers lock").pop();
        let path = self.path.clone();
        let (conn, out) = tokio::task::spawn_blocking(move || {
            let conn = match conn {
                Some(c) => c,
                None => open_conn(&path, false)?,
            };
            let out = f(&conn);
            Ok::<_, StoreError>((conn, out))
        })
        .await
        .map_err(unavailable)??;
        let mut readers = self.readers.lock().expect("readers lock");
        if readers.len() < READ_CONNECTIONS_MAX {
            readers.push(conn);
        }
        out
    }
}

#[async_trait]
impl EventStore for SqliteStore {
    fn append(&self, batch: AppendBatch) -> AppendTicket {
        self.queue.append(batch)
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let limit = limit.min(READ_PAGE_EVENTS_MAX);
        let positions: Vec<u64> = {
            let index = self.index.read().expect("index lock");
            match index.streams.get(stream) {
                Some(ps) => ps
                    .iter()
                    .skip(from_version.saturating_sub(1) as usize)
                    .take(limit)
                    .copied()
                    .collect(),
                None => Vec::new(),
            }
        };
        if positions.is_empty() {
            return Ok(Vec::new());
        }
        self.with_reader(move |c| {
            let mut stmt = c
                .prepare_cached(&format!("{SELECT} WHERE position = ?1"))
                .map_err(unavailable)?;
            let mut out = Vec::with_capacity(positions.len());
            for p in positions {
                out.push(stmt.query_row([p as i64], row_to_event).map_err(unavailable)?);
            }
            Ok(out)
        })
        .await
    }

    async fn read_all(&self, after_position: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let limit = limit.min(READ_PAGE_EVENTS_MAX);
        self.with_reader(move |c| {
            let mut stmt = c
                .prepare_cached(&format!("{SELECT} WHERE position > ?1 ORDER BY position LIMIT ?2"))
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![after_position as i64, limit as i64], row_to_event)
                .map_err(unavailable)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(|e| match e {
                rusqlite::Error::FromSqlConversionFailure(_, _, m) => StoreError::Corrupt(m.to_string()),
                e => unavailable(e),
            })
        })
        .await
    }

    async fn head(&self) -> Result<Head, StoreError> {
        if !self.queue.has_writer() {
            // Read-only (or shut down): the head is whatever the file holds now.
            return self
                .with_reader(|c| {
                    c.query_row(
                        "SELECT position, hash FROM events ORDER BY position DESC LIMIT 1",
                        [],
                        |r| {
                            Ok(Head {
                                position: r.get::<_, i64>(0)? as u64,
                                hash: r.get(1)?,
                            })
                        },
                    )
                    .or_else(|e| match e {
                        rusqlite::Error::QueryReturnedNoRows => Ok(Head {
                            position: 0,
                            hash: GENESIS_HASH.to_string(),
                        }),
                        e => Err(unavailable(e)),
                    })
                })
                .await;
        }
        self.queue.head().await
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.head_rx.clone()
    }

    fn recent(&self, after_position: u64, limit: usize) -> Option<Vec<Arc<Committed>>> {
        self.recent.after(after_position, limit)
    }

    /// Writes the stream index's snapshot and spills the id map, off the runtime's threads:
    /// a later open scans only the rows after them. The writer waits for the index while the
    /// snapshot is written (~0.3 s at 10M events).
    async fn checkpoint(&self) -> Result<(), String> {
        if !self.queue.has_writer() {
            return Ok(());
        }
        let (db, index) = (self.path.clone(), self.index.clone());
        tokio::task::spawn_blocking(move || save_index(&db, &index))
            .await
            .map_err(|e| e.to_string())?
    }

    fn group_commit_sizes(&self) -> Option<&crate::metrics::Histogram> {
        Some(&self.group_sizes)
    }

    fn failures(&self) -> u64 {
        self.failures.load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn shutdown(&self) {
        self.queue.close();
        let handle = self.writer.lock().expect("writer lock").take();
        if let Some(h) = handle {
            // The index file is written off the runtime's threads (0.3 GB at 10M events).
            let (db, index) = (self.path.clone(), self.index.clone());
            let _ = tokio::task::spawn_blocking(move || {
                let _ = h.join();
                close_index(&db, &index);
            })
            .await;
        }
    }
}

/// What one transaction changes in the index, applied only after it commits.
#[derive(Default)]
struct Staged {
    streams: foldhash::HashMap<String, Vec<u64>>,
    ids: foldhash::HashMap<Uuid, u64>,
}

/// The writer thread's shared handles.
struct Writer {
    index: Arc<RwLock<Index>>,
    head_tx: watch::Sender<u64>,
    group_sizes: Arc<crate::metrics::Histogram>,
    failures: Arc<std::sync::atomic::AtomicU64>,
    recent: Arc<Recent>,
}

type Reply = (
    oneshot::Sender<Result<Appended, StoreError>>,
    Result<Appended, StoreError>,
);

impl Writer {
    fn run(self, mut conn: Connection, mut rx: mpsc::Receiver<WriterMsg>) {
        while let Some(first) = rx.blocking_recv() {
            let mut msgs = vec![first];
            while msgs.len() < GROUP_COMMIT_REQUESTS_MAX {
                match rx.try_recv() {
                    Ok(m) => msgs.push(m),
                    Err(_) => break,
                }
            }
            self.group_sizes.observe(msgs.len() as f64);
            self.commit_group(&mut conn, msgs);
        }
    }

    fn commit_group(&self, conn: &mut Connection, msgs: Vec<WriterMsg>) {
        let failures = self.failures.load(std::sync::atomic::Ordering::SeqCst);
        let (mut head, mut head_hash) = {
            let i = self.index.read().expect("index lock");
            (i.head, i.head_hash.clone())
        };
        // Sized for the group: growing these maps showed in the writer's profile.
        let mut staged = Staged {
            streams: foldhash::HashMap::with_capacity_and_hasher(msgs.len(), Default::default()),
            ids: foldhash::HashMap::with_capacity_and_hasher(msgs.len(), Default::default()),
        };
        let mut appends: Vec<Reply> = Vec::with_capacity(msgs.len());
        let mut heads: Vec<(oneshot::Sender<Result<Head, StoreError>>, Head)> = Vec::new();
        let mut wrote = false;
        let mut committed: Vec<Committed> = Vec::with_capacity(msgs.len());

        let result = (|| -> Result<(), StoreError> {
            let tx = conn.transaction().map_err(unavailable)?;
            {
                let mut insert = tx
                    .prepare_cached("INSERT INTO events (position, stream, version, event_id, event_type, schema_version, recorded_at, data, hash, prev_hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)")
                    .map_err(unavailable)?;
                let idx = self.index.read().expect("index lock");
                for msg in msgs {
                    match msg {
                        WriterMsg::Head(reply) => heads.push((
                            reply,
                            Head {
                                position: head,
                                hash: head_hash.clone(),
                            },
                        )),
                        WriterMsg::Append(batch, reply) => {
                            if batch.fence.is_some_and(|f| f != failures) {
                                appends.push((
                                    reply,
                                    Err(StoreError::Unavailable(
                                        "decided before an earlier append failed; retry".into(),
                                    )),
                                ));
                                continue;
                            }
                            let outcome = match check_batch(&tx, &idx, &staged, &batch) {
                                Ok(Some(dup)) => Ok(dup),
                                Err(e) => Err(e),
                                Ok(None) => {
                                    let mut version = current_version(&idx, &staged, &batch.stream);
                                    let mut recorded = Vec::with_capacity(batch.events.len());
                                    for e in batch.events {
                                        head += 1;
                                        version += 1;
                                        // The hash and the event id in stack buffers, the time
                                        // text once for the hash and the row.
                                        let recorded_at = crate::domain::time::fmt_time(&e.recorded_at);
                                        let mut hash_hex = [0u8; 64];
                                        let hash = chain::record_hash_hex(
                                            &head_hash,
                                            head,
                                            &batch.stream,
                                            version,
                                            &e.event_id,
                                            &e.event_type,
                                            e.schema_version,
                                            &recorded_at,
                                            &e.data,
                                            &mut hash_hex,
                                        );
                                        let mut id_text = [0u8; uuid::fmt::Hyphenated::LENGTH];
                                        insert
                                            .execute(params![
                                                head as i64,
                                                batch.stream,
                                                version as i64,
                                                &*e.event_id.hyphenated().encode_lower(&mut id_text),
                                                e.event_type,
                                                e.schema_version as i64,
                                                recorded_at,
                                                e.data,
                                                hash,
                                                head_hash,
                                            ])
                                            .map_err(unavailable)?;
                                        committed.push(Committed {
                                            record: RecordedEvent {
                                                position: head,
                                                stream: batch.stream.clone(),
                                                version,
                                                event_id: e.event_id,
                                                event_type: e.event_type,
                                                schema_version: e.schema_version,
                                                recorded_at: e.recorded_at,
                                                data: e.data,
                                                hash: hash.to_string(),
                                                prev_hash: std::mem::take(&mut head_hash),
                                            },
                                            memo: e.memo,
                                        });
                                        head_hash.push_str(hash);
                                        staged.streams.entry(batch.stream.clone()).or_default().push(head);
                                        staged.ids.insert(e.event_id, head);
                                        recorded.push((head, version));
                                        wrote = true;
                                    }
                                    Ok(Appended {
                                        recorded,
                                        duplicate: false,
                                    })
                                }
                            };
                            appends.push((reply, outcome));
                        }
                    }
                }
            }
            if wrote {
                tx.commit().map_err(unavailable)?;
            }
            Ok(())
        })();

        match result {
            Ok(()) => {
                if wrote {
                    let mut ids: Vec<(Uuid, u64)> = staged.ids.into_iter().collect();
                    ids.sort_unstable_by_key(|(_, p)| *p);
                    let mut idx = self.index.write().expect("index lock");
                    for (s, ps) in staged.streams {
                        let positions = idx.streams.entry(s).or_default();
                        crate::vecs::reserve_lean(positions, ps.len());
                        positions.extend(ps);
                    }
                    for (id, p) in &ids {
                        idx.index_id(id, *p);
                    }
                    idx.head = head;
                    idx.head_hash = head_hash;
                    drop(idx);
                    self.recent.push(committed);
                    self.head_tx.send_replace(head);
                }
                for (reply, outcome) in appends {
                    let _ = reply.send(outcome);
                }
                for (reply, h) in heads {
                    let _ = reply.send(Ok(h));
                }
            }
            Err(e) => {
                // Nothing of this group is durable: refuse every request in it, and count the
                // failure first, so that anything queued behind it on the same decisions is
                // refused by its fence.
                self.failures.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tracing::error!(error = %e, "a commit failed; its appends are refused");
                for (reply, _) in appends {
                    let _ = reply.send(Err(e.clone()));
                }
                for (reply, _) in heads {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

fn current_version(idx: &Index, staged: &Staged, stream: &str) -> u64 {
    let n = idx.streams.get(stream).map_or(0, Vec::len) + staged.streams.get(stream).map_or(0, Vec::len);
    n as u64
}

/// `Ok(Some(_))`: the whole batch is already recorded (a retry). `Ok(None)`: append it.
fn check_batch(
    tx: &rusqlite::Transaction<'_>,
    idx: &Index,
    staged: &Staged,
    batch: &AppendBatch,
) -> Result<Option<Appended>, StoreError> {
    let known: Vec<Option<u64>> = batch
        .events
        .iter()
        .map(|e| match staged.ids.get(&e.event_id) {
            Some(p) => Ok(Some(*p)),
            None => idx.position_of(&e.event_id),
        })
        .collect::<Result<_, _>>()?;
    if known.iter().any(Option::is_some) {
        let mut recorded = Vec::with_capacity(known.len());
        for (e, pos) in batch.events.iter().zip(&known) {
            let Some(pos) = pos else {
                return Err(StoreError::DuplicateEventId(e.event_id));
            };
            let found = tx
                .query_row(
                    "SELECT stream, version, event_type, data FROM events WHERE position = ?1",
                    [*pos as i64],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, i64>(1)? as u64,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                        ))
                    },
                )
                .map_err(unavailable)?;
            if found.0 != batch.stream || found.2 != e.event_type || found.3 != e.data {
                return Err(StoreError::DuplicateEventId(e.event_id));
            }
            recorded.push((*pos, found.1));
        }
        return Ok(Some(Appended {
            recorded,
            duplicate: true,
        }));
    }
    let mut seen = std::collections::HashSet::new();
    for e in &batch.events {
        if !seen.insert(e.event_id) {
            return Err(StoreError::DuplicateEventId(e.event_id));
        }
    }
    let actual = current_version(idx, staged, &batch.stream);
    if !batch.expected.admits(actual) {
        return Err(StoreError::VersionConflict {
            stream: batch.stream.clone(),
            expected: batch.expected,
            actual,
        });
    }
    Ok(None)
}
