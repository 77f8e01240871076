//! The caches of the command path: the user of a token and the vehicle of a command are
//! remembered for a short ttl, yet a revoked token is refused (at once when revoked through
//! this server's store, within `USER_TOKEN_CACHE_TTL` when revoked by another process), and
//! another user's vehicle or a deleted one stays `404`.

mod commands_support;
mod console_support;
mod server_support;

use std::time::Duration;

use chrono::Utc;
use commands_support::{fleet, mock, mocked_fleet};
use reqwest::StatusCode;
use serde_json::{Value, json};
use server_support::{TestResult, TestServer, code};
use tether_server::commands::VEHICLE_CACHE_TTL;
use tether_server::store::{DB_FILE, Store, USER_TOKEN_CACHE_TTL};

/// Some time past a cache ttl, for a change made elsewhere to show.
const MARGIN: Duration = Duration::from_millis(300);

async fn post_command(server: &TestServer, token: &str, vehicle: &str) -> TestResult<StatusCode> {
    let params = json!({"ecu": "engine"});
    let (status, _) = server
        .post_command(token, vehicle, "TesterPresent", Some(params))
        .await?;
    Ok(status)
}

/// A new token of `alice` (its id and secret), used once for a command on `vehicle`.
async fn used_token(server: &TestServer, vehicle: &str) -> TestResult<(uuid::Uuid, String)> {
    let (_, id, issued) = server
        .server
        .state()
        .store()
        .call(|s| s.create_user_token("alice", Utc::now()))
        .await?;
    assert_eq!(
        post_command(server, &issued.secret, vehicle).await?,
        StatusCode::ACCEPTED
    );
    Ok((id, issued.secret))
}

#[tokio::test]
async fn a_revoked_token_is_refused_though_it_was_remembered() -> TestResult {
    let (server, f) = mocked_fleet(0, "alice").await?;
    let store = server.server.state().store().clone();

    // Revoked through this server's store: refused on the very next request.
    let (id, token) = used_token(&server, &f.vehicle).await?;
    assert!(
        !store.user_token_cache().is_empty(),
        "the token's user was not remembered"
    );
    assert!(
        store
            .call(move |s| s.revoke_user_token(id, Utc::now()))
            .await?
    );
    let (status, body) = server
        .post_command(&token, &f.vehicle, "TesterPresent", None)
        .await?;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );

    // Revoked by another process on the same database (`tether server token revoke`):
    // refused once the cache's ttl has passed.
    let (id, token) = used_token(&server, &f.vehicle).await?;
    let data_dir = server.dir.path().join("data");
    tokio::task::spawn_blocking(move || {
        Store::open_in(&data_dir)?.revoke_user_token(id, Utc::now())
    })
    .await??;
    tokio::time::sleep(USER_TOKEN_CACHE_TTL + MARGIN).await;
    for path in ["/api/v1/vehicles", "/api/v1/commands"] {
        let (status, _) = server.get(path, &token).await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
    assert_eq!(
        post_command(&server, &token, &f.vehicle).await?,
        StatusCode::UNAUTHORIZED
    );
    // The other tokens still work.
    assert_eq!(
        post_command(&server, &f.token, &f.vehicle).await?,
        StatusCode::ACCEPTED
    );
    server.stop().await
}

#[tokio::test]
async fn a_foreign_or_deleted_vehicle_is_404_though_it_was_remembered() -> TestResult {
    let server = TestServer::start_with(mock(0)).await?;
    let alice = fleet(&server, "alice").await?;
    let bob = fleet(&server, "bob").await?;

    // Alice's vehicle is remembered after her command; Bob still cannot reach it, by any route.
    assert_eq!(
        post_command(&server, &alice.token, &alice.vehicle).await?,
        StatusCode::ACCEPTED
    );
    for _ in 0..2 {
        let (status, body) = server
            .post_command(&bob.token, &alice.vehicle, "ReadDTC", None)
            .await?;
        assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    }
    let (status, _) = server
        .get(
            &format!(
                "/api/v1/vehicles/{}/components/engine/faults",
                alice.vehicle
            ),
            &bob.token,
        )
        .await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Bob's own vehicle is unaffected.
    assert_eq!(
        post_command(&server, &bob.token, &bob.vehicle).await?,
        StatusCode::ACCEPTED
    );

    // A vehicle deleted from the database by another process (the API has no deletion):
    // remembered at most the cache's ttl, then 404. An unknown command name still reads the
    // vehicle first, so this one is remembered without any command row pointing at it.
    let (status, body) = server
        .post(
            "/api/v1/vehicles",
            &alice.token,
            json!({"name": "short-lived", "ecus": [
                {"name": "engine", "request_id": 2016, "response_id": 2024}]}),
        )
        .await?;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let doomed = body["id"].as_str().ok_or("vehicle id")?.to_owned();
    let (status, _) = server
        .post_command(&alice.token, &doomed, "NoSuchCommand", None)
        .await?;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let db = server.dir.path().join("data").join(DB_FILE);
    let id = doomed.clone();
    let deleted = tokio::task::spawn_blocking(move || {
        let conn = rusqlite::Connection::open(db)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute("DELETE FROM vehicles WHERE id = ?1", [id])
    })
    .await??;
    assert_eq!(deleted, 1);
    tokio::time::sleep(VEHICLE_CACHE_TTL + MARGIN).await;
    let (status, body) = server
        .post_command(&alice.token, &doomed, "ReadDTC", None)
        .await?;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    let (_, listed) = server
        .get(
            &format!("/api/v1/commands?vehicle_id={doomed}"),
            &alice.token,
        )
        .await?;
    assert_eq!(listed["commands"], Value::Array(vec![]));
    server.stop().await
}
