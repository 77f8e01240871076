//! Encoding, decoding and validation of data-plane messages.

use std::borrow::Cow;

use serde::Deserialize;

use super::messages::{Encoding, FrameBatch, GapNotice, Hello, Message};
use super::{
    MAX_BATCH_FRAMES, MAX_ERROR_MESSAGE_LEN, MAX_GROUP_ID_LEN, MAX_MESSAGE_BYTES,
    SUPPORTED_VERSIONS,
};
use crate::error::Error;

/// Decodes and validates one message. Never panics; every failure is a typed [`Error`]:
/// [`Error::MessageTooLarge`], [`Error::ProtocolDecode`] (not the message grammar),
/// [`Error::UnsupportedProtocolVersion`] (a `hello` with a version this crate does not speak —
/// detected even when the rest of that hello has an unknown shape) or
/// [`Error::ProtocolInvalid`] (well-formed but breaking a rule, e.g. an empty batch).
pub fn decode(bytes: &[u8], encoding: Encoding) -> Result<Message, Error> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(Error::MessageTooLarge {
            size: bytes.len(),
            max: MAX_MESSAGE_BYTES,
        });
    }
    let message = match parse_message(bytes, encoding) {
        Ok(message) => message,
        Err(reason) => {
            // A hello from a newer version may not match our grammar at all: name the version
            // problem rather than the shape problem.
            if let Some(version) = probe_hello_version(bytes, encoding) {
                check_version(version)?;
            }
            return Err(Error::ProtocolDecode {
                encoding: encoding.as_str(),
                reason,
            });
        }
    };
    validate(&message)?;
    Ok(message)
}

/// Decodes the first message of a connection, which must be a JSON `hello`.
pub fn decode_hello(bytes: &[u8]) -> Result<Hello, Error> {
    match decode(bytes, Encoding::Json)? {
        Message::Hello(hello) => Ok(hello),
        other => Err(Error::ProtocolInvalid {
            message_type: other.type_name(),
            reason: "the first message must be `hello`".to_owned(),
        }),
    }
}

/// Encodes a message (JSON text or MessagePack with named fields).
pub fn encode(message: &Message, encoding: Encoding) -> Result<Vec<u8>, Error> {
    match encoding {
        Encoding::Json => serde_json::to_vec(message).map_err(|e| Error::ProtocolEncode {
            encoding: encoding.as_str(),
            reason: e.to_string(),
        }),
        Encoding::Msgpack => rmp_serde::to_vec_named(message).map_err(|e| Error::ProtocolEncode {
            encoding: encoding.as_str(),
            reason: e.to_string(),
        }),
    }
}

/// Picks the encoding for a connection: the first of the agent's `offered` encodings that the
/// server `supported`s, falling back to JSON (which every peer speaks).
pub fn negotiate_encoding(offered: &[Encoding], supported: &[Encoding]) -> Encoding {
    offered
        .iter()
        .copied()
        .find(|e| supported.contains(e))
        .unwrap_or(Encoding::Json)
}

/// A message's `type` field alone (borrowed from the input unless JSON escapes it).
#[derive(Deserialize)]
struct TypeProbe<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
}

fn parse<'de, T: Deserialize<'de>>(bytes: &'de [u8], encoding: Encoding) -> Result<T, String> {
    match encoding {
        Encoding::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        Encoding::Msgpack => rmp_serde::from_slice(bytes).map_err(|e| e.to_string()),
    }
}

/// Parses a message in two passes: its `type`, then the whole message as that type's struct
/// (which ignores the `type` field). Deriving `Deserialize` for the internally tagged
/// [`Message`] would buffer every message, frames and all, in serde's generic `Content` tree
/// before building the struct — the single largest cost of the server's receive path.
fn parse_message(bytes: &[u8], encoding: Encoding) -> Result<Message, String> {
    let TypeProbe { kind } = parse(bytes, encoding)?;
    match &*kind {
        "hello" => parse(bytes, encoding).map(Message::Hello),
        "welcome" => parse(bytes, encoding).map(Message::Welcome),
        "frames" => parse(bytes, encoding).map(Message::Frames),
        "ack" => parse(bytes, encoding).map(Message::Ack),
        "gap" => parse(bytes, encoding).map(Message::Gap),
        "group_state" => parse(bytes, encoding).map(Message::GroupState),
        "error" => parse(bytes, encoding).map(Message::Error),
        other => Err(format!(
            "unknown variant `{other}`, expected one of `hello`, `welcome`, `frames`, `ack`, \
             `gap`, `group_state`, `error`"
        )),
    }
}

#[derive(Deserialize)]
struct HelloProbe<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    version: Option<u64>,
}

fn probe_hello_version(bytes: &[u8], encoding: Encoding) -> Option<u64> {
    let probe: HelloProbe<'_> = parse(bytes, encoding).ok()?;
    if probe.kind == "hello" {
        probe.version
    } else {
        None
    }
}

fn check_version(version: u64) -> Result<(), Error> {
    if SUPPORTED_VERSIONS.iter().any(|&v| u64::from(v) == version) {
        Ok(())
    } else {
        Err(Error::UnsupportedProtocolVersion {
            got: version,
            supported: SUPPORTED_VERSIONS,
        })
    }
}

fn invalid(message_type: &'static str, reason: impl Into<String>) -> Error {
    Error::ProtocolInvalid {
        message_type,
        reason: reason.into(),
    }
}

fn validate(message: &Message) -> Result<(), Error> {
    match message {
        Message::Hello(hello) => validate_hello(hello),
        Message::Welcome(welcome) => check_version(u64::from(welcome.version)),
        Message::Frames(batch) => validate_batch(batch),
        Message::Ack(_) | Message::GroupState(_) => Ok(()),
        Message::Gap(gap) => validate_gap(gap),
        Message::Error(err) => {
            if err.message.len() > MAX_ERROR_MESSAGE_LEN {
                Err(invalid(
                    "error",
                    format!("message longer than {MAX_ERROR_MESSAGE_LEN} bytes"),
                ))
            } else {
                Ok(())
            }
        }
    }
}

fn validate_hello(hello: &Hello) -> Result<(), Error> {
    check_version(u64::from(hello.version))?;
    if hello.group_id.is_empty() || hello.group_id.len() > MAX_GROUP_ID_LEN {
        return Err(invalid(
            "hello",
            format!("group_id must be 1..={MAX_GROUP_ID_LEN} bytes"),
        ));
    }
    if hello.group_id.chars().any(|c| c.is_control() || c == ':') {
        return Err(invalid(
            "hello",
            "group_id must not contain control characters or ':'",
        ));
    }
    if hello.encodings.is_empty() {
        return Err(invalid("hello", "encodings must not be empty"));
    }
    Ok(())
}

fn validate_batch(batch: &FrameBatch) -> Result<(), Error> {
    if batch.frames.is_empty() {
        return Err(invalid("frames", "a batch carries at least one frame"));
    }
    if batch.frames.len() > MAX_BATCH_FRAMES {
        return Err(invalid(
            "frames",
            format!("a batch carries at most {MAX_BATCH_FRAMES} frames"),
        ));
    }
    if batch.first_seq == 0 {
        return Err(invalid("frames", "sequence numbers start at 1"));
    }
    if batch.last_seq().is_none() {
        return Err(invalid("frames", "sequence numbers overflow u64"));
    }
    for (index, frame) in batch.frames.iter().enumerate() {
        if frame.group_id.is_empty() || frame.group_id.len() > MAX_GROUP_ID_LEN {
            return Err(invalid(
                "frames",
                format!("frame {index}: groupId must be 1..={MAX_GROUP_ID_LEN} bytes"),
            ));
        }
        if let Err(e) = frame.frame() {
            return Err(invalid("frames", format!("frame {index}: {e}")));
        }
    }
    Ok(())
}

fn validate_gap(gap: &GapNotice) -> Result<(), Error> {
    if gap.from == 0 || gap.from > gap.to {
        return Err(invalid("gap", "need 1 <= from <= to"));
    }
    if gap.to - gap.from + 1 != gap.count {
        return Err(invalid("gap", "count must equal to - from + 1"));
    }
    Ok(())
}

/// Fuzzing entry point (the `data_plane_message` target): decodes `data` as JSON and as
/// MessagePack, and checks that whatever decodes re-encodes to a message that decodes to
/// itself. Panics only on such a round-trip mismatch, which would be a bug. Built only for tests
/// and `cargo fuzz` (`--cfg fuzzing`).
#[cfg(any(test, fuzzing))]
pub fn fuzz_decode(data: &[u8]) {
    for encoding in [Encoding::Json, Encoding::Msgpack] {
        if let Ok(message) = decode(data, encoding) {
            let again = encode(&message, encoding).and_then(|bytes| decode(&bytes, encoding));
            assert!(
                matches!(&again, Ok(m) if *m == message),
                "round trip changed {message:?}: {again:?}"
            );
            // Items stored from the received bytes hold exactly the frames decoded.
            if let Message::Frames(batch) = &message {
                let bytes = bytes::Bytes::copy_from_slice(data);
                let items = batch.to_items_from(&bytes, encoding);
                let stored: Option<Vec<_>> = items.ok().and_then(|items| {
                    items
                        .iter()
                        .map(|i| super::decode_stored_frame(&i.payload).ok())
                        .collect()
                });
                assert_eq!(stored.as_deref(), Some(&batch.frames[..]));
            }
        }
    }
}
