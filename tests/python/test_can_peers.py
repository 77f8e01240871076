"""python-can as a real peer of our wire protocols.

* socketcand: python-can's `socketcand` interface (the client) talks to our server
  (`tether can serve-socketcand`), both ways, and to our replay / record tools through it.
* udp_multicast: python-can's `udp_multicast` bus exchanges frames with `tether can record` and
  `tether can replay` inside a private network namespace (`unshare -rn`, loopback only, group
  239.74.163.2 port 43113), so no traffic leaves the sandbox.

Needs env TETHER_BIN (the built `tether` binary).
"""

import os
import re
import subprocess
import textwrap

import can
import pytest
from can_support import frames_of, recv_n, stop_cleanly
from loopback import free_udp_port
from netns import run_in_private_network

TETHER = os.environ.get("TETHER_BIN", "tether")
TIMEOUT = 20


def start_server(tmp_path, *extra):
    out = tmp_path / "server.log"
    proc = subprocess.Popen(
        [TETHER, "can", "serve-socketcand", "--listen", "127.0.0.1:0", "--bus", "vcan0", "-o", str(out), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    m = re.match(r"listening on 127\.0\.0\.1:(\d+)", line)
    assert m, f"unexpected first line {line!r}; stderr: {proc.stderr.read() if proc.poll() is not None else ''}"
    return proc, int(m.group(1)), out


def client(port):
    return can.Bus(interface="socketcand", host="127.0.0.1", port=port, channel="vcan0")


MESSAGES = [
    can.Message(arbitration_id=0x7E0, is_extended_id=False, data=bytes.fromhex("0210030000000000")),
    can.Message(arbitration_id=0x18DAF110, is_extended_id=True, data=b"\x01\x02\x03"),
    can.Message(arbitration_id=0x123, is_extended_id=False, data=b""),
]
EXPECTED = ["7E0#0210030000000000", "18DAF110#010203", "123#"]


def test_socketcand_clients_exchange_frames_through_our_server(tmp_path):
    proc, port, out = start_server(tmp_path)
    a = client(port)
    b = client(port)
    try:
        for m in MESSAGES:
            a.send(m)
        got = recv_n(b, 3)
        assert [(m.arbitration_id, m.is_extended_id, bytes(m.data)) for m in got] == [
            (m.arbitration_id, m.is_extended_id, bytes(m.data)) for m in MESSAGES
        ]
        b.send(can.Message(arbitration_id=0x456, is_extended_id=False, data=b"\xaa\xbb"))
        back = recv_n(a, 1)[0]
        assert (back.arbitration_id, bytes(back.data)) == (0x456, b"\xaa\xbb")
    finally:
        a.shutdown()
        b.shutdown()
        err = stop_cleanly(proc)
    assert frames_of(out.read_text()) == EXPECTED + ["456#AABB"]
    assert "clients sent 4 frames" in err


def test_tether_replay_and_record_over_socketcand(tmp_path):
    proc, port, _ = start_server(tmp_path)
    url = f"socketcand://127.0.0.1:{port}/vcan0"
    py = client(port)
    recorded = tmp_path / "recorded.log"
    rec = subprocess.Popen(
        [TETHER, "can", "record", "--from", url, "-o", str(recorded), "--count", "3"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The recorder prints this once its handshake with the server is done.
        assert rec.stderr.readline().startswith("recording from socketcand://")
        for m in MESSAGES:
            py.send(m)
        _, err = rec.communicate(timeout=TIMEOUT)
        assert rec.returncode == 0, err
        assert frames_of(recorded.read_text()) == EXPECTED

        log = tmp_path / "in.log"
        log.write_text(
            "(1600000000.000001) can0 7DF#0201000000000000\n"
            "(1600000000.000002) can0 1FFFFFFF#DEADBEEF\n"
            "(1600000000.000003) can0 001#\n"
        )
        subprocess.run([TETHER, "can", "replay", str(log), "--to", url, "--speed", "max"], check=True, timeout=TIMEOUT)
        got = recv_n(py, 3)
        assert [(m.arbitration_id, m.is_extended_id, bytes(m.data).hex().upper()) for m in got] == [
            (0x7DF, False, "0201000000000000"),
            (0x1FFFFFFF, True, "DEADBEEF"),
            (0x001, False, ""),
        ]
    finally:
        py.shutdown()
        if rec.poll() is None:
            rec.kill()
        stop_cleanly(proc)


# Runs inside the namespace: python-can sends 3 frames that `tether can record` writes, then
# `tether can replay` sends a log that a python-can bus receives. Prints one JSON result.
NAMESPACE_SCRIPT = textwrap.dedent(
    r"""
    import json, subprocess, sys, can
    tether, log, out = sys.argv[1:4]
    url = "multicast://239.74.163.2:43113"
    sender = can.Bus(interface="udp_multicast", channel="239.74.163.2", port=43113)
    rec = subprocess.Popen([tether, "can", "record", "--from", url, "-o", out, "--count", "3"],
                           stderr=subprocess.PIPE, text=True)
    first = rec.stderr.readline()
    sender.send(can.Message(arbitration_id=0x7E0, is_extended_id=False, data=bytes.fromhex("0210030000000000")))
    sender.send(can.Message(arbitration_id=0x18DAF110, is_extended_id=True, is_fd=True, bitrate_switch=True,
                            data=bytes(range(12))))
    sender.send(can.Message(arbitration_id=0x123, is_extended_id=False, is_remote_frame=True, dlc=4))
    _, err = rec.communicate(timeout=20)
    receiver = can.Bus(interface="udp_multicast", channel="239.74.163.2", port=43113)
    subprocess.run([tether, "can", "replay", log, "--to", url, "--speed", "max"], check=True, timeout=20)
    got = []
    while len(got) < 3:
        m = receiver.recv(timeout=10)
        if m is None:
            break
        got.append({"id": m.arbitration_id, "ext": m.is_extended_id, "fd": m.is_fd, "brs": m.bitrate_switch,
                    "rtr": m.is_remote_frame, "dlc": m.dlc, "data": bytes(m.data).hex().upper()})
    print(json.dumps({"record_rc": rec.returncode, "record_err": first + err, "got": got}))
    """
)


def test_udp_multicast_both_ways_in_private_namespace(tmp_path):
    log = tmp_path / "replay.log"
    log.write_text(
        "(1600000000.000001) can0 7E8#0641004A00000000\n"
        "(1600000000.000002) can0 0CF00400##3112233445566778899AABBCC\n"
        "(1600000000.000003) can0 7DF#R2\n"
    )
    out = tmp_path / "recorded.log"
    result = run_in_private_network(tmp_path, NAMESPACE_SCRIPT, TETHER, str(log), str(out))
    assert result["record_rc"] == 0, result["record_err"]
    assert frames_of(out.read_text()) == [
        "7E0#0210030000000000",
        "18DAF110##1000102030405060708090A0B",
        "123#R4",
    ]
    assert result["got"] == [
        {"id": 0x7E8, "ext": False, "fd": False, "brs": False, "rtr": False, "dlc": 8, "data": "0641004A00000000"},
        {"id": 0x0CF00400, "ext": True, "fd": True, "brs": True, "rtr": False, "dlc": 12,
         "data": "112233445566778899AABBCC"},
        {"id": 0x7DF, "ext": False, "fd": False, "brs": False, "rtr": True, "dlc": 2, "data": ""},
    ]


CAPTURE = (
    "(1600000000.000001) can0 7E0#0210030000000000 R\n"
    "(1600000000.000500) can0 7E8#0641004A00000000 R\n"
    "(1600000000.001000) can1 18DAF110##1000102030405060708090A0B T\n"
    "(1600000000.002000) can0 123#R4\n"
    "(1600000000.003000) can0 20000040#0000000000000000\n"
)


@pytest.mark.parametrize("protocol", ["remp", "cannelloni"])
def test_cli_replay_into_record_over_udp(tmp_path, protocol):
    log = tmp_path / "capture.log"
    log.write_text(CAPTURE)
    out = tmp_path / "recorded.log"
    port = free_udp_port()
    url = f"udp://127.0.0.1:{port}"
    rec = subprocess.Popen(
        [TETHER, "can", "record", "--from", url, "--protocol", protocol, "-o", str(out), "--count", "5"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert rec.stderr.readline().startswith("recording")
        subprocess.run(
            [TETHER, "can", "replay", str(log), "--to", url, "--protocol", protocol, "--speed", "10"],
            check=True,
            timeout=TIMEOUT,
        )
        _, err = rec.communicate(timeout=TIMEOUT)
    finally:
        if rec.poll() is None:
            rec.kill()
    assert rec.returncode == 0, err
    if protocol == "remp":
        # REMP keeps timestamps, channels and directions: the log comes back byte for byte.
        assert out.read_text() == CAPTURE
        assert "0 lost, 0 duplicate" in err
    else:
        # cannelloni carries frames only.
        assert frames_of(out.read_text()) == frames_of(CAPTURE)
