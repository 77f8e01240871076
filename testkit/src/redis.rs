//! Redis for tests: the URL (`REDIS_URL`), a reachability check that fails instead of
//! skipping, and key namespaces that are deleted when dropped.

use crate::TestResult;

/// `REDIS_URL`, or the local default `redis://127.0.0.1:6379`.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned())
}

/// Fails (does not skip) when Redis is not reachable.
pub async fn require_redis(url: &str) -> TestResult {
    let mut conn = connect(url).await?;
    let pong: String = ::redis::cmd("PING").query_async(&mut conn).await?;
    assert_eq!(pong, "PONG");
    Ok(())
}

/// A multiplexed connection, with an error naming `REDIS_URL` when Redis does not answer.
pub async fn connect(url: &str) -> TestResult<::redis::aio::MultiplexedConnection> {
    let client = ::redis::Client::open(url)?;
    Ok(client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("Redis must be reachable at {url} (REDIS_URL): {e}"))?)
}

/// Deletes every key that starts with `prefix` (SCAN, not KEYS); returns how many.
pub async fn delete_prefix(
    conn: &mut ::redis::aio::MultiplexedConnection,
    prefix: &str,
) -> TestResult<usize> {
    let keys: Vec<String> = {
        let mut iter: ::redis::AsyncIter<'_, String> = ::redis::cmd("SCAN")
            .cursor_arg(0)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .clone()
            .iter_async(conn)
            .await?;
        let mut keys = Vec::new();
        while let Some(key) = iter.next_item().await {
            keys.push(key?);
        }
        keys
    };
    if !keys.is_empty() {
        let _: () = ::redis::cmd("DEL").arg(&keys).query_async(conn).await?;
    }
    Ok(keys.len())
}

/// A key namespace of one test (`test:<label>:<uuid>:`): every key under it is deleted when
/// the namespace is dropped, whether the test passed or not.
pub struct RedisNamespace {
    /// The Redis URL.
    pub url: String,
    /// The prefix, ending in `:`.
    pub prefix: String,
}

impl RedisNamespace {
    /// A fresh namespace on [`redis_url`].
    pub fn new(label: &str) -> RedisNamespace {
        RedisNamespace::on(&redis_url(), label)
    }

    /// A fresh namespace on `url`.
    pub fn on(url: &str, label: &str) -> RedisNamespace {
        RedisNamespace {
            url: url.to_owned(),
            prefix: format!("test:{label}:{}:", uuid::Uuid::new_v4().simple()),
        }
    }

    /// `prefix` + `name`.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// A connection (fails when Redis does not answer).
    pub async fn connect(&self) -> TestResult<::redis::aio::MultiplexedConnection> {
        connect(&self.url).await
    }

    /// Deletes the namespace's keys now; returns how many there were.
    pub async fn clear(&self) -> TestResult<usize> {
        delete_prefix(&mut self.connect().await?, &self.prefix).await
    }

    fn clear_blocking(&self) -> ::redis::RedisResult<()> {
        let mut conn = ::redis::Client::open(self.url.as_str())?.get_connection()?;
        let keys: Vec<String> = ::redis::cmd("SCAN")
            .cursor_arg(0)
            .arg("MATCH")
            .arg(format!("{}*", self.prefix))
            .arg("COUNT")
            .arg(1000)
            .clone()
            .iter(&mut conn)?
            .collect::<Result<_, _>>()?;
        if !keys.is_empty() {
            ::redis::cmd("DEL").arg(&keys).exec(&mut conn)?;
        }
        Ok(())
    }
}

impl Drop for RedisNamespace {
    fn drop(&mut self) {
        // Blocking client: a drop may run inside or outside a runtime, and must not need one.
        if let Err(err) = self.clear_blocking() {
            eprintln!("could not delete the Redis keys {}*: {err}", self.prefix);
        }
    }
}

/// A private `redis-server` on a free port with an append-only file fsynced at every write (so
/// what it acknowledged survives a SIGKILL) and no eviction: for tests that kill and restart
/// Redis, never the shared one. Killed when dropped.
pub struct OwnRedis {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    /// Starts one with its files in `dir` (created), answering PING before it returns.
    pub async fn start(dir: &std::path::Path) -> TestResult<OwnRedis> {
        std::fs::create_dir_all(dir)?;
        let mut redis = OwnRedis {
            port: crate::free_tcp_port(),
            dir: dir.to_owned(),
            child: None,
        };
        redis.restart().await?;
        Ok(redis)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, and waits until it is gone.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::process::kill9(&mut child);
        }
    }

    /// Waits for the process to exit by itself (after a `SHUTDOWN` sent by the test).
    pub fn wait_stopped(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// Starts it (again) on the same port and files; returns once it answers PING.
    pub async fn restart(&mut self) -> TestResult {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .args(["--maxmemory-policy", "noeviction"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-server must be installed: {e}"))?;
        self.child = Some(child);
        let url = self.url();
        crate::eventually(
            std::time::Duration::from_secs(10),
            "own redis-server up",
            || {
                let url = url.clone();
                async move { require_redis(&url).await.ok() }
            },
        )
        .await
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn a_namespace_is_emptied_on_drop() -> TestResult {
        let ns = RedisNamespace::new("testkit");
        let mut conn = ns.connect().await?;
        let _: () = ::redis::cmd("SET")
            .arg(ns.key("a"))
            .arg(1)
            .query_async(&mut conn)
            .await?;
        let _: () = ::redis::cmd("SET")
            .arg(ns.key("b"))
            .arg(2)
            .query_async(&mut conn)
            .await?;
        let prefix = ns.prefix.clone();
        tokio::task::spawn_blocking(move || drop(ns)).await?;
        let left = delete_prefix(&mut conn, &prefix).await?;
        assert_eq!(left, 0, "keys left under {prefix}");
        Ok(())
    }
}
