//! Shared by the tests of the command line (`cli_edges`, and the `tether server …` commands in
//! `server_cli`, `server_cli_postgres`): one-shot commands and `tether server` processes,
//! never touching `REDIS_URL`.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use tether_testkit::TestResult;

/// The binary under test.
pub const TETHER: &str = env!("CARGO_BIN_EXE_tether");

/// Runs `tether args…` to completion; `TETHER_DATABASE_URL` is `database_url` or unset.
pub fn tether(args: &[&str], database_url: Option<&str>) -> TestResult<Output> {
    let mut command = Command::new(TETHER);
    command.args(args).env_remove("REDIS_URL");
    match database_url {
        Some(url) => command.env("TETHER_DATABASE_URL", url),
        None => command.env_remove("TETHER_DATABASE_URL"),
    };
    Ok(command.output()?)
}

/// Runs `tether args…` to completion without a database URL ([`tether`] with `None`).
pub fn run(args: &[&str]) -> TestResult<Output> {
    tether(args, None)
}

/// `tether server token <args…> --data-dir <data_dir>` (SQLite records, no database URL).
pub fn token(args: &[&str], data_dir: &str) -> TestResult<Output> {
    let mut all = vec!["server", "token"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--data-dir", data_dir]);
    tether(&all, None)
}

/// A command's stdout, trimmed.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A command's stderr.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The first line `child` prints on its piped stdout; the pipe is closed once it is read.
pub fn first_line(child: &mut Child) -> TestResult<String> {
    let out = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line)?;
    Ok(line)
}

/// Starts `tether server` on 127.0.0.1:0 with `data_dir` (and PostgreSQL records at
/// `database_url`); returns it with the address it printed on its first line.
pub fn start_server(data_dir: &Path, database_url: Option<&str>) -> TestResult<(Child, String)> {
    let mut command = Command::new(TETHER);
    command.args(["server", "--listen", "127.0.0.1:0"]);
    if let Some(url) = database_url {
        command.args(["--database-url", url]);
    }
    let mut child = command
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("REDIS_URL")
        .env_remove("TETHER_DATABASE_URL")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let line = first_line(&mut child)?;
    let addr = line
        .trim()
        .strip_prefix("tether server listening on ")
        .ok_or_else(|| format!("unexpected first line {line:?}"))?
        .to_owned();
    Ok((child, addr))
}

/// `kill -TERM`, asserting the signal was delivered.
pub fn sigterm(child: &Child) -> TestResult {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    assert!(status.success());
    Ok(())
}

/// [`sigterm`], then asserts a graceful (0) exit.
pub fn stop(mut child: Child) -> TestResult {
    sigterm(&child)?;
    let exit = child.wait()?;
    assert!(exit.success(), "graceful exit on SIGTERM: {exit:?}");
    Ok(())
}
