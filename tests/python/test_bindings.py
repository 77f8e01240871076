"""The `tether` Python module (bindings/, PyO3): frames, logs, REMP, the data-plane protocol
and metering validation, checked against python-can on the shared captures, against the real
`tether can dongle` binary over UDP, and as a data-plane agent of the real `tether server`.

Needs the module installed in the virtualenv (scripts/test.sh runs `maturin develop`) and
TETHER_BIN (the built `tether` binary).
"""

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import can
import pytest
from tether_server import api, create_token, pair_in_group, running_server
from websockets.sync.client import connect

import tether

# shared/ sits beside the repository (CI); TETHER_SHARED_DATA points elsewhere (a git worktree).
DATA = Path(os.environ.get("TETHER_SHARED_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data" / "can"))
CAPTURE = Path(__file__).resolve().parents[2] / "data" / "captures" / "nissan-leaf-isotp.log"


def view(frame):
    return (frame.can_id, frame.is_extended, frame.kind, frame.data, frame.length)


# --- frames ----------------------------------------------------------------------------------


def test_frames_are_validated_and_compare_by_value():
    f = tether.Frame(0x7DF, b"\x02\x01\x0c", ts_ns=1_600_000_000_000_001_000, direction="tx")
    assert (f.can_id, f.is_extended, f.kind, f.data, f.length) == (0x7DF, False, "data", b"\x02\x01\x0c", 3)
    assert (f.channel, f.direction, f.ts_ns) == ("can0", "tx", 1_600_000_000_000_001_000)
    assert f == tether.Frame(0x7DF, b"\x02\x01\x0c", ts_ns=1_600_000_000_000_001_000, direction="tx")
    assert len({f, tether.Frame(0x7DF, b"\x02\x01\x0c", ts_ns=1_600_000_000_000_001_000, direction="tx")}) == 1
    assert f != tether.Frame(0x7DF, b"\x02\x01\x0d", ts_ns=1_600_000_000_000_001_000, direction="tx")
    assert "7DF#02010C" in repr(f)
    # An identifier above 11 bits is extended unless told otherwise.
    assert tether.Frame(0x18DAF110).is_extended
    fd = tether.Frame(0x123, bytes(range(12)), fd=True, brs=True)
    assert (fd.kind, fd.is_fd, fd.brs, fd.esi, fd.length) == ("fd", True, True, False, 12)
    rtr = tether.Frame(0x123, remote=True, length=4)
    assert (rtr.kind, rtr.data, rtr.length) == ("remote", b"", 4)
    # A zero-length frame is still a frame.
    assert tether.Frame(0x1)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(can_id=0x800, extended=False), tether.InvalidFrameError),
        (dict(can_id=0x2000_0000), tether.InvalidFrameError),
        (dict(can_id=0x1, data=bytes(9)), tether.InvalidFrameError),
        (dict(can_id=0x1, data=bytes(9), fd=True), tether.InvalidFrameError),
        (dict(can_id=0x1, remote=True, length=9), tether.InvalidFrameError),
        (dict(can_id=0x1, brs=True), ValueError),
        (dict(can_id=0x1, data=b"\x01", remote=True), ValueError),
        (dict(can_id=0x1, direction="up"), ValueError),
        (dict(can_id=0x1, channel=""), ValueError),
        # A name that would break a candump line, and one longer than Linux allows.
        (dict(can_id=0x1, channel="can0 1#00\n(0.0) x"), ValueError),
        (dict(can_id=0x1, channel="c" * 16), ValueError),
    ],
)
def test_bad_frames_raise_a_named_error(kwargs, error):
    with pytest.raises(error):
        tether.Frame(**kwargs)
    assert issubclass(tether.InvalidFrameError, tether.TetherError)
    assert issubclass(tether.TetherError, ValueError)


# --- logs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["savvycan-candump.log", "nissan-leaf-isotp.log"])
def test_candump_captures_read_as_python_can_reads_them(name):
    path = DATA / name
    log = tether.parse_log(path.read_bytes())
    assert log.format == "candump" and log.bad_lines == [] and len(log) > 1000
    with can.LogReader(str(path)) as reader:
        theirs = list(reader)
    assert len(theirs) == len(log.frames)
    for ours, msg in zip(log.frames, theirs):
        assert (ours.can_id, ours.is_extended, ours.data, ours.channel) == (
            msg.arbitration_id,
            msg.is_extended_id,
            bytes(msg.data),
            msg.channel,
        )
        assert ours.is_remote == msg.is_remote_frame and ours.is_fd == msg.is_fd
        assert abs(ours.ts_ns / 1e9 - msg.timestamp) < 1e-6


@pytest.mark.parametrize("fmt", ["candump", "asc", "jsonl"])
def test_every_format_round_trips(fmt):
    frames = tether.parse_log((DATA / "savvycan-candump.log").read_bytes()).frames[:500]
    text = tether.format_log(frames, fmt)
    back = tether.parse_log(text, fmt)
    assert back.format == fmt and len(back) == len(frames)
    assert [view(f) for f in back.frames] == [view(f) for f in frames]
    if fmt != "asc":  # ASC keeps time relative to its header date, and channels as numbers
        assert back.frames == frames
    # str works as well as bytes, and the format is told from the first line.
    assert len(tether.parse_log(text.decode())) == len(frames)


def test_asc_samples_read_as_python_can_reads_them(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    path = DATA / "python-can-asc" / "test_CanFdMessage.asc"
    log = tether.parse_log(path.read_bytes())
    with can.ASCReader(str(path)) as reader:
        theirs = [m for m in reader if not m.is_error_frame]
    ours = [f for f in log.frames if not f.is_error]
    assert [(f.can_id, f.data, f.is_fd) for f in ours] == [
        (m.arbitration_id, bytes(m.data), m.is_fd) for m in theirs
    ]


def test_bad_lines_raise_with_their_number_or_are_listed():
    text = b"(1.000000) can0 123#11\n(2.000000) can0 12345678901#11\n(3.000000) can0 124#22\n"
    with pytest.raises(tether.LogFormatError, match="line 2"):
        tether.parse_log(text)
    log = tether.parse_log(text, strict=False)
    assert [f.can_id for f in log.frames] == [0x123, 0x124]
    assert [n for n, _ in log.bad_lines] == [2]
    with pytest.raises(tether.LogFormatError):
        tether.parse_log(b"hello world\n")
    with pytest.raises(ValueError):
        tether.parse_log(b"", "pcap")
    # Drops the capture itself reported are counted, not lost.
    dropped = tether.parse_log(
        b"(1.0) can0 123#11\nDROPCOUNT: dropped 5 CAN frames on 'can0' socket (total drops 5)\n(2.0) can0 123#12\n"
    )
    assert (len(dropped), dropped.dropped) == (2, 5)
    most = b"DROPCOUNT: dropped 18446744073709551615 CAN frames on 'can0' socket (total drops 1)\n"
    assert tether.parse_log(most * 2, "candump").dropped == 2**64 - 1


# --- REMP ------------------------------------------------------------------------------------


def test_remp_round_trips_and_tracks_sequence_and_restarts():
    sender = tether.RempSender("PY-1", boot_id=7)
    receiver = tether.RempReceiver()
    frames = [
        tether.Frame(0x100 + i, bytes([i % 256] * (i % 9)), ts_ns=1_000 + i, channel=f"can{i % 2}", direction="rx")
        for i in range(300)
    ]
    datagrams = [sender.hello()]
    for f in frames:
        datagrams += sender.push(f)
    datagrams.append(sender.flush())
    assert sender.flush() is None
    got = []
    events = [receiver.handle(d) for d in datagrams]
    for e in events:
        assert e["serial"] == "PY-1"
        if e["type"] == "frames":
            got += e["frames"]
    assert events[0] == {"type": "hello", "serial": "PY-1", "boot_id": 7, "keepalive_ms": 1000, "restarted": False}
    assert got == frames
    # A datagram received twice is dropped and counted.
    again = receiver.handle(datagrams[-1])
    assert (again["type"], again["verdict"]) == ("dropped", "duplicate")
    stats = receiver.stats("PY-1")
    # The whole key set is the Python API (the Rust struct's field names).
    assert set(stats) == {"datagrams", "frames", "lost", "duplicate", "reordered", "stale", "restarts",
                          "dongle_dropped"}
    assert all(type(v) is int for v in stats.values())
    assert (stats["frames"], stats["duplicate"], stats["lost"]) == (300, 1, 0)
    # Bytes that are not REMP change nothing.
    for bad in [b"", b"\x00" * 3, datagrams[1][:-1], b"XXXX" + datagrams[1][4:]]:
        with pytest.raises(tether.TetherError):
            receiver.handle(bad)
    assert receiver.stats("PY-1") == stats
    restarted = tether.RempSender("PY-1", boot_id=8)
    assert receiver.handle(restarted.hello())["restarted"]
    with pytest.raises(tether.MalformedError):
        tether.RempSender("has space")


def tether_bin():
    binary = os.environ.get("TETHER_BIN")
    assert binary and Path(binary).exists(), "TETHER_BIN must point at the built tether binary"
    return binary


def udp_socket():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(30)
    return sock


def test_a_python_agent_reads_the_rust_dongle_simulator(tmp_path):
    frames = tether.parse_log(CAPTURE.read_bytes()).frames[:400]
    replay = tmp_path / "replay.log"
    replay.write_bytes(tether.format_log(frames))
    sock = udp_socket()
    child = subprocess.Popen(
        [tether_bin(), "can", "dongle", "--serial", "PY-REPLAY", "--agent", "%s:%d" % sock.getsockname(),
         "--replay", str(replay), "--speed", "max"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    receiver = tether.RempReceiver()
    got, first = [], None
    try:
        while len(got) < len(frames):
            event = receiver.handle(sock.recv(65536))
            first = first or event["type"]
            if event["type"] == "frames":
                got += event["frames"]
    finally:
        _, stderr = child.communicate(timeout=30)
    assert child.returncode == 0, stderr
    assert first == "hello"
    assert got == frames
    assert receiver.stats("PY-REPLAY")["lost"] == 0


def test_the_rust_dongle_simulator_records_what_a_python_agent_sends(tmp_path):
    sock = udp_socket()
    out = tmp_path / "rx.log"
    child = subprocess.Popen(
        [tether_bin(), "can", "dongle", "--serial", "PY-REC", "--agent", "%s:%d" % sock.getsockname(),
         "--record", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        data, dongle = sock.recvfrom(65536)
        assert tether.RempReceiver().handle(data)["type"] == "hello"
        # The agent addresses the dongle with REMP carrying the dongle's serial.
        sender = tether.RempSender("PY-REC")
        sent = [tether.Frame(0x7E0 + (i % 8), bytes([i % 256, 0x3E]), ts_ns=1_000_000 * i, channel="can0", direction="tx")
                for i in range(50)]
        sock.sendto(sender.hello(), dongle)
        for f in sent:
            for d in sender.push(f):
                sock.sendto(d, dongle)
        sock.sendto(sender.flush(), dongle)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if out.exists() and len(tether.parse_log(out.read_bytes(), "candump", strict=False)) >= len(sent):
                break
            time.sleep(0.05)
    finally:
        child.terminate()
        child.communicate(timeout=30)
    recorded = tether.parse_log(out.read_bytes(), "candump")
    assert [view(f) for f in recorded.frames] == [view(f) for f in sent]


# --- data-plane protocol ---------------------------------------------------------------------


def test_protocol_messages_round_trip_in_both_encodings_and_are_checked():
    hello = {"type": "hello", "version": 1, "group_id": "g-42", "side": "a", "resume": {"rx_seq": 7},
             "encodings": ["msgpack", "json"]}
    assert tether.decode_message(tether.encode_message(hello).decode()) == hello
    frames = [tether.Frame(0x7E0 + i, bytes([i, 2, 3]), ts_ns=1_600_000_000_000_000_000 + i, direction="rx")
              for i in range(5)]
    batch = {"type": "frames", "first_seq": 11, "frames": [f.to_relay("g-42") for f in frames]}
    assert batch["frames"][0] == {"groupId": "g-42", "direction": "rx", "ts": 1_600_000_000_000_000_000,
                                  "canId": 0x7E0, "isExtended": False, "dlc": 3, "dataHex": "000203",
                                  "channel": "can0"}
    packed = tether.encode_message(batch, "msgpack")
    back = tether.decode_message(packed)
    assert back["first_seq"] == 11
    assert [tether.Frame.from_relay(f) for f in back["frames"]] == frames
    # JSON text and MessagePack bytes of the same message decode alike.
    assert tether.decode_message(tether.encode_message(batch, "json").decode()) == back
    for bad in [
        {"type": "nope"},
        {"type": "ack"},
        {"type": "hello", "version": 1, "group_id": "", "side": "a", "resume": {"rx_seq": 0}, "encodings": ["json"]},
        {**batch, "frames": [{**batch["frames"][0], "dlc": 9}]},
        {**batch, "frames": [{**batch["frames"][0], "canId": 0x800}]},
    ]:
        with pytest.raises(tether.ProtocolError):
            tether.encode_message(bad)
    with pytest.raises(tether.ProtocolError):
        tether.decode_message(b"\xc1")
    with pytest.raises(tether.ProtocolError):
        tether.decode_message('{"type":"frames","first_seq":"x","frames":[]}')
    with pytest.raises(tether.ProtocolError):
        tether.Frame.from_relay({"groupId": "g"})
    with pytest.raises(ValueError):
        tether.Frame.from_relay({**batch["frames"][0], "channel": ""})
    with pytest.raises(tether.ProtocolError):
        frames[0].to_relay("")
    # Nesting far beyond any message is a Python exception, not a crashed interpreter.
    deep = {}
    for _ in range(100_000):
        deep = {"x": deep}
    with pytest.raises(RecursionError):
        tether.encode_message(deep)


@pytest.fixture
def server(tmp_path):
    data = tmp_path / "data"
    token = create_token(data, "pia")
    with running_server(data) as addr:
        yield {"addr": addr, "base": f"http://{addr}", "token": token}


def open_side(s, agent_token, group, side):
    ws = connect(f"ws://{s['addr']}/ws/data", additional_headers={"Authorization": f"Bearer {agent_token}"},
                 open_timeout=30)
    hello = {"type": "hello", "version": 1, "group_id": group, "side": side, "resume": {"rx_seq": 0},
             "encodings": ["msgpack", "json"]}
    ws.send(tether.encode_message(hello).decode())  # the handshake is JSON text
    welcome = tether.decode_message(ws.recv(timeout=30))
    assert (welcome["type"], welcome["encoding"], welcome["tx_acked"]) == ("welcome", "msgpack", 0), welcome
    return ws


def test_a_python_agent_relays_frames_through_the_real_server(server):
    base, token = server["base"], server["token"]
    agent, _dongles, group = pair_in_group(base, token, "py-edge", ("PY-A", "PY-B"), "py-pair")
    group = group["id"]
    api(base, token, "POST", f"/api/v1/groups/{group}/activate")
    a, b = open_side(server, agent["token"], group, "a"), open_side(server, agent["token"], group, "b")
    sent = tether.parse_log(CAPTURE.read_bytes()).frames[:300]
    for first in range(0, len(sent), 100):
        chunk = sent[first:first + 100]
        batch = {"type": "frames", "first_seq": first + 1, "frames": [f.to_relay(group) for f in chunk]}
        a.send(tether.encode_message(batch, "msgpack"))
    got, acked = [], 0
    while len(got) < len(sent):
        m = tether.decode_message(b.recv(timeout=30))
        if m["type"] == "frames":
            assert m["first_seq"] == len(got) + 1
            got += [tether.Frame.from_relay(f, channel=f.get("channel") or "can0") for f in m["frames"]]
            b.send(tether.encode_message({"type": "ack", "up_to": len(got)}, "msgpack"))
    while acked < len(sent):
        m = tether.decode_message(a.recv(timeout=30))
        if m["type"] == "ack":
            acked = m["up_to"]
    assert [view(f) for f in got] == [view(f) for f in sent]
    assert [(f.ts_ns, f.direction) for f in got] == [(f.ts_ns, f.direction) for f in sent]
    state = api(server["base"], server["token"], "GET", f"/api/v1/groups/{group}")
    assert state["mode"] == "active"
    a.close()
    b.close()


# --- metering --------------------------------------------------------------------------------

USAGE = {
    "api_session_id": "sess-1",
    "customer_id": "cust-1",
    "product_code": "speech_transcription",
    "connection_duration_seconds": 12.5,
    "data_bytes_processed": 1024,
    "audio_duration_seconds": 10.0,
    "request_count": 3,
    "request_timestamp": "2026-11-23T10:00:00Z",
    "response_timestamp": "2026-11-23T10:00:12Z",
    "record_id": "rec-1",
}


def test_metering_messages_are_validated_as_the_agent_does():
    ok = tether.validate_message("usage_records", json.dumps(USAGE))
    assert (ok["route"], ok["session_id"], ok["key"]) == ("usage_records", "sess-1", "rec-1")
    assert ok["body"] == USAGE
    # Without a record_id the key is a stable hash of the bytes, filled into the body.
    raw = json.dumps({k: v for k, v in USAGE.items() if k != "record_id"}).encode()
    a, b = tether.validate_message("usage_records", raw), tether.validate_message("usage_records", raw)
    assert a["key"].startswith("sha256:") and a["key"] == b["key"] == a["body"]["record_id"]
    start = tether.validate_message(
        "session_lifecycle",
        json.dumps({"event": "start", "api_session_id": "s-2", "customer_id": "c", "timestamp": "2026-11-23T10:00:00Z"}),
    )
    assert start["route"] == "session_start"
    with pytest.raises(tether.InvalidMessageError, match="product_code"):
        tether.validate_message("usage_records", json.dumps({**USAGE, "product_code": "other"}))
    with pytest.raises(tether.InvalidMessageError, match="not valid JSON"):
        tether.validate_message("usage_records", b"{")
    with pytest.raises(ValueError):
        tether.validate_message("no_such_queue", b"{}")
