//! Real files for checkpoints: named blobs under one directory, written atomically (temporary
//! name, fsync the file, rename, fsync the directory) and verified on read (length and
//! checksum), so a reader never sees a torn or half-written blob, and a corrupted one is an
//! error, not data.
//!
//! Names are relative paths such as `ckpt/000000000012/shard-000003`: each `/` is a
//! subdirectory. A name can never leave the store's directory: empty components, components
//! starting with a dot (so `.` and `..`), absolute names, backslashes and NUL are
//! [`StoreError::BadName`].
//!
//! [`Tiers`] maps trainer-core's storage tiers onto directories, and [`RankStorage`] is one
//! rank's view of them with trainer-core's storage semantics (the `store_*` methods of
//! `Backend`), shared by both transports.
use std::cell::RefCell;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use trainer_core::digest::Digest;
use trainer_core::{Blob, StorageError, Tier, WriteStatus, WriteTicket};

/// The first bytes of every blob file.
const MAGIC: &[u8; 8] = b"FLTBLOB1";
/// Magic, payload length (u64 little-endian), checksum of the payload (u64 little-endian).
const HEADER_LEN: usize = 8 + 8 + 8;
/// Blobs being written carry this prefix until they are renamed; `list` never shows them.
const TEMP_PREFIX: &str = ".tmp-";

/// Why a store operation failed. A caller can tell a missing blob from a corrupt one from a
/// failing disk.
#[derive(Debug)]
pub enum StoreError {
    /// The name is empty, absolute, has an empty part or a part starting with a dot (`..`), or
    /// holds a backslash or NUL: it could leave the store's directory.
    BadName {
        name: String,
    },
    NotFound {
        name: String,
    },
    /// The blob exists but fails its length or checksum check.
    Corrupt {
        name: String,
        reason: String,
    },
    Io {
        name: String,
        source: io::Error,
    },
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::BadName { name } => write!(
                f,
                "bad blob name {name:?}: expected '/'-separated non-empty parts, none starting \
                 with '.' (so no '..'), no leading '/', no '\\'"
            ),
            StoreError::NotFound { name } => write!(f, "blob {name:?} not found"),
            StoreError::Corrupt { name, reason } => write!(f, "blob {name:?} is corrupt: {reason}"),
            StoreError::Io { name, source } => write!(f, "blob {name:?}: {source}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// A directory of named, checksummed blobs.
#[derive(Clone, Debug)]
pub struct FileStore {
    dir: PathBuf,
}

fn checksum(data: &[u8]) -> u64 {
    let mut digest = Digest::new();
    digest.bytes(data);
    digest.finish()
}

fn check_name(name: &str) -> Result<(), StoreError> {
    let bad_component =
        |c: &str| c.is_empty() || c.starts_with('.') || c.contains('\\') || c.contains('\0');
    if name.split('/').any(bad_component) {
        return Err(StoreError::BadName { name: name.into() });
    }
    Ok(())
}

/// The bytes of a blob file holding `data`.
pub fn encode_blob(data: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER_LEN + data.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(data.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&checksum(data).to_le_bytes());
    bytes.extend_from_slice(data);
    bytes
}

/// The payload of a blob file, or why it is not a whole, intact blob.
pub fn decode_blob(bytes: &[u8]) -> Result<&[u8], String> {
    if bytes.len() < HEADER_LEN {
        return Err(format!(
            "{} bytes is shorter than the {HEADER_LEN}-byte header",
            bytes.len()
        ));
    }
    if &bytes[..8] != MAGIC {
        return Err("wrong magic".into());
    }
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let len = word(8);
    let data = &bytes[HEADER_LEN..];
    if data.len() as u64 != len {
        return Err(format!(
            "header says {len} bytes, file holds {}",
            data.len()
        ));
    }
    let expected = word(16);
    let actual = checksum(data);
    if actual != expected {
        return Err(format!(
            "checksum {actual:016x}, header says {expected:016x}"
        ));
    }
    Ok(data)
}

impl FileStore {
    /// A store in `dir`, created if missing.
    pub fn open(dir: impl Into<PathBuf>) -> Result<FileStore, StoreError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            name: dir.display().to_string(),
            source,
        })?;
        Ok(FileStore { dir })
    }

    /// A store in `dir`, created by the first write; until then it is empty.
    pub fn at(dir: impl Into<PathBuf>) -> FileStore {
        FileStore { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `data` under `name`, replacing any blob of that name. When this returns, the blob
    /// is durable; a crash at any point leaves either the old blob or the new one, never a mix.
    pub fn write(&self, name: &str, data: &[u8]) -> Result<(), StoreError> {
        check_name(name)?;
        let io_err = |source| StoreError::Io {
            name: name.into(),
            source,
        };
        let final_path = self.dir.join(name);
        let parent = final_path.parent().expect("a name has a parent: the store");
        fs::create_dir_all(parent).map_err(io_err)?;
        let file_name = final_path
            .file_name()
            .expect("a checked name ends in a file name")
            .to_string_lossy();
        let temp_path = parent.join(format!("{TEMP_PREFIX}{}-{file_name}", std::process::id()));
        let mut file = File::create(&temp_path).map_err(io_err)?;
        file.write_all(&encode_blob(data)).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        drop(file);
        fs::rename(&temp_path, &final_path).map_err(io_err)?;
        // The rename is durable only once the directory entry is.
        File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io_err)?;
        Ok(())
    }

    /// Reads the blob `name`, verifying its length and checksum.
    pub fn read(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        check_name(name)?;
        let bytes = fs::read(self.dir.join(name)).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                StoreError::NotFound { name: name.into() }
            } else {
                StoreError::Io {
                    name: name.into(),
                    source,
                }
            }
        })?;
        decode_blob(&bytes)
            .map(<[u8]>::to_vec)
            .map_err(|reason| StoreError::Corrupt {
                name: name.into(),
                reason,
            })
    }

    /// The names of committed blobs, sorted; blobs still being written are not listed.
    pub fn list(&self) -> Result<Vec<String>, StoreError> {
        self.list_prefix("")
    }

    /// The names of committed blobs that start with `prefix`, sorted. A store whose directory
    /// does not exist yet is empty.
    pub fn list_prefix(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut names = Vec::new();
        let mut dirs = vec![(self.dir.clone(), String::new())];
        while let Some((dir, relative)) = dirs.pop() {
            let io_err = |source| StoreError::Io {
                name: dir.display().to_string(),
                source,
            };
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(e)),
            };
            for entry in entries {
                let entry = entry.map_err(io_err)?;
                let part = entry.file_name().to_string_lossy().into_owned();
                if check_name(&part).is_err() {
                    continue;
                }
                let name = format!("{relative}{part}");
                let kind = entry.file_type().map_err(io_err)?;
                if kind.is_dir() {
                    // Only walk into directories that can hold a name with the prefix.
                    let as_dir = format!("{name}/");
                    if as_dir.starts_with(prefix) || prefix.starts_with(&as_dir) {
                        dirs.push((entry.path(), as_dir));
                    }
                } else if kind.is_file() && name.starts_with(prefix) {
                    names.push(name);
                }
            }
        }
        names.sort();
        Ok(names)
    }

    /// Deletes the blob `name` if it exists, then any directories its removal left empty.
    pub fn delete(&self, name: &str) -> Result<(), StoreError> {
        check_name(name)?;
        let path = self.dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(StoreError::Io {
                    name: name.into(),
                    source,
                })
            }
        }
        // Best effort: a directory another writer has just filled again stays.
        let mut dir = path.parent();
        while let Some(d) = dir.filter(|d| *d != self.dir.as_path()) {
            if fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    }
}

/// Where each of trainer-core's storage tiers lives on this machine.
///
/// - `Persistent`: the checkpoint directory, shared by every rank (on several machines it must
///   be a shared file system).
/// - `Host`: a directory per node under `host_root`, standing for that node's host memory:
///   by default under `/dev/shm` (memory-backed) where it exists, else the temporary
///   directory. Files there outlive the process, as pinned host buffers of a checkpointing
///   agent would; they do not outlive the machine.
/// - `Peer { node }`: node `node`'s host directory. On one machine every node's host
///   directory is local, so a copy to a peer is a file write; on several machines it would
///   need a transfer to that node (not implemented: the NCCL transport's ranks can only reach
///   their own machine's directories, which is right only when all ranks share one machine).
#[derive(Clone, Debug)]
pub struct Tiers {
    persistent: FileStore,
    host_root: PathBuf,
    node_count: usize,
}

impl Tiers {
    pub fn new(
        persistent_dir: impl Into<PathBuf>,
        host_root: impl Into<PathBuf>,
        node_count: usize,
    ) -> Tiers {
        Tiers {
            persistent: FileStore::at(persistent_dir),
            host_root: host_root.into(),
            node_count,
        }
    }

    /// `/dev/shm/{name}` when `/dev/shm` is a directory, else `{temp}/{name}`.
    pub fn default_host_root(name: &str) -> PathBuf {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            shm.join(name)
        } else {
            std::env::temp_dir().join(name)
        }
    }

    pub fn persistent(&self) -> &FileStore {
        &self.persistent
    }

    pub fn host_root(&self) -> &Path {
        &self.host_root
    }

    /// Node `node`'s host-memory directory.
    pub fn host(&self, node: usize) -> FileStore {
        FileStore::at(self.host_root.join(format!("node-{node:06}")))
    }

    /// The store behind `tier` as seen from a rank on `my_node`, or `None` for a node outside
    /// the job.
    pub fn store(&self, my_node: usize, tier: Tier) -> Option<FileStore> {
        match tier {
            Tier::Persistent => Some(self.persistent.clone()),
            Tier::Host => Some(self.host(my_node)),
            Tier::Peer { node } if node < self.node_count => Some(self.host(node)),
            Tier::Peer { .. } => None,
        }
    }
}

/// A stored blob file's payload: the modelled bytes (u64 little-endian), then the bytes, so that
/// a read returns exactly the [`Blob`] that was written.
fn encode_stored(blob: &Blob) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + blob.bytes.len());
    out.extend_from_slice(&blob.modelled_bytes.to_le_bytes());
    out.extend_from_slice(&blob.bytes);
    out
}

fn decode_stored(data: Vec<u8>) -> Option<Blob> {
    let (head, rest) = data.split_first_chunk::<8>()?;
    Some(Blob {
        modelled_bytes: u64::from_le_bytes(*head),
        bytes: rest.to_vec(),
    })
}

/// One rank's storage, with trainer-core's semantics:
///
/// - `put` returns once the blob is durable (fsynced and renamed into place).
/// - `put_async` writes synchronously too, before it returns, and hands back a ticket whose
///   status is already `Durable` or `Failed`: the rank does not overlap the write with
///   training. That keeps checkpoint commits at the same step on every run (a background
///   writer would make the commit step depend on disk speed); the persist time shows up as
///   step time instead.
/// - A name that could leave the tier's directory is refused: `WriteFailed` for a write,
///   `NotFound` for a read (trainer-core's error has no variant for it; the names trainer-core
///   builds are always valid). A corrupt blob reads as `NotFound`, so a restore falls back to
///   another copy; an unreadable disk as `Unavailable`.
/// - `list` and `delete` cannot fail in trainer-core's contract: a listing error lists nothing
///   and a failed delete leaves the blob (restores verify what they read anyway).
#[derive(Debug)]
pub struct RankStorage {
    tiers: Tiers,
    node: usize,
    tickets: RefCell<Vec<WriteStatus>>,
}

impl RankStorage {
    pub fn new(tiers: Tiers, node: usize) -> RankStorage {
        RankStorage {
            tiers,
            node,
            tickets: RefCell::new(Vec::new()),
        }
    }

    pub fn tiers(&self) -> &Tiers {
        &self.tiers
    }

    pub fn put(&self, tier: Tier, name: &str, blob: &Blob) -> Result<(), StorageError> {
        let store = self
            .tiers
            .store(self.node, tier)
            .ok_or(StorageError::Unavailable { tier })?;
        store
            .write(name, &encode_stored(blob))
            .map_err(|_| StorageError::WriteFailed { name: name.into() })
    }

    pub fn put_async(&self, tier: Tier, name: &str, blob: &Blob) -> WriteTicket {
        let status = match self.put(tier, name, blob) {
            Ok(()) => WriteStatus::Durable,
            Err(_) => WriteStatus::Failed,
        };
        self.ticket(status)
    }

    /// A ticket for a write that was refused before it started (the job is restarting).
    pub fn refused(&self) -> WriteTicket {
        self.ticket(WriteStatus::Failed)
    }

    fn ticket(&self, status: WriteStatus) -> WriteTicket {
        let mut tickets = self.tickets.borrow_mut();
        tickets.push(status);
        WriteTicket(tickets.len() as u64 - 1)
    }

    pub fn poll(&self, ticket: WriteTicket) -> WriteStatus {
        // A ticket this rank never handed out names no write that could become durable.
        self.tickets
            .borrow()
            .get(ticket.0 as usize)
            .copied()
            .unwrap_or(WriteStatus::Failed)
    }

    pub fn get(&self, tier: Tier, name: &str) -> Result<Blob, StorageError> {
        let store = self
            .tiers
            .store(self.node, tier)
            .ok_or(StorageError::Unavailable { tier })?;
        let not_found = || StorageError::NotFound { name: name.into() };
        match store.read(name) {
            Ok(data) => decode_stored(data).ok_or_else(not_found),
            Err(StoreError::Io { .. }) => Err(StorageError::Unavailable { tier }),
            Err(_) => Err(not_found()),
        }
    }

    pub fn list(&self, tier: Tier, prefix: &str) -> Vec<String> {
        self.tiers
            .store(self.node, tier)
            .and_then(|store| store.list_prefix(prefix).ok())
            .unwrap_or_default()
    }

    pub fn delete(&self, tier: Tier, name: &str) {
        if let Some(store) = self.tiers.store(self.node, tier) {
            let _ = store.delete(name);
        }
    }
}
