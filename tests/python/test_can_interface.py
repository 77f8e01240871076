"""The python-can interface `tether` (bindings/python/tether/can_bus.py), used as any python-can
program would use it: `can.Bus(interface="tether", channel=URL)`.

Peers are real: `tether can replay`, `tether can record`, `tether can dongle` and
`tether can serve-socketcand` (the binary at TETHER_BIN), python-can's own `socketcand` client,
and python-can's `udp_multicast` bus inside a private network namespace (`unshare -rn`).
Everything runs on loopback.

Not here yet: udsoncan over can-isotp against `tether can ecu` — that command does not exist
yet; when it does, a test opens `can.Bus(interface="tether", ...)` towards it and runs a UDS
session through can-isotp (the NOTES say this works over python-can's `udp_multicast`).
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import can
import pytest
from can_support import frames_of, recv_n, stop_cleanly
from loopback import free_udp_port
from netns import run_in_private_network

import tether
from tether.can_bus import TetherBus

TETHER = os.environ.get("TETHER_BIN", "tether")
TIMEOUT = 20
CAPTURE = Path(__file__).resolve().parents[2] / "data" / "captures" / "nissan-leaf-isotp.log"

SAMPLE = (
    "(1600000000.000001) can0 7E0#0210030000000000 R\n"
    "(1600000000.000500) can0 7E8#0641004A00000000 R\n"
    "(1600000000.001000) can1 18DAF110##1000102030405060708090A0B T\n"
    "(1600000000.002000) can0 123#R4\n"
    "(1600000000.003000) can0 7E8#0762\n"
)

MESSAGES = [
    can.Message(arbitration_id=0x7E0, is_extended_id=False, data=bytes.fromhex("0210030000000000")),
    can.Message(arbitration_id=0x18DAF110, is_extended_id=True, is_fd=True, bitrate_switch=True, data=bytes(range(12))),
    can.Message(arbitration_id=0x123, is_extended_id=False, is_remote_frame=True, dlc=4),
]
EXPECTED_LINES = ["7E0#0210030000000000", "18DAF110##1000102030405060708090A0B", "123#R4"]


def view(m: can.Message) -> tuple[Any, ...]:
    return (m.arbitration_id, m.is_extended_id, m.is_remote_frame, m.is_fd, m.bitrate_switch, m.dlc, bytes(m.data))


def port_of(bus: TetherBus) -> str:
    assert bus.local_addr is not None
    return bus.local_addr.rsplit(":", 1)[1]


def state_of(bus: can.BusABC) -> can.BusState:
    return bus.state


def tether_bus(channel: str, **kwargs: Any) -> TetherBus:
    bus = can.Bus(interface="tether", channel=channel, **kwargs)
    assert isinstance(bus, TetherBus)
    return bus


def record_udp(out: Path, count: int, *protocol: str) -> tuple[subprocess.Popen[str], str]:
    """`tether can record` listening on a free UDP port, ready; returns it and its address."""
    url = f"udp://127.0.0.1:{free_udp_port()}"
    rec = subprocess.Popen(
        [TETHER, "can", "record", "--from", url, *protocol, "-o", str(out), "--count", str(count)],
        stderr=subprocess.PIPE, text=True,
    )
    assert rec.stderr is not None and rec.stderr.readline().startswith("recording")
    return rec, url


def finish(rec: subprocess.Popen[str]) -> str:
    try:
        _, err = rec.communicate(timeout=TIMEOUT)
    finally:
        if rec.poll() is None:
            rec.kill()
    assert rec.returncode == 0, err
    return err


def agent_bus(**kwargs: Any) -> TetherBus:
    bus = can.Bus(interface="tether", channel="udp://127.0.0.1:0", listen=True, **kwargs)
    assert isinstance(bus, TetherBus)
    return bus


def test_python_can_finds_the_interface_through_its_entry_point() -> None:
    assert "tether" in can.interfaces.BACKENDS
    assert can.interfaces.BACKENDS["tether"] == ("tether.can_bus", "TetherBus")
    with pytest.raises(can.CanInitializationError, match="unknown scheme"):
        can.Bus(interface="tether", channel="tcp://127.0.0.1:1")
    with pytest.raises(can.CanInitializationError):
        can.Bus(interface="tether", channel="udp://127.0.0.1:1", serial="has space")


def test_replayed_capture_arrives_filtered_in_rust(tmp_path: Path) -> None:
    """`tether can replay` (a REMP dongle) sends the Nissan capture to a python-can program on
    the agent side; a filter keeps the ECU's answers (0x7BB) and the rest never reaches Python."""
    frames = tether.read_log(CAPTURE)
    answers = frames.filter_ids([0x7BB])
    bus = agent_bus(can_filters=[{"can_id": 0x7BB, "can_mask": 0x7FF, "extended": False}])
    try:
        port = port_of(bus)
        subprocess.run(
            [TETHER, "can", "replay", str(CAPTURE), "--to", f"udp://127.0.0.1:{port}", "--speed", "max"],
            check=True, timeout=60, capture_output=True,
        )
        got = recv_n(bus, len(answers))
        assert bus.recv(timeout=0.3) is None
        assert [m.arbitration_id for m in got] == [0x7BB] * len(answers)
        assert [bytes(m.data) for m in got] == [bytes(a.data) for a in answers]
        # REMP keeps the capture's timestamps and channel names.
        assert [round(m.timestamp * 1e6) for m in got] == [int(t) // 1000 for t in answers.ts_ns]
        assert {m.channel for m in got} == {"can1"}
        stats = bus.stats()
        assert stats["received"] == len(answers)
        assert stats["filtered"] == len(frames) - len(answers)
        assert stats["dropped"] == stats["malformed"] == stats["transport_dropped"] == 0
    finally:
        bus.shutdown()


def test_a_python_can_program_is_a_dongle_for_tether_can_record(tmp_path: Path) -> None:
    out = tmp_path / "recorded.log"
    rec, url = record_udp(out, 3)
    with can.Bus(interface="tether", channel=url, serial="PY-DONGLE") as bus:
        for m in MESSAGES:
            bus.send(m)
        err = finish(rec)
    assert frames_of(out.read_text()) == EXPECTED_LINES
    assert "0 lost" in err


def test_tether_can_dongle_and_a_python_can_agent_talk_both_ways(tmp_path: Path) -> None:
    replay = tmp_path / "replay.log"
    replay.write_text(SAMPLE)
    out = tmp_path / "from-agent.log"
    bus = agent_bus()
    port = port_of(bus)
    dongle = subprocess.Popen(
        [TETHER, "can", "dongle", "--serial", "SIM-7", "--agent", f"127.0.0.1:{port}",
         "--replay", str(replay), "--speed", "max", "--record", str(out)],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        got = recv_n(bus, 5)
        assert [m.arbitration_id for m in got] == [0x7E0, 0x7E8, 0x18DAF110, 0x123, 0x7E8]
        assert got[2].is_fd and got[2].bitrate_switch and got[2].channel == "can1"
        assert got[3].is_remote_frame and got[3].dlc == 4
        # The agent side answers the dongle it heard.
        for m in MESSAGES:
            bus.send(m)
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and len(frames_of(out.read_text() if out.exists() else "")) < 3:
            time.sleep(0.05)
        err = stop_cleanly(dongle)
    finally:
        bus.shutdown()
        if dongle.poll() is None:
            dongle.kill()
    assert frames_of(out.read_text()) == EXPECTED_LINES
    assert "received 3 frames" in err and "0 datagrams lost" in err


def test_cannelloni_both_ways(tmp_path: Path) -> None:
    log = tmp_path / "in.log"
    log.write_text(SAMPLE)
    with tether_bus("cannelloni://127.0.0.1:0", listen=True, can_channel="vcan9") as bus:
        port = port_of(bus)
        subprocess.run(
            [TETHER, "can", "replay", str(log), "--to", f"udp://127.0.0.1:{port}", "--protocol", "cannelloni",
             "--speed", "max"],
            check=True, timeout=TIMEOUT, capture_output=True,
        )
        got = recv_n(bus, 5)
        assert [view(m) for m in got][:3] == [
            (0x7E0, False, False, False, False, 8, bytes.fromhex("0210030000000000")),
            (0x7E8, False, False, False, False, 8, bytes.fromhex("0641004A00000000")),
            (0x18DAF110, True, False, True, True, 12, bytes(range(12))),
        ]
        assert {m.channel for m in got} == {"vcan9"}  # cannelloni carries no channel names

    out = tmp_path / "out.log"
    rec, url = record_udp(out, 3, "--protocol", "cannelloni")
    with can.Bus(interface="tether", channel=url.replace("udp://", "cannelloni://")) as bus:
        for m in MESSAGES:
            bus.send(m)
        finish(rec)
    assert frames_of(out.read_text()) == EXPECTED_LINES


def start_socketcand(tmp_path: Path) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [TETHER, "can", "serve-socketcand", "--listen", "127.0.0.1:0", "--bus", "vcan0",
         "-o", str(tmp_path / "server.log")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    m = re.match(r"listening on 127\.0\.0\.1:(\d+)", proc.stdout.readline())
    assert m, proc.stderr.read() if proc.stderr else ""
    return proc, int(m.group(1))


def test_socketcand_with_python_cans_own_client_as_peer(tmp_path: Path) -> None:
    proc, port = start_socketcand(tmp_path)
    ours = can.Bus(interface="tether", channel=f"socketcand://127.0.0.1:{port}/vcan0")
    theirs = can.Bus(interface="socketcand", host="127.0.0.1", port=port, channel="vcan0")
    try:
        classic = [MESSAGES[0], can.Message(arbitration_id=0x1FFFFFFF, is_extended_id=True, data=b"\xde\xad")]
        for m in classic:
            ours.send(m)
        assert [view(m) for m in recv_n(theirs, 2)] == [view(m) for m in classic]
        theirs.send(can.Message(arbitration_id=0x456, is_extended_id=False, data=b"\xaa\xbb"))
        back = recv_n(ours, 1)[0]
        assert (back.arbitration_id, bytes(back.data), back.channel, back.is_rx) == (0x456, b"\xaa\xbb", "vcan0", True)
        # socketcand's raw mode has no FD frames: refused, not dropped silently.
        with pytest.raises(can.CanOperationError, match="socketcand"):
            ours.send(MESSAGES[1])
        assert state_of(ours) == can.BusState.ACTIVE
        stop_cleanly(proc)
        # The server went away: the bus reports it instead of waiting forever.
        with pytest.raises(can.CanOperationError, match="closed"):
            ours.recv(timeout=5)
        assert state_of(ours) == can.BusState.ERROR
    finally:
        ours.shutdown()
        theirs.shutdown()
        if proc.poll() is None:
            proc.kill()


def test_filters_state_own_messages_notifier_and_iteration() -> None:
    """Two python-can buses over REMP on loopback: the generic python-can behaviours."""
    agent = agent_bus(receive_own_messages=True)
    port = port_of(agent)
    dongle = can.Bus(interface="tether", channel=f"udp://127.0.0.1:{port}")
    try:
        # Timeout: nothing yet.
        assert dongle.recv(timeout=0.05) is None
        # Filters: extended ids only, in one range.
        agent.set_filters([{"can_id": 0x18DA0000, "can_mask": 0x1FFF0000, "extended": True}])
        for i in range(4):
            dongle.send(can.Message(arbitration_id=0x18DAF100 + i, data=[i]))
            dongle.send(can.Message(arbitration_id=0x7E0, is_extended_id=False, data=[i]))
        got = recv_n(agent, 4)
        assert [m.arbitration_id for m in got] == [0x18DAF100 + i for i in range(4)]
        assert agent.recv(timeout=0.2) is None
        assert agent.stats()["filtered"] == 4
        agent.set_filters(None)

        # Own messages come back with is_rx false; the peer gets them too.
        agent.send(can.Message(arbitration_id=0x7DF, is_extended_id=False, data=b"\x02\x01\x0c"))
        own = recv_n(agent, 1)[0]
        assert (own.arbitration_id, own.is_rx) == (0x7DF, False)
        assert recv_n(dongle, 1)[0].is_rx

        # Listen-only.
        agent.state = can.BusState.PASSIVE
        assert agent.state == can.BusState.PASSIVE
        with pytest.raises(can.CanOperationError, match="passive"):
            agent.send(MESSAGES[0])
        agent.state = can.BusState.ACTIVE
        with pytest.raises(ValueError):
            agent.state = can.BusState.ERROR

        # A notifier thread reads while this thread sends: sending does not wait for it.
        reader = can.BufferedReader()
        notifier = can.Notifier(agent, [reader], timeout=0.5)
        try:
            for i in range(200):
                dongle.send(can.Message(arbitration_id=0x100 + i % 0x600, is_extended_id=False, data=[i % 256]))
            got = []
            while len(got) < 200:
                m = reader.get_message(timeout=10)
                assert m is not None, f"{len(got)} of 200 through the notifier"
                got.append(m)
            assert [m.data[0] for m in got] == [i % 256 for i in range(200)]
        finally:
            notifier.stop()

        # Iteration (python-can's `for msg in bus`).
        dongle.send(MESSAGES[0])
        dongle.send(MESSAGES[1])
        assert [view(m) for m in itertools.islice(agent, 2)] == [view(m) for m in MESSAGES[:2]]

        # Sends from several threads at once all arrive.
        def burst(base: int) -> None:
            for i in range(50):
                dongle.send(can.Message(arbitration_id=base + i, is_extended_id=False))

        threads = [threading.Thread(target=burst, args=(b,)) for b in (0x100, 0x200, 0x300)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ids = sorted(m.arbitration_id for m in recv_n(agent, 150))
        assert ids == sorted(b + i for b in (0x100, 0x200, 0x300) for i in range(50))
    finally:
        dongle.shutdown()
        agent.shutdown()
        agent.shutdown()  # idempotent
    with pytest.raises(can.CanOperationError):
        agent.send(MESSAGES[0])


def test_invalid_frames_are_refused_before_sending() -> None:
    with agent_bus() as bus:
        port = port_of(bus)
        with tether_bus(f"udp://127.0.0.1:{port}") as dongle:
            bad = can.Message(arbitration_id=0x800, is_extended_id=False, check=False)
            with pytest.raises(can.CanOperationError, match="out of range"):
                dongle.send(bad)
            assert dongle.stats()["sent"] == 0


# Runs inside a private network namespace: python-can's own `udp_multicast` bus and our
# `tether` interface on the same group, plus `tether can replay` into ours. Prints JSON.
NAMESPACE_SCRIPT = textwrap.dedent(
    r"""
    import json, subprocess, sys, can
    tether_bin, log = sys.argv[1:3]
    url = "multicast://239.74.163.2:43113"
    theirs = can.Bus(interface="udp_multicast", channel="239.74.163.2", port=43113)
    ours = can.Bus(interface="tether", channel=url)
    def view(m):
        return [m.arbitration_id, m.is_extended_id, m.is_remote_frame, m.is_fd, m.bitrate_switch, m.dlc,
                bytes(m.data).hex().upper()]
    def recv_n(bus, n):
        got = []
        while len(got) < n:
            m = bus.recv(timeout=10)
            if m is None:
                break
            got.append(view(m))
        return got
    sent = [
        can.Message(arbitration_id=0x7E0, is_extended_id=False, data=bytes.fromhex("0210030000000000")),
        can.Message(arbitration_id=0x18DAF110, is_extended_id=True, is_fd=True, bitrate_switch=True,
                    data=bytes(range(12))),
        can.Message(arbitration_id=0x123, is_extended_id=False, is_remote_frame=True, dlc=4),
    ]
    for m in sent:
        theirs.send(m)
    from_theirs = recv_n(ours, 3)
    for m in sent:
        ours.send(m)
    from_ours = recv_n(theirs, 3)
    ours.set_filters([{"can_id": 0x7E8, "can_mask": 0x7FF}])
    subprocess.run([tether_bin, "can", "replay", log, "--to", url, "--speed", "max"], check=True, timeout=20)
    replayed = recv_n(ours, 2)
    extra = ours.recv(timeout=0.3)
    stats = ours.stats()
    ours.shutdown()
    theirs.shutdown()
    print(json.dumps({"sent": [view(m) for m in sent], "from_theirs": from_theirs, "from_ours": from_ours,
                      "replayed": replayed, "extra": extra is not None, "stats": stats}))
    """
)


def test_udp_multicast_with_python_cans_own_bus_in_a_private_namespace(tmp_path: Path) -> None:
    log = tmp_path / "replay.log"
    log.write_text(SAMPLE)
    result = run_in_private_network(tmp_path, NAMESPACE_SCRIPT, TETHER, str(log))
    assert result["from_theirs"] == result["sent"]
    assert result["from_ours"] == result["sent"]
    assert result["replayed"] == [
        [0x7E8, False, False, False, False, 8, "0641004A00000000"],
        [0x7E8, False, False, False, False, 2, "0762"],
    ]
    assert not result["extra"]
    assert result["stats"]["filtered"] == 3 and result["stats"]["malformed"] == 0
