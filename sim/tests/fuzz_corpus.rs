//! The fuzz smoke run of the ordinary test suite: every input of the committed fuzz corpus
//! (seeds, and each crash the fuzzers found, kept once fixed) goes through the same entry
//! points as the cargo-fuzz targets in `fuzz/`. A panic fails the test and names the file.

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files
}

fn run_corpus(target: &str, entry: fn(&[u8])) {
    let files = corpus(target);
    assert!(
        files.len() >= 5,
        "{target}: the seed corpus holds {} inputs",
        files.len()
    );
    for path in files {
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| entry(&data));
        assert!(outcome.is_ok(), "{target} panicked on {}", path.display());
    }
}

#[test]
fn scenario_loader_survives_its_corpus() {
    run_corpus("scenario_loader", faultline_sim::fuzzing::scenario_loader);
}

#[test]
fn checkpoint_reader_survives_its_corpus() {
    run_corpus(
        "checkpoint_reader",
        faultline_sim::fuzzing::checkpoint_reader,
    );
}

/// The checkpoint seeds are what today's encoders write, so the fuzzer starts from inputs
/// that pass every check; a format change that forgets the corpus fails here.
#[test]
fn checkpoint_seeds_are_what_the_encoders_write() {
    use trainer_core::checkpoint::{encode_manifest, encode_shard};
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/checkpoint_reader");
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("manifest-step-0", encode_manifest(0, 1)),
        ("manifest-step-12", encode_manifest(12, 1024)),
        ("manifest-step-max", encode_manifest(u64::MAX >> 1, 100_000)),
        ("shard-empty", encode_shard(3, 0, 1, &[])),
        (
            "shard-small",
            encode_shard(7, 2, 8, &[1.0, -2.5, 3.25, f32::MIN_POSITIVE]),
        ),
        (
            "shard-nan",
            encode_shard(9, 5, 16, &[f32::NAN, f32::INFINITY, -0.0]),
        ),
        (
            "shard-64",
            encode_shard(40, 63, 64, &(0..64).map(|i| i as f32).collect::<Vec<_>>()),
        ),
    ];
    for (name, bytes) in seeds {
        let committed = std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            committed, bytes,
            "fuzz/corpus/checkpoint_reader/{name} is stale"
        );
    }
}

#[test]
fn trace_reader_survives_its_corpus() {
    run_corpus("trace_reader", faultline_sim::fuzzing::trace_reader);
}
