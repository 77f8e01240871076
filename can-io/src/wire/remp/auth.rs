//! REMP datagram authentication: HMAC-SHA256 over the whole datagram, truncated to 128 bits.
//!
//! A signed datagram has [`FLAG_AUTH`] set in its header flags and ends with a [`TAG_LEN`]-byte
//! tag computed over the sender's boot id (8 bytes, big-endian; not sent again) followed by
//! every byte before the tag (header with the flag set, serial, seq and body). Binding the boot
//! id makes a frames datagram of an earlier boot fail the check after a restart. The
//! receiver checks the tag in constant time before it looks at the sequence number, so a
//! forged or altered datagram changes no state; freshness comes from the sequence window and,
//! for signed dongles, a boot id that only grows (`docs/protocols/remp.md`).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{MAX_DATAGRAM, PROTOCOL};
use crate::error::Error;

/// Header flag: the datagram ends with an authentication tag.
pub const FLAG_AUTH: u8 = 0x01;
/// Bytes of the tag (HMAC-SHA256 truncated to its first 16 bytes).
pub const TAG_LEN: usize = 16;
/// Shortest key accepted, in bytes.
pub const MIN_KEY_LEN: usize = 16;
/// Offset of the flags byte in the header.
const FLAGS_AT: usize = 6;

/// A dongle's secret key. `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct RempKey(Vec<u8>);

impl std::fmt::Debug for RempKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RempKey({} bytes)", self.0.len())
    }
}

impl RempKey {
    /// A key of at least [`MIN_KEY_LEN`] bytes (at most 64).
    pub fn new(bytes: &[u8]) -> Result<RempKey, Error> {
        if !(MIN_KEY_LEN..=64).contains(&bytes.len()) {
            return Err(Error::Malformed {
                protocol: PROTOCOL,
                reason: format!(
                    "a key must be {MIN_KEY_LEN} to 64 bytes ({} to 128 hex digits), got {}",
                    MIN_KEY_LEN * 2,
                    bytes.len()
                ),
            });
        }
        Ok(RempKey(bytes.to_vec()))
    }

    /// A key written as hex digits.
    pub fn from_hex(text: &str) -> Result<RempKey, Error> {
        let bytes = hex::decode(text.trim()).map_err(|err| Error::Malformed {
            protocol: PROTOCOL,
            reason: format!("a key must be hex digits: {err}"),
        })?;
        RempKey::new(&bytes)
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length; `new` bounds ours.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!())
    }

    /// Signs an encoded datagram in place: sets [`FLAG_AUTH`] and appends the tag. Refuses (and
    /// leaves `datagram` as it was) one that would exceed [`MAX_DATAGRAM`] or is no datagram.
    pub fn sign(&self, boot_id: u64, datagram: &mut Vec<u8>) -> Result<(), Error> {
        if datagram.len() + TAG_LEN > MAX_DATAGRAM || datagram.len() <= FLAGS_AT {
            return Err(Error::Unsupported {
                protocol: PROTOCOL,
                reason: format!(
                    "a signed datagram of {} bytes exceeds {MAX_DATAGRAM}",
                    datagram.len() + TAG_LEN
                ),
            });
        }
        datagram[FLAGS_AT] |= FLAG_AUTH;
        let mut mac = self.mac();
        mac.update(&boot_id.to_be_bytes());
        mac.update(datagram);
        let tag = mac.finalize().into_bytes();
        datagram.extend_from_slice(&tag[..TAG_LEN]);
        Ok(())
    }

    /// Whether `datagram` is signed with this key for boot `boot_id` (flag set and tag valid),
    /// in constant time.
    pub fn verify(&self, boot_id: u64, datagram: &[u8]) -> bool {
        if datagram.len() < FLAGS_AT + 1 + TAG_LEN || datagram[FLAGS_AT] & FLAG_AUTH == 0 {
            return false;
        }
        let (signed, tag) = datagram.split_at(datagram.len() - TAG_LEN);
        let mut mac = self.mac();
        mac.update(&boot_id.to_be_bytes());
        mac.update(signed);
        mac.verify_truncated_left(tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{RempBody, RempDatagram, decode};
    use super::*;

    fn key(byte: u8) -> RempKey {
        RempKey::new(&[byte; 32]).expect("key")
    }

    #[test]
    fn signed_datagrams_verify_decode_and_resist_changes() {
        let datagram = RempDatagram {
            serial: "TD-0001".to_owned(),
            seq: 7,
            body: RempBody::Keepalive(super::super::Keepalive {
                boot_id: 1,
                dropped: 0,
            }),
        };
        let mut bytes = datagram.to_bytes().expect("encodes");
        key(1).sign(1, &mut bytes).expect("signs");
        assert!(key(1).verify(1, &bytes));
        assert!(!key(1).verify(2, &bytes), "bound to the boot");
        assert!(!key(2).verify(1, &bytes));
        assert_eq!(decode(&bytes).expect("decodes"), datagram);
        for i in 0..bytes.len() {
            let mut changed = bytes.clone();
            changed[i] ^= 0x01;
            assert!(!key(1).verify(1, &changed), "byte {i}");
        }
        let unsigned = datagram.to_bytes().expect("encodes");
        assert!(!key(1).verify(1, &unsigned));
        assert!(!key(1).verify(1, &bytes[..bytes.len() - 1]));
        assert!(RempKey::from_hex("00ff").is_err());
        assert!(RempKey::from_hex(&"ab".repeat(16)).is_ok());
        assert_eq!(format!("{:?}", key(1)), "RempKey(32 bytes)");
    }
}
