//! Diagnostic trouble codes: the 3-byte UDS DTC, its SAE J2012 rendering (`P0420`) and status
//! byte, and titles for a few common generic codes.

use std::fmt;

use super::UdsError;

/// A UDS DTC: 3 bytes, of which the two high ones are the SAE J2012 code and the low one the
/// failure-type byte (FTB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dtc(u32);

impl Dtc {
    /// A DTC from its 24-bit value; refuses larger values.
    pub fn new(raw: u32) -> Result<Self, UdsError> {
        if raw > 0xFF_FFFF {
            return Err(UdsError::InvalidRequest {
                reason: format!("DTC 0x{raw:X} does not fit 3 bytes"),
            });
        }
        Ok(Dtc(raw))
    }

    /// A DTC from its 3 bytes, high first.
    pub fn from_bytes(b: [u8; 3]) -> Self {
        Dtc(u32::from_be_bytes([0, b[0], b[1], b[2]]))
    }

    /// A DTC from an SAE code such as `P0420` (a letter P, C, B or U and four hex digits, the
    /// first 0–3) and a failure-type byte.
    pub fn from_sae(code: &str, ftb: u8) -> Result<Self, UdsError> {
        let bad = || UdsError::InvalidRequest {
            reason: format!("{code:?} is not an SAE DTC code like P0420"),
        };
        let mut chars = code.chars();
        let system = match chars.next().map(|c| c.to_ascii_uppercase()) {
            Some('P') => 0u32,
            Some('C') => 1,
            Some('B') => 2,
            Some('U') => 3,
            _ => return Err(bad()),
        };
        let digits = chars.as_str();
        if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let value = u32::from_str_radix(digits, 16).map_err(|_| bad())?;
        if value > 0x3FFF {
            return Err(bad());
        }
        Ok(Dtc(((system << 14 | value) << 8) | u32::from(ftb)))
    }

    /// The 24-bit value.
    pub fn raw(self) -> u32 {
        self.0
    }

    /// The 3 bytes, high first.
    pub fn to_bytes(self) -> [u8; 3] {
        let b = self.0.to_be_bytes();
        [b[1], b[2], b[3]]
    }

    /// The SAE J2012 code of the two high bytes, such as `P0420` or `U0100`.
    pub fn sae_code(self) -> String {
        let hi = self.0 >> 8;
        let system = ['P', 'C', 'B', 'U'][(hi >> 14) as usize & 3];
        format!("{system}{:04X}", hi & 0x3FFF)
    }

    /// The failure-type byte.
    pub fn ftb(self) -> u8 {
        self.0 as u8
    }

    /// The SAE J2012 title of the code, for the few generic codes this crate knows.
    pub fn description(self) -> Option<&'static str> {
        let code = self.sae_code();
        DESCRIPTIONS
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, d)| *d)
    }
}

/// `P0420-00`: the SAE code and the failure-type byte.
impl fmt::Display for Dtc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{:02X}", self.sae_code(), self.ftb())
    }
}

/// The DTC status byte (ISO 14229-1 D.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct DtcStatus(pub u8);

impl DtcStatus {
    /// Bit 0: the most recent test failed.
    pub fn test_failed(self) -> bool {
        self.0 & 0x01 != 0
    }
    /// Bit 2: pending DTC.
    pub fn pending(self) -> bool {
        self.0 & 0x04 != 0
    }
    /// Bit 3: confirmed DTC.
    pub fn confirmed(self) -> bool {
        self.0 & 0x08 != 0
    }
    /// Bit 7: the warning indicator (MIL) is requested.
    pub fn warning_indicator_requested(self) -> bool {
        self.0 & 0x80 != 0
    }
}

/// One DTC and its status, as ReadDTCInformation reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DtcRecord {
    /// The DTC.
    pub dtc: Dtc,
    /// Its status byte.
    pub status: DtcStatus,
}

/// Titles of common generic (SAE J2012 / ISO 15031-6) codes. Deliberately small: manufacturer
/// codes and the full table are out of scope; unknown codes have no description. P0420 is
/// spelled as Tether's commands API documents it (the SAE title adds "(Bank 1)").
const DESCRIPTIONS: &[(&str, &str)] = &[
    ("P0100", "Mass or Volume Air Flow Circuit Malfunction"),
    (
        "P0101",
        "Mass or Volume Air Flow Circuit Range/Performance Problem",
    ),
    ("P0113", "Intake Air Temperature Circuit High Input"),
    ("P0117", "Engine Coolant Temperature Circuit Low Input"),
    ("P0118", "Engine Coolant Temperature Circuit High Input"),
    (
        "P0128",
        "Coolant Thermostat (Coolant Temperature Below Thermostat Regulating Temperature)",
    ),
    ("P0171", "System Too Lean (Bank 1)"),
    ("P0172", "System Too Rich (Bank 1)"),
    ("P0174", "System Too Lean (Bank 2)"),
    ("P0175", "System Too Rich (Bank 2)"),
    ("P0300", "Random/Multiple Cylinder Misfire Detected"),
    ("P0301", "Cylinder 1 Misfire Detected"),
    ("P0302", "Cylinder 2 Misfire Detected"),
    ("P0303", "Cylinder 3 Misfire Detected"),
    ("P0304", "Cylinder 4 Misfire Detected"),
    (
        "P0401",
        "Exhaust Gas Recirculation Flow Insufficient Detected",
    ),
    ("P0420", "Catalyst System Efficiency Below Threshold"),
    (
        "P0430",
        "Catalyst System Efficiency Below Threshold (Bank 2)",
    ),
    (
        "P0442",
        "Evaporative Emission Control System Leak Detected (small leak)",
    ),
    ("P0500", "Vehicle Speed Sensor Malfunction"),
    ("P0562", "System Voltage Low"),
    ("P0563", "System Voltage High"),
    ("P0700", "Transmission Control System Malfunction"),
    ("U0073", "Control Module Communication Bus Off"),
    ("U0100", "Lost Communication With ECM/PCM \"A\""),
    ("U0101", "Lost Communication With TCM"),
    (
        "U0121",
        "Lost Communication With Anti-Lock Brake System (ABS) Control Module",
    ),
    ("U0140", "Lost Communication With Body Control Module"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sae_codes_render_and_parse() {
        let d = Dtc::from_bytes([0x04, 0x20, 0x00]);
        assert_eq!(d.sae_code(), "P0420");
        assert_eq!(d.to_string(), "P0420-00");
        assert_eq!(
            d.description(),
            Some("Catalyst System Efficiency Below Threshold")
        );
        let u = Dtc::new(0xC1_0000).unwrap();
        assert_eq!(u.sae_code(), "U0100");
        assert_eq!(u.ftb(), 0);
        assert_eq!(Dtc::from_sae("U0100", 0).unwrap(), u);
        assert_eq!(Dtc::from_sae("p0420", 0x1C).unwrap().raw(), 0x04_201C);
        assert_eq!(Dtc::from_bytes([0x5A, 0xBC, 0x11]).sae_code(), "C1ABC");
        assert_eq!(Dtc::from_bytes([0x9F, 0xFF, 0x00]).sae_code(), "B1FFF");
        for bad in ["", "P042", "X0420", "P4420", "P04G0", "P04200"] {
            assert!(Dtc::from_sae(bad, 0).is_err(), "{bad}");
        }
        assert!(Dtc::new(0x100_0000).is_err());
        for raw in [0u32, 0x04_2000, 0xFF_FFFF, 0x12_3456] {
            let d = Dtc::new(raw).unwrap();
            assert_eq!(Dtc::from_bytes(d.to_bytes()), d);
            assert_eq!(Dtc::from_sae(&d.sae_code(), d.ftb()).unwrap(), d);
        }
    }

    #[test]
    fn status_bits() {
        let s = DtcStatus(0x2F);
        assert!(s.test_failed() && s.pending() && s.confirmed());
        assert!(!s.warning_indicator_requested());
    }
}
