//! The embedded store: one SQLite file in WAL mode, and an acknowledged append survives
//! power loss.
//!
//! One writer thread owns the write connection. It folds every request waiting in its queue
//! (up to [`GROUP_COMMIT_REQUESTS_MAX`]) into one transaction, checks expected versions and
//! event ids against its in-memory index (and the groups not yet synced), assigns positions
//! and the hash chain, and commits to the WAL with `synchronous=NORMAL`. A second thread,
//! the syncer, then fdatasyncs the WAL and only after that applies the group to the index
//! and answers its requests, while the writer goes on with the next group. A third thread
//! checkpoints the WAL into the database when the syncer asks, so that neither waits for
//! the database's fsync. If a commit fails, every request of the group is refused and the
//! index is left as it was; if a sync fails, the store refuses everything from then on (see
//! [`Syncer`]). Readers see only what is synced.

use super::*;
use rusqlite::{Connection, OpenFlags, params};
use std::collections::{HashMap, VecDeque};
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
    streams: SeededMap<String, StreamPositions>,
    /// Event id → position, mostly on disk (`<db>.ids/`); the writer's only (a read-only
    /// store never appends, and the writer holds the map's directory).
    ids: Option<crate::idmap::IdMap>,
    head: u64,
    head_hash: String,
}

/// A stream's positions in version order: 4 bytes each while they fit in 32 bits (a log of
/// up to 4,294,967,295 events), 8 from the first that does not. This list is what grows
/// with the log in memory (every event is in one), and a meter's streams grow in step, so
/// each growth copies them all at about the same time.
#[derive(Clone, Debug, PartialEq)]
enum StreamPositions {
    Narrow(Vec<u32>),
    Wide(Vec<u64>),
}

impl Default for StreamPositions {
    fn default() -> Self {
        StreamPositions::Narrow(Vec::new())
    }
}

impl StreamPositions {
    fn with_capacity(n: usize) -> Self {
        StreamPositions::Narrow(Vec::with_capacity(n))
    }

    fn len(&self) -> usize {
        match self {
            StreamPositions::Narrow(v) => v.len(),
            StreamPositions::Wide(v) => v.len(),
        }
    }

    /// Positions `from` on (0-based), at most `limit` of them.
    fn range(&self, from: usize, limit: usize) -> Vec<u64> {
        match self {
            StreamPositions::Narrow(v) => v.iter().skip(from).take(limit).map(|p| u64::from(*p)).collect(),
            StreamPositions::Wide(v) => v.iter().skip(from).take(limit).copied().collect(),
        }
    }

    fn iter(&self) -> Box<dyn Iterator<Item = u64> + '_> {
        match self {
            StreamPositions::Narrow(v) => Box::new(v.iter().map(|p| u64::from(*p))),
            StreamPositions::Wide(v) => Box::new(v.iter().copied()),
        }
    }

    /// Appends `ps`, growing the list by a quarter at a time ([`crate::vecs::reserve_lean`]).
    fn extend(&mut self, ps: &[u64]) {
        if let StreamPositions::Narrow(v) = self {
            if ps.iter().all(|p| u32::try_from(*p).is_ok()) {
                crate::vecs::reserve_lean(v, ps.len());
                v.extend(ps.iter().map(|p| *p as u32));
                return;
            }
            let mut wide = Vec::with_capacity(v.len() + ps.len());
            wide.extend(v.iter().map(|p| u64::from(*p)));
            *self = StreamPositions::Wide(wide);
        }
        if let StreamPositions::Wide(v) = self {
            crate::vecs::reserve_lean(v, ps.len());
            v.extend_from_slice(ps);
        }
    }
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
    /// Tests only: makes the writer's next sync of the WAL fail.
    fail_sync: Arc<std::sync::atomic::AtomicBool>,
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
/// The WAL beside the database file, as SQLite names it.
pub fn wal_path(db: &Path) -> PathBuf {
    PathBuf::from(format!("{}-wal", db.display()))
}

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
            for p in positions.iter() {
                e.u64(p)?;
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
            let mut positions = StreamPositions::with_capacity(m);
            for _ in 0..m {
                positions.extend(&[d.u64()?]);
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
        // NORMAL: a commit writes the WAL and the writer's syncer syncs it before any
        // answer (see `Syncer`), as FULL would have inside the commit. A group commit of a
        // few thousand events dirties more pages than the default 2 MiB cache holds, and
        // SQLite then spills them to the WAL mid-transaction.
        conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA cache_size=-16384;")
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
    let id = r.get_ref(3)?.as_str()?;
    let at = r.get_ref(6)?.as_str()?;
    let bad = |what: &str, v: &str| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, format!("bad {what} {v:?}").into())
    };
    Ok(RecordedEvent {
        position: r.get::<_, i64>(0)? as u64,
        stream: r.get(1)?,
        version: r.get::<_, i64>(2)? as u64,
        event_id: Uuid::parse_str(id).map_err(|_| bad("event id", id))?,
        event_type: r.get(4)?,
        schema_version: r.get::<_, i64>(5)? as u32,
        recorded_at: crate::domain::time::parse_time(at).map_err(|_| bad("time", at))?,
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
        let fail_sync = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (queue, writer) = if write {
            let (queue, rx) = WriterQueue::new();
            let writer = Writer {
                index: index.clone(),
                head_tx,
                group_sizes: group_sizes.clone(),
                failures: failures.clone(),
                recent: recent.clone(),
                poisoned: Arc::default(),
                db: path.clone(),
                fail_sync: fail_sync.clone(),
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
            fail_sync,
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
                index.streams.entry(stream).or_default().extend(&[position]);
                index.head = position;
                index.head_hash = r.get(3).map_err(unavailable)?;
            }
        }
        Ok(index)
    }

    /// Fault injection for tests: the writer's next sync of the WAL fails, as a disk that
    /// refuses an fdatasync would make it.
    #[doc(hidden)]
    pub fn fail_next_sync(&self) {
        self.fail_sync.store(true, std::sync::atomic::Ordering::SeqCst);
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
                Some(ps) => ps.range(from_version.saturating_sub(1) as usize, limit),
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
        // Only what is synced: the WAL shows a group to readers from its commit on, and
        // the index's head moves once it is synced. A read-only store reads what the file
        // holds.
        let upto = if self.queue.has_writer() {
            self.index.read().expect("index lock").head as i64
        } else {
            i64::MAX
        };
        self.with_reader(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "{SELECT} WHERE position > ?1 AND position <= ?3 ORDER BY position LIMIT ?2"
                ))
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![after_position as i64, limit as i64, upto], row_to_event)
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

    fn recent(&self, after_position: u64, limit: usize) -> Option<Tail> {
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

/// What one transaction changes in the index, applied only once it is durable.
#[derive(Default)]
struct Staged {
    streams: foldhash::HashMap<String, Positions>,
    ids: foldhash::HashMap<Uuid, u64>,
}

/// The positions one group gave one stream, in order: mostly one (a reading is one event
/// on its meter's stream), kept without a heap allocation of its own.
enum Positions {
    One(u64),
    Many(Vec<u64>),
}

impl Positions {
    fn push(&mut self, p: u64) {
        match self {
            Positions::One(first) => *self = Positions::Many(vec![*first, p]),
            Positions::Many(v) => v.push(p),
        }
    }

    fn as_slice(&self) -> &[u64] {
        match self {
            Positions::One(p) => std::slice::from_ref(p),
            Positions::Many(v) => v,
        }
    }
}

/// A group committed to the WAL whose sync has not yet been done: the writer looks in it as
/// in the index until the syncer has applied it (its `last` position is then the index's
/// head or behind it).
struct Unsynced {
    last: u64,
    staged: Arc<Staged>,
}

/// What the writer knows of the log: the index, and the groups ahead of it not yet synced.
struct View<'a> {
    idx: &'a Index,
    unsynced: &'a VecDeque<Unsynced>,
    staged: &'a Staged,
}

impl View<'_> {
    /// The groups not yet in the index (the syncer applies them in order).
    fn ahead(&self) -> impl Iterator<Item = &Staged> {
        let head = self.idx.head;
        self.unsynced.iter().filter(move |u| u.last > head).map(|u| &*u.staged)
    }

    fn version(&self, stream: &str) -> u64 {
        let len = |s: &Staged| s.streams.get(stream).map_or(0, |p| p.as_slice().len());
        let n = self.idx.streams.get(stream).map_or(0, StreamPositions::len)
            + len(self.staged)
            + self.ahead().map(len).sum::<usize>();
        n as u64
    }

    fn position_of(&self, id: &Uuid) -> Result<Option<u64>, StoreError> {
        if let Some(p) = self.staged.ids.get(id) {
            return Ok(Some(*p));
        }
        if let Some(p) = self.ahead().find_map(|s| s.ids.get(id)) {
            return Ok(Some(*p));
        }
        self.idx.position_of(id)
    }
}

/// The writer thread's shared handles.
struct Writer {
    index: Arc<RwLock<Index>>,
    head_tx: watch::Sender<u64>,
    group_sizes: Arc<crate::metrics::Histogram>,
    failures: Arc<std::sync::atomic::AtomicU64>,
    recent: Arc<Recent>,
    /// Set when a sync of the WAL failed: what was written since may not be on disk, and
    /// the writer refuses every request from then on (see [`Syncer`]).
    poisoned: Arc<std::sync::atomic::AtomicBool>,
    /// The database file (the syncer syncs its WAL; the checkpoint thread checkpoints it).
    db: PathBuf,
    /// Tests only: the syncer's next sync fails.
    fail_sync: Arc<std::sync::atomic::AtomicBool>,
}

type Reply = (
    oneshot::Sender<Result<Appended, StoreError>>,
    Result<Appended, StoreError>,
);

/// What a committed group wrote.
struct Wrote {
    /// Its index changes, shared with the writer's view until the syncer applies them.
    staged: Arc<Staged>,
    /// Its last position and hash.
    last: u64,
    hash: String,
    /// Its records, for the tail.
    committed: Vec<Committed>,
    /// About what its rows added to the WAL (the writer's and the syncer's checkpoints).
    bytes: u64,
}

/// A group's answers, handed to the syncer in commit order and sent once the WAL is synced.
struct Answers {
    wrote: Option<Wrote>,
    appends: Vec<Reply>,
    heads: Vec<oneshot::Sender<Result<Head, StoreError>>>,
}

/// Committed groups that may wait for the syncer while it syncs others; when that many
/// wait, the writer waits too.
const UNSYNCED_GROUPS_MAX: usize = 2;

/// Requests from which a group is committed while the last one is still being synced;
/// a smaller one waits for that sync first.
const PIPELINED_GROUP_MIN: usize = 256;

/// Groups handed to the syncer and not yet answered.
#[derive(Default)]
struct InFlight {
    groups: Mutex<usize>,
    done: std::sync::Condvar,
}

impl InFlight {
    fn start(&self) {
        *self.groups.lock().expect("in-flight lock") += 1;
    }

    fn finish(&self, n: usize) {
        let mut g = self.groups.lock().expect("in-flight lock");
        *g = g.saturating_sub(n);
        if *g == 0 {
            self.done.notify_all();
        }
    }

    /// Waits until no group is in flight, or a second has passed (a sync that slow, or a
    /// syncer gone, is not waited for: the group is committed as it is); whether it waited.
    fn wait_idle(&self) -> bool {
        let mut g = self.groups.lock().expect("in-flight lock");
        let waited = *g > 0;
        while *g > 0 {
            let (next, t) = self
                .done
                .wait_timeout(g, std::time::Duration::from_secs(1))
                .expect("in-flight lock");
            g = next;
            if t.timed_out() {
                break;
            }
        }
        waited
    }
}

/// Rows' bytes after which the syncer asks for a checkpoint of the WAL (SQLite's own
/// default is 1,000 pages, about 4 MiB).
const CHECKPOINT_BYTES: u64 = 4 << 20;

/// Rows' bytes after which the writer checkpoints what is left, so that the WAL starts over.
const WAL_RESTART_BYTES: u64 = 64 << 20;

/// About what a row adds to the WAL.
fn row_bytes(c: &Committed) -> u64 {
    let r = &c.record;
    (r.stream.len() + r.event_type.len() + r.data.len() + r.hash.len() + r.prev_hash.len() + 100) as u64
}

/// The checkpoint thread's connection: `synchronous=NORMAL` syncs the WAL before it is
/// copied and the database after.
fn checkpoint_conn(db: &Path) -> rusqlite::Result<Connection> {
    let c = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    c.busy_timeout(std::time::Duration::from_secs(5))?;
    c.execute_batch("PRAGMA synchronous=NORMAL")?;
    Ok(c)
}

/// The thread that checkpoints the WAL (`wattledger-sqlite-ckpt`), on its own connection,
/// when the syncer asks. A passive checkpoint copies what it can of the WAL into the
/// database without waiting for the writer or the readers; the WAL's frames stay until
/// then, so an acknowledged append never depends on one.
struct Checkpointer;

impl Checkpointer {
    fn spawn(c: Connection) -> std::io::Result<(std::sync::mpsc::SyncSender<()>, std::thread::JoinHandle<()>)> {
        // One request waits while one runs: more would only run back to back.
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let h = std::thread::Builder::new()
            .name("wattledger-sqlite-ckpt".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    if let Err(e) = c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(0)) {
                        tracing::warn!(error = %e, "a checkpoint of the WAL failed; it is tried again later");
                    }
                }
            })?;
        Ok((tx, h))
    }
}

fn poisoned_error() -> StoreError {
    StoreError::Unavailable(
        "the log's WAL could not be synced to disk, so nothing more is written; restart the service once the disk is sound".into(),
    )
}

impl Writer {
    /// Commits groups on this thread and syncs them on a second one, `wattledger-sqlite-sync`:
    /// the next group's inserts run while the last one's fdatasync waits on the disk.
    fn run(self, mut conn: Connection, mut rx: mpsc::Receiver<WriterMsg>) {
        let (to_sync, synced) = std::sync::mpsc::sync_channel::<Answers>(UNSYNCED_GROUPS_MAX);
        // Checkpoints run on a connection and a thread of their own, so that their two
        // fsyncs (the WAL, then the database) stall neither the inserts nor the syncs of the
        // groups committed meanwhile (and so their answers). Without them, SQLite
        // checkpoints on this connection as before.
        let (checkpoints, checkpoint_thread) = match checkpoint_conn(&self.db)
            .map_err(|e| e.to_string())
            .and_then(|c| Checkpointer::spawn(c).map_err(|e| e.to_string()))
        {
            Ok((tx, h)) => match conn.execute_batch("PRAGMA wal_autocheckpoint=0") {
                Ok(()) => (Some(tx), Some(h)),
                Err(e) => {
                    tracing::warn!(error = %e, "checkpoints stay on the writer's connection");
                    (None, Some(h))
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "checkpoints stay on the writer's connection");
                (None, None)
            }
        };
        let own_checkpoints = checkpoints.is_some();
        let in_flight = Arc::new(InFlight::default());
        let syncer = Syncer {
            index: self.index.clone(),
            head_tx: self.head_tx.clone(),
            failures: self.failures.clone(),
            recent: self.recent.clone(),
            poisoned: self.poisoned.clone(),
            wal: wal_path(&self.db),
            file: None,
            fail_sync: self.fail_sync.clone(),
            checkpoints,
            unchecked_bytes: 0,
            in_flight: in_flight.clone(),
        };
        let syncer = match std::thread::Builder::new()
            .name("wattledger-sqlite-sync".into())
            .spawn(move || syncer.run(synced))
        {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "the store's sync thread did not start; nothing is written");
                self.poisoned.store(true, std::sync::atomic::Ordering::SeqCst);
                self.refuse_all(&mut rx);
                return;
            }
        };
        let (mut head, mut head_hash) = {
            let i = self.index.read().expect("index lock");
            (i.head, i.head_hash.clone())
        };
        let mut unsynced: VecDeque<Unsynced> = VecDeque::new();
        let mut since_restart = 0u64;
        while let Some(first) = rx.blocking_recv() {
            // The WAL starts over only when a write begins with all of it copied to the
            // database, which the syncer's checkpoints, racing these writes, seldom leave:
            // so every WAL_RESTART_BYTES this thread checkpoints what is left itself.
            if own_checkpoints && since_restart >= WAL_RESTART_BYTES {
                match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(0)) {
                    Ok(0) => since_restart = 0,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "a checkpoint of the WAL failed; it is tried again"),
                }
            }
            let mut msgs = vec![first];
            let take = |msgs: &mut Vec<WriterMsg>, rx: &mut mpsc::Receiver<WriterMsg>| {
                while msgs.len() < GROUP_COMMIT_REQUESTS_MAX {
                    match rx.try_recv() {
                        Ok(m) => msgs.push(m),
                        Err(_) => break,
                    }
                }
            };
            take(&mut msgs, &mut rx);
            // A small group waits for the sync in flight and grows meanwhile, as groups did
            // when the commit itself synced: committing a few requests at a time writes a
            // WAL page for each commit. Large groups go ahead and overlap the sync.
            if msgs.len() < PIPELINED_GROUP_MIN && in_flight.wait_idle() {
                take(&mut msgs, &mut rx);
            }
            self.group_sizes.observe(msgs.len() as f64);
            {
                let applied = self.index.read().expect("index lock").head;
                while unsynced.front().is_some_and(|u| u.last <= applied) {
                    unsynced.pop_front();
                }
            }
            let answers = self.commit_group(&mut conn, msgs, &mut head, &mut head_hash, &unsynced);
            if let Some(w) = &answers.wrote {
                since_restart += w.bytes;
                unsynced.push_back(Unsynced {
                    last: w.last,
                    staged: w.staged.clone(),
                });
            }
            in_flight.start();
            if to_sync.send(answers).is_err() {
                break;
            }
        }
        drop(to_sync);
        let _ = syncer.join();
        if let Some(h) = checkpoint_thread {
            let _ = h.join();
        }
    }

    /// Refuses what is queued until the queue closes (the writer cannot write).
    fn refuse_all(&self, rx: &mut mpsc::Receiver<WriterMsg>) {
        while let Some(m) = rx.blocking_recv() {
            match m {
                WriterMsg::Append(_, reply) => drop(reply.send(Err(poisoned_error()))),
                WriterMsg::Head(reply) => drop(reply.send(Err(poisoned_error()))),
            }
        }
    }

    /// Checks and inserts one group in one transaction and commits it to the WAL (not yet
    /// synced). `head` and `head_hash` are the log's last record as this writer wrote it,
    /// synced or not, and move on with the group only if it commits.
    fn commit_group(
        &self,
        conn: &mut Connection,
        msgs: Vec<WriterMsg>,
        head: &mut u64,
        head_hash: &mut String,
        unsynced: &VecDeque<Unsynced>,
    ) -> Answers {
        use std::sync::atomic::Ordering::SeqCst;
        let failures = self.failures.load(SeqCst);
        let mut appends: Vec<Reply> = Vec::with_capacity(msgs.len());
        let mut heads = Vec::new();
        if self.poisoned.load(SeqCst) {
            for msg in msgs {
                match msg {
                    WriterMsg::Append(_, reply) => appends.push((reply, Err(poisoned_error()))),
                    WriterMsg::Head(reply) => heads.push(reply),
                }
            }
            return Answers {
                wrote: None,
                appends,
                heads,
            };
        }
        // Sized for the group: growing these maps showed in the writer's profile.
        let mut staged = Staged {
            streams: foldhash::HashMap::with_capacity_and_hasher(msgs.len(), Default::default()),
            ids: foldhash::HashMap::with_capacity_and_hasher(msgs.len(), Default::default()),
        };
        let mut wrote = false;
        let mut committed: Vec<Committed> = Vec::with_capacity(msgs.len());
        let (mut pos, mut hash_now) = (*head, head_hash.clone());
        // Each record's time text, written into one buffer.
        let mut recorded_at = String::with_capacity(32);

        let result = (|| -> Result<(), StoreError> {
            let tx = conn.transaction().map_err(unavailable)?;
            {
                let mut insert = tx
                    .prepare_cached("INSERT INTO events (position, stream, version, event_id, event_type, schema_version, recorded_at, data, hash, prev_hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)")
                    .map_err(unavailable)?;
                for msg in msgs {
                    match msg {
                        WriterMsg::Head(reply) => heads.push(reply),
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
                            // The index's lock only for the checks: the syncer takes it to
                            // apply the groups before this one.
                            let checked = {
                                let idx = self.index.read().expect("index lock");
                                let view = View {
                                    idx: &idx,
                                    unsynced,
                                    staged: &staged,
                                };
                                check_batch(&tx, &view, &batch)
                            };
                            let outcome = match checked {
                                Ok(Check::Recorded(dup)) => Ok(dup),
                                Err(e) => Err(e),
                                Ok(Check::Next(mut version)) => {
                                    let mut recorded = Vec::with_capacity(batch.events.len());
                                    let AppendBatch { stream, events, .. } = batch;
                                    // The stream's name is moved into the last record and
                                    // cloned for the others and for a stream new to the group.
                                    let (mut stream, mut left) = (Some(stream), events.len());
                                    for e in events {
                                        left -= 1;
                                        let name = stream.as_deref().expect("the batch's stream");
                                        pos += 1;
                                        version += 1;
                                        // The hash and the event id in stack buffers, the time
                                        // text once for the hash and the row.
                                        recorded_at.clear();
                                        crate::domain::time::write_time(&mut recorded_at, &e.recorded_at);
                                        let mut hash_hex = [0u8; 64];
                                        let hash = chain::record_hash_hex(
                                            &hash_now,
                                            pos,
                                            name,
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
                                                pos as i64,
                                                name,
                                                version as i64,
                                                &*e.event_id.hyphenated().encode_lower(&mut id_text),
                                                e.event_type,
                                                e.schema_version as i64,
                                                &recorded_at,
                                                e.data,
                                                hash,
                                                hash_now,
                                            ])
                                            .map_err(unavailable)?;
                                        match staged.streams.get_mut(name) {
                                            Some(positions) => positions.push(pos),
                                            None => {
                                                staged.streams.insert(name.to_string(), Positions::One(pos));
                                            }
                                        }
                                        let stream = if left == 0 {
                                            stream.take().expect("the batch's stream")
                                        } else {
                                            name.to_string()
                                        };
                                        committed.push(Committed {
                                            record: RecordedEvent {
                                                position: pos,
                                                stream,
                                                version,
                                                event_id: e.event_id,
                                                event_type: e.event_type,
                                                schema_version: e.schema_version,
                                                recorded_at: e.recorded_at,
                                                data: e.data,
                                                hash: hash.to_string(),
                                                prev_hash: std::mem::take(&mut hash_now),
                                            },
                                            memo: e.memo,
                                        });
                                        hash_now.push_str(hash);
                                        staged.ids.insert(e.event_id, pos);
                                        recorded.push((pos, version));
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
                let wrote = wrote.then(|| {
                    (*head, *head_hash) = (pos, hash_now.clone());
                    Wrote {
                        staged: Arc::new(staged),
                        last: pos,
                        hash: hash_now,
                        bytes: committed.iter().map(row_bytes).sum(),
                        committed,
                    }
                });
                Answers { wrote, appends, heads }
            }
            Err(e) => {
                // Nothing of this group is in the log: refuse every request in it, and count
                // the failure first, so that anything queued behind it on the same decisions
                // is refused by its fence.
                self.failures.fetch_add(1, SeqCst);
                tracing::error!(error = %e, "a commit failed; its appends are refused");
                for (reply, _) in appends {
                    let _ = reply.send(Err(e.clone()));
                }
                for reply in heads {
                    let _ = reply.send(Err(e.clone()));
                }
                Answers {
                    wrote: None,
                    appends: Vec::new(),
                    heads: Vec::new(),
                }
            }
        }
    }
}

/// The second half of the writer: syncs the WAL for the groups committed to it, then
/// applies them to the index, the tail and the head, and answers their requests. With
/// `synchronous=NORMAL` a commit writes the WAL without syncing it; an answer is sent only
/// after an fdatasync of the WAL that began after the group's commit returned, so an
/// acknowledged append survives power loss as with `synchronous=FULL`, and a group's sync
/// overlaps the next group's inserts. SQLite's own checkpoints still sync the WAL before
/// copying it and the database after, and its recovery keeps only whole transactions.
struct Syncer {
    index: Arc<RwLock<Index>>,
    head_tx: watch::Sender<u64>,
    failures: Arc<std::sync::atomic::AtomicU64>,
    recent: Arc<Recent>,
    poisoned: Arc<std::sync::atomic::AtomicBool>,
    wal: PathBuf,
    /// The WAL, opened read-only, and its inode (reopened should the file ever be another).
    file: Option<(std::fs::File, u64)>,
    fail_sync: Arc<std::sync::atomic::AtomicBool>,
    /// Where it asks for a checkpoint, if the store has a thread for them, and the rows'
    /// bytes since it last asked.
    checkpoints: Option<std::sync::mpsc::SyncSender<()>>,
    unchecked_bytes: u64,
    in_flight: Arc<InFlight>,
}

impl Syncer {
    fn run(mut self, rx: std::sync::mpsc::Receiver<Answers>) {
        while let Ok(first) = rx.recv() {
            let mut groups = vec![first];
            groups.extend(rx.try_iter());
            let n = groups.len();
            // One sync serves every group committed before it began.
            let synced = if groups.iter().any(|g| g.wrote.is_some()) {
                self.sync()
            } else {
                Ok(())
            };
            match synced {
                Ok(()) if !self.poisoned.load(std::sync::atomic::Ordering::SeqCst) => {
                    groups.into_iter().for_each(|g| self.apply(g));
                    // Answered: a small group waiting for them need not wait for the
                    // checkpoint too.
                    self.in_flight.finish(n);
                    self.checkpoint();
                    continue;
                }
                Ok(()) => groups.into_iter().for_each(|g| refuse(g, &poisoned_error())),
                Err(e) => {
                    tracing::error!(error = %e, "the WAL could not be synced: its appends are refused and nothing more is written");
                    self.poisoned.store(true, std::sync::atomic::Ordering::SeqCst);
                    self.failures.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    groups.into_iter().for_each(|g| refuse(g, &poisoned_error()));
                }
            }
            self.in_flight.finish(n);
        }
    }

    fn sync(&mut self) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        if self.fail_sync.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::other("a failure injected by a test"));
        }
        let ino = std::fs::metadata(&self.wal)?.ino();
        if self.file.as_ref().is_none_or(|(_, i)| *i != ino) {
            self.file = Some((std::fs::File::open(&self.wal)?, ino));
        }
        self.file.as_ref().expect("opened above").0.sync_data()
    }

    /// Asks for a checkpoint once enough was written since it last asked. One still running
    /// is not waited for: the bytes count on, and it asks again after the next group.
    fn checkpoint(&mut self) {
        let Some(tx) = &self.checkpoints else { return };
        if self.unchecked_bytes < CHECKPOINT_BYTES {
            return;
        }
        match tx.try_send(()) {
            Ok(()) => self.unchecked_bytes = 0,
            Err(std::sync::mpsc::TrySendError::Full(())) => {}
            Err(std::sync::mpsc::TrySendError::Disconnected(())) => {
                // Only a panic ends that thread early; the writer still checkpoints every
                // WAL_RESTART_BYTES.
                tracing::error!("the store's checkpoint thread stopped; the writer checkpoints less often");
                self.checkpoints = None;
            }
        }
    }

    /// A synced group: into the index, the tail and the head, then its answers.
    fn apply(&mut self, g: Answers) {
        if let Some(Wrote {
            staged,
            last,
            hash,
            committed,
            bytes,
        }) = g.wrote
        {
            self.unchecked_bytes += bytes;
            let mut idx = self.index.write().expect("index lock");
            for (s, ps) in &staged.streams {
                let ps = ps.as_slice();
                match idx.streams.get_mut(s.as_str()) {
                    Some(positions) => positions.extend(ps),
                    None => {
                        let mut positions = StreamPositions::with_capacity(ps.len());
                        positions.extend(ps);
                        idx.streams.insert(s.clone(), positions);
                    }
                }
            }
            // The group's ids in position order, as the id map takes them.
            for c in &committed {
                idx.index_id(&c.record.event_id, c.record.position);
            }
            idx.head = last;
            idx.head_hash = hash;
            let head = Head {
                position: idx.head,
                hash: idx.head_hash.clone(),
            };
            drop(idx);
            self.recent.push(committed);
            self.head_tx.send_replace(last);
            answer(g.appends, g.heads, head);
        } else {
            let head = {
                let idx = self.index.read().expect("index lock");
                Head {
                    position: idx.head,
                    hash: idx.head_hash.clone(),
                }
            };
            answer(g.appends, g.heads, head);
        }
    }
}

fn answer(appends: Vec<Reply>, heads: Vec<oneshot::Sender<Result<Head, StoreError>>>, head: Head) {
    for (reply, outcome) in appends {
        let _ = reply.send(outcome);
    }
    for reply in heads {
        let _ = reply.send(Ok(head.clone()));
    }
}

fn refuse(g: Answers, e: &StoreError) {
    for (reply, _) in g.appends {
        let _ = reply.send(Err(e.clone()));
    }
    for reply in g.heads {
        let _ = reply.send(Err(e.clone()));
    }
}

/// What [`check_batch`] decided about a batch.
enum Check {
    /// The whole batch is already recorded (a retry).
    Recorded(Appended),
    /// Append it: the stream's version now.
    Next(u64),
}

fn check_batch(tx: &rusqlite::Transaction<'_>, view: &View<'_>, batch: &AppendBatch) -> Result<Check, StoreError> {
    // Without allocating while no id is known (the common case, checked for every request).
    let mut any_known = false;
    for e in &batch.events {
        if view.position_of(&e.event_id)?.is_some() {
            any_known = true;
            break;
        }
    }
    if any_known {
        let known: Vec<Option<u64>> = batch
            .events
            .iter()
            .map(|e| view.position_of(&e.event_id))
            .collect::<Result<_, _>>()?;
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
        return Ok(Check::Recorded(Appended {
            recorded,
            duplicate: true,
        }));
    }
    if batch.events.len() > 1 {
        let mut seen = std::collections::HashSet::with_capacity(batch.events.len());
        for e in &batch.events {
            if !seen.insert(e.event_id) {
                return Err(StoreError::DuplicateEventId(e.event_id));
            }
        }
    }
    let actual = view.version(&batch.stream);
    if !batch.expected.admits(actual) {
        return Err(StoreError::VersionConflict {
            stream: batch.stream.clone(),
            expected: batch.expected,
            actual,
        });
    }
    Ok(Check::Next(actual))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Positions are kept in 32 bits while they fit, and the list widens, keeping every one,
    /// at the first that does not.
    #[test]
    fn stream_positions_widen_past_32_bits_and_keep_their_order() {
        let mut ps = StreamPositions::default();
        let mut model: Vec<u64> = Vec::new();
        for p in [1u64, 7, 10_000, u64::from(u32::MAX)] {
            ps.extend(&[p]);
            model.push(p);
        }
        assert!(matches!(ps, StreamPositions::Narrow(_)));
        let wide = [u64::from(u32::MAX) + 1, 1 << 40];
        ps.extend(&wide);
        model.extend(wide);
        assert!(matches!(ps, StreamPositions::Wide(_)));
        ps.extend(&[(1 << 40) + 5]);
        model.push((1 << 40) + 5);
        assert_eq!(ps.len(), model.len());
        assert_eq!(ps.iter().collect::<Vec<_>>(), model);
        for from in 0..=model.len() + 1 {
            for limit in 0..=model.len() + 1 {
                let want: Vec<u64> = model.iter().skip(from).take(limit).copied().collect();
                assert_eq!(ps.range(from, limit), want, "from {from}, limit {limit}");
            }
        }
        let mut narrow = StreamPositions::with_capacity(2);
        narrow.extend(&[3, 4]);
        assert_eq!(narrow.range(1, 5), vec![4]);
        assert_eq!(narrow, StreamPositions::Narrow(vec![3, 4]));
    }
}
