//! The command line's edges (issue 18, items 8–9): read-only token commands never create a
//! database, the demo checks its flags before anything starts, every `--help` has examples,
//! `--from`/`--to` name formats everywhere (buses are `--bus`, old spellings still work), a
//! closed output pipe ends a tool quietly, `can stats` fails when nothing parsed, `sse tail`
//! gives up by default, and `agent --help` shows `--config` as required.

mod cli_support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cli_support::{TETHER, first_line, run, stderr, token};
use tether_testkit::TestResult;

/// The capture shipped with the project, as an argument.
fn capture() -> String {
    tether_testkit::capture_path().display().to_string()
}

#[test]
fn token_list_and_revoke_never_create_a_database() -> TestResult {
    let dir = tempfile::tempdir()?;
    let typo = dir.path().join("typo");
    let typo_text = typo.display().to_string();
    let list = token(&["list"], &typo_text)?;
    assert!(!list.status.success());
    assert!(
        stderr(&list).contains("no server database at"),
        "{}",
        stderr(&list)
    );
    assert!(list.stdout.is_empty(), "printed a table for a typo");
    let revoke = token(
        &["revoke", "00000000-0000-0000-0000-000000000000"],
        &typo_text,
    )?;
    assert!(!revoke.status.success());
    assert!(!typo.exists(), "the mistyped directory was created");
    // After `token create` made the database, list works.
    let create = token(&["create", "--user", "u"], &typo_text)?;
    assert!(create.status.success(), "{}", stderr(&create));
    let list = token(&["list"], &typo_text)?;
    assert!(list.status.success(), "{}", stderr(&list));
    assert!(String::from_utf8(list.stdout)?.contains("\tu\t"));
    Ok(())
}

#[test]
fn demo_flags_are_checked_before_anything_starts() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("demo");
    let data_text = data.display().to_string();
    let speed = run(&["demo", "--speed", "fast", "--data-dir", &data_text])?;
    assert!(!speed.status.success());
    assert!(
        speed.stdout.is_empty(),
        "banner printed: {:?}",
        speed.stdout
    );
    assert!(
        stderr(&speed).contains("speed must be a positive number or `max`"),
        "{}",
        stderr(&speed)
    );
    let listen = run(&[
        "demo",
        "--listen",
        "localhost:27083",
        "--data-dir",
        &data_text,
    ])?;
    assert!(!listen.status.success());
    assert!(listen.stdout.is_empty());
    assert!(
        stderr(&listen).contains("host names such as localhost are not resolved"),
        "{}",
        stderr(&listen)
    );
    assert!(!data.exists(), "the demo touched its data directory");
    Ok(())
}

#[test]
fn every_help_has_examples() -> TestResult {
    let commands: &[&[&str]] = &[
        &[],
        &["agent"],
        &["agent", "metering"],
        &["agent", "metering", "dlq"],
        &["agent", "metering", "dlq", "list"],
        &["agent", "metering", "dlq", "retry"],
        &["agent", "metering", "dlq", "purge"],
        &["can"],
        &["can", "stats"],
        &["can", "convert"],
        &["can", "replay"],
        &["can", "record"],
        &["can", "dongle"],
        &["can", "ecu"],
        &["can", "uds"],
        &["collector"],
        &["demo"],
        &["server"],
        &["server", "token"],
        &["server", "token", "create"],
        &["server", "token", "list"],
        &["server", "token", "revoke"],
        &["server", "metering"],
        &["server", "metering", "key", "create"],
        &["server", "metering", "customer", "create"],
        &["server", "metering", "signing-key", "rotate"],
        &["sse"],
        &["sse", "parse"],
        &["sse", "tail"],
    ];
    for path in commands {
        let mut args = path.to_vec();
        args.push("--help");
        let out = run(&args)?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "tether {}: {}",
            args.join(" "),
            stderr(&out)
        );
        assert!(
            text.contains("Examples:") || text.contains("Example:"),
            "tether {} has no examples:\n{text}",
            args.join(" ")
        );
    }
    Ok(())
}

#[test]
fn agent_help_shows_config_as_required() -> TestResult {
    let out = run(&["agent", "--help"])?;
    let text = String::from_utf8(out.stdout)?;
    let usage = text
        .lines()
        .find(|l| l.starts_with("Usage:"))
        .ok_or("no usage line")?;
    assert!(usage.contains("--config <FILE>"), "{usage}");
    assert!(!usage.contains("[--config"), "{usage}");
    Ok(())
}

#[test]
fn buses_are_bus_and_from_to_are_formats_with_old_spellings_kept() -> TestResult {
    for sub in ["record", "replay"] {
        let out = run(&["can", sub, "--help"])?;
        let text = String::from_utf8(out.stdout)?;
        assert!(text.contains("--bus <URL>"), "can {sub}:\n{text}");
    }
    // `record --from URL`, the old spelling, still records.
    let out = run(&[
        "can",
        "record",
        "--from",
        "udp://127.0.0.1:0",
        "-o",
        "-",
        "--duration",
        "0.2",
    ])?;
    assert!(out.status.success(), "{}", stderr(&out));
    // `convert --from` / `--to` are formats.
    let out = run(&[
        "can",
        "convert",
        &capture(),
        "--from",
        "candump",
        "--to",
        "jsonl",
        "-o",
        "/dev/null",
    ])?;
    assert!(out.status.success(), "{}", stderr(&out));
    Ok(())
}

#[test]
fn convert_into_a_closed_pipe_exits_quietly() -> TestResult {
    let mut child = Command::new(TETHER)
        .args(["can", "convert", &capture(), "--to", "jsonl"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // The reader is gone once it read the first line (like `| head -1`).
    let first = first_line(&mut child)?;
    assert!(first.starts_with('{'), "{first}");
    let status = child.wait()?;
    let mut err = String::new();
    child
        .stderr
        .take()
        .ok_or("no stderr")?
        .read_to_string(&mut err)?;
    assert!(status.success(), "{status}: {err}");
    assert!(!err.contains("Broken pipe"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    Ok(())
}

#[test]
fn stats_fails_when_no_line_parsed() -> TestResult {
    let dir = tempfile::tempdir()?;
    let junk = dir.path().join("junk.log");
    std::fs::write(&junk, "this is not\na CAN log\n")?;
    let out = run(&[
        "can",
        "stats",
        "--from",
        "candump",
        &junk.display().to_string(),
    ])?;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("no line of"), "{}", stderr(&out));
    // A good log still succeeds.
    let out = run(&["can", "stats", &capture()])?;
    assert!(out.status.success(), "{}", stderr(&out));
    Ok(())
}

#[test]
fn sse_tail_gives_up_by_default() -> TestResult {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("http://127.0.0.1:{port}/events");
    let started = Instant::now();
    let out = run(&["sse", "tail", &url, "--retry-ms", "10"])?;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("gave up on"), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(30));
    // `--forever` conflicts with a bound.
    let out = run(&["sse", "tail", &url, "--forever", "--max-reconnects", "3"])?;
    assert!(!out.status.success());
    Ok(())
}
