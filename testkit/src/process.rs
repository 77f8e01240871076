//! Child processes by PID: start with a log file, send `TERM`/`INT`/`KILL`, wait with a limit.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::TestResult;

/// Sends a signal by name (`TERM`, `INT`, `KILL`, `STOP`, `CONT`) to a process; a process that
/// is already gone is not an error.
pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

/// `SIGTERM` to a child.
pub fn sigterm(child: &Child) {
    signal(child.id(), "TERM");
}

/// `SIGKILL` (`kill -9`) to a child, and reaps it.
pub fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Starts `command` with stdout discarded and stderr appended to `log` (created when absent).
pub fn spawn_logged(command: &mut Command, log: &Path) -> std::io::Result<Child> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    command.stdout(Stdio::null()).stderr(file).spawn()
}

/// Runs `command` to completion and asserts that it exited 0 (the failure names the command
/// and shows its stderr) → its stdout.
pub fn run_ok(command: &mut Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"));
    assert!(
        out.status.success(),
        "{command:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits for a child to exit without blocking the runtime; kills it after `limit`.
pub async fn wait_child(child: &mut Child, limit: Duration) -> TestResult<ExitStatus> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if tokio::time::Instant::now() >= deadline {
            kill9(child);
            return Err(format!("process {} did not exit within {limit:?}", child.id()).into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for a child to exit (blocking in a helper thread), however long it takes.
pub async fn wait_exit(mut child: Child) -> ExitStatus {
    match tokio::task::spawn_blocking(move || child.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(err)) => panic!("waiting for a child: {err}"),
        Err(err) => panic!("the waiting thread failed: {err}"),
    }
}

/// `SIGTERM`, then waits up to `limit` for the exit status (blocking; for sync tests);
/// panics, after killing it, when the process does not stop.
pub fn terminate(child: &mut Child, limit: Duration) -> ExitStatus {
    sigterm(child);
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            outcome => {
                kill9(child);
                panic!(
                    "process {} did not stop on SIGTERM: {outcome:?}",
                    child.id()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_terminated_child_is_reaped_and_a_stuck_one_is_killed() -> TestResult {
        let mut child = Command::new("sleep").arg("30").spawn()?;
        let status = terminate(&mut child, Duration::from_secs(10));
        assert!(!status.success());
        let mut child = Command::new("sleep").arg("30").spawn()?;
        assert!(
            wait_child(&mut child, Duration::from_millis(100))
                .await
                .is_err()
        );
        assert!(child.try_wait()?.is_some(), "killed and reaped");
        Ok(())
    }
}
