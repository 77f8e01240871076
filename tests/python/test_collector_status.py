"""The vehicle collector's status frames, decoded with python `cantools` and
`data/dbc/tether-system.dbc`.

The vehicle (`tether collector`, ROLE=vehicle) reads its CAN bus from our socketcand server
(`tether can serve-socketcand`); python-can's socketcand interface is another client of that bus:
it sends frames (which become records) and receives the status frames the vehicle really sent.
The remote is unreachable, so the state is Connecting / Disconnected and the queue grows.

Needs env TETHER_BIN (the built `tether` binary).
"""

import os
import pathlib
import re
import signal
import subprocess
import time

import can
import cantools
from loopback import free_port

TETHER = os.environ.get("TETHER_BIN", "tether")
DBC = pathlib.Path(__file__).resolve().parents[2] / "data" / "dbc" / "tether-system.dbc"


def test_status_frames_decode_with_the_shipped_dbc(tmp_path):
    db = cantools.database.load_file(str(DBC))
    names = sorted(m.name for m in db.messages)
    assert names == ["UPLINK_LATENCY", "UPLINK_QUEUE", "UPLINK_STATUS", "UPLINK_THROUGHPUT"]
    states = db.get_message_by_name("UPLINK_STATUS").get_signal_by_name("UplinkState").choices
    assert {int(k): str(v) for k, v in states.items()} == {
        0: "Connecting", 1: "Connected", 2: "Disconnected", 3: "Error"}

    server = subprocess.Popen(
        [TETHER, "can", "serve-socketcand", "--listen", "127.0.0.1:0", "--bus", "vcan0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    vehicle = None
    try:
        m = re.match(r"listening on 127\.0\.0\.1:(\d+)", server.stdout.readline())
        assert m
        port = int(m.group(1))
        env = {
            "PATH": os.environ.get("PATH", ""),
            "ROLE": "vehicle",
            "DB_PATH": str(tmp_path / "vehicle.db"),
            "LISTEN": f"127.0.0.1:{free_port()}",
            # Nobody listens there: the uplink stays down and the queue grows.
            "REMOTE_ENDPOINT_URL": f"ws://127.0.0.1:{free_port()}/ws/telemetry/upload",
            "API_KEY": "k",
            "CAN_BUS": f"socketcand://127.0.0.1:{port}/vcan0",
            "STATUS_INTERVAL_MS": "100",
        }
        bus = can.Bus(interface="socketcand", host="127.0.0.1", port=port, channel="vcan0")
        vehicle = subprocess.Popen([TETHER, "collector"], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        decoded = {}
        sent = 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            # Frames count once the vehicle is on the bus: it is when its first status arrives.
            if decoded and sent < 25:
                bus.send(can.Message(arbitration_id=0x321, is_extended_id=False, data=bytes([sent] * 8)))
                sent += 1
            msg = bus.recv(timeout=0.2)
            if msg is None or not msg.is_extended_id:
                continue
            try:
                message = db.get_message_by_frame_id(msg.arbitration_id)
            except KeyError:
                continue
            decoded.setdefault(message.name, []).append(message.decode(bytes(msg.data)))
            queues = [d["QueueSize"] for d in decoded.get("UPLINK_QUEUE", [])]
            if sent == 25 and queues and max(queues) >= 25 and len(decoded) == 4:
                break
        bus.shutdown()
        assert set(decoded) == {"UPLINK_STATUS", "UPLINK_QUEUE", "UPLINK_LATENCY", "UPLINK_THROUGHPUT"}, decoded
        states = {str(d["UplinkState"]) for d in decoded["UPLINK_STATUS"]}
        assert states <= {"Connecting", "Disconnected"} and "Disconnected" in states, states
        queues = [d["QueueSize"] for d in decoded["UPLINK_QUEUE"]]
        assert queues == sorted(queues) and max(queues) == 25, queues
        assert all(d["RecordsDropped"] == 0 for d in decoded["UPLINK_STATUS"])
    finally:
        if vehicle is not None:
            vehicle.send_signal(signal.SIGTERM)
            _, err = vehicle.communicate(timeout=20)
            assert vehicle.returncode == 0, err
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=20)
