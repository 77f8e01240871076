//! What the load drivers `bench_relay`, `bench_agents` and `bench_commands` share: the server
//! they load (`--server`, `--token`), their pacing options, the REST set-up of two agents and N
//! activated groups between their dongles, the bounded error log, and `main`'s runtime.
//! Included by each with `#[path = "support/mod.rs"] mod support;`; each uses part of it.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::process::ExitCode;
use std::sync::Mutex;

use anyhow::Context;
use serde_json::{Value, json};

/// The running `tether server` a driver loads.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Server base URL, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub server: String,
    /// A user token (`tether server token create`).
    #[arg(long)]
    pub token: String,
}

impl ServerArgs {
    /// The base URL without a trailing `/`.
    pub fn base(&self) -> &str {
        self.server.trim_end_matches('/')
    }
}

/// How long a load driver sends, its batching and drain, and the label of its results.
#[derive(Debug, Clone, clap::Args)]
pub struct Pace {
    /// Seconds of sending.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Batching interval of the simulated senders, ms.
    #[arg(long, default_value_t = 5)]
    pub batch_ms: u64,
    /// Seconds to wait for frames in flight after the sending stops.
    #[arg(long, default_value_t = 30)]
    pub drain_seconds: u64,
    /// Label printed with the results (e.g. the backend).
    #[arg(long, default_value = "")]
    pub label: String,
}

/// `POST {server}{path}` with a bearer token and a JSON body; the JSON answer, or an error
/// naming the status and the answer when it is not a success.
pub async fn post(
    client: &reqwest::Client,
    server: &str,
    path: &str,
    bearer: &str,
    body: Value,
) -> anyhow::Result<Value> {
    let response = client
        .post(format!("{server}{path}"))
        .bearer_auth(bearer)
        .json(&body)
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    anyhow::ensure!(status.is_success(), "POST {path}: {status} {body}");
    Ok(body)
}

/// Two agents and their tokens, and `pairs` activated groups between them.
pub struct Groups {
    /// The tokens of the agent owning every side-A dongle and of the one owning every side B.
    pub agent_tokens: [String; 2],
    /// The groups' ids, the i-th between the dongles `serial(i, "A")` and `serial(i, "B")`.
    pub ids: Vec<String>,
}

/// Sets up, through the REST API with the user token `token`, agents `{name}-a` and `{name}-b`,
/// and for each `i < pairs` the dongles `serial(i, "A")` (announced by agent a) and
/// `serial(i, "B")` (agent b) and the group `{name} {i}` between them, activated.
pub async fn setup_groups(
    server: &str,
    token: &str,
    pairs: usize,
    name: &str,
    serial: impl Fn(usize, &str) -> String,
) -> anyhow::Result<Groups> {
    let client = reqwest::Client::new();
    let mut agents = Vec::new();
    for side in ["a", "b"] {
        let body = json!({"name": format!("{name}-{side}")});
        let body = post(&client, server, "/api/v1/agents", token, body).await?;
        agents.push(body["token"].as_str().context("agent token")?.to_owned());
    }
    let mut ids = Vec::new();
    for i in 0..pairs {
        let mut dongles = Vec::new();
        for (side, agent) in ["A", "B"].iter().zip(&agents) {
            let body = json!({"serial": serial(i, side)});
            let body = post(&client, server, "/api/v1/agent/dongles", agent, body).await?;
            dongles.push(body["id"].as_str().context("dongle id")?.to_owned());
        }
        let body =
            json!({"name": format!("{name} {i}"), "dongle_a": dongles[0], "dongle_b": dongles[1]});
        let body = post(&client, server, "/api/v1/groups", token, body).await?;
        let id = body["id"].as_str().context("group id")?.to_owned();
        let activate = format!("/api/v1/groups/{id}/activate");
        post(&client, server, &activate, token, json!({})).await?;
        ids.push(id);
    }
    let [a, b]: [String; 2] = agents
        .try_into()
        .map_err(|_| anyhow::anyhow!("two agents"))?;
    Ok(Groups {
        agent_tokens: [a, b],
        ids,
    })
}

/// The first errors of a run (at most [`ErrorLog::KEPT`]; later ones are only counted), printed
/// at the end.
#[derive(Debug, Default)]
pub struct ErrorLog {
    kept: Mutex<(Vec<String>, u64)>,
}

impl ErrorLog {
    /// How many errors are kept to print.
    pub const KEPT: usize = 20;

    /// Records an error.
    pub fn push(&self, text: String) {
        if let Ok(mut kept) = self.kept.lock() {
            if kept.0.len() < Self::KEPT {
                kept.0.push(text);
            } else {
                kept.1 += 1;
            }
        }
    }

    /// Prints the errors kept, and how many more there were, to stderr.
    pub fn print(&self) {
        let (kept, more) = self.kept.lock().map(|k| k.clone()).unwrap_or_default();
        for error in &kept {
            eprintln!("error: {error}");
        }
        if more > 0 {
            eprintln!("error: … and {more} more");
        }
    }
}

/// Runs `run` on a multi-threaded runtime; failure when it (or the runtime) fails, after
/// printing the error.
pub fn main_with<F>(run: F) -> ExitCode
where
    F: Future<Output = anyhow::Result<()>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
