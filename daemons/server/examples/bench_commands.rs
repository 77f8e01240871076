//! Vehicle-commands load driver for `scripts/bench-commands.sh`.
//!
//! Against a running `tether server` with the mock connector at zero delay and a Redis URL:
//! creates `--vehicles` vehicles through the REST API, subscribes to `response:*` on the
//! server's Redis, then posts `--count` ReadDTC commands from `--concurrency` workers (HTTP/1.1
//! keep-alive). A command counts as done when its final response event arrives on Redis — so
//! it was accepted, stored (the server publishes only after the commit) and published. Every
//! `--stream-every`-th command is also read back through its `stream_url` WebSocket, which must
//! deliver the final response and close normally.
//!
//! Output: one line of `key=value` pairs: commands, completed (final event seen), lost,
//! streamed / stream_failures, commands_per_s (first POST to last final event), and the
//! latency from sending the POST to the final event's arrival (p50, p99, max).
#![allow(missing_docs, clippy::print_stdout, clippy::print_stderr)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[path = "support/mod.rs"]
mod support;

#[derive(Debug, Parser)]
#[command(about = "Vehicle-commands load driver (scripts/bench-commands.sh)")]
struct Cli {
    #[command(flatten)]
    target: support::ServerArgs,
    /// The server's Redis URL (to see published events).
    #[arg(long)]
    redis: String,
    /// Commands to send.
    #[arg(long, default_value_t = 20_000)]
    count: usize,
    /// Concurrent workers (commands in flight).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Vehicles the commands are spread over.
    #[arg(long, default_value_t = 100)]
    vehicles: usize,
    /// Stream every n-th command over its WebSocket (0: none).
    #[arg(long, default_value_t = 100)]
    stream_every: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(cli.concurrency)
        .build()?;
    let mut vehicles = Vec::new();
    for i in 0..cli.vehicles {
        let body: Value = http
            .post(format!("{}/api/v1/vehicles", cli.target.base()))
            .bearer_auth(&cli.target.token)
            .json(&json!({"name": format!("bench-{i}"), "ecus": [
                {"name": "engine", "request_id": 2016, "response_id": 2024}]}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        vehicles.push(body["id"].as_str().context("vehicle id")?.to_owned());
    }
    // Final events as they arrive on Redis: command id → arrival.
    let finals: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let redis = redis::Client::open(cli.redis.as_str())?;
    let mut pubsub = redis.get_async_pubsub().await?;
    pubsub.psubscribe("response:*").await?;
    let seen = Arc::clone(&finals);
    let listener = tokio::spawn(async move {
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            let at = Instant::now();
            // Only the two fields wanted are decoded (the driver shares the cores with the
            // server it measures).
            let Ok(event) = serde_json::from_slice::<EventHead<'_>>(message.get_payload_bytes())
            else {
                continue;
            };
            if event.is_final == Some(true)
                && let Ok(mut seen) = seen.lock()
            {
                seen.insert(event.command_id.to_owned(), at);
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    // One request body per vehicle, serialized once.
    let bodies: Arc<Vec<bytes::Bytes>> = Arc::new(
        vehicles
            .iter()
            .map(|vehicle| {
                serde_json::to_vec(&json!({"vehicle_id": vehicle, "command_name": "ReadDTC",
                                           "command_params": {"ecu": "engine"}}))
                .map(bytes::Bytes::from)
            })
            .collect::<Result<_, _>>()?,
    );
    let next = Arc::new(AtomicUsize::new(0));
    let sent: Arc<Mutex<Vec<(String, Instant)>>> =
        Arc::new(Mutex::new(Vec::with_capacity(cli.count)));
    let streamed = Arc::new(AtomicUsize::new(0));
    let stream_failures = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..cli.concurrency {
        let (http, next, sent, bodies) = (
            http.clone(),
            Arc::clone(&next),
            Arc::clone(&sent),
            Arc::clone(&bodies),
        );
        let (server, token) = (cli.target.base().to_owned(), cli.target.token.clone());
        let (count, stream_every) = (cli.count, cli.stream_every);
        let (streamed, stream_failures) = (Arc::clone(&streamed), Arc::clone(&stream_failures));
        workers.push(tokio::spawn(async move {
            let mut streams = Vec::new();
            let url = format!("{server}/api/v1/commands");
            let auth = format!("Bearer {token}");
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let body = bodies[i % bodies.len()].clone();
                let at = Instant::now();
                let response = http
                    .post(&url)
                    .header(reqwest::header::AUTHORIZATION, &auth)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone())
                    .send()
                    .await?;
                if response.status() != reqwest::StatusCode::ACCEPTED {
                    bail!("POST answered {}", response.status());
                }
                let accepted: Accepted = serde_json::from_slice(&response.bytes().await?)?;
                let id = accepted.command_id;
                if stream_every > 0 && i % stream_every == 0 {
                    let url = accepted.stream_url;
                    let (token, streamed, failures) = (
                        token.clone(),
                        Arc::clone(&streamed),
                        Arc::clone(&stream_failures),
                    );
                    streams.push(tokio::spawn(async move {
                        match stream_final(&url, &token).await {
                            Ok(true) => streamed.fetch_add(1, Ordering::Relaxed),
                            _ => failures.fetch_add(1, Ordering::Relaxed),
                        };
                    }));
                }
                sent.lock()
                    .map_err(|_| anyhow::anyhow!("lock"))?
                    .push((id, at));
            }
            for s in streams {
                let _ = s.await;
            }
            anyhow::Ok(())
        }));
    }
    for w in workers {
        w.await??;
    }
    // Wait for the last final events.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = finals.lock().map_err(|_| anyhow::anyhow!("lock"))?.len();
        if done >= cli.count || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    listener.abort();
    let finals = finals.lock().map_err(|_| anyhow::anyhow!("lock"))?.clone();
    let sent = sent.lock().map_err(|_| anyhow::anyhow!("lock"))?.clone();
    let mut latency = Histogram::<u64>::new(3)?;
    let mut last = started;
    let mut completed = 0;
    for (id, at) in &sent {
        if let Some(done) = finals.get(id) {
            completed += 1;
            last = last.max(*done);
            latency.record(done.saturating_duration_since(*at).as_micros() as u64)?;
        }
    }
    let elapsed = last.duration_since(started).as_secs_f64();
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "commands={} completed={} lost={} streamed={} stream_failures={} seconds={:.2} commands_per_s={:.0} latency_ms_p50={:.2} latency_ms_p99={:.2} latency_ms_max={:.2}",
        sent.len(),
        completed,
        sent.len() - completed,
        streamed.load(Ordering::Relaxed),
        stream_failures.load(Ordering::Relaxed),
        elapsed,
        completed as f64 / elapsed.max(1e-9),
        ms(0.5),
        ms(0.99),
        latency.max() as f64 / 1000.0,
    );
    Ok(())
}

/// The two fields of a published event the driver looks at.
#[derive(Deserialize)]
struct EventHead<'a> {
    command_id: &'a str,
    is_final: Option<bool>,
}

/// The fields of a `202 Accepted` answer the driver uses.
#[derive(Deserialize)]
struct Accepted {
    command_id: String,
    stream_url: String,
}

/// Reads a command's stream to its close: `true` when it delivered a final response and
/// closed normally.
async fn stream_final(url: &str, token: &str) -> anyhow::Result<bool> {
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await?;
    let mut final_seen = false;
    while let Some(message) = tokio::time::timeout(Duration::from_secs(30), ws.next()).await? {
        match message? {
            WsMessage::Text(t) => {
                let event: Value = serde_json::from_str(&t)?;
                final_seen |= event["is_final"] == true;
            }
            WsMessage::Close(frame) => {
                return Ok(final_seen && frame.is_some_and(|f| u16::from(f.code) == 1000));
            }
            _ => {}
        }
    }
    Ok(false)
}
