//! Crash safety of what `faultline` writes: a run writing a trace and a Perfetto timeline is
//! killed (SIGKILL) at seeded random moments, over a complete trace and timeline left by an
//! earlier run. After every kill each path must hold a whole file: the old one or a new one,
//! never the head of a new one. (The checkpoint store's kill test is cuda-backend/tests/kill.rs.)

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use faultline_sim::trace::read_trace;
use trainer_core::digest::mix64;

const KILLS: u64 = 12;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn traced_run(trace: &Path, perfetto: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_faultline"));
    command
        .current_dir(root())
        .args(["run", "scenarios/quickstart.toml", "--set", "job.steps=6"])
        .args(["--trace-level", "events", "--trace"])
        .arg(trace)
        .arg("--perfetto")
        .arg(perfetto)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

fn whole_timeline(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("traceEvents").map(|e| e.is_array()))
        .unwrap_or(false)
}

#[test]
fn a_killed_run_leaves_whole_traces_and_timelines() {
    let dir = std::env::temp_dir().join(format!("faultline-kill-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (trace, perfetto) = (dir.join("run.jsonl"), dir.join("run.perfetto.json"));
    let status = traced_run(&trace, &perfetto).status().unwrap();
    assert!(status.success(), "the first, complete run");
    let first = read_trace(&trace).expect("a whole trace");
    let mut killed_mid_run = 0;
    for kill in 0..KILLS {
        let mut child = traced_run(&trace, &perfetto).spawn().unwrap();
        // Anywhere from start-up to the end of writing (a run takes about a second here).
        std::thread::sleep(Duration::from_micros(mix64(0x7ace ^ kill) % 1_500_000));
        if child.try_wait().unwrap().is_none() {
            killed_mid_run += 1;
        }
        let _ = child.kill();
        child.wait().unwrap();
        let trace_now =
            read_trace(&trace).unwrap_or_else(|e| panic!("kill {kill} left a broken trace: {e}"));
        assert_eq!(trace_now.footer.trace_digest, first.footer.trace_digest);
        assert_eq!(trace_now.records.len(), first.records.len());
        assert!(
            whole_timeline(&perfetto),
            "kill {kill} left a broken timeline"
        );
    }
    assert!(killed_mid_run > 0, "no kill landed while a run was going");
    eprintln!("{killed_mid_run} of {KILLS} kills landed mid-run");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Told to stop (SIGTERM, SIGINT), a run removes its temporary files and exits with 128 + the
/// signal, as a shell expects; the outputs it had not committed are simply absent. (Before,
/// the default action ended the process at once and left hidden temporary files of up to
/// 96 MB behind.)
#[test]
fn a_stopped_run_leaves_no_temporary_file() {
    let dir = std::env::temp_dir().join(format!("faultline-sigterm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (signal, status) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
        let (trace, perfetto) = (dir.join("t.jsonl"), dir.join("p.json"));
        let mut command = traced_run(&trace, &perfetto);
        command.args(["--set", "job.steps=400"]);
        let mut child = command.spawn().unwrap();
        // Wait until the run has opened its outputs (their temporary files exist).
        let opened = (0..400).any(|_| {
            std::thread::sleep(Duration::from_millis(25));
            std::fs::read_dir(&dir).unwrap().count() >= 2
        });
        assert!(opened, "the run never opened its outputs");
        // SAFETY: kill(2) on the child this test spawned.
        #[allow(unsafe_code)]
        let sent = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        assert_eq!(sent, 0);
        let exit = child.wait().unwrap();
        assert_eq!(exit.code(), Some(status), "signal {signal}");
        let left: Vec<String> = (std::fs::read_dir(&dir).unwrap())
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(left.is_empty(), "signal {signal} left {left:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
