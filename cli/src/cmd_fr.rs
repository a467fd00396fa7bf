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

/// Up to this many ranks a dump is written as PyTorch writes its own, one file per rank
/// (`DIR/fr-gen<generation>/rank-<rank>.json`); above, as one file for every rank
/// (`DIR/fr-gen<generation>.json`), since 100,000 files a stop would swamp a file system.
pub(crate) const PER_RANK_FILES_UP_TO: usize = 1024;

/// Writes each dump under `DIR`, creating it; each file whole or not at all.
pub(crate) fn write_dumps(dir: &Path, dumps: &[Dump]) -> Result<(), Failure> {
    if dumps.is_empty() {
        return Ok(());
    }
    let failed = |e: std::io::Error| Failure::bad_input(format!("--fr-dir {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(failed)?;
    for dump in dumps {
        let name = format!("fr-gen{}", dump.generation);
        if dump.ranks.len() > PER_RANK_FILES_UP_TO {
            let text = serde_json::to_string(dump).expect("a dump serialises");
            write_atomically(&dir.join(format!("{name}.json")), text.as_bytes()).map_err(failed)?;
            continue;
        }
        let folder = dir.join(name);
        std::fs::create_dir_all(&folder).map_err(failed)?;
        for rank in RankDump::of(dump) {
            let text = serde_json::to_string(&rank).expect("a rank's dump serialises");
            let path = folder.join(format!("rank-{}.json", rank.rank));
            write_atomically(&path, text.as_bytes()).map_err(failed)?;
        }
    }
    Ok(())
}

pub(crate) fn cmd_fr(args: FrArgs) -> Result<u8, Failure> {
    for (path, dump) in read_dumps(&args.dump)? {
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

/// The dumps at `path`: a dump file, or a folder: its per-rank files make one dump, its
/// whole dumps one each, and its folders are read the same way, in name order.
fn read_dumps(path: &Path) -> Result<Vec<(PathBuf, Dump)>, Failure> {
    let mut dumps = Vec::new();
    let mut ranks = Vec::new();
    for file in dump_files(path)? {
        if file.is_dir() {
            dumps.extend(read_dumps(&file)?);
            continue;
        }
        match read_dump(&file)? {
            Read::Whole(dump) => dumps.push((file, dump)),
            Read::Rank(rank) => ranks.push((file, rank)),
        }
    }
    if let Some(dump) = gather(path, ranks)? {
        dumps.push((path.to_path_buf(), dump));
    }
    Ok(dumps)
}

/// The dump itself, or every `*.json` and every folder in the folder, in name order.
fn dump_files(path: &Path) -> Result<Vec<PathBuf>, Failure> {
    let unreadable = |e: std::io::Error| Failure::bad_input(format!("{}: {e}", path.display()));
    if !path.is_dir() {
        std::fs::metadata(path).map_err(unreadable)?;
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(unreadable)? {
        let file = entry.map_err(unreadable)?.path();
        if file.is_dir() || file.extension().is_some_and(|e| e == "json") {
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

/// One rank's recorder in a stop, as a per-rank file holds it.
#[derive(serde::Serialize, serde::Deserialize)]
struct RankDump {
    version: String,
    trigger: String,
    generation: u64,
    at_ns: u64,
    rank: usize,
    entries: Vec<flight::Entry>,
}

impl RankDump {
    fn of(dump: &Dump) -> impl Iterator<Item = RankDump> + '_ {
        dump.ranks.iter().map(|r| RankDump {
            version: dump.version.clone(),
            trigger: dump.trigger.clone(),
            generation: dump.generation,
            at_ns: dump.at_ns,
            rank: r.rank,
            entries: r.entries.clone(),
        })
    }
}

enum Read {
    Whole(Dump),
    Rank(RankDump),
}

/// The per-rank files of one folder as one dump; refused when they are of different stops.
fn gather(folder: &Path, ranks: Vec<(PathBuf, RankDump)>) -> Result<Option<Dump>, Failure> {
    let Some((_, first)) = ranks.first() else {
        return Ok(None);
    };
    let stop = (first.trigger.clone(), first.generation, first.at_ns);
    let mut dump = Dump {
        version: DUMP_VERSION.into(),
        trigger: stop.0.clone(),
        generation: stop.1,
        at_ns: stop.2,
        ranks: Vec::new(),
    };
    for (file, rank) in ranks {
        if (&rank.trigger, rank.generation, rank.at_ns) != (&stop.0, stop.1, stop.2) {
            return Err(Failure::bad_input(format!(
                "{}:1: generation: a dump of another stop than the other files of {} \
                 (generation {} at {} ns, not {} at {} ns)",
                file.display(),
                folder.display(),
                rank.generation,
                rank.at_ns,
                stop.1,
                stop.2
            )));
        }
        dump.ranks.push(flight::RankEntries {
            rank: rank.rank,
            entries: rank.entries,
        });
    }
    dump.ranks.sort_by_key(|r| r.rank);
    Ok(Some(dump))
}

/// One dump or one rank's file, or an error naming the file, line and column, and what is
/// wrong.
fn read_dump(path: &Path) -> Result<Read, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::bad_input(format!("{}: {e}", path.display())))?;
    let refused = |e: serde_json::Error| {
        Failure::bad_input(format!(
            "{}:{}:{}: not a flight-recorder dump: {e}",
            path.display(),
            e.line(),
            e.column()
        ))
    };
    // Which of the two it is, by its keys; then read again as that, for errors with a line.
    let value: serde_json::Value = serde_json::from_str(&text).map_err(refused)?;
    let (read, version) = if value.get("rank").is_some() {
        let rank: RankDump = serde_json::from_str(&text).map_err(refused)?;
        let version = rank.version.clone();
        (Read::Rank(rank), version)
    } else {
        let dump: Dump = serde_json::from_str(&text).map_err(refused)?;
        let version = dump.version.clone();
        (Read::Whole(dump), version)
    };
    if version != DUMP_VERSION {
        return Err(Failure::bad_input(format!(
            "{}:1: version: expected {DUMP_VERSION:?}, got {version:?}",
            path.display(),
        )));
    }
    Ok(read)
}
