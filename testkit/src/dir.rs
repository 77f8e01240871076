//! A test's scratch directory: data directories, configs, logs; the logs are printed when the
//! test fails.

use std::path::{Path, PathBuf};

use crate::TestResult;

/// A whole test's scratch space, deleted when dropped.
pub struct Workspace {
    /// The temporary directory.
    pub dir: tempfile::TempDir,
}

impl Workspace {
    /// A new empty directory.
    pub fn new() -> TestResult<Workspace> {
        Ok(Workspace {
            dir: tempfile::tempdir()?,
        })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The last 40 lines of every `*.stderr` file (process logs), for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else {
            return out;
        };
        let mut names: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "stderr"))
            .collect();
        names.sort();
        for path in names {
            out.push_str(&format!("---- {} (last 40 lines)\n", path.display()));
            out.push_str(&tail(&path, 40));
        }
        out
    }

    /// On failure, prints every process log (to stderr) before handing the error on.
    pub fn explain<T>(&self, outcome: TestResult<T>) -> TestResult<T> {
        if outcome.is_err() {
            eprintln!("{}", self.logs());
        }
        outcome
    }

    /// Writes the frames of the shipped capture ([`crate::capture_path`]) that `keep(index)`
    /// selects to a new candump file `name`.
    pub fn split_capture(&self, name: &str, keep: impl Fn(usize) -> bool) -> TestResult<PathBuf> {
        let text = std::fs::read_to_string(crate::capture_path())?;
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with('('))
            .enumerate()
            .filter(|(i, _)| keep(*i))
            .map(|(_, l)| l)
            .collect();
        let path = self.path(name);
        std::fs::write(&path, lines.join("\n") + "\n")?;
        Ok(path)
    }
}

/// The last `n` lines of a text file (empty when it cannot be read), newline-terminated.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    for line in &lines[lines.len().saturating_sub(n)..] {
        out.push_str(line);
        out.push('\n');
    }
    out
}
