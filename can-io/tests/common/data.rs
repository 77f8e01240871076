//! Paths to the shared CAN captures and a python-can helper for comparisons.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::process::Command;

use can_io::{CanFrame, CanRecord, Direction};

/// `<workspace>/../shared/data/can/<name>`.
pub fn capture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/can")
        .join(name)
}

/// The Python with python-can: `TETHER_PYTHON`, else `<workspace>/.venv/bin/python`.
pub fn python() -> PathBuf {
    match std::env::var_os("TETHER_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"),
    }
}

/// Run a Python snippet with `args`, in UTC; its stdout, or a panic with its stderr.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .env("TZ", "UTC")
        .output()
        .unwrap_or_else(|e| panic!("running {:?}: {e}", python()));
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("python prints UTF-8")
}

/// Prints one line per message python-can reads from `argv[1]` with `argv[2]`
/// (`log` = `can.CanutilsLogReader`, `asc` = `can.ASCReader(relative_timestamp=False)`).
pub const PY_DUMP: &str = r#"
import sys, can
path, kind = sys.argv[1], sys.argv[2]
reader = can.CanutilsLogReader(path) if kind == "log" else can.ASCReader(path, relative_timestamp=False)
for m in reader:
    print(f"{m.timestamp:.6f}|{m.channel}|{m.arbitration_id}|{int(m.is_extended_id)}|{int(m.is_remote_frame)}|"
          f"{int(m.is_error_frame)}|{int(m.is_fd)}|{int(m.bitrate_switch)}|{int(m.error_state_indicator)}|"
          f"{m.dlc}|{bytes(m.data).hex().upper()}|{int(m.is_rx)}")
"#;

/// `r` as [`PY_DUMP`] prints the message python-can reads for it, with the channel written as
/// `channel` (readers name channels their own way).
pub fn py_dump_line(r: &CanRecord, channel: &str) -> String {
    let (id, ext) = r
        .frame
        .id()
        .map(|i| (i.raw(), i.is_extended()))
        .unwrap_or((0, false));
    let (fd, brs, esi) = match &r.frame {
        CanFrame::Fd(f) => (true, f.flags().brs, f.flags().esi),
        _ => (false, false, false),
    };
    format!(
        "{}.{:06}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}",
        r.ts_ns / 1_000_000_000,
        r.ts_ns % 1_000_000_000 / 1000,
        channel,
        id,
        ext as u8,
        matches!(r.frame, CanFrame::Remote(_)) as u8,
        matches!(r.frame, CanFrame::Error(_)) as u8,
        fd as u8,
        brs as u8,
        esi as u8,
        r.frame.len(),
        hex::encode_upper(r.frame.data()),
        (r.direction != Direction::Tx) as u8,
    )
}

/// Asserts that `ours` and `theirs` are the same lines, naming `what` and the first line that
/// differs.
pub fn assert_same_lines(ours: &[String], theirs: &[String], what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}: line count");
    for (o, t) in ours.iter().zip(theirs) {
        assert_eq!(o, t, "{what}");
    }
}
