//! WebSocket settings of the data plane, the same on the server and client sides.

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Read buffer of every data-plane WebSocket, server and client side. tungstenite's default
/// (128 KiB) is zeroed again on every read, which at 5 ms batches on 40 connections was ~4 % of
/// the server's CPU; a `frames` batch is a few KiB, and a larger message just takes more reads.
pub const WS_READ_BUFFER_BYTES: usize = 16 * 1024;

/// The tungstenite configuration of data-plane WebSocket clients ([`WS_READ_BUFFER_BYTES`]).
pub fn ws_client_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(WS_READ_BUFFER_BYTES)
}
