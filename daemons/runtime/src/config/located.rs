//! Configuration errors that say where: the key path, and the file and line it was written at,
//! or the environment variable that set it.
//!
//! [`parse_yaml`] reads the text into a YAML tree (duplicate keys are an error naming the
//! line); [`deserialize`] turns a tree into the daemon's type, tracking the key path of the
//! first error ([`serde_path_to_error`]) and finding the line of that key in the text with
//! [`KeyLines`] — a scan of the block-style layout configuration files use. A key written in
//! flow style (`{a: 1}`) is found by its nearest block-style parent.

use std::collections::HashMap;

use serde::de::DeserializeOwned;

use super::ConfigError;

/// An environment variable that set a key ([`super::apply_env_overrides`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// The key path, lower case, e.g. `["dongle", "batch_max_frames"]`.
    pub path: Vec<String>,
    /// The variable, e.g. `TETHER_DONGLE__BATCH_MAX_FRAMES`.
    pub var: String,
}

/// Where the tree being read came from.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The file's name as the user gave it.
    pub file: &'a str,
    /// Its text (for line numbers).
    pub text: &'a str,
    /// Keys set by environment variables.
    pub overrides: &'a [Override],
}

/// Parses configuration text; duplicate keys and YAML syntax errors name the line.
pub fn parse_yaml(text: &str, file: &str) -> Result<serde_norway::Value, ConfigError> {
    serde_norway::from_str(text).map_err(|err| {
        let mut line = err.location().map(|l| l.line());
        let mut path = String::new();
        let shown = err.to_string();
        let message = shown.split(" at line ").next().unwrap_or_default();
        // A duplicate key is a refusal of ours, not a syntax error.
        let syntax = !message.starts_with("duplicate entry");
        // The parser names the mapping; point at the second occurrence of the key instead.
        if let Some(key) = message
            .strip_prefix("duplicate entry with key \"")
            .and_then(|rest| rest.strip_suffix('"'))
            && let Some((at, key_path)) = KeyLines::scan(text).repeated(key)
        {
            line = Some(at);
            path = dotted(&key_path);
        }
        let message = if syntax {
            format!("not valid YAML: {}", super::plain_message(message))
        } else {
            super::plain_message(message)
        };
        ConfigError::Invalid {
            file: file.to_owned(),
            line,
            path,
            var: None,
            message,
        }
    })
}

/// Deserializes `tree` as `T`; an error names the key path and where it was set.
pub fn deserialize<'de, T, D>(tree: D, origin: Origin<'_>) -> Result<T, ConfigError>
where
    T: DeserializeOwned,
    D: serde::Deserializer<'de>,
{
    serde_path_to_error::deserialize(tree).map_err(|err| {
        let mut path: Vec<String> = err
            .path()
            .iter()
            .filter_map(|segment| match segment {
                serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                serde_path_to_error::Segment::Seq { index } => Some(format!("[{index}]")),
                serde_path_to_error::Segment::Enum { variant } => Some(variant.clone()),
                serde_path_to_error::Segment::Unknown => None,
            })
            .collect();
        let message = super::plain_message(&err.inner().to_string());
        // An unknown key is reported at its parent: point at the key itself.
        if let Some(unknown) = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next())
            && path.last().map(String::as_str) != Some(unknown)
        {
            path.push(unknown.to_owned());
        }
        located(origin, &path, message)
    })
}

/// An error about the key at `path` (segments as [`deserialize`] makes them).
pub fn located(origin: Origin<'_>, path: &[String], message: String) -> ConfigError {
    let lower: Vec<String> = path.iter().map(|s| s.to_ascii_lowercase()).collect();
    let var = origin
        .overrides
        .iter()
        .filter(|o| lower.starts_with(&o.path))
        .max_by_key(|o| o.path.len())
        .map(|o| o.var.clone());
    let line = if var.is_some() {
        None
    } else {
        KeyLines::scan(origin.text).line_of(path)
    };
    ConfigError::Invalid {
        file: origin.file.to_owned(),
        line,
        path: dotted(path),
        var,
        message,
    }
}

/// `a.b[0].c`.
fn dotted(path: &[String]) -> String {
    let mut out = String::new();
    for segment in path {
        if !out.is_empty() && !segment.starts_with('[') {
            out.push('.');
        }
        out.push_str(segment);
    }
    out
}

/// The line (1-based) of every block-style key of a YAML text, by key path.
#[derive(Debug, Default)]
pub struct KeyLines {
    lines: HashMap<Vec<String>, usize>,
    /// Keys written again under the same parent: (line of the repetition, path).
    repeated: Vec<(usize, Vec<String>)>,
}

impl KeyLines {
    /// Scans `text`. Lines it does not understand are skipped.
    pub fn scan(text: &str) -> KeyLines {
        // Open containers: the column of their first key and the path to them.
        let mut stack: Vec<(usize, Vec<String>)> = Vec::new();
        let mut seq_next: HashMap<Vec<String>, usize> = HashMap::new();
        let mut lines = HashMap::new();
        let mut repeated = Vec::new();
        let mut block_scalar_indent: Option<usize> = None;
        for (number, raw) in text.lines().enumerate() {
            let trimmed = raw.trim_start();
            let mut indent = raw.len() - trimmed.len();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            if let Some(at) = block_scalar_indent {
                if indent > at {
                    continue;
                }
                block_scalar_indent = None;
            }
            if trimmed.starts_with("---") || trimmed.starts_with("...") {
                stack.clear();
                continue;
            }
            while stack.last().is_some_and(|(i, _)| *i > indent) {
                stack.pop();
            }
            let mut parent: Vec<String> = match stack.last() {
                Some((i, p)) if *i == indent => {
                    // A sibling of the last key: same parent.
                    let p = p[..p.len().saturating_sub(1)].to_vec();
                    stack.pop();
                    p
                }
                Some((_, p)) => p.clone(),
                None => Vec::new(),
            };
            // `- ` items, possibly nested (`- - a`), open sequence entries.
            let mut rest = trimmed;
            loop {
                let item = match rest.strip_prefix("- ") {
                    Some(item) => item,
                    None if rest == "-" => "",
                    None => break,
                };
                let index = seq_next.entry(parent.clone()).or_insert(0);
                parent.push(format!("[{index}]"));
                *index += 1;
                let inner = item.trim_start();
                indent += rest.len() - inner.len();
                rest = inner;
                stack.push((indent, parent.clone()));
            }
            let Some((key, value)) = split_key(rest) else {
                continue;
            };
            let mut path = parent;
            path.push(key);
            if lines.contains_key(&path) {
                repeated.push((number + 1, path.clone()));
            } else {
                lines.insert(path.clone(), number + 1);
            }
            let value = value.trim();
            if value.starts_with('|') || value.starts_with('>') {
                block_scalar_indent = Some(indent);
            }
            stack.push((indent, path));
        }
        KeyLines { lines, repeated }
    }

    /// The first repetition of a key named `key`: its line and path.
    pub fn repeated(&self, key: &str) -> Option<(usize, Vec<String>)> {
        self.repeated
            .iter()
            .find(|(_, path)| path.last().is_some_and(|k| k == key))
            .cloned()
    }

    /// The line of `path`, or of its nearest ancestor that has one.
    pub fn line_of(&self, path: &[String]) -> Option<usize> {
        (1..=path.len())
            .rev()
            .find_map(|n| self.lines.get(&path[..n]).copied())
    }
}

/// `key: value` → (`key`, `value`); quoted keys are unquoted. `None` for a line that is not a
/// mapping entry.
fn split_key(line: &str) -> Option<(String, &str)> {
    let (key, rest) = if let Some(quoted) = line.strip_prefix('"') {
        let end = quoted.find('"')?;
        (quoted[..end].to_owned(), &quoted[end + 1..])
    } else if let Some(quoted) = line.strip_prefix('\'') {
        let end = quoted.find('\'')?;
        (quoted[..end].to_owned(), &quoted[end + 1..])
    } else {
        let end = line
            .find(": ")
            .or_else(|| line.ends_with(':').then(|| line.len() - 1))?;
        let key = line[..end].trim_end();
        if key.is_empty()
            || key.starts_with(['{', '[', '&', '*', '!', '|', '>', '%', '@', '`', '#'])
        {
            return None;
        }
        (key.to_owned(), &line[end..])
    };
    let value = rest.trim_start().strip_prefix(':')?;
    if !(value.is_empty() || value.starts_with(' ')) {
        return None;
    }
    Some((key, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> Vec<String> {
        p.split('.').map(str::to_owned).collect()
    }

    #[test]
    fn finds_the_line_of_block_keys() {
        let text = "# top\nserver_url: x\ndongle:\n  listen: a\n  keys:\n    S1: k\n    \"S 2\": k2\n  list:\n    - name: a\n      port: 1\n    - name: b\nnote: |\n  not: a key\nlast: 1\n";
        let lines = KeyLines::scan(text);
        assert_eq!(lines.line_of(&path("server_url")), Some(2));
        assert_eq!(lines.line_of(&path("dongle.listen")), Some(4));
        assert_eq!(lines.line_of(&path("dongle.keys.S1")), Some(6));
        assert_eq!(lines.line_of(&path("dongle.keys.S 2")), Some(7));
        let item = |i: &str, k: &str| -> Vec<String> {
            vec!["dongle".into(), "list".into(), i.into(), k.into()]
        };
        assert_eq!(lines.line_of(&item("[1]", "name")), Some(11));
        assert_eq!(lines.line_of(&item("[0]", "port")), Some(10));
        assert_eq!(lines.line_of(&path("note.not")), Some(12));
        assert_eq!(lines.line_of(&path("last")), Some(14));
        assert_eq!(lines.line_of(&path("dongle.nothing")), Some(3));
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        top: Option<u32>,
        section: Option<Section>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Section {
        batch_max_frames: Option<usize>,
    }

    fn read(text: &str, overrides: &[Override]) -> Result<Doc, ConfigError> {
        let tree = parse_yaml(text, "agent.yaml")?;
        deserialize(
            tree,
            Origin {
                file: "agent.yaml",
                text,
                overrides,
            },
        )
    }

    #[test]
    fn errors_name_key_file_and_line_or_variable() {
        let text = "top: 1\nsection:\n  batch_max_frames: lots\n";
        let err = read(text, &[]).unwrap_err().to_string();
        assert_eq!(
            err,
            "agent.yaml:3: section.batch_max_frames: invalid type: string \"lots\", expected a non-negative integer"
        );
        let err = read("section: yes\n", &[]).unwrap_err().to_string();
        assert_eq!(
            err,
            "agent.yaml:1: section: invalid type: string \"yes\", expected an object"
        );
        let err = read("top: 1\nsection:\n  batch_max_frame: 3\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("agent.yaml:3: section.batch_max_frame: unknown field"),
            "{err}"
        );
        let overrides = [Override {
            path: path("section.batch_max_frames"),
            var: "TETHER_SECTION__BATCH_MAX_FRAMES".to_owned(),
        }];
        let err = read(text, &overrides).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "environment variable TETHER_SECTION__BATCH_MAX_FRAMES (section.batch_max_frames): invalid type"
            ),
            "{err}"
        );
    }

    #[test]
    fn duplicate_keys_are_refused_with_their_line() {
        let err = read("top: 1\nsection:\n  batch_max_frames: 1\ntop: 2\n", &[])
            .unwrap_err()
            .to_string();
        assert_eq!(err, "agent.yaml:4: top: duplicate entry with key \"top\"");
    }
}
