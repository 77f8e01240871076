//! The metering role's dead-letter queues as a tool: list, retry, purge (the
//! `tether agent metering dlq …` commands; the running role serves the same operations on
//! `/admin/dlq/{queue}`).

use anyhow::Context;
use metering_core::message::QueueKind;
use metering_core::queue::DlqEntry;

use crate::config::MeteringConfig;

/// The queue named `name` (`usage_records`, `session_lifecycle`, `quota_refresh`), or every
/// queue when `None`.
pub fn queues(name: Option<&str>) -> anyhow::Result<Vec<QueueKind>> {
    match name {
        None => Ok(QueueKind::ALL.to_vec()),
        Some(n) => Ok(vec![
            QueueKind::from_name(n).with_context(|| format!("unknown queue {n}"))?,
        ]),
    }
}

/// The entries of `queue` (every queue when `None`), at most `limit` per queue, newest first.
pub async fn list(
    cfg: &MeteringConfig,
    queue: Option<&str>,
    limit: usize,
) -> anyhow::Result<Vec<DlqEntry>> {
    let store = crate::metering::queue_store(cfg, "cli")?;
    let mut entries = Vec::new();
    for q in queues(queue)? {
        entries.extend(store.dlq_list(q, limit).await?);
    }
    Ok(entries)
}

/// What to do with dead-lettered entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DlqAction {
    /// Move them back to the head of their queue, atomically.
    Retry,
    /// Delete them.
    Purge,
}

/// Applies `action` to the entry `id` (every entry when `None`) of `queue` (every queue when
/// `None`); returns how many entries it applied to.
pub async fn apply(
    cfg: &MeteringConfig,
    action: DlqAction,
    queue: Option<&str>,
    id: Option<&str>,
) -> anyhow::Result<u64> {
    let store = crate::metering::queue_store(cfg, "cli")?;
    let mut n = 0;
    for q in queues(queue)? {
        n += match action {
            DlqAction::Retry => store.dlq_retry(q, id).await?,
            DlqAction::Purge => store.dlq_purge(q, id).await?,
        };
    }
    Ok(n)
}
