//! The server's data directory fills up in the middle of a two-way relay. The server runs in
//! its own mount namespace (`unshare -rm`) with the data directory on a 16 MiB tmpfs; the test
//! fills it from inside that namespace (`nsenter`), waits until the server has refused frames
//! (appends fail with "database or disk is full", counted in
//! `tether_server_relay_storage_errors_total`), frees the space, and checks that every frame
//! the agents had sent arrives once, in order: the agents hold what was not acknowledged and
//! send it again.

use std::process::Command;
use std::time::Duration;

use crate::fault_support::TwoWay;
use crate::support::{
    Pair, ServerOptions, ServerProc, TETHER, TestResult, Workspace, eventually, metric_sum,
};

/// Size of the tmpfs under the data directory.
const TMPFS_SIZE: &str = "16m";

/// `command` run inside the server's mount namespace.
fn in_server_ns(server: &ServerProc, command: &str) -> TestResult<std::process::Output> {
    let pid = server
        .child
        .as_ref()
        .ok_or("server not running")?
        .id()
        .to_string();
    Ok(Command::new("nsenter")
        .args([
            "-t",
            &pid,
            "-m",
            "-U",
            "--preserve-credentials",
            "sh",
            "-c",
            command,
        ])
        .env("TETHER", TETHER)
        .env("DATA", &server.data_dir)
        .env_remove("REDIS_URL")
        .output()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_data_directory_refuses_frames_and_recovers_without_loss() -> TestResult {
    let ws = Workspace::new()?;
    let data_dir = ws.path("server-data");
    std::fs::create_dir_all(&data_dir)?;
    let server = ServerProc::start(
        &ws,
        ServerOptions {
            wrapper: vec![
                "unshare".to_owned(),
                "-rm".to_owned(),
                "sh".to_owned(),
                "-c".to_owned(),
                format!("mount -t tmpfs -o size={TMPFS_SIZE} tmpfs \"$0\" && exec \"$@\""),
                data_dir.display().to_string(),
            ],
            ..ServerOptions::default()
        },
    )
    .await?;
    // The user token goes into the database on the tmpfs, from inside the namespace.
    let out = in_server_ns(
        &server,
        "\"$TETHER\" server token create --user dora --data-dir \"$DATA\"",
    )?;
    if !out.status.success() {
        return Err(format!(
            "token create in the server's namespace failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let token = String::from_utf8(out.stdout)?.trim().to_owned();
    let pair = Pair::start_with(&ws, &server, "dora", token, [&server.base, &server.base]).await?;
    let api = server.api();
    let outcome = async {
        let stream = TwoWay::start(&ws, &server, &pair).await?;
        let errors_before = metric_sum(
            &api.metrics().await.ok_or("server metrics")?,
            "tether_server_relay_storage_errors_total",
            &[],
        );
        // Fill every byte left (dd stops at ENOSPC).
        in_server_ns(
            &server,
            "dd if=/dev/zero of=\"$DATA/filler\" bs=64k 2>/dev/null; df \"$DATA\"",
        )?;
        let refused = eventually(
            Duration::from_secs(30),
            "the server refuses frames on a full disk",
            || async {
                let text = api.metrics().await?;
                let errors = metric_sum(&text, "tether_server_relay_storage_errors_total", &[]);
                (errors > errors_before).then_some(errors)
            },
        )
        .await?;
        let stalled_at = stream.received_at_b();
        // Full for a while: the agents keep what is not acknowledged.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let out = in_server_ns(&server, "rm -f \"$DATA/filler\"")?;
        assert!(out.status.success(), "{out:?}");
        stream
            .check_across("across a full disk", &server, &pair, stalled_at)
            .await?;
        let server_log = std::fs::read_to_string(ws.path("server-0.stderr"))?;
        assert!(
            server_log.contains("full"),
            "no log line says the disk is full ({refused} storage errors)"
        );
        stream.stop().await
    }
    .await;
    pair.explain(&ws, outcome).await
}
