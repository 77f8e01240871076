//! Wire protocols: pure codecs with no I/O.
//!
//! Each module turns frames into the bytes of one protocol and back, validating everything it
//! reads: a decoder never panics and never trusts a length field without checking it against the
//! bytes it has (a bounds bug in cannelloni's own parser became a CVE). The transports in
//! [`crate::transport`] own the sockets; these modules only see byte slices and return values.
//!
//! * [`relay_json`] — the `CanRelayFrame` JSON object of the data plane.
//! * [`remp`] — REMP, our dongle UDP protocol (spec: `docs/protocols/remp.md`), with the
//!   sans-IO [`remp::RempReceiver`] that counts lost, duplicate and reordered datagrams.
//! * [`cannelloni`] — cannelloni UDP (v2) datagrams and the TCP (v1) stream.
//! * [`socketcand`] — the socketcand ASCII protocol (`< … >` elements), server and client side.
//! * [`multicast`] — python-can's `udp_multicast` msgpack datagrams.
//! * [`linux`] — the Linux `can_id` flag bits shared by cannelloni and SocketCAN.
//!
//! Protocol notes: `docs/protocols/can-wire.md`.

pub mod cannelloni;
pub mod linux;
pub mod multicast;
pub mod relay_json;
pub mod remp;
pub mod socketcand;
