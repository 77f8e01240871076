//! Bad input on `/ws/data`: every refusal has the protocol's error code, nothing is stored, and
//! the server keeps serving.

#[path = "server_support/data_client.rs"]
mod data_client;
mod server_support;

use data_client::{DataClient, Received};
use relay_core::engine::Side;
use relay_core::log::{SqliteStreamLog, SqliteSynchronous, StreamLog};
use relay_core::protocol::{Encoding, ErrorCode, Message};
use reqwest::StatusCode;
use serde_json::json;
use server_support::{TestResult, TestServer};
use tokio_tungstenite::tungstenite::Message as WsMessage;

const JSON: &[Encoding] = &[Encoding::Json];

/// Sends `first` (raw text) and optionally a hello before it; expects an error with `code`
/// followed by the server closing the connection.
async fn refused(client: &mut DataClient, raw: &str, code: ErrorCode) -> TestResult<String> {
    client.send_text(raw).await?;
    let seen = client.recv_until_closed().await?;
    let errors: Vec<_> = seen
        .iter()
        .filter_map(|m| match m {
            Message::Error(err) => Some(err.clone()),
            _ => None,
        })
        .collect();
    match errors.as_slice() {
        [err] if err.code == code => Ok(err.message.clone()),
        _ => Err(format!("{raw}: expected one {code:?} error then a close, got {seen:?}").into()),
    }
}

#[tokio::test]
async fn malformed_and_out_of_place_messages_get_the_right_codes() -> TestResult {
    let srv = TestServer::start().await?;
    let (_, agent, id) = srv.user_with_active_group("mallory").await?;

    // Before the handshake.
    let hello = |version: u64| {
        json!({"type":"hello","version":version,"group_id":id,"side":"a","resume":{"rx_seq":0}})
            .to_string()
    };
    let cases: Vec<(String, ErrorCode)> = vec![
        ("{not json".to_owned(), ErrorCode::BadMessage),
        (
            r#"{"type":"ack","up_to":1}"#.to_owned(),
            ErrorCode::HandshakeRequired,
        ),
        (
            r#"{"type":"subscribe","what":1}"#.to_owned(),
            ErrorCode::BadMessage,
        ),
        (
            r#"{"type":"hello","version":1,"group_id":5,"side":"a","resume":{"rx_seq":0}}"#
                .to_owned(),
            ErrorCode::BadMessage,
        ),
        (hello(7), ErrorCode::UnsupportedVersion),
        (
            r#"{"type":"hello","version":9,"something":["new"]}"#.to_owned(),
            ErrorCode::UnsupportedVersion,
        ),
    ];
    for (raw, code) in &cases {
        let mut client = DataClient::connect(&srv.base, &agent).await?;
        let message = refused(&mut client, raw, *code).await?;
        if raw == &hello(7) {
            assert_eq!(
                message,
                "protocol version 7 is not supported; this server speaks [1]"
            );
        }
    }

    // After the handshake.
    let cases = [
        (
            r#"{"type":"frames","first_seq":"x","frames":[]}"#,
            ErrorCode::BadMessage,
        ),
        (
            r#"{"type":"frames","first_seq":1,"frames":[]}"#,
            ErrorCode::BadMessage,
        ),
        (
            r#"{"type":"frames","first_seq":1,"frames":[{"groupId":"g","direction":"rx","ts":1,"canId":1,"isExtended":false,"dlc":8,"dataHex":"01"}]}"#,
            ErrorCode::BadMessage,
        ),
        (r#"{"type":"teleport"}"#, ErrorCode::BadMessage),
        (r#"{"type":"ack","up_to":-1}"#, ErrorCode::BadMessage),
        (r#"{"type":"ack","up_to":99}"#, ErrorCode::CursorAhead),
        (
            r#"{"type":"welcome","version":1,"encoding":"json","tx_acked":0,"rx_from":0,"mode":"active"}"#,
            ErrorCode::BadMessage,
        ),
        (&hello(1), ErrorCode::HandshakeRequired),
        ("[1,2,3]", ErrorCode::BadMessage),
    ];
    for (raw, code) in cases {
        let (mut client, _) = DataClient::open(&srv.base, &agent, &id, Side::A, 0, JSON).await?;
        refused(&mut client, raw, code).await?;
    }

    // A resume cursor beyond anything stored plus the cut-through window (default 4096).
    let mut client = DataClient::connect(&srv.base, &agent).await?;
    match client.hello(&id, Side::B, 100_000, JSON).await? {
        Message::Error(err) => assert_eq!(err.code, ErrorCode::CursorAhead),
        other => return Err(format!("expected cursor_ahead, got {other:?}").into()),
    }

    // A msgpack connection still reads JSON text frames.
    let (mut client, _) =
        DataClient::open(&srv.base, &agent, &id, Side::A, 0, &[Encoding::Msgpack]).await?;
    client.encoding = Encoding::Json;
    client.send(&data_client::batch(1, 1)).await?;
    let seen = client.recv_until(|m| matches!(m, Message::Ack(_))).await?;
    assert!(matches!(seen.last(), Some(Message::Ack(ack)) if ack.up_to == 1));
    // Binary garbage, and an empty text frame, after a msgpack handshake: each closes its
    // connection with bad_message.
    for garbage in [Some(&[0xc1_u8, 0xff, 0x00][..]), None] {
        let (mut client, _) =
            DataClient::open(&srv.base, &agent, &id, Side::A, 0, &[Encoding::Msgpack]).await?;
        match garbage {
            Some(bytes) => client.send_binary(bytes).await?,
            None => client.send_text("").await?,
        }
        let seen = client.recv_until_closed().await?;
        assert!(
            seen.iter()
                .any(|m| matches!(m, Message::Error(e) if e.code == ErrorCode::BadMessage)),
            "{garbage:?}: {seen:?}"
        );
    }

    // Nothing but the one good frame was stored, and the server still serves.
    let log = SqliteStreamLog::open(
        srv.dir.path().join("data").join("streams.db"),
        SqliteSynchronous::Normal,
    )
    .await?;
    assert_eq!(
        log.backlog(&format!("group:{id}:a_to_b"), 0).await?.count,
        1
    );
    let health = srv.fetch("/healthz").await?;
    assert_eq!(health.status(), StatusCode::OK);
    let (mut a, welcome) = DataClient::open(&srv.base, &agent, &id, Side::A, 0, JSON).await?;
    assert_eq!(welcome.tx_acked, 1);
    let (mut b, _) = DataClient::open(&srv.base, &agent, &id, Side::B, 0, JSON).await?;
    a.send_frames(2, 3).await?;
    let mut got = Received::default();
    b.consume_until(3, &mut got).await?;
    assert_eq!(got.seqs, vec![1, 2, 3]);
    srv.assert_metrics(&[r#"tether_server_relay_errors_total{code="bad_message"}"#])
        .await?;
    Ok(())
}

#[tokio::test]
async fn out_of_order_batches_are_refused_but_the_connection_stays() -> TestResult {
    let srv = TestServer::start().await?;
    let (_, agent, id) = srv.user_with_active_group("oscar").await?;
    let (mut a, _) = DataClient::open(&srv.base, &agent, &id, Side::A, 0, JSON).await?;
    a.send_acked(1, 3).await?;
    a.send_frames(10, 12).await?;
    let seen = a.recv_until(|m| matches!(m, Message::Error(_))).await?;
    assert!(
        matches!(seen.last(), Some(Message::Error(e)) if e.code == ErrorCode::SeqOutOfOrder),
        "{seen:?}"
    );
    assert_eq!(a.send_acked(4, 5).await?, 5);
    Ok(())
}

#[tokio::test]
async fn oversized_messages_get_message_too_big_then_close_1009_and_are_counted() -> TestResult {
    let srv = TestServer::start().await?;
    let (_, agent, id) = srv.user_with_active_group("olga").await?;
    let over = relay_core::protocol::MAX_MESSAGE_BYTES + 64 * 1024;
    let just_over = relay_core::protocol::MAX_MESSAGE_BYTES + 16;

    // As the first message: an error and a close frame, not a dropped TCP connection.
    let client = DataClient::connect(&srv.base, &agent).await?;
    let (seen, code) = client
        .send_while_reading(WsMessage::Binary(vec![0x90; over].into()))
        .await?;
    assert_eq!(code, Some(1009), "{seen:?}");
    assert!(
        matches!(seen.as_slice(), [Message::Error(e)] if e.code == ErrorCode::MessageTooBig),
        "{seen:?}"
    );

    // After the handshake, binary above the WebSocket limit and JSON just above the
    // protocol's limit.
    for (encoding, big) in [
        (Encoding::Msgpack, vec![0x90; over]),
        (Encoding::Json, vec![b' '; just_over]),
    ] {
        let (client, _) = DataClient::open(&srv.base, &agent, &id, Side::A, 0, &[encoding]).await?;
        let message = match encoding {
            Encoding::Json => WsMessage::Text(String::from_utf8(big)?.into()),
            Encoding::Msgpack => WsMessage::Binary(big.into()),
        };
        let (seen, code) = client.send_while_reading(message).await?;
        assert_eq!(code, Some(1009), "{encoding:?}: {seen:?}");
        let error = seen.iter().find_map(|m| match m {
            Message::Error(e) => Some(e.clone()),
            _ => None,
        });
        let error = error.ok_or_else(|| format!("{encoding:?}: no error in {seen:?}"))?;
        assert_eq!(error.code, ErrorCode::MessageTooBig);
        assert!(error.message.contains("4194304"), "{}", error.message);
    }
    srv.assert_metrics(&[r#"tether_server_relay_errors_total{code="message_too_big"} 3"#])
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_frame_naming_another_group_is_refused_counted_and_not_stored() -> TestResult {
    let srv = TestServer::start().await?;
    let (_, agent, id) = srv.user_with_active_group("gina").await?;
    let (mut client, _) = DataClient::open(&srv.base, &agent, &id, Side::A, 0, JSON).await?;
    let mut foreign = data_client::batch(1, 2);
    if let Message::Frames(batch) = &mut foreign {
        batch.frames[0].group_id = id.clone();
        batch.frames[1].group_id = "7d1c1c5e-0000-4000-8000-000000000000".to_owned();
    }
    client.send_raw(&foreign).await?;
    let seen = client
        .recv_until(|m| matches!(m, Message::Error(_)))
        .await?;
    match seen.last() {
        Some(Message::Error(e)) => {
            assert_eq!(e.code, ErrorCode::GroupMismatch);
            assert!(e.message.contains("frame 1"), "{}", e.message);
        }
        other => return Err(format!("expected group_mismatch, got {other:?}").into()),
    }
    // The connection stays; the next good batch starts at 1 because nothing was stored.
    client.send_frames(1, 2).await?;
    let seen = client.recv_until(|m| matches!(m, Message::Ack(_))).await?;
    assert!(matches!(seen.last(), Some(Message::Ack(ack)) if ack.up_to == 2));
    srv.assert_metrics(&[
        r#"tether_server_relay_errors_total{code="group_mismatch"} 1"#,
        r#"tether_server_relay_frames_refused_total{code="group_mismatch"} 2"#,
    ])
    .await?;
    Ok(())
}
