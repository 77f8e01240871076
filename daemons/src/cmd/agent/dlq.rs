//! `tether agent metering dlq list|retry|purge`.

use std::process::ExitCode;

use anyhow::{Context, bail};
use metering_core::message::QueueKind;

use super::config::MeteringConfig;

/// DLQ subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// Print entries as JSON lines (newest first).
    List {
        /// Queue (`usage_records`, `session_lifecycle`, `quota_refresh`); all when omitted.
        #[arg(long)]
        queue: Option<String>,
        /// Most entries per queue.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Move entries back to the head of their queue, atomically.
    Retry {
        /// Queue; all when omitted.
        #[arg(long)]
        queue: Option<String>,
        /// One entry id.
        #[arg(long, conflicts_with = "all")]
        id: Option<String>,
        /// Every entry.
        #[arg(long)]
        all: bool,
    },
    /// Delete entries.
    Purge {
        /// Queue; all when omitted.
        #[arg(long)]
        queue: Option<String>,
        /// One entry id.
        #[arg(long, conflicts_with = "all")]
        id: Option<String>,
        /// Every entry.
        #[arg(long)]
        all: bool,
    },
}

fn queues(name: Option<&str>) -> anyhow::Result<Vec<QueueKind>> {
    match name {
        None => Ok(QueueKind::ALL.to_vec()),
        Some(n) => Ok(vec![
            QueueKind::from_name(n).with_context(|| format!("unknown queue {n}"))?,
        ]),
    }
}

/// Run a DLQ command.
pub async fn run(cfg: &MeteringConfig, cmd: DlqCommand) -> anyhow::Result<ExitCode> {
    let store = super::metering::queue_store(cfg, "cli")?;
    match cmd {
        DlqCommand::List { queue, limit } => {
            for q in queues(queue.as_deref())? {
                for e in store.dlq_list(q, limit).await? {
                    println!("{}", serde_json::to_string(&e)?);
                }
            }
        }
        DlqCommand::Retry { queue, id, all } | DlqCommand::Purge { queue, id, all }
            if id.is_none() && !all =>
        {
            let _ = queue;
            bail!("say which entries: --id ID or --all");
        }
        DlqCommand::Retry { queue, id, .. } => {
            let mut n = 0;
            for q in queues(queue.as_deref())? {
                n += store.dlq_retry(q, id.as_deref()).await?;
            }
            println!("{{\"retried\": {n}}}");
        }
        DlqCommand::Purge { queue, id, .. } => {
            let mut n = 0;
            for q in queues(queue.as_deref())? {
                n += store.dlq_purge(q, id.as_deref()).await?;
            }
            println!("{{\"purged\": {n}}}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
