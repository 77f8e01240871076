//! The servers an agent connects to, and fail-over between them.
//!
//! `server_url` in the agent file is one URL, a YAML list of URLs, or one string of
//! comma-separated URLs (the form a variable gives: `server_url: ${TETHER_SERVERS}` with
//! `TETHER_SERVERS=http://a:8080,http://b:8080`). [`ServerUrls`] is the checked list;
//! [`Failover`] is the position in it that the connections of one role share.
//!
//! Every connection a role opens — the dongle role's `/ws/data` sessions and REST calls, the
//! diagnostics channel — starts at the current server. When a connection is lost or cannot be
//! opened, its owner calls [`Failover::failed`] with the index it used and waits its
//! full-jitter backoff (`tether-retry`) before it tries again, at the next server. The position
//! moves only if nobody moved it since that index was read, so ten sessions that lose the same
//! server together move on by one server, not ten, and all of them land on the same one.
//!
//! What this does not do: probe servers, prefer the first one again once it is back (an agent
//! stays where it works), or balance load — a load balancer in front of the instances does that
//! (`docs/agent.md`). No frame depends on which server it reaches: the outbox resends from the
//! cumulative ack the new server reports in `welcome.tx_acked`, and the servers deduplicate
//! resent seqs in their shared stream log.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Deserializer};
use tether_retry::{Backoff, FullJitter};

/// The reconnect backoff of every role: full jitter from `min` (also the floor: a server that
/// keeps refusing gets no reconnect storm) up to `max`.
pub fn reconnect_backoff(min: Duration, max: Duration) -> Backoff {
    Backoff::new(FullJitter::new(min, max).with_floor(min))
}

/// The next delay of `backoff`, drawn with the thread's RNG.
pub fn next_delay(backoff: &mut Backoff) -> Duration {
    backoff.next_delay(rand::random::<f64>())
}

/// One server: its REST base and the matching WebSocket base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// `http://…` or `https://…`, no trailing slash.
    pub base: String,
    /// `ws://…` or `wss://…` for the same host, no trailing slash.
    pub ws_base: String,
}

impl ServerUrl {
    /// Checks one URL: `http://` or `https://`, parseable; a trailing slash is dropped.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let base = text.trim().trim_end_matches('/').to_owned();
        let ws_base = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            bail!("server_url must start with http:// or https://, got {base:?}")
        };
        reqwest::Url::parse(&base)
            .with_context(|| format!("server_url {base:?} is not a valid URL"))?;
        Ok(ServerUrl { base, ws_base })
    }

    /// The WebSocket URL of `path` (which starts with `/`) on this server.
    pub fn ws(&self, path: &str) -> String {
        format!("{}{path}", self.ws_base)
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base)
    }
}

/// `server_url` as written: one string (possibly comma-separated) or a list of strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrlSetting(pub Vec<String>);

impl<'de> Deserialize<'de> for ServerUrlSetting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        let texts = match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a URL, a comma-separated list of URLs or a list")
        })? {
            Raw::One(s) => s.split(',').map(|p| p.trim().to_owned()).collect(),
            Raw::Many(v) => v.into_iter().map(|p| p.trim().to_owned()).collect(),
        };
        Ok(ServerUrlSetting(texts))
    }
}

/// The checked, non-empty list of servers, in the order they are tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrls(Vec<ServerUrl>);

impl ServerUrls {
    /// Checks every entry of `setting`; refuses an empty list, an empty entry and duplicates.
    pub fn parse(setting: &ServerUrlSetting) -> anyhow::Result<Self> {
        if setting.0.is_empty() {
            bail!("server_url lists no server");
        }
        let mut urls: Vec<ServerUrl> = Vec::with_capacity(setting.0.len());
        for (i, text) in setting.0.iter().enumerate() {
            if text.is_empty() {
                bail!("server_url: entry {} is empty", i + 1);
            }
            let url = ServerUrl::parse(text)?;
            if urls.contains(&url) {
                bail!("server_url: {url} is listed twice");
            }
            urls.push(url);
        }
        Ok(ServerUrls(urls))
    }

    /// One server.
    pub fn one(url: &str) -> anyhow::Result<Self> {
        Ok(ServerUrls(vec![ServerUrl::parse(url)?]))
    }

    /// The servers in order.
    pub fn as_slice(&self) -> &[ServerUrl] {
        &self.0
    }

    /// The first server (the one connections start at).
    pub fn first(&self) -> &ServerUrl {
        &self.0[0]
    }
}

impl fmt::Display for ServerUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, u) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{u}")?;
        }
        Ok(())
    }
}

/// The current server of a role, shared by its connections (wrap it in an `Arc`).
#[derive(Debug)]
pub struct Failover {
    urls: ServerUrls,
    current: AtomicUsize,
}

impl Failover {
    /// Starts at the first server.
    pub fn new(urls: ServerUrls) -> Self {
        Failover {
            urls,
            current: AtomicUsize::new(0),
        }
    }

    /// The index and URL of the server to use now. Pass the index to [`failed`](Self::failed)
    /// if the connection fails.
    pub fn current(&self) -> (usize, &ServerUrl) {
        let i = self.current.load(Ordering::Acquire) % self.urls.0.len();
        (i, &self.urls.0[i])
    }

    /// A connection to server `index` failed or was lost: move to the next server, unless
    /// another connection already moved on from `index`. Returns the server to try next.
    pub fn failed(&self, index: usize) -> (usize, &ServerUrl) {
        let next = (index + 1) % self.urls.0.len();
        // Err: someone moved on already; their choice stands.
        let _ = self
            .current
            .compare_exchange(index, next, Ordering::AcqRel, Ordering::Acquire);
        self.current()
    }

    /// Every server, in order.
    pub fn urls(&self) -> &ServerUrls {
        &self.urls
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(yaml: &str) -> Result<ServerUrlSetting, serde_norway::Error> {
        serde_norway::from_str(yaml)
    }

    #[test]
    fn one_url_a_list_or_a_comma_separated_string() {
        let one = ServerUrls::parse(&setting("http://a:1/").unwrap()).unwrap();
        assert_eq!(one.as_slice().len(), 1);
        assert_eq!(one.first().base, "http://a:1");
        assert_eq!(one.first().ws("/ws/data"), "ws://a:1/ws/data");
        let list = ServerUrls::parse(&setting("[http://a:1, 'https://b:2/']").unwrap()).unwrap();
        let commas = ServerUrls::parse(&setting("'http://a:1 , https://b:2/'").unwrap()).unwrap();
        assert_eq!(list, commas);
        assert_eq!(list.as_slice()[1].ws_base, "wss://b:2");
        assert_eq!(list.to_string(), "http://a:1,https://b:2");
    }

    #[test]
    fn bad_lists_are_refused() {
        for (yaml, why) in [
            ("[]", "lists no server"),
            ("'http://a:1,'", "entry 2 is empty"),
            ("[http://a:1, ftp://b]", "must start with http://"),
            ("[http://a:1, 'http://a:1/']", "listed twice"),
            ("'http://:1'", "not a valid URL"),
        ] {
            let err = ServerUrls::parse(&setting(yaml).unwrap()).unwrap_err();
            assert!(format!("{err:#}").contains(why), "{yaml}: {err:#}");
        }
        assert!(setting("{a: 1}").is_err());
        assert!(setting("[1, [2]]").is_err());
    }

    #[test]
    fn concurrent_failures_move_on_once_and_wrap_around() {
        let f = Failover::new(
            ServerUrls::parse(&setting("[http://a:1, http://b:2, http://c:3]").unwrap()).unwrap(),
        );
        let (i, _) = f.current();
        assert_eq!(i, 0);
        // Two sessions lost server 0 together: one step, both go to server 1.
        assert_eq!(f.failed(0).1.base, "http://b:2");
        assert_eq!(f.failed(0).1.base, "http://b:2");
        assert_eq!(f.failed(1).0, 2);
        assert_eq!(f.failed(2).0, 0);
        // A late report about a server left long ago changes nothing.
        assert_eq!(f.failed(1).0, 0);
        let single = Failover::new(ServerUrls::one("http://only:1").unwrap());
        assert_eq!(single.failed(0).0, 0);
    }
}
