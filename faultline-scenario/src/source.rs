//! Where a scenario's keys are written, and errors that say so: [`Source`] keeps the text and
//! its parsed document, applies `--set` overrides, and turns a key into a file, line and column.
//! Every reader of faultline's TOML formats (run scenarios, planner scenarios) goes through
//! [`parse_checked`], so their errors look the same.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

/// A scenario that could not be loaded.
#[derive(Clone, Debug, PartialEq)]
pub struct ScenarioError {
    /// The file, or `--set KEY=VALUE` when an override caused it.
    pub origin: String,
    /// 1-based line and column, where known.
    pub line_col: Option<(usize, usize)>,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some((line, col)) = self.line_col {
            write!(f, ":{line}:{col}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        // One line, whatever the parser's message looked like.
        let lines: Vec<&str> = self
            .message
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        write!(f, ": {}", lines.join("; "))
    }
}

impl std::error::Error for ScenarioError {}

/// Parses `text`, applies `overrides` and deserialises the result into `R`. The returned
/// [`Source`] locates keys for validation errors. The planner loads its own file format through
/// this, so that its errors carry the same file, line, column and key.
pub fn parse_checked<R: serde::de::DeserializeOwned>(
    origin: &str,
    text: &str,
    overrides: &[String],
) -> Result<(R, Source), ScenarioError> {
    let source = Source::parse(origin, text)?;
    // First pass on the text as written, so that type errors and unknown keys carry positions.
    let raw: R = toml::from_str(text).map_err(|e| source.serde_error(&e))?;
    if overrides.is_empty() {
        return Ok((raw, source));
    }
    let mut table: toml::Table = toml::from_str(text).map_err(|e| source.serde_error(&e))?;
    let mut set_keys = BTreeMap::new();
    for item in overrides {
        let (key, value) = parse_override(item)?;
        set_value(&mut table, &key, value).map_err(|message| ScenarioError {
            origin: format!("--set {item}"),
            line_col: None,
            key: Some(key.clone()),
            message,
        })?;
        set_keys.insert(key, item.clone());
    }
    let raw = R::deserialize(toml::Value::Table(table)).map_err(|e| ScenarioError {
        origin: format!("--set {}", overrides.join(" --set ")),
        line_col: None,
        key: None,
        message: with_suggestion(e.message().trim()),
    })?;
    Ok((
        raw,
        Source {
            overrides: set_keys,
            ..source
        },
    ))
}

/// The most dotted parts a `--set` key may have: the deepest key of any format is a handful
/// (`faults.crash.0.node`); each part is a level of tables, and thousands overflow the stack.
pub const MAX_SET_KEY_PARTS: usize = 16;

/// The longest `--set` key, in bytes.
pub const MAX_SET_KEY_BYTES: usize = 256;

fn parse_override(item: &str) -> Result<(String, toml::Value), ScenarioError> {
    let Some((key, value)) = item.split_once('=') else {
        return Err(ScenarioError {
            origin: format!("--set {}", abridged(item)),
            line_col: None,
            key: None,
            message: "expected KEY=VALUE, e.g. --set cluster.gpus=12345".into(),
        });
    };
    let key = key.trim().to_string();
    let parts = key.split('.').count();
    if parts > MAX_SET_KEY_PARTS || key.len() > MAX_SET_KEY_BYTES {
        return Err(ScenarioError {
            origin: "--set".into(),
            line_col: None,
            key: Some(abridged(&key)),
            message: format!(
                "a key of {parts} dotted parts and {} bytes; no scenario key has more than \
                 {MAX_SET_KEY_PARTS} parts or {MAX_SET_KEY_BYTES} bytes",
                key.len()
            ),
        });
    }
    let value = value.trim();
    // A value is TOML (`12345`, `1.5`, `true`, `"x"`), or else a bare string (`10min`).
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    Ok((key, parsed))
}

/// `text` as an error shows it: whole when short, else its start and how long it is.
fn abridged(text: &str) -> String {
    const SHOWN: usize = 64;
    if text.len() <= SHOWN {
        return text.to_string();
    }
    let end = (0..=SHOWN)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    format!("{}... ({} bytes)", &text[..end], text.len())
}

/// Sets `key` (dotted; a number after an array of tables picks its entry, as errors name
/// them: `faults.desync.0.kind`) to `value`, making the tables on the way.
fn set_value(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), String> {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts
        .pop()
        .filter(|s| !s.is_empty())
        .ok_or("an empty key")?;
    let mut current = table;
    let mut parts = parts.into_iter().peekable();
    while let Some(part) = parts.next() {
        let mut entry = current
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        if let toml::Value::Array(entries) = entry {
            let count = entries.len();
            let idx = parts.next().and_then(|p| p.parse::<usize>().ok());
            entry = match idx.filter(|&idx| idx < count) {
                Some(idx) => &mut entries[idx],
                None => {
                    return Err(format!(
                        "`{part}` is an array of {count} table(s): name one, from \
                         `{part}.0.<key>` to `{part}.{}.<key>`",
                        count.saturating_sub(1)
                    ))
                }
            };
        }
        current = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{part}` is not a table"))?;
    }
    current.insert(last.to_string(), value);
    Ok(())
}

/// The scenario text with positions of its keys, for error messages.
pub struct Source {
    origin: String,
    text: String,
    doc: toml_edit::ImDocument<String>,
    /// Keys set on the command line, and the `--set` that set each.
    overrides: BTreeMap<String, String>,
}

impl Source {
    fn parse(origin: &str, text: &str) -> Result<Source, ScenarioError> {
        let doc = toml_edit::ImDocument::parse(text.to_string()).map_err(|e| ScenarioError {
            origin: origin.to_string(),
            line_col: e.span().map(|s| line_col(text, s.start)),
            key: None,
            message: format!("malformed TOML: {}", e.message()),
        })?;
        Ok(Source {
            origin: origin.into(),
            text: text.into(),
            doc,
            overrides: BTreeMap::new(),
        })
    }

    fn serde_error(&self, error: &toml::de::Error) -> ScenarioError {
        let span = error.span();
        ScenarioError {
            origin: self.origin.clone(),
            line_col: span.clone().map(|s| line_col(&self.text, s.start)),
            key: span.and_then(|s| self.key_at(&s)),
            message: with_suggestion(error.message().trim()),
        }
    }

    /// An error about `key`, located where the key is set.
    pub fn error(&self, key: &str, message: impl Into<String>) -> ScenarioError {
        if let Some(item) = self.overrides.get(key) {
            return ScenarioError {
                origin: format!("--set {item}"),
                line_col: None,
                key: Some(key.into()),
                message: message.into(),
            };
        }
        let span = self.span_of(key);
        ScenarioError {
            origin: self.origin.clone(),
            line_col: span.map(|s| line_col(&self.text, s.start)),
            key: Some(key.into()),
            message: message.into(),
        }
    }

    /// Where `key` (dotted) is written, or where its table is, or nothing.
    fn span_of(&self, key: &str) -> Option<Range<usize>> {
        let mut item = self.doc.as_item();
        let mut best = None;
        for part in key.split('.') {
            item = match part.parse::<usize>() {
                // An entry of an array of tables, like `faults.crash.0`.
                Ok(idx) => match item.as_array_of_tables() {
                    Some(array) => {
                        let table = array.get(idx)?;
                        best = table.span().or(best);
                        // Continue inside the entry's table.
                        let rest = key.split('.').skip_while(|p| *p != part).skip(1);
                        let mut inner: Option<&toml_edit::Item> = None;
                        for field in rest {
                            let found = match inner {
                                None => table.get(field)?,
                                Some(it) => it.get(field)?,
                            };
                            best = found.span().or(best);
                            inner = Some(found);
                        }
                        return best;
                    }
                    None => item.get(idx)?,
                },
                Err(_) => item.get(part)?,
            };
            best = item.span().or(best);
        }
        best
    }

    /// The dotted key whose value contains `span`.
    fn key_at(&self, span: &Range<usize>) -> Option<String> {
        fn walk(table: &dyn toml_edit::TableLike, prefix: &str, at: usize) -> Option<String> {
            for (key, item) in table.iter() {
                let path = if prefix.is_empty() {
                    key.to_string()
                } else {
                    format!("{prefix}.{key}")
                };
                let key_span = table.key(key).and_then(|k| k.span());
                let hit = |s: Option<Range<usize>>| {
                    s.is_some_and(|s| s.start <= at && at < s.end.max(s.start + 1))
                };
                if let Some(inner) = item.as_table_like() {
                    if let Some(found) = walk(inner, &path, at) {
                        return Some(found);
                    }
                }
                if hit(item.span()) || hit(key_span) {
                    return Some(path);
                }
            }
            None
        }
        walk(self.doc.as_table(), "", span.start)
    }
}

/// Adds "did you mean" to serde's unknown-field message when an expected field is close:
/// `unknown field `gpu_per_node`, expected one of `gpus`, `gpus_per_node`, ...`.
pub fn with_suggestion(message: &str) -> String {
    // serde speaks Rust; people write TOML.
    let message = message
        .replace("expected i64", "expected an integer")
        .replace("expected f64", "expected a number")
        .replace(
            "expected a string",
            "expected a string (durations, sizes and bandwidths carry units: \"10min\", \"2GiB\", \"400Gb/s\")",
        );
    let message = message.as_str();
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_string();
    };
    let Some((unknown, expected)) = rest.split_once('`') else {
        return message.to_string();
    };
    let best = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|candidate| (edit_distance(unknown, candidate), candidate))
        .min();
    match best {
        Some((distance, candidate)) if distance <= 2.max(unknown.len() / 3) => {
            format!("{message}; did you mean `{candidate}`?")
        }
        _ => message.to_string(),
    }
}

/// Levenshtein distance, for suggesting the key someone meant.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, col)
}

/// `value` as a count, or an error naming `key` and the accepted range.
pub fn in_range(
    src: &Source,
    key: &str,
    value: i64,
    min: i64,
    max: i64,
) -> Result<usize, ScenarioError> {
    if value < min || value > max {
        return Err(src.error(
            key,
            format!("expected an integer from {min} to {max}, got {value}"),
        ));
    }
    Ok(value as usize)
}

/// A finite number from `min` to `max`, or an error naming `key`.
pub fn within(
    src: &Source,
    key: &str,
    value: f64,
    (min, max): (f64, f64),
) -> Result<f64, ScenarioError> {
    if !(value.is_finite() && (min..=max).contains(&value)) {
        return Err(src.error(
            key,
            format!(
                "expected a number from {} to {}, got {value:?}",
                num(min),
                num(max)
            ),
        ));
    }
    Ok(value)
}

/// A bound as the README writes it: `0.3`, `1000`, `1e-3`, `1e15`.
fn num(x: f64) -> String {
    if x != 0.0 && !(1e-2..1e4).contains(&x.abs()) {
        format!("{x:e}")
    } else {
        format!("{x}")
    }
}
