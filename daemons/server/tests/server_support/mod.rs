//! Shared helpers of the `server_*` integration tests: a real server on 127.0.0.1:0 with a
//! fresh data directory, and a small JSON client over reqwest.

#![allow(dead_code, unreachable_pub, unused_imports)]

use chrono::Utc;
use reqwest::StatusCode;
use serde_json::Value;
use tether_server::{self as server, RunningServer, ServerConfig};
pub use tether_testkit::TestResult;
pub use tether_testkit::rest::{Api, assert_error_shape, assert_fields, code, read, text};

/// A running server with its own data directory; derefs to its checked [`Api`] client
/// (`call`, `get`, `post`, `delete`, `client`, `base`, …).
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub server: RunningServer,
    pub api: Api,
}

impl std::ops::Deref for TestServer {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl TestServer {
    /// Starts a server with default settings.
    pub async fn start() -> TestResult<TestServer> {
        TestServer::start_with(|_| {}).await
    }

    /// Starts a server after `adjust` changed its configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut ServerConfig)) -> TestResult<TestServer> {
        let dir = tempfile::tempdir()?;
        let mut config = ServerConfig::new("127.0.0.1:0".parse()?, dir.path().join("data"));
        adjust(&mut config);
        let server = server::spawn(config).await?;
        Ok(TestServer::new(dir, server))
    }

    /// Wraps a server the test spawned itself (its own relay probe, a restart on the same
    /// data directory), with a checked [`Api`] client for it.
    pub fn new(dir: tempfile::TempDir, server: RunningServer) -> TestServer {
        let api = Api::checked(format!("http://{}", server.local_addr()));
        TestServer { dir, server, api }
    }

    /// Shuts the server down; the end of a test.
    pub async fn stop(self) -> TestResult {
        self.server.shutdown().await?;
        Ok(())
    }

    /// Issues a user token the way `tether server token create` does.
    pub async fn user_token(&self, name: &str) -> TestResult<String> {
        let name = name.to_owned();
        let (_, _, issued) = self
            .server
            .state()
            .store()
            .call(move |store| store.create_user_token(&name, Utc::now()))
            .await?;
        Ok(issued.secret)
    }

    /// Creates an agent and returns `(id, token)` ([`Api::create_agent`]).
    pub async fn agent(&self, user_token: &str, name: &str) -> TestResult<(String, String)> {
        self.api.create_agent(user_token, name).await
    }

    /// Announces a dongle with an agent token and returns its id ([`Api::announce_dongle`]).
    pub async fn dongle(&self, agent_token: &str, serial: &str) -> TestResult<String> {
        self.api.announce_dongle(agent_token, serial).await
    }

    /// Creates a group "g" of dongles `a` and `b` for `user` and returns its id.
    pub async fn group(&self, user: &str, a: &str, b: &str) -> TestResult<String> {
        self.api.create_group(user, "g", a, b).await
    }

    /// [`TestServer::group`], then activated.
    pub async fn active_group(&self, user: &str, a: &str, b: &str) -> TestResult<String> {
        self.api.active_group(user, "g", a, b).await
    }

    /// The `/metrics` page as text.
    pub async fn metrics(&self) -> TestResult<String> {
        Ok(self.api.metrics().await.ok_or("/metrics did not answer")?)
    }

    /// Asserts that the `/metrics` page contains each of `lines` (a sample, or a family name);
    /// the failure shows the whole page.
    pub async fn assert_metrics(&self, lines: &[&str]) -> TestResult {
        let text = self.metrics().await?;
        for line in lines {
            assert!(text.contains(line), "no {line} in {text}");
        }
        Ok(())
    }

    /// The entries of group `id`'s audit trail, as `user` reads them (asserts a 200).
    pub async fn group_audit(&self, user: &str, id: &str) -> TestResult<Vec<Value>> {
        let (status, audit) = self
            .get(&format!("/api/v1/groups/{id}/audit"), user)
            .await?;
        assert_eq!(status, StatusCode::OK, "{audit}");
        Ok(audit["entries"]
            .as_array()
            .cloned()
            .ok_or_else(|| format!("no audit entries in {audit}"))?)
    }

    /// A user `name` with an agent `{name}-edge` and its two announced dongles `{name}-A` and
    /// `{name}-B`.
    pub async fn user_pair(&self, name: &str) -> TestResult<UserPair> {
        let user = self.user_token(name).await?;
        let (agent_id, agent) = self.agent(&user, &format!("{name}-edge")).await?;
        let a = self.dongle(&agent, &format!("{name}-A")).await?;
        let b = self.dongle(&agent, &format!("{name}-B")).await?;
        Ok(UserPair {
            user,
            agent_id,
            agent,
            a,
            b,
        })
    }

    /// [`TestServer::user_pair`] as `(user token, agent token, a, b)`.
    pub async fn user_with_pair(&self, name: &str) -> TestResult<(String, String, String, String)> {
        let pair = self.user_pair(name).await?;
        Ok((pair.user, pair.agent, pair.a, pair.b))
    }

    /// [`TestServer::user_with_pair`] with the pair in an activated group:
    /// `(user token, agent token, group id)`.
    pub async fn user_with_active_group(&self, name: &str) -> TestResult<(String, String, String)> {
        let (user, agent, a, b) = self.user_with_pair(name).await?;
        let id = self.active_group(&user, &a, &b).await?;
        Ok((user, agent, id))
    }
}

/// What [`TestServer::user_pair`] made: a user's token, its agent (id and token), and the ids
/// of the agent's two dongles.
pub struct UserPair {
    pub user: String,
    pub agent_id: String,
    pub agent: String,
    pub a: String,
    pub b: String,
}

/// `REDIS_URL`, which the tests that need Redis require (they fail without it).
pub fn redis_url() -> TestResult<String> {
    Ok(std::env::var("REDIS_URL")
        .map_err(|_| "REDIS_URL must point at a Redis server for this test")?)
}

/// `GET url` with `token` until it is refused, for a token revoked outside this process (the
/// CLI, another instance): a server remembers an authenticated user token for
/// [`server::store::USER_TOKEN_CACHE_TTL`], so the refusal comes within that bound. Returns
/// the last answer (status and body) once refused or once twice the bound has passed.
pub async fn refused_after_revocation(
    client: &reqwest::Client,
    url: &str,
    token: &str,
) -> TestResult<(StatusCode, Value)> {
    let deadline = std::time::Instant::now() + 2 * server::store::USER_TOKEN_CACHE_TTL;
    loop {
        let answer = read(client.get(url).bearer_auth(token).send().await?).await?;
        if answer.0 == StatusCode::UNAUTHORIZED || std::time::Instant::now() > deadline {
            return Ok(answer);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
