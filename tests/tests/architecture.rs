//! The workspace's shape, checked from its source text: which crate may depend on which, no
//! import cycle between the simulator's modules, and no function longer than 70 lines unless
//! a comment right above it says why (`// Over 70 lines: ...`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The longest function, in lines from `fn` to its closing brace, that needs no reason.
const MAX_FUNCTION_LINES: usize = 70;
/// What a comment above a longer function starts with; the rest of the line says why.
const LONG_FUNCTION_MARK: &str = "// Over 70 lines:";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `.rs` file under `dir`, in name order.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// A file's lines up to its unit-test module (`#[cfg(test)]` then `mod`), which is exempt;
/// nothing for a file of tests.
fn non_test_lines(path: &Path) -> Vec<String> {
    if path.file_name().is_some_and(|n| n == "tests.rs") {
        return Vec::new();
    }
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<String> = text.lines().map(String::from).collect();
    let end = (0..lines.len())
        .find(|&i| {
            lines[i].trim() == "#[cfg(test)]"
                && lines.get(i + 1).is_some_and(|next| {
                    let next = next.trim_start();
                    next.starts_with("mod ") || next.starts_with("pub mod ")
                })
        })
        .unwrap_or(lines.len());
    lines[..end].to_vec()
}

/// The name of the function declared on `line`, if one is (and its body is not on that line).
fn function_on(line: &str) -> Option<&str> {
    let mut rest = line.trim_start();
    for prefix in [
        "pub(crate) ",
        "pub(super) ",
        "pub ",
        "const ",
        "async ",
        "unsafe ",
    ] {
        rest = rest.strip_prefix(prefix).unwrap_or(rest);
    }
    let name = rest.strip_prefix("fn ")?;
    let end = name.find(|c: char| !(c.is_alphanumeric() || c == '_'))?;
    let one_line = line.trim_end().ends_with('}') || line.trim_end().ends_with(';');
    (!one_line).then(|| &name[..end])
}

/// Whether the comments and attributes right above line `idx` carry the long-function mark.
fn says_why_long(lines: &[String], idx: usize) -> bool {
    lines[..idx]
        .iter()
        .rev()
        .map(|l| l.trim())
        .take_while(|l| l.starts_with("//") || l.starts_with("#["))
        .any(|l| l.starts_with(LONG_FUNCTION_MARK) && l.len() > LONG_FUNCTION_MARK.len() + 8)
}

/// Functions over the limit without a reason, as `file:line name (lines)`.
fn long_functions(path: &Path) -> Vec<String> {
    let lines = non_test_lines(path);
    let mut found = Vec::new();
    for (idx, line) in lines.iter().enumerate() {
        let Some(name) = function_on(line) else {
            continue;
        };
        let indent = &line[..line.len() - line.trim_start().len()];
        let close = format!("{indent}}}");
        let Some(end) = (idx + 1..lines.len()).find(|&j| lines[j] == close) else {
            continue; // a declaration without a body, e.g. in a trait
        };
        let length = end - idx + 1;
        if length > MAX_FUNCTION_LINES && !says_why_long(&lines, idx) {
            let at = path.strip_prefix(workspace()).unwrap_or(path).display();
            found.push(format!("{at}:{} {name} ({length} lines)", idx + 1));
        }
    }
    found
}

#[test]
fn no_function_is_over_70_lines_without_a_reason() {
    let crates = [
        "trainer-core",
        "faultline-scenario",
        "sim",
        "cli",
        "cuda-backend",
        "tests",
    ];
    let mut found = Vec::new();
    for krate in crates {
        let src = workspace().join(krate).join("src");
        for file in rust_files(&src) {
            found.extend(long_functions(&file));
        }
    }
    assert!(
        found.is_empty(),
        "functions over {MAX_FUNCTION_LINES} lines: split them, or say why above them with \
         `{LONG_FUNCTION_MARK} ...`:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_length_check_finds_a_long_function_and_accepts_a_reason() {
    let body = "    let x = 1;\n".repeat(MAX_FUNCTION_LINES);
    let long = format!("/// Doc.\nfn long() {{\n{body}}}\n");
    let dir = std::env::temp_dir().join(format!("faultline-arch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("long.rs");
    std::fs::write(&file, &long).unwrap();
    assert_eq!(long_functions(&file).len(), 1);
    let why = format!("{LONG_FUNCTION_MARK} one match arm per record kind, kept together.\n");
    std::fs::write(&file, format!("{why}{long}")).unwrap();
    assert!(long_functions(&file).is_empty());
    let short = format!("fn short() {{\n{}}}\n", "    let x = 1;\n".repeat(68));
    std::fs::write(&file, short).unwrap();
    assert!(long_functions(&file).is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The module of `sim`'s library that a file belongs to: `world/control.rs` is `world`.
fn sim_module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// Each module of sim's library to the modules of the library it names through `crate::`.
fn sim_imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = workspace().join("sim/src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let modules: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("pub mod ")
                .or(l.trim().strip_prefix("mod "))
        })
        .map(|m| m.trim_end_matches(';').to_string())
        .collect();
    let mut imports: BTreeMap<String, BTreeSet<String>> = modules
        .iter()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    for file in rust_files(&src) {
        let module = sim_module_of(&src, &file);
        if !modules.contains(&module) {
            continue; // the program's own modules (main.rs and its children)
        }
        for line in non_test_lines(&file) {
            for (at, _) in line.match_indices("crate::") {
                let name: String = line[at + 7..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if modules.contains(&name) && name != module {
                    imports.get_mut(&module).unwrap().insert(name);
                }
            }
        }
    }
    imports
}

/// A cycle through `from`, as the modules along it, if there is one.
fn cycle_from(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    let mut stack = vec![(from.to_string(), vec![from.to_string()])];
    let mut seen = BTreeSet::new();
    while let Some((here, path)) = stack.pop() {
        for next in &graph[&here] {
            if next == from {
                return Some([path.clone(), vec![from.to_string()]].concat());
            }
            if seen.insert(next.clone()) {
                stack.push((next.clone(), [path.clone(), vec![next.clone()]].concat()));
            }
        }
    }
    None
}

#[test]
fn sims_modules_import_each_other_without_a_cycle() {
    let graph = sim_imports();
    assert!(graph.len() > 10, "{graph:?}");
    assert!(
        graph["run"].contains("world"),
        "the scan sees imports: {graph:?}"
    );
    for module in graph.keys() {
        if let Some(cycle) = cycle_from(&graph, module) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
    // The check finds a cycle where there is one.
    let mut with_cycle = graph.clone();
    with_cycle.get_mut("world").unwrap().insert("run".into());
    assert!(cycle_from(&with_cycle, "run").is_some());
}

/// The `[dependencies]` of a crate's manifest, by name.
fn dependencies(krate: &str) -> BTreeSet<String> {
    let manifest = std::fs::read_to_string(workspace().join(krate).join("Cargo.toml")).unwrap();
    let table: toml::Table = toml::from_str(&manifest).unwrap();
    table
        .get("dependencies")
        .and_then(|d| d.as_table())
        .map(|d| d.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn crates_depend_only_downwards() {
    // trainer-core is the logic under test: it depends on nothing.
    assert!(dependencies("trainer-core").is_empty());
    // The scenario reader knows the logic's config types and nothing of either world.
    let scenario = dependencies("faultline-scenario");
    assert!(scenario.contains("trainer-core"));
    for forbidden in [
        "faultline-sim",
        "cuda-backend",
        "madsim",
        "tokio",
        "clap",
        "petgraph",
    ] {
        assert!(
            !scenario.contains(forbidden),
            "faultline-scenario uses {forbidden}"
        );
    }
    // The simulator and the GPU backend share the logic and the reader, never each other.
    assert!(!dependencies("sim").contains("cuda-backend"));
    // The program's own needs (arguments, allocator, progress bars, plots) stay out of the
    // library.
    for program_only in [
        "clap",
        "mimalloc",
        "libmimalloc-sys",
        "indicatif",
        "plotters",
    ] {
        assert!(
            !dependencies("sim").contains(program_only),
            "sim uses {program_only}"
        );
        assert!(
            dependencies("cli").contains(program_only),
            "cli lacks {program_only}"
        );
    }
    assert!(!dependencies("cuda-backend").contains("faultline-sim"));
    for krate in ["sim", "cuda-backend"] {
        assert!(
            dependencies(krate).contains("faultline-scenario"),
            "{krate}"
        );
    }
}

/// Every code fence in the README and docs/ is closed: one left open renders the rest of the
/// page as code (it once swallowed the whole "Silent data corruption" section).
#[test]
fn every_markdown_code_fence_is_closed() {
    let mut pages = vec![
        workspace().join("README.md"),
        workspace().join("ARCHITECTURE.md"),
    ];
    for entry in std::fs::read_dir(workspace().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    for page in pages {
        let text = std::fs::read_to_string(&page).unwrap();
        let mut open: Option<usize> = None;
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("```") {
                open = match open {
                    None => Some(n + 1),
                    Some(_) => None,
                };
            } else if let (Some(from), true) = (open, line.starts_with("## ")) {
                panic!(
                    "{}: the fence opened at line {from} is still open at heading line {}",
                    page.display(),
                    n + 1
                );
            }
        }
        assert!(
            open.is_none(),
            "{}: the fence opened at line {open:?} is never closed",
            page.display()
        );
    }
}
