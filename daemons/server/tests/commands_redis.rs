//! Command responses on Redis (needs `REDIS_URL`; fails without it): each stored response is
//! PUBLISHed on `response:{command_id}` in the documented shape, and a failure too.

mod commands_support;
mod server_support;

use std::time::Duration;

use commands_support::{ended, fleet, mock};
use futures::StreamExt;
use serde_json::{Value, json};
use server_support::{TestResult, TestServer, redis_url, text};

#[tokio::test]
async fn responses_are_published_on_redis_after_they_are_stored() -> TestResult {
    let url = redis_url()?;
    let prefix = format!("tether-test-commands-{}:", uuid::Uuid::new_v4());
    let server = TestServer::start_with({
        let url = url.clone();
        move |config| {
            mock(50)(config);
            config.redis_url = Some(url);
            config.console.redis_key_prefix = prefix;
        }
    })
    .await?;
    let f = fleet(&server, "alice").await?;
    let client = redis::Client::open(url.as_str())?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.psubscribe("response:*").await?;
    let accepted = f
        .accept(&server, "ReadDataByID", json!({"did": [61840]}))
        .await?;
    let id = text(&accepted, "command_id")?;
    let channel = format!("response:{id}");
    let mut messages = pubsub.on_message();
    let event: Value = loop {
        let message = tokio::time::timeout(Duration::from_secs(20), messages.next())
            .await?
            .ok_or("pubsub ended")?;
        if message.get_channel_name() == channel {
            let payload: String = message.get_payload()?;
            break serde_json::from_str(&payload)?;
        }
    };
    assert_eq!(event["event"], "response");
    assert_eq!(event["command_id"], id.as_str());
    assert_eq!(event["sequence_number"], 1);
    assert_eq!(event["is_final"], true);
    assert_eq!(event["response"]["values"][0]["ascii"], "1HGCM82633A004352");
    // Stored before it was published.
    let (_, body) = server
        .get(&format!("/api/v1/commands/{id}/responses"), &f.token)
        .await?;
    assert_eq!(body["responses"][0]["response_payload"], event["response"]);
    assert_eq!(ended(&server, &f.token, &id).await?["status"], "completed");
    drop(messages);
    server.server.shutdown().await?;
    // Clean up the console's keys of this test.
    let mut con = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("tether-test-commands-*")
        .query_async(&mut con)
        .await?;
    if !keys.is_empty() {
        redis::cmd("DEL")
            .arg(keys)
            .query_async::<i64>(&mut con)
            .await?;
    }
    Ok(())
}
