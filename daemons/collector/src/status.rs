//! Uplink status as CAN frames: the `SYSTEM_MONITOR` component type, `UPLINK_MANAGER`
//! component id, one command id per message (`docs/protocols/telemetry.md`, "Status over
//! CAN"; the DBC is `data/dbc/tether-system.dbc`).
//!
//! The 29-bit extended identifier is `component_type << 16 | component_id << 8 | command_id`.
//! Every message is 8 bytes, little-endian (Intel) unsigned fields, saturating.

use can_io::{CanFrame, CanId, CanRecord, DataFrame, Direction};
use relay_core::uplink::UplinkState;

/// Component type of system monitoring messages.
pub const SYSTEM_MONITOR: u8 = 0x50;
/// Component id of the telemetry uplink manager.
pub const UPLINK_MANAGER: u8 = 0x01;
/// Command id: state, consecutive failures, records dropped.
pub const CMD_STATUS: u8 = 0x01;
/// Command id: queue size (pending records), stored records.
pub const CMD_QUEUE: u8 = 0x02;
/// Command id: average and maximum send → ack latency (ms).
pub const CMD_LATENCY: u8 = 0x03;
/// Command id: average throughput in kbit/s and records/s.
pub const CMD_THROUGHPUT: u8 = 0x04;

/// The extended identifier of a command of the uplink manager.
pub fn can_id(command: u8) -> u32 {
    (u32::from(SYSTEM_MONITOR) << 16) | (u32::from(UPLINK_MANAGER) << 8) | u32::from(command)
}

/// The value of the status signal (the DBC's value table).
pub fn state_code(state: UplinkState) -> u8 {
    match state {
        UplinkState::Connecting => 0,
        UplinkState::Connected => 1,
        UplinkState::Disconnected => 2,
        UplinkState::Error => 3,
    }
}

/// What the status frames report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StatusReport {
    /// Uplink state.
    pub state: UplinkState,
    /// Consecutive failed connection attempts.
    pub consecutive_failures: u32,
    /// Records dropped before the remote held them (all reasons).
    pub dropped: u64,
    /// Pending records (the queue size).
    pub queue: u64,
    /// Records stored, uplinked or pending.
    pub stored: u64,
    /// Mean send → ack latency over the stats window.
    pub mean_latency_ms: Option<u64>,
    /// Largest send → ack latency over the stats window.
    pub max_latency_ms: Option<u64>,
    /// Payload bytes acknowledged per second.
    pub bytes_per_s: f64,
    /// Records acknowledged per second.
    pub records_per_s: f64,
}

fn sat_u32(v: u64) -> [u8; 4] {
    u32::try_from(v).unwrap_or(u32::MAX).to_le_bytes()
}

fn pair(a: u64, b: u64) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&sat_u32(a));
    out[4..].copy_from_slice(&sat_u32(b));
    out
}

/// The four status frames, on `channel`, timestamped `ts_ns`.
pub fn frames(report: &StatusReport, channel: &can_io::Channel, ts_ns: u64) -> Vec<CanRecord> {
    let mut status = [0u8; 8];
    status[0] = state_code(report.state);
    status[2..4].copy_from_slice(
        &u16::try_from(report.consecutive_failures)
            .unwrap_or(u16::MAX)
            .to_le_bytes(),
    );
    status[4..].copy_from_slice(&sat_u32(report.dropped));
    let kbit = (report.bytes_per_s * 8.0 / 1000.0).round().max(0.0) as u64;
    let per_s = report.records_per_s.round().max(0.0) as u64;
    let payloads = [
        (CMD_STATUS, status),
        (CMD_QUEUE, pair(report.queue, report.stored)),
        (
            CMD_LATENCY,
            pair(
                report.mean_latency_ms.unwrap_or(0),
                report.max_latency_ms.unwrap_or(0),
            ),
        ),
        (CMD_THROUGHPUT, pair(kbit, per_s)),
    ];
    payloads
        .iter()
        .filter_map(|(command, data)| {
            let id = CanId::new(can_id(*command), true).ok()?;
            let frame = DataFrame::new(id, data).ok()?;
            Some(CanRecord::new(
                ts_ns,
                channel.clone(),
                Direction::Tx,
                CanFrame::Data(frame),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_the_documented_ids_and_fields() {
        let report = StatusReport {
            state: UplinkState::Disconnected,
            consecutive_failures: 3,
            dropped: 5,
            queue: 1234,
            stored: 2000,
            mean_latency_ms: Some(12),
            max_latency_ms: Some(40),
            bytes_per_s: 125_000.0,
            records_per_s: 999.6,
        };
        let frames = frames(&report, &"can0".into(), 1);
        assert_eq!(frames.len(), 4);
        let ids: Vec<u32> = frames
            .iter()
            .filter_map(|f| f.frame.id().map(|id| id.raw()))
            .collect();
        assert_eq!(ids, vec![0x50_0101, 0x50_0102, 0x50_0103, 0x50_0104]);
        assert_eq!(frames[0].frame.data(), &[2, 0, 3, 0, 5, 0, 0, 0]);
        assert_eq!(&frames[1].frame.data()[..4], &1234u32.to_le_bytes());
        assert_eq!(&frames[3].frame.data()[..4], &1000u32.to_le_bytes());
        assert_eq!(&frames[3].frame.data()[4..], &1000u32.to_le_bytes());
    }
}
