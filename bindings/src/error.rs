//! Python exceptions, one per kind of failure, all subclasses of `tether.TetherError`. Every
//! function of the module is a pure codec, so every failure is bad input: `TetherError` is a
//! `ValueError`, and `except ValueError` catches them too.

use can_io::Error as CanError;
use metering_core::MeteringError;
use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

create_exception!(
    tether,
    TetherError,
    PyValueError,
    "Base class of every error raised by tether (a ValueError: all of them are bad input)."
);
create_exception!(
    tether,
    InvalidFrameError,
    TetherError,
    "A frame CAN cannot carry: identifier out of range, or a bad length or DLC."
);
create_exception!(
    tether,
    LogFormatError,
    TetherError,
    "A log line that does not parse, or a log whose format cannot be told; the message starts with the line number."
);
create_exception!(
    tether,
    MalformedError,
    TetherError,
    "Bytes of a wire protocol (REMP) that do not form a valid message."
);
create_exception!(
    tether,
    TruncatedError,
    TetherError,
    "A wire message that ends before a field it announces."
);
create_exception!(
    tether,
    UnsupportedError,
    TetherError,
    "Something the chosen protocol cannot carry (e.g. a 17th REMP channel), or a REMP serial beyond the receiver's max_dongles."
);
create_exception!(
    tether,
    ProtocolError,
    TetherError,
    "A data-plane (`/ws/data`) message the protocol refuses."
);
create_exception!(
    tether,
    InvalidMessageError,
    TetherError,
    "A metering message that `tether agent` would refuse and dead-letter."
);
create_exception!(
    tether,
    IsoTpTransferError,
    TetherError,
    "An ISO-TP transfer that could not be started or was aborted (a timer ran out, the peer answered OVERFLOW, a frame out of sequence); the message names the reason."
);
create_exception!(
    tether,
    UdsProtocolError,
    TetherError,
    "A UDS request that failed: no answer in time, a failed transfer, or an answer that does not decode."
);

/// The exception for a can-io error.
pub(crate) fn can(err: CanError) -> PyErr {
    let text = err.to_string();
    match err {
        CanError::IdOutOfRange { .. }
        | CanError::ClassicTooLong { .. }
        | CanError::InvalidFdLength { .. }
        | CanError::InvalidRawDlc { .. } => InvalidFrameError::new_err(text),
        CanError::BadLine { .. } | CanError::AtLine { .. } => LogFormatError::new_err(text),
        CanError::Malformed { .. } => MalformedError::new_err(text),
        CanError::Truncated { .. } => TruncatedError::new_err(text),
        CanError::Unsupported { .. } => UnsupportedError::new_err(text),
        // Transport errors: nothing in this module moves frames.
        _ => TetherError::new_err(text),
    }
}

/// The exception for a relay-core error (only protocol errors reach the bindings).
pub(crate) fn relay(err: relay_core::Error) -> PyErr {
    ProtocolError::new_err(err.to_string())
}

/// The exception for a metering-core error.
pub(crate) fn metering(err: MeteringError) -> PyErr {
    let text = err.to_string();
    match err {
        MeteringError::Malformed { .. } => InvalidMessageError::new_err(text),
        _ => TetherError::new_err(text),
    }
}
