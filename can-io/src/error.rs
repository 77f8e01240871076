//! The error type of this crate.

/// What went wrong in can-io: building a frame, decoding a format, or moving frames.
///
/// One enum for the crate; [`Error::is_retryable`] tells callers whether trying again can help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An identifier does not fit in 11 (standard) or 29 (extended) bits.
    #[error("identifier 0x{id:X} out of range for a {} identifier", if *extended { "29-bit" } else { "11-bit" })]
    IdOutOfRange {
        /// The refused value.
        id: u32,
        /// Whether an extended identifier was asked for.
        extended: bool,
    },
    /// A classic (or remote or error) frame with more than 8 bytes.
    #[error("classic CAN frame length {len} exceeds 8")]
    ClassicTooLong {
        /// The refused length.
        len: usize,
    },
    /// A CAN FD length that is not one of 0–8, 12, 16, 20, 24, 32, 48, 64.
    #[error("{len} is not a valid CAN FD length")]
    InvalidFdLength {
        /// The refused length.
        len: usize,
    },
    /// A raw DLC given for a frame that is not 8 bytes long, or outside 9..=15.
    #[error("raw DLC {raw_dlc} is only valid (9..=15) on an 8-byte classic frame, frame has {len}")]
    InvalidRawDlc {
        /// The refused raw DLC.
        raw_dlc: u8,
        /// The payload length of the frame.
        len: usize,
    },
    /// A line (or JSON object) of a log format (candump, ASC, JSON lines) does not parse.
    #[error("malformed {format} line: {reason}")]
    BadLine {
        /// The log format being read (`"candump"`, `"asc"`, `"jsonl"`).
        format: &'static str,
        /// What is wrong with the line.
        reason: std::borrow::Cow<'static, str>,
    },
    /// A line of a log longer than the reader's limit (`formats::DEFAULT_MAX_LINE_LEN` unless
    /// set). Found while reading, without holding the line; readers report it inside
    /// [`Error::AtLine`] and carry on at the next line.
    #[error("{format} line longer than the {limit}-byte limit")]
    LineTooLong {
        /// The log format being read (`"candump"`, `"asc"`, `"jsonl"`).
        format: &'static str,
        /// The limit, in bytes before the `\n`.
        limit: usize,
    },
    /// A log reader met a bad line; `source` says why. Readers report it and carry on.
    #[error("line {line}: {source}")]
    AtLine {
        /// 1-based line number in the input.
        line: u64,
        /// Why the line was refused.
        #[source]
        source: Box<Error>,
    },
    /// Bytes received on a wire protocol (REMP, cannelloni, socketcand, multicast, relay JSON)
    /// that do not form a valid message.
    #[error("malformed {protocol} message: {reason}")]
    Malformed {
        /// The protocol being decoded.
        protocol: &'static str,
        /// What is wrong with the bytes.
        reason: String,
    },
    /// A wire message ended before a field it announces.
    #[error("truncated {protocol} message: needed {needed} bytes, {available} available")]
    Truncated {
        /// The protocol being decoded.
        protocol: &'static str,
        /// Bytes needed to read the next field.
        needed: usize,
        /// Bytes that were left.
        available: usize,
    },
    /// A frame that the chosen wire protocol or transport cannot carry (e.g. CAN FD over
    /// socketcand, or an encoded message over the datagram size limit).
    #[error("{protocol} cannot carry this: {reason}")]
    Unsupported {
        /// The protocol or transport.
        protocol: &'static str,
        /// Why.
        reason: String,
    },
    /// The transmit queue is full; nothing was sent. Retry after the receiver has drained.
    #[error("transmit queue full on {transport} (capacity {capacity})")]
    QueueFull {
        /// The transport whose queue is full.
        transport: &'static str,
        /// The queue capacity, in frames.
        capacity: usize,
    },
    /// The transport was closed (peer gone, bus shut down).
    #[error("{transport} closed")]
    Closed {
        /// The transport.
        transport: &'static str,
    },
    /// A CAN interface (SocketCAN) could not be opened or set up: missing interface (`ENODEV`),
    /// a kernel without `AF_CAN` (`EAFNOSUPPORT`), a socket option refused.
    #[error("cannot {action} CAN interface {interface:?}: {source}")]
    Interface {
        /// The interface name as given (e.g. `can0`).
        interface: String,
        /// The step that failed (`"open"`, `"subscribe to error frames on"`, …).
        action: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An operating-system I/O error on a socket or file.
    #[error("I/O error while {action}: {source}")]
    Io {
        /// What we were doing (e.g. "receiving a REMP datagram").
        action: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An ISO-TP transfer failed (a timeout, an overflow answer, a malformed sequence) or could
    /// not start.
    #[error("ISO-TP: {0}")]
    IsoTp(#[from] crate::isotp::IsoTpError),
    /// A UDS request failed: a negative response, no response in time, or an answer that does
    /// not decode.
    #[error("UDS: {0}")]
    Uds(#[from] crate::uds::UdsError),
}

impl Error {
    /// Whether the same operation may succeed if tried again later (a full queue, a transient
    /// I/O condition). Malformed input is never retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::QueueFull { .. } => true,
            Error::Uds(e) => e.is_retryable(),
            Error::Io { source, .. } | Error::Interface { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::ConnectionRefused
            ),
            _ => false,
        }
    }
}

/// Stream codecs (`tokio_util::codec`) need errors convertible from `std::io::Error`.
impl From<std::io::Error> for Error {
    fn from(source: std::io::Error) -> Self {
        Error::Io {
            action: "reading or writing a stream",
            source,
        }
    }
}
