"""A UDS (ISO 14229) tester over any python-can bus, on Tether's Rust state machine.

``UdsClient(bus, ecus=[(0x7E0, 0x7E8), ...])`` sends requests to one ECU (by its request id) or
to every ECU at once (functional, on ``functional_id``, default 0x7DF) and waits for the answers.
ISO-TP per ECU, P2 / P2* waits, response-pending (0x78), negative answers and the decoding of
DTC and DID answers run in can-io (``tether.UdsTester``, ``tether.decode_dtc_response``,
``tether.decode_did_response``) — the same code ``tether agent`` runs commands with. The bus
can be the ``tether`` python-can interface or any other python-can bus.

Errors: ``NegativeResponse`` (the ECU's ``0x7F SID NRC``; ``nrc_name`` is the ISO 14229 name,
e.g. ``requestOutOfRange``), ``UdsTimeout`` (no answer within P2 / P2*; also a
``TimeoutError``), ``tether.UdsProtocolError`` (a failed transfer or an answer that does not
decode). Like ``tether.isotp``, the client reads the bus itself while a request is out; it does
no security access, flashing or keep-alive of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import can

from tether._tether import UdsProtocolError, UdsTester, decode_did_response, decode_dtc_response, nrc_name
from tether.isotp import drive, transmit

__all__ = ["Answer", "Dtc", "NegativeResponse", "UdsClient", "UdsProtocolError", "UdsTimeout"]


class NegativeResponse(UdsProtocolError):
    """The ECU refused the request: ``0x7F sid nrc``."""

    def __init__(self, sid: int, nrc: int, responder: Optional[int] = None) -> None:
        self.sid, self.nrc, self.responder = sid, nrc, responder
        self.nrc_name = nrc_name(nrc)
        super().__init__(f"service 0x{sid:02X} refused: {self.nrc_name} (0x{nrc:02X})")


class UdsTimeout(UdsProtocolError, TimeoutError):
    """No (final) answer within P2, or P2* after response-pending."""


@dataclass(frozen=True)
class Answer:
    """One ECU's final answer to a functional request: ``data`` (the whole positive response)
    or ``nrc`` (negative), from the ECU answering on ``responder``."""

    responder: int
    data: Optional[bytes] = None
    nrc: Optional[int] = None

    @property
    def positive(self) -> bool:
        return self.nrc is None


@dataclass(frozen=True)
class Dtc:
    """A diagnostic trouble code: ``dtc`` (3 bytes as a number), ``code`` (``"P0420"``),
    ``ftb`` (failure type byte), ``status`` (the status byte) and the generic
    ``description`` when known."""

    dtc: int
    code: str
    ftb: int
    status: int
    description: Optional[str]


class UdsClient:
    """A UDS tester on ``bus`` for the ECUs ``ecus`` (``(request_id, response_id)`` pairs).

    ``p2`` / ``p2_star``: seconds to wait for a first answer / after response-pending
    (defaults 1 s and 5 s); ``functional_id=None`` disables functional requests; ``padding``,
    ``fd_tx_dl`` and ``timeout`` (ISO-TP timers) as in ``tether.IsoTpEndpoint``.
    """

    def __init__(self, bus: can.BusABC, ecus: list[tuple[int, int]], **options: Any) -> None:
        self.bus = bus
        self.tester = UdsTester(ecus, **options)
        self._sid = 0

    def _run(self, ecu: Optional[int], request: bytes) -> list[Answer]:
        self._sid = request[0] if request else 0
        self.tester.request(ecu, request)
        answers: list[Answer] = []
        try:
            transmit(self.bus, self.tester)
            while True:
                while (ev := self.tester.poll_event()) is not None:
                    if ev.kind == "positive":
                        assert ev.responder is not None and ev.data is not None
                        answers.append(Answer(ev.responder, data=ev.data))
                    elif ev.kind == "negative":
                        assert ev.responder is not None and ev.nrc is not None
                        answers.append(Answer(ev.responder, nrc=ev.nrc))
                    elif ev.kind == "finished":
                        if ev.error_kind == "timeout":
                            raise UdsTimeout(f"no answer to service 0x{self._sid:02X} in time")
                        if ev.error is not None:
                            raise UdsProtocolError(ev.error)
                        return answers
                drive(self.bus, self.tester, None)
        finally:
            self.tester.abandon()

    def request(self, ecu: int, request: bytes) -> bytes:
        """Sends ``request`` (service id first) to the ECU with request id ``ecu``; returns
        its whole positive response (empty when the request suppressed it)."""
        answers = self._run(ecu, request)
        if not answers:
            return b""
        a = answers[0]
        if a.nrc is not None:
            raise NegativeResponse(request[0], a.nrc, a.responder)
        assert a.data is not None
        return a.data

    def request_functional(self, request: bytes) -> list[Answer]:
        """Sends ``request`` to every ECU (one single frame) and returns each ECU's final
        answer, in the order they came; ``UdsTimeout`` when nobody answered."""
        return self._run(None, request)

    def read_dtcs(self, ecu: int, status_mask: int = 0xFF) -> list[Dtc]:
        """ReadDTCInformation reportDTCByStatusMask (``19 02 mask``)."""
        _, records = decode_dtc_response(self.request(ecu, bytes([0x19, 0x02, status_mask])))
        return [Dtc(*r) for r in records]

    def clear_dtcs(self, ecu: int, group: int = 0xFFFFFF) -> None:
        """ClearDiagnosticInformation (``14 gg gg gg``)."""
        self.request(ecu, bytes([0x14]) + group.to_bytes(3, "big"))

    def read_data_by_identifier(self, ecu: int, did: int) -> bytes:
        """ReadDataByIdentifier (``22 did``) of one DID: its value."""
        ((_, value),) = decode_did_response(self.request(ecu, bytes([0x22]) + did.to_bytes(2, "big")), [did])
        return value

    def diagnostic_session_control(self, ecu: int, session: int) -> bytes:
        """DiagnosticSessionControl (``10 session``): the positive response."""
        return self.request(ecu, bytes([0x10, session]))

    def ecu_reset(self, ecu: int, reset_type: int = 1) -> bytes:
        """ECUReset (``11 type``): the positive response."""
        return self.request(ecu, bytes([0x11, reset_type]))

    def tester_present(self, ecu: Optional[int] = None) -> list[Answer]:
        """TesterPresent (``3E 00``) to one ECU, or to every ECU when ``ecu`` is ``None``."""
        if ecu is None:
            return self.request_functional(b"\x3e\x00")
        return [Answer(ecu, data=self.request(ecu, b"\x3e\x00"))]

    def stats(self) -> dict[str, int]:
        """The tester's counters (``tether.UdsTester.stats``)."""
        return self.tester.stats()

