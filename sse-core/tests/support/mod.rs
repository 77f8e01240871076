//! Shared by the test files that run one set of cases against both hub backends: a virtual clock,
//! a Redis backend under a key prefix of its own, and the macro that makes one test per case and
//! backend.
//!
//! Redis is the real server from `REDIS_URL` (default `redis://127.0.0.1:6379`); a Redis test
//! fails when it is unreachable.

#![allow(dead_code, unused_macros, unused_imports)] // each test file uses part of it

use std::sync::Arc;

use sse_core::backend::SystemClock;
use sse_core::{Clock, ManualClock, RedisBackend, RedisBackendConfig};

/// A virtual clock reading the current time.
pub(crate) fn manual_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(SystemClock.now_ms()))
}

/// A Redis backend whose keys live under a fresh `tether:test:sse:<uuid>:` prefix.
pub(crate) async fn redis_backend(clock: Arc<dyn Clock>) -> RedisBackend {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let mut config = RedisBackendConfig::new(&url);
    config.key_prefix = format!("tether:test:sse:{}:", uuid::Uuid::new_v4());
    RedisBackend::connect(config, clock)
        .await
        .unwrap_or_else(|e| panic!("Redis at {url} is required: {e}"))
}

/// `for_each_backend!(cleanup: [stream keys…], case, case, …)` makes `memory::case` and
/// `redis::case` tests that call `cases::case(&backend, &clock)`; the Redis tests delete the
/// named streams afterwards.
macro_rules! for_each_backend {
    (cleanup: $keys:expr, $($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    let clock = super::support::manual_clock();
                    let backend = sse_core::MemoryBackend::new(
                        clock.clone(),
                        sse_core::StreamConfig::default(),
                    );
                    super::cases::$name(&backend, &clock).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let clock = super::support::manual_clock();
                    let backend = super::support::redis_backend(clock.clone()).await;
                    super::cases::$name(&backend, &clock).await;
                    for key in $keys {
                        backend.delete_stream(key).await.expect("cleanup");
                    }
                }
            )*
        }
    };
}
pub(crate) use for_each_backend;
