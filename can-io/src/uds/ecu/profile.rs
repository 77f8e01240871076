//! The ECU profile: which ECUs a simulator hosts, on which identifiers, with which DTCs and
//! data identifiers. Plain serde types (the YAML below is how `tether can ecu` files look);
//! numbers may be written as integers (`0x7E0` is a YAML 1.2 integer) or strings (`"0x7E0"`).
//!
//! ```yaml
//! ecus:
//!   - name: engine
//!     request_id: 0x7E0      # tester → ECU
//!     response_id: 0x7E8     # ECU → tester
//!     dtcs:
//!       - {code: P0420, status: 0x2F}          # 2-byte SAE code + failure-type byte 0
//!       - {dtc: 0xC10000, status: 0x09}        # or the raw 3-byte UDS DTC
//!     dids:
//!       0xF190: {ascii: "1HGCM82633A004352"}
//!       0xF40D: {hex: "3C"}
//!     response_pending_ms: 0                    # answer 0x78 first for this long
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::uds::dtc::{Dtc, DtcRecord, DtcStatus};
use crate::uds::{EcuAddress, UdsError};

/// A set of simulated ECUs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EcuProfile {
    /// The ECUs.
    pub ecus: Vec<EcuSpec>,
}

/// One simulated ECU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EcuSpec {
    /// A name for logs and for the commands API's `params.ecu`.
    pub name: String,
    /// Identifier the tester sends requests on (29-bit when above `0x7FF`).
    #[serde(deserialize_with = "num")]
    pub request_id: u32,
    /// Identifier the ECU answers on.
    #[serde(deserialize_with = "num")]
    pub response_id: u32,
    /// Identifier of functional requests the ECU also answers; by default `0x7DF` for 11-bit
    /// ECUs and `0x18DB33F1` for 29-bit ones.
    #[serde(
        default,
        deserialize_with = "opt_num",
        skip_serializing_if = "Option::is_none"
    )]
    pub functional_id: Option<u32>,
    /// Stored DTCs.
    #[serde(default)]
    pub dtcs: Vec<DtcSpec>,
    /// Data identifiers and their values.
    #[serde(default, deserialize_with = "did_map")]
    pub dids: BTreeMap<u16, DidSpec>,
    /// Answer response-pending (`0x78`) first, and the real answer this many milliseconds
    /// later.
    #[serde(default)]
    pub response_pending_ms: u64,
    /// ISO-TP settings of the ECU's link.
    #[serde(default)]
    pub isotp: IsoTpSpec,
}

impl EcuProfile {
    /// Every ECU's [`EcuSpec::address`]: the vehicle as a tester of these ECUs sees it.
    pub fn addresses(&self) -> Vec<EcuAddress> {
        self.ecus.iter().map(EcuSpec::address).collect()
    }
}

impl EcuSpec {
    /// The name and ids a tester reaches this ECU by.
    pub fn address(&self) -> EcuAddress {
        EcuAddress {
            name: self.name.clone(),
            request_id: self.request_id,
            response_id: self.response_id,
        }
    }
}

/// A stored DTC: `{code: P0420, status: 0x2F}` (with an optional `ftb`) or `{dtc: 0xC10000,
/// status: 0x09}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DtcSpec {
    /// SAE code such as `P0420`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Failure-type byte with `code`.
    #[serde(default, deserialize_with = "num_u8_default")]
    pub ftb: u8,
    /// The raw 3-byte DTC, instead of `code`.
    #[serde(
        default,
        deserialize_with = "opt_num",
        skip_serializing_if = "Option::is_none"
    )]
    pub dtc: Option<u32>,
    /// Status byte.
    #[serde(deserialize_with = "num_u8")]
    pub status: u8,
}

impl DtcSpec {
    /// The DTC record this entry describes.
    pub fn record(&self) -> Result<DtcRecord, UdsError> {
        let dtc = match (&self.code, self.dtc) {
            (Some(code), None) => Dtc::from_sae(code, self.ftb),
            (None, Some(raw)) => Dtc::new(raw),
            _ => Err(UdsError::InvalidRequest {
                reason: "a DTC entry needs exactly one of `code` and `dtc`".into(),
            }),
        }
        .map_err(|e| UdsError::InvalidProfile {
            reason: e.to_string(),
        })?;
        Ok(DtcRecord {
            dtc,
            status: DtcStatus(self.status),
        })
    }
}

/// A DID value: `{ascii: "…"}` or `{hex: "3C"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DidSpec {
    /// Text, sent as its bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ascii: Option<String>,
    /// Hex digits (spaces allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hex: Option<String>,
}

impl DidSpec {
    /// The value bytes.
    pub fn bytes(&self) -> Result<Vec<u8>, UdsError> {
        let invalid = |reason: String| UdsError::InvalidProfile { reason };
        match (&self.ascii, &self.hex) {
            (Some(a), None) => Ok(a.as_bytes().to_vec()),
            (None, Some(h)) => {
                let digits: String = h.chars().filter(|c| !c.is_whitespace()).collect();
                hex::decode(&digits).map_err(|e| invalid(format!("hex value {h:?}: {e}")))
            }
            _ => Err(invalid(
                "a DID value needs exactly one of `ascii` and `hex`".into(),
            )),
        }
    }
}

/// ISO-TP settings of a simulated ECU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IsoTpSpec {
    /// Padding byte (`null`: no padding).
    #[serde(default = "default_padding", deserialize_with = "opt_num_u8")]
    pub padding: Option<u8>,
    /// Block size asked of testers.
    #[serde(default, deserialize_with = "num_u8_default")]
    pub block_size: u8,
    /// STmin asked of testers, as the raw byte (`0xF1`–`0xF9`: 100–900 µs).
    #[serde(default, deserialize_with = "num_u8_default")]
    pub st_min: u8,
    /// Use CAN FD frames of this many bytes (8–64) instead of classic CAN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd_tx_dl: Option<usize>,
}

impl Default for IsoTpSpec {
    fn default() -> Self {
        IsoTpSpec {
            padding: default_padding(),
            block_size: 0,
            st_min: 0,
            fd_tx_dl: None,
        }
    }
}

fn default_padding() -> Option<u8> {
    Some(0xCC)
}

/// An integer written as a number or as a string (`"0x7E0"`, `"2016"`).
#[derive(Deserialize)]
#[serde(untagged)]
enum Num {
    Int(u64),
    Text(String),
}

impl Num {
    fn value(self) -> Result<u64, String> {
        match self {
            Num::Int(v) => Ok(v),
            Num::Text(s) => parse_int_text(&s),
        }
    }
}

/// An integer written as text: `"0x7E0"` (hex) or `"2016"` (decimal).
pub(crate) fn parse_int_text(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => t.parse(),
    };
    parsed.map_err(|_| format!("{s:?} is not a number (write 0x7E0 or 2016)"))
}

fn parse_num<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<T, D::Error> {
    let v = Num::deserialize(d)?
        .value()
        .map_err(serde::de::Error::custom)?;
    T::try_from(v).map_err(|_| serde::de::Error::custom(format!("{v:#X} is out of range")))
}

fn num<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    parse_num(d)
}

fn num_u8<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    parse_num(d)
}

fn num_u8_default<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    parse_num(d)
}

fn opt_num<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    parse_num(d).map(Some)
}

fn opt_num_u8<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
    match Option::<Num>::deserialize(d)? {
        None => Ok(None),
        Some(n) => {
            let v = n.value().map_err(serde::de::Error::custom)?;
            u8::try_from(v)
                .map(Some)
                .map_err(|_| serde::de::Error::custom(format!("{v:#X} does not fit a byte")))
        }
    }
}

fn did_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<u16, DidSpec>, D::Error> {
    #[derive(Deserialize, PartialEq, Eq, PartialOrd, Ord)]
    #[serde(transparent)]
    struct Key(#[serde(deserialize_with = "parse_num")] u16);
    let raw = BTreeMap::<Key, DidSpec>::deserialize(d)?;
    Ok(raw.into_iter().map(|(k, v)| (k.0, v)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUE_EXAMPLE: &str = r#"
ecus:
  - name: engine
    request_id: 0x7E0      # tester → ECU
    response_id: 0x7E8     # ECU → tester
    dtcs:
      - {code: P0420, status: 0x2F}          # 2-byte SAE code + failure-type byte 0
      - {dtc: 0xC10000, status: 0x09}        # or the raw 3-byte UDS DTC
    dids:
      0xF190: {ascii: "1HGCM82633A004352"}
      0xF40D: {hex: "3C"}
    response_pending_ms: 0                    # answer 0x78 first for this long
  - name: abs
    request_id: "0x7E1"
    response_id: "2025"
    dids:
      "0xF190": {hex: "41 42"}
    isotp: {padding: null, block_size: 4, st_min: 0xF5}
"#;

    #[test]
    fn the_issue_example_parses() {
        let p: EcuProfile = serde_norway::from_str(ISSUE_EXAMPLE).unwrap();
        let e = &p.ecus[0];
        assert_eq!((e.request_id, e.response_id), (0x7E0, 0x7E8));
        assert_eq!(e.functional_id, None);
        let dtcs: Vec<_> = e.dtcs.iter().map(|d| d.record().unwrap()).collect();
        assert_eq!(dtcs[0].dtc.raw(), 0x04_2000);
        assert_eq!(dtcs[0].status, DtcStatus(0x2F));
        assert_eq!(dtcs[1].dtc.sae_code(), "U0100");
        assert_eq!(
            e.dids[&0xF190].bytes().unwrap(),
            b"1HGCM82633A004352".to_vec()
        );
        assert_eq!(e.dids[&0xF40D].bytes().unwrap(), vec![0x3C]);
        assert_eq!(e.isotp, IsoTpSpec::default());
        let abs = &p.ecus[1];
        assert_eq!((abs.request_id, abs.response_id), (0x7E1, 2025));
        assert_eq!(abs.dids[&0xF190].bytes().unwrap(), b"AB".to_vec());
        assert_eq!(abs.isotp.padding, None);
        assert_eq!((abs.isotp.block_size, abs.isotp.st_min), (4, 0xF5));
    }

    #[test]
    fn addresses_are_each_ecus_name_and_ids_in_order() {
        let p: EcuProfile = serde_norway::from_str(ISSUE_EXAMPLE).unwrap();
        let names: Vec<_> = p
            .addresses()
            .into_iter()
            .map(|a| (a.name, a.request_id, a.response_id))
            .collect();
        assert_eq!(
            names,
            [
                ("engine".to_owned(), 0x7E0, 0x7E8),
                ("abs".to_owned(), 0x7E1, 2025)
            ]
        );
    }

    #[test]
    fn bad_profiles_are_refused_with_a_reason() {
        let bad_num = "ecus: [{name: x, request_id: 0x7E0Z, response_id: 1}]";
        assert!(serde_norway::from_str::<EcuProfile>(bad_num).is_err());
        let big = "ecus: [{name: x, request_id: 1, response_id: 2, dtcs: [{dtc: 1, status: 256}]}]";
        assert!(serde_norway::from_str::<EcuProfile>(big).is_err());
        let unknown = "ecus: [{name: x, request_id: 1, response_id: 2, colour: red}]";
        assert!(serde_norway::from_str::<EcuProfile>(unknown).is_err());
        let both = DtcSpec {
            code: Some("P0420".into()),
            ftb: 0,
            dtc: Some(1),
            status: 0,
        };
        assert!(both.record().is_err());
        let bad_code = DtcSpec {
            code: Some("Q0420".into()),
            ftb: 0,
            dtc: None,
            status: 0,
        };
        assert!(matches!(
            bad_code.record(),
            Err(UdsError::InvalidProfile { .. })
        ));
        let neither = DidSpec {
            ascii: None,
            hex: None,
        };
        assert!(neither.bytes().is_err());
        let odd = DidSpec {
            ascii: None,
            hex: Some("ABC".into()),
        };
        assert!(odd.bytes().is_err());
    }
}
