//! The reference metering control plane: what `tether agent`'s metering role talks to, so the
//! whole pipeline (speech API server → Redis → agent → control plane) runs with Tether alone.
//! Described in `docs/control-plane.md`.
//!
//! - Data-plane servers authenticate with their own `X-API-Key` (`tether server metering key
//!   create --server-id ID`, stored hashed) and call the endpoints of
//!   `docs/protocols/metering.md`: register, heartbeat, shutdown, commands, public keys, and
//!   the session endpoints (start, usage records, refresh, complete).
//! - **Credits are computed here only**: `ceil(max(audio_duration_seconds,
//!   connection_duration_seconds) / 360)` per usage record ([`credits_for`]), summed per
//!   session, each record counted once per idempotency key (`record_id`).
//! - **Quotas**: a customer has a balance; a session start reserves [`store::INITIAL_GRANT`],
//!   a refresh grants [`store::REFRESH_GRANT`] more while the balance lasts (once per
//!   `transaction_id`), completion releases what the session did not consume.
//! - **Signed commands**: operators queue `refresh_public_keys`, `health_check` or
//!   `get_metrics`; the control plane signs them as EdDSA JWTs with a rotatable key
//!   ([`keys`]) and stores the results the agent posts back.
//! - Operators (users with the `operator` role) read sessions, customers and servers.
//!
//! State lives in `<data-dir>/metering.db` ([`store`]), apart from the records database.
//!
//! What it does not do: no pricing tiers (one flat rate), no invoices or payment, no
//! per-customer API; a session that exceeds its grant is still recorded (the speech server
//! decides what to do when a refresh grants nothing).

pub mod keys;
mod routes;
pub mod store;

use std::sync::Arc;

pub use routes::router;
pub use store::MeteringStore;

/// Seconds of audio (or connection) one credit buys.
pub const SECONDS_PER_CREDIT: f64 = 360.0;

/// Credits of one usage record: `ceil(max(audio, connection) / 360)`. Negative or non-finite
/// inputs count as 0 (the routes refuse them before this).
pub fn credits_for(audio_duration_seconds: f64, connection_duration_seconds: f64) -> i64 {
    let clean = |v: f64| if v.is_finite() && v > 0.0 { v } else { 0.0 };
    let secs = clean(audio_duration_seconds).max(clean(connection_duration_seconds));
    (secs / SECONDS_PER_CREDIT).ceil() as i64
}

/// The control plane as the routes see it (an axum `Extension`).
#[derive(Debug, Clone)]
pub struct Metering(pub Arc<MeteringStore>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credits_follow_the_formula() {
        assert_eq!(credits_for(0.0, 0.0), 0);
        assert_eq!(credits_for(0.1, 0.0), 1);
        assert_eq!(credits_for(360.0, 10.0), 1);
        assert_eq!(credits_for(360.5, 10.0), 2);
        assert_eq!(credits_for(10.0, 721.0), 3);
        assert_eq!(credits_for(f64::NAN, -5.0), 0);
    }

    #[test]
    fn quotas_usage_and_refreshes_are_idempotent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = MeteringStore::open_in(dir.path()).expect("open");
        let now = chrono::Utc::now();
        s.upsert_customer("c1", 25, now).expect("customer");
        let start = s
            .lifecycle("s1", "start", "c1", "srv", "k-start", now)
            .expect("db")
            .expect("ok");
        assert_eq!(start["granted"], 10);
        let again = s
            .lifecycle("s1", "start", "c1", "srv", "k-start", now)
            .expect("db")
            .expect("ok");
        assert_eq!(again["duplicate"], true);
        let rec = |id: &str, secs: f64| {
            (
                id.to_owned(),
                "c1".to_owned(),
                secs,
                1.0,
                serde_json::json!({"record_id": id}),
            )
        };
        let (acc, dup) = s
            .add_usage_records("s1", "srv", &[rec("r1", 700.0), rec("r1", 700.0)], now)
            .expect("db")
            .expect("ok");
        assert_eq!((acc, dup), (1, 1));
        let r1 = s
            .refresh("s1", "c1", "srv", "t1", now)
            .expect("db")
            .expect("ok");
        let r1b = s
            .refresh("s1", "c1", "srv", "t1", now)
            .expect("db")
            .expect("ok");
        assert_eq!(r1, r1b, "same transaction, same answer");
        // balance 25 - 2 consumed = 23; reserved before refresh = 10 - 2 = 8; grant 10.
        assert_eq!(r1["granted"], 10);
        let c = s.customer("c1").expect("db").expect("customer");
        assert_eq!(c["balance"], 23);
        assert_eq!(c["reserved"], 18);
        let r2 = s
            .refresh("s1", "c1", "srv", "t2", now)
            .expect("db")
            .expect("ok");
        assert_eq!(r2["granted"], 5, "only what the balance has left");
        let done = s
            .lifecycle("s1", "complete", "c1", "srv", "k-done", now)
            .expect("db")
            .expect("ok");
        assert_eq!(done["released"], 23);
        assert_eq!(s.customer("c1").expect("db").expect("c")["reserved"], 0);
        let view = s.session("s1").expect("db").expect("session");
        assert_eq!(view["credits_consumed"], 2);
        assert_eq!(view["credits_granted"], 25);
        assert_eq!(view["refreshes"], 2);
        assert_eq!(view["usage_records"].as_array().map(Vec::len), Some(1));
        assert_eq!(
            s.lifecycle("s2", "start", "nobody", "srv", "k", now)
                .expect("db"),
            Err(store::Refusal::UnknownCustomer("nobody".into()))
        );
    }
}
