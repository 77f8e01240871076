//! The `diagnostics:` section of the agent file and its validated form, [`DiagnosticsRole`].

use std::time::Duration;

use anyhow::{Context, bail};
use can_io::transport::open::BusAddress;
use can_io::uds::UdsTiming;
use serde::Deserialize;

use tether_runtime::config::{opt_string_like, secs};

use crate::config::defaults::{five, one, point_two, ten};

/// One bus the role runs commands on, as written in the file: `bus` (with `serial`) or
/// `dongle`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusSection {
    /// The serial the bus is announced under (`POST /api/v1/agent/dongles`): the server shows
    /// it as a dongle, and vehicles name it by that dongle's id. With `dongle` it defaults to
    /// (and must be) the dongle's serial.
    #[serde(default, deserialize_with = "opt_string_like")]
    pub serial: Option<String>,
    /// A bus of its own: `socketcan://can0`, `udp://0.0.0.0:20200` (a REMP dongle sends there;
    /// the agent listens), `multicast://239.74.163.2:43113`, `socketcand://HOST:PORT/BUS`,
    /// `cannelloni://HOST:PORT` (listens).
    #[serde(default, deserialize_with = "opt_string_like")]
    pub bus: Option<String>,
    /// The serial of a REMP dongle this agent's `dongle` role serves: the bus is that dongle's,
    /// shared with the relay (`docs/agent.md`, "One dongle, relayed and diagnosed").
    #[serde(default, deserialize_with = "opt_string_like")]
    pub dongle: Option<String>,
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

/// Where a bus's frames come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusSource {
    /// A bus the role opens itself.
    Address(BusAddress),
    /// The REMP dongle of the same serial, served by the `dongle` role: its socket is shared.
    Dongle,
}

/// A checked bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagBus {
    /// Its serial (the dongle's, for [`BusSource::Dongle`]).
    pub serial: String,
    /// Where it is.
    pub source: BusSource,
}

impl std::fmt::Display for DiagBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            BusSource::Address(a) => write!(f, "{a}"),
            BusSource::Dongle => write!(f, "dongle {} (shared with the dongle role)", self.serial),
        }
    }
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
            let bus = resolve_bus(i, b)?;
            if buses.iter().any(|x| x.serial == bus.serial) {
                bail!(
                    "diagnostics.buses[{i}]: serial {:?} is listed twice",
                    bus.serial
                );
            }
            if let BusSource::Address(a) = &bus.source
                && buses.iter().any(|x| x.source == bus.source)
            {
                bail!("diagnostics.buses[{i}]: bus {a} is listed twice");
            }
            buses.push(bus);
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

    /// The serials of the buses shared with the `dongle` role.
    pub fn shared_dongles(&self) -> impl Iterator<Item = &str> {
        self.buses
            .iter()
            .filter(|b| b.source == BusSource::Dongle)
            .map(|b| b.serial.as_str())
    }

    /// Checks the shared buses against the file's `dongle:` section: the role must be there,
    /// and must accept the serial (with `require_auth`, only serials with a key).
    pub fn check_shared(
        &self,
        dongle: Option<&crate::dongle::config::DongleSection>,
    ) -> anyhow::Result<()> {
        for (i, b) in self.buses.iter().enumerate() {
            if b.source != BusSource::Dongle {
                continue;
            }
            let Some(d) = dongle else {
                bail!(
                    "diagnostics.buses[{i}].dongle {:?}: this agent has no `dongle:` section, so no dongle role serves that dongle (add one, or give the bus its own `bus:` address)",
                    b.serial
                );
            };
            if d.require_auth && !d.keys.contains_key(&b.serial) {
                bail!(
                    "diagnostics.buses[{i}].dongle {:?}: unknown to the dongle role, which refuses every serial without a key (require_auth) and has none for this one in dongle.keys",
                    b.serial
                );
            }
        }
        Ok(())
    }
}

/// One entry of `diagnostics.buses`, checked.
fn resolve_bus(i: usize, b: &BusSection) -> anyhow::Result<DiagBus> {
    let (serial, source) = match (&b.bus, &b.dongle) {
        (Some(bus), None) => {
            let Some(serial) = &b.serial else {
                bail!("diagnostics.buses[{i}]: a `bus:` needs the `serial:` it is announced under");
            };
            let address: BusAddress = bus
                .parse()
                .with_context(|| format!("diagnostics.buses[{i}].bus {bus:?}"))?;
            (serial, BusSource::Address(address))
        }
        (None, Some(dongle)) => {
            if let Some(serial) = &b.serial
                && serial != dongle
            {
                bail!(
                    "diagnostics.buses[{i}]: serial {serial:?} differs from dongle {dongle:?} (a shared dongle is announced under its own serial; leave `serial` out)"
                );
            }
            (dongle, BusSource::Dongle)
        }
        (Some(_), Some(_)) => {
            bail!(
                "diagnostics.buses[{i}]: give `bus:` (a bus of its own) or `dongle:` (a dongle the dongle role serves), not both"
            )
        }
        (None, None) => bail!(
            "diagnostics.buses[{i}]: needs `bus:` (with `serial:`) or `dongle:` (a dongle the dongle role serves)"
        ),
    };
    let what = if source == BusSource::Dongle {
        "dongle"
    } else {
        "serial"
    };
    can_io::wire::remp::validate_serial(serial)
        .with_context(|| format!("diagnostics.buses[{i}].{what} {serial:?}"))?;
    Ok(DiagBus {
        serial: serial.clone(),
        source,
    })
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
            "buses:\n  - {serial: VEH-1, bus: 'socketcan://can0'}\n  - {serial: VEH-2, bus: 'udp://0.0.0.0:20200'}\n  - {dongle: VEH-3}\n",
        );
        let url = crate::servers::ServerUrlSetting(vec!["http://h:8080/".into()]);
        let r = DiagnosticsRole::resolve(&ok, Some(&url), Some("ta_x")).unwrap();
        assert_eq!(r.servers.first().ws("/ws/data"), "ws://h:8080/ws/data");
        assert_eq!(r.buses.len(), 3);
        assert_eq!(
            r.buses[2],
            DiagBus {
                serial: "VEH-3".into(),
                source: BusSource::Dongle
            }
        );
        assert_eq!(r.shared_dongles().collect::<Vec<_>>(), ["VEH-3"]);
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
            (
                "buses:\n  - {bus: 'socketcan://can0'}\n",
                "needs the `serial:`",
            ),
            ("buses:\n  - {serial: A}\n", "needs `bus:`"),
            (
                "buses:\n  - {dongle: A, bus: 'socketcan://can0'}\n",
                "not both",
            ),
            (
                "buses:\n  - {dongle: A, serial: B}\n",
                "differs from dongle",
            ),
            ("buses:\n  - {dongle: 'A B'}\n", "dongle \"A B\""),
            (
                "buses:\n  - {dongle: A}\n  - {serial: A, bus: 'socketcan://can0'}\n",
                "listed twice",
            ),
        ] {
            let err = DiagnosticsRole::resolve(&section(yaml), Some(&url), Some("t")).unwrap_err();
            assert!(format!("{err:#}").contains(reason), "{yaml}: {err:#}");
        }
        let err = DiagnosticsRole::resolve(&ok, None, Some("t")).unwrap_err();
        assert!(err.to_string().contains("diagnostics role"), "{err}");
    }
}
