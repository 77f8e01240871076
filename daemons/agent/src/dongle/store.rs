//! The dongle role's durable state: one SQLite file, `<data_dir>/dongle-agent.sqlite` (WAL).
//!
//! ```sql
//! dongle(serial PRIMARY KEY, dongle_id, group_id, side, updated_ms)   -- last known assignment
//! stream(id PRIMARY KEY, serial, group_id, side, last_seq, acked, rx_seq,
//!        UNIQUE(serial, group_id, side))                               -- one per dongle and group
//! frame(stream, seq, payload, PRIMARY KEY(stream, seq))               -- unacknowledged frames
//! ```
//!
//! A *stream* is one dongle's outbound sequence in one group side: `last_seq` is the highest seq
//! assigned (seqs are dense and never go back while frames above the server's ack may exist),
//! `acked` the server's cumulative ack, `rx_seq` the last inbound seq fully processed (the
//! resume cursor of `hello`). Frames are removed when acknowledged. The format is described in
//! `docs/agent.md`.

use std::path::Path;

use anyhow::Context;
use rusqlite::{Connection, OptionalExtension, params};

use super::config::OutboxSync;

/// Identifies a stream: a dongle in one side of one group.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamKey {
    /// Dongle serial.
    pub serial: String,
    /// Group uuid.
    pub group_id: String,
    /// `a` or `b`.
    pub side: String,
}

/// A stream as loaded from the file.
#[derive(Debug, Clone)]
pub struct LoadedStream {
    /// Row id.
    pub id: i64,
    /// Highest seq assigned.
    pub last_seq: u64,
    /// Server's cumulative ack.
    pub acked: u64,
    /// Last inbound seq processed.
    pub rx_seq: u64,
    /// Unacknowledged frames in seq order.
    pub pending: Vec<(u64, Vec<u8>)>,
}

/// The last assignment the server gave a dongle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedAssignment {
    /// The server's dongle id.
    pub dongle_id: String,
    /// Group and side, if any.
    pub group: Option<(String, String)>,
}

/// What an append did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    /// Seq of the first appended frame.
    pub first_seq: u64,
    /// Unacknowledged frames removed (oldest first) to stay under the cap.
    pub dropped_oldest: u64,
}

/// The SQLite file.
#[derive(Debug)]
pub struct DongleStore {
    conn: Connection,
}

fn to_sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn from_sql(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl DongleStore {
    /// Open (creating) `path`.
    pub fn open(path: &Path, sync: OutboxSync) -> anyhow::Result<Self> {
        let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .context("setting WAL")?;
        conn.pragma_update(
            None,
            "synchronous",
            match sync {
                OutboxSync::Normal => "NORMAL",
                OutboxSync::Full => "FULL",
            },
        )
        .context("setting synchronous")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .context("setting the busy timeout")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS dongle (
                 serial TEXT PRIMARY KEY, dongle_id TEXT NOT NULL,
                 group_id TEXT, side TEXT, updated_ms INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS stream (
                 id INTEGER PRIMARY KEY, serial TEXT NOT NULL, group_id TEXT NOT NULL,
                 side TEXT NOT NULL, last_seq INTEGER NOT NULL, acked INTEGER NOT NULL,
                 rx_seq INTEGER NOT NULL, UNIQUE(serial, group_id, side));
             CREATE TABLE IF NOT EXISTS frame (
                 stream INTEGER NOT NULL, seq INTEGER NOT NULL, payload BLOB NOT NULL,
                 PRIMARY KEY(stream, seq)) WITHOUT ROWID;",
        )
        .with_context(|| format!("creating the tables in {}", path.display()))?;
        Ok(DongleStore { conn })
    }

    /// The saved assignment of `serial`.
    pub fn assignment(&self, serial: &str) -> anyhow::Result<Option<SavedAssignment>> {
        self.conn
            .query_row(
                "SELECT dongle_id, group_id, side FROM dongle WHERE serial = ?1",
                params![serial],
                |r| {
                    let g: Option<String> = r.get(1)?;
                    let s: Option<String> = r.get(2)?;
                    Ok(SavedAssignment {
                        dongle_id: r.get(0)?,
                        group: g.zip(s),
                    })
                },
            )
            .optional()
            .context("reading a saved assignment")
    }

    /// Remember the assignment of `serial`.
    pub fn save_assignment(
        &self,
        serial: &str,
        a: &SavedAssignment,
        now_ms: u64,
    ) -> anyhow::Result<()> {
        let (g, s) = match &a.group {
            Some((g, s)) => (Some(g.as_str()), Some(s.as_str())),
            None => (None, None),
        };
        self.conn
            .execute(
                "INSERT INTO dongle (serial, dongle_id, group_id, side, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(serial) DO UPDATE SET dongle_id = ?2, group_id = ?3, side = ?4,
                     updated_ms = ?5",
                params![serial, a.dongle_id, g, s, to_sql(now_ms)],
            )
            .context("saving an assignment")?;
        Ok(())
    }

    /// Load (creating) a stream with its unacknowledged frames.
    pub fn load_stream(&mut self, key: &StreamKey) -> anyhow::Result<LoadedStream> {
        let tx = self.conn.transaction().context("loading a stream")?;
        tx.execute(
            "INSERT OR IGNORE INTO stream (serial, group_id, side, last_seq, acked, rx_seq)
             VALUES (?1, ?2, ?3, 0, 0, 0)",
            params![key.serial, key.group_id, key.side],
        )
        .context("creating a stream")?;
        let (id, last_seq, acked, rx_seq) = tx
            .query_row(
                "SELECT id, last_seq, acked, rx_seq FROM stream
                 WHERE serial = ?1 AND group_id = ?2 AND side = ?3",
                params![key.serial, key.group_id, key.side],
                |r| Ok((r.get::<_, i64>(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .context("reading a stream")?;
        let pending = {
            let mut stmt = tx
                .prepare("SELECT seq, payload FROM frame WHERE stream = ?1 ORDER BY seq")
                .context("reading the outbox")?;
            let rows = stmt
                .query_map(params![id], |r| Ok((from_sql(r.get(0)?), r.get(1)?)))
                .context("reading the outbox")?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .context("reading the outbox")?
        };
        tx.commit().context("loading a stream")?;
        Ok(LoadedStream {
            id,
            last_seq: from_sql(last_seq),
            acked: from_sql(acked),
            rx_seq: from_sql(rx_seq),
            pending,
        })
    }

    /// Append frames with seqs `last_seq + 1 …` and keep at most `cap` unacknowledged frames.
    /// `stored` is how many frames the stream holds before the append.
    pub fn append(
        &mut self,
        stream: i64,
        last_seq: u64,
        stored: u64,
        payloads: &[Vec<u8>],
        cap: u64,
    ) -> anyhow::Result<Appended> {
        let tx = self.conn.transaction().context("appending to the outbox")?;
        {
            let mut ins = tx
                .prepare_cached("INSERT INTO frame (stream, seq, payload) VALUES (?1, ?2, ?3)")
                .context("appending to the outbox")?;
            for (i, p) in payloads.iter().enumerate() {
                ins.execute(params![stream, to_sql(last_seq + 1 + i as u64), p])
                    .context("appending to the outbox")?;
            }
        }
        let new_last = last_seq + payloads.len() as u64;
        let total = stored + payloads.len() as u64;
        let excess = total.saturating_sub(cap);
        if excess > 0 {
            tx.execute(
                "DELETE FROM frame WHERE stream = ?1 AND seq IN
                     (SELECT seq FROM frame WHERE stream = ?1 ORDER BY seq LIMIT ?2)",
                params![stream, to_sql(excess)],
            )
            .context("dropping the oldest frames")?;
        }
        tx.execute(
            "UPDATE stream SET last_seq = ?2 WHERE id = ?1",
            params![stream, to_sql(new_last)],
        )
        .context("appending to the outbox")?;
        tx.commit().context("appending to the outbox")?;
        Ok(Appended {
            first_seq: last_seq + 1,
            dropped_oldest: excess,
        })
    }

    /// The server acknowledged every seq `<= up_to`: forget those frames.
    pub fn ack(&mut self, stream: i64, up_to: u64) -> anyhow::Result<()> {
        let tx = self.conn.transaction().context("recording an ack")?;
        tx.execute(
            "DELETE FROM frame WHERE stream = ?1 AND seq <= ?2",
            params![stream, to_sql(up_to)],
        )
        .context("recording an ack")?;
        tx.execute(
            "UPDATE stream SET acked = max(acked, ?2) WHERE id = ?1",
            params![stream, to_sql(up_to)],
        )
        .context("recording an ack")?;
        tx.commit().context("recording an ack")?;
        Ok(())
    }

    /// Drop every unacknowledged frame; returns how many.
    pub fn drop_pending(&mut self, stream: i64) -> anyhow::Result<u64> {
        let n = self
            .conn
            .execute("DELETE FROM frame WHERE stream = ?1", params![stream])
            .context("dropping the outbox")?;
        Ok(n as u64)
    }

    /// Renumber the unacknowledged frames densely from `base + 1` and make `base` the ack
    /// (used when the server holds seqs this store never assigned, or none above `base`).
    pub fn renumber(&mut self, stream: i64, base: u64) -> anyhow::Result<u64> {
        let tx = self.conn.transaction().context("renumbering the outbox")?;
        let seqs: Vec<i64> = {
            let mut stmt = tx
                .prepare("SELECT seq FROM frame WHERE stream = ?1 ORDER BY seq")
                .context("renumbering the outbox")?;
            let rows = stmt
                .query_map(params![stream], |r| r.get(0))
                .context("renumbering the outbox")?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .context("renumbering the outbox")?
        };
        // Two passes through negative seqs so no intermediate row collides with another.
        for (i, old) in seqs.iter().enumerate() {
            tx.execute(
                "UPDATE frame SET seq = ?3 WHERE stream = ?1 AND seq = ?2",
                params![stream, old, -to_sql(base + 1 + i as u64)],
            )
            .context("renumbering the outbox")?;
        }
        tx.execute(
            "UPDATE frame SET seq = -seq WHERE stream = ?1 AND seq < 0",
            params![stream],
        )
        .context("renumbering the outbox")?;
        let last = base + seqs.len() as u64;
        tx.execute(
            "UPDATE stream SET last_seq = ?2, acked = ?3 WHERE id = ?1",
            params![stream, to_sql(last), to_sql(base)],
        )
        .context("renumbering the outbox")?;
        tx.commit().context("renumbering the outbox")?;
        Ok(last)
    }

    /// Persist the inbound cursor.
    pub fn set_rx(&self, stream: i64, rx_seq: u64) -> anyhow::Result<()> {
        self.conn
            .execute(
                "UPDATE stream SET rx_seq = ?2 WHERE id = ?1",
                params![stream, to_sql(rx_seq)],
            )
            .context("saving the inbound cursor")?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key() -> StreamKey {
        StreamKey {
            serial: "D1".into(),
            group_id: "g".into(),
            side: "a".into(),
        }
    }

    #[test]
    fn append_cap_ack_renumber_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let mut st = DongleStore::open(&path, OutboxSync::Normal).unwrap();
        let s = st.load_stream(&key()).unwrap();
        assert_eq!((s.last_seq, s.acked, s.rx_seq), (0, 0, 0));
        let p: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i]).collect();
        let a = st.append(s.id, 0, 0, &p, 3).unwrap();
        assert_eq!(
            a,
            Appended {
                first_seq: 1,
                dropped_oldest: 2
            }
        );
        st.ack(s.id, 3).unwrap();
        st.set_rx(s.id, 42).unwrap();
        drop(st);
        let mut st = DongleStore::open(&path, OutboxSync::Full).unwrap();
        let s = st.load_stream(&key()).unwrap();
        assert_eq!((s.last_seq, s.acked, s.rx_seq), (5, 3, 42));
        assert_eq!(s.pending, vec![(4, vec![3]), (5, vec![4])]);
        assert_eq!(st.renumber(s.id, 10).unwrap(), 12);
        let s = st.load_stream(&key()).unwrap();
        assert_eq!(s.pending, vec![(11, vec![3]), (12, vec![4])]);
        assert_eq!((s.last_seq, s.acked), (12, 10));
        assert_eq!(st.drop_pending(s.id).unwrap(), 2);
        let saved = SavedAssignment {
            dongle_id: "d".into(),
            group: Some(("g".into(), "a".into())),
        };
        st.save_assignment("D1", &saved, 1).unwrap();
        assert_eq!(st.assignment("D1").unwrap(), Some(saved));
        assert_eq!(st.assignment("D2").unwrap(), None);
    }
}
