//! Vehicles and commands over the REST API with the mock connector: the 202 contract, stored
//! commands and responses, paging, the WebSocket stream, one command at a time per ECU,
//! `command_status` console events, bad input, ownership, and recovery after a crash.

mod commands_support;
mod console_support;
mod server_support;

use std::time::Duration;

use chrono::{DateTime, Utc};
use commands_support::{ended, fleet, mock, mocked_fleet, stream};
use reqwest::StatusCode;
use serde_json::{Value, json};
use server_support::{TestResult, TestServer, code, text};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

fn time(body: &Value, field: &str) -> TestResult<DateTime<Utc>> {
    Ok(text(body, field)?.parse()?)
}

#[tokio::test]
async fn vehicles_are_a_resource_of_their_user() -> TestResult {
    let (server, f) = mocked_fleet(0, "alice").await?;
    let (status, body) = server
        .get(&format!("/api/v1/vehicles/{}", f.vehicle), &f.token)
        .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["vin"], "1HGCM82633A004352");
    assert_eq!(body["dongle_id"], f.dongle.as_str());
    assert_eq!(body["online"], false);
    assert_eq!(
        body["ecus"],
        json!([{"name": "engine", "request_id": 2016, "response_id": 2024},
               {"name": "abs", "request_id": 2017, "response_id": 2025}])
    );
    let (_, list) = server.get("/api/v1/vehicles", &f.token).await?;
    assert_eq!(list["vehicles"].as_array().map(Vec::len), Some(1));

    // Another user sees nothing of it, and cannot use alice's dongle.
    let bob = server.user_token("bob").await?;
    let (status, body) = server
        .get(&format!("/api/v1/vehicles/{}", f.vehicle), &bob)
        .await?;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    let (_, list) = server.get("/api/v1/vehicles", &bob).await?;
    assert_eq!(list["vehicles"], json!([]));
    let (status, body) = server
        .post(
            "/api/v1/vehicles",
            &bob,
            json!({"name": "b", "dongle_id": f.dongle}),
        )
        .await?;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "unknown_dongle")
    );
    // The dongle is on one vehicle only.
    let (status, body) = server
        .post(
            "/api/v1/vehicles",
            &f.token,
            json!({"name": "2nd", "dongle_id": f.dongle}),
        )
        .await?;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "dongle_in_use")
    );
    // Bad shapes.
    for bad in [
        json!({"name": ""}),
        json!({"name": "x", "vin": "no spaces allowed"}),
        json!({"name": "x", "ecus": [{"name": "e", "request_id": "0x7E0"}]}),
        json!({"name": "x", "ecus": [{"name": "e", "request_id": "0x7E0", "response_id": "zz"}]}),
        json!({"name": "x", "colour": "red"}),
    ] {
        let (status, body) = server
            .post("/api/v1/vehicles", &f.token, bad.clone())
            .await?;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad} → {body}");
    }
    server.stop().await
}

#[tokio::test]
async fn a_command_is_accepted_stored_answered_and_streamed() -> TestResult {
    let (server, f) = mocked_fleet(0, "alice").await?;
    let accepted = f
        .accept(&server, "ReadDTC", json!({"ecu": "engine"}))
        .await?;
    assert_eq!(accepted["status"], "pending");
    let id = text(&accepted, "command_id")?;
    let host = server.base.trim_start_matches("http://");
    assert_eq!(
        accepted["stream_url"],
        format!("ws://{host}/ws/responses/{id}")
    );
    time(&accepted, "submitted_at")?;

    let command = ended(&server, &f.token, &id).await?;
    assert_eq!(command["status"], "completed", "{command}");
    assert_eq!(command["command_name"], "ReadDTC");
    assert_eq!(command["vehicle_id"], f.vehicle.as_str());
    assert_eq!(command["command_params"], json!({"ecu": "engine"}));
    assert_eq!(command["error_message"], Value::Null);
    assert!(time(&command, "completed_at")? >= time(&command, "submitted_at")?);

    let (status, body) = server
        .get(&format!("/api/v1/commands/{id}/responses"), &f.token)
        .await?;
    assert_eq!(status, StatusCode::OK);
    let responses = body["responses"].as_array().cloned().unwrap_or_default();
    assert_eq!(responses.len(), 1, "{body}");
    assert_eq!(responses[0]["sequence_number"], 1);
    assert_eq!(responses[0]["is_final"], true);
    assert_eq!(responses[0]["command_id"], id.as_str());
    let payload = &responses[0]["response_payload"];
    assert_eq!(payload["ecu"], "engine");
    assert_eq!(payload["dtcs"][0]["dtcCode"], "P0420");
    assert_eq!(
        payload["dtcs"][0]["description"],
        "Catalyst System Efficiency Below Threshold"
    );

    // Connecting after completion: the stored response, then a normal close — with the token
    // in the header or in the query.
    for in_query in [false, true] {
        let (events, close) = stream(&server, &id, &f.token, in_query).await?;
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(
            events[0],
            json!({"event": "response", "command_id": id, "sequence_number": 1,
                   "is_final": true, "response": payload})
        );
        assert_eq!(close, Some(CloseCode::Normal));
    }

    // Distinct payloads per command; ReadDataByID answers for the DID asked.
    let vin = f
        .run(&server, "ReadDataByID", json!({"did": "0xF190"}))
        .await?;
    let (_, body) = server
        .get(
            &format!("/api/v1/commands/{}/responses", text(&vin, "command_id")?),
            &f.token,
        )
        .await?;
    assert_eq!(
        body["responses"][0]["response_payload"]["ascii"],
        "1HGCM82633A004352"
    );
    assert_eq!(body["responses"][0]["response_payload"]["didHex"], "F190");
    let clear = f.accept(&server, "ClearDTC", json!({})).await?;
    let clear_id = text(&clear, "command_id")?;
    ended(&server, &f.token, &clear_id).await?;
    let (_, body) = server
        .get(&format!("/api/v1/commands/{clear_id}/responses"), &f.token)
        .await?;
    assert_eq!(body["responses"][0]["response_payload"]["cleared"], true);
    server.stop().await
}

#[tokio::test]
async fn live_stream_gets_every_response_once_and_closes() -> TestResult {
    let (server, f) = mocked_fleet(400, "alice").await?;
    let accepted = f.accept(&server, "TesterPresent", json!({})).await?;
    let id = text(&accepted, "command_id")?;
    // Connects while the command is running (400 ms): gets the live response.
    let (events, close) = stream(&server, &id, &f.token, false).await?;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["response"]["hex"], "7E00");
    assert_eq!(close, Some(CloseCode::Normal));
    server.stop().await
}

#[tokio::test]
async fn bad_commands_are_refused_with_the_reason() -> TestResult {
    let (server, f) = mocked_fleet(0, "alice").await?;
    let post = |body: Value| {
        let server = &server;
        let token = f.token.clone();
        async move { server.post("/api/v1/commands", &token, body).await }
    };
    let (status, body) = post(json!({"vehicle_id": f.vehicle, "command_name": "FlashEcu"})).await?;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "unknown_command")
    );
    let message = body["error"]["message"].as_str().unwrap_or("");
    for name in can_io::uds::SUPPORTED_COMMANDS {
        assert!(message.contains(name), "{message}");
    }
    let cases = [
        (
            json!({"command_name": "ReadDTC", "command_params": {"status_mask": 300}}),
            "command_params.status_mask",
        ),
        (
            json!({"command_name": "ReadDataByID", "command_params": {}}),
            "command_params.did",
        ),
        (
            json!({"command_name": "ReadDTC", "command_params": {"ecu": "gearbox"}}),
            "command_params.ecu",
        ),
        (
            json!({"command_name": "ReadDTC", "command_params": [1]}),
            "command_params",
        ),
    ];
    for (mut body, field) in cases {
        body["vehicle_id"] = json!(f.vehicle);
        let (status, answer) = post(body.clone()).await?;
        assert_eq!(
            (status, code(&answer)),
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_params"),
            "{body}"
        );
        let message = answer["error"]["message"].as_str().unwrap_or("");
        assert!(message.starts_with(field), "{body} → {message}");
    }
    // The unknown ECU's error lists the vehicle's ECUs.
    let (_, answer) = post(json!({"vehicle_id": f.vehicle, "command_name": "ReadDTC",
                                  "command_params": {"ecu": "gearbox"}}))
    .await?;
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("engine, abs")
    );
    // Nothing was stored for any of them.
    let (_, list) = server.get("/api/v1/commands", &f.token).await?;
    assert_eq!(list["commands"], json!([]));

    // Another user's vehicle and commands are 404.
    let done = f.accept(&server, "ReadDTC", json!({})).await?;
    let id = text(&done, "command_id")?;
    let bob = server.user_token("bob").await?;
    let (status, body) = server
        .post_command(&bob, &f.vehicle, "ReadDTC", None)
        .await?;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    for path in [
        format!("/api/v1/commands/{id}"),
        format!("/api/v1/commands/{id}/responses"),
    ] {
        let (status, _) = server.get(&path, &bob).await?;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    assert!(
        stream(&server, &id, &bob, true).await.is_err(),
        "bob's stream must be refused"
    );
    let (_, list) = server.get("/api/v1/commands", &bob).await?;
    assert_eq!(list["commands"], json!([]));
    server.stop().await
}

#[tokio::test]
async fn commands_are_listed_newest_first_filtered_and_paged() -> TestResult {
    let (server, f) = mocked_fleet(0, "alice").await?;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let body = f.accept(&server, "TesterPresent", json!({})).await?;
        ids.push(text(&body, "command_id")?);
    }
    for id in &ids {
        ended(&server, &f.token, id).await?;
    }
    let mut seen = Vec::new();
    let mut path = format!("/api/v1/commands?vehicle_id={}&limit=2", f.vehicle);
    loop {
        let (status, page) = server.get(&path, &f.token).await?;
        assert_eq!(status, StatusCode::OK, "{page}");
        let commands = page["commands"].as_array().cloned().unwrap_or_default();
        assert!(commands.len() <= 2);
        seen.extend(
            commands
                .iter()
                .map(|c| c["command_id"].as_str().unwrap_or("").to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                path = format!(
                    "/api/v1/commands?vehicle_id={}&limit=2&cursor={cursor}",
                    f.vehicle
                );
            }
            None => break,
        }
    }
    ids.reverse();
    let mut sorted_seen = seen.clone();
    sorted_seen.dedup();
    assert_eq!(seen.len(), 5);
    assert_eq!(sorted_seen.len(), 5, "no command twice: {seen:?}");
    let (_, completed) = server
        .get("/api/v1/commands?status=completed", &f.token)
        .await?;
    assert_eq!(completed["commands"].as_array().map(Vec::len), Some(5));
    let (_, failed) = server
        .get("/api/v1/commands?status=failed", &f.token)
        .await?;
    assert_eq!(failed["commands"], json!([]));
    for bad in [
        "status=done",
        "limit=0",
        "limit=501",
        "vehicle_id=nope",
        "cursor=zz",
    ] {
        let (status, body) = server
            .get(&format!("/api/v1/commands?{bad}"), &f.token)
            .await?;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::BAD_REQUEST, "bad_request"),
            "{bad}"
        );
    }
    server.stop().await
}

#[tokio::test]
async fn one_command_at_a_time_per_ecu_and_console_events() -> TestResult {
    let (server, f) = mocked_fleet(300, "alice").await?;
    let mut console = console_support::subscribe_dongle(&server, &f.token, &f.dongle).await?;
    let mut engine = Vec::new();
    for _ in 0..3 {
        let body = f
            .accept(&server, "ReadDTC", json!({"ecu": "engine"}))
            .await?;
        engine.push(text(&body, "command_id")?);
    }
    let abs = f.run(&server, "ReadDTC", json!({"ecu": "abs"})).await?;
    let mut done = Vec::new();
    for id in &engine {
        done.push(ended(&server, &f.token, id).await?);
    }
    let at = |c: &Value| time(c, "completed_at");
    // The engine's commands ran one after another (300 ms each); abs ran beside the first.
    assert!(at(&done[1])? - at(&done[0])? >= chrono::Duration::milliseconds(250));
    assert!(at(&done[2])? - at(&done[1])? >= chrono::Duration::milliseconds(250));
    assert!(at(&abs)? < at(&done[1])?, "abs waited for the engine");

    // The first engine command's console events, in order.
    let mut states = Vec::new();
    while states.len() < 3 {
        let event = console.next_of("command_status").await?;
        let data = console_support::json(&event)?;
        assert_eq!(data["dongle_id"], f.dongle.as_str());
        if data["command_id"] == engine[0].as_str() {
            states.push(data["status"].as_str().unwrap_or("").to_owned());
        }
    }
    assert_eq!(states, ["pending", "in_progress", "completed"]);
    server.stop().await
}

#[tokio::test]
async fn commands_left_open_by_a_crash_end_after_restart() -> TestResult {
    let (server, f) = mocked_fleet(0, "alice").await?;
    let data_dir = server.dir.path().join("data");
    // Rows as a killed process leaves them: one started, one pending past its ttl, one
    // pending within it.
    let store = server.server.state().store().clone();
    let (user, vehicle) = {
        let token = f.token.clone();
        let vehicle: uuid::Uuid = f.vehicle.parse()?;
        let user = store
            .call(move |s| s.authenticate_user(&token))
            .await?
            .ok_or("no user")?;
        (user.id, vehicle)
    };
    let now = Utc::now();
    let row = |status, deadline| tether_server::store::CommandRecord {
        command_id: uuid::Uuid::new_v4(),
        user_id: user,
        vehicle_id: vehicle,
        command_name: "ReadDTC".into(),
        command_params: json!({}),
        status,
        error_message: None,
        submitted_at: now,
        completed_at: None,
        deadline_at: deadline,
    };
    use tether_server::store::CommandStatus::{InProgress, Pending};
    let rows = [
        row(InProgress, now + chrono::Duration::seconds(60)),
        row(Pending, now - chrono::Duration::seconds(1)),
        row(Pending, now + chrono::Duration::seconds(60)),
    ];
    for r in rows.clone() {
        store.call(move |s| s.insert_command(&r)).await?;
    }
    drop(store);
    server.server.shutdown().await?;

    let restarted = TestServer::start_with(|config| {
        mock(0)(config);
        config.data_dir = data_dir;
    })
    .await?;
    let states: Vec<Value> = {
        let mut out = Vec::new();
        for r in &rows {
            out.push(ended(&restarted, &f.token, &r.command_id.to_string()).await?);
        }
        out
    };
    assert_eq!(states[0]["status"], "failed");
    assert_eq!(states[0]["error_message"], "interrupted: server restarted");
    assert_eq!(states[1]["status"], "failed");
    assert_eq!(states[1]["error_message"], "interrupted: server restarted");
    assert_eq!(
        states[2]["status"], "completed",
        "pending within its ttl runs after the restart"
    );
    let (_, open) = restarted
        .get("/api/v1/commands?status=in_progress", &f.token)
        .await?;
    assert_eq!(open["commands"], json!([]));
    // A failed command's stream ends with the failure.
    let (events, close) =
        stream(&restarted, &rows[0].command_id.to_string(), &f.token, false).await?;
    assert_eq!(
        events,
        [json!({"event": "failed", "command_id": rows[0].command_id,
                "error_message": "interrupted: server restarted"})]
    );
    assert_eq!(close, Some(CloseCode::Normal));
    restarted.server.shutdown().await?;
    tokio::time::sleep(Duration::from_millis(1)).await;
    Ok(())
}

#[tokio::test]
async fn sovd_resources_answer_with_the_final_response_or_202() -> TestResult {
    let (server, f) = mocked_fleet(0, "alice").await?;
    let base = format!("/api/v1/vehicles/{}/components", f.vehicle);
    let (status, body) = server
        .get(&format!("{base}/engine/faults"), &f.token)
        .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "completed");
    assert_eq!(body["response"]["ecu"], "engine");
    assert_eq!(body["response"]["dtcs"][0]["dtcCode"], "P0420");
    let id = text(&body, "command_id")?;
    assert_eq!(body["href"], format!("/api/v1/commands/{id}"));
    let (status, command) = server
        .get(&format!("/api/v1/commands/{id}"), &f.token)
        .await?;
    assert_eq!(
        (status, command["command_name"].as_str()),
        (StatusCode::OK, Some("ReadDTC"))
    );

    let (status, body) = server
        .get(&format!("{base}/abs/data/0xF190"), &f.token)
        .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["response"]["ecu"], "abs");
    assert_eq!(body["response"]["ascii"], "1HGCM82633A004352");
    let (status, body) = server
        .call(
            reqwest::Method::DELETE,
            &format!("{base}/engine/faults"),
            Some(&f.token),
            None,
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["response"]["cleared"], true);
    // By request id when the ECU is not in the list.
    let (status, body) = server
        .get(&format!("{base}/0x7E2/faults"), &f.token)
        .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["response"]["ecu"], "0x7E2");

    for (path, want) in [
        (format!("{base}/gearbox/faults"), StatusCode::NOT_FOUND),
        (
            format!("{base}/engine/data/nope"),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            format!("{base}/engine/faults?wait=99"),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!(
                "/api/v1/vehicles/{}/components/engine/faults",
                uuid::Uuid::new_v4()
            ),
            StatusCode::NOT_FOUND,
        ),
    ] {
        let (status, body) = server.get(&path, &f.token).await?;
        assert_eq!(status, want, "{path}: {body}");
    }
    server.server.shutdown().await?;

    // A slow vehicle: 202 with the command's link, which completes later.
    let slow = TestServer::start_with(mock(1500)).await?;
    let f = fleet(&slow, "alice").await?;
    let (status, body) = slow
        .get(
            &format!(
                "/api/v1/vehicles/{}/components/engine/faults?wait=0.1",
                f.vehicle
            ),
            &f.token,
        )
        .await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = text(&body, "command_id")?;
    assert!(text(&body, "stream_url")?.ends_with(&format!("/ws/responses/{id}")));
    assert_eq!(ended(&slow, &f.token, &id).await?["status"], "completed");
    slow.stop().await
}
