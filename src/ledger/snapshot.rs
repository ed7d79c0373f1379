//! The write state saved at a log position, so that opening the ledger reads a snapshot
//! and the log's tail instead of replaying every event (docs/DECISIONS.md, "Store,
//! snapshot and audit").
//!
//! The body is the state without its readings as JSON, then the readings in their binary
//! encoding ([`Readings::encode`]). Whoever loads it checks its position and
//! chain hash against the log ([`snapfile::check_against_log`]).

use crate::domain::LedgerState;
use crate::domain::state::Readings;
use crate::snapfile::{self, Header, SnapError};
use std::path::{Path, PathBuf};

const KIND: &[u8; 8] = b"ledger\0\0";
/// Bump whenever `evolve` or the state's shape changes what a log folds into: a snapshot of
/// another format is ignored (and the state rebuilt from the log), never misread.
pub const FORMAT: u32 = 3;

/// Writes the state as it stands at `header` (atomically).
pub fn write(path: &Path, header: &Header, state: &LedgerState) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    snapfile::write(path, KIND, FORMAT, header, |e| {
        e.field(&serde_json::to_vec(state).map_err(std::io::Error::other)?)?;
        state.readings.encode(e)
    })
}

/// What reading a snapshot gives: `Ok(None)` when there is none.
pub type Read = Result<Option<(Header, LedgerState)>, SnapError>;

/// Reads a snapshot on the blocking pool (it can take seconds).
pub async fn read_in_background(path: PathBuf) -> Read {
    tokio::task::spawn_blocking(move || read(&path))
        .await
        .unwrap_or_else(|e| Err(SnapError::Io(std::io::Error::other(e))))
}

/// Reads a snapshot; its readings' slots are in [`readings_home`] of `path`. Does not
/// consult the log.
pub fn read(path: &Path) -> Read {
    let home = readings_home(path);
    snapfile::read(path, KIND, FORMAT, |_, d| {
        let mut state: LedgerState =
            serde_json::from_slice(&d.field()?).map_err(|e| SnapError::Damaged(format!("state: {e}")))?;
        state.readings = Readings::decode(d, Some(&home))?;
        Ok(state)
    })
}

/// The directory beside a write-state snapshot where the readings' slots are kept
/// (`<db>.state.snapshot` → `<db>.state.readings`).
pub fn readings_home(snapshot: &Path) -> PathBuf {
    snapshot.with_extension("readings")
}

/// Where the write-state snapshot of a store lives: beside an SQLite file, else under
/// `./data` (named after the store's URL, like the projections' snapshot).
pub fn path_for(url: &str) -> PathBuf {
    crate::projections::engine::sidecar_path(url, "state.snapshot", "state")
}
