//! Process-level: signed commands — valid, replayed, expired, badly signed, failing then
//! succeeding.
#![allow(clippy::unwrap_used)]

mod metering_support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use metering_support::*;
use serde_json::json;

fn token(key_pem: &str, command_id: &str, command: &str, aud: &str, exp_offset: i64) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("k1".into());
    let claims = json!({
        "command_id": command_id, "command": command, "aud": aud,
        "exp": chrono::Utc::now().timestamp() + exp_offset, "iat": chrono::Utc::now().timestamp(),
    });
    encode(
        &header,
        &claims,
        &EncodingKey::from_ed_pem(key_pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_verified_run_once_and_retried_after_failure() {
    let (cp, url) = start_double().await;
    let setup = agent_setup(&url, &redis_url(), "", "");
    let mut r = redis_conn(&setup.redis_url).await;
    let agent = spawn_agent(&setup, 0);
    // Keys fetched at start.
    eventually(Duration::from_secs(20), "initial key fetch", || async {
        !cp.requests_to("/public-keys").is_empty()
    })
    .await;

    *cp.commands.lock().unwrap() = vec![
        token(
            TEST_PRIVATE_KEY,
            "cmd-valid",
            "health_check",
            "srv-test",
            300,
        ),
        token(
            TEST_PRIVATE_KEY,
            "cmd-expired",
            "health_check",
            "srv-test",
            -600,
        ),
        token(
            OTHER_PRIVATE_KEY,
            "cmd-forged",
            "get_metrics",
            "srv-test",
            300,
        ),
        token(
            TEST_PRIVATE_KEY,
            "cmd-other-server",
            "get_metrics",
            "srv-someone-else",
            300,
        ),
        format!(
            "{}x",
            token(
                TEST_PRIVATE_KEY,
                "cmd-tampered",
                "get_metrics",
                "srv-test",
                300
            )
        ),
    ];
    eventually(
        Duration::from_secs(20),
        "valid command reported",
        || async { !cp.requests_to("/commands/cmd-valid/result").is_empty() },
    )
    .await;
    // Let several more polls pass: the replayed valid command must not run again.
    cp.more_polls(3).await;
    let results = cp.requests_to("/commands/cmd-valid/result");
    assert_eq!(results.len(), 1, "replayed command ran again");
    assert_eq!(results[0].2["status"], "succeeded");
    assert_eq!(results[0].2["result"]["version"], env!("CARGO_PKG_VERSION"));
    for refused in [
        "cmd-expired",
        "cmd-forged",
        "cmd-other-server",
        "cmd-tampered",
    ] {
        assert!(
            cp.requests_to(&format!("/commands/{refused}/result"))
                .is_empty(),
            "{refused} was run"
        );
    }
    let logs = agent_logs(&setup);
    assert!(logs.contains("command refused"), "refusals not logged");

    // Failing then succeeding: the key endpoint fails for a while, so refresh_public_keys fails;
    // it is not recorded as executed, so the next poll runs it again and it succeeds once.
    // 5 failures: the first run's three tries (1 + 2 retries) fail, the second run's third try
    // succeeds.
    cp.fail_public_keys.store(5, Ordering::Relaxed);
    *cp.commands.lock().unwrap() = vec![token(
        TEST_PRIVATE_KEY,
        "cmd-refresh",
        "refresh_public_keys",
        "srv-test",
        300,
    )];
    eventually(Duration::from_secs(30), "refresh succeeded", || async {
        cp.requests_to("/commands/cmd-refresh/result")
            .iter()
            .any(|r| r.2["status"] == "succeeded")
    })
    .await;
    cp.more_polls(3).await;
    let results = cp.requests_to("/commands/cmd-refresh/result");
    assert_eq!(
        results[0].2["status"], "failed",
        "first run should have failed: {results:?}"
    );
    assert_eq!(
        results
            .iter()
            .filter(|r| r.2["status"] == "succeeded")
            .count(),
        1
    );
    let mut executed: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("{}metering:commands:executed", setup.prefix))
        .arg(0)
        .arg(-1)
        .query_async(&mut r)
        .await
        .unwrap();
    executed.sort();
    assert_eq!(
        executed,
        vec!["cmd-refresh".to_owned(), "cmd-valid".to_owned()]
    );
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("{}metering:commands:executed", setup.prefix))
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 86_400);

    stop_agent(agent).await;
    cleanup(&mut r, &setup.prefix).await;
}
