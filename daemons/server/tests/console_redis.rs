//! The live console with the Redis backend (needs `REDIS_URL`; fails without it): exact resume,
//! `stream_reset` for stale IDs, and the multiplexed stream.

mod console_support;
mod server_support;

use console_support::{frame, json, log_info, subscribe};
use server_support::{TestResult, TestServer, redis_url};
use sse_core::events::LogLevel;
use tether_server::ServerConfig;
use tether_server::console::ConsoleStream;
use uuid::Uuid;

/// A server whose console streams are in Redis under a key prefix of this test's own.
struct RedisConsole {
    server: TestServer,
    url: String,
    prefix: String,
}

impl RedisConsole {
    async fn start() -> TestResult<RedisConsole> {
        let url = redis_url()?;
        let prefix = format!("test:console:{}:", Uuid::new_v4());
        let server = TestServer::start_with(|config: &mut ServerConfig| {
            config.redis_url = Some(url.clone());
            config.console.redis_key_prefix = prefix.clone();
        })
        .await?;
        Ok(RedisConsole {
            server,
            url,
            prefix,
        })
    }

    /// Shuts the server down and deletes the test's keys.
    async fn stop(self) -> TestResult {
        self.server.stop().await?;
        delete_prefix(&self.url, &self.prefix).await
    }
}

async fn delete_prefix(url: &str, prefix: &str) -> TestResult {
    let client = redis::Client::open(url)?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut con)
        .await?;
    if !keys.is_empty() {
        redis::cmd("DEL")
            .arg(keys)
            .query_async::<()>(&mut con)
            .await?;
    }
    Ok(())
}

#[tokio::test]
async fn redis_streams_resume_exactly_and_reset_stale_ids() -> TestResult {
    let redis = RedisConsole::start().await?;
    let server = &redis.server;
    let (token, _agent, a, b) = server.user_with_pair("rae").await?;
    let group = Uuid::parse_str(&console_support::group(server, &token, &a, &b).await?)?;
    let dongle = Uuid::parse_str(&a)?;
    let console = server.server.state().console();
    let path = format!("/api/v1/streams/dongles/{a}/console");
    let mut live = subscribe(server, &path, Some(&token), None).await?;
    for i in 0..4u32 {
        console.can_frame(dongle, Some(group), &frame(0x200 + i, "FF"));
    }
    console.log(
        ConsoleStream::Dongle(dongle),
        LogLevel::Error,
        "boom".to_owned(),
        serde_json::json!({ "code": 7 }),
    );
    let first = live.take(5).await?;
    assert_eq!(json(&first[4])?["message"], "boom");
    drop(live);

    log_info(server, ConsoleStream::Dongle(dongle), "while away");
    let mut resumed = subscribe(server, &path, Some(&token), Some(&first[1].last_event_id)).await?;
    let rest = resumed.take(4).await?;
    for (got, want) in rest.iter().zip(&first[2..]) {
        assert_eq!(got.last_event_id, want.last_event_id);
        assert_eq!(got.data, want.data);
    }
    assert_eq!(json(&rest[3])?["message"], "while away");

    // The keys are where docs/sse.md says, under this test's prefix.
    let client = redis::Client::open(redis.url.as_str())?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let len: u64 = redis::cmd("XLEN")
        .arg(format!("{}dongle:{dongle}", redis.prefix))
        .query_async(&mut con)
        .await?;
    assert_eq!(len, 6);

    let mut stale = subscribe(server, &path, Some(&token), Some("1-0")).await?;
    let reset = stale.next().await?;
    assert_eq!(reset.event_type, "stream_reset");
    assert_eq!(json(&reset)?["reason"], "too_old");
    let history = stale.take(6).await?;
    assert_eq!(history[0].last_event_id, first[0].last_event_id);
    assert_eq!(json(&history[5])?["message"], "while away");

    redis.stop().await
}

#[tokio::test]
async fn redis_multiplexed_stream_resumes_exactly() -> TestResult {
    let redis = RedisConsole::start().await?;
    let server = &redis.server;
    let (token, _agent, a, b) = server.user_with_pair("sam").await?;
    let group_text = console_support::group(server, &token, &a, &b).await?;
    let (dongle, group) = (Uuid::parse_str(&a)?, Uuid::parse_str(&group_text)?);
    let log = |scope, text: &str| {
        log_info(server, scope, text);
    };
    let path = format!("/api/v1/streams/console?dongles={a}&groups={group_text}");
    let mut events = subscribe(server, &path, Some(&token), None).await?;
    let current = events.next().await?;
    assert_eq!(current.event_type, "group_state", "the group's state first");
    log(ConsoleStream::Dongle(dongle), "d1");
    let d1 = events.next().await?;
    assert!(d1.last_event_id.ends_with(",~"), "{}", d1.last_event_id);
    drop(events);
    log(ConsoleStream::Group(group), "g-away");
    log(ConsoleStream::Dongle(dongle), "d-away");
    let mut resumed = subscribe(server, &path, Some(&token), Some(&d1.last_event_id)).await?;
    let mut lines: Vec<String> = Vec::new();
    for event in resumed.take(2).await? {
        assert_eq!(event.event_type, "log");
        lines.push(json(&event)?["message"].as_str().unwrap_or("").to_owned());
    }
    lines.sort();
    assert_eq!(lines, ["d-away", "g-away"]);
    redis.stop().await
}
