//! `run --fr-dir` and `faultline fr`: a hang's dump names the hung rank when read back; a
//! file that is not a dump is refused with its line, exit 2; and a run killed at any moment
//! leaves each dump whole (the old one or a new one), never the head of one.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use trainer_core::digest::mix64;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn faultline(args: &[&str], dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_faultline"));
    command.current_dir(root()).args(args).arg(dir);
    command
}

fn output(mut command: Command) -> (Option<i32>, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().expect("faultline runs");
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (status.code(), text(stdout), text(stderr))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("faultline-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

const RUN: [&str; 4] = ["run", "scenarios/hang-data-loader.toml", "-q", "--fr-dir"];

#[test]
fn a_dump_read_back_names_the_hung_rank_and_a_bad_file_is_refused() {
    let dir = scratch("fr");
    let (code, _, stderr) = output(faultline(&RUN, &dir));
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stdout, stderr) = output(faultline(&["fr"], &dir));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("hang: rank 21 never started"), "{stdout}");
    let (_, json, _) = output(faultline(&["fr", "--json"], &dir));
    let value: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(value["diagnosis"]["missing_ranks"], serde_json::json!([21]));
    // Not a dump: refused, naming the file, its line and column.
    let bad = dir.join("truncated.json");
    std::fs::write(
        &bad,
        "{\"version\": \"faultline-flight-recorder-1\",\n\"trigger\": 7}",
    )
    .unwrap();
    let (code, _, stderr) = output(faultline(&["fr"], &bad));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("truncated.json:2:"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_killed_run_leaves_whole_dumps() {
    let dir = scratch("fr-kill");
    let (code, _, stderr) = output(faultline(&RUN, &dir));
    assert_eq!(code, Some(0), "{stderr}");
    // 64 ranks: one file per rank, as PyTorch writes them.
    let dump = dir.join("fr-gen0").join("rank-21.json");
    let first = std::fs::read(&dump).unwrap();
    assert_eq!(std::fs::read_dir(dir.join("fr-gen0")).unwrap().count(), 64);
    for kill in 0..8u64 {
        let mut command = faultline(&RUN, &dir);
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(mix64(0xf1 ^ kill) % 400_000));
        let _ = child.kill();
        child.wait().unwrap();
        // The same run writes the same dump: whatever the kill hit, the file is the whole one.
        // (A SIGKILL mid-write may leave a `.rank-N.json.PID.N.tmp`, which `fr` never reads.)
        assert_eq!(std::fs::read(&dump).unwrap(), first, "kill {kill}");
        let (code, _, stderr) = output(faultline(&["fr"], &dir));
        assert_eq!(code, Some(0), "kill {kill}: {stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Without `--fr-dir` the dumps go to `fr/<scenario>-seed<seed>/` under the working
/// directory, and `fr` reads the whole tree; per-rank files of two stops in one folder are
/// refused, naming the file.
#[test]
fn dumps_go_to_fr_by_default_and_rank_files_of_another_stop_are_refused() {
    let cwd = scratch("fr-default");
    std::fs::create_dir_all(&cwd).unwrap();
    let scenario = root().join("scenarios/hang-data-loader.toml");
    let mut command = Command::new(env!("CARGO_BIN_EXE_faultline"));
    command
        .current_dir(&cwd)
        .arg("run")
        .arg(&scenario)
        .arg("-q");
    let (code, stdout, stderr) = output(command);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("1 dump(s) in fr/hang-data-loader-seed1"),
        "{stdout}"
    );
    let folder = cwd.join("fr/hang-data-loader-seed1/fr-gen0");
    assert_eq!(std::fs::read_dir(&folder).unwrap().count(), 64);
    let (code, stdout, stderr) = output(faultline(&["fr"], &cwd.join("fr")));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("hang: rank 21 never started"), "{stdout}");
    // Another stop's file among them: refused, naming it.
    let text = std::fs::read_to_string(folder.join("rank-3.json")).unwrap();
    let other = text.replacen("\"generation\":0", "\"generation\":1", 1);
    assert_ne!(other, text);
    std::fs::write(folder.join("rank-3.json"), other).unwrap();
    let (code, _, stderr) = output(faultline(&["fr"], &folder));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("rank-3.json:1: generation"), "{stderr}");
    std::fs::remove_dir_all(&cwd).unwrap();
}
