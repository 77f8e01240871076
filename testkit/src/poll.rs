//! Polling until something holds, with a deadline that names what was awaited.
//!
//! One loop ([`poll`]) behind four shapes: [`eventually`] (a value, as a `Result`), [`until`]
//! (a condition, as a `Result`), and the panicking [`wait_for`] / [`wait_until`] for tests
//! that return `()`.

use std::future::Future;
use std::time::Duration;

use crate::TestResult;

/// How often the helpers poll.
pub const INTERVAL: Duration = Duration::from_millis(50);

/// Polls `check` every `interval` until it returns `Some`, or fails after `limit` with a
/// message naming `what`.
pub async fn poll<T, F, Fut>(
    limit: Duration,
    interval: Duration,
    what: &str,
    mut check: F,
) -> TestResult<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("timed out after {limit:?} waiting for: {what}").into());
        }
        tokio::time::sleep(interval).await;
    }
}

/// Polls `check` until it returns `Some`; fails after `limit` naming `what`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, check: F) -> TestResult<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll(limit, INTERVAL, what, check).await
}

/// Polls `check` until it returns `true`; fails after `limit` naming `what`.
pub async fn until<F, Fut>(limit: Duration, what: &str, mut check: F) -> TestResult
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    poll(limit, INTERVAL, what, || {
        let fut = check();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// [`eventually`], panicking on time-out (for tests that return `()`).
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match eventually(limit, what, check).await {
        Ok(value) => value,
        Err(err) => panic!("{err}"),
    }
}

/// [`until`], panicking on time-out (for tests that return `()`).
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    if let Err(err) = until(limit, what, check).await {
        panic!("{err}");
    }
}

/// [`wait_until`] for a condition that needs no `.await` (shared state of a mock).
pub async fn wait_until_sync(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    wait_until(limit, what, || std::future::ready(check())).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn eventually_returns_the_first_value_and_fails_naming_what() {
        let mut n = 0;
        let got = eventually(Duration::from_secs(5), "three", || {
            n += 1;
            std::future::ready((n == 3).then_some(n))
        })
        .await;
        assert_eq!(got.ok(), Some(3));
        let err = until(Duration::from_millis(120), "never", || {
            std::future::ready(false)
        })
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("waiting for: never"), "{err}");
    }
}
