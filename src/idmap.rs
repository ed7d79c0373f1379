//! `IdMap`: a map from 128-bit ids to non-decreasing `u64` values that lives mostly on disk (a tiny LSM tree).
//!
//! # Design
//!
//! Recent inserts go to an in-memory *memtable*, a hash map of at most `mem_max` entries. When it is full, the next
//! insert of a new key first *spills* it: the entries are sorted by key and written as an immutable *run* file, and
//! the *manifest* is replaced by one that also names the new run. A lookup probes the memtable, then the runs from
//! newest to oldest, and the first hit wins. For each run, memory holds only a blocked bloom filter (14 bits per
//! key, a key's 8 bits in one 64-byte block: about 0.2 % false positives), a sparse index (the first key and a
//! checksum of each block of 170 records, about 4 KiB) and an open file. An absent key, the common case, usually
//! costs one hash probe plus one 64-byte block of bloom filter per run; a present key in a run costs one `pread` of
//! a single block and a binary search in it.
//!
//! Runs are grouped in size tiers: tier 0 holds up to `mem_max` records and each next tier four times as many. When
//! four or more adjacent runs share a tier, a background thread merges them into one run (a streaming k-way merge
//! in which the newest value of a key wins). Only adjacent runs are merged, so the order of runs stays their age
//! order. Lookups keep using the old runs until the owner installs the merged run at its next `insert`, `flush` or
//! [`IdMap::poll_merge`]; the merge only reads immutable files, so entries inserted meanwhile (in the memtable or
//! in newer runs) are untouched. A failed merge leaves the old runs in place and is reported by `poll_merge`.
//!
//! [`IdMap::memory`] gives a map without a directory that keeps everything in its memtable, for small ledgers and
//! tests.
//!
//! # Files (in the map's directory)
//!
//! - `MANIFEST`: the live runs, oldest first, and the largest value they cover. Little-endian:
//!   `"IDMAPMAN"`, format `u32` = 2, run count `u32`, next run sequence number `u64`, covered flag `u64` (0 or 1),
//!   covered value `u64`, then per run `{ seq u64, record count u64, footer SHA-256 [32] }`, then the SHA-256 of
//!   all the bytes before it.
//! - `run-<seq>.ids`: a 64-byte header (`"IDMAPRUN"`, format `u32` = 2, records per block `u32` = 170, count `u64`,
//!   min value `u64`, max value `u64`, max key `u128`, bloom probes `u32` = 8, zero `u32`); the records sorted by
//!   key, 24 bytes each (key `u128`, value `u64`); the footer: the bloom filter (`u64` words, a multiple of 8),
//!   the first key of each block (`u128`), the first 8 bytes of each block's SHA-256; and a 56-byte trailer: bloom
//!   words `u64`, block count `u64`, the footer SHA-256 (over the header, the footer and those two numbers) and
//!   `"IDMAPEND"`.
//! - `LOCK`: locked (`flock`) while a map is open, so two maps never share a directory.
//! - `run-<seq>.ids.tmp`, `MANIFEST.tmp`: files being written; they are never read.
//!
//! `open` removes the run and temp files that the manifest does not name; it leaves other files alone.
//!
//! Checksums: opening a run reads only its header and footer, checks the file's length and the footer SHA-256, and
//! compares that SHA-256 with the one the manifest recorded for the run. The records are not read on open: each
//! block read (by a lookup or a merge) is checked against its checksum in the verified footer, so every byte of a
//! run is verified before it is used, and a damaged block gives an `InvalidData` error naming the file.
//!
//! # Crash safety
//!
//! A run file is written under a temporary name, synced, renamed to its final name, and the directory is synced,
//! all before any manifest names it. The manifest is replaced the same way (temp file, sync, rename, directory
//! sync), and a rename replaces a name atomically, so after a crash at any point the directory holds either the old
//! manifest or the new one, and every run that either names is complete and durable. Files are deleted only after
//! the manifest that stops naming them is durable. Whatever a crash leaves behind that the manifest does not name
//! (temp files, a run whose manifest was never written, runs merged away) is removed by the next [`IdMap::open`].
//!
//! The memtable is not durable: after a crash its entries are gone by design. The manifest records `covered`, a
//! value such that every entry whose value is `<= covered` is in its runs; the caller rebuilds the rest by
//! re-inserting, in order, every entry of its own log whose value is `> covered` ([`IdMap::covered`]).
//!
//! # Why values must not decrease
//!
//! That single watermark is only sound if entries arrive in value order: then the memtable always holds exactly the
//! entries above the last spilled value, which the caller's log can replay. (An insert whose value *equals* the
//! covered value lowers the durable watermark by one first, so that a tie is re-inserted too.) It also makes the
//! newest value of a key its largest, so [`IdMap::retain_up_to`] can roll the map back by value, in step with the
//! caller's log. An insert below the largest value so far is refused with `InvalidInput`.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, BufWriter, ErrorKind, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::thread::JoinHandle;

use crate::digest::Sha256;

/// The default memtable size, in entries.
pub const DEFAULT_MEM_MAX: usize = 7 << 16;

/// 2: the bloom filter is blocked (format 1 spread a key's probes over the whole filter).
const FORMAT: u32 = 2;
const RUN_MAGIC: &[u8; 8] = b"IDMAPRUN";
const RUN_END: &[u8; 8] = b"IDMAPEND";
const MANIFEST_MAGIC: &[u8; 8] = b"IDMAPMAN";
const MANIFEST: &str = "MANIFEST";
const MANIFEST_TMP: &str = "MANIFEST.tmp";
const LOCK: &str = "LOCK";

const RECORD_LEN: usize = 24;
/// Records per block: the most that fit in 4 KiB.
const BLOCK_RECORDS: usize = 170;
const BLOCK_LEN: usize = BLOCK_RECORDS * RECORD_LEN;
const BLOCK_SUM_LEN: usize = 8;
const HEADER_LEN: usize = 64;
const TRAILER_LEN: usize = 56;
const MANIFEST_HEAD_LEN: usize = 40;
const MANIFEST_RUN_LEN: usize = 48;

const BLOOM_BITS_PER_KEY: u64 = 14;
/// One bit in each word of the key's block.
const BLOOM_PROBES: u32 = 8;
/// A block: 8 words of 64 bits, 64 bytes.
const BLOOM_BLOCK_WORDS: usize = BLOOM_PROBES as usize;
/// The bit a key sets in each word of its block comes from its second hash times one of these (odd) salts.
const BLOOM_SALTS: [u64; BLOOM_BLOCK_WORDS] = [
    0x47b6_137b_4497_4d91,
    0x8824_ad5b_a2b7_289d,
    0x7054_95c7_2df1_424b,
    0x9efc_4947_5c6b_fb31,
    0x9e37_79b9_7f4a_7c15,
    0xc2b2_ae3d_27d4_eb4f,
    0x1656_67b1_9e37_79f9,
    0xd6e8_feb8_6659_fd93,
];

/// Adjacent runs of one tier that trigger a merge.
const MERGE_FANIN: usize = 4;
/// Past this many runs, the smallest adjacent `MERGE_FANIN` runs are merged whatever their tiers.
const MAX_RUNS: usize = 12;
/// Blocks read at a time by a merge.
const CHUNK_BLOCKS: usize = 16;

/// A key split in two, so that a memtable entry takes 24 bytes instead of the 32 of an aligned `(u128, u64)`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct MemKey(u64, u64);

impl MemKey {
    fn new(key: u128) -> Self {
        MemKey(key as u64, (key >> 64) as u64)
    }

    fn get(self) -> u128 {
        (u128::from(self.1) << 64) | u128::from(self.0)
    }
}

type Memtable = HashMap<MemKey, u64, foldhash::fast::RandomState>;

/// A map from ids to non-decreasing values, kept mostly on disk. See the module documentation.
pub struct IdMap {
    mem: Memtable,
    mem_max: usize,
    /// The largest value inserted (after `open`: the largest durable one); a lower insert is refused.
    max_value: Option<u64>,
    /// `None` in memory mode.
    disk: Option<Disk>,
    block_reads: AtomicU64,
    /// After a failed spill: the memtable size at which the next one is tried.
    spill_retry_at: usize,
    /// Whether anything was inserted since the map was opened or created.
    inserted: bool,
}

struct Disk {
    dir: PathBuf,
    _lock: File,
    /// Oldest first.
    runs: Vec<Arc<Run>>,
    covered: Option<u64>,
    next_seq: u64,
    merge: Option<MergeJob>,
    merge_error: Option<io::Error>,
}

struct MergeJob {
    inputs: Vec<u64>,
    cancel: Arc<AtomicBool>,
    handle: JoinHandle<io::Result<Run>>,
}

impl IdMap {
    /// A map that never touches disk: everything stays in the memtable, which never spills.
    pub fn memory() -> Self {
        IdMap {
            mem: Memtable::default(),
            mem_max: usize::MAX,
            max_value: None,
            disk: None,
            block_reads: AtomicU64::new(0),
            spill_retry_at: 0,
            inserted: false,
        }
    }

    /// Opens the map in `dir`, creating the directory and an empty map if needed, with a memtable of at most
    /// `mem_max` entries. Reads only the runs' headers and footers. Removes the map's files that the manifest does
    /// not name (files whose names are not the map's are left alone). A damaged or missing manifest or run gives an
    /// `InvalidData` or `NotFound` error naming the file; [`IdMap::create`] then starts afresh. Fails with
    /// `WouldBlock` if another open map holds the directory.
    pub fn open(dir: &Path, mem_max: usize) -> io::Result<Self> {
        Self::open_dir(dir, mem_max, false)
    }

    /// Like [`IdMap::open`], but discards any map the directory holds, damaged or not, and starts empty.
    pub fn create(dir: &Path, mem_max: usize) -> io::Result<Self> {
        Self::open_dir(dir, mem_max, true)
    }

    fn open_dir(dir: &Path, mem_max: usize, fresh: bool) -> io::Result<Self> {
        if mem_max == 0 {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                "IdMap: mem_max must be at least 1",
            ));
        }
        fs::create_dir_all(dir).map_err(|e| at(dir, e))?;
        let lock = lock_dir(dir)?;
        let manifest = match if fresh { None } else { read_manifest(dir)? } {
            Some(manifest) => manifest,
            None => {
                if !fresh && has_run_files(dir)? {
                    let path = dir.join(MANIFEST);
                    return Err(io::Error::new(
                        ErrorKind::NotFound,
                        format!("{}: missing, but the directory holds run files", path.display()),
                    ));
                }
                let manifest = Manifest::default();
                write_manifest(dir, &manifest)?;
                manifest
            }
        };
        let mut runs = Vec::with_capacity(manifest.runs.len());
        for entry in &manifest.runs {
            let run = Run::load(dir.join(run_name(entry.seq)), entry.seq)?;
            if run.count != entry.count || run.footer_sum != entry.footer_sum {
                return Err(invalid(&run.path, "does not match the manifest"));
            }
            runs.push(Arc::new(run));
        }
        let named: Vec<String> = manifest.runs.iter().map(|r| run_name(r.seq)).collect();
        remove_unnamed(dir, &named)?;
        let max_value = runs
            .iter()
            .filter(|r| r.count > 0)
            .map(|r| r.max_value)
            .chain(manifest.covered)
            .max();
        let mut disk = Disk {
            dir: dir.to_path_buf(),
            _lock: lock,
            runs,
            covered: manifest.covered,
            next_seq: manifest.next_seq,
            merge: None,
            merge_error: None,
        };
        disk.maybe_start_merge(mem_max);
        Ok(IdMap {
            mem: Memtable::default(),
            mem_max,
            max_value,
            disk: Some(disk),
            block_reads: AtomicU64::new(0),
            spill_retry_at: 0,
            inserted: false,
        })
    }

    /// Maps `key` to `value`, overriding an earlier value of `key`. `value` must not be below any value inserted
    /// before (`InvalidInput`). May spill the memtable and installs a finished merge. If the spill fails, the entry is
    /// inserted all the same (the memtable grows past `mem_max`; the next spill is tried once it has grown by another
    /// quarter of `mem_max`) and the spill's error is returned for the caller to report: an entry is never lost to a
    /// full or failing disk.
    pub fn insert(&mut self, key: u128, value: u64) -> io::Result<()> {
        if let Some(max) = self.max_value
            && value < max
        {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                format!("IdMap: value {value} is below the largest inserted so far, {max}"),
            ));
        }
        let key = MemKey::new(key);
        let mut spill_failed = None;
        if let Some(disk) = &mut self.disk {
            disk.reap(false, self.mem_max);
            if self.mem.len() >= self.mem_max.max(self.spill_retry_at) && !self.mem.contains_key(&key) {
                match disk.spill(&self.mem, self.max_value, self.mem_max) {
                    Ok(()) => {
                        self.mem.clear();
                        self.spill_retry_at = 0;
                    }
                    Err(e) => {
                        self.spill_retry_at = self.mem.len() + self.mem_max.div_ceil(4);
                        spill_failed = Some(e);
                    }
                }
            }
            if disk.covered == Some(value) {
                // A crash after this insert must not lose it: the durable mark goes below the tie first. If that
                // fails, the entry is still taken (only its durability is in doubt) and the error reported.
                if let Err(e) = disk.set_covered(value.checked_sub(1)) {
                    spill_failed.get_or_insert(e);
                }
            }
        }
        self.mem.insert(key, value);
        self.max_value = Some(value);
        self.inserted = true;
        spill_failed.map_or(Ok(()), Err)
    }

    /// The newest value of `key`. Fails only if a run's block cannot be read or fails its checksum.
    pub fn get(&self, key: u128) -> io::Result<Option<u64>> {
        if let Some(&value) = self.mem.get(&MemKey::new(key)) {
            return Ok(Some(value));
        }
        let Some(disk) = &self.disk else { return Ok(None) };
        if disk.runs.is_empty() {
            return Ok(None);
        }
        let hash = KeyHash::new(key);
        for run in disk.runs.iter().rev() {
            if let Some(value) = run.get(key, hash, &self.block_reads)? {
                return Ok(Some(value));
            }
        }
        Ok(None)
    }

    /// Spills the memtable now, so that [`IdMap::covered`] is the largest value inserted. A no-op in memory mode.
    pub fn flush(&mut self) -> io::Result<()> {
        let Some(disk) = &mut self.disk else { return Ok(()) };
        disk.reap(false, self.mem_max);
        if !self.mem.is_empty() {
            disk.spill(&self.mem, self.max_value, self.mem_max)?;
            self.mem.clear();
            self.spill_retry_at = 0;
        } else if self.inserted && disk.covered != self.max_value {
            // Only what this map took since it was opened is known to be in its runs: after an
            // open, entries above `covered` may have been lost with a memtable (a tie).
            disk.set_covered(self.max_value)?;
        }
        Ok(())
    }

    /// Every entry whose value is `<= covered()` is durable; `None` if none is known to be. After a crash, the
    /// caller re-inserts, in order, every entry whose value is `> covered()`. Always `None` in memory mode.
    pub fn covered(&self) -> Option<u64> {
        self.disk.as_ref().and_then(|d| d.covered)
    }

    /// The largest value inserted so far (after `open`, the largest value in the runs or covered); the next insert
    /// must not be below it.
    pub fn max_value(&self) -> Option<u64> {
        self.max_value
    }

    /// Drops every entry whose value is above `max_value`: from the memtable and the runs (a run straddling it is
    /// rewritten, runs above it are removed); `covered()` and `max_value()` drop to at most `max_value`. A running
    /// merge is abandoned. Note that the memtable and merges keep only the newest value of a key, so a key whose
    /// newest value is dropped reads afterwards as either one of its older values or absent, until it is inserted
    /// again. On error the map is unchanged.
    pub fn retain_up_to(&mut self, max_value: u64) -> io::Result<()> {
        if let Some(disk) = &mut self.disk {
            disk.retain_up_to(max_value, self.mem_max)?;
        }
        self.mem.retain(|_, value| *value <= max_value);
        self.max_value = self.max_value.map(|m| m.min(max_value));
        self.spill_retry_at = 0;
        Ok(())
    }

    /// Removes everything (runs, memtable, a running merge); the map is empty and usable, in the same directory.
    pub fn clear(&mut self) -> io::Result<()> {
        if let Some(disk) = &mut self.disk {
            disk.clear()?;
        }
        self.mem.clear();
        self.max_value = None;
        self.spill_retry_at = 0;
        Ok(())
    }

    /// Installs a finished background merge, if any: `Ok(true)` if one was installed. Reports a merge that failed
    /// (since the last call), in which case the old runs are kept.
    pub fn poll_merge(&mut self) -> io::Result<bool> {
        let Some(disk) = &mut self.disk else { return Ok(false) };
        let installed = disk.reap(false, self.mem_max);
        match disk.merge_error.take() {
            Some(e) => Err(e),
            None => Ok(installed),
        }
    }

    /// Blocks until no merge runs: waits for the running merge, installs it, and so on for the merges that it
    /// triggers. Stops at the first failure and reports it.
    pub fn wait_merges(&mut self) -> io::Result<()> {
        let Some(disk) = &mut self.disk else { return Ok(()) };
        loop {
            if let Some(e) = disk.merge_error.take() {
                return Err(e);
            }
            if disk.merge.is_none() {
                return Ok(());
            }
            disk.reap(true, self.mem_max);
        }
    }

    /// The number of records in the runs plus the memtable: a key stored in several runs counts several times.
    pub fn len(&self) -> u64 {
        self.mem.len() as u64 + self.disk.iter().flat_map(|d| &d.runs).map(|r| r.count).sum::<u64>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries in the memtable.
    pub fn mem_len(&self) -> usize {
        self.mem.len()
    }

    /// Live run files.
    pub fn runs(&self) -> usize {
        self.disk.as_ref().map_or(0, |d| d.runs.len())
    }

    /// The map's directory; `None` in memory mode.
    pub fn dir(&self) -> Option<&Path> {
        self.disk.as_ref().map(|d| d.dir.as_path())
    }

    /// An estimate of the memory held: the memtable's table, the runs' bloom filters and sparse indexes. A running
    /// merge also holds the filter and index of the run it writes (as large as its inputs') and ~64 KiB per input.
    pub fn resident_bytes(&self) -> usize {
        let runs: usize = self.disk.iter().flat_map(|d| &d.runs).map(|r| r.resident_bytes()).sum();
        size_of::<Self>() + table_bytes(self.mem.capacity()) + runs
    }

    /// Blocks read from run files by lookups since the map was opened.
    pub fn block_reads(&self) -> u64 {
        self.block_reads.load(Relaxed)
    }
}

impl fmt::Debug for IdMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdMap")
            .field("dir", &self.dir())
            .field("mem_len", &self.mem.len())
            .field("runs", &self.runs())
            .field("covered", &self.covered())
            .field("max_value", &self.max_value)
            .finish_non_exhaustive()
    }
}

/// hashbrown's allocation for `capacity`: buckets of an entry plus a control byte each.
fn table_bytes(capacity: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    let buckets = if capacity < 8 { capacity + 1 } else { capacity * 8 / 7 };
    buckets.next_power_of_two() * (size_of::<(MemKey, u64)>() + 1)
}

impl Disk {
    fn alloc_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq - 1
    }

    fn write_manifest(&self, runs: &[Arc<Run>], covered: Option<u64>) -> io::Result<()> {
        let runs = runs
            .iter()
            .map(|r| ManifestRun {
                seq: r.seq,
                count: r.count,
                footer_sum: r.footer_sum,
            })
            .collect();
        write_manifest(
            &self.dir,
            &Manifest {
                next_seq: self.next_seq,
                covered,
                runs,
            },
        )
    }

    fn set_covered(&mut self, covered: Option<u64>) -> io::Result<()> {
        self.write_manifest(&self.runs, covered)?;
        self.covered = covered;
        Ok(())
    }

    /// Writes `mem` as a new run and names it in the manifest with `covered`; the caller then clears `mem`.
    fn spill(&mut self, mem: &Memtable, covered: Option<u64>, mem_max: usize) -> io::Result<()> {
        let mut records: Vec<(u128, u64)> = mem.iter().map(|(k, &v)| (k.get(), v)).collect();
        records.sort_unstable_by_key(|&(key, _)| key);
        let seq = self.alloc_seq();
        let run = Arc::new(write_run(
            &self.dir,
            seq,
            records.len() as u64,
            records.into_iter().map(Ok),
            None,
        )?);
        let mut runs = self.runs.clone();
        runs.push(Arc::clone(&run));
        // On an error the new run is left in place: if only the directory's sync failed, the manifest on disk
        // names it. `open` removes a run that the manifest does not name.
        self.write_manifest(&runs, covered)?;
        self.runs = runs;
        self.covered = covered;
        self.maybe_start_merge(mem_max);
        Ok(())
    }

    fn maybe_start_merge(&mut self, mem_max: usize) {
        if self.merge.is_some() {
            return;
        }
        let Some(range) = pick_merge(&self.runs, mem_max) else {
            return;
        };
        let inputs = self.runs[range].to_vec();
        let seqs = inputs.iter().map(|r| r.seq).collect();
        let seq = self.alloc_seq();
        let cancel = Arc::new(AtomicBool::new(false));
        let (dir, flag) = (self.dir.clone(), Arc::clone(&cancel));
        let spawned = std::thread::Builder::new()
            .name("idmap-merge".into())
            .spawn(move || merge_runs(&dir, seq, &inputs, &flag));
        match spawned {
            Ok(handle) => {
                self.merge = Some(MergeJob {
                    inputs: seqs,
                    cancel,
                    handle,
                })
            }
            Err(e) => self.merge_error = Some(e),
        }
    }

    /// Installs the running merge if it has finished (or, with `block`, once it has). Returns whether it installed
    /// one; a failure goes to `merge_error`.
    fn reap(&mut self, block: bool, mem_max: usize) -> bool {
        let Some(job) = self.merge.take_if(|job| block || job.handle.is_finished()) else {
            return false;
        };
        let result = job
            .handle
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("IdMap: the merge thread panicked")));
        match result.and_then(|run| self.install(&job.inputs, run)) {
            Ok(()) => {
                self.maybe_start_merge(mem_max);
                true
            }
            Err(e) => {
                self.merge_error.get_or_insert(e);
                false
            }
        }
    }

    fn install(&mut self, inputs: &[u64], merged: Run) -> io::Result<()> {
        let start = self.runs.iter().position(|r| r.seq == inputs[0]);
        let range = start.map(|s| s..s + inputs.len()).filter(|range| {
            self.runs
                .get(range.clone())
                .is_some_and(|runs| runs.iter().map(|r| r.seq).eq(inputs.iter().copied()))
        });
        let Some(range) = range else {
            let _ = fs::remove_file(&merged.path);
            return Err(io::Error::other("IdMap: the merged runs are no longer live"));
        };
        let merged = Arc::new(merged);
        let mut runs = self.runs.clone();
        let old: Vec<Arc<Run>> = runs.splice(range, [Arc::clone(&merged)]).collect();
        // As in `spill`: the merged run is left in place on an error (the manifest on disk may name it).
        self.write_manifest(&runs, self.covered)?;
        self.runs = runs;
        for run in old {
            let _ = fs::remove_file(&run.path);
        }
        Ok(())
    }

    /// Stops the running merge, if any, and removes its output.
    fn abort_merge(&mut self) {
        if let Some(job) = self.merge.take() {
            job.cancel.store(true, Relaxed);
            if let Ok(Ok(run)) = job.handle.join() {
                let _ = fs::remove_file(&run.path);
            }
        }
    }

    fn retain_up_to(&mut self, max_value: u64, mem_max: usize) -> io::Result<()> {
        if self.runs.iter().all(|r| r.max_value <= max_value) && self.covered.is_none_or(|c| c <= max_value) {
            return Ok(());
        }
        self.abort_merge();
        let mut runs = Vec::with_capacity(self.runs.len());
        let mut written = Vec::new();
        let mut dropped = Vec::new();
        for run in &self.runs {
            if run.count == 0 || run.max_value <= max_value {
                runs.push(Arc::clone(run));
                continue;
            }
            dropped.push(run.path.clone());
            if run.min_value <= max_value {
                self.next_seq += 1;
                let mut cursor = RunCursor::new(Arc::clone(run));
                let records = std::iter::from_fn(|| cursor.next_record().transpose())
                    .filter(|r| !matches!(r, Ok((_, value)) if *value > max_value));
                match write_run(&self.dir, self.next_seq - 1, run.count, records, None) {
                    Ok(new) => {
                        written.push(new.path.clone());
                        runs.push(Arc::new(new));
                    }
                    Err(e) => {
                        remove_quietly(&written);
                        return Err(e);
                    }
                }
            }
        }
        let covered = self.covered.map(|c| c.min(max_value));
        // As in `spill`: the rewritten runs are left in place on an error (the manifest on disk may name them).
        self.write_manifest(&runs, covered)?;
        self.runs = runs;
        self.covered = covered;
        remove_quietly(&dropped);
        self.maybe_start_merge(mem_max);
        Ok(())
    }

    fn clear(&mut self) -> io::Result<()> {
        self.abort_merge();
        self.write_manifest(&[], None)?;
        for run in self.runs.drain(..) {
            let _ = fs::remove_file(&run.path);
        }
        self.covered = None;
        self.merge_error = None;
        Ok(())
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        self.abort_merge();
    }
}

/// The tier of a run: 0 up to `mem_max` records, then each tier four times larger.
fn tier(count: u64, mem_max: usize) -> u32 {
    let (mut limit, mut tier) = (mem_max as u64, 0);
    while count > limit {
        limit = limit.saturating_mul(4);
        tier += 1;
    }
    tier
}

/// The runs to merge next: the lowest-tier stretch of at least `MERGE_FANIN` adjacent runs of one tier; failing
/// that, if there are too many runs, the adjacent `MERGE_FANIN` runs with the fewest records.
fn pick_merge(runs: &[Arc<Run>], mem_max: usize) -> Option<Range<usize>> {
    let tiers: Vec<u32> = runs.iter().map(|r| tier(r.count, mem_max)).collect();
    let mut best: Option<(u32, Range<usize>)> = None;
    let mut start = 0;
    while start < tiers.len() {
        let end = start + tiers[start..].iter().take_while(|&&t| t == tiers[start]).count();
        if end - start >= MERGE_FANIN && best.as_ref().is_none_or(|(t, _)| tiers[start] < *t) {
            best = Some((tiers[start], start..end));
        }
        start = end;
    }
    if let Some((_, range)) = best {
        return Some(range);
    }
    if runs.len() <= MAX_RUNS {
        return None;
    }
    (0..=runs.len() - MERGE_FANIN)
        .min_by_key(|&i| runs[i..i + MERGE_FANIN].iter().map(|r| r.count).sum::<u64>())
        .map(|i| i..i + MERGE_FANIN)
}

/// Merges `inputs` (adjacent runs, oldest first) into run `seq`; on equal keys the newest run's value wins.
fn merge_runs(dir: &Path, seq: u64, inputs: &[Arc<Run>], cancel: &AtomicBool) -> io::Result<Run> {
    let mut cursors: Vec<RunCursor> = inputs.iter().map(|r| RunCursor::new(Arc::clone(r))).collect();
    let mut heads = cursors
        .iter_mut()
        .map(RunCursor::next_record)
        .collect::<io::Result<Vec<_>>>()?;
    let records = std::iter::from_fn(|| {
        let key = heads.iter().flatten().map(|&(key, _)| key).min()?;
        let mut value = 0;
        for (cursor, head) in cursors.iter_mut().zip(&mut heads) {
            if let Some((k, v)) = *head
                && k == key
            {
                value = v;
                *head = match cursor.next_record() {
                    Ok(next) => next,
                    Err(e) => return Some(Err(e)),
                };
            }
        }
        Some(Ok((key, value)))
    });
    let expected = inputs.iter().map(|r| r.count).sum();
    write_run(dir, seq, expected, records, Some(cancel))
}

// ---------------------------------------------------------------------------------------------------------------
// Runs

struct Run {
    seq: u64,
    path: PathBuf,
    file: File,
    count: u64,
    min_value: u64,
    max_value: u64,
    max_key: u128,
    bloom: Bloom,
    first_keys: Vec<u128>,
    block_sums: Vec<[u8; BLOCK_SUM_LEN]>,
    footer_sum: [u8; 32],
}

impl Run {
    fn get(&self, key: u128, hash: KeyHash, reads: &AtomicU64) -> io::Result<Option<u64>> {
        let Some(&first) = self.first_keys.first() else {
            return Ok(None);
        };
        if key < first || key > self.max_key || !self.bloom.may_contain(hash) {
            return Ok(None);
        }
        let block = self.first_keys.partition_point(|&k| k <= key) - 1;
        reads.fetch_add(1, Relaxed);
        let mut buf = [0; BLOCK_LEN];
        let (records, _) = self.read_blocks(block, 1, &mut buf)?.as_chunks::<RECORD_LEN>();
        Ok(records
            .binary_search_by(|r| decode_record(r).0.cmp(&key))
            .ok()
            .map(|i| decode_record(&records[i]).1))
    }

    /// Reads `blocks` blocks from block `first` into `buf` and checks them; returns the bytes read.
    fn read_blocks<'b>(&self, first: usize, blocks: usize, buf: &'b mut [u8]) -> io::Result<&'b [u8]> {
        let start = first * BLOCK_RECORDS;
        let end = ((first + blocks) * BLOCK_RECORDS).min(self.count as usize);
        let bytes = &mut buf[..(end - start) * RECORD_LEN];
        self.file
            .read_exact_at(bytes, (HEADER_LEN + start * RECORD_LEN) as u64)
            .map_err(|e| at(&self.path, e))?;
        for (i, block) in bytes.chunks(BLOCK_LEN).enumerate() {
            if block_sum(block) != self.block_sums[first + i] {
                return Err(invalid(
                    &self.path,
                    format_args!("block {} fails its checksum", first + i),
                ));
            }
        }
        Ok(bytes)
    }

    /// Opens a run, reading and verifying its header and footer only.
    fn load(path: PathBuf, seq: u64) -> io::Result<Run> {
        let file = File::open(&path).map_err(|e| at(&path, e))?;
        let len = file.metadata().map_err(|e| at(&path, e))?.len();
        if len < (HEADER_LEN + TRAILER_LEN) as u64 {
            return Err(invalid(&path, "truncated"));
        }
        let mut header = [0; HEADER_LEN];
        let mut trailer = [0; TRAILER_LEN];
        file.read_exact_at(&mut header, 0).map_err(|e| at(&path, e))?;
        file.read_exact_at(&mut trailer, len - TRAILER_LEN as u64)
            .map_err(|e| at(&path, e))?;
        let mut h = Decoder::new(&header);
        if h.bytes::<8>() != *RUN_MAGIC || &trailer[48..] != RUN_END {
            return Err(invalid(&path, "not a run file, or truncated"));
        }
        let (format, block_records) = (h.u32(), h.u32());
        let (count, min_value, max_value, max_key, probes) = (h.u64(), h.u64(), h.u64(), h.u128(), h.u32());
        if format != FORMAT || block_records as usize != BLOCK_RECORDS || probes != BLOOM_PROBES {
            return Err(invalid(&path, format_args!("unsupported run format {format}")));
        }
        let mut t = Decoder::new(&trailer);
        let (bloom_words, blocks) = (t.u64(), t.u64());
        let footer_sum = t.bytes::<32>();
        let body_len = bloom_words
            .checked_mul(8)
            .zip(blocks.checked_mul((16 + BLOCK_SUM_LEN) as u64));
        let body_len = body_len.and_then(|(a, b)| a.checked_add(b));
        let total = count
            .checked_mul(RECORD_LEN as u64)
            .zip(body_len)
            .and_then(|(records, body)| {
                records
                    .checked_add(body)?
                    .checked_add((HEADER_LEN + TRAILER_LEN) as u64)
            });
        let (Some(body_len), Some(total)) = (body_len, total) else {
            return Err(invalid(&path, "damaged trailer"));
        };
        if total != len
            || blocks != count.div_ceil(BLOCK_RECORDS as u64)
            || bloom_words == 0
            || !bloom_words.is_multiple_of(BLOOM_BLOCK_WORDS as u64)
        {
            return Err(invalid(
                &path,
                "damaged: its length does not match its header and trailer",
            ));
        }
        let mut body = vec![0; body_len as usize];
        file.read_exact_at(&mut body, len - TRAILER_LEN as u64 - body_len)
            .map_err(|e| at(&path, e))?;
        if sha256(&[&header, &body, &trailer[..16]]) != footer_sum {
            return Err(invalid(&path, "damaged: its footer fails its checksum"));
        }
        let (bloom_bytes, rest) = body.split_at(bloom_words as usize * 8);
        let (key_bytes, sum_bytes) = rest.split_at(blocks as usize * 16);
        let bloom = Bloom {
            words: bloom_bytes
                .as_chunks()
                .0
                .iter()
                .map(|w| u64::from_le_bytes(*w))
                .collect(),
        };
        let first_keys: Vec<u128> = key_bytes
            .as_chunks()
            .0
            .iter()
            .map(|k| u128::from_le_bytes(*k))
            .collect();
        let block_sums = sum_bytes.as_chunks().0.to_vec();
        if !first_keys.is_sorted_by(|a, b| a < b) || first_keys.last().is_some_and(|&last| last > max_key) {
            return Err(invalid(&path, "damaged: its sparse index is out of order"));
        }
        drop(body);
        Ok(Run {
            seq,
            path,
            file,
            count,
            min_value,
            max_value,
            max_key,
            bloom,
            first_keys,
            block_sums,
            footer_sum,
        })
    }

    fn resident_bytes(&self) -> usize {
        size_of::<Run>()
            + self.path.as_os_str().len()
            + self.bloom.words.capacity() * 8
            + self.first_keys.capacity() * 16
            + self.block_sums.capacity() * BLOCK_SUM_LEN
    }
}

/// Reads a run's records in order, a few blocks at a time, checking each block.
struct RunCursor {
    run: Arc<Run>,
    next_block: usize,
    buf: Vec<u8>,
    len: usize,
    pos: usize,
}

impl RunCursor {
    fn new(run: Arc<Run>) -> Self {
        RunCursor {
            run,
            next_block: 0,
            buf: vec![0; CHUNK_BLOCKS * BLOCK_LEN],
            len: 0,
            pos: 0,
        }
    }

    fn next_record(&mut self) -> io::Result<Option<(u128, u64)>> {
        if self.pos == self.len {
            let blocks = self.run.block_sums.len() - self.next_block;
            if blocks == 0 {
                return Ok(None);
            }
            let n = blocks.min(CHUNK_BLOCKS);
            self.len = self.run.read_blocks(self.next_block, n, &mut self.buf)?.len();
            self.next_block += n;
            self.pos = 0;
        }
        let record = decode_record(&self.buf[self.pos..self.pos + RECORD_LEN]);
        self.pos += RECORD_LEN;
        Ok(Some(record))
    }
}

fn run_name(seq: u64) -> String {
    format!("run-{seq}.ids")
}

/// Writes run `seq` from `records` (sorted by key, unique), sizing its bloom filter for `expected` keys; stops with
/// `Interrupted` once `cancel` is set. The run is durable under its final name when this returns `Ok`.
fn write_run<I>(dir: &Path, seq: u64, expected: u64, records: I, cancel: Option<&AtomicBool>) -> io::Result<Run>
where
    I: IntoIterator<Item = io::Result<(u128, u64)>>,
{
    let tmp = dir.join(format!("{}.tmp", run_name(seq)));
    let result = write_run_via(&tmp, dir, seq, expected, records, cancel);
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| at(&tmp, e))
}

fn write_run_via<I>(
    tmp: &Path,
    dir: &Path,
    seq: u64,
    expected: u64,
    records: I,
    cancel: Option<&AtomicBool>,
) -> io::Result<Run>
where
    I: IntoIterator<Item = io::Result<(u128, u64)>>,
{
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)?;
    let mut out = BufWriter::with_capacity(1 << 16, file);
    out.write_all(&[0; HEADER_LEN])?;
    let mut bloom = Bloom::with_keys(expected);
    let (mut first_keys, mut block_sums) = (Vec::new(), Vec::new());
    let mut block = Sha256::new();
    let (mut count, mut min_value, mut max_value, mut last_key) = (0u64, u64::MAX, 0, None);
    for record in records {
        if count % 1024 == 0 && cancel.is_some_and(|c| c.load(Relaxed)) {
            return Err(io::Error::new(ErrorKind::Interrupted, "merge cancelled"));
        }
        let (key, value) = record?;
        if last_key.is_some_and(|last| key <= last) {
            return Err(io::Error::new(ErrorKind::InvalidData, "records out of key order"));
        }
        last_key = Some(key);
        let in_block = count as usize % BLOCK_RECORDS;
        if in_block == 0 {
            first_keys.push(key);
        }
        let bytes = encode_record(key, value);
        block.update(bytes);
        out.write_all(&bytes)?;
        if in_block == BLOCK_RECORDS - 1 {
            block_sums.push(truncated_sum(block.finalize_reset()));
        }
        bloom.insert(KeyHash::new(key));
        (count, min_value, max_value) = (count + 1, min_value.min(value), max_value.max(value));
    }
    if !(count as usize).is_multiple_of(BLOCK_RECORDS) {
        block_sums.push(truncated_sum(block.finalize()));
    }
    let max_key = last_key.unwrap_or(0);
    let min_value = if count == 0 { 0 } else { min_value };

    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(RUN_MAGIC);
    header.extend_from_slice(&FORMAT.to_le_bytes());
    header.extend_from_slice(&(BLOCK_RECORDS as u32).to_le_bytes());
    for n in [count, min_value, max_value] {
        header.extend_from_slice(&n.to_le_bytes());
    }
    header.extend_from_slice(&max_key.to_le_bytes());
    header.extend_from_slice(&BLOOM_PROBES.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    debug_assert_eq!(header.len(), HEADER_LEN);

    let mut footer = Sha256::new();
    footer.update(&header);
    let mut emit = |bytes: &[u8]| {
        footer.update(bytes);
        out.write_all(bytes)
    };
    bloom.words.iter().try_for_each(|w| emit(&w.to_le_bytes()))?;
    first_keys.iter().try_for_each(|k| emit(&k.to_le_bytes()))?;
    block_sums.iter().try_for_each(|s| emit(s))?;
    let mut trailer = Vec::with_capacity(TRAILER_LEN);
    trailer.extend_from_slice(&(bloom.words.len() as u64).to_le_bytes());
    trailer.extend_from_slice(&(block_sums.len() as u64).to_le_bytes());
    footer.update(&trailer);
    let footer_sum = footer.finalize();
    trailer.extend_from_slice(&footer_sum);
    trailer.extend_from_slice(RUN_END);
    out.write_all(&trailer)?;

    let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
    file.write_all_at(&header, 0)?;
    file.sync_all()?;
    let path = dir.join(run_name(seq));
    fs::rename(tmp, &path)?;
    sync_dir(dir)?;
    Ok(Run {
        seq,
        path,
        file,
        count,
        min_value,
        max_value,
        max_key,
        bloom,
        first_keys,
        block_sums,
        footer_sum,
    })
}

fn encode_record(key: u128, value: u64) -> [u8; RECORD_LEN] {
    let mut bytes = [0; RECORD_LEN];
    bytes[..16].copy_from_slice(&key.to_le_bytes());
    bytes[16..].copy_from_slice(&value.to_le_bytes());
    bytes
}

fn decode_record(bytes: &[u8]) -> (u128, u64) {
    let mut d = Decoder::new(bytes);
    (d.u128(), d.u64())
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    parts.iter().for_each(|part| hasher.update(part));
    hasher.finalize()
}

fn truncated_sum(sum: [u8; 32]) -> [u8; BLOCK_SUM_LEN] {
    sum[..BLOCK_SUM_LEN]
        .try_into()
        .expect("a SHA-256 is longer than a block sum")
}

fn block_sum(block: &[u8]) -> [u8; BLOCK_SUM_LEN] {
    truncated_sum(sha256(&[block]))
}

/// Reads little-endian fields from a slice whose length the caller has checked.
struct Decoder<'a>(&'a [u8]);

impl<'a> Decoder<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Decoder(bytes)
    }

    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self
            .0
            .split_first_chunk()
            .expect("the length was checked before decoding");
        self.0 = rest;
        *head
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }

    fn u128(&mut self) -> u128 {
        u128::from_le_bytes(self.bytes())
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Bloom filter

/// Two 64-bit hashes of a key, computed once per lookup: `h1` picks the key's block of the filter by multiply-shift,
/// and the top six bits of `h2 * salt[i]` the bit it sets in the block's word `i`. A key's probes thus touch one
/// 64-byte block (one or two cache lines, as the words are aligned to 8 bytes), not eight words across the filter
/// (format 1; a merge of large runs, which inserts every key again, spent most of its time waiting for memory).
/// The mixing is defined here, not by a library, as it is on disk.
#[derive(Clone, Copy)]
struct KeyHash(u64, u64);

impl KeyHash {
    fn new(key: u128) -> Self {
        let (lo, hi) = (key as u64, (key >> 64) as u64);
        let h1 = mix64(lo ^ mix64(hi ^ 0x243f_6a88_85a3_08d3));
        let h2 = mix64(hi ^ mix64(lo ^ 0x1319_8a2e_0370_7344)) | 1;
        KeyHash(h1, h2)
    }

    /// The first word of the key's block, in a filter of `blocks` blocks.
    fn block(self, blocks: usize) -> usize {
        ((u128::from(self.0) * blocks as u128) >> 64) as usize * BLOOM_BLOCK_WORDS
    }

    /// The bit the key sets in each word of its block.
    fn masks(self) -> impl Iterator<Item = u64> {
        BLOOM_SALTS
            .into_iter()
            .map(move |salt| 1 << (self.1.wrapping_mul(salt) >> 58))
    }
}

/// The splitmix64 finalizer.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

struct Bloom {
    words: Vec<u64>,
}

impl Bloom {
    fn with_keys(keys: u64) -> Self {
        let blocks = keys
            .saturating_mul(BLOOM_BITS_PER_KEY)
            .div_ceil(64 * BLOOM_BLOCK_WORDS as u64)
            .max(1);
        Bloom {
            words: vec![0; blocks as usize * BLOOM_BLOCK_WORDS],
        }
    }

    fn blocks(&self) -> usize {
        self.words.len() / BLOOM_BLOCK_WORDS
    }

    fn insert(&mut self, hash: KeyHash) {
        let first = hash.block(self.blocks());
        let block = &mut self.words[first..first + BLOOM_BLOCK_WORDS];
        block.iter_mut().zip(hash.masks()).for_each(|(w, m)| *w |= m);
    }

    fn may_contain(&self, hash: KeyHash) -> bool {
        let first = hash.block(self.blocks());
        let block = &self.words[first..first + BLOOM_BLOCK_WORDS];
        block.iter().zip(hash.masks()).all(|(w, m)| w & m != 0)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Manifest and directory

#[derive(Default)]
struct Manifest {
    next_seq: u64,
    covered: Option<u64>,
    runs: Vec<ManifestRun>,
}

struct ManifestRun {
    seq: u64,
    count: u64,
    footer_sum: [u8; 32],
}

/// The manifest, or `None` if there is none.
fn read_manifest(dir: &Path) -> io::Result<Option<Manifest>> {
    let path = dir.join(MANIFEST);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(at(&path, e)),
    };
    if bytes.len() < MANIFEST_HEAD_LEN + 32 || !bytes.starts_with(MANIFEST_MAGIC) {
        return Err(invalid(&path, "not a manifest, or truncated"));
    }
    let mut d = Decoder::new(&bytes[8..]);
    let (format, runs) = (d.u32(), d.u32() as usize);
    if bytes.len() != MANIFEST_HEAD_LEN + runs * MANIFEST_RUN_LEN + 32 {
        return Err(invalid(&path, "damaged: its length does not match its run count"));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if sha256(&[body]) != sum {
        return Err(invalid(&path, "damaged: it fails its checksum"));
    }
    if format != FORMAT {
        return Err(invalid(&path, format_args!("unsupported manifest format {format}")));
    }
    let (next_seq, has_covered, covered) = (d.u64(), d.u64(), d.u64());
    let runs: Vec<ManifestRun> = (0..runs)
        .map(|_| ManifestRun {
            seq: d.u64(),
            count: d.u64(),
            footer_sum: d.bytes(),
        })
        .collect();
    if has_covered > 1 || runs.iter().any(|r| r.seq >= next_seq) {
        return Err(invalid(&path, "damaged: inconsistent fields"));
    }
    Ok(Some(Manifest {
        next_seq,
        covered: (has_covered == 1).then_some(covered),
        runs,
    }))
}

/// Replaces the manifest atomically and durably.
fn write_manifest(dir: &Path, manifest: &Manifest) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(MANIFEST_HEAD_LEN + manifest.runs.len() * MANIFEST_RUN_LEN + 32);
    bytes.extend_from_slice(MANIFEST_MAGIC);
    bytes.extend_from_slice(&FORMAT.to_le_bytes());
    bytes.extend_from_slice(&(manifest.runs.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&manifest.next_seq.to_le_bytes());
    bytes.extend_from_slice(&u64::from(manifest.covered.is_some()).to_le_bytes());
    bytes.extend_from_slice(&manifest.covered.unwrap_or(0).to_le_bytes());
    for run in &manifest.runs {
        bytes.extend_from_slice(&run.seq.to_le_bytes());
        bytes.extend_from_slice(&run.count.to_le_bytes());
        bytes.extend_from_slice(&run.footer_sum);
    }
    let sum = sha256(&[&bytes]);
    bytes.extend_from_slice(&sum);
    let tmp = dir.join(MANIFEST_TMP);
    let write = || -> io::Result<()> {
        let mut file = File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(at(&tmp, e));
    }
    fs::rename(&tmp, dir.join(MANIFEST)).map_err(|e| at(&tmp, e))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| at(dir, e))
}

fn lock_dir(dir: &Path) -> io::Result<File> {
    let path = dir.join(LOCK);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| at(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(io::Error::new(
            ErrorKind::WouldBlock,
            format!("{}: the id map is already open", dir.display()),
        )),
        Err(TryLockError::Error(e)) => Err(at(&path, e)),
    }
}

fn is_run_file(name: &str) -> bool {
    name.starts_with("run-") && name.ends_with(".ids")
}

/// The names this module writes, and so may remove.
fn is_map_file(name: &str) -> bool {
    name == MANIFEST_TMP || is_run_file(name) || name.strip_suffix(".tmp").is_some_and(is_run_file)
}

fn has_run_files(dir: &Path) -> io::Result<bool> {
    for entry in fs::read_dir(dir).map_err(|e| at(dir, e))? {
        if entry
            .map_err(|e| at(dir, e))?
            .file_name()
            .to_str()
            .is_some_and(is_run_file)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Removes the map's files (runs, temp files) that are not in `named`.
fn remove_unnamed(dir: &Path, named: &[String]) -> io::Result<()> {
    for entry in fs::read_dir(dir).map_err(|e| at(dir, e))? {
        let entry = entry.map_err(|e| at(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if is_map_file(name) && !named.iter().any(|n| n == name) {
            fs::remove_file(entry.path()).map_err(|e| at(&entry.path(), e))?;
        }
    }
    Ok(())
}

/// Removes files whose removal may fail harmlessly: the next `open` removes whatever the manifest does not name.
fn remove_quietly(paths: &[PathBuf]) {
    for path in paths {
        let _ = fs::remove_file(path);
    }
}

/// `e`, its message prefixed by `path`.
fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn invalid(path: &Path, what: impl fmt::Display) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, format!("{}: {what}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    /// A directory on tmpfs when there is one: the tests sync a lot, and syncs on a real disk are slow.
    fn scratch() -> tempfile::TempDir {
        let shm = Path::new("/dev/shm");
        if shm.is_dir()
            && let Ok(dir) = tempfile::Builder::new().prefix("idmap-test-").tempdir_in(shm)
        {
            return dir;
        }
        tempfile::tempdir().expect("a temp dir")
    }

    /// Distinct keys, spread over the whole range.
    fn key(i: u64) -> u128 {
        u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
    }

    fn files(dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    fn run_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
        Ok(files(dir)?
            .into_iter()
            .filter(|n| is_run_file(n))
            .map(|n| dir.join(n))
            .collect())
    }

    fn flip_byte(path: &Path, at: u64) -> io::Result<()> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let mut byte = [0];
        file.read_exact_at(&mut byte, at)?;
        file.write_all_at(&[byte[0] ^ 0x20], at)
    }

    /// Three runs holding keys 0..4, 4..8 and 8..12, keys 12 and 13 in the memtable; the value of key `i` is `10 i`.
    fn layered(dir: &Path) -> io::Result<IdMap> {
        let mut map = IdMap::open(dir, 4)?;
        for i in 0..14 {
            map.insert(key(i), 10 * i)?;
        }
        assert_eq!((map.runs(), map.mem_len(), map.covered()), (3, 2, Some(110)));
        Ok(map)
    }

    /// Checks that exactly the keys of `layered` whose value is at most `max` are found.
    fn expect_layered_up_to(map: &IdMap, max: u64) -> io::Result<()> {
        for i in 0..14 {
            assert_eq!(map.get(key(i))?, Some(10 * i).filter(|&v| v <= max), "key {i}");
        }
        Ok(())
    }

    // --- the model test -------------------------------------------------------------------------------------------

    const KEYS: u8 = 24;
    const MODEL_MEM_MAX: usize = 8;

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u8, u8),
        Get(u8),
        Flush,
        Reopen,
        Poll,
        Wait,
        Retain(u8),
        Clear,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            30 => (0..KEYS, 0..3u8).prop_map(|(k, step)| Op::Insert(k, step)),
            8 => (0..KEYS).prop_map(Op::Get),
            3 => Just(Op::Flush),
            2 => Just(Op::Reopen),
            3 => Just(Op::Poll),
            2 => Just(Op::Wait),
            2 => (0..6u8).prop_map(Op::Retain),
            1 => Just(Op::Clear),
        ]
    }

    /// The caller's log of inserts; the map must hold the newest value of each key. After `retain_up_to`, a key
    /// whose newest value was dropped is `uncertain` (absent or one of its older values) until inserted again.
    #[derive(Default)]
    struct Model {
        log: Vec<(u128, u64)>,
        uncertain: HashSet<u128>,
        last: u64,
    }

    impl Model {
        fn newest(&self) -> HashMap<u128, u64> {
            self.log.iter().copied().collect()
        }

        fn check(&self, map: &IdMap, k: u128) {
            let got = map.get(k).expect("get");
            if self.uncertain.contains(&k) {
                let older = self.log.iter().any(|&(lk, v)| lk == k && Some(v) == got);
                assert!(got.is_none() || older, "key {k:x}: {got:?}");
            } else {
                assert_eq!(got, self.newest().get(&k).copied(), "key {k:x}");
            }
        }

        fn check_all(&self, map: &IdMap) {
            (0..KEYS).for_each(|k| self.check(map, key(k.into())));
        }

        /// Opens the map as the caller does after a crash: re-inserts what `covered()` says is missing.
        fn reopen(&mut self, dir: &Path) -> IdMap {
            let mut map = IdMap::open(dir, MODEL_MEM_MAX).expect("reopen");
            let covered = map.covered();
            for &(k, v) in self.log.iter().filter(|&&(_, v)| Some(v) > covered) {
                map.insert(k, v).expect("replay");
                self.uncertain.remove(&k);
            }
            map
        }
    }

    fn run_model(ops: &[Op]) {
        let dir = scratch();
        let mut map = IdMap::open(dir.path(), MODEL_MEM_MAX).expect("open");
        let mut model = Model::default();
        for op in ops {
            match *op {
                Op::Insert(k, step) => {
                    model.last += u64::from(step);
                    let k = key(k.into());
                    map.insert(k, model.last).expect("insert");
                    model.log.push((k, model.last));
                    model.uncertain.remove(&k);
                }
                Op::Get(k) => model.check(&map, key(k.into())),
                Op::Flush => {
                    map.flush().expect("flush");
                    let covered = map.covered();
                    assert!(
                        model.log.iter().all(|&(_, v)| Some(v) <= covered),
                        "covered {covered:?}"
                    );
                }
                Op::Reopen => {
                    drop(map);
                    map = model.reopen(dir.path());
                }
                Op::Poll => {
                    map.poll_merge().expect("poll");
                }
                Op::Wait => map.wait_merges().expect("wait"),
                Op::Retain(back) => {
                    let max = model.last.saturating_sub(back.into());
                    map.retain_up_to(max).expect("retain");
                    let before = model.newest();
                    model.log.retain(|&(_, v)| v <= max);
                    let after = model.newest();
                    model
                        .uncertain
                        .extend(after.iter().filter(|&(k, v)| before[k] != *v).map(|(&k, _)| k));
                    model.last = max;
                }
                Op::Clear => {
                    map.clear().expect("clear");
                    model.log.clear();
                    model.uncertain.clear();
                }
            }
        }
        model.check_all(&map);
        map.wait_merges().expect("wait");
        model.check_all(&map);
        let live = map.runs();
        assert_eq!(run_files(dir.path()).expect("list").len(), live);
        drop(map);
        let map = model.reopen(dir.path());
        model.check_all(&map);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn behaves_like_a_hash_map_across_spills_merges_and_reopens(ops in proptest::collection::vec(op(), 1..300)) {
            run_model(&ops);
        }
    }

    // --- durability -----------------------------------------------------------------------------------------------

    #[test]
    fn reopen_after_drop_finds_what_was_spilled() -> io::Result<()> {
        let dir = scratch();
        let mut map = IdMap::open(dir.path(), 4)?;
        for i in 1..=10 {
            map.insert(key(i), i)?;
        }
        assert_eq!((map.runs(), map.mem_len(), map.covered()), (2, 2, Some(8)));
        drop(map);

        let mut map = IdMap::open(dir.path(), 4)?;
        assert_eq!((map.covered(), map.max_value(), map.len()), (Some(8), Some(8), 8));
        for i in 1..=8 {
            assert_eq!(map.get(key(i))?, Some(i));
        }
        for i in 9..=10 {
            assert_eq!(map.get(key(i))?, None, "key {i} was only in the memtable");
        }
        // The caller re-inserts what is above covered(), then shuts down cleanly.
        for i in 9..=12 {
            map.insert(key(i), i)?;
        }
        map.flush()?;
        assert_eq!(map.covered(), Some(12));
        drop(map);

        let map = IdMap::open(dir.path(), 4)?;
        assert_eq!((map.covered(), map.mem_len(), map.runs()), (Some(12), 0, 3));
        for i in 1..=12 {
            assert_eq!(map.get(key(i))?, Some(i));
        }
        Ok(())
    }

    #[test]
    fn an_insert_tying_the_covered_value_lowers_it() -> io::Result<()> {
        let dir = scratch();
        let mut map = IdMap::open(dir.path(), 4)?;
        map.insert(key(1), 5)?;
        map.flush()?;
        assert_eq!(map.covered(), Some(5));
        map.insert(key(2), 5)?;
        assert_eq!(map.covered(), Some(4));
        drop(map);

        let mut map = IdMap::open(dir.path(), 4)?;
        assert_eq!((map.covered(), map.get(key(2))?), (Some(4), None));
        // The replay of the values above 4 is accepted, though 5 is already in a run.
        map.insert(key(1), 5)?;
        map.insert(key(2), 5)?;
        assert_eq!((map.get(key(1))?, map.get(key(2))?), (Some(5), Some(5)));

        map.clear()?;
        map.insert(key(3), 0)?;
        map.flush()?;
        map.insert(key(4), 0)?;
        assert_eq!(map.covered(), None);
        Ok(())
    }

    #[test]
    fn values_out_of_order_are_refused() -> io::Result<()> {
        let dir = scratch();
        for mut map in [IdMap::memory(), IdMap::open(dir.path(), 2)?] {
            map.insert(key(1), 10)?;
            let err = map.insert(key(2), 9).expect_err("a smaller value");
            assert_eq!(err.kind(), ErrorKind::InvalidInput);
            assert_eq!(map.get(key(2))?, None);
            map.insert(key(2), 10)?;
            map.insert(key(3), 11)?;
            map.insert(key(4), 12)?;
            assert_eq!(
                map.insert(key(1), 11).map_err(|e| e.kind()),
                Err(ErrorKind::InvalidInput)
            );
            assert_eq!(map.get(key(1))?, Some(10));
        }
        // After a reopen, the durable values still bound the next ones.
        let mut map = IdMap::open(dir.path(), 2)?;
        assert_eq!(map.covered(), Some(10));
        assert_eq!(
            map.insert(key(5), 9).map_err(|e| e.kind()),
            Err(ErrorKind::InvalidInput)
        );
        map.insert(key(5), 11)?;
        Ok(())
    }

    // --- retain_up_to and clear -----------------------------------------------------------------------------------

    #[test]
    fn retain_up_to_a_value_inside_a_run_rewrites_it() -> io::Result<()> {
        let dir = scratch();
        let mut map = layered(dir.path())?;
        map.retain_up_to(50)?;
        expect_layered_up_to(&map, 50)?;
        assert_eq!(
            (map.runs(), map.mem_len(), map.len(), map.covered()),
            (2, 0, 6, Some(50))
        );
        assert_eq!(run_files(dir.path())?.len(), 2);
        assert_eq!(
            map.insert(key(20), 45).map_err(|e| e.kind()),
            Err(ErrorKind::InvalidInput)
        );
        drop(map);

        let mut map = IdMap::open(dir.path(), 4)?;
        expect_layered_up_to(&map, 50)?;
        assert_eq!(map.covered(), Some(50));
        map.insert(key(7), 50)?;
        assert_eq!(map.get(key(7))?, Some(50));
        Ok(())
    }

    #[test]
    fn retain_up_to_a_value_between_runs_drops_the_later_ones() -> io::Result<()> {
        let dir = scratch();
        let mut map = layered(dir.path())?;
        let first = run_files(dir.path())?.remove(0);
        map.retain_up_to(35)?;
        expect_layered_up_to(&map, 35)?;
        assert_eq!(
            (map.runs(), map.mem_len(), map.covered(), map.max_value()),
            (1, 0, Some(35), Some(35))
        );
        assert_eq!(run_files(dir.path())?, [first], "the first run is kept as it is");
        drop(map);
        expect_layered_up_to(&IdMap::open(dir.path(), 4)?, 35)
    }

    #[test]
    fn retain_up_to_a_value_above_everything_changes_nothing() -> io::Result<()> {
        let dir = scratch();
        let mut map = layered(dir.path())?;
        let before = run_files(dir.path())?;
        map.retain_up_to(1000)?;
        expect_layered_up_to(&map, 1000)?;
        assert_eq!(
            (map.runs(), map.mem_len(), map.covered(), map.max_value()),
            (3, 2, Some(110), Some(130))
        );
        assert_eq!(run_files(dir.path())?, before);
        Ok(())
    }

    #[test]
    fn retain_up_to_a_value_inside_the_memtable_filters_it() -> io::Result<()> {
        let dir = scratch();
        let mut map = layered(dir.path())?;
        map.retain_up_to(125)?;
        expect_layered_up_to(&map, 125)?;
        assert_eq!(
            (map.runs(), map.mem_len(), map.covered(), map.max_value()),
            (3, 1, Some(110), Some(125))
        );
        map.insert(key(13), 126)?;
        assert_eq!(map.get(key(13))?, Some(126));
        Ok(())
    }

    #[test]
    fn clear_then_reuse() -> io::Result<()> {
        let dir = scratch();
        let mut map = layered(dir.path())?;
        map.clear()?;
        assert!(map.is_empty());
        assert_eq!(
            (map.runs(), map.mem_len(), map.covered(), map.max_value()),
            (0, 0, None, None)
        );
        assert_eq!(run_files(dir.path())?.len(), 0);
        for i in 0..14 {
            assert_eq!(map.get(key(i))?, None);
        }
        for i in 0..10 {
            map.insert(key(i + 100), i)?;
        }
        map.flush()?;
        drop(map);
        let map = IdMap::open(dir.path(), 4)?;
        assert_eq!((map.len(), map.covered()), (10, Some(9)));
        for i in 0..10 {
            assert_eq!((map.get(key(i + 100))?, map.get(key(i + 1))?), (Some(i), None));
        }
        Ok(())
    }

    // --- damage and leftovers -------------------------------------------------------------------------------------

    fn expect_open_error(dir: &Path, kind: ErrorKind, naming: &str) {
        let err = IdMap::open(dir, 4).expect_err("a damaged map");
        assert_eq!(err.kind(), kind, "{err}");
        assert!(err.to_string().contains(naming), "{err} should name {naming}");
    }

    #[test]
    fn a_damaged_run_footer_is_refused_on_open() -> io::Result<()> {
        let dir = scratch();
        drop(layered(dir.path())?);
        let run = run_files(dir.path())?.remove(1);
        let name = run.file_name().expect("a file name").to_string_lossy().into_owned();
        let len = fs::metadata(&run)?.len();
        let footer = (HEADER_LEN + 4 * RECORD_LEN) as u64;
        // In the header's count, the bloom filter, the sparse index, the trailer's checksum.
        for at in [16, footer + 2, len - TRAILER_LEN as u64 - 12, len - 20] {
            flip_byte(&run, at)?;
            expect_open_error(dir.path(), ErrorKind::InvalidData, &name);
            flip_byte(&run, at)?;
        }
        drop(IdMap::open(dir.path(), 4)?);

        let file = OpenOptions::new().write(true).open(&run)?;
        file.set_len(len - 1)?;
        expect_open_error(dir.path(), ErrorKind::InvalidData, &name);
        file.set_len(20)?;
        expect_open_error(dir.path(), ErrorKind::InvalidData, &name);

        // The caller then starts afresh.
        let map = IdMap::create(dir.path(), 4)?;
        assert_eq!((map.len(), map.covered(), map.runs()), (0, None, 0));
        assert_eq!(run_files(dir.path())?.len(), 0);
        Ok(())
    }

    /// A map written in format 1 (its bloom filters laid out otherwise) is refused, not misread: its manifest, with
    /// a valid checksum, says format 1. The caller then starts afresh, as after damage.
    #[test]
    fn a_map_of_format_1_is_refused_on_open() -> io::Result<()> {
        let dir = scratch();
        drop(layered(dir.path())?);
        let manifest = dir.path().join(MANIFEST);
        let mut bytes = fs::read(&manifest)?;
        bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
        let body_len = bytes.len() - 32;
        let sum = sha256(&[&bytes[..body_len]]);
        bytes[body_len..].copy_from_slice(&sum);
        fs::write(&manifest, &bytes)?;
        let Err(err) = IdMap::open(dir.path(), 4) else {
            panic!("a format 1 map is refused")
        };
        assert_eq!(err.kind(), ErrorKind::InvalidData);
        assert!(err.to_string().contains("unsupported manifest format 1"), "{err}");
        let map = IdMap::create(dir.path(), 4)?;
        assert_eq!((map.len(), map.runs()), (0, 0));
        Ok(())
    }

    #[test]
    fn a_damaged_or_missing_manifest_or_run_is_refused_on_open() -> io::Result<()> {
        let dir = scratch();
        drop(layered(dir.path())?);
        let manifest = dir.path().join(MANIFEST);
        let len = fs::metadata(&manifest)?.len();
        for at in [0, 30, len - 1] {
            flip_byte(&manifest, at)?;
            expect_open_error(dir.path(), ErrorKind::InvalidData, MANIFEST);
            flip_byte(&manifest, at)?;
        }
        let bytes = fs::read(&manifest)?;
        fs::write(&manifest, &bytes[..bytes.len() - 1])?;
        expect_open_error(dir.path(), ErrorKind::InvalidData, MANIFEST);
        drop(IdMap::create(dir.path(), 4)?);
        assert_eq!(run_files(dir.path())?.len(), 0, "create discards a damaged map");
        drop(layered(dir.path())?);

        let run = run_files(dir.path())?.remove(0);
        let run_bytes = fs::read(&run)?;
        fs::remove_file(&run)?;
        expect_open_error(
            dir.path(),
            ErrorKind::NotFound,
            &run.file_name().expect("a name").to_string_lossy(),
        );
        fs::write(&run, run_bytes)?;
        drop(IdMap::open(dir.path(), 4)?);

        fs::remove_file(&manifest)?;
        expect_open_error(dir.path(), ErrorKind::NotFound, MANIFEST);
        let map = IdMap::create(dir.path(), 4)?;
        assert_eq!((map.len(), map.covered()), (0, None));
        Ok(())
    }

    #[test]
    fn orphans_and_temp_files_are_removed_on_open() -> io::Result<()> {
        let dir = scratch();
        drop(layered(dir.path())?);
        let mut expected = files(dir.path())?;
        for name in ["run-99.ids", "run-7.ids.tmp", "MANIFEST.tmp"] {
            fs::write(dir.path().join(name), b"left by a crash")?;
        }
        fs::write(dir.path().join("notes.txt"), b"not the map's")?;
        let map = IdMap::open(dir.path(), 4)?;
        expected.push("notes.txt".into());
        expected.sort();
        assert_eq!(files(dir.path())?, expected);
        expect_layered_up_to(&map, 110)
    }

    #[test]
    fn a_damaged_block_is_detected_when_read() -> io::Result<()> {
        let dir = scratch();
        drop(layered(dir.path())?);
        let run = run_files(dir.path())?.remove(0);
        flip_byte(&run, HEADER_LEN as u64 + 20)?;
        let map = IdMap::open(dir.path(), 4)?;
        let err = map.get(key(0)).expect_err("a damaged block");
        assert_eq!(err.kind(), ErrorKind::InvalidData);
        assert!(err.to_string().contains(&*run.to_string_lossy()), "{err}");
        assert_eq!(map.get(key(5))?, Some(50));
        Ok(())
    }

    #[test]
    fn a_failed_merge_keeps_the_old_runs_and_is_reported() -> io::Result<()> {
        let dir = scratch();
        let mut map = layered(dir.path())?;
        flip_byte(&run_files(dir.path())?[0], HEADER_LEN as u64 + 3)?;
        for i in 14..17 {
            map.insert(key(i), 10 * i)?;
        }
        assert_eq!(map.runs(), 4, "the fourth run starts a merge");
        assert_eq!(map.wait_merges().map_err(|e| e.kind()), Err(ErrorKind::InvalidData));
        assert_eq!((map.runs(), run_files(dir.path())?.len()), (4, 4));
        assert!(!map.poll_merge()?, "the failure is reported once");
        assert_eq!(map.get(key(9))?, Some(90));
        Ok(())
    }

    #[test]
    fn a_failed_spill_keeps_every_entry_and_the_next_one_catches_up() -> io::Result<()> {
        let dir = scratch();
        let maps = dir.path().join("map");
        let mut map = IdMap::open(&maps, 8)?;
        // The directory is gone: every spill fails, and nothing inserted is lost.
        fs::remove_dir_all(&maps)?;
        let failed: Vec<u64> = (0..12).filter(|i| map.insert(key(*i), *i).is_err()).collect();
        assert_eq!(
            failed,
            [8, 10],
            "a spill when full, then again a quarter of mem_max later"
        );
        assert_eq!((map.runs(), map.mem_len()), (0, 12));
        for i in 0..12 {
            assert_eq!(map.get(key(i))?, Some(i));
        }
        fs::create_dir(&maps)?;
        map.insert(key(12), 12)?;
        assert_eq!((map.runs(), map.mem_len(), map.covered()), (1, 1, Some(11)));
        map.flush()?;
        drop(map);
        let map = IdMap::open(&maps, 8)?;
        for i in 0..13 {
            assert_eq!(map.get(key(i))?, Some(i));
        }
        Ok(())
    }

    #[test]
    fn a_flush_after_an_open_does_not_vouch_for_a_tie_lost_with_the_memtable() -> io::Result<()> {
        let dir = scratch();
        let mut map = IdMap::open(dir.path(), 8)?;
        map.insert(key(1), 5)?;
        map.flush()?;
        map.insert(key(2), 5)?;
        assert_eq!(map.covered(), Some(4), "the tie lowers the durable mark");
        drop(map); // a crash: key 2 was only in the memtable
        let mut map = IdMap::open(dir.path(), 8)?;
        map.flush()?;
        assert_eq!(map.covered(), Some(4), "the caller must still replay value 5");
        // A tie whose manifest cannot be written is still taken.
        let gone = dir.path().join("gone");
        let mut map2 = IdMap::open(&gone, 8)?;
        map2.insert(key(1), 5)?;
        map2.flush()?;
        fs::remove_dir_all(&gone)?;
        assert!(map2.insert(key(2), 5).is_err(), "the manifest cannot be written");
        assert_eq!(map2.get(key(2))?, Some(5));
        drop(map);
        Ok(())
    }

    // --- merges ---------------------------------------------------------------------------------------------------

    #[test]
    fn merges_keep_the_newest_values_and_entries_inserted_meanwhile() -> io::Result<()> {
        let dir = scratch();
        let mut map = IdMap::open(dir.path(), 4)?;
        let mut model = HashMap::new();
        let mut merged = 0;
        for value in 0..300 {
            let k = key(value % 7);
            map.insert(k, value)?;
            model.insert(k, value);
            if value % 16 == 0 {
                merged += usize::from(map.poll_merge()?);
            }
        }
        map.wait_merges()?;
        for (&k, &v) in &model {
            assert_eq!(map.get(k)?, Some(v));
        }
        assert!(
            merged > 0 || map.runs() < 8,
            "merges ran: {merged} polled, {} runs",
            map.runs()
        );
        assert!(pick_merge(&map.disk.as_ref().expect("on disk").runs, 4).is_none());
        assert_eq!(run_files(dir.path())?.len(), map.runs(), "merged-away runs are deleted");
        map.flush()?;
        drop(map);
        let map = IdMap::open(dir.path(), 4)?;
        for (&k, &v) in &model {
            assert_eq!(map.get(k)?, Some(v));
        }
        Ok(())
    }

    #[test]
    fn dropping_during_a_merge_leaves_a_consistent_directory() -> io::Result<()> {
        let dir = scratch();
        let mut map = IdMap::open(dir.path(), 1000)?;
        for i in 0..4000 {
            map.insert(key(i), i)?;
        }
        map.flush()?;
        assert!(
            map.disk.as_ref().is_some_and(|d| d.merge.is_some()),
            "four runs start a merge"
        );
        drop(map);
        assert_eq!(run_files(dir.path())?.len(), 4);
        assert!(files(dir.path())?.iter().all(|n| !n.ends_with(".tmp")));

        let mut map = IdMap::open(dir.path(), 1000)?;
        map.wait_merges()?;
        assert_eq!((map.runs(), map.len(), map.covered()), (1, 4000, Some(3999)));
        for i in (0..4000).step_by(7) {
            assert_eq!(map.get(key(i))?, Some(i));
        }
        assert_eq!(run_files(dir.path())?.len(), 1);
        Ok(())
    }

    // --- cost and modes -------------------------------------------------------------------------------------------

    fn random_keys(seed: u64) -> impl Iterator<Item = u128> {
        let mut state = seed;
        std::iter::repeat_with(move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            (u128::from(mix64(state)) << 64) | u128::from(mix64(state ^ 0xff))
        })
    }

    #[test]
    fn absent_keys_rarely_read_a_block() -> io::Result<()> {
        let dir = scratch();
        let mut map = IdMap::open(dir.path(), 4000)?;
        for (i, k) in random_keys(1).take(12_000).enumerate() {
            map.insert(k, i as u64)?;
        }
        map.flush()?;
        assert_eq!((map.runs(), map.mem_len()), (3, 0));
        for k in random_keys(2).take(10_000) {
            assert_eq!(map.get(k)?, None);
        }
        // 12 bits a key give about 0.3 % false positives per run, so about 0.9 % of the lookups read a block.
        let reads = map.block_reads();
        assert!(reads <= 150, "{reads} block reads for 10,000 absent keys in 3 runs");
        let present: Vec<u128> = random_keys(1).step_by(97).take(100).collect();
        for &k in &present {
            assert!(map.get(k)?.is_some());
        }
        assert!(map.block_reads() - reads <= 110, "a present key reads about one block");
        Ok(())
    }

    #[test]
    fn the_bloom_filter_has_few_false_positives() {
        let mut bloom = Bloom::with_keys(20_000);
        random_keys(3).take(20_000).for_each(|k| bloom.insert(KeyHash::new(k)));
        assert!(random_keys(3).take(20_000).all(|k| bloom.may_contain(KeyHash::new(k))));
        let false_positives = random_keys(4)
            .take(100_000)
            .filter(|&k| bloom.may_contain(KeyHash::new(k)))
            .count();
        assert!(false_positives < 500, "{false_positives} false positives in 100,000");
    }

    #[test]
    fn memory_mode_never_touches_disk() -> io::Result<()> {
        let mut map = IdMap::memory();
        let n = DEFAULT_MEM_MAX as u64 + 100;
        for i in 0..n {
            map.insert(key(i), i)?;
        }
        map.flush()?;
        assert!(map.dir().is_none());
        assert_eq!(
            (map.runs(), map.mem_len() as u64, map.covered(), map.block_reads()),
            (0, n, None, 0)
        );
        assert_eq!((map.get(key(7))?, map.get(key(n))?), (Some(7), None));
        assert!(!map.poll_merge()?);
        map.wait_merges()?;
        map.retain_up_to(10)?;
        assert_eq!((map.len(), map.get(key(11))?), (11, None));
        map.clear()?;
        assert!(map.is_empty());
        Ok(())
    }

    #[test]
    fn resident_bytes_counts_the_memtable_and_the_filters() -> io::Result<()> {
        let dir = scratch();
        let mut map = IdMap::open(dir.path(), 10_000)?;
        let empty = map.resident_bytes();
        for (i, k) in random_keys(5).take(10_000).enumerate() {
            map.insert(k, i as u64)?;
        }
        let full = map.resident_bytes();
        assert!(full >= empty + 10_000 * 24, "{empty} then {full}");
        map.flush()?;
        let spilled = map.resident_bytes();
        assert!(
            spilled >= full + 10_000 * 12 / 8,
            "the bloom filter: {full} then {spilled}"
        );
        assert!(spilled < full + 10_000 * 3, "{full} then {spilled}");
        Ok(())
    }

    #[test]
    fn a_directory_is_opened_once() -> io::Result<()> {
        let dir = scratch();
        let map = IdMap::open(dir.path(), 4)?;
        let err = IdMap::open(dir.path(), 4).expect_err("locked");
        assert_eq!(err.kind(), ErrorKind::WouldBlock);
        drop(map);
        IdMap::open(dir.path(), 4).map(drop)
    }

    #[test]
    fn the_map_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<IdMap>();
    }
}
