//! The last assignment the server gave each dongle, kept in `<data_dir>/dongle-assignments.json`
//! so that after a restart a dongle's frames are kept for the group the server last named even
//! before the server answers the first poll.
//!
//! The file is one JSON object, serial → `{"dongle_id", "group_id", "side"}` (`group_id` and
//! `side` are `null` without a group). It is rewritten whole (temporary file, fsync, rename) off
//! the async runtime, and only when an assignment changed. A file that does not parse is
//! reported and ignored: it is a hint, never a source of frames.
//!
//! What this does not keep: frames or cursors (the outbox store, `relay_core::uplink`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, anyhow};
use relay_core::engine::Side;
use serde::{Deserialize, Serialize};
use tracing::warn;

/// Name of the file inside `data_dir`.
pub const ASSIGNMENTS_FILE: &str = "dongle-assignments.json";

/// The last assignment the server gave a dongle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedAssignment {
    /// The server's dongle id.
    pub dongle_id: String,
    /// Group id, if any.
    pub group_id: Option<String>,
    /// Side in that group.
    pub side: Option<Side>,
}

impl SavedAssignment {
    /// Group and side, when both are known.
    pub fn group(&self) -> Option<(String, Side)> {
        self.group_id.clone().zip(self.side)
    }
}

/// The assignments of every dongle of the role.
#[derive(Debug)]
pub struct Assignments {
    path: PathBuf,
    saved: Mutex<BTreeMap<String, SavedAssignment>>,
    /// Serializes the writers (each writes the map as it is when it holds this).
    write: tokio::sync::Mutex<()>,
}

impl Assignments {
    /// Loads `<data_dir>/dongle-assignments.json` (missing: none saved yet).
    pub fn load(data_dir: &Path) -> Self {
        let path = data_dir.join(ASSIGNMENTS_FILE);
        let saved = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                warn!(path = %path.display(), error = %e,
                    "ignoring saved dongle assignments that do not parse");
                BTreeMap::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot read saved dongle assignments");
                BTreeMap::new()
            }
        };
        Assignments {
            path,
            saved: Mutex::new(saved),
            write: tokio::sync::Mutex::new(()),
        }
    }

    /// The saved assignment of `serial`.
    pub fn get(&self, serial: &str) -> Option<SavedAssignment> {
        self.saved.lock().ok()?.get(serial).cloned()
    }

    /// Remembers the assignment of `serial`; writes the file if it changed.
    pub async fn save(&self, serial: &str, assignment: SavedAssignment) -> anyhow::Result<()> {
        {
            let mut saved = self
                .saved
                .lock()
                .map_err(|_| anyhow!("the assignments lock is poisoned"))?;
            if saved.get(serial) == Some(&assignment) {
                return Ok(());
            }
            saved.insert(serial.to_owned(), assignment);
        }
        let _writer = self.write.lock().await;
        let bytes = {
            let saved = self
                .saved
                .lock()
                .map_err(|_| anyhow!("the assignments lock is poisoned"))?;
            serde_json::to_vec_pretty(&*saved).context("encoding the assignments")?
        };
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || write_atomically(&path, &bytes))
            .await
            .context("the assignments writer stopped")?
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn saved_assignments_survive_a_reload_and_a_bad_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let a = Assignments::load(dir.path());
        assert_eq!(a.get("D1"), None);
        let one = SavedAssignment {
            dongle_id: "d1".into(),
            group_id: Some("g".into()),
            side: Some(Side::B),
        };
        a.save("D1", one.clone()).await.unwrap();
        let none = SavedAssignment {
            dongle_id: "d2".into(),
            group_id: None,
            side: None,
        };
        a.save("D2", none.clone()).await.unwrap();
        let b = Assignments::load(dir.path());
        assert_eq!(b.get("D1"), Some(one.clone()));
        assert_eq!(b.get("D1").unwrap().group(), Some(("g".into(), Side::B)));
        assert_eq!(b.get("D2").unwrap().group(), None);
        std::fs::write(dir.path().join(ASSIGNMENTS_FILE), b"{not json").unwrap();
        assert_eq!(Assignments::load(dir.path()).get("D1"), None);
    }
}
