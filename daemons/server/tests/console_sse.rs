//! The live console over real HTTP: presence, group_state, can_frame and log events on dongle,
//! group and multiplexed streams; exact resume with `Last-Event-ID`; `stream_reset` for stale
//! IDs; authentication and ownership; sampling; shutdown and disconnect.

mod console_support;
#[path = "server_support/data_client.rs"]
mod data_client;
mod server_support;

use console_support::{
    EVENT_TIMEOUT, eventually_metrics, frame, json, log_info, metric, open, subscribe,
};
use data_client::DataClient;
use relay_core::engine::Side;
use relay_core::protocol::Encoding;
use reqwest::StatusCode;
use serde_json::json;
use server_support::{TestResult, TestServer, code};
use sse_core::events::LogLevel;
use tether_server::console::ConsoleStream;
use uuid::Uuid;

fn uuid(text: &str) -> TestResult<Uuid> {
    Ok(Uuid::parse_str(text)?)
}

#[tokio::test]
async fn presence_and_group_state_follow_dongles_and_activation() -> TestResult {
    let server = TestServer::start().await?;
    let (token, _agent, a, b) = server.user_with_pair("ann").await?;
    let group = console_support::group(&server, &token, &a, &b).await?;
    let mut on_group = console_support::subscribe_group(&server, &token, &group).await?;
    let mut on_a = console_support::subscribe_dongle(&server, &token, &a).await?;
    // A fresh subscriber learns the group's state first, without an ID.
    let current = on_group.next().await?;
    assert_eq!(current.event_type, "group_state");
    assert_eq!(current.last_event_id, "");
    assert_eq!(json(&current)?["mode"], "inactive");

    let state = server.server.state();
    state.set_dongle_online(uuid(&a)?, true).await?;
    let presence = on_a.next().await?;
    assert_eq!(presence.event_type, "presence");
    let body = json(&presence)?;
    assert_eq!(body["dongle_id"], a.as_str());
    assert_eq!(body["status"], "online");
    assert!(body["ts"].as_str().is_some_and(|ts| ts.ends_with('Z')));
    let on_group_presence = on_group.next().await?;
    assert_eq!(on_group.retry, Some(2_000), "the default retry comes first");
    assert_eq!(on_group_presence.event_type, "presence");
    assert_eq!(json(&on_group_presence)?["dongle_id"], a.as_str());

    let (status, _) = server
        .post(
            &format!("/api/v1/groups/{group}/activate"),
            &token,
            json!({}),
        )
        .await?;
    assert_eq!(status, StatusCode::OK);
    let degraded = on_group.next().await?;
    assert_eq!(degraded.event_type, "group_state");
    let body = json(&degraded)?;
    assert_eq!(body["id"], group.as_str());
    assert_eq!(body["name"], "pair");
    assert_eq!(body["dongle_a"], a.as_str());
    assert_eq!(body["dongle_b"], b.as_str());
    assert_eq!(body["mode"], "degraded");
    assert_eq!(body["offline_side"], "b");
    assert_eq!(body["backlog"], json!({ "a_to_b": 0, "b_to_a": 0 }));

    state.set_dongle_online(uuid(&b)?, true).await?;
    let presence_b = on_group.next().await?;
    assert_eq!(presence_b.event_type, "presence");
    assert_eq!(json(&presence_b)?["dongle_id"], b.as_str());
    let active = on_group.next().await?;
    assert_eq!(active.event_type, "group_state");
    assert_eq!(json(&active)?["mode"], "active");
    assert_eq!(json(&active)?["offline_side"], serde_json::Value::Null);

    // `seen` is published once per interval, not on every keep-alive.
    assert!(state.mark_dongle_seen(uuid(&a)?).await?);
    assert!(state.mark_dongle_seen(uuid(&a)?).await?);
    state.set_dongle_online(uuid(&a)?, false).await?;
    let seen = on_a.next().await?;
    assert_eq!(json(&seen)?["status"], "seen");
    let offline = on_a.next().await?;
    assert_eq!(
        json(&offline)?["status"],
        "offline",
        "one seen, then offline"
    );
    assert!(!state.mark_dongle_seen(Uuid::new_v4()).await?);
    server.stop().await
}

#[tokio::test]
async fn agent_presence_follows_its_first_and_last_data_plane_connection() -> TestResult {
    let server = TestServer::start().await?;
    let ava = server.user_pair("ava").await?;
    let (token, agent) = (&ava.user, &ava.agent);
    let group = console_support::group(&server, token, &ava.a, &ava.b).await?;
    let mut on_a = console_support::subscribe_dongle(&server, token, &ava.a).await?;
    let mut on_group = console_support::subscribe_group(&server, token, &group).await?;
    // Two connections of the same agent: one `online` when the first opens, one `offline`
    // when the last closes, on the dongle's and on the group's stream.
    let (side_a, _) =
        DataClient::open(&server.base, agent, &group, Side::A, 0, &[Encoding::Json]).await?;
    let (side_b, _) =
        DataClient::open(&server.base, agent, &group, Side::B, 0, &[Encoding::Json]).await?;
    side_a.close().await?;
    side_b.close().await?;
    for (what, events) in [("dongle", &mut on_a), ("group", &mut on_group)] {
        let mut statuses = Vec::new();
        while statuses.last().map(String::as_str) != Some("offline") {
            let event = tokio::time::timeout(EVENT_TIMEOUT, events.next_of("presence")).await??;
            let body = json(&event)?;
            if body.get("agent_id").is_some() {
                assert_eq!(body["agent_id"], ava.agent_id.as_str(), "{what}: {body}");
                assert!(body.get("dongle_id").is_none(), "{what}: {body}");
                statuses.push(body["status"].as_str().unwrap_or_default().to_owned());
            }
        }
        assert_eq!(statuses, ["online", "offline"], "{what}");
    }
    Ok(())
}

#[tokio::test]
async fn frames_retransmitted_after_a_reconnect_are_shown_once() -> TestResult {
    let server = TestServer::start().await?;
    let (token, agent, a, b) = server.user_with_pair("rex").await?;
    let group = console_support::group(&server, &token, &a, &b).await?;
    let mut on_a = console_support::subscribe_dongle(&server, &token, &a).await?;
    let (mut side, _) =
        DataClient::open(&server.base, &agent, &group, Side::A, 0, &[Encoding::Json]).await?;
    side.send_frames(1, 3).await?;
    side.close().await?;
    // The agent resends what it sent before, plus one new frame.
    let (mut side, _) =
        DataClient::open(&server.base, &agent, &group, Side::A, 0, &[Encoding::Json]).await?;
    side.send_frames(1, 4).await?;
    let mut shown = Vec::new();
    while shown.last() != Some(&4) {
        let event = tokio::time::timeout(EVENT_TIMEOUT, on_a.next_of("can_frame")).await??;
        // The test frames carry their seq as their 8 data bytes.
        let data = json(&event)?["data_hex"]
            .as_str()
            .ok_or("can_frame without data_hex")?
            .replace(' ', "");
        shown.push(u64::from_str_radix(&data, 16)?);
    }
    assert_eq!(shown, [1, 2, 3, 4]);
    Ok(())
}

#[tokio::test]
async fn can_frames_and_logs_resume_exactly_after_any_id() -> TestResult {
    let server = TestServer::start().await?;
    let (token, _agent, a, b) = server.user_with_pair("bob").await?;
    let group = uuid(&console_support::group(&server, &token, &a, &b).await?)?;
    let path = format!("/api/v1/streams/dongles/{a}/console");
    // `?access_token=` instead of the header (what a browser's EventSource can do).
    let mut events =
        subscribe(&server, &format!("{path}?access_token={token}"), None, None).await?;
    let console = server.server.state().console();
    let dongle = uuid(&a)?;
    for i in 0..5u32 {
        console.can_frame(dongle, Some(group), &frame(0x100 + i, "0102"));
    }
    console.log(
        ConsoleStream::Dongle(dongle),
        LogLevel::Warn,
        "buffer pressure".to_owned(),
        json!({ "trimmed": 3 }),
    );
    let first = events.take(6).await?;
    let types: Vec<&str> = first.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "can_frame",
            "can_frame",
            "can_frame",
            "can_frame",
            "can_frame",
            "log"
        ]
    );
    let frame0 = json(&first[0])?;
    assert_eq!(frame0["id"], "0x100");
    assert_eq!(frame0["data_hex"], "01 02");
    assert_eq!(frame0["dongle_id"], a.as_str());
    assert_eq!(frame0["bus"], "can0");
    let log = json(&first[5])?;
    assert_eq!(log["level"], "warn");
    assert_eq!(log["message"], "buffer pressure");
    assert_eq!(log["fields"]["trimmed"], 3);
    let ids: Vec<String> = first.iter().map(|e| e.last_event_id.clone()).collect();
    assert!(ids.windows(2).all(|w| w[0] != w[1]), "{ids:?}");
    drop(events);

    // Published while nobody listens, then resumed after the third event: exactly the rest.
    log_info(&server, ConsoleStream::Dongle(dongle), "while away");
    let mut resumed = subscribe(&server, &path, Some(&token), Some(&ids[2])).await?;
    let rest = resumed.take(4).await?;
    let rest_ids: Vec<&str> = rest.iter().map(|e| e.last_event_id.as_str()).collect();
    assert_eq!(
        &rest_ids[..3],
        [&ids[3], &ids[4], &ids[5]].map(String::as_str)
    );
    assert_eq!(json(&rest[3])?["message"], "while away");
    assert!(json(&rest[3])?.get("fields").is_none());
    // Then live events on the same connection.
    console.can_frame(dongle, None, &frame(0x7E8, ""));
    let live = resumed.next().await?;
    assert_eq!(json(&live)?["id"], "0x7E8");
    assert_eq!(json(&live)?["data_hex"], "");

    // The query parameter works too, and the latest ID gives live events only.
    let latest = live.last_event_id.clone();
    let mut caught_up = subscribe(
        &server,
        &format!("{path}?last_event_id={latest}"),
        Some(&token),
        None,
    )
    .await?;
    log_info(&server, ConsoleStream::Dongle(dongle), "next");
    let next = caught_up.next().await?;
    assert_eq!(next.event_type, "log", "no reset, no replay");
    assert_eq!(json(&next)?["message"], "next");

    // The group console got the same frames (only those published with the group).
    let mut on_group = subscribe(
        &server,
        &format!("/api/v1/streams/groups/{group}/console"),
        Some(&token),
        Some("1-0"),
    )
    .await?;
    let reset = on_group.next().await?;
    assert_eq!(reset.event_type, "stream_reset");
    let history = on_group.take(5).await?;
    assert!(history.iter().all(|e| e.event_type == "can_frame"));
    assert_eq!(json(&history[4])?["id"], "0x104");
    Ok(())
}

#[tokio::test]
async fn a_stale_or_bad_id_gets_one_reset_then_the_history() -> TestResult {
    let server = TestServer::start().await?;
    let (token, _agent, a, _b) = server.user_with_pair("cid").await?;
    let dongle = uuid(&a)?;
    let path = format!("/api/v1/streams/dongles/{a}/console");
    // Make sure the history is there before resuming.
    let mut live = subscribe(&server, &path, Some(&token), None).await?;
    for i in 0..3 {
        log_info(&server, ConsoleStream::Dongle(dongle), format!("line {i}"));
    }
    let published = live.take(3).await?;
    for (stale, reason) in [
        ("1-0", "earlier_process"),
        ("not-an-id", "malformed"),
        ("99999999999999-0", "newer_than_latest"),
    ] {
        let mut events = subscribe(&server, &path, Some(&token), Some(stale)).await?;
        let reset = events.next().await?;
        assert_eq!(reset.event_type, "stream_reset", "{stale}");
        assert_eq!(reset.last_event_id, "", "a reset carries no id");
        let body = json(&reset)?;
        assert_eq!(body["reason"], reason, "{stale}");
        assert_eq!(body["requested"], stale);
        assert_eq!(body["oldest"], published[0].last_event_id.as_str());
        assert_eq!(body["latest"], published[2].last_event_id.as_str());
        let history = events.take(3).await?;
        for (got, want) in history.iter().zip(&published) {
            assert_eq!(got.last_event_id, want.last_event_id);
            assert_eq!(got.data, want.data);
        }
    }
    Ok(())
}

#[tokio::test]
async fn strangers_get_404_and_bad_tokens_401() -> TestResult {
    let server = TestServer::start().await?;
    let (token, _agent, a, b) = server.user_with_pair("dee").await?;
    let group = console_support::group(&server, &token, &a, &b).await?;
    let stranger = server.user_token("eve").await?;
    let unknown = Uuid::new_v4();
    for path in [
        format!("/api/v1/streams/dongles/{a}/console"),
        format!("/api/v1/streams/groups/{group}/console"),
        format!("/api/v1/streams/console?dongles={a}"),
        format!("/api/v1/streams/console?groups={group}"),
        format!("/api/v1/streams/dongles/{unknown}/console"),
        format!("/api/v1/streams/groups/{unknown}/console"),
        "/api/v1/streams/dongles/not-a-uuid/console".to_owned(),
    ] {
        let Err((status, body)) = open(&server, &path, Some(&stranger), None).await? else {
            return Err(format!("{path} streamed for a stranger").into());
        };
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(code(&body), "not_found");
        let with_query = format!(
            "{path}{}access_token={stranger}",
            if path.contains('?') { '&' } else { '?' }
        );
        let Err((status, _)) = open(&server, &with_query, None, None).await? else {
            return Err(format!("{with_query} streamed for a stranger").into());
        };
        assert_eq!(status, StatusCode::NOT_FOUND, "{with_query}");
    }
    let path = format!("/api/v1/streams/dongles/{a}/console");
    for (token, query) in [
        (Some("tu_bogus"), ""),
        (None, ""),
        (None, "?access_token=tu_bogus"),
        (None, "?access_token="),
    ] {
        let Err((status, body)) = open(&server, &format!("{path}{query}"), token, None).await?
        else {
            return Err(format!("{token:?} {query} streamed").into());
        };
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?} {query}");
        assert_eq!(code(&body), "unauthorized");
    }
    // A bad header is not rescued by a good query token.
    let Err((status, _)) = open(
        &server,
        &format!("{path}?access_token={token}"),
        Some("tu_bogus"),
        None,
    )
    .await?
    else {
        return Err("bad header accepted".into());
    };
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Malformed multiplexed requests are 400s with the JSON error shape.
    for query in [
        String::new(),
        "?dongles=nope".to_owned(),
        format!("?dongles={a},{a}"),
    ] {
        let Err((status, body)) = open(
            &server,
            &format!("/api/v1/streams/console{query}"),
            Some(&token),
            None,
        )
        .await?
        else {
            return Err(format!("{query} streamed").into());
        };
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(code(&body), "bad_request");
    }
    Ok(())
}

#[tokio::test]
async fn the_multiplexed_stream_carries_both_scopes_and_resumes_exactly() -> TestResult {
    let server = TestServer::start().await?;
    let (token, _agent, a, b) = server.user_with_pair("fay").await?;
    let group_text = console_support::group(&server, &token, &a, &b).await?;
    let (dongle, group) = (uuid(&a)?, uuid(&group_text)?);
    let console = server.server.state().console();
    let path = format!("/api/v1/streams/console?dongles={a}&groups={group_text}");
    let mut events = subscribe(&server, &path, Some(&token), None).await?;
    // The group's current state comes first, without an ID.
    let current = events.next().await?;
    assert_eq!(current.event_type, "group_state");
    assert_eq!(current.last_event_id, "");
    let log = |scope, text: &str| {
        log_info(&server, scope, text);
    };
    // Nothing was ever published on either stream: both parts start as `~`.
    log(ConsoleStream::Group(group), "g1");
    let g1 = events.next().await?;
    let body = json(&g1)?;
    assert_eq!(body["stream"], format!("group:{group}"));
    let g1_id = body["stream_id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(g1.last_event_id, format!("~,{g1_id}"));
    assert_eq!(body["message"], "g1");

    console.can_frame(dongle, Some(group), &frame(0x10, "AA"));
    let got = events.take(2).await?;
    let mut streams: Vec<String> = got
        .iter()
        .map(|e| json(e).map(|b| b["stream"].as_str().unwrap_or("").to_owned()))
        .collect::<TestResult<_>>()?;
    streams.sort();
    assert_eq!(
        streams,
        [format!("dongle:{dongle}"), format!("group:{group}")]
    );
    assert!(got.iter().all(|e| e.event_type == "can_frame"));
    // The second one carries the positions of both streams.
    let last = got[1].last_event_id.clone();
    let parts: Vec<&str> = last.split(',').collect();
    assert_eq!(parts.len(), 2);
    assert!(parts.iter().all(|p| *p != "~"), "{last}");
    drop(events);

    // While away: two lines on the dongle, one on the group.
    log(ConsoleStream::Dongle(dongle), "d-away-1");
    log(ConsoleStream::Group(group), "g-away");
    log(ConsoleStream::Dongle(dongle), "d-away-2");
    let mut resumed = subscribe(&server, &path, Some(&token), Some(&last)).await?;
    let missed = resumed.take(3).await?;
    let mut dongle_lines = Vec::new();
    let mut group_lines = Vec::new();
    for event in &missed {
        assert_eq!(event.event_type, "log", "no reset on an exact resume");
        let body = json(event)?;
        let line = body["message"].as_str().unwrap_or_default().to_owned();
        if body["stream"] == format!("dongle:{dongle}") {
            dongle_lines.push(line);
        } else {
            group_lines.push(line);
        }
    }
    assert_eq!(dongle_lines, ["d-away-1", "d-away-2"]);
    assert_eq!(group_lines, ["g-away"]);

    // A stream with nothing delivered yet (`~`) resumes from its start without a reset.
    let (token2, _agent2, c, d) = server.user_with_pair("gus").await?;
    let path2 = format!("/api/v1/streams/console?dongles={c},{d}");
    let mut fresh = subscribe(&server, &path2, Some(&token2), None).await?;
    let (c_id, d_id) = (uuid(&c)?, uuid(&d)?);
    log(ConsoleStream::Dongle(c_id), "c1");
    let c1 = fresh.next().await?;
    assert!(c1.last_event_id.ends_with(",~"), "{}", c1.last_event_id);
    drop(fresh);
    log(ConsoleStream::Dongle(d_id), "d-while-away");
    let mut back = subscribe(&server, &path2, Some(&token2), Some(&c1.last_event_id)).await?;
    let d1 = back.next().await?;
    assert_eq!(d1.event_type, "log");
    assert_eq!(json(&d1)?["message"], "d-while-away");

    // A composite with the wrong number of parts resets every stream.
    let mut wrong = subscribe(&server, &path2, Some(&token2), Some("1-0")).await?;
    let resets = wrong.take(2).await?;
    assert!(resets.iter().all(|e| e.event_type == "stream_reset"));
    for reset in &resets {
        assert_eq!(json(reset)?["reason"], "malformed");
    }
    Ok(())
}

#[tokio::test]
async fn fast_frames_are_sampled_and_announced() -> TestResult {
    let server = TestServer::start_with(|config| {
        config.console.sampling_threshold_per_s = 20;
    })
    .await?;
    let (token, _agent, a, _b) = server.user_with_pair("hal").await?;
    let dongle = uuid(&a)?;
    let mut events = console_support::subscribe_dongle(&server, &token, &a).await?;
    let console = server.server.state().console();
    for i in 0..500u32 {
        console.can_frame(dongle, None, &frame(i % 0x7FF, "00"));
    }
    log_info(&server, ConsoleStream::Dongle(dongle), "end");
    let mut frames = 0;
    let mut notices = Vec::new();
    loop {
        let event = events.next().await?;
        let body = json(&event)?;
        match event.event_type.as_str() {
            "can_frame" => frames += 1,
            "log" if body["message"] == "end" => break,
            "log" => notices.push(body),
            other => return Err(format!("unexpected {other}").into()),
        }
    }
    assert!(frames < 500, "{frames} frames sent of 500");
    assert!(!notices.is_empty());
    assert_eq!(notices[0]["source"], "sse.sampler");
    assert_eq!(notices[0]["sampling"]["active"], true);
    let text = eventually_metrics(&server, |t| {
        metric(t, "tether_server_console_can_frames_sampled_out_total").is_some_and(|n| n > 0.0)
    })
    .await?;
    let sampled =
        metric(&text, "tether_server_console_can_frames_sampled_out_total").unwrap_or(0.0);
    assert_eq!(
        sampled as usize + frames,
        500,
        "every frame is sent or counted"
    );
    Ok(())
}

#[tokio::test]
async fn disconnects_free_subscriptions_and_shutdown_ends_streams() -> TestResult {
    let server = TestServer::start().await?;
    let (token, _agent, a, _b) = server.user_with_pair("ivy").await?;
    let path = format!("/api/v1/streams/dongles/{a}/console");
    let first = subscribe(&server, &path, Some(&token), None).await?;
    let _second = subscribe(&server, &path, Some(&token), None).await?;
    eventually_metrics(&server, |t| {
        metric(t, "tether_server_sse_subscribers") == Some(2.0)
    })
    .await?;
    drop(first);
    // The server notices the closed connection when it next writes (keep-alive or event).
    let console = server.server.state().console();
    let dongle = uuid(&a)?;
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    loop {
        console.log(
            ConsoleStream::Dongle(dongle),
            LogLevel::Debug,
            "tick".to_owned(),
            serde_json::Value::Null,
        );
        let text = server.metrics().await?;
        if metric(&text, "tether_server_sse_subscribers") == Some(1.0) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("subscriber not released:\n{text}").into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let text = eventually_metrics(&server, |t| {
        t.contains("tether_server_console_events_published_total{event_type=\"log\"}")
    })
    .await?;
    assert!(text.contains("tether_server_console_events_published_total"));

    let mut open_stream = subscribe(&server, &path, Some(&token), None).await?;
    let TestServer {
        server: running,
        dir: _dir,
        ..
    } = server;
    let stopping = tokio::spawn(running.shutdown());
    let ended = tokio::time::timeout(EVENT_TIMEOUT, async {
        loop {
            match open_stream.next_or_end().await {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream ended on shutdown");
    stopping.await??;
    Ok(())
}

#[tokio::test]
async fn a_full_queue_drops_counts_and_tells_the_stream() -> TestResult {
    let server = TestServer::start_with(|config| config.console.queue_capacity = 16).await?;
    let (token, _agent, a, _b) = server.user_with_pair("jon").await?;
    let dongle = uuid(&a)?;
    let mut events = console_support::subscribe_dongle(&server, &token, &a).await?;
    // This test's runtime has one thread: the publisher cannot run during this loop, so exactly
    // 16 events fit and the rest are dropped.
    for i in 0..100 {
        log_info(&server, ConsoleStream::Dongle(dongle), format!("line {i}"));
    }
    let kept = events.take(16).await?;
    for (i, event) in kept.iter().enumerate() {
        assert_eq!(json(event)?["message"], format!("line {i}"));
    }
    let notice = json(&events.next().await?)?;
    assert_eq!(notice["level"], "warn");
    assert_eq!(
        notice["fields"],
        json!({ "dropped": 84, "reason": "queue_full" })
    );
    let text = eventually_metrics(&server, |t| {
        t.contains("tether_server_console_events_dropped_total{reason=\"queue_full\"} 84")
    })
    .await?;
    assert!(text.contains("tether_server_console_events_published_total{event_type=\"log\"} 17"));
    Ok(())
}

#[tokio::test]
async fn an_unreachable_redis_is_counted_and_resumable_not_fatal() -> TestResult {
    // The REST API alone (no data plane), so only the console uses the dead Redis.
    let dir = tempfile::tempdir()?;
    let mut config = tether_server::ServerConfig::new("127.0.0.1:0".parse()?, dir.path().join("d"));
    config.redis_url = Some("redis://127.0.0.1:1".to_owned());
    let running = tether_server::spawn_with(
        config,
        std::sync::Arc::new(tether_server::group_mode::NoDataPlane),
    )
    .await?;
    let server = TestServer::new(dir, running);
    let (token, _agent, a, _b) = server.user_with_pair("kim").await?;
    let mut events = console_support::subscribe_dongle(&server, &token, &a).await?;
    let ended = tokio::time::timeout(EVENT_TIMEOUT, events.next_or_end()).await?;
    assert!(
        ended?.is_none(),
        "a 200 stream that ends: the client retries"
    );
    log_info(&server, ConsoleStream::Dongle(uuid(&a)?), "lost");
    eventually_metrics(&server, |t| {
        t.contains("tether_server_console_events_dropped_total{reason=\"backend_error\"} 1")
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn the_history_budget_trims_the_oldest_streams_first_and_says_so() -> TestResult {
    // 1 MiB for all streams: a quiet dongle's old history goes before the busy dongle's new one.
    let server =
        TestServer::start_with(|config| config.console.history_budget_bytes = 1 << 20).await?;
    let (token, _agent, a, b) = server.user_with_pair("bud").await?;
    let console = server.server.state().console();
    let (quiet, busy) = (uuid(&a)?, uuid(&b)?);
    let quiet_path = format!("/api/v1/streams/dongles/{a}/console");
    let mut live = subscribe(&server, &quiet_path, Some(&token), None).await?;
    for message in ["old news", "older news"] {
        log_info(&server, ConsoleStream::Dongle(quiet), message);
    }
    let old = live.next().await?;
    live.next().await?;
    drop(live);
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    // ~3 MiB into the busy stream, in rounds the publisher keeps up with.
    let filler = "z".repeat(1_000);
    for round in 0..30 {
        for i in 0..100 {
            console.log(
                ConsoleStream::Dongle(busy),
                LogLevel::Debug,
                format!("{round}-{i} {filler}"),
                serde_json::Value::Null,
            );
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let text = eventually_metrics(&server, |t| {
        metric(t, "tether_server_console_history_trimmed_by_budget_total").is_some_and(|n| n > 0.0)
    })
    .await?;
    let bytes = metric(&text, "tether_server_console_history_bytes").unwrap_or(f64::MAX);
    assert!(
        bytes <= f64::from(1 << 20),
        "history over its budget: {bytes}\n{text}"
    );
    assert_eq!(
        metric(&text, "tether_server_console_history_budget_bytes"),
        Some(f64::from(1 << 20))
    );
    // The quiet stream's events were the oldest: a resume from the first is told so.
    let mut resumed =
        subscribe(&server, &quiet_path, Some(&token), Some(&old.last_event_id)).await?;
    log_info(&server, ConsoleStream::Dongle(quiet), "fresh");
    let reset = resumed.next().await?;
    assert_eq!(reset.event_type, "stream_reset");
    assert_eq!(json(&reset)?["reason"], "too_old");
    assert_eq!(json(&resumed.next().await?)?["message"], "fresh");
    Ok(())
}
