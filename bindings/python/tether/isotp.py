"""ISO-TP (ISO 15765-2) over any python-can bus, on Tether's Rust state machine.

``IsoTpSocket(bus, tx_id, rx_id)`` sends and receives whole messages (up to 4 GiB) over a
``can.BusABC`` — the ``tether`` interface (``can.Bus(interface="tether", channel=...)``) or any
other python-can bus (``virtual``, ``socketcan``, ``udp_multicast``, ...). Segmentation,
reassembly, flow control (block size, STmin, WAIT, OVERFLOW) and the N_Bs / N_Cr timers run in
can-io's sans-IO ``IsoTpEndpoint`` (``tether.IsoTpEndpoint``); this module only moves frames
between it and the bus and sleeps until its next deadline.

The driver runs in the calling thread while ``send`` or ``recv`` waits: it reads the bus itself,
so nothing else may read the same bus object meanwhile (open a second bus on the same channel for
another reader). Frames for other identifiers are counted in ``stats()["frames_ignored"]``;
remote and error frames are skipped. It does not open buses or pick CAN identifiers.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Optional, Protocol

import can

from tether._tether import IsoTpEndpoint, IsoTpTransferError

__all__ = ["FrameMachine", "IsoTpSocket", "IsoTpTransferError", "drive", "transmit"]


class FrameMachine(Protocol):
    """What ``drive`` runs: ``tether.IsoTpEndpoint`` and ``tether.UdsTester``."""

    def handle_frame(self, can_id: int, data: bytes, extended: bool = ..., fd: bool = ...) -> bool: ...

    def poll_transmit(self) -> Optional[tuple[int, bool, bool, bool, bytes]]: ...

    def poll_timeout(self) -> Optional[float]: ...

    def handle_timeout(self) -> None: ...


def transmit(bus: can.BusABC, machine: FrameMachine, channel: Any = None) -> int:
    """Puts every frame the machine has due on the bus; returns how many."""
    sent = 0
    while True:
        out = machine.poll_transmit()
        if out is None:
            return sent
        can_id, extended, fd, brs, data = out
        bus.send(can.Message(arbitration_id=can_id, is_extended_id=extended, is_fd=fd, bitrate_switch=brs,
                             data=data, channel=channel))
        sent += 1


def drive(bus: can.BusABC, machine: FrameMachine, deadline: Optional[float], channel: Any = None) -> bool:
    """One step: sends what is due, then waits for a frame or the machine's next timer (but
    not past ``deadline``, a ``time.monotonic()`` value) and feeds it in. Returns ``False``
    once ``deadline`` has passed."""
    transmit(bus, machine, channel)
    wait = machine.poll_timeout()
    if deadline is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        wait = left if wait is None else min(wait, left)
    msg = bus.recv(timeout=wait)
    if msg is None:
        machine.handle_timeout()
    elif not (msg.is_remote_frame or msg.is_error_frame):
        machine.handle_frame(msg.arbitration_id, bytes(msg.data), msg.is_extended_id, msg.is_fd)
    transmit(bus, machine, channel)
    return True


class IsoTpSocket:
    """Whole ISO-TP messages over a python-can bus: we send on ``tx_id`` and receive on
    ``rx_id`` (29-bit above 0x7FF). Keyword options are ``tether.IsoTpEndpoint``'s:
    ``padding`` (default 0xCC, ``None`` for short frames), ``block_size`` and ``st_min``
    (seconds) asked of senders, ``fd_tx_dl`` for CAN FD, ``target_address`` /
    ``source_address`` for extended addressing, ``timeout`` (every ISO-TP timer, seconds),
    ``max_rx_len``.

    ``send`` raises ``IsoTpTransferError`` when the transfer is aborted (no flow control within
    N_Bs, OVERFLOW from the receiver, too many WAITs) and ``TimeoutError`` when it is not done
    within its ``timeout``. Messages that arrive while sending are kept for ``recv``. Receive
    errors (a consecutive frame out of sequence, N_Cr) are counted in ``stats()`` and listed in
    ``errors``; the message is lost, as ISO-TP says.
    """

    def __init__(self, bus: can.BusABC, tx_id: int, rx_id: int, **options: Any) -> None:
        self.bus = bus
        self.endpoint = IsoTpEndpoint(tx_id, rx_id, **options)
        self._received: deque[bytes] = deque()
        self.errors: list[str] = []
        self._sent = False
        self._send_error: Optional[str] = None

    def _pump(self) -> None:
        while (ev := self.endpoint.poll_event()) is not None:
            if ev.kind == "received":
                assert ev.data is not None
                self._received.append(ev.data)
            elif ev.kind == "sent":
                self._sent = True
            elif ev.kind == "error":
                assert ev.error is not None
                self.errors.append(ev.error)
                if ev.side == "tx" and ev.aborted:
                    self._send_error = ev.error

    def send(self, payload: bytes, timeout: Optional[float] = 10.0) -> None:
        """Sends one message and returns once its last frame is on the bus."""
        self._sent, self._send_error = False, None
        self.endpoint.send(payload)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            transmit(self.bus, self.endpoint)
            self._pump()
            if self._sent:
                return
            if self._send_error is not None:
                raise IsoTpTransferError(self._send_error)
            if not drive(self.bus, self.endpoint, deadline):
                raise TimeoutError(f"ISO-TP message of {len(payload)} bytes not sent within {timeout} s")
            self._pump()

    def recv(self, timeout: Optional[float] = 1.0) -> Optional[bytes]:
        """The next whole message, or ``None`` when none arrived within ``timeout`` seconds
        (``None``: wait for ever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._pump()
            if self._received:
                return self._received.popleft()
            if not drive(self.bus, self.endpoint, deadline):
                return None

    def stats(self) -> dict[str, int]:
        """The endpoint's counters (``tether.IsoTpEndpoint.stats``)."""
        return self.endpoint.stats()
