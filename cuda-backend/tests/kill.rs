//! Crash safety on real files: a process writing checkpoint blobs is killed (SIGKILL) at
//! seeded random moments, over and over, and after every kill each blob the store lists must
//! read back whole and intact: the old version or the new one, never a mix.
//!
//! The writer is this test binary run again as a child (`child_writer`, which does nothing
//! unless `KILL_TEST_DIR` is set). A control run kills a writer that streams straight into the
//! final name, as a careless writer would, and must see torn files: without it, a kill that
//! never lands mid-write would let the real test pass for nothing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cuda_backend::store::FileStore;
use trainer_core::digest::mix64;

/// Blobs the writer keeps rewriting, and how many bytes each holds.
const NAMES: [&str; 3] = [
    "ckpt/000000000001/shard-000000",
    "ckpt/000000000001/shard-000001",
    "manifests/000000000001",
];
const BLOB_BYTES: usize = 2 << 20;
const KILLS: u64 = 24;

/// The content of version `version` of blob `name`: every 8-byte word says which blob and
/// which version it belongs to, so a mix of two versions is visible even where a checksum
/// would not be consulted.
fn content(name: &str, version: u64) -> Vec<u8> {
    let tag = mix64(name.len() as u64 ^ name.as_bytes()[name.len() - 1] as u64);
    let word = (tag << 32) ^ version;
    word.to_le_bytes()
        .iter()
        .copied()
        .cycle()
        .take(BLOB_BYTES)
        .collect()
}

/// Whether `bytes` is one whole version of `name`'s content.
fn is_whole_version(name: &str, bytes: &[u8]) -> bool {
    if bytes.len() != BLOB_BYTES {
        return false;
    }
    let version = u64::from_le_bytes(bytes[..8].try_into().unwrap()) & 0xffff_ffff;
    bytes == content(name, version).as_slice()
}

/// The child: rewrites every blob again and again until killed. `careless` streams the file
/// straight into its final name in chunks instead of going through the store.
#[test]
fn child_writer() {
    let Some(dir) = std::env::var_os("KILL_TEST_DIR") else {
        return; // an ordinary test run: nothing to do
    };
    let careless = std::env::var_os("KILL_TEST_CARELESS").is_some();
    let store = FileStore::at(PathBuf::from(&dir));
    for version in 1u64.. {
        for name in NAMES {
            let data = content(name, version);
            if careless {
                careless_write(&PathBuf::from(&dir), name, &data);
            } else {
                store.write(name, &data).expect("the store writes");
            }
        }
    }
}

/// A non-atomic writer: truncates the final file and streams the blob into it.
fn careless_write(dir: &Path, name: &str, data: &[u8]) {
    use std::io::Write;
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut file = std::fs::File::create(&path).unwrap();
    let bytes = cuda_backend::store::encode_blob(data);
    for chunk in bytes.chunks(64 << 10) {
        file.write_all(chunk).unwrap();
    }
}

fn spawn_writer(dir: &Path, careless: bool) -> Child {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            "child_writer",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("KILL_TEST_DIR", dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if careless {
        command.env("KILL_TEST_CARELESS", "1");
    }
    command
        .spawn()
        .expect("the test binary runs again as a writer")
}

/// Waits until the writer has put the first version of every blob in place, so each kill
/// can only meet a rewrite.
fn wait_for_first_versions(dir: &Path, child: &mut Child) {
    for _ in 0..2000 {
        if NAMES.iter().all(|name| dir.join(name).exists()) {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the writer exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("the writer wrote nothing in 10 s");
}

/// Kills a writer `KILLS` times at seeded random moments; returns, per kill, the blobs that
/// failed to read back as one whole version.
fn kill_repeatedly(label: &str, careless: bool) -> Vec<Vec<String>> {
    let dir = std::env::temp_dir().join(format!("faultline-kill-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = FileStore::at(&dir);
    let mut torn_per_kill = Vec::new();
    for kill in 0..KILLS {
        let mut child = spawn_writer(&dir, careless);
        wait_for_first_versions(&dir, &mut child);
        // 0 to 40 ms: several whole rewrites of all blobs fit in that window.
        let delay_us = mix64(0x6b11 ^ kill) % 40_000;
        std::thread::sleep(Duration::from_micros(delay_us));
        child.kill().expect("SIGKILL the writer");
        child.wait().unwrap();
        let mut torn = Vec::new();
        for name in NAMES {
            match store.read(name) {
                Ok(bytes) if is_whole_version(name, &bytes) => {}
                Ok(_) => torn.push(format!("{name}: mixed versions")),
                Err(e) => torn.push(e.to_string()),
            }
        }
        // Whatever the kill left, the store lists exactly the committed names.
        let mut listed = store.list().unwrap();
        listed.sort();
        let mut expected: Vec<String> = NAMES.iter().map(|n| n.to_string()).collect();
        expected.sort();
        assert_eq!(listed, expected, "{label}: listing after kill {kill}");
        torn_per_kill.push(torn);
    }
    let _ = std::fs::remove_dir_all(&dir);
    torn_per_kill
}

#[test]
fn a_killed_store_writer_leaves_every_blob_whole() {
    let torn = kill_repeatedly("store", false);
    for (kill, names) in torn.iter().enumerate() {
        assert!(names.is_empty(), "kill {kill} left torn blobs: {names:?}");
    }
}

#[test]
fn a_killed_careless_writer_does_leave_torn_files() {
    // The control: the same kills against a writer that streams into the final name.
    let torn = kill_repeatedly("careless", true);
    let kills_with_torn = torn.iter().filter(|names| !names.is_empty()).count();
    assert!(
        kills_with_torn > 0,
        "no kill out of {KILLS} landed mid-write, so the atomic-writer test proves nothing"
    );
    eprintln!("careless writer: {kills_with_torn} of {KILLS} kills left a torn file");
}
