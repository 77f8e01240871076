//! The `CanRelayFrame` JSON object: one CAN frame on the data plane between agent and server.
//!
//! ```json
//! {"groupId":"g-42","direction":"rx","ts":1600000000000001000,"canId":2016,
//!  "isExtended":false,"dlc":8,"dataHex":"0210030000000000"}
//! ```
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `groupId` | string, 1–128 bytes | the relay group the frame travels in |
//! | `direction` | `"rx"` \| `"tx"` \| `"unknown"` | as seen by the dongle: `rx` it read the frame from its bus, `tx` it transmitted it |
//! | `ts` | integer | nanoseconds since the Unix epoch (never a float, never a string) |
//! | `canId` | integer | identifier without flag bits (≤ 0x7FF unless `isExtended`); for error frames the error class bits |
//! | `isExtended` | bool | 29-bit identifier (always `false` for error frames) |
//! | `dlc` | integer | data length in **bytes** (0–8 classic, FD lengths up to 64); for remote frames the requested length |
//! | `dataHex` | string | the payload, hex (upper case written, either case read), empty for remote frames; exactly `2 × dlc` digits otherwise |
//! | `data` | bytes (MessagePack only) | the payload in a binary encoding, in place of `dataHex`: exactly `dlc` bytes, none for remote frames |
//! | `channel` | string, optional | interface name on the dongle (omitted when unknown) |
//! | `isFd`, `brs`, `esi` | bool, optional (default `false`) | CAN FD frame and its flags; `brs`/`esi` only with `isFd` |
//! | `isRemote`, `isError` | bool, optional (default `false`) | remote (RTR) frame; error frame |
//! | `rawDlc` | integer, optional | the raw DLC 9–15 of an 8-byte classic frame (Linux `len8_dlc`) |
//!
//! Decoding is strict: unknown fields, wrong types, a length that disagrees with `dataHex`,
//! impossible flag combinations and out-of-range identifiers are all refused with
//! [`Error::Malformed`].
//!
//! **Payload bytes stay bytes.** In memory the payload is [`CanRelayFrame::data`], bytes. Hex is
//! only for people: a human-readable serializer (JSON, Python dicts) writes and reads it as the
//! `dataHex` string; a binary one (MessagePack, `rmp-serde`, and so the stored form of a relayed
//! frame) as the field `data`, a MessagePack `bin`. Each encoding takes only its own form of the
//! value (a hex string in MessagePack or a byte array in JSON is refused).

use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

use crate::error::Error;
use crate::error_frame::ErrorFrame;
use crate::frame::{
    CanFrame, CanId, CanRecord, Channel, DataFrame, Direction, FdFlags, FdFrame, RemoteFrame,
};

const PROTOCOL: &str = "CanRelayFrame JSON";
/// Longest accepted `groupId`, in bytes.
pub const MAX_GROUP_ID_LEN: usize = 128;

/// One frame as a JSON object on the data plane. Field meanings are in the module docs; the
/// serialized form is written by hand ([`Serialize`] below) because the payload's field name
/// depends on the encoding (`dataHex` for people, `data` in binary encodings).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CanRelayFrame {
    /// The relay group.
    pub group_id: String,
    /// `rx`, `tx` or `unknown`, as seen by the dongle.
    pub direction: RelayDirection,
    /// Nanoseconds since the Unix epoch.
    pub ts: u64,
    /// Identifier without flag bits, or error class bits.
    pub can_id: u32,
    /// 29-bit identifier.
    pub is_extended: bool,
    /// Data length in bytes (requested length for remote frames).
    pub dlc: u8,
    /// Payload bytes (`dataHex` in JSON, `data` in MessagePack).
    #[serde(
        rename = "dataHex",
        alias = "data",
        deserialize_with = "payload::deserialize"
    )]
    pub data: Vec<u8>,
    /// Interface name on the dongle.
    #[serde(default)]
    pub channel: Option<String>,
    /// CAN FD frame.
    #[serde(default)]
    pub is_fd: bool,
    /// CAN FD bit rate switch.
    #[serde(default)]
    pub brs: bool,
    /// CAN FD error state indicator.
    #[serde(default)]
    pub esi: bool,
    /// Remote (RTR) frame.
    #[serde(default)]
    pub is_remote: bool,
    /// Error frame.
    #[serde(default)]
    pub is_error: bool,
    /// Raw DLC 9–15 of an 8-byte classic frame.
    #[serde(default)]
    pub raw_dlc: Option<u8>,
}

impl Serialize for CanRelayFrame {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let human = serializer.is_human_readable();
        let optional = [
            self.channel.is_some(),
            self.is_fd,
            self.brs,
            self.esi,
            self.is_remote,
            self.is_error,
            self.raw_dlc.is_some(),
        ];
        let fields = 7 + optional.iter().filter(|present| **present).count();
        // The map's length goes first in MessagePack: skipped fields are not counted.
        let mut s = serializer.serialize_struct("CanRelayFrame", fields)?;
        s.serialize_field("groupId", &self.group_id)?;
        s.serialize_field("direction", &self.direction)?;
        s.serialize_field("ts", &self.ts)?;
        s.serialize_field("canId", &self.can_id)?;
        s.serialize_field("isExtended", &self.is_extended)?;
        s.serialize_field("dlc", &self.dlc)?;
        if human {
            s.serialize_field("dataHex", &hex::encode_upper(&self.data))?;
        } else {
            s.serialize_field("data", serde_bytes::Bytes::new(&self.data))?;
        }
        if let Some(channel) = &self.channel {
            s.serialize_field("channel", channel)?;
        }
        for (name, flag) in [
            ("isFd", self.is_fd),
            ("brs", self.brs),
            ("esi", self.esi),
            ("isRemote", self.is_remote),
            ("isError", self.is_error),
        ] {
            if flag {
                s.serialize_field(name, &true)?;
            }
        }
        if let Some(raw) = self.raw_dlc {
            s.serialize_field("rawDlc", &raw)?;
        }
        s.end()
    }
}

/// The payload's value: a hex string from a human-readable deserializer, bytes from a binary
/// one; anything else is refused.
mod payload {
    use std::fmt;

    use serde::Deserializer;
    use serde::de::{Error, Visitor};

    struct Hex;

    impl Visitor<'_> for Hex {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("the payload as a hex string")
        }

        fn visit_str<E: Error>(self, v: &str) -> Result<Vec<u8>, E> {
            hex::decode(v).map_err(|e| E::custom(format!("dataHex: {e}")))
        }
    }

    struct Bytes;

    impl Visitor<'_> for Bytes {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("the payload as bytes")
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        if d.is_human_readable() {
            d.deserialize_str(Hex)
        } else {
            d.deserialize_bytes(Bytes)
        }
    }
}

/// The `direction` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayDirection {
    /// The dongle received the frame from its bus.
    Rx,
    /// The dongle transmitted the frame.
    Tx,
    /// Not known.
    Unknown,
}

impl From<Direction> for RelayDirection {
    fn from(d: Direction) -> Self {
        match d {
            Direction::Rx => RelayDirection::Rx,
            Direction::Tx => RelayDirection::Tx,
            Direction::Unknown => RelayDirection::Unknown,
        }
    }
}

impl From<RelayDirection> for Direction {
    fn from(d: RelayDirection) -> Self {
        match d {
            RelayDirection::Rx => Direction::Rx,
            RelayDirection::Tx => Direction::Tx,
            RelayDirection::Unknown => Direction::Unknown,
        }
    }
}

fn malformed(reason: impl Into<String>) -> Error {
    Error::Malformed {
        protocol: PROTOCOL,
        reason: reason.into(),
    }
}

impl CanRelayFrame {
    /// The relay frame for `record` in group `group_id`.
    pub fn from_record(group_id: &str, record: &CanRecord) -> Self {
        let f = &record.frame;
        let (can_id, is_extended) = match f.id() {
            Some(id) => (id.raw(), id.is_extended()),
            None => (f.linux_can_id() & crate::frame::MAX_EXTENDED_ID, false),
        };
        let (brs, esi) = match f {
            CanFrame::Fd(fd) => (fd.flags().brs, fd.flags().esi),
            _ => (false, false),
        };
        Self {
            group_id: group_id.to_owned(),
            direction: record.direction.into(),
            ts: record.ts_ns,
            can_id,
            is_extended,
            dlc: f.len() as u8,
            data: f.data().to_vec(),
            channel: (!record.channel.is_empty()).then(|| record.channel.to_string()),
            is_fd: f.is_fd(),
            brs,
            esi,
            is_remote: matches!(f, CanFrame::Remote(_)),
            is_error: matches!(f, CanFrame::Error(_)),
            raw_dlc: match f {
                CanFrame::Data(d) => d.raw_dlc(),
                _ => None,
            },
        }
    }

    /// The frame this object describes, validated.
    pub fn frame(&self) -> Result<CanFrame, Error> {
        let kinds = [self.is_fd, self.is_remote, self.is_error]
            .iter()
            .filter(|b| **b)
            .count();
        if kinds > 1 {
            return Err(malformed(
                "at most one of isFd, isRemote, isError may be true",
            ));
        }
        if (self.brs || self.esi) && !self.is_fd {
            return Err(malformed("brs/esi are only valid with isFd"));
        }
        if self.raw_dlc.is_some() && (self.is_fd || self.is_remote || self.is_error) {
            return Err(malformed("rawDlc is only valid on classic data frames"));
        }
        if self.is_error && self.is_extended {
            return Err(malformed(
                "error frames carry class bits, not an extended identifier",
            ));
        }
        if self.is_remote {
            if !self.data.is_empty() {
                return Err(malformed("remote frames carry no dataHex"));
            }
            let id = CanId::new(self.can_id, self.is_extended)?;
            return Ok(CanFrame::Remote(RemoteFrame::new(id, self.dlc as usize)?));
        }
        if self.data.len() != self.dlc as usize {
            return Err(malformed(format!(
                "dlc {} but the payload (dataHex) has {} bytes",
                self.dlc,
                self.data.len()
            )));
        }
        let data = self.data.as_slice();
        if self.is_error {
            return Ok(CanFrame::Error(ErrorFrame::new(self.can_id, data)?));
        }
        let id = CanId::new(self.can_id, self.is_extended)?;
        if self.is_fd {
            return Ok(CanFrame::Fd(FdFrame::new(
                id,
                data,
                FdFlags {
                    brs: self.brs,
                    esi: self.esi,
                },
            )?));
        }
        let frame = DataFrame::new(id, data)?;
        Ok(CanFrame::Data(match self.raw_dlc {
            Some(raw) => frame.with_raw_dlc(raw)?,
            None => frame,
        }))
    }

    /// The record this object describes; `default_channel` names it when `channel` is absent.
    pub fn to_record(&self, default_channel: &Channel) -> Result<CanRecord, Error> {
        let channel = match &self.channel {
            Some(c) => Channel::from(c.as_str()),
            None => default_channel.clone(),
        };
        Ok(CanRecord::new(
            self.ts,
            channel,
            self.direction.into(),
            self.frame()?,
        ))
    }

    /// Serialize to compact JSON.
    pub fn encode(&self) -> String {
        // Serializing a struct of strings, integers and bools cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parse and validate one JSON object.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let frame: Self = serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
        frame.validate()?;
        Ok(frame)
    }

    /// Checks what the field types alone do not: the `groupId` length and that the fields
    /// make a valid frame (for a value that was deserialized some other way).
    pub fn validate(&self) -> Result<(), Error> {
        if self.group_id.is_empty() || self.group_id.len() > MAX_GROUP_ID_LEN {
            return Err(malformed(format!(
                "groupId must be 1–{MAX_GROUP_ID_LEN} bytes"
            )));
        }
        self.frame()?;
        Ok(())
    }
}
