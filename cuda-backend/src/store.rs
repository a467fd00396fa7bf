//! Real files for checkpoints: named blobs in one directory, written atomically (temporary name,
//! fsync the file, rename, fsync the directory) and verified on read (length and checksum), so a
//! reader never sees a torn or half-written blob, and a corrupted one is an error, not data.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use trainer_core::digest::Digest;

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
    /// The name is empty, contains a path separator, or starts with a dot.
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
                "bad blob name {name:?}: expected a non-empty name without '/', '\\' or a leading '.'"
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
    let bad = name.is_empty()
        || name.starts_with('.')
        || name.contains('/')
        || name.contains('\\')
        || name.contains('\0');
    if bad {
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
        let temp_path = self
            .dir
            .join(format!("{TEMP_PREFIX}{}-{name}", std::process::id()));
        let mut file = File::create(&temp_path).map_err(io_err)?;
        file.write_all(&encode_blob(data)).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        drop(file);
        fs::rename(&temp_path, &final_path).map_err(io_err)?;
        // The rename is durable only once the directory entry is.
        File::open(&self.dir)
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
        let io_err = |source| StoreError::Io {
            name: self.dir.display().to_string(),
            source,
        };
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if check_name(&name).is_ok() && entry.file_type().map_err(io_err)?.is_file() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }
}

/// One replica's training state as saved in a checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainerState {
    /// Steps completed.
    pub step: u64,
    pub last_loss: f32,
    pub params: Vec<f32>,
}

impl TrainerState {
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(20 + 4 * self.params.len());
        bytes.extend_from_slice(&self.step.to_le_bytes());
        bytes.extend_from_slice(&self.last_loss.to_bits().to_le_bytes());
        bytes.extend_from_slice(&(self.params.len() as u64).to_le_bytes());
        for p in &self.params {
            bytes.extend_from_slice(&p.to_bits().to_le_bytes());
        }
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Result<TrainerState, String> {
        if bytes.len() < 20 {
            return Err(format!(
                "{} bytes is too short for a trainer state",
                bytes.len()
            ));
        }
        let step = u64::from_le_bytes(bytes[0..8].try_into().expect("8 bytes"));
        let last_loss = f32::from_bits(u32::from_le_bytes(bytes[8..12].try_into().expect("4")));
        let count = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
        let rest = &bytes[20..];
        if rest.len() as u64 != count * 4 {
            return Err(format!(
                "{count} parameters need {} bytes, {} present",
                count * 4,
                rest.len()
            ));
        }
        let params = rest
            .chunks_exact(4)
            .map(|c| f32::from_bits(u32::from_le_bytes(c.try_into().expect("4 bytes"))))
            .collect();
        Ok(TrainerState {
            step,
            last_loss,
            params,
        })
    }
}

/// The blob name of `rank`'s checkpoint.
pub fn checkpoint_name(rank: usize) -> String {
    format!("rank-{rank:06}.ckpt")
}
