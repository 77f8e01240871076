//! Configuration files: the one `${VAR}` rule set, environment overrides, and value helpers.
//!
//! Both daemons read YAML and replace `${NAME}` in **parsed string values** (never in the raw
//! text, so a value containing YAML syntax — `:`, `#`, quotes — cannot change the document's
//! structure). The rules, in [`expand`]:
//!
//! * `${NAME}` is replaced by the environment variable `NAME`; `NAME` is one or more ASCII
//!   letters, digits or `_`. An unset variable is an error naming it
//!   ([`ConfigError::Unset`]), never an empty string slipped into an address.
//! * `$${` writes a literal `${` (so `$${HOME}` stays `${HOME}`).
//! * A `$` not followed by `{` is kept as it is; `${` without a closing `}` and an empty or
//!   malformed name are errors.
//!
//! [`expand_yaml_strings`] applies the rules to every string of a YAML document (the server's
//! file); [`expand_json_strings`] does the same on a JSON tree and turns a substituted value that
//! reads back exactly as a number or boolean into one (the agent's file, whose string fields
//! accept numbers through [`string_like`]). [`apply_env_overrides`] sets any key from
//! environment variables such as `TETHER_METERING__QUEUES__BATCH_SIZE`.
//!
//! What this module does not do: it reads no files and knows no schema; each daemon
//! deserializes and validates its own configuration type.

use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

pub mod located;

pub use located::{Origin, Override};

/// Why a configuration value could not be expanded, overridden or read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `${` without a closing `}`.
    #[error("unterminated ${{ in {text:?}")]
    Unterminated {
        /// The string being expanded.
        text: String,
    },
    /// `${}` or a name with characters other than ASCII letters, digits and `_`.
    #[error("bad variable name {name:?} in {text:?}")]
    BadName {
        /// The name as written.
        name: String,
        /// The string being expanded.
        text: String,
    },
    /// `${NAME}` names a variable that is not set.
    #[error("environment variable {name} is not set")]
    Unset {
        /// The variable name.
        name: String,
    },
    /// An override variable such as `TETHER_A____B` has an empty key segment.
    #[error("environment override {var}: empty key segment")]
    OverrideEmptySegment {
        /// The environment variable.
        var: String,
    },
    /// An override variable goes through a key whose value is not a section.
    #[error("environment override {var}: {path} is not a section")]
    OverrideNotSection {
        /// The environment variable.
        var: String,
        /// The dotted path of the key that is not a section.
        path: String,
    },
    /// A value of the file (or of an environment override) that does not fit the schema, or a
    /// file that is not YAML (duplicate keys included).
    #[error("{}", located_text(file, *line, path, var.as_deref(), message))]
    Invalid {
        /// The file.
        file: String,
        /// The line of the key (1-based), when known and the file set it.
        line: Option<usize>,
        /// The dotted key path (`dongle.batch_max_frames`); empty for a syntax error.
        path: String,
        /// The environment variable that set the key, if one did.
        var: Option<String>,
        /// What is wrong, in the user's terms.
        message: String,
    },
    /// A duration in seconds that is negative, not a number, or more than a year.
    #[error("{name} must be a number of seconds between 0 and one year, got {value}")]
    BadSeconds {
        /// The setting's name.
        name: String,
        /// The value found.
        value: f64,
    },
}

/// `file:line: path: message`, or `environment variable VAR (path): message`.
fn located_text(
    file: &str,
    line: Option<usize>,
    path: &str,
    var: Option<&str>,
    message: &str,
) -> String {
    let path = if path.is_empty() {
        String::new()
    } else {
        format!("{path}: ")
    };
    match (var, line) {
        (Some(var), _) => format!(
            "environment variable {var} ({}): {message}",
            path.trim_end_matches([':', ' '])
        ),
        (None, Some(line)) => format!("{file}:{line}: {path}{message}"),
        (None, None) => format!("{file}: {path}{message}"),
    }
}

/// A serde message without Rust type names: `expected struct DongleSection` → `expected an
/// object`, `expected usize` → `expected a non-negative integer`, and so on. For messages shown
/// to users of the API and of configuration files.
pub fn plain_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut words = text.split(' ').peekable();
    while let Some(word) = words.next() {
        if !out.is_empty() {
            out.push(' ');
        }
        match word {
            "struct" | "enum" | "tuple" if words.peek().is_some() => {
                let name = words.next().unwrap_or_default();
                let tail: String = name
                    .chars()
                    .skip_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                out.push_str(match word {
                    "struct" => "an object",
                    "enum" => "one of the allowed values",
                    _ => "an array",
                });
                out.push_str(&tail);
                // Rust's view of a struct as a sequence: "with 1 element(s)".
                if words.peek() == Some(&"with") {
                    let mut ahead = words.clone();
                    ahead.next();
                    if ahead.next().is_some_and(|n| n.parse::<usize>().is_ok())
                        && ahead
                            .next()
                            .is_some_and(|e| e.trim_end_matches([',', '.']).starts_with("element"))
                    {
                        words.next();
                        words.next();
                        words.next();
                    }
                }
            }
            _ => out.push_str(&rust_type_in_words(word)),
        }
    }
    out
}

/// `usize,` → `a non-negative integer,`; other words unchanged.
fn rust_type_in_words(word: &str) -> String {
    let core = word.trim_end_matches([',', '.', ';']);
    let tail = &word[core.len()..];
    let plain = match core {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a non-negative integer",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "an integer",
        "f32" | "f64" => "a number",
        "bool" => "a boolean",
        "char" => "a single character",
        _ => return word.to_owned(),
    };
    format!("{plain}{tail}")
}

/// Replaces every `${NAME}` in `text` with `lookup(NAME)`; `$${` is a literal `${`. See the
/// module docs for the rules.
pub fn expand(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(literal) = after.strip_prefix("${") {
            out.push_str("${");
            rest = literal;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                return Err(ConfigError::Unterminated {
                    text: text.to_owned(),
                });
            };
            let name = &body[..end];
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(ConfigError::BadName {
                    name: name.to_owned(),
                    text: text.to_owned(),
                });
            }
            let value = lookup(name).ok_or_else(|| ConfigError::Unset {
                name: name.to_owned(),
            })?;
            out.push_str(&value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// [`expand`] on every string of a YAML document, in place. Strings stay strings.
pub fn expand_yaml_strings(
    value: &mut serde_norway::Value,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    use serde_norway::Value;
    match value {
        Value::String(text) => {
            *text = expand(text, lookup)?;
        }
        Value::Sequence(items) => {
            for item in items {
                expand_yaml_strings(item, lookup)?;
            }
        }
        Value::Mapping(map) => {
            for (_, item) in map.iter_mut() {
                expand_yaml_strings(item, lookup)?;
            }
        }
        Value::Tagged(tagged) => expand_yaml_strings(&mut tagged.value, lookup)?,
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

/// [`expand`] on every string of a JSON tree, in place; a string that changed and reads back
/// exactly as a number or boolean becomes one ([`coerce`]).
pub fn expand_json_strings(
    value: &mut Value,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match value {
        Value::String(text) if text.contains('$') => {
            let out = expand(text, lookup)?;
            *value = coerce(out);
        }
        Value::Array(items) => items
            .iter_mut()
            .try_for_each(|item| expand_json_strings(item, lookup))?,
        Value::Object(map) => map
            .values_mut()
            .try_for_each(|item| expand_json_strings(item, lookup))?,
        _ => {}
    }
    Ok(())
}

/// A string that reads back exactly as a number or boolean becomes one (`"7"` → `7`,
/// `"true"` → `true`, `"007"` stays a string).
pub fn coerce(text: String) -> Value {
    if text == "true" || text == "false" {
        return Value::Bool(text == "true");
    }
    if let Ok(i) = text.parse::<i64>()
        && i.to_string() == text
    {
        return Value::from(i);
    }
    if let Ok(f) = text.parse::<f64>()
        && f.is_finite()
        && f.to_string() == text
    {
        return Value::from(f);
    }
    Value::String(text)
}

/// Sets keys of `root` from environment variables named `<prefix><SECTION>__<KEY>__<SUBKEY>…`
/// (double underscore separates levels; case does not matter; missing sections are created).
/// Variables with the prefix but no `__` are ignored (`TETHER_BIN`). Values go through
/// [`coerce`].
///
/// Returns the keys it set, so errors about them can name the variable ([`located`]).
pub fn apply_env_overrides(
    root: &mut Value,
    prefix: &str,
    vars: &[(String, String)],
) -> Result<Vec<Override>, ConfigError> {
    let mut set = Vec::new();
    for (name, value) in vars {
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        if !rest.contains("__") {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::OverrideEmptySegment { var: name.clone() });
        }
        let mut current = &mut *root;
        for (i, segment) in path.iter().enumerate() {
            let Value::Object(map) = current else {
                return Err(ConfigError::OverrideNotSection {
                    var: name.clone(),
                    path: path[..i].join("."),
                });
            };
            if i + 1 == path.len() {
                map.insert(segment.clone(), coerce(value.clone()));
                set.push(Override {
                    path: path.clone(),
                    var: name.clone(),
                });
                break;
            }
            current = map
                .entry(segment.clone())
                .or_insert_with(|| Value::Object(Map::new()));
        }
    }
    Ok(set)
}

/// Seconds from a configuration value, refusing negatives, NaN and more than a year.
pub fn secs(name: &str, value: f64) -> Result<Duration, ConfigError> {
    if !value.is_finite() || !(0.0..=365.0 * 86_400.0).contains(&value) {
        return Err(ConfigError::BadSeconds {
            name: name.to_owned(),
            value,
        });
    }
    Ok(Duration::from_secs_f64(value))
}

/// Serde `deserialize_with` for a string field that also accepts a number or boolean (written
/// as it reads), so `api_key: ${KEY}` works when the key is all digits.
pub fn string_like<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(serde::de::Error::custom(format!(
            "expected a string, got {other}"
        ))),
    }
}

/// [`string_like`] for an optional field (`null` is `None`).
pub fn opt_string_like<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        Value::Number(n) => Ok(Some(n.to_string())),
        Value::Bool(b) => Ok(Some(b.to_string())),
        other => Err(serde::de::Error::custom(format!(
            "expected a string, got {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VARS: [(&str, &str); 2] = [("PORT", "9999"), ("TRICKY", "a: b # c")];

    fn env(name: &str) -> Option<String> {
        VARS.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn expands_escapes_and_names_unset_variables() {
        assert_eq!(
            expand("127.0.0.1:${PORT}", &env).ok(),
            Some("127.0.0.1:9999".to_owned())
        );
        assert_eq!(
            expand("a$${b}c$", &|_| None).ok(),
            Some("a${b}c$".to_owned())
        );
        assert_eq!(
            expand("x ${NOPE_UNSET}", &env),
            Err(ConfigError::Unset {
                name: "NOPE_UNSET".to_owned()
            })
        );
        assert!(matches!(
            expand("${PORT", &env),
            Err(ConfigError::Unterminated { .. })
        ));
        for bad in ["${}", "${A-B}", "${a b}"] {
            assert!(
                matches!(expand(bad, &env), Err(ConfigError::BadName { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn yaml_strings_stay_strings_and_structure_is_kept() {
        let mut doc: serde_norway::Value =
            serde_norway::from_str("a: ${PORT}\nb:\n  - ${TRICKY}\nc: 1\n").expect("yaml");
        expand_yaml_strings(&mut doc, &env).expect("expands");
        let want: serde_norway::Value =
            serde_norway::from_str("a: '9999'\nb: ['a: b # c']\nc: 1\n").expect("yaml");
        assert_eq!(doc, want);
    }

    #[test]
    fn json_strings_are_coerced_after_substitution_only() {
        let mut doc = serde_json::json!({"a": "${PORT}", "b": ["x$${y}"], "c": "7"});
        expand_json_strings(&mut doc, &env).expect("expands");
        assert_eq!(
            doc,
            serde_json::json!({"a": 9999, "b": ["x${y}"], "c": "7"})
        );
        assert_eq!(coerce("007".to_owned()), Value::from("007"));
        assert_eq!(coerce("1.5".to_owned()), Value::from(1.5));
        assert_eq!(coerce("false".to_owned()), Value::Bool(false));
    }

    #[test]
    fn overrides_set_nested_keys_and_refuse_bad_paths() {
        let mut doc = serde_json::json!({"m": {"q": {"n": 1}}, "s": "x"});
        let vars = vec![
            ("TETHER_M__Q__N".to_owned(), "7".to_owned()),
            ("TETHER_M__NEW__K".to_owned(), "v".to_owned()),
            ("TETHER_BIN".to_owned(), "ignored".to_owned()),
            ("OTHER_M__Q__N".to_owned(), "ignored".to_owned()),
        ];
        let set = apply_env_overrides(&mut doc, "TETHER_", &vars).expect("applies");
        assert_eq!(set.len(), 2);
        assert_eq!(set[0].var, "TETHER_M__Q__N");
        assert_eq!(set[0].path, ["m", "q", "n"]);
        assert_eq!(
            doc,
            serde_json::json!({"m": {"q": {"n": 7}, "new": {"k": "v"}}, "s": "x"})
        );
        let empty = vec![("TETHER_M____N".to_owned(), "1".to_owned())];
        assert!(matches!(
            apply_env_overrides(&mut doc, "TETHER_", &empty),
            Err(ConfigError::OverrideEmptySegment { .. })
        ));
        let through = vec![("TETHER_S__K".to_owned(), "1".to_owned())];
        assert_eq!(
            apply_env_overrides(&mut doc, "TETHER_", &through).map(|_| ()),
            Err(ConfigError::OverrideNotSection {
                var: "TETHER_S__K".to_owned(),
                path: "s".to_owned()
            })
        );
    }

    #[test]
    fn seconds_are_bounded() {
        assert_eq!(secs("t", 1.5).ok(), Some(Duration::from_millis(1500)));
        for bad in [-1.0, f64::NAN, f64::INFINITY, 366.0 * 86_400.0] {
            assert!(secs("t", bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::expand;

    fn env(name: &str) -> Option<String> {
        name.strip_prefix("V").map(|n| format!("<{n}>"))
    }

    proptest! {
        /// Text without `${` comes back unchanged.
        #[test]
        fn text_without_placeholders_is_unchanged(text in "[^$]*|[a-z$ {}]*") {
            prop_assume!(!text.contains("${"));
            prop_assert_eq!(expand(&text, &env).ok(), Some(text.clone()));
        }

        /// Pieces of literal text and set variables expand to the concatenation of their values;
        /// any input either expands or returns an error, never panics.
        #[test]
        fn placeholders_expand_to_their_values(
            parts in proptest::collection::vec(("[a-z :#'\"]{0,5}", "[A-Z0-9_]{1,4}"), 0..6),
            junk in "\\PC{0,40}",
        ) {
            let mut text = String::new();
            let mut expected = String::new();
            for (literal, name) in &parts {
                text.push_str(literal);
                text.push_str(&format!("${{V{name}}}"));
                expected.push_str(literal);
                expected.push_str(&format!("<{name}>"));
            }
            prop_assert_eq!(expand(&text, &env).ok(), Some(expected));
            let _ = expand(&junk, &env);
        }

        /// `$${` always writes `${`, whatever follows.
        #[test]
        fn escaped_placeholders_are_literal(before in "[a-z ]{0,5}", name in "[A-Z_]{1,4}") {
            let text = format!("{before}$${{{name}}}");
            prop_assert_eq!(expand(&text, &env).ok(), Some(format!("{before}${{{name}}}")));
        }
    }
}
