"""A python-can interface over Tether's network buses.

Registered as python-can's ``tether`` interface (entry point ``can.interface``), so any
python-can program can use it::

    import can
    bus = can.Bus(interface="tether", channel="multicast://239.74.163.2:43113")

``channel`` is a bus address:

* ``multicast://GROUP:PORT`` — python-can's own ``udp_multicast`` bus (IPv4 group).
* ``udp://HOST:PORT`` — REMP (docs/protocols/remp.md): a dongle sending to the agent at
  HOST:PORT (hello first, a keep-alive every second), or with ``listen=True`` the agent side,
  bound to HOST:PORT and answering the dongle it last heard.
* ``cannelloni://HOST:PORT`` — cannelloni v2 over UDP, sending to HOST:PORT (``local=`` binds a
  fixed local address), or with ``listen=True`` bound to HOST:PORT.
* ``socketcand://HOST:PORT/BUS`` — a socketcand server, raw mode (classic frames only).

The socket, decoding and python-can's filters run in Rust on a background thread
(``tether.CanLink``); ``recv`` waits without holding the GIL, and ``send`` does not wait for a
concurrent ``recv``, so notifiers and senders on other threads work as usual. Frames that arrive
while the receive queue (``queue`` frames) is full are dropped and counted in ``stats()``.

``state``: ``BusState.ACTIVE``; set ``BusState.PASSIVE`` for listen-only (``send`` then raises);
``BusState.ERROR`` once the transport failed (e.g. the socketcand server closed the
connection).
"""

from __future__ import annotations

from typing import Any, Optional

import can
from can import BusState, CanInitializationError, CanOperationError, CanTimeoutError, Message
from can.typechecking import CanFilters

from tether._tether import CanLink, TetherError

__all__ = ["TetherBus"]


class TetherBus(can.BusABC):
    """A python-can bus on a Tether bus address (see the module documentation)."""

    def __init__(
        self,
        channel: str,
        can_filters: Optional[CanFilters] = None,
        *,
        listen: bool = False,
        serial: str = "PYCAN-0001",
        can_channel: str = "can0",
        local: Optional[str] = None,
        queue: int = 65536,
        receive_own_messages: bool = False,
        **kwargs: Any,
    ) -> None:
        """Opens ``channel`` (a bus address). ``listen``: bind a ``udp://`` or
        ``cannelloni://`` address instead of sending to it. ``serial``: the REMP serial.
        ``can_channel``: the channel name of sent frames without one, and of received frames
        whose protocol carries none. ``receive_own_messages``: sent frames also come back from
        ``recv`` (with ``is_rx`` false). Raises ``can.CanInitializationError``."""
        try:
            self._link = CanLink(
                channel,
                listen=listen,
                serial=serial,
                channel=can_channel,
                local=local,
                queue=queue,
                receive_own_messages=receive_own_messages,
            )
        except (OSError, ValueError) as e:
            raise CanInitializationError(f"cannot open {channel}: {e}") from e
        self._passive = False
        self.channel_info = f"tether {channel}"
        super().__init__(channel, can_filters=can_filters, **kwargs)

    @property
    def local_addr(self) -> Optional[str]:
        """The bound local address of a UDP bus, e.g. ``"127.0.0.1:40000"``."""
        return self._link.local_addr

    def stats(self) -> dict[str, int]:
        """Counters: ``sent``, ``received``, ``filtered``, ``dropped`` (receive queue full),
        ``transport_dropped`` (datagrams lost on the way, frames the protocol cannot carry),
        ``malformed`` (datagrams that did not decode)."""
        return self._link.stats()

    def send(self, msg: Message, timeout: Optional[float] = None) -> None:
        """Sends ``msg`` and waits until it is on the wire (at most ``timeout`` seconds).
        Raises ``can.CanOperationError`` (``can.CanTimeoutError`` on timeout)."""
        if self._passive:
            raise CanOperationError("the bus is passive (listen-only): set state to ACTIVE to send")
        channel = msg.channel if isinstance(msg.channel, str) else None
        try:
            self._link.send(
                msg.arbitration_id,
                bytes(msg.data or b""),
                extended=msg.is_extended_id,
                remote=msg.is_remote_frame,
                error=msg.is_error_frame,
                fd=msg.is_fd,
                brs=msg.bitrate_switch,
                esi=msg.error_state_indicator,
                dlc=msg.dlc,
                ts_ns=int(msg.timestamp * 1e9) if msg.timestamp > 0 else 0,
                channel=channel,
                is_rx=msg.is_rx,
                timeout=timeout,
            )
        except TimeoutError as e:
            raise CanTimeoutError(str(e)) from e
        except (OSError, TetherError) as e:
            raise CanOperationError(str(e)) from e

    def _recv_internal(self, timeout: Optional[float]) -> tuple[Optional[Message], bool]:
        try:
            got = self._link.recv(timeout)
        except ConnectionError as e:
            raise CanOperationError(str(e)) from e
        if got is None:
            return None, True
        ts_ns, can_id, extended, remote, error, fd, brs, esi, dlc, data, channel, is_rx = got
        msg = Message(
            timestamp=ts_ns / 1e9,
            arbitration_id=can_id,
            is_extended_id=extended,
            is_remote_frame=remote,
            is_error_frame=error,
            is_fd=fd,
            bitrate_switch=brs,
            error_state_indicator=esi,
            dlc=dlc,
            data=data,
            channel=channel,
            is_rx=is_rx,
            check=False,
        )
        # python-can's filters were applied in Rust before the frame was queued.
        return msg, True

    def _apply_filters(self, filters: Optional[CanFilters]) -> None:
        self._link.set_filters([dict(f) for f in filters] if filters else None)

    @property
    def state(self) -> BusState:
        if not self._link.is_open and self._link.failure_reason is not None:
            return BusState.ERROR
        return BusState.PASSIVE if self._passive else BusState.ACTIVE

    @state.setter
    def state(self, new_state: BusState) -> None:
        if new_state == BusState.ERROR:
            raise ValueError("BusState.ERROR is reported, not set")
        self._passive = new_state == BusState.PASSIVE

    def shutdown(self) -> None:
        """Stops the background task and closes the socket (pending sends go out first)."""
        super().shutdown()
        self._link.close()
