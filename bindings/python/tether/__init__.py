"""Tether for Python.

The codecs of the Rust crates with the same validation (frames, candump / ASC / JSON-lines logs,
REMP, the data-plane protocol, metering validation), columnar log tables built in Rust
(`read_log`, `iter_log`, `write_log`, `FrameTable`), a python-can interface
(`can.Bus(interface="tether", channel="multicast://239.74.163.2:43113")`, in `tether.can_bus`),
ISO-TP and a UDS tester over any python-can bus (`tether.isotp.IsoTpSocket`,
`tether.uds.UdsClient`, on the Rust state machines `IsoTpEndpoint` / `UdsTester`), and clients
of `tether server` (`Client`, `AsyncClient`, `ConsoleSubscriber`, in `tether.client` and
`tether.console`; they need httpx, and the command response stream `websockets`).

Everything native lives in `tether._tether`; this package re-exports it.
"""

from typing import TYPE_CHECKING, Any

from tether._tether import (
    CanLink,
    EventStreamParser,
    Frame,
    FrameTable,
    InvalidFrameError,
    InvalidMessageError,
    IsoTpEndpoint,
    IsoTpEvent,
    IsoTpTransferError,
    LogBatches,
    LogFormatError,
    MalformedError,
    ParsedLog,
    ProtocolError,
    RempReceiver,
    RempSender,
    SseEvent,
    TetherError,
    TruncatedError,
    UdsEvent,
    UdsProtocolError,
    UdsTester,
    UnsupportedError,
    __version__,
    decode_did_response,
    decode_dtc_response,
    decode_message,
    encode_message,
    format_log,
    iter_log,
    nrc_name,
    parse_log,
    read_log,
    validate_message,
    write_log,
)

if TYPE_CHECKING:
    from tether.client import AsyncClient, Client
    from tether.console import ConsoleEvent, ConsoleSubscriber, StreamReset

# The clients need httpx: imported on first use, so `import tether` does not.
_LAZY = {
    "Client": "tether.client",
    "AsyncClient": "tether.client",
    "ConsoleSubscriber": "tether.console",
    "ConsoleEvent": "tether.console",
    "StreamReset": "tether.console",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tether' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "AsyncClient",
    "CanLink",
    "Client",
    "ConsoleEvent",
    "ConsoleSubscriber",
    "EventStreamParser",
    "Frame",
    "FrameTable",
    "InvalidFrameError",
    "InvalidMessageError",
    "IsoTpEndpoint",
    "IsoTpEvent",
    "IsoTpTransferError",
    "LogBatches",
    "LogFormatError",
    "MalformedError",
    "ParsedLog",
    "ProtocolError",
    "RempReceiver",
    "RempSender",
    "SseEvent",
    "StreamReset",
    "TetherError",
    "TruncatedError",
    "UdsEvent",
    "UdsProtocolError",
    "UdsTester",
    "UnsupportedError",
    "__version__",
    "decode_did_response",
    "decode_dtc_response",
    "decode_message",
    "encode_message",
    "format_log",
    "iter_log",
    "nrc_name",
    "parse_log",
    "read_log",
    "validate_message",
    "write_log",
]
