//! `tether sse …`: event-stream tools built on `sse-core`'s WHATWG parser.
//!
//! - `parse` reads an event stream on stdin and prints one JSON line per dispatched event
//!   (`{"event","data","id"}`) and per valid `retry` field (`{"retry": MS}`), in stream order.
//! - `tail URL` follows a stream like a browser's `EventSource`: it reconnects after the
//!   connection ends, sends `Last-Event-ID`, honours `retry`, and stops for good on a status
//!   other than 200 or a content type other than `text/event-stream`. It gives up after
//!   `--max-reconnects` (default 10) reconnections in a row without an event, unless `--forever`.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use sse_core::parser::{EventStreamParser, ParsedItem};

/// Event-stream subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum SseCommand {
    /// Parse an event stream from stdin into JSON lines.
    #[command(
        after_help = "Examples:\n  curl -sN -H 'Authorization: Bearer TOKEN' URL | tether sse parse\n  tether sse parse < captured-stream.txt"
    )]
    Parse,
    /// Follow an event stream over HTTP, reconnecting with the last event ID.
    #[command(
        after_help = "Examples:\n  tether sse tail http://127.0.0.1:8080/api/v1/streams/groups/ID/console --header 'Authorization: Bearer TOKEN'\n  tether sse tail URL --last-event-id 1733500000000-5 --max-events 100\n  tether sse tail URL --forever"
    )]
    Tail(TailArgs),
}

/// Arguments of `tether sse tail`.
#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// The stream URL.
    pub url: String,
    /// Resume after this event ID (sent as `Last-Event-ID` on the first request).
    #[arg(long)]
    pub last_event_id: Option<String>,
    /// Extra request header `K: V` (repeatable).
    #[arg(long = "header", value_name = "K: V")]
    pub headers: Vec<String>,
    /// Reconnection time before the server sends `retry`, in ms.
    #[arg(long, default_value_t = 3000)]
    pub retry_ms: u64,
    /// Exit after printing this many events.
    #[arg(long)]
    pub max_events: Option<u64>,
    /// Give up after this many reconnections in a row without receiving any event.
    #[arg(long, default_value_t = DEFAULT_MAX_RECONNECTS, value_name = "N")]
    pub max_reconnects: u32,
    /// Reconnect forever, like a browser's `EventSource` (overrides `--max-reconnects`).
    #[arg(long, conflicts_with = "max_reconnects")]
    pub forever: bool,
}

/// Default `--max-reconnects`: about half a minute of a dead server at the default retry.
pub const DEFAULT_MAX_RECONNECTS: u32 = 10;

/// Run an `sse` subcommand.
pub fn run(cmd: SseCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SseCommand::Parse => parse_stdin(),
        SseCommand::Tail(args) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            rt.block_on(tail(args))
        }
    }
}

/// One output line for a parsed item.
pub fn item_json(item: &ParsedItem) -> String {
    match item {
        ParsedItem::Event(ev) => serde_json::to_string(ev).unwrap_or_default(),
        ParsedItem::Retry(ms) => serde_json::json!({ "retry": ms }).to_string(),
    }
}

fn print_items(out: &mut impl Write, items: &mut Vec<ParsedItem>) -> anyhow::Result<u64> {
    let mut events = 0;
    for item in items.drain(..) {
        events += u64::from(matches!(item, ParsedItem::Event(_)));
        writeln!(out, "{}", item_json(&item)).context("writing to stdout")?;
    }
    out.flush().context("writing to stdout")?;
    Ok(events)
}

fn parse_stdin() -> anyhow::Result<ExitCode> {
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    let mut parser = EventStreamParser::new();
    let mut items = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("reading stdin"),
        };
        parser.feed(&buf[..n], &mut items);
        print_items(&mut stdout, &mut items)?;
    }
    parser.finish();
    Ok(ExitCode::SUCCESS)
}

fn parse_header(
    raw: &str,
) -> anyhow::Result<(reqwest::header::HeaderName, reqwest::header::HeaderValue)> {
    let (name, value) = raw
        .split_once(':')
        .with_context(|| format!("header {raw:?} is not of the form 'K: V'"))?;
    let name = reqwest::header::HeaderName::from_bytes(name.trim().as_bytes())
        .with_context(|| format!("bad header name in {raw:?}"))?;
    let value = reqwest::header::HeaderValue::from_str(value.trim())
        .with_context(|| format!("bad header value in {raw:?}"))?;
    Ok((name, value))
}

async fn tail(args: TailArgs) -> anyhow::Result<ExitCode> {
    let headers = args
        .headers
        .iter()
        .map(|h| parse_header(h))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .context("building the HTTP client")?;
    let mut parser = EventStreamParser::new();
    if let Some(id) = &args.last_event_id {
        parser.set_last_event_id(id);
    }
    let mut retry = Duration::from_millis(args.retry_ms);
    let mut printed: u64 = 0;
    let mut idle_reconnects: u32 = 0;
    let mut stdout = std::io::stdout();
    let mut items = Vec::new();
    loop {
        let mut request = client
            .get(&args.url)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .header(reqwest::header::CACHE_CONTROL, "no-cache");
        for (name, value) in &headers {
            request = request.header(name.clone(), value.clone());
        }
        if !parser.last_event_id().is_empty() {
            request = request.header("Last-Event-ID", parser.last_event_id());
        }
        let got_before = printed;
        match request.send().await {
            Ok(mut response) => {
                let status = response.status();
                let content_type = response
                    .headers()
                    .get(reqwest::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                // Like EventSource: any other status or type fails the connection for good.
                if status != reqwest::StatusCode::OK {
                    bail!("{} answered {status}; not reconnecting", args.url);
                }
                if !content_type
                    .to_ascii_lowercase()
                    .starts_with("text/event-stream")
                {
                    bail!(
                        "{} answered content type {content_type:?}, not text/event-stream; not reconnecting",
                        args.url
                    );
                }
                parser.reconnect();
                loop {
                    match response.chunk().await {
                        Ok(Some(chunk)) => {
                            parser.feed(&chunk, &mut items);
                            for item in &items {
                                if let ParsedItem::Retry(ms) = item {
                                    retry = Duration::from_millis(*ms);
                                }
                            }
                            for item in items.drain(..) {
                                if matches!(item, ParsedItem::Event(_)) {
                                    printed += 1;
                                }
                                writeln!(stdout, "{}", item_json(&item))
                                    .context("writing to stdout")?;
                                if args.max_events.is_some_and(|max| printed >= max) {
                                    stdout.flush().context("writing to stdout")?;
                                    return Ok(ExitCode::SUCCESS);
                                }
                            }
                            stdout.flush().context("writing to stdout")?;
                        }
                        Ok(None) => {
                            eprintln!("connection closed by {}", args.url);
                            break;
                        }
                        Err(err) => {
                            eprintln!("connection to {} lost: {err}", args.url);
                            break;
                        }
                    }
                }
                parser.finish();
            }
            Err(err) => eprintln!("cannot connect to {}: {err}", args.url),
        }
        idle_reconnects = if printed > got_before {
            0
        } else {
            idle_reconnects + 1
        };
        if !args.forever && idle_reconnects > args.max_reconnects {
            bail!(
                "gave up on {} after {} reconnections without events",
                args.url,
                idle_reconnects - 1
            );
        }
        eprintln!(
            "reconnecting in {} ms (last event id {:?})",
            retry.as_millis(),
            parser.last_event_id()
        );
        tokio::time::sleep(retry).await;
    }
}
