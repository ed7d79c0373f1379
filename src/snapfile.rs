//! The binary snapshot files that let a process start from where it stopped instead of
//! replaying the whole log: the ledger's write state (`ledger::snapshot`) and the SQLite
//! store's index (`store::sqlite`).
//!
//! A file is `magic, kind, format, position, chain hash, body, SHA-256 of all before it`.
//! It is written to a temporary name, fsynced and renamed, so a crash leaves either the old
//! file or the new one. It is read as a stream (a 10M-event state is about a gigabyte, and
//! reading it whole first would double the memory it needs), its checksum checked at the
//! end, and whoever reads it checks `position` and `chain hash` against the log before
//! trusting it: a snapshot is a cache of the log, never a source of truth.

use crate::digest::Sha256;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"WLSNAP\x00\x01";

/// What a snapshot file says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The log position the body reflects (0: the empty log).
    pub position: u64,
    /// The chain hash at `position`.
    pub chain_hash: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapError {
    #[error("cannot read it: {0}")]
    Io(#[from] std::io::Error),
    #[error("it is damaged: {0}")]
    Damaged(String),
}

fn damaged(what: impl Into<String>) -> SnapError {
    SnapError::Damaged(what.into())
}

/// Passes writes through, hashing them (under the encoder's buffer: in large chunks).
pub struct HashingWriter<W: Write> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Passes reads through, hashing the bytes before `hash_end` (the checksum's offset).
pub struct HashingReader<R: Read> {
    inner: R,
    hash: Sha256,
    offset: u64,
    hash_end: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let hashed = (self.hash_end.saturating_sub(self.offset)).min(n as u64) as usize;
        self.hash.update(&buf[..hashed]);
        self.offset += n as u64;
        Ok(n)
    }
}

/// The fields of a fixed-size record read with [`Dec::array`], in order.
pub struct Fields<'a>(pub &'a [u8]);

impl Fields<'_> {
    /// The next `N` bytes. Panics past the record's end: the record's size is fixed by the
    /// caller, and so are the fields it takes.
    pub fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        head.try_into().expect("N bytes")
    }
}

/// Writes what the body encoder gives; every byte is hashed on its way to the file.
pub struct Enc<W: Write> {
    out: W,
}

impl<W: Write> Enc<W> {
    pub fn new(out: W) -> Self {
        Self { out }
    }
    pub fn bytes(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.out.write_all(b)
    }
    pub fn u8(&mut self, v: u8) -> std::io::Result<()> {
        self.bytes(&[v])
    }
    pub fn u32(&mut self, v: u32) -> std::io::Result<()> {
        self.bytes(&v.to_le_bytes())
    }
    pub fn u64(&mut self, v: u64) -> std::io::Result<()> {
        self.bytes(&v.to_le_bytes())
    }
    pub fn i64(&mut self, v: i64) -> std::io::Result<()> {
        self.bytes(&v.to_le_bytes())
    }
    pub fn u128(&mut self, v: u128) -> std::io::Result<()> {
        self.bytes(&v.to_le_bytes())
    }
    /// A length-prefixed byte string.
    pub fn field(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.u64(b.len() as u64)?;
        self.bytes(b)
    }
}

/// Reads a body back; every read fails cleanly on a short file.
pub struct Dec<R: Read> {
    inp: R,
    /// Bytes of the file not read yet.
    remaining: u64,
}

impl<R: Read> Dec<R> {
    /// Reads a body of `remaining` bytes from `inp` (counts are bounded by it).
    pub fn new(inp: R, remaining: u64) -> Self {
        Self { inp, remaining }
    }
    pub fn fill(&mut self, buf: &mut [u8]) -> Result<(), SnapError> {
        self.inp.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => damaged("it ends early"),
            _ => SnapError::Io(e),
        })?;
        self.remaining = self.remaining.saturating_sub(buf.len() as u64);
        Ok(())
    }
    /// The next `N` bytes (one read for a fixed-size record).
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], SnapError> {
        let mut b = [0u8; N];
        self.fill(&mut b)?;
        Ok(b)
    }
    pub fn u8(&mut self) -> Result<u8, SnapError> {
        Ok(self.array::<1>()?[0])
    }
    pub fn u32(&mut self) -> Result<u32, SnapError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, SnapError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub fn i64(&mut self) -> Result<i64, SnapError> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    pub fn u128(&mut self) -> Result<u128, SnapError> {
        Ok(u128::from_le_bytes(self.array()?))
    }
    /// A count of items that each take at least `item_bytes`: refuses one the rest of the
    /// file could not hold, so that a damaged count does not make the reader reserve
    /// terabytes.
    pub fn count(&mut self, item_bytes: usize) -> Result<usize, SnapError> {
        let n = self.u64()?;
        if n.saturating_mul(item_bytes.max(1) as u64) > self.remaining {
            return Err(damaged(format!("a count of {n} items in {} bytes", self.remaining)));
        }
        Ok(n as usize)
    }
    /// A length-prefixed byte string; a length past the end of the file is refused
    /// before anything is allocated for it.
    pub fn field(&mut self) -> Result<Vec<u8>, SnapError> {
        let n = self.u64()?;
        if n > self.remaining {
            return Err(damaged(format!("a field of {n} bytes")));
        }
        let mut b = vec![0u8; n as usize];
        self.fill(&mut b)?;
        Ok(b)
    }
    pub fn string(&mut self) -> Result<String, SnapError> {
        String::from_utf8(self.field()?).map_err(|_| damaged("a string that is not UTF-8"))
    }
}

/// Why a snapshot taken at `position` with `chain_hash` does not describe the log in
/// `store`, if it does not: the log must hold an event there, with that hash.
pub async fn check_against_log(
    store: &dyn crate::store::EventStore,
    position: u64,
    chain_hash: &str,
) -> Result<Option<String>, crate::store::StoreError> {
    if position == 0 {
        return Ok(None);
    }
    let at = store.read_all(position - 1, 1).await?;
    Ok(match at.first() {
        Some(r) if r.position == position && r.hash == chain_hash => None,
        Some(r) if r.position == position => Some(format!(
            "the log's hash at position {position} is {}, the snapshot recorded {chain_hash}",
            r.hash
        )),
        _ => Some(format!(
            "the snapshot has seen position {position} but the log does not reach it"
        )),
    })
}

/// Writes a snapshot atomically: `body` encodes what follows the header.
pub fn write(
    path: &Path,
    kind: &[u8; 8],
    format: u32,
    header: &Header,
    body: impl FnOnce(&mut Enc<BufWriter<HashingWriter<std::fs::File>>>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    remove_stale_temporaries(path);
    let tmp = temporary_path(path);
    let result = (|| {
        let file = std::fs::File::create(&tmp)?;
        let mut enc = Enc {
            out: BufWriter::with_capacity(
                1 << 20,
                HashingWriter {
                    inner: file,
                    hash: Sha256::new(),
                },
            ),
        };
        enc.bytes(MAGIC)?;
        enc.bytes(kind)?;
        enc.u32(format)?;
        enc.u64(header.position)?;
        enc.field(header.chain_hash.as_bytes())?;
        body(&mut enc)?;
        let HashingWriter { mut inner, hash } = enc.out.into_inner().map_err(|e| e.into_error())?;
        inner.write_all(&hash.finalize())?;
        inner.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path)?;
    // The rename itself is durable only once the directory is.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Removes what writes of this snapshot by processes that no longer run left behind (a
/// crash in the middle of a write leaves its temporary file, as big as the snapshot).
/// Another live process's temporary file is left alone: it may be writing it now.
fn remove_stale_temporaries(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let prefix = format!("{name}.");
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(rest) = file
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|r| r.strip_suffix(".tmp"))
        else {
            continue;
        };
        let Some(Ok(pid)) = rest.split('.').next().map(str::parse::<u32>) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn temporary_path(path: &Path) -> PathBuf {
    // A name of its own per write: two saves at once must not share a temporary file.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    PathBuf::from(format!("{}.{}.{seq}.tmp", path.display(), std::process::id()))
}

/// Reads a snapshot: checks magic, kind and format, hands the header to `body` to decode
/// the rest, then checks the checksum and that nothing follows it. `Ok(None)`: no file.
pub fn read<T>(
    path: &Path,
    kind: &[u8; 8],
    format: u32,
    body: impl FnOnce(&Header, &mut Dec<BufReader<HashingReader<std::fs::File>>>) -> Result<T, SnapError>,
) -> Result<Option<(Header, T)>, SnapError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let len = file.metadata()?.len();
    let mut dec = Dec {
        inp: BufReader::with_capacity(
            1 << 20,
            HashingReader {
                inner: file,
                hash: Sha256::new(),
                offset: 0,
                hash_end: len.saturating_sub(32),
            },
        ),
        remaining: len,
    };
    if dec.array::<8>()? != *MAGIC {
        return Err(damaged("not a wattledger snapshot"));
    }
    if dec.array::<8>()? != *kind {
        return Err(damaged("a snapshot of something else"));
    }
    let found = dec.u32()?;
    if found != format {
        return Err(damaged(format!(
            "format {found} is not {format} (written by another version)"
        )));
    }
    let position = dec.u64()?;
    let chain_hash = dec.string()?;
    let header = Header { position, chain_hash };
    let value = body(&header, &mut dec)?;
    // The body must end where the checksum begins, and the checksum end the file.
    if dec.remaining != 32 {
        return Err(damaged(format!("{} bytes where its checksum should be", dec.remaining)));
    }
    let mut sum = [0u8; 32];
    dec.inp.read_exact(&mut sum).map_err(|_| damaged("it ends early"))?;
    let mut rest = [0u8; 1];
    if dec.inp.read(&mut rest)? != 0 {
        return Err(damaged("it grew while it was read"));
    }
    let reader = dec.inp.into_inner();
    if reader.offset != len || sum[..] != reader.hash.finalize()[..] {
        return Err(damaged("checksum mismatch"));
    }
    Ok(Some((header, value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIND: &[u8; 8] = b"test\0\0\0\0";

    fn sample(path: &Path) {
        let h = Header {
            position: 42,
            chain_hash: "ab".repeat(32),
        };
        write(path, KIND, 3, &h, |e| {
            e.u32(7)?;
            e.field(b"hello")?;
            e.i64(-5)
        })
        .unwrap();
    }

    type Sample = Option<(Header, (u32, String, i64))>;

    fn decode(path: &Path, format: u32) -> Result<Sample, SnapError> {
        read(path, KIND, format, |_, d| Ok((d.u32()?, d.string()?, d.i64()?)))
    }

    #[test]
    fn a_snapshot_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        assert!(decode(&p, 3).unwrap().is_none(), "no file is no snapshot");
        sample(&p);
        let (h, v) = decode(&p, 3).unwrap().unwrap();
        assert_eq!((h.position, h.chain_hash.len()), (42, 64));
        assert_eq!(v, (7, "hello".to_string(), -5));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn a_write_removes_what_dead_writers_left_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        // A pid above Linux's maximum (2^22) names no process.
        let dead = dir.path().join("s.4294967.0.tmp");
        let ours = dir.path().join(format!("s.{}.99.tmp", std::process::id()));
        let other = dir.path().join("t.4294967.0.tmp");
        let unrelated = dir.path().join("s.notes.tmp");
        for f in [&dead, &ours, &other, &unrelated] {
            std::fs::write(f, b"x").unwrap();
        }
        sample(&p);
        assert!(!dead.exists(), "a dead writer's temporary file is removed");
        assert!(ours.exists(), "this process's own may be in use");
        assert!(other.exists() && unrelated.exists(), "other files are not touched");
        assert!(decode(&p, 3).unwrap().is_some());
    }

    #[test]
    fn damage_of_any_kind_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        sample(&p);
        let good = std::fs::read(&p).unwrap();
        assert!(matches!(decode(&p, 4), Err(SnapError::Damaged(m)) if m.contains("format 3")));
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            std::fs::write(&p, &bad).unwrap();
            assert!(decode(&p, 3).is_err(), "a flipped bit at byte {i} went unnoticed");
        }
        for cut in [0, 7, 20, good.len() - 1] {
            std::fs::write(&p, &good[..cut]).unwrap();
            assert!(decode(&p, 3).is_err(), "a file cut at {cut} was accepted");
        }
        let mut longer = good.clone();
        longer.push(0);
        std::fs::write(&p, &longer).unwrap();
        assert!(decode(&p, 3).is_err(), "trailing bytes were accepted");
    }
}
