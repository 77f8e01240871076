//! The `diagnostics:` section of the agent file and its validated form, [`DiagnosticsRole`].

use std::time::Duration;

use anyhow::{Context, bail};
use can_io::transport::open::BusAddress;
use can_io::uds::UdsTiming;
use serde::Deserialize;

use tether_runtime::config::{secs, string_like};

/// One bus the role runs commands on, as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusSection {
    /// The serial the bus is announced under (`POST /api/v1/agent/dongles`): the server shows
    /// it as a dongle, and vehicles name it by that dongle's id.
    #[serde(deserialize_with = "string_like")]
    pub serial: String,
    /// The bus: `socketcan://can0`, `udp://0.0.0.0:20200` (a REMP dongle sends there; the
    /// agent listens), `multicast://239.74.163.2:43113`, `socketcand://HOST:PORT/BUS`,
    /// `cannelloni://HOST:PORT` (listens).
    #[serde(deserialize_with = "string_like")]
    pub bus: String,
}

/// `diagnostics:` as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiagnosticsSection {
    /// The buses (at least one).
    pub buses: Vec<BusSection>,
    /// Seconds to wait for an ECU's first answer (P2client).
    #[serde(default = "one")]
    pub p2: f64,
    /// Seconds to wait after a response-pending answer (P2*client).
    #[serde(default = "five")]
    pub p2_star: f64,
    /// Smallest reconnect / retry delay, seconds.
    #[serde(default = "point_two")]
    pub reconnect_min: f64,
    /// Largest reconnect / retry delay, seconds (full-jitter exponential backoff in between).
    #[serde(default = "ten")]
    pub reconnect_max: f64,
}

fn one() -> f64 {
    1.0
}
fn five() -> f64 {
    5.0
}
fn point_two() -> f64 {
    0.2
}
fn ten() -> f64 {
    10.0
}

/// A checked bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagBus {
    /// Its serial.
    pub serial: String,
    /// Its address.
    pub address: BusAddress,
}

/// The role's settings, checked.
#[derive(Debug, Clone)]
pub struct DiagnosticsRole {
    /// The servers, tried in turn when the channel is lost (`/ws/data` on each).
    pub servers: crate::servers::ServerUrls,
    /// The agent token.
    pub token: String,
    /// The buses.
    pub buses: Vec<DiagBus>,
    /// UDS waits.
    pub timing: UdsTiming,
    /// Backoff floor.
    pub reconnect_min: Duration,
    /// Backoff ceiling.
    pub reconnect_max: Duration,
}

impl DiagnosticsRole {
    /// Validate the section with the file's `server_url` and `token`.
    pub fn resolve(
        d: &DiagnosticsSection,
        server_url: Option<&crate::servers::ServerUrlSetting>,
        token: Option<&str>,
    ) -> anyhow::Result<Self> {
        let (servers, token) =
            crate::dongle::config::server_and_token(server_url, token, "diagnostics")?;
        if d.buses.is_empty() {
            bail!("diagnostics.buses must list at least one bus");
        }
        let mut buses: Vec<DiagBus> = Vec::new();
        for (i, b) in d.buses.iter().enumerate() {
            can_io::wire::remp::validate_serial(&b.serial)
                .with_context(|| format!("diagnostics.buses[{i}].serial {:?}", b.serial))?;
            let address: BusAddress = b
                .bus
                .parse()
                .with_context(|| format!("diagnostics.buses[{i}].bus {:?}", b.bus))?;
            if buses.iter().any(|x| x.serial == b.serial) {
                bail!(
                    "diagnostics.buses[{i}]: serial {:?} is listed twice",
                    b.serial
                );
            }
            if buses.iter().any(|x| x.address == address) {
                bail!("diagnostics.buses[{i}]: bus {address} is listed twice");
            }
            buses.push(DiagBus {
                serial: b.serial.clone(),
                address,
            });
        }
        let p2 = secs("diagnostics.p2", d.p2)?;
        let p2_star = secs("diagnostics.p2_star", d.p2_star)?;
        if p2 < Duration::from_millis(10) || p2_star < p2 {
            bail!("diagnostics.p2 must be at least 0.01 s and p2_star at least p2");
        }
        let reconnect_min = secs("diagnostics.reconnect_min", d.reconnect_min)?;
        let reconnect_max = secs("diagnostics.reconnect_max", d.reconnect_max)?;
        if reconnect_min < Duration::from_millis(10) || reconnect_max < reconnect_min {
            bail!("diagnostics.reconnect_min must be at least 0.01 s and at most reconnect_max");
        }
        Ok(DiagnosticsRole {
            servers,
            token,
            buses,
            timing: UdsTiming { p2, p2_star },
            reconnect_min,
            reconnect_max,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn section(yaml: &str) -> DiagnosticsSection {
        serde_norway::from_str(yaml).unwrap()
    }

    #[test]
    fn resolves_and_refuses() {
        let ok = section(
            "buses:\n  - {serial: VEH-1, bus: 'socketcan://can0'}\n  - {serial: VEH-2, bus: 'udp://0.0.0.0:20200'}\n",
        );
        let url = crate::servers::ServerUrlSetting(vec!["http://h:8080/".into()]);
        let r = DiagnosticsRole::resolve(&ok, Some(&url), Some("ta_x")).unwrap();
        assert_eq!(r.servers.first().ws("/ws/data"), "ws://h:8080/ws/data");
        assert_eq!(r.buses.len(), 2);
        assert_eq!(r.timing, UdsTiming::default());
        for (yaml, reason) in [
            ("buses: []\n", "at least one bus"),
            (
                "buses:\n  - {serial: 'A B', bus: 'socketcan://can0'}\n",
                "serial",
            ),
            (
                "buses:\n  - {serial: A, bus: 'tcp://x:1'}\n",
                "unknown scheme",
            ),
            (
                "buses:\n  - {serial: A, bus: 'socketcan://can0'}\n  - {serial: A, bus: 'socketcan://can1'}\n",
                "listed twice",
            ),
            (
                "buses:\n  - {serial: A, bus: 'socketcan://can0'}\np2: 2\np2_star: 1\n",
                "p2_star",
            ),
        ] {
            let err = DiagnosticsRole::resolve(&section(yaml), Some(&url), Some("t")).unwrap_err();
            assert!(format!("{err:#}").contains(reason), "{yaml}: {err:#}");
        }
        let err = DiagnosticsRole::resolve(&ok, None, Some("t")).unwrap_err();
        assert!(err.to_string().contains("diagnostics role"), "{err}");
    }
}
