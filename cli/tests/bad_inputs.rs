//! The corpus of bad inputs in `tests/bad-inputs/`: each case runs the `faultline` program as a
//! user would, and its exit status and message are snapshotted. Every case must exit 2 (bad
//! input) with one message naming where the problem is, and none may panic.
//!
//! A case is a `.toml` file run as `faultline run FILE`, unless its first line is
//! `# args: ...` (with `{file}` for the case's own path), for inputs other than scenarios:
//! cost files, shards, command lines, output paths.

use std::path::Path;
use std::process::Command;

fn run_case(path: &Path) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let relative = path
        .strip_prefix(root.canonicalize().unwrap())
        .unwrap_or(path);
    let relative = relative.to_string_lossy().into_owned();
    let text = std::fs::read_to_string(path).unwrap();
    let args: Vec<String> = match text.lines().next().and_then(|l| l.strip_prefix("# args: ")) {
        Some(args) => args
            .replace("{file}", &relative)
            .split_whitespace()
            .map(String::from)
            .collect(),
        None => vec!["run".into(), relative.clone()],
    };
    let output = Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(&args)
        .current_dir(&root)
        // A fixed memory limit, so the limits-before-work messages do not depend on the machine.
        .env("FAULTLINE_MEMORY_LIMIT", "16GiB")
        // Planted bugs are refused without this; a developer's shell must not change that.
        .env_remove("FAULTLINE_ALLOW_PLANTED_BUGS")
        .output()
        .expect("faultline runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("panicked"),
        "{relative} panicked: {stderr}"
    );
    assert_eq!(output.status.code(), Some(2), "{relative}: {stderr}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "{relative}: one message, got {stderr}"
    );
    format!(
        "args: {}\nexit: {}\n{}",
        args.join(" "),
        output.status.code().unwrap(),
        stderr
    )
}

#[test]
fn every_bad_input_exits_2_with_a_message_naming_where() {
    insta::glob!("../../tests/bad-inputs", "*.toml", |path| {
        insta::assert_snapshot!(run_case(path));
    });
}
