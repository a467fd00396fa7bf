//! Files that are never half-written and never write through something else: everything
//! faultline writes (reports, traces, timelines, plots, scenarios) goes to a temporary file of
//! its own beside the final path, created exclusively (never an existing file, never through a
//! symbolic link), is synced and then renamed into place. A reader, or a process killed midway,
//! sees the old file or the new one, never a mix; two writers of one path each finish whole;
//! a writer that fails or is dropped removes its temporary file. `cli/tests/kill_writers.rs`
//! kills writers to check it.
//!
//! A target that is not a regular file (a directory, a device, a FIFO, a socket) or that is a
//! symbolic link is refused before anything is written: renaming over it would replace it.
//!
//! The path `-` is standard output ([`is_stdout`]): a stream, written as it comes and never
//! taken back, for a command whose caller pipes its product on. A file named `-` is `./-`.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Temporary names tried before giving up (each taken name means another writer is active).
const TEMPORARY_NAME_TRIES: u32 = 64;

/// Distinguishes this process's temporary files from each other.
static NEXT_TEMPORARY: AtomicU64 = AtomicU64::new(0);

/// This process's temporary files not yet committed or removed, for a program that is told
/// to stop (SIGINT, SIGTERM) to remove before it exits: see [`remove_temporary_files`].
static LIVE: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

fn live() -> std::sync::MutexGuard<'static, BTreeSet<PathBuf>> {
    LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Removes every temporary file this process has open for writing; the targets stay as
/// they were. For a program stopping on a signal, just before it exits.
pub fn remove_temporary_files() {
    for tmp in std::mem::take(&mut *live()) {
        let _ = std::fs::remove_file(tmp);
    }
}

/// The path that names standard output rather than a file: `-`.
pub fn is_stdout(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// A file written under a temporary name in its directory and renamed into place at the end.
pub struct AtomicFile {
    path: PathBuf,
    /// The temporary file; none for standard output.
    tmp: Option<PathBuf>,
    /// Where the content goes.
    pub out: BufWriter<File>,
    committed: bool,
}

fn refused(path: &Path, why: &str) -> std::io::Error {
    let message = format!("{}: {why}", path.display());
    std::io::Error::new(std::io::ErrorKind::InvalidInput, message)
}

/// Whether `path` can be written: its directory exists, and it is absent or a regular file
/// (not a symbolic link, a directory, a device, a FIFO or a socket). Commands call this for
/// every output before they start work, so a bad output costs nothing.
/// Standard output (`-`) can always be written.
pub fn check_target(path: &Path) -> std::io::Result<()> {
    if is_stdout(path) {
        return Ok(());
    }
    if path.file_name().is_none() {
        return Err(refused(path, "not a file name"));
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => Err(refused(
            path,
            "is a symbolic link (faultline writes only regular files: name the file it points to)",
        )),
        Ok(meta) if meta.is_dir() => Err(refused(
            path,
            "is a directory; faultline writes only regular files",
        )),
        Ok(meta) if !meta.is_file() => Err(refused(
            path,
            "is not a regular file; faultline writes only regular files",
        )),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            if parent.is_dir() {
                Ok(())
            } else {
                Err(refused(path, "its directory does not exist"))
            }
        }
        Err(e) => Err(e),
    }
}

impl AtomicFile {
    /// Checks `path` ([`check_target`]) and creates a new temporary file beside it,
    /// `.NAME.PID.N.tmp`, exclusively: an existing file or link of that name is never opened.
    /// For `-`, writes to (a duplicate of) standard output instead.
    pub fn create(path: &Path) -> std::io::Result<AtomicFile> {
        if is_stdout(path) {
            use std::os::fd::AsFd;
            let fd = std::io::stdout().as_fd().try_clone_to_owned()?;
            return Ok(AtomicFile {
                path: path.to_path_buf(),
                tmp: None,
                out: BufWriter::with_capacity(1 << 20, File::from(fd)),
                committed: false,
            });
        }
        check_target(path)?;
        let name = path.file_name().expect("checked").to_string_lossy();
        let pid = std::process::id();
        for _ in 0..TEMPORARY_NAME_TRIES {
            let n = NEXT_TEMPORARY.fetch_add(1, Ordering::Relaxed);
            let tmp = path.with_file_name(format!(".{name}.{pid}.{n}.tmp"));
            match OpenOptions::new().write(true).create_new(true).open(&tmp) {
                Ok(file) => {
                    live().insert(tmp.clone());
                    return Ok(AtomicFile {
                        path: path.to_path_buf(),
                        tmp: Some(tmp),
                        out: BufWriter::with_capacity(1 << 20, file),
                        committed: false,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(refused(path, "every temporary name beside it is taken"))
    }

    /// Flushes and syncs the content, then renames it into place (checking the target again:
    /// it may have changed while the content was written). Standard output is only flushed.
    pub fn commit(mut self) -> std::io::Result<()> {
        let Some(tmp) = self.tmp.clone() else {
            self.committed = true;
            return self.out.flush();
        };
        check_target(&self.path)?;
        self.out.flush()?;
        self.out.get_ref().sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        self.committed = true;
        live().remove(&tmp);
        Ok(())
    }

    /// Drops the content and removes the temporary file; the old file, if any, stays. What
    /// went to standard output has gone.
    pub fn discard(self) {
        drop(self);
    }
}

/// A file never committed leaves nothing behind: not on an error, not on an early return.
impl Drop for AtomicFile {
    fn drop(&mut self) {
        if let (false, Some(tmp)) = (self.committed, &self.tmp) {
            let _ = std::fs::remove_file(tmp);
            live().remove(tmp);
        }
    }
}

/// Writes `bytes` to `path` through an [`AtomicFile`].
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = AtomicFile::create(path)?;
    file.out.write_all(bytes)?;
    file.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(test: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("faultline-atomic-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = (std::fs::read_dir(dir).unwrap())
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// A link planted where the temporary file once always went (`.NAME.tmp`) must not make
    /// faultline write through it into another file.
    #[test]
    fn a_planted_link_never_redirects_a_write() {
        let dir = scratch("planted");
        let victim = dir.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join(".out.tmp")).unwrap();
        write_atomically(&dir.join("out"), b"report").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(std::fs::read_to_string(dir.join("out")).unwrap(), "report");
        // A link as the target itself is refused, and what it points to is untouched.
        std::os::unix::fs::symlink(&victim, dir.join("link")).unwrap();
        let e = write_atomically(&dir.join("link"), b"x").unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn targets_that_are_not_regular_files_are_refused_before_anything_is_written() {
        let dir = scratch("targets");
        let socket = dir.join("socket");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        for (target, says) in [
            (dir.clone(), "is a directory"),
            (socket.clone(), "not a regular file"),
            (dir.join("missing/out"), "directory does not exist"),
        ] {
            let e = AtomicFile::create(&target).err().expect("refused");
            assert!(e.to_string().contains(says), "{}: {e}", target.display());
        }
        assert!(std::fs::symlink_metadata(&socket)
            .unwrap()
            .file_type()
            .is_socket_like());
        assert_eq!(names(&dir), ["socket"], "nothing was written");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn two_writers_of_one_path_each_finish_whole_and_a_dropped_one_leaves_nothing() {
        let dir = scratch("writers");
        let path = dir.join("trace");
        let mut a = AtomicFile::create(&path).unwrap();
        let mut b = AtomicFile::create(&path).unwrap();
        a.out.write_all(&[b'a'; 100_000]).unwrap();
        b.out.write_all(&[b'b'; 50_000]).unwrap();
        a.commit().unwrap();
        b.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), vec![b'b'; 50_000]);
        let mut dropped = AtomicFile::create(&path).unwrap();
        dropped.out.write_all(b"half").unwrap();
        drop(dropped);
        assert_eq!(names(&dir), ["trace"], "no temporary file is left");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `FileType::is_socket` is Unix-only; this keeps the test's intent readable.
    trait SocketLike {
        fn is_socket_like(&self) -> bool;
    }

    impl SocketLike for std::fs::FileType {
        fn is_socket_like(&self) -> bool {
            use std::os::unix::fs::FileTypeExt;
            self.is_socket()
        }
    }
}
