//! Keeps a live [`Books`] caught up with the log: load the snapshot, check it against the
//! log, catch up, follow live appends, and snapshot again.

use super::Books;
use super::attribution::{SiteAttribution, all_sites};
use crate::digest::Sha256;
use crate::domain::Event;
use crate::store::{EventStore, READ_PAGE_EVENTS_MAX, RecordedEvent, StoreError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::watch;

/// The snapshot file format; a file with another format is ignored and rebuilt.
pub const SNAPSHOT_FORMAT: u32 = 4;
/// A live follower snapshots after applying this many events.
pub const SNAPSHOT_EVERY_EVENTS: u64 = 50_000;

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    format: u32,
    position: u64,
    chain_hash: String,
    /// SHA-256 of the `books` JSON text, so a damaged file is detected.
    checksum: String,
    books: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot read the snapshot: {0}")]
    Io(#[from] std::io::Error),
    #[error("the snapshot is damaged: {0}")]
    Damaged(String),
}

/// Reads and checks a snapshot file (format, checksum, parse). Does not consult the log.
pub fn read_snapshot(path: &Path) -> Result<Books, SnapshotError> {
    let text = std::fs::read_to_string(path)?;
    let f: SnapshotFile = serde_json::from_str(&text).map_err(|e| SnapshotError::Damaged(e.to_string()))?;
    if f.format != SNAPSHOT_FORMAT {
        return Err(SnapshotError::Damaged(format!(
            "format {} is not {SNAPSHOT_FORMAT}",
            f.format
        )));
    }
    if hex::encode(Sha256::digest(f.books.as_bytes())) != f.checksum {
        return Err(SnapshotError::Damaged("checksum mismatch".into()));
    }
    let books: Books = serde_json::from_str(&f.books).map_err(|e| SnapshotError::Damaged(e.to_string()))?;
    if books.position != f.position || books.chain_hash != f.chain_hash {
        return Err(SnapshotError::Damaged("header and content disagree".into()));
    }
    Ok(books)
}

/// Writes a snapshot atomically: a temporary file, fsync, rename.
pub fn write_snapshot(path: &Path, books: &Books) -> std::io::Result<()> {
    let text = serde_json::to_string(books).map_err(std::io::Error::other)?;
    let f = SnapshotFile {
        format: SNAPSHOT_FORMAT,
        position: books.position,
        chain_hash: books.chain_hash.clone(),
        checksum: hex::encode(Sha256::digest(text.as_bytes())),
        books: text,
    };
    // A name of its own per write: two saves at once (the follower's and a shutdown's) must
    // not write through the same temporary file.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("{}.{seq}.tmp", std::process::id()));
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(serde_json::to_string(&f).map_err(std::io::Error::other)?.as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Folds recorded events into books, parsing each event once.
pub fn fold(books: &mut Books, page: &[RecordedEvent]) -> Result<(), StoreError> {
    page.iter().try_for_each(|r| fold_one(books, r, None))
}

/// Folds one record (see [`Event::of_record`]).
fn fold_one(books: &mut Books, r: &RecordedEvent, decided: Option<&Event>) -> Result<(), StoreError> {
    books.apply(r, &*Event::of_record(r, decided)?);
    Ok(())
}

/// Most events folded under one hold of the books' write lock: readers wait at most that long.
const FOLD_CHUNK_EVENTS: usize = 256;

/// Moves a sound snapshot that the log contradicts aside, as evidence (the log may have
/// lost its tail), unless an earlier one is kept there already; returns where it is kept.
pub fn quarantine(snapshot: &Path) -> PathBuf {
    let kept = quarantine_path(snapshot);
    if !kept.exists() {
        let _ = std::fs::rename(snapshot, &kept);
    }
    kept
}

/// Where a snapshot that disagreed with the log is kept for the audit.
pub fn quarantine_path(snapshot: &Path) -> PathBuf {
    PathBuf::from(format!("{}.rejected", snapshot.display()))
}

/// Where the snapshot of a store lives: beside an SQLite file, else under `./data`.
pub fn snapshot_path_for(url: &str) -> PathBuf {
    sidecar_path(url, "snapshot.json", "projections")
}

/// A file kept for a store: `{path}.{suffix}` beside an SQLite file, else
/// `data/{name}-{first 16 hex digits of SHA-256(url)}.{suffix}`.
pub fn sidecar_path(url: &str, suffix: &str, name: &str) -> PathBuf {
    let path = url.strip_prefix("sqlite://").unwrap_or(url);
    if url.starts_with("sqlite://") || !url.contains("://") {
        PathBuf::from(format!("{path}.{suffix}"))
    } else {
        let mut h = Sha256::new();
        h.update(url.as_bytes());
        PathBuf::from(format!("data/{name}-{}.{suffix}", &hex::encode(h.finalize())[..16]))
    }
}

pub struct Projections {
    books: RwLock<Books>,
    store: Arc<dyn EventStore>,
    snapshot: Option<PathBuf>,
    applied_tx: watch::Sender<u64>,
    /// Why the snapshot was not used on start, if it was not.
    pub snapshot_note: Option<String>,
    /// Every site's supply-mix attribution, as of the position it was computed at.
    attribution: Mutex<Option<(u64, Arc<Vec<SiteAttribution>>)>>,
}

impl Projections {
    /// Loads the snapshot if it is sound and agrees with the log, then catches up.
    pub async fn open(store: Arc<dyn EventStore>, snapshot: Option<PathBuf>) -> Result<Arc<Self>, StoreError> {
        let mut note = None;
        let mut books = Books::default();
        if let Some(path) = &snapshot
            && path.exists()
        {
            match read_snapshot(path) {
                Ok(b) => match check_against_log(store.as_ref(), &b).await? {
                    None => books = b,
                    Some(why) => {
                        // A sound snapshot that the log contradicts is evidence (the log may
                        // have lost its tail): keep the first such one for the audit rather
                        // than overwrite it with projections of the shorter log.
                        let kept = quarantine(path);
                        note = Some(format!(
                            "snapshot ignored, rebuilt from the log: {why}; the snapshot is kept as {}",
                            kept.display()
                        ));
                    }
                },
                Err(e) => note = Some(format!("snapshot ignored, rebuilt from the log: {e}")),
            }
        }
        let (applied_tx, _) = watch::channel(books.position);
        let p = Arc::new(Self {
            books: RwLock::new(books),
            attribution: Mutex::new(None),
            store,
            snapshot,
            applied_tx,
            snapshot_note: note,
        });
        p.catch_up().await?;
        Ok(p)
    }

    /// Applies everything recorded after the current position.
    pub async fn catch_up(&self) -> Result<u64, StoreError> {
        loop {
            let after = self.position();
            if self.fold_next(after).await? == 0 {
                return Ok(after);
            }
        }
    }

    /// Folds the next page after `after`: from what this process's writer just committed
    /// (the events as the ledger decided them) when it is at hand, else read from the store.
    /// Returns how many records the page held (0: nothing after `after`).
    async fn fold_next(&self, after: u64) -> Result<u64, StoreError> {
        if let Some(recent) = self.store.recent(after, READ_PAGE_EVENTS_MAX) {
            self.fold_each(recent.iter().map(|c| (&c.record, c.memo::<Event>())))?;
            return Ok(recent.len() as u64);
        }
        let page = self.store.read_all(after, READ_PAGE_EVENTS_MAX).await?;
        self.fold_each(page.iter().map(|r| (r, None)))?;
        Ok(page.len() as u64)
    }

    /// Folds records in position order, [`FOLD_CHUNK_EVENTS`] under one hold of the lock.
    /// Only those after the current position: a page read before a concurrent catch-up must
    /// not be folded twice.
    fn fold_each<'a>(
        &self,
        records: impl Iterator<Item = (&'a RecordedEvent, Option<&'a Event>)>,
    ) -> Result<(), StoreError> {
        let mut records = records.peekable();
        while records.peek().is_some() {
            let mut books = self.books.write().expect("books lock");
            let result = records.by_ref().take(FOLD_CHUNK_EVENTS).try_for_each(|(r, decided)| {
                if r.position <= books.position {
                    return Ok(());
                }
                fold_one(&mut books, r, decided)
            });
            let pos = books.position;
            drop(books);
            self.applied_tx.send_replace(pos);
            result?;
        }
        Ok(())
    }

    /// Follows the log until the store fails, snapshotting every [`SNAPSHOT_EVERY_EVENTS`].
    pub async fn follow(self: Arc<Self>) -> Result<(), StoreError> {
        let mut head = self.store.watch_head();
        let mut since_snapshot = 0u64;
        // Whether to ask the store even though this process's head has not moved past us:
        // at the start, and after each bounded wait, for appends made by other processes
        // (which the watch may not see). Otherwise a follower that caught up with the tail
        // waits for the head, instead of reading the store for nothing after every commit.
        let mut look = true;
        loop {
            let after = self.position();
            let moved = *head.borrow_and_update() > after;
            let read = if look || moved { self.fold_next(after).await? } else { 0 };
            look = false;
            if read == 0 {
                let waited =
                    tokio::time::timeout(std::time::Duration::from_millis(500), head.wait_for(|h| *h > after)).await;
                look = waited.is_err();
                continue;
            }
            since_snapshot += read;
            if since_snapshot >= SNAPSHOT_EVERY_EVENTS {
                since_snapshot = 0;
                if let Err(e) = self.save() {
                    tracing::warn!(error = %e, "could not write the projection snapshot");
                }
            }
        }
    }

    /// Where this engine keeps its snapshot, if anywhere.
    pub fn snapshot_path(&self) -> Option<&Path> {
        self.snapshot.as_deref()
    }

    pub fn position(&self) -> u64 {
        self.books.read().expect("books lock").position
    }

    /// Waits until the books have applied `position`, at most `timeout`.
    pub async fn wait_for(&self, position: u64, timeout: std::time::Duration) -> bool {
        let mut rx = self.applied_tx.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|p| *p >= position))
            .await
            .is_ok()
    }

    pub fn read<T>(&self, f: impl FnOnce(&Books) -> T) -> T {
        f(&self.books.read().expect("books lock"))
    }

    /// Reads the books together with every site's attribution, computed once per position
    /// (a site's attribution depends on all its hours, so it is recomputed, not folded).
    pub fn read_attribution<T>(&self, f: impl FnOnce(&Books, &[SiteAttribution]) -> T) -> T {
        let books = self.books.read().expect("books lock");
        let sites = {
            let mut cache = self.attribution.lock().expect("attribution lock");
            match &*cache {
                Some((p, sites)) if *p == books.position => sites.clone(),
                _ => {
                    let sites = Arc::new(all_sites(&books));
                    *cache = Some((books.position, sites.clone()));
                    sites
                }
            }
        };
        f(&books, &sites)
    }

    /// A tenant's statement with its supply-mix attribution, or `None` for an unknown tenant.
    pub fn statement(&self, tenant: &str, period: crate::domain::time::Period) -> Option<super::Statement> {
        self.read_attribution(|b, sites| {
            b.statement(tenant, period).map(|mut st| {
                let frozen = b
                    .closed_attribution
                    .get(&st.period)
                    .and_then(|by| by.get(tenant))
                    .cloned();
                st.attribution =
                    Some(frozen.unwrap_or_else(|| super::attribution::tenant_attribution(b, sites, tenant, period)));
                st
            })
        })
    }

    /// Writes the snapshot (if this engine has a snapshot path).
    pub fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.snapshot else {
            return Ok(());
        };
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let books = self.books.read().expect("books lock").clone();
        write_snapshot(path, &books)
    }
}

/// Whether a snapshot agrees with the log: the log reaches its position and the event there
/// carries its chain hash. `Some(reason)` when it does not.
pub async fn check_against_log(store: &dyn EventStore, books: &Books) -> Result<Option<String>, StoreError> {
    crate::snapfile::check_against_log(store, books.position, &books.chain_hash).await
}
