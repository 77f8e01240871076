//! Structured JSON logs on stderr, the same for every daemon.

/// Installs the global `tracing` subscriber: JSON lines on stderr, filtered by `directive` (an
/// `EnvFilter` directive such as `info` or `tether_server=debug`; `info` when it does not
/// parse). A second call is a no-op, so a library or a test that already installed one keeps it.
///
/// The server passes `RUST_LOG` (default `info`), the agent its roles' `log_level`.
pub fn init_json_logs(directive: &str) {
    install(directive, std::io::stderr);
}

/// The JSON subscriber writing to `writer`; a no-op when one is already installed.
fn install<W>(directive: &str, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = tracing_subscriber::EnvFilter::try_new(directive)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_current_span(false)
        .with_ansi(false)
        .with_env_filter(filter)
        .with_writer(writer)
        .try_init();
}

/// Where [`init_json_logs_in_dir`] writes.
#[derive(Debug, Clone)]
pub struct LogFiles {
    /// Directory of the log files (created if missing).
    pub dir: std::path::PathBuf,
    /// File name prefix; files are `<prefix>.YYYY-MM-DD.log`.
    pub prefix: String,
    /// Days of files kept: a new day's file deletes the oldest beyond this many.
    pub retention_days: usize,
}

/// Like [`init_json_logs`], but into a file per day in `files.dir`, keeping
/// `files.retention_days` files (older ones are deleted when the day rolls over and at start).
/// Errors when the directory cannot be created or written.
pub fn init_json_logs_in_dir(directive: &str, files: &LogFiles) -> std::io::Result<()> {
    install(directive, daily_appender(files)?);
    Ok(())
}

fn daily_appender(
    files: &LogFiles,
) -> std::io::Result<tracing_appender::rolling::RollingFileAppender> {
    std::fs::create_dir_all(&files.dir)?;
    tracing_appender::rolling::Builder::new()
        .rotation(tracing_appender::rolling::Rotation::DAILY)
        .filename_prefix(&files.prefix)
        .filename_suffix("log")
        .max_log_files(files.retention_days.max(1))
        .build(&files.dir)
        .map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn daily_files_beyond_retention_are_deleted() {
        let dir = std::env::temp_dir().join(format!("tether-logs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        for day in 1..=9 {
            std::fs::write(dir.join(format!("agent.2020-01-0{day}.log")), "old\n").expect("old");
        }
        std::fs::write(dir.join("unrelated.txt"), "keep\n").expect("other");
        let files = LogFiles {
            dir: dir.clone(),
            prefix: "agent".into(),
            retention_days: 3,
        };
        let mut appender = daily_appender(&files).expect("appender");
        appender.write_all(b"{\"msg\":\"hello\"}\n").expect("write");
        appender.flush().expect("flush");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let logs: Vec<&String> = names.iter().filter(|n| n.ends_with(".log")).collect();
        assert_eq!(logs.len(), 3, "{names:?}");
        assert!(names.contains(&"unrelated.txt".to_owned()), "{names:?}");
        let today = chrono_free_today(&logs);
        assert!(today, "today's file is kept: {names:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Today's file is the newest name (dates sort as text), and it holds the new line.
    fn chrono_free_today(logs: &[&String]) -> bool {
        logs.last().is_some_and(|n| !n.contains("2020-"))
    }
}
