//! Signal decoding with a DBC file (`DBC_PATH`), parsed by the `can-dbc` crate.
//!
//! `can-dbc` parses; this module extracts the signals of a frame: Intel (little-endian) and
//! Motorola (big-endian, DBC's "sawtooth" start bit) layouts, signed and unsigned raw values,
//! `factor` and `offset`, and simple multiplexing (a multiplexed signal is decoded only when the
//! multiplexor holds its value). A signal that does not fit in the frame's data is left out;
//! a frame whose id the DBC does not know decodes to nothing. Float signals (`SIG_VALTYPE_`)
//! are decoded as integers.

use std::collections::HashMap;
use std::path::Path;

use can_dbc::{ByteOrder, Dbc, MessageId, MultiplexIndicator, Signal, ValueType};
use can_io::CanFrame;
use serde_json::{Map, Value, json};

/// Why a DBC file could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbcError {
    /// The file could not be read.
    #[error("reading the DBC file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a DBC file `can-dbc` understands.
    #[error("parsing the DBC file {path}: {detail}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message.
        detail: String,
    },
}

/// One frame decoded with the DBC.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedMessage {
    /// The message name.
    pub message: String,
    /// The frame id (without flag bits).
    pub id: u32,
    /// `{name: {"value": V, "unit": U}}`.
    pub signals: Map<String, Value>,
}

/// The messages of a DBC file, by frame id.
#[derive(Debug, Clone)]
pub struct DbcDecoder {
    messages: HashMap<(u32, bool), (String, Vec<Signal>)>,
}

impl DbcDecoder {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, DbcError> {
        let text = std::fs::read(path).map_err(|source| DbcError::Read {
            path: path.display().to_string(),
            source,
        })?;
        // DBC files are often Latin-1: keep the ASCII structure, replace the rest.
        let text = String::from_utf8_lossy(&text);
        Self::parse(&text).map_err(|detail| DbcError::Parse {
            path: path.display().to_string(),
            detail,
        })
    }

    /// Parses DBC text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let dbc = Dbc::try_from(text).map_err(|e| format!("{e:?}"))?;
        let messages = dbc
            .messages
            .into_iter()
            .map(|m| {
                let key = match m.id {
                    MessageId::Standard(id) => (u32::from(id), false),
                    MessageId::Extended(id) => (id, true),
                };
                (key, (m.name, m.signals))
            })
            .collect();
        Ok(DbcDecoder { messages })
    }

    /// How many messages the DBC defines.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether the DBC defines no message.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Decodes a data frame (classic or FD) the DBC knows; `None` otherwise.
    pub fn decode(&self, frame: &CanFrame) -> Option<DecodedMessage> {
        let id = match frame {
            CanFrame::Data(_) | CanFrame::Fd(_) => frame.id()?,
            _ => return None,
        };
        let (name, signals) = self.messages.get(&(id.raw(), id.is_extended()))?;
        let data = frame.data();
        let mux = signals
            .iter()
            .find(|s| {
                matches!(
                    s.multiplexer_indicator,
                    MultiplexIndicator::Multiplexor
                        | MultiplexIndicator::MultiplexorAndMultiplexedSignal(_)
                )
            })
            .and_then(|s| raw_value(s, data));
        let mut out = Map::new();
        for signal in signals {
            let wanted = match signal.multiplexer_indicator {
                MultiplexIndicator::MultiplexedSignal(v)
                | MultiplexIndicator::MultiplexorAndMultiplexedSignal(v) => {
                    mux.is_some_and(|m| m == i128::from(v))
                }
                MultiplexIndicator::Plain | MultiplexIndicator::Multiplexor => true,
            };
            if !wanted {
                continue;
            }
            let Some(raw) = raw_value(signal, data) else {
                continue;
            };
            let physical = raw as f64 * signal.factor + signal.offset;
            let value = if physical.fract() == 0.0 && physical.abs() < 9_007_199_254_740_992.0 {
                json!(physical as i64)
            } else {
                json!(physical)
            };
            out.insert(
                signal.name.clone(),
                json!({ "value": value, "unit": signal.unit }),
            );
        }
        Some(DecodedMessage {
            message: name.clone(),
            id: id.raw(),
            signals: out,
        })
    }
}

fn bit_at(data: &[u8], bit: u64) -> Option<u64> {
    let byte = usize::try_from(bit / 8).ok()?;
    data.get(byte).map(|b| u64::from((b >> (bit % 8)) & 1))
}

/// The raw (integer) value of `signal` in `data`, sign-extended; `None` if it does not fit.
fn raw_value(signal: &Signal, data: &[u8]) -> Option<i128> {
    let size = signal.size;
    if size == 0 || size > 64 {
        return None;
    }
    let mut value: u64 = 0;
    match signal.byte_order {
        ByteOrder::LittleEndian => {
            for i in 0..size {
                value |= bit_at(data, signal.start_bit.checked_add(i)?)? << i;
            }
        }
        ByteOrder::BigEndian => {
            let mut bit = signal.start_bit;
            for i in 0..size {
                value = (value << 1) | bit_at(data, bit)?;
                if i + 1 < size {
                    bit = if bit % 8 == 0 { bit + 15 } else { bit - 1 };
                }
            }
        }
    }
    Some(match signal.value_type {
        ValueType::Unsigned => i128::from(value),
        ValueType::Signed => {
            let shift = 64 - size;
            i128::from(((value << shift) as i64) >> shift)
        }
    })
}

/// Decodes `data` as a frame with `id` (fuzzing entry point: any DBC text and any bytes).
#[cfg(any(test, fuzzing))]
pub fn fuzz_decode(dbc_text: &str, id: u32, extended: bool, data: &[u8]) {
    if let Ok(decoder) = DbcDecoder::parse(dbc_text)
        && let Ok(id) = can_io::CanId::new(id, extended)
        && let Ok(frame) = can_io::DataFrame::new(id, &data[..data.len().min(8)])
    {
        let _ = decoder.decode(&CanFrame::Data(frame));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use can_io::{CanId, DataFrame};

    const DBC: &str = r#"VERSION ""

BU_: ECU

BO_ 256 ENGINE: 8 ECU
 SG_ Rpm : 0|16@1+ (0.25,0) [0|16383.75] "rpm" Vector__XXX
 SG_ Temp : 16|8@1- (1,-40) [-168|87] "degC" Vector__XXX
 SG_ Speed : 31|16@0+ (0.01,0) [0|655.35] "km/h" Vector__XXX

BO_ 2147484160 MUXED: 8 ECU
 SG_ Mux M : 0|8@1+ (1,0) [0|255] "" Vector__XXX
 SG_ A m1 : 8|8@1+ (1,0) [0|255] "a" Vector__XXX
 SG_ B m2 : 8|8@1+ (1,0) [0|255] "b" Vector__XXX
"#;

    fn frame(id: u32, ext: bool, data: &[u8]) -> anyhow::Result<CanFrame> {
        Ok(CanFrame::Data(DataFrame::new(CanId::new(id, ext)?, data)?))
    }

    #[test]
    fn decodes_intel_motorola_signed_and_scaled_signals() -> anyhow::Result<()> {
        let d = DbcDecoder::parse(DBC).map_err(anyhow::Error::msg)?;
        // Rpm raw 4000 (LE) → 1000 rpm; Temp raw -10 (0xF6) → -50; Speed raw 0x1234 (BE at 31).
        let f = frame(256, false, &[0xA0, 0x0F, 0xF6, 0x12, 0x34, 0, 0, 0])?;
        let m = d.decode(&f).ok_or_else(|| anyhow::anyhow!("not decoded"))?;
        assert_eq!(m.message, "ENGINE");
        assert_eq!(m.signals["Rpm"], json!({"value": 1000, "unit": "rpm"}));
        assert_eq!(m.signals["Temp"], json!({"value": -50, "unit": "degC"}));
        assert_eq!(m.signals["Speed"]["value"], json!(46.6));
        assert!(d.decode(&frame(257, false, &[0; 8])?).is_none());
        Ok(())
    }

    #[test]
    fn multiplexed_signals_follow_the_multiplexor() -> anyhow::Result<()> {
        let d = DbcDecoder::parse(DBC).map_err(anyhow::Error::msg)?;
        let m = d
            .decode(&frame(512, true, &[2, 7, 0, 0, 0, 0, 0, 0])?)
            .ok_or_else(|| anyhow::anyhow!("not decoded"))?;
        assert_eq!(m.signals.len(), 2);
        assert_eq!(m.signals["B"]["value"], json!(7));
        // A short frame: signals past its data are left out, nothing panics.
        let m = d
            .decode(&frame(256, false, &[1])?)
            .ok_or_else(|| anyhow::anyhow!("not decoded"))?;
        assert!(m.signals.is_empty());
        Ok(())
    }
}
