"""ISO-TP and UDS from Python on can-io's state machines (`tether.isotp.IsoTpSocket`,
`tether.uds.UdsClient`), over python-can's `virtual` bus — any python-can bus works — with the
python `can-isotp` stack as the peer: messages of every length class both ways (single frame,
12-bit and escaped first frames) under the peer's block size and STmin, a peer that never
answers flow control, an overflow, and a UDS exchange with response-pending answered by a
can-isotp ECU. Over the `tether` interface and against `tether can ecu`, see
test_uds_interop.py.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import can
import isotp
import pytest

import tether
from tether.isotp import IsoTpSocket, IsoTpTransferError
from tether.uds import Dtc, NegativeResponse, UdsClient, UdsTimeout

SIZES = [1, 7, 8, 62, 63, 4095, 4096, 9000]


@pytest.fixture
def channel() -> str:
    return f"isotp-{uuid.uuid4().hex[:8]}"


def peer_stack(channel: str, txid: int, rxid: int, **params: object) -> tuple[can.BusABC, can.Notifier, isotp.NotifierBasedCanStack]:
    bus = can.Bus(interface="virtual", channel=channel)
    notifier = can.Notifier(bus, [])
    stack = isotp.NotifierBasedCanStack(
        bus, notifier, address=isotp.Address(isotp.AddressingMode.Normal_11bits, txid=txid, rxid=rxid),
        params={"blocking_send": False, "max_frame_size": 1 << 16, **params},
    )
    stack.start()
    return bus, notifier, stack


@pytest.fixture
def peer(channel: str) -> Iterator[isotp.NotifierBasedCanStack]:
    bus, notifier, stack = peer_stack(channel, 0x7E8, 0x7E0, blocksize=3, stmin=1, tx_padding=0xAA)
    yield stack
    stack.stop()
    notifier.stop()
    bus.shutdown()


def test_messages_both_ways_with_can_isotp(channel: str, peer: isotp.NotifierBasedCanStack) -> None:
    with can.Bus(interface="virtual", channel=channel) as bus:
        sock = IsoTpSocket(bus, 0x7E0, 0x7E8, block_size=2, st_min=0.0005)
        for n in SIZES:
            payload = bytes((i * 7 + n) & 0xFF for i in range(n))
            sock.send(payload, timeout=20)
            got = peer.recv(block=True, timeout=20)
            assert got is not None and bytes(got) == payload, n
            answer = payload[::-1] + b"\x01"
            peer.send(answer)
            assert sock.recv(timeout=20) == answer, n
        stats = sock.stats()
        # The whole key set is the Python API (the Rust struct's field names).
        assert set(stats) == {"frames_sent", "frames_received", "frames_ignored", "messages_sent",
                              "messages_received", "rx_aborted", "tx_aborted", "invalid_frames",
                              "unexpected_frames"}
        assert all(type(v) is int for v in stats.values())
        assert (stats["messages_sent"], stats["messages_received"]) == (len(SIZES), len(SIZES))
        assert stats["rx_aborted"] == stats["tx_aborted"] == stats["invalid_frames"] == 0
        assert sock.errors == []


def test_a_silent_peer_aborts_with_n_bs_and_recv_times_out(channel: str) -> None:
    with can.Bus(interface="virtual", channel=channel) as bus:
        sock = IsoTpSocket(bus, 0x7E0, 0x7E8, timeout=0.2)
        started = time.monotonic()
        with pytest.raises(IsoTpTransferError, match="N_Bs"):
            sock.send(bytes(100))
        assert 0.15 < time.monotonic() - started < 5
        assert sock.stats()["tx_aborted"] == 1
        # A single frame needs no flow control: it goes out.
        sock.send(b"\x3e\x00")
        assert sock.recv(timeout=0.1) is None


def test_overflow_from_a_small_receiver(channel: str) -> None:
    bus2, notifier, small = peer_stack(channel, 0x7E8, 0x7E0, max_frame_size=64)
    try:
        with can.Bus(interface="virtual", channel=channel) as bus:
            sock = IsoTpSocket(bus, 0x7E0, 0x7E8)
            with pytest.raises(IsoTpTransferError, match="overflow"):
                sock.send(bytes(200), timeout=5)
            # And the Rust side refuses what exceeds its own limit, answering OVERFLOW.
            limited = IsoTpSocket(bus, 0x7E0, 0x7E8, max_rx_len=16)
            small.send(bytes(40))
            assert limited.recv(timeout=0.5) is None
            assert any("exceeds the receive limit" in e for e in limited.errors), limited.errors
    finally:
        small.stop()
        notifier.stop()
        bus2.shutdown()


def test_bad_settings_raise_named_errors(channel: str) -> None:
    with can.Bus(interface="virtual", channel=channel) as bus:
        with pytest.raises(ValueError, match="TX_DL"):
            IsoTpSocket(bus, 0x7E0, 0x7E8, fd_tx_dl=10)
        with pytest.raises(ValueError, match="target_address"):
            IsoTpSocket(bus, 0x7E0, 0x7E8, target_address=1)
        with pytest.raises(ValueError, match="out of range"):
            IsoTpSocket(bus, 0x2000_0000, 0x7E8)
        with pytest.raises(ValueError, match="non-negative"):
            IsoTpSocket(bus, 0x7E0, 0x7E8, st_min=-1.0)
        with pytest.raises(tether.UdsProtocolError, match="no ECU"):
            UdsClient(bus, [(0x7E0, 0x7E8)]).request(0x7E5, b"\x3e\x00")


def serve_ecu(stack: isotp.NotifierBasedCanStack, stop: threading.Event, seen: list[bytes]) -> None:
    """A small ECU on can-isotp: DTCs (after one response-pending), a VIN, refusals."""
    while not stop.is_set():
        req = stack.recv(block=True, timeout=0.05)
        if req is None:
            continue
        seen.append(bytes(req))
        if req[:2] == b"\x19\x02":
            stack.send(b"\x7f\x19\x78")
            time.sleep(0.3)
            stack.send(b"\x59\x02\xff" + bytes([0x04, 0x20, 0x00, 0x2F, 0xC1, 0x00, 0x00, 0x09]))
        elif req == b"\x22\xf1\x90":
            stack.send(b"\x62\xf1\x90" + b"WVWZZZ1JZXW000001")
        elif req[:1] == b"\x22":
            stack.send(b"\x7f\x22\x31")
        elif req[:1] == b"\x11":
            pass  # no answer at all
        else:
            stack.send(bytes([0x7F, req[0], 0x11]))


def test_uds_client_against_a_can_isotp_ecu(channel: str, peer: isotp.NotifierBasedCanStack) -> None:
    stop, seen = threading.Event(), list[bytes]()
    ecu = threading.Thread(target=serve_ecu, args=(peer, stop, seen), daemon=True)
    ecu.start()
    try:
        with can.Bus(interface="virtual", channel=channel) as bus:
            client = UdsClient(bus, [(0x7E0, 0x7E8)], p2=0.2, p2_star=2.0)
            assert client.read_dtcs(0x7E0) == [
                Dtc(0x042000, "P0420", 0, 0x2F, "Catalyst System Efficiency Below Threshold"),
                Dtc(0xC10000, "U0100", 0, 0x09, 'Lost Communication With ECM/PCM "A"'),
            ]
            assert client.read_data_by_identifier(0x7E0, 0xF190) == b"WVWZZZ1JZXW000001"
            with pytest.raises(NegativeResponse) as refused:
                client.read_data_by_identifier(0x7E0, 0x1234)
            assert (refused.value.sid, refused.value.nrc, refused.value.nrc_name) == (0x22, 0x31, "requestOutOfRange")
            with pytest.raises(NegativeResponse) as unsupported:
                client.diagnostic_session_control(0x7E0, 3)
            assert unsupported.value.nrc_name == "serviceNotSupported"
            started = time.monotonic()
            with pytest.raises(UdsTimeout):
                client.ecu_reset(0x7E0)
            assert 0.15 < time.monotonic() - started < 2
            stats = client.stats()
            assert set(stats) == {"requests", "positive", "negative", "pending", "timeouts", "unmatched",
                                  "failed_transfers"}
            assert all(type(v) is int for v in stats.values())
            assert (stats["requests"], stats["positive"], stats["negative"], stats["pending"], stats["timeouts"]) == (
                5, 2, 2, 1, 1)
    finally:
        stop.set()
        ecu.join()
    assert seen == [b"\x19\x02\xff", b"\x22\xf1\x90", b"\x22\x12\x34", b"\x10\x03", b"\x11\x01"]


def test_decoders_refuse_what_does_not_decode() -> None:
    assert tether.nrc_name(0x78) == "requestCorrectlyReceivedResponsePending"
    assert tether.nrc_name(0xF0).startswith("nrc0x")
    assert tether.decode_did_response(b"\x62\xf1\x90AB\xf1\x91C", [0xF190, 0xF191], {0xF190: 2}) == [
        (0xF190, b"AB"), (0xF191, b"C"),
    ]
    with pytest.raises(tether.UdsProtocolError, match="not a multiple of 4"):
        tether.decode_dtc_response(b"\x59\x02\xff\x01\x02")
    with pytest.raises(tether.UdsProtocolError, match="was not requested"):
        tether.decode_did_response(b"\x62\x12\x34\x00", [0xF190])
    with pytest.raises(tether.UdsProtocolError):
        tether.decode_dtc_response(b"")
