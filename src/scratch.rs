//! A directory of one's own, removed when dropped: the benches' temporary stores and the
//! audit's scratch files.

use std::path::{Path, PathBuf};

pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    /// Creates `wattledger-{tag}-{pid}-{random}` under `parent`, by default the system's
    /// temporary directory (`TMPDIR`).
    pub fn new(parent: Option<&Path>, tag: &str) -> std::io::Result<Self> {
        let parent = parent.map_or_else(std::env::temp_dir, Path::to_path_buf);
        let dir = parent.join(format!(
            "wattledger-{tag}-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
