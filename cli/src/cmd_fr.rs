//! `faultline fr` (read flight-recorder dumps and say where the ranks diverged, as PyTorch's
//! `fr_trace` does) and the writing of the dumps `run --fr-dir` asks for.

use std::path::{Path, PathBuf};

use faultline_sim::atomic::write_atomically;
use faultline_sim::flight::{self, Dump, DUMP_VERSION};
use faultline_sim::units::format_duration_ns as duration;

use crate::Failure;

#[derive(clap::Args)]
pub(crate) struct FrArgs {
    /// A dump written by `run --fr-dir`, or a folder of them (every `*.json` in it).
    dump: PathBuf,
    /// One JSON object per dump, a line each.
    #[arg(long)]
    json: bool,
}

/// Writes each dump as `DIR/fr-gen<generation>.json`, creating `DIR`; each file whole or not
/// at all.
pub(crate) fn write_dumps(dir: &Path, dumps: &[Dump]) -> Result<(), Failure> {
    if dumps.is_empty() {
        return Ok(());
    }
    let failed = |e: std::io::Error| Failure::bad_input(format!("--fr-dir {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(failed)?;
    for dump in dumps {
        let path = dir.join(format!("fr-gen{}.json", dump.generation));
        let text = serde_json::to_string(dump).expect("a dump serialises");
        write_atomically(&path, text.as_bytes()).map_err(failed)?;
    }
    Ok(())
}

pub(crate) fn cmd_fr(args: FrArgs) -> Result<u8, Failure> {
    for path in dump_files(&args.dump)? {
        let dump = read_dump(&path)?;
        let diagnosis = flight::analyse(&dump);
        if args.json {
            let value = serde_json::json!({
                "file": path.display().to_string(),
                "trigger": dump.trigger,
                "generation": dump.generation,
                "ranks": dump.ranks.len(),
                "diagnosis": diagnosis,
            });
            println!("{value}");
        } else {
            println!(
                "{}: {} ranks, {} fired at {} (generation {})",
                path.display(),
                dump.ranks.len(),
                dump.trigger,
                duration(dump.at_ns),
                dump.generation
            );
            println!("  {diagnosis}");
        }
    }
    Ok(0)
}

/// The dump itself, or every `*.json` in the folder, in name order.
fn dump_files(path: &Path) -> Result<Vec<PathBuf>, Failure> {
    let unreadable = |e: std::io::Error| Failure::bad_input(format!("{}: {e}", path.display()));
    if !path.is_dir() {
        std::fs::metadata(path).map_err(unreadable)?;
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(unreadable)? {
        let file = entry.map_err(unreadable)?.path();
        if file.extension().is_some_and(|e| e == "json") {
            files.push(file);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(Failure::bad_input(format!(
            "{}: no flight-recorder dump (*.json) in this folder",
            path.display()
        )));
    }
    Ok(files)
}

/// One dump, or an error naming the file, line and column, and what is wrong.
fn read_dump(path: &Path) -> Result<Dump, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::bad_input(format!("{}: {e}", path.display())))?;
    let dump: Dump = serde_json::from_str(&text).map_err(|e| {
        Failure::bad_input(format!(
            "{}:{}:{}: not a flight-recorder dump: {e}",
            path.display(),
            e.line(),
            e.column()
        ))
    })?;
    if dump.version != DUMP_VERSION {
        return Err(Failure::bad_input(format!(
            "{}:1: version: expected {DUMP_VERSION:?}, got {:?}",
            path.display(),
            dump.version
        )));
    }
    Ok(dump)
}
