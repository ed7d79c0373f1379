//! Every recorded reading, as the write model needs it, with only what meters and jobs
//! bound kept in memory.
//!
//! The write state must know every reading: a repost is recognised by its meter, flow and
//! interval, an overlap is refused, a correction names a reading by its event id. Readings
//! are most of the log, so this is the part of the state that grows with events:
//!
//! - each reading's details are one fixed 92-byte [`Slot`]. A ledger with a home for its
//!   readings (`serve`, `apply`, `import`, the audit) keeps the slots in an append-only file
//!   there and reads one back only on the rare paths that need it (a retry, a conflict, a
//!   correction); others keep them in memory. A slot never changes once written: what a
//!   correction changes lives in an in-memory side table, and a job id is interned;
//! - each meter's readings of one flow are a sorted list of **runs**: back-to-back readings
//!   of one length (a meter posting every 15 minutes makes one run, whatever its number of
//!   readings, and whatever order a few of them arrive in: a reading that closes a gap
//!   joins the runs on either side), plus 4 bytes a reading naming its slot;
//! - an id table keyed by 64 bits of the event id.
//!
//! The slot file is a cache of the log like the snapshot that names it: the snapshot records
//! its generation and how many slots it covered, the file is fsynced before the snapshot is
//! written, and an open truncates what was appended after it (the log's tail folds it in
//! again). A rebuild starts a new generation in a new file, so a snapshot never names slots
//! of another build.

use super::events::{ReadingCorrected, ReadingRecorded, meter_stream};
use super::ids::{JobId, MeterId};
use super::quantity::EnergyWh;
use super::tariff::Flow;
use super::time::Interval;
use crate::idmap::IdMap;
use crate::snapfile::{Dec, Enc, Fields, SnapError};
use chrono::{DateTime, TimeDelta, Utc};
use rust_decimal::Decimal;
use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// A reading as the write model sees it (materialised from its slot on demand).
#[derive(Clone, Debug, PartialEq)]
pub struct ReadingState {
    pub meter_id: MeterId,
    pub flow: Flow,
    pub interval: Interval,
    pub posted_wh: EnergyWh,
    pub current_wh: EnergyWh,
    pub current_eu: Decimal,
    pub tariff_version: u32,
    pub stream: String,
    pub version: u64,
    /// How many corrections it has had, and the last one: (event id, Wh, reason).
    pub corrections: u32,
    pub last_correction: Option<(Uuid, EnergyWh, String)>,
    pub job_id: Option<JobId>,
}

/// One reading as it was recorded. `job` is 1 + its index in [`Readings::jobs`], or 0.
#[derive(Clone, Debug, PartialEq)]
struct Slot {
    event_id: Uuid,
    series: u32,
    job: u32,
    version: u64,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    posted_wh: EnergyWh,
    posted_eu: Decimal,
    tariff_version: u32,
}

/// Bytes of one slot, in the slot file and in a snapshot of in-memory slots.
const SLOT_BYTES: usize = 16 + 4 + 4 + 8 + 12 + 12 + 16 + 16 + 4;

/// A time as 12 bytes: seconds, then nanoseconds ([`take_time`] reads it back).
fn time_bytes(t: &DateTime<Utc>) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[..8].copy_from_slice(&t.timestamp().to_le_bytes());
    b[8..].copy_from_slice(&t.timestamp_subsec_nanos().to_le_bytes());
    b
}

impl Slot {
    fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.event_id.as_u128().to_le_bytes());
        out.extend_from_slice(&self.series.to_le_bytes());
        out.extend_from_slice(&self.job.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&time_bytes(&self.start));
        out.extend_from_slice(&time_bytes(&self.end));
        out.extend_from_slice(&self.posted_wh.value().serialize());
        out.extend_from_slice(&self.posted_eu.serialize());
        out.extend_from_slice(&self.tariff_version.to_le_bytes());
    }

    fn read_from(b: &[u8; SLOT_BYTES]) -> Result<Self, SnapError> {
        let mut c = Fields(b);
        Ok(Slot {
            event_id: Uuid::from_u128(u128::from_le_bytes(c.take())),
            series: u32::from_le_bytes(c.take()),
            job: u32::from_le_bytes(c.take()),
            version: u64::from_le_bytes(c.take()),
            start: take_time(&mut c)?,
            end: take_time(&mut c)?,
            posted_wh: EnergyWh::new(Decimal::deserialize(c.take())).map_err(damaged)?,
            posted_eu: Decimal::deserialize(c.take()),
            tariff_version: u32::from_le_bytes(c.take()),
        })
    }
}

/// What a correction changed in a reading (the slot keeps what was posted).
#[derive(Clone, Debug, PartialEq)]
struct Correction {
    current_wh: EnergyWh,
    current_eu: Decimal,
    corrections: u32,
    last: (Uuid, EnergyWh, String),
}

/// Back-to-back readings of one length: reading `k` spans `start + k·len` to
/// `start + (k+1)·len`, and its slot is `Series::slots[first + k]`.
#[derive(Clone, Debug, PartialEq)]
struct Run {
    start: DateTime<Utc>,
    len: TimeDelta,
    count: u32,
    first: u32,
}

impl Run {
    /// Nanoseconds from the run's start to reading `k`'s start. A run of more than one
    /// reading is only ever built where every such offset fits (see [`Series::insert`]).
    fn offset(&self, k: u32) -> i64 {
        if k == 0 {
            return 0;
        }
        self.len.num_nanoseconds().expect("a run's length fits") * i64::from(k)
    }
    fn start_of(&self, k: u32) -> DateTime<Utc> {
        self.start + TimeDelta::nanoseconds(self.offset(k))
    }
    fn end_of(&self, k: u32) -> DateTime<Utc> {
        self.start_of(k) + self.len
    }
    /// The last reading that starts before `t` (`strictly`) or at or before it.
    fn last_starting_before(&self, t: DateTime<Utc>, strictly: bool) -> Option<u32> {
        if t < self.start || (strictly && t == self.start) {
            return None;
        }
        if self.count == 1 {
            return Some(0);
        }
        let d = (t - self.start).num_nanoseconds().map_or(i64::MAX, |n| n) - i64::from(strictly);
        let len = self.len.num_nanoseconds().expect("a run's length fits");
        Some(u32::try_from(d / len).unwrap_or(u32::MAX).min(self.count - 1))
    }
    /// The part of this run from reading `from` on (`count` readings).
    fn tail(&self, from: u32, count: u32) -> Run {
        Run {
            start: self.start_of(from),
            len: self.len,
            count,
            first: self.first + from,
        }
    }
}

/// One meter's readings of one flow: runs sorted by start (the readings they hold are in
/// start order across runs too), and each reading's slot.
#[derive(Clone, Debug, PartialEq)]
struct Series {
    meter_id: MeterId,
    flow: Flow,
    runs: Vec<Run>,
    slots: Vec<u32>,
}

impl Series {
    /// The reading whose interval overlaps `interval`, if any: `(start, end, slot)`.
    /// Recorded intervals of one series never overlap, so the only candidate is the last
    /// one that starts before `interval` ends.
    fn overlapping(&self, interval: &Interval) -> Option<(DateTime<Utc>, DateTime<Utc>, u32)> {
        let i = self.runs.partition_point(|r| r.start < interval.end);
        let r = self.runs.get(i.checked_sub(1)?)?;
        let k = r.last_starting_before(interval.end, true)?;
        let end = r.end_of(k);
        (end > interval.start).then(|| (r.start_of(k), end, self.slots[(r.first + k) as usize]))
    }

    /// Adds a reading in start order. A reading with the start of a recorded one (only in
    /// a tampered log) takes its place, as a map by start would; a reading that falls
    /// inside a run splits it, so the runs always list every reading in start order.
    fn insert(&mut self, start: DateTime<Utc>, end: DateTime<Utc>, slot: u32) {
        let len = end - start;
        let next = self.slots.len() as u32;
        let single = Run {
            start,
            len,
            count: 1,
            first: next,
        };
        let i = self.runs.partition_point(|r| r.start <= start);
        if let Some(j) = i.checked_sub(1) {
            let r = self.runs[j].clone();
            let k = r
                .last_starting_before(start, false)
                .expect("the run starts at or before");
            let after = r.count - k - 1;
            if r.start_of(k) == start {
                if r.len == len {
                    self.slots[(r.first + k) as usize] = slot;
                    return;
                }
                let mut parts: Vec<Run> = Vec::with_capacity(3);
                if k > 0 {
                    parts.push(Run { count: k, ..r.clone() });
                }
                parts.push(single);
                if after > 0 {
                    parts.push(r.tail(k + 1, after));
                }
                self.runs.splice(j..=j, parts);
                crate::vecs::push_lean(&mut self.slots, slot);
                return;
            }
            if after > 0 {
                let parts = [
                    Run {
                        count: k + 1,
                        ..r.clone()
                    },
                    single,
                    r.tail(k + 1, after),
                ];
                self.runs.splice(j..=j, parts);
                crate::vecs::push_lean(&mut self.slots, slot);
                return;
            }
            if r.len == len && r.end_of(r.count - 1) == start && run_fits(len, u64::from(r.count) + 1) {
                // It follows the run back to back: the run takes it, its slot listed right
                // after the run's own. That is the end of the list unless readings of later
                // intervals arrived first (a backfill, or clients racing); then theirs move
                // up one, and a run this reading now reaches takes the run in.
                let p = r.first + r.count;
                self.insert_slot(p, slot, None);
                self.runs[j].count += 1;
                self.join_next(j);
                return;
            }
        }
        // It ends where the next run starts: that run takes it first (readings arriving
        // latest first).
        if let Some(n) = self.runs.get(i)
            && n.len == len
            && n.start == end
            && run_fits(len, u64::from(n.count) + 1)
        {
            let p = n.first;
            self.insert_slot(p, slot, Some(i));
            let n = &mut self.runs[i];
            n.start = start;
            n.count += 1;
            return;
        }
        self.runs.insert(i, single);
        crate::vecs::push_lean(&mut self.slots, slot);
    }

    /// Lists `slot` at position `p` of the series' slots: the slots from `p` on, and the
    /// runs that name them (but `own`, whose first slot `p` becomes), move up one.
    fn insert_slot(&mut self, p: u32, slot: u32, own: Option<usize>) {
        if p as usize == self.slots.len() {
            crate::vecs::push_lean(&mut self.slots, slot);
            return;
        }
        crate::vecs::reserve_lean(&mut self.slots, 1);
        self.slots.insert(p as usize, slot);
        for (i, r) in self.runs.iter_mut().enumerate() {
            if r.first >= p && Some(i) != own {
                r.first += 1;
            }
        }
    }

    /// Joins run `j + 1` into run `j` when it starts where run `j` ends, with the same
    /// length and its slots listed right after.
    fn join_next(&mut self, j: usize) {
        let (Some(r), Some(n)) = (self.runs.get(j), self.runs.get(j + 1)) else {
            return;
        };
        if n.len == r.len
            && n.start == r.end_of(r.count - 1)
            && n.first == r.first + r.count
            && run_fits(r.len, u64::from(r.count) + u64::from(n.count))
        {
            let more = n.count;
            self.runs[j].count += more;
            self.runs.remove(j + 1);
        }
    }
}

/// Whether a run of `count` readings of `len` can be one run: every reading's offset from
/// the run's start fits in nanoseconds (and the count in a `u32`).
fn run_fits(len: TimeDelta, count: u64) -> bool {
    u32::try_from(count).is_ok()
        && len
            .num_nanoseconds()
            .is_some_and(|n| n > 0 && i64::try_from(count).is_ok_and(|c| n.checked_mul(c).is_some()))
}

/// Slots per chunk of [`Chunked`].
const CHUNK: usize = 1 << 16;

/// A list that grows a fixed chunk at a time: growing never copies it, nor holds two copies
/// at once (a `Vec` of 10M slots grows by doubling to 1.6 GB, briefly beside the old 0.8 GB).
#[derive(Clone, Debug, PartialEq)]
struct Chunked<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Self {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Chunked<T> {
    fn push(&mut self, v: T) {
        if self.len.is_multiple_of(CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        self.chunks.last_mut().expect("a chunk with room").push(v);
        self.len += 1;
    }
    fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }
    fn get(&self, i: usize) -> &T {
        &self.chunks[i / CHUNK][i % CHUNK]
    }
}

/// The slot file's first bytes: magic, then the generation.
const SLOT_MAGIC: &[u8; 8] = b"WLSLOTS\x01";
const SLOT_HEADER: u64 = 16;
/// Slots gathered in memory before they are written to the file in one write.
const SLOT_TAIL_MAX: usize = 4096;

/// Slots in an append-only file: those before `on_disk` are in it, the rest in `tail`.
#[derive(Debug)]
struct SlotFile {
    /// An exclusive lock on `home/lock`: one process at a time keeps its slots in a home
    /// (another would cut or remove files this one is using).
    lock: std::fs::File,
    home: PathBuf,
    generation: u64,
    file: std::fs::File,
    on_disk: u64,
    tail: Vec<Slot>,
    /// Set while writes fail (logged once; the slots stay in `tail` until a write succeeds).
    failing: bool,
}

fn slot_file_path(home: &Path, generation: u64) -> PathBuf {
    home.join(format!("slots-{generation:016x}"))
}

/// Removes the slot files of `home` other than `keep`'s generation.
fn remove_other_generations(home: &Path, keep: u64) {
    let keep = slot_file_path(home, keep);
    if let Ok(dir) = std::fs::read_dir(home) {
        for e in dir.flatten() {
            let p = e.path();
            let ours = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("slots-"));
            if ours && p != keep {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}

/// The lock on `home`, or `None` if another process (or another state of this one) holds
/// it.
fn lock_home(home: &Path) -> std::io::Result<Option<std::fs::File>> {
    std::fs::create_dir_all(home)?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(home.join("lock"))?;
    Ok(f.try_lock().is_ok().then_some(f))
}

impl Drop for SlotFile {
    /// Releases the lock explicitly: a `flock` lives as long as any copy of its descriptor,
    /// and a process spawned at the wrong moment holds a copy until it execs.
    fn drop(&mut self) {
        let _ = self.lock.unlock();
    }
}

impl SlotFile {
    /// A new, empty generation in `home` (older generations are removed); `None` if another
    /// process keeps its slots there.
    fn create(home: &Path) -> std::io::Result<Option<Self>> {
        let Some(lock) = lock_home(home)? else {
            return Ok(None);
        };
        let generation: u64 = rand::random();
        let path = slot_file_path(home, generation);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let mut header = SLOT_MAGIC.to_vec();
        header.extend_from_slice(&generation.to_le_bytes());
        file.write_all_at(&header, 0)?;
        remove_other_generations(home, generation);
        Ok(Some(Self {
            lock,
            home: home.to_path_buf(),
            generation,
            file,
            on_disk: 0,
            tail: Vec::new(),
            failing: false,
        }))
    }

    /// The generation a snapshot names, cut back to the `count` slots it covered.
    fn open(home: &Path, generation: u64, count: u64) -> Result<Self, SnapError> {
        let lock =
            lock_home(home)?.ok_or_else(|| damaged(format!("{} is in use by another process", home.display())))?;
        let path = slot_file_path(home, generation);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => damaged(format!("its slot file {} is missing", path.display())),
                _ => SnapError::Io(e),
            })?;
        let mut header = [0u8; SLOT_HEADER as usize];
        file.read_exact_at(&mut header, 0)?;
        if &header[..8] != SLOT_MAGIC || header[8..] != generation.to_le_bytes() {
            return Err(damaged(format!(
                "{} is not generation {generation:016x}",
                path.display()
            )));
        }
        let want = SLOT_HEADER + count * SLOT_BYTES as u64;
        let have = file.metadata()?.len();
        if have < want {
            return Err(damaged(format!(
                "{} holds {} slots of {count}",
                path.display(),
                have.saturating_sub(SLOT_HEADER) / SLOT_BYTES as u64
            )));
        }
        if have > want {
            file.set_len(want)?;
        }
        remove_other_generations(home, generation);
        Ok(Self {
            lock,
            home: home.to_path_buf(),
            generation,
            file,
            on_disk: count,
            tail: Vec::new(),
            failing: false,
        })
    }

    fn len(&self) -> usize {
        self.on_disk as usize + self.tail.len()
    }

    fn get(&self, i: usize) -> Slot {
        if let Some(at) = (i as u64).checked_sub(self.on_disk) {
            return self.tail[at as usize].clone();
        }
        let mut b = [0u8; SLOT_BYTES];
        let path = || slot_file_path(&self.home, self.generation);
        self.file
            .read_exact_at(&mut b, SLOT_HEADER + i as u64 * SLOT_BYTES as u64)
            .unwrap_or_else(|e| panic!("reading slot {i} of {}: {e}", path().display()));
        Slot::read_from(&b).unwrap_or_else(|e| panic!("slot {i} of {}: {e}", path().display()))
    }

    fn push(&mut self, s: Slot) {
        self.tail.push(s);
        if self.tail.len() >= SLOT_TAIL_MAX {
            match self.write_tail() {
                Ok(()) => self.failing = false,
                Err(e) => {
                    if !self.failing {
                        tracing::error!(
                            "readings file {}: {e}; its slots stay in memory until a write succeeds",
                            slot_file_path(&self.home, self.generation).display()
                        );
                    }
                    self.failing = true;
                }
            }
        }
    }

    fn write_tail(&mut self) -> std::io::Result<()> {
        if self.tail.is_empty() {
            return Ok(());
        }
        let mut out = Vec::with_capacity(self.tail.len() * SLOT_BYTES);
        for s in &self.tail {
            s.write_to(&mut out);
        }
        self.file
            .write_all_at(&out, SLOT_HEADER + self.on_disk * SLOT_BYTES as u64)?;
        self.on_disk += self.tail.len() as u64;
        self.tail.clear();
        Ok(())
    }
}

/// The id map beside a slot file, brought to exactly its slots: what it holds past them is
/// dropped, and what it lacks (lost with its memory after a crash) is read back from the
/// file.
fn ids_for(f: &SlotFile) -> Result<IdMap, SnapError> {
    let dir = ids_home(&f.home);
    let mut ids = IdMap::open(&dir, crate::idmap::DEFAULT_MEM_MAX)
        .map_err(|e| damaged(format!("its id map {}: {e}", dir.display())))?;
    let n = f.on_disk;
    match n.checked_sub(1) {
        None => ids.clear()?,
        Some(last) if ids.max_value().is_some_and(|m| m > last) => ids.retain_up_to(last)?,
        Some(_) => {}
    }
    // Each map belongs to one generation: its last slot's id must be found at or after it.
    if let Some(c) = ids.covered() {
        let s = f.get(c as usize);
        if ids.get(s.event_id.as_u128())?.is_none_or(|v| v < c) {
            return Err(damaged(format!("its id map {} belongs to other slots", dir.display())));
        }
    }
    let from = ids.covered().map_or(0, |c| c + 1);
    let mut buf = vec![0u8; SLOT_BYTES * 4096];
    let mut at = from;
    while at < n {
        let take = (n - at).min(4096) as usize;
        let b = &mut buf[..take * SLOT_BYTES];
        f.file.read_exact_at(b, SLOT_HEADER + at * SLOT_BYTES as u64)?;
        for (k, rec) in b.chunks_exact(SLOT_BYTES).enumerate() {
            let id = u128::from_le_bytes(rec[..16].try_into().expect("16 bytes"));
            ids.insert(id, at + k as u64)?;
        }
        at += take as u64;
    }
    Ok(ids)
}

/// Where the slots are.
#[derive(Debug)]
enum Slots {
    Memory(Chunked<Slot>),
    File(SlotFile),
}

impl Default for Slots {
    fn default() -> Self {
        Slots::Memory(Chunked::default())
    }
}

impl Slots {
    fn len(&self) -> usize {
        match self {
            Slots::Memory(c) => c.len,
            Slots::File(f) => f.len(),
        }
    }
    fn get(&self, i: usize) -> Slot {
        match self {
            Slots::Memory(c) => c.get(i).clone(),
            Slots::File(f) => f.get(i),
        }
    }
    fn push(&mut self, s: Slot) {
        match self {
            Slots::Memory(c) => c.push(s),
            Slots::File(f) => f.push(s),
        }
    }
}

#[derive(Debug)]
pub struct Readings {
    /// Event id → slot: in memory, or mostly on disk beside the slot file (`ids/`). Declared
    /// first so that it is dropped first (ending its merge) before the slot file lets go of
    /// the home's lock.
    ids: IdMap,
    slots: Slots,
    /// What corrections changed, by slot.
    corrected: HashMap<u32, Correction>,
    /// Job ids, interned: a slot names one by 1 + its index.
    jobs: Vec<JobId>,
    job_index: HashMap<JobId, u32>,
    series: Vec<Series>,
    /// Meter → series index + 1 per flow (0: none yet).
    by_meter: foldhash::HashMap<MeterId, [u32; 4]>,
}

impl Default for Readings {
    fn default() -> Self {
        Self {
            slots: Slots::default(),
            corrected: HashMap::new(),
            jobs: Vec::new(),
            job_index: HashMap::new(),
            series: Vec::new(),
            by_meter: foldhash::HashMap::default(),
            ids: IdMap::memory(),
        }
    }
}

fn ids_home(home: &Path) -> PathBuf {
    home.join("ids")
}

/// Two sets of readings are equal when they hold the same readings in the same order,
/// the same series and corrections, and find every reading by its id, wherever their
/// slots are kept.
impl PartialEq for Readings {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self.series == other.series
            && self.by_meter == other.by_meter
            && self.corrected == other.corrected
            && self.jobs == other.jobs
            && (0..self.len()).all(|i| {
                let s = self.slots.get(i);
                s == other.slots.get(i) && self.slot_of(&s.event_id) == other.slot_of(&s.event_id)
            })
    }
}

fn flow_index(f: Flow) -> usize {
    match f {
        Flow::Generated => 0,
        Flow::Stored => 1,
        Flow::Dispatched => 2,
        Flow::Consumed => 3,
    }
}

const FLOWS: [Flow; 4] = [Flow::Generated, Flow::Stored, Flow::Dispatched, Flow::Consumed];

fn damaged(what: impl std::fmt::Display) -> SnapError {
    SnapError::Damaged(format!("readings: {what}"))
}

/// A time of a fixed-size record, as [`time_bytes`] wrote it.
fn take_time(c: &mut Fields) -> Result<DateTime<Utc>, SnapError> {
    let (secs, nanos) = (i64::from_le_bytes(c.take()), u32::from_le_bytes(c.take()));
    DateTime::from_timestamp(secs, nanos).ok_or_else(|| damaged(format!("time {secs}.{nanos}")))
}

/// A decimal as its 16 bytes (scale included, so `1.50` stays `1.50`).
fn put_decimal<W: std::io::Write>(e: &mut Enc<W>, v: &Decimal) -> std::io::Result<()> {
    e.bytes(&v.serialize())
}

fn get_decimal<R: std::io::Read>(d: &mut Dec<R>) -> Result<Decimal, SnapError> {
    let mut b = [0u8; 16];
    d.fill(&mut b)?;
    Ok(Decimal::deserialize(b))
}

fn get_wh<R: std::io::Read>(d: &mut Dec<R>) -> Result<EnergyWh, SnapError> {
    EnergyWh::new(get_decimal(d)?).map_err(damaged)
}

fn get_id<R: std::io::Read, T>(d: &mut Dec<R>, parse: fn(&str) -> Result<T, String>) -> Result<T, SnapError> {
    parse(&d.string()?).map_err(damaged)
}

/// How a snapshot holds the slots.
const SLOTS_IN_SNAPSHOT: u8 = 0;
const SLOTS_IN_FILE: u8 = 1;

impl Readings {
    /// No readings, their slots kept in a new slot file in `home` (older generations there
    /// are removed), or in memory without one, or if another process keeps its own there
    /// (two servers started from one directory on one shared store), or if the home cannot
    /// be used (a read-only or full disk): the ledger then works as before readings moved to
    /// disk, and saves no snapshot.
    pub fn fresh(home: Option<&Path>) -> Self {
        let mut r = Self::default();
        let Some(home) = home else { return r };
        // The slot file's lock is held once it is created: the id map is then ours to start
        // again.
        let created = SlotFile::create(home).and_then(|f| match f {
            None => Ok(None),
            Some(f) => Ok(Some((
                f,
                IdMap::create(&ids_home(home), crate::idmap::DEFAULT_MEM_MAX)?,
            ))),
        });
        match created {
            Ok(Some((f, ids))) => (r.slots, r.ids) = (Slots::File(f), ids),
            Ok(None) => tracing::warn!(
                "another process keeps its readings in {}; this one keeps them in memory",
                home.display()
            ),
            Err(e) => tracing::warn!(
                "the readings' home {} cannot be used ({e}); this process keeps its readings in memory",
                home.display()
            ),
        }
        r
    }

    /// Where the slots are kept, if in a file.
    pub fn home(&self) -> Option<&Path> {
        match &self.slots {
            Slots::Memory(_) => None,
            Slots::File(f) => Some(&f.home),
        }
    }

    /// Makes every slot and id durable (before a snapshot names them).
    pub fn persist(&mut self) -> std::io::Result<()> {
        let Slots::File(f) = &mut self.slots else { return Ok(()) };
        f.write_tail()?;
        f.failing = false;
        f.file.sync_data()?;
        self.ids.flush()
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.len() == 0
    }

    fn slot_of(&self, id: &Uuid) -> Option<u32> {
        let found = self.ids.get(id.as_u128()).unwrap_or_else(|e| {
            panic!("the readings' id map cannot be read: {e}");
        });
        found.map(|s| s as u32)
    }

    pub fn contains(&self, id: &Uuid) -> bool {
        self.slot_of(id).is_some()
    }

    /// Where a reading is recorded: `(stream, version)`.
    pub fn locate(&self, id: &Uuid) -> Option<(String, u64)> {
        let s = self.slots.get(self.slot_of(id)? as usize);
        Some((meter_stream(&self.series[s.series as usize].meter_id), s.version))
    }

    pub fn get(&self, id: &Uuid) -> Option<ReadingState> {
        let slot = self.slot_of(id)?;
        let s = self.slots.get(slot as usize);
        let series = &self.series[s.series as usize];
        let fix = self.corrected.get(&slot);
        let job_id = match s.job {
            0 => None,
            j => Some(self.jobs[j as usize - 1].clone()),
        };
        Some(ReadingState {
            meter_id: series.meter_id.clone(),
            flow: series.flow,
            interval: Interval {
                start: s.start,
                end: s.end,
            },
            posted_wh: s.posted_wh,
            current_wh: fix.map_or(s.posted_wh, |x| x.current_wh),
            current_eu: fix.map_or(s.posted_eu, |x| x.current_eu),
            tariff_version: s.tariff_version,
            stream: meter_stream(&series.meter_id),
            version: s.version,
            corrections: fix.map_or(0, |x| x.corrections),
            last_correction: fix.map(|x| x.last.clone()),
            job_id,
        })
    }

    /// The recorded reading of this meter and flow whose interval overlaps `interval`, if
    /// any: `(start, end, event id)`.
    pub fn overlapping(
        &self,
        meter: &MeterId,
        flow: Flow,
        interval: &Interval,
    ) -> Option<(DateTime<Utc>, DateTime<Utc>, Uuid)> {
        let series = self.by_meter.get(meter)?[flow_index(flow)].checked_sub(1)?;
        let (start, end, slot) = self.series[series as usize].overlapping(interval)?;
        Some((start, end, self.slots.get(slot as usize).event_id))
    }

    /// Records a reading event (its stream version is `version`). A second reading of the
    /// same series and start (only in a tampered log) replaces the first in the series, as
    /// the map it stands for would.
    pub fn insert(&mut self, event_id: Uuid, r: &ReadingRecorded, version: u64) {
        let fi = flow_index(r.flow);
        // Looked up before it is inserted: the meter's id is cloned only for a new meter.
        let entry = match self.by_meter.get_mut(&r.meter_id) {
            Some(e) => e,
            None => self.by_meter.entry(r.meter_id.clone()).or_insert([0; 4]),
        };
        if entry[fi] == 0 {
            self.series.push(Series {
                meter_id: r.meter_id.clone(),
                flow: r.flow,
                runs: Vec::new(),
                slots: Vec::new(),
            });
            entry[fi] = self.series.len() as u32;
        }
        let series = entry[fi] - 1;
        let job = match &r.job_id {
            None => 0,
            Some(j) => match self.job_index.get(j) {
                Some(&i) => i,
                None => {
                    self.jobs.push(j.clone());
                    let i = self.jobs.len() as u32;
                    self.job_index.insert(j.clone(), i);
                    i
                }
            },
        };
        let slot = self.slots.len() as u32;
        self.slots.push(Slot {
            event_id,
            series,
            job,
            version,
            start: r.start,
            end: r.end,
            posted_wh: r.energy_wh,
            posted_eu: r.price.amount_eu,
            tariff_version: r.price.tariff_version,
        });
        self.series[series as usize].insert(r.start, r.end, slot);
        self.index_id(event_id, slot);
    }

    /// Indexes a reading's id (the same id again, only in a tampered log: the later reading
    /// answers for it). A spill that fails keeps the id in memory ([`IdMap::insert`]).
    fn index_id(&mut self, id: Uuid, slot: u32) {
        if let Err(e) = self.ids.insert(id.as_u128(), u64::from(slot)) {
            tracing::error!("the readings' id map could not write to disk ({e}); it keeps the ids in memory meanwhile");
        }
    }

    /// Writes every reading to a snapshot (`ledger::snapshot`): the slots (or which file
    /// holds them, after [`Readings::persist`]), jobs, corrections, series and id tables,
    /// each as it stands.
    pub fn encode<W: std::io::Write>(&self, e: &mut Enc<W>) -> std::io::Result<()> {
        match &self.slots {
            Slots::Memory(c) => {
                e.u8(SLOTS_IN_SNAPSHOT)?;
                e.u64(c.len as u64)?;
                let mut b = Vec::with_capacity(SLOT_BYTES);
                for s in c.iter() {
                    b.clear();
                    s.write_to(&mut b);
                    e.bytes(&b)?;
                }
            }
            Slots::File(f) => {
                if !f.tail.is_empty() {
                    return Err(std::io::Error::other("the readings are not all written yet"));
                }
                e.u8(SLOTS_IN_FILE)?;
                e.u64(f.generation)?;
                e.u64(f.on_disk)?;
            }
        }
        e.u64(self.jobs.len() as u64)?;
        for j in &self.jobs {
            e.field(j.as_str().as_bytes())?;
        }
        e.u64(self.corrected.len() as u64)?;
        for (slot, x) in &self.corrected {
            e.u32(*slot)?;
            put_decimal(e, &x.current_wh.value())?;
            put_decimal(e, &x.current_eu)?;
            e.u32(x.corrections)?;
            e.u128(x.last.0.as_u128())?;
            put_decimal(e, &x.last.1.value())?;
            e.field(x.last.2.as_bytes())?;
        }
        e.u64(self.series.len() as u64)?;
        for s in &self.series {
            e.field(s.meter_id.as_str().as_bytes())?;
            e.u8(flow_index(s.flow) as u8)?;
            e.u64(s.runs.len() as u64)?;
            for r in &s.runs {
                e.bytes(&time_bytes(&r.start))?;
                e.i64(r.len.num_seconds())?;
                e.u32(r.len.subsec_nanos() as u32)?;
                e.u32(r.count)?;
                e.u32(r.first)?;
            }
            e.u64(s.slots.len() as u64)?;
            for slot in &s.slots {
                e.u32(*slot)?;
            }
        }
        Ok(())
    }

    /// Reads back what [`Readings::encode`] wrote, checking every cross-reference it can
    /// without reading the slot file; slots in a file are looked for in `home`.
    pub fn decode<R: std::io::Read>(d: &mut Dec<R>, home: Option<&Path>) -> Result<Self, SnapError> {
        let mut r = Readings::default();
        match d.u8()? {
            SLOTS_IN_SNAPSHOT => {
                if home.is_some() {
                    return Err(damaged(
                        "its slots were kept in memory, and this ledger keeps them in a file",
                    ));
                }
                let n = d.count(SLOT_BYTES)?;
                let mut c = Chunked::default();
                for _ in 0..n {
                    c.push(Slot::read_from(&d.array()?)?);
                }
                r.slots = Slots::Memory(c);
            }
            SLOTS_IN_FILE => {
                let (generation, count) = (d.u64()?, d.u64()?);
                let home =
                    home.ok_or_else(|| damaged("its slots are in a file, and this ledger has no readings home"))?;
                if count > u64::from(u32::MAX) {
                    return Err(damaged(format!("{count} slots")));
                }
                r.slots = Slots::File(SlotFile::open(home, generation, count)?);
            }
            f => return Err(damaged(format!("slots kept as {f}"))),
        }
        let slots = r.slots.len();
        let n = d.count(9)?;
        for i in 0..n {
            let j = get_id(d, JobId::parse)?;
            r.job_index.insert(j.clone(), i as u32 + 1);
            r.jobs.push(j);
        }
        let n = d.count(4 + 16 + 16 + 4 + 16 + 16 + 8)?;
        r.corrected.reserve(n);
        for _ in 0..n {
            let slot = d.u32()?;
            if slot as usize >= slots {
                return Err(damaged(format!("correction of slot {slot} of {slots}")));
            }
            let x = Correction {
                current_wh: get_wh(d)?,
                current_eu: get_decimal(d)?,
                corrections: d.u32()?,
                last: (Uuid::from_u128(d.u128()?), get_wh(d)?, d.string()?),
            };
            r.corrected.insert(slot, x);
        }
        let n = d.count(8 + 1 + 8 + 8)?;
        r.series.reserve_exact(n);
        for i in 0..n {
            let meter_id = get_id(d, MeterId::parse)?;
            let flow = *FLOWS.get(d.u8()? as usize).ok_or_else(|| damaged("an unknown flow"))?;
            let entry = r.by_meter.entry(meter_id.clone()).or_insert([0; 4]);
            if entry[flow_index(flow)] != 0 {
                return Err(damaged(format!("meter {meter_id:?} has two {flow} series")));
            }
            entry[flow_index(flow)] = i as u32 + 1;
            let m = d.count(32)?;
            let mut runs = Vec::with_capacity(m);
            for _ in 0..m {
                let b: [u8; 32] = d.array()?;
                let mut c = Fields(&b);
                let start = take_time(&mut c)?;
                let (secs, nanos) = (i64::from_le_bytes(c.take()), i32::from_le_bytes(c.take()));
                let len = TimeDelta::try_seconds(secs)
                    .and_then(|s| s.checked_add(&TimeDelta::nanoseconds(i64::from(nanos))))
                    .ok_or_else(|| damaged(format!("length {secs}.{nanos}")))?;
                let (count, first) = (u32::from_le_bytes(c.take()), u32::from_le_bytes(c.take()));
                let fits = count == 1 || run_fits(len, u64::from(count));
                if count == 0 || !fits {
                    return Err(damaged(format!("a run of {count} readings of {len}")));
                }
                runs.push(Run {
                    start,
                    len,
                    count,
                    first,
                });
            }
            let m = d.count(4)?;
            let mut own = Vec::with_capacity(m);
            for _ in 0..m {
                let slot = d.u32()?;
                if slot as usize >= slots {
                    return Err(damaged(format!("slot {slot} of {slots}")));
                }
                own.push(slot);
            }
            if let Some(run) = runs
                .iter()
                .find(|run| (run.first as usize + run.count as usize) > own.len())
            {
                return Err(damaged(format!(
                    "a run past its series' {} readings: {run:?}",
                    own.len()
                )));
            }
            r.series.push(Series {
                meter_id,
                flow,
                runs,
                slots: own,
            });
        }
        if let Slots::Memory(c) = &r.slots
            && let Some(s) = c
                .iter()
                .find(|s| s.series as usize >= r.series.len() || s.job as usize > r.jobs.len())
        {
            return Err(damaged(format!("a slot of series {} and job {}", s.series, s.job)));
        }
        match &r.slots {
            Slots::Memory(c) => {
                for (i, s) in c.iter().enumerate() {
                    r.ids.insert(s.event_id.as_u128(), i as u64).map_err(SnapError::Io)?;
                }
            }
            Slots::File(f) => r.ids = ids_for(f)?,
        }
        Ok(r)
    }

    /// Applies a correction of reading `corrected` (recorded as event `event_id`).
    pub fn correct(&mut self, event_id: Uuid, c: &ReadingCorrected) {
        let Some(slot) = self.slot_of(&c.corrected_event_id) else {
            return;
        };
        let x = self.corrected.entry(slot).or_insert_with(|| Correction {
            current_wh: c.energy_wh,
            current_eu: c.price.amount_eu,
            corrections: 0,
            last: (event_id, c.energy_wh, String::new()),
        });
        x.current_wh = c.energy_wh;
        x.current_eu = c.price.amount_eu;
        x.corrections += 1;
        x.last = (event_id, c.energy_wh, c.reason.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn slot(event_id: Uuid, version: u64) -> Slot {
        Slot {
            event_id,
            series: 0,
            job: 0,
            version,
            start: DateTime::<Utc>::MIN_UTC,
            end: DateTime::<Utc>::MIN_UTC,
            posted_wh: EnergyWh::parse("1").unwrap(),
            posted_eu: Decimal::ZERO,
            tariff_version: 1,
        }
    }

    #[test]
    fn a_slot_stays_small() {
        // The per-reading cost this module promises, in memory and on disk.
        assert!(std::mem::size_of::<Slot>() <= 96, "{}", std::mem::size_of::<Slot>());
        let mut b = Vec::new();
        slot(Uuid::nil(), 1).write_to(&mut b);
        assert_eq!(b.len(), SLOT_BYTES);
    }

    /// What the runs stand for: readings by start (a later one with the same start takes
    /// its place), each with its end and slot.
    fn model_overlapping(
        m: &BTreeMap<DateTime<Utc>, (DateTime<Utc>, u32)>,
        q: &Interval,
    ) -> Option<(DateTime<Utc>, DateTime<Utc>, u32)> {
        let (s, (e, slot)) = m.range(..q.end).next_back()?;
        (*e > q.start).then_some((*s, *e, *slot))
    }

    fn at(minutes: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_767_225_600, 0).unwrap() + TimeDelta::minutes(minutes)
    }

    proptest! {
        /// Runs answer every overlap query as the plain list of readings by start does, for
        /// readings in order, out of order, with gaps, of several lengths, and repeated
        /// starts (a tampered log), and they stay few for back-to-back readings.
        #[test]
        fn runs_answer_as_the_list_by_start(
            posts in proptest::collection::vec((0i64..120, prop_oneof![Just(15i64), Just(15), Just(5), Just(30)], any::<bool>()), 1..80),
            queries in proptest::collection::vec((0i64..140, 1i64..40), 1..40),
        ) {
            let mut series = empty_series(Flow::Consumed);
            let mut model = BTreeMap::new();
            let mut cursor = 0i64;
            for (i, (start, len, in_order)) in posts.iter().enumerate() {
                // Half the readings follow the last one back to back; the rest land anywhere.
                let start = if *in_order { cursor } else { *start };
                cursor = start + len;
                series.insert(at(start), at(start + len), i as u32);
                model.insert(at(start), (at(start + len), i as u32));
            }
            for (start, len) in queries {
                let q = Interval { start: at(start), end: at(start + len) };
                prop_assert_eq!(series.overlapping(&q), model_overlapping(&model, &q), "query {:?}", q);
            }
            // Every reading is listed once, in start order.
            let listed: Vec<_> = series.runs.iter().flat_map(|r| (0..r.count).map(move |k| (r.start_of(k), r.end_of(k), r.first + k))).collect();
            let starts: Vec<_> = listed.iter().map(|(s, e, i)| (*s, (*e, series.slots[*i as usize]))).collect();
            prop_assert_eq!(starts, model.into_iter().collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_home_that_cannot_be_used_keeps_the_readings_in_memory() {
        // A file where the directory should be: nothing can be created in it.
        let not_a_dir = tempfile::NamedTempFile::new().unwrap();
        let r = Readings::fresh(Some(not_a_dir.path()));
        assert!(r.home().is_none());
        assert!(Readings::fresh(None).home().is_none());
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Readings::fresh(Some(dir.path())).home(), Some(dir.path()));
    }

    /// An empty series of meter `m-1`.
    fn empty_series(flow: Flow) -> Series {
        Series {
            meter_id: MeterId::parse("m-1").unwrap(),
            flow,
            runs: vec![],
            slots: vec![],
        }
    }

    #[test]
    fn back_to_back_readings_make_one_run() {
        let mut s = empty_series(Flow::Generated);
        for k in 0..10_000 {
            s.insert(at(15 * k), at(15 * k + 15), k as u32);
        }
        assert_eq!(s.runs.len(), 1);
        let q = Interval {
            start: at(15 * 5000 + 3),
            end: at(15 * 5000 + 4),
        };
        assert_eq!(s.overlapping(&q), Some((at(15 * 5000), at(15 * 5001), 5000)));
        // A gap starts a new run; filling it joins the two again.
        s.insert(at(15 * 10_001), at(15 * 10_002), 10_001);
        assert_eq!(s.runs.len(), 2);
        s.insert(at(15 * 10_000), at(15 * 10_001), 10_000);
        assert_eq!(s.runs.len(), 1);
        let q = Interval {
            start: at(15 * 10_000),
            end: at(15 * 10_002),
        };
        assert_eq!(s.overlapping(&q).map(|o| o.2), Some(10_001));
        let q = Interval {
            start: at(15 * 10_000),
            end: at(15 * 10_001),
        };
        assert_eq!(s.overlapping(&q).map(|o| o.2), Some(10_000));
    }

    /// Back-to-back readings that arrive out of order by a few places (a backfill posted
    /// by clients in parallel) still make one run: a reading that closes a gap joins the
    /// runs on either side, and one that ends where a run starts is taken by it.
    #[test]
    fn back_to_back_readings_out_of_order_make_one_run() {
        let mut s = empty_series(Flow::Consumed);
        // 0, 2, 1, 3, then 6, 5, 4, then 7 … in blocks of eight, each block shuffled.
        let order = [0u32, 2, 1, 3, 6, 5, 4, 7];
        for block in 0..1_000u32 {
            for k in order {
                let k = block * 8 + k;
                s.insert(at(15 * i64::from(k)), at(15 * i64::from(k) + 15), 100_000 + k);
            }
        }
        assert_eq!(s.runs.len(), 1, "{:?}", &s.runs[..s.runs.len().min(4)]);
        for k in [0u32, 1, 2, 5, 4_001, 7_999] {
            let q = Interval {
                start: at(15 * i64::from(k) + 1),
                end: at(15 * i64::from(k) + 2),
            };
            let want = (at(15 * i64::from(k)), at(15 * i64::from(k) + 15), 100_000 + k);
            assert_eq!(s.overlapping(&q), Some(want));
        }
    }

    #[test]
    fn slots_in_a_file_come_back_from_a_snapshot_and_what_followed_is_cut() {
        let home = tempfile::tempdir().unwrap();
        let one_series = |r: &mut Readings| {
            r.series.push(Series {
                meter_id: MeterId::parse("m-1").unwrap(),
                flow: Flow::Generated,
                runs: vec![],
                slots: vec![],
            });
            r.by_meter.insert(MeterId::parse("m-1").unwrap(), [1, 0, 0, 0]);
        };
        let mut r = Readings::fresh(Some(home.path()));
        one_series(&mut r);
        let ids: Vec<Uuid> = (0..SLOT_TAIL_MAX as u128 + 10)
            .map(|i| Uuid::from_u128(i * 7919 + 1))
            .collect();
        for (i, id) in ids.iter().enumerate() {
            r.slots.push(slot(*id, i as u64));
            r.index_id(*id, i as u32);
        }
        assert!(
            matches!(&r.slots, Slots::File(f) if f.on_disk == SLOT_TAIL_MAX as u64),
            "one write so far"
        );
        r.persist().unwrap();
        let mut body = Vec::new();
        r.encode(&mut Enc::new(&mut body)).unwrap();
        // More slots after the snapshot, then the process stops without saving.
        for i in 0..SLOT_TAIL_MAX as u128 {
            r.slots.push(slot(Uuid::from_u128(u128::MAX - i), 0));
        }
        drop(r);
        let back = Readings::decode(&mut Dec::new(&body[..], body.len() as u64), Some(home.path())).unwrap();
        assert_eq!(back.len(), ids.len());
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(back.slot_of(id), Some(i as u32));
            assert_eq!(back.slots.get(i), slot(*id, i as u64));
        }
        // In memory, the same readings compare equal.
        let mut mem = Readings::default();
        one_series(&mut mem);
        for (i, id) in ids.iter().enumerate() {
            mem.slots.push(slot(*id, i as u64));
            mem.index_id(*id, i as u32);
        }
        assert_eq!(back, mem);
        drop(back);
        // The id map lost (a crash before it spilled, or removed by hand): read back from the
        // slot file. Then another generation's map: refused.
        std::fs::remove_dir_all(ids_home(home.path())).unwrap();
        let back = Readings::decode(&mut Dec::new(&body[..], body.len() as u64), Some(home.path())).unwrap();
        assert_eq!(back, mem);
        drop(back);
        let other = tempfile::tempdir().unwrap();
        let mut o = Readings::fresh(Some(other.path()));
        o.slots.push(slot(Uuid::from_u128(5), 0));
        o.index_id(Uuid::from_u128(5), 0);
        o.persist().unwrap();
        drop(o);
        std::fs::remove_dir_all(ids_home(home.path())).unwrap();
        std::fs::rename(ids_home(other.path()), ids_home(home.path())).unwrap();
        let e = Readings::decode(&mut Dec::new(&body[..], body.len() as u64), Some(home.path())).unwrap_err();
        assert!(e.to_string().contains("belongs to other slots"), "{e}");
        std::fs::remove_dir_all(ids_home(home.path())).unwrap();
        let back = Readings::decode(&mut Dec::new(&body[..], body.len() as u64), Some(home.path())).unwrap();
        // A snapshot whose slots are in memory is refused where the ledger keeps a file, and
        // one that names a file is refused without a home or once a new generation started.
        let mut inline = Vec::new();
        mem.encode(&mut Enc::new(&mut inline)).unwrap();
        assert!(Readings::decode(&mut Dec::new(&inline[..], inline.len() as u64), Some(home.path())).is_err());
        Readings::decode(&mut Dec::new(&inline[..], inline.len() as u64), None).unwrap();
        assert!(Readings::decode(&mut Dec::new(&body[..], body.len() as u64), None).is_err());
        let decode = || Readings::decode(&mut Dec::new(&body[..], body.len() as u64), Some(home.path()));
        let e = decode().unwrap_err();
        assert!(e.to_string().contains("in use by another process"), "{e}");
        let new = Readings::fresh(Some(home.path()));
        assert!(new.home().is_none(), "the home is taken: memory instead");
        drop(back);
        drop(Readings::fresh(Some(home.path())));
        let e = decode().unwrap_err();
        assert!(e.to_string().contains("is missing"), "{e}");
    }
}
