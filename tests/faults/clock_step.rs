//! The server's wall clock stepped back one hour in the middle of a two-way relay (libfaketime
//! preloaded into `tether server`, its offset file rewritten mid-run; the monotonic clock is
//! left alone, as a real step of the system time leaves it). Timestamps, console event IDs and
//! records go back in time; relay order is by sequence number and must not care.

use std::time::Duration;

use crate::fault_support::TwoWay;
use crate::support::{Pair, ServerOptions, ServerProc, SseReader, TestResult, Workspace};

/// Where Debian's `libfaketime` package puts the library.
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_stepped_back_mid_relay_loses_and_reorders_nothing() -> TestResult {
    if !std::path::Path::new(LIBFAKETIME).is_file() {
        return Err(format!("{LIBFAKETIME} is missing: apt-get install libfaketime").into());
    }
    let ws = Workspace::new()?;
    let offset = ws.path("faketime-offset");
    std::fs::write(&offset, "+0\n")?;
    let server = ServerProc::start(
        &ws,
        ServerOptions {
            env: vec![
                ("LD_PRELOAD".to_owned(), LIBFAKETIME.to_owned()),
                (
                    "FAKETIME_TIMESTAMP_FILE".to_owned(),
                    offset.display().to_string(),
                ),
                // Re-read the offset file at most once a second.
                ("FAKETIME_CACHE_DURATION".to_owned(), "1".to_owned()),
                ("FAKETIME_DONT_FAKE_MONOTONIC".to_owned(), "1".to_owned()),
            ],
            ..ServerOptions::default()
        },
    )
    .await?;
    let pair = Pair::start(&ws, &server, "tim").await?;
    let console = SseReader::open(pair.group_console(&server), Some(pair.user_token.clone()));
    let outcome = async {
        let stream = TwoWay::start(&ws, &server, &pair).await?;
        let at_step = stream.received_at_b();
        std::fs::write(&offset, "-3600\n")?;
        stream
            .check_across("across a clock step back", &server, &pair, at_step)
            .await?;
        // The step reached the server: a record made now is dated about an hour ago.
        let (status, agent) = server
            .api()
            .post(
                "/api/v1/agents",
                &pair.user_token,
                serde_json::json!({"name": "after the step"}),
            )
            .await?;
        assert!(status.is_success(), "{agent}");
        let created = agent["created_at"].as_str().ok_or("no created_at")?;
        let created = chrono::DateTime::parse_from_rfc3339(created)?;
        let behind = chrono::Utc::now().signed_duration_since(created);
        assert!(
            behind > chrono::TimeDelta::minutes(50),
            "the server's clock did not step back: created_at {created}"
        );
        // Console event IDs still increase strictly on the group's stream.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let ids: Vec<String> = console
            .events
            .lock()
            .map_err(|_| "poisoned")?
            .iter()
            .map(|e| e.last_event_id.clone())
            .filter(|id| !id.is_empty())
            .collect();
        assert!(ids.len() > 2, "too few console events: {ids:?}");
        let parsed: Vec<(u64, u64)> = ids
            .iter()
            .map(|id| {
                let (ms, n) = id.split_once('-').unwrap_or((id, "0"));
                (ms.parse().unwrap_or(0), n.parse().unwrap_or(0))
            })
            .collect();
        for pair_of_ids in parsed.windows(2) {
            assert!(
                pair_of_ids[0] < pair_of_ids[1],
                "console IDs went back: {pair_of_ids:?}"
            );
        }
        stream.stop().await
    }
    .await;
    drop(console);
    pair.explain(&ws, outcome).await
}
