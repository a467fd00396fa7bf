//! Entry points for fuzzing the readers of files people and other runs write. The cargo-fuzz
//! targets in `fuzz/` call these, and `sim/tests/fuzz_corpus.rs` runs them over the committed
//! seed corpus (and every crash input found so far) in the ordinary test run, on stable Rust.
//!
//! Each takes arbitrary bytes and must return without panicking, whatever they hold: a reader's
//! answer to bad input is an error value.

/// The scenario loader, and the planner's loader, which shares its parser. Lines at the top
/// of the input of the form `#set key=value` become `--set` overrides, so overrides are
/// fuzzed too.
pub fn scenario_loader(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let overrides: Vec<String> = text
        .lines()
        .map_while(|line| line.strip_prefix("#set "))
        .map(str::to_string)
        .collect();
    if let Ok(scenario) = crate::scenario::load_str("fuzz", "fuzz.toml", text, &overrides) {
        // What happens next to a loaded scenario before any work: the memory estimate.
        let estimate = crate::limits::estimate_scenario_bytes(&scenario);
        let _ = crate::limits::check("run", estimate, Some(u64::MAX));
        let _ = scenario.without_faults();
    }
    let _ = crate::plan::config::load_str("fuzz", "fuzz.toml", text, &overrides);
}

/// The checkpoint readers: manifests and shards, with the identity they claim taken from the
/// input itself so that well-formed inputs get past the identity check.
pub fn checkpoint_reader(data: &[u8]) {
    use trainer_core::checkpoint::{decode_manifest, decode_shard};
    let word = |at: usize, len: usize| -> u64 {
        let mut bytes = [0u8; 8];
        if let Some(slice) = data.get(at..at + len) {
            bytes[..len].copy_from_slice(slice);
        }
        u64::from_le_bytes(bytes)
    };
    let step = word(8, 8);
    let _ = decode_manifest(data, step);
    let (rank, world) = (word(16, 4) as usize, word(20, 4) as usize);
    let _ = decode_shard(data, step, rank, world);
}

/// The trace reader behind `faultline replay`, and the scenario a trace's header carries.
pub fn trace_reader(data: &[u8]) {
    if let Ok(trace) = crate::trace::parse_trace("fuzz.jsonl", data) {
        let _ = trace.header.scenario("fuzz.jsonl");
    }
}
