//! Files that are never half-written: everything faultline writes (reports, traces,
//! timelines, plots, scenarios) goes to a temporary name beside its final path, is synced and
//! then renamed into place, so a reader (or a process killed midway) sees the old file or the
//! new one, never a mix. `cli/tests/kill_writers.rs` kills writers to check it.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// A file written under a temporary name in its directory and renamed into place at the end.
pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    /// Where the content goes.
    pub out: BufWriter<File>,
}

impl AtomicFile {
    /// Creates `.NAME.tmp` beside `path`.
    pub fn create(path: &Path) -> std::io::Result<AtomicFile> {
        let name = path.file_name().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name")
        })?;
        let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
        let file = File::create(&tmp)?;
        Ok(AtomicFile {
            path: path.to_path_buf(),
            tmp,
            out: BufWriter::with_capacity(1 << 20, file),
        })
    }

    /// Flushes and syncs the content, then renames it into place.
    pub fn commit(self) -> std::io::Result<()> {
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&self.tmp, &self.path)
    }

    /// Drops the content and removes the temporary file; the old file, if any, stays.
    pub fn discard(self) {
        drop(self.out);
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// Writes `bytes` to `path` through an [`AtomicFile`].
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = AtomicFile::create(path)?;
    file.out.write_all(bytes)?;
    file.commit()
}
