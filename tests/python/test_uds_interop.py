"""UDS over ISO-TP against real Python peers, on python-can's `udp_multicast` interface inside a
private network namespace (`unshare -rn`, loopback only, group 239.74.163.2 port 43113):

* python `udsoncan` (tester) over `can-isotp` reads DTCs and DIDs from `tether can ecu`
  (multi-frame answers both ways of flow control), gets requestOutOfRange for an unknown DID, and
  clears the DTCs — once over python-can's own `udp_multicast` bus and once over the `tether`
  python-can interface (`can.Bus(interface="tether", channel="multicast://…")`).
* `tether.uds.UdsClient` (Tether's UDS tester state machine, driven from Python) does the same
  over the `tether` interface, and a functional TesterPresent reaches both ECUs of the profile.
* `tether can uds` (Tether's UDS client and command execution) reads DTCs and DIDs from an ECU
  written here with python `can-isotp`, and reports its negative answer by name.

Needs env TETHER_BIN (the built `tether` binary).
"""

import os
from pathlib import Path

import pytest

from netns import run_in_private_network

TETHER = os.environ.get("TETHER_BIN", "tether")
PROFILE = Path(__file__).resolve().parents[2] / "data" / "ecu" / "demo.yaml"

UDSONCAN_TESTER = r'''
import json, subprocess, sys, time
import can, isotp, udsoncan
from udsoncan.client import Client
from udsoncan.connections import PythonIsoTpConnection
from udsoncan.exceptions import NegativeResponseException

tether, profile, interface = sys.argv[1], sys.argv[2], sys.argv[3]
ecu = subprocess.Popen([tether, "can", "ecu", "--profile", profile,
                        "--bus", "multicast://239.74.163.2:43113"],
                       stderr=subprocess.PIPE, text=True)
ready = ecu.stderr.readline()
assert "ecu simulator ready" in ready, ready
if interface == "tether":
    bus = can.Bus(interface="tether", channel="multicast://239.74.163.2:43113")
else:
    bus = can.Bus(interface="udp_multicast", channel="239.74.163.2", port=43113)
stack = isotp.CanStack(bus, address=isotp.Address(isotp.AddressingMode.Normal_11bits, txid=0x7E0, rxid=0x7E8),
                       params={"tx_padding": 0xCC, "blocking_send": True})
config = dict(udsoncan.configs.default_client_config)
config["data_identifiers"] = {0xF190: udsoncan.AsciiCodec(17), 0x1234: udsoncan.AsciiCodec(1)}
config["request_timeout"] = 5
out = {}
try:
  with Client(PythonIsoTpConnection(stack), config=config) as client:
    r = client.get_dtc_by_status_mask(0xFF)
    out["dtcs"] = [[d.id, d.status.get_byte_as_int()] for d in r.service_data.dtcs]
    out["vin"] = client.read_data_by_identifier(0xF190).service_data.values[0xF190]
    try:
        client.read_data_by_identifier(0x1234)
        out["unknown"] = "answered"
    except NegativeResponseException as e:
        out["unknown"] = e.response.code_name
    client.clear_dtc(0xFFFFFF)
    out["after_clear"] = len(client.get_dtc_by_status_mask(0xFF).service_data.dtcs)
finally:
  bus.shutdown()
  ecu.terminate()
out["ecu_exit"] = ecu.wait(timeout=10)
out["ecu_report"] = ecu.stderr.read()
print(json.dumps(out))
'''

ISOTP_ECU = r'''
import json, subprocess, sys, threading
import can, isotp

tether = sys.argv[1]
bus = can.Bus(interface="udp_multicast", channel="239.74.163.2", port=43113)
notifier = can.Notifier(bus, [])
stack = isotp.NotifierBasedCanStack(bus, notifier,
                                    address=isotp.Address(isotp.AddressingMode.Normal_11bits, txid=0x7E8, rxid=0x7E0),
                                    params={"tx_padding": 0xAA, "blocksize": 2, "stmin": 1})
stack.start()
VIN = b"WVWZZZ1JZXW000001"
requests = []
stop = threading.Event()

def serve():
    while not stop.is_set():
        req = stack.recv(block=True, timeout=0.1)
        if req is None:
            continue
        requests.append(req.hex())
        if req[:2] == b"\x19\x02":
            # Two DTCs: P0420 status 0x2F, U0100 status 0x09.
            stack.send(b"\x59\x02\xff" + bytes([0x04, 0x20, 0x00, 0x2f, 0xc1, 0x00, 0x00, 0x09]))
        elif req == b"\x22\xf1\x90":
            stack.send(b"\x62\xf1\x90" + VIN)
        elif req[:1] == b"\x22":
            stack.send(b"\x7f\x22\x31")
        else:
            stack.send(bytes([0x7f, req[0], 0x11]))

t = threading.Thread(target=serve, daemon=True)
t.start()

def tether_uds(command, params):
    res = subprocess.run([tether, "can", "uds", "--bus", "multicast://239.74.163.2:43113", command,
                          "--params", json.dumps(params)], capture_output=True, text=True, timeout=30)
    return {"code": res.returncode, "stdout": [json.loads(l) for l in res.stdout.splitlines()],
            "stderr": res.stderr.strip()}

out = {
    "dtc": tether_uds("ReadDTC", {"ecuAddress": "0x7E0"}),
    "vin": tether_uds("ReadDataByID", {"ecuAddress": "0x7E0", "did": "0xF190"}),
    "unknown": tether_uds("ReadDataByID", {"ecuAddress": "0x7E0", "did": "0x1234"}),
    "reset": tether_uds("ECUReset", {"ecuAddress": "0x7E0"}),
}
stop.set()
t.join()
stack.stop()
notifier.stop()
bus.shutdown()
out["requests"] = requests
print(json.dumps(out))
'''


TETHER_UDS_TESTER = r'''
import json, subprocess, sys
import can
from tether.uds import NegativeResponse, UdsClient

tether, profile = sys.argv[1], sys.argv[2]
ecu = subprocess.Popen([tether, "can", "ecu", "--profile", profile,
                        "--bus", "multicast://239.74.163.2:43113"],
                       stderr=subprocess.PIPE, text=True)
ready = ecu.stderr.readline()
assert "ecu simulator ready" in ready, ready
out = {}
try:
  with can.Bus(interface="tether", channel="multicast://239.74.163.2:43113") as bus:
    client = UdsClient(bus, [(0x7E0, 0x7E8), (0x7E1, 0x7E9)], p2=2.0)
    out["dtcs"] = [[d.dtc, d.code, d.status, d.description] for d in client.read_dtcs(0x7E0)]
    out["vin"] = client.read_data_by_identifier(0x7E0, 0xF190).decode()
    try:
        client.read_data_by_identifier(0x7E0, 0x1234)
        out["unknown"] = "answered"
    except NegativeResponse as e:
        out["unknown"] = [e.sid, e.nrc, e.nrc_name]
    out["present"] = sorted((a.responder, a.data.hex()) for a in client.tester_present())
    client.clear_dtcs(0x7E0)
    out["after_clear"] = len(client.read_dtcs(0x7E0))
    out["stats"] = client.stats()
finally:
  ecu.terminate()
out["ecu_exit"] = ecu.wait(timeout=10)
print(json.dumps(out))
'''


@pytest.mark.parametrize("interface", ["udp_multicast", "tether"])
def test_udsoncan_reads_tether_can_ecu(tmp_path, interface):
    out = run_in_private_network(tmp_path, UDSONCAN_TESTER, TETHER, str(PROFILE), interface)
    assert out["dtcs"] == [[0x042000, 0x2F], [0x017100, 0x24], [0xC10000, 0x09]]
    assert out["vin"] == "1HGCM82633A004352"
    assert out["unknown"] == "RequestOutOfRange"
    assert out["after_clear"] == 0
    assert out["ecu_exit"] == 0
    assert "ecu engine: 5 requests, 4 positive, 1 negative" in out["ecu_report"], out["ecu_report"]
    assert "0 DTCs stored" in out["ecu_report"]


def test_tether_uds_client_over_the_tether_interface(tmp_path):
    out = run_in_private_network(tmp_path, TETHER_UDS_TESTER, TETHER, str(PROFILE))
    assert out["dtcs"] == [
        [0x042000, "P0420", 0x2F, "Catalyst System Efficiency Below Threshold"],
        [0x017100, "P0171", 0x24, "System Too Lean (Bank 1)"],
        [0xC10000, "U0100", 0x09, 'Lost Communication With ECM/PCM "A"'],
    ]
    assert out["vin"] == "1HGCM82633A004352"
    assert out["unknown"] == [0x22, 0x31, "requestOutOfRange"]
    assert out["present"] == [[0x7E8, "7e00"], [0x7E9, "7e00"]]
    assert out["after_clear"] == 0
    assert out["stats"]["negative"] == 1 and out["stats"]["timeouts"] == 0
    assert out["ecu_exit"] == 0


def test_tether_reads_a_python_isotp_ecu(tmp_path):
    out = run_in_private_network(tmp_path, ISOTP_ECU, TETHER)
    dtc = out["dtc"]
    assert dtc["code"] == 0, dtc
    assert dtc["stdout"] == [
        {
            "ecu": "0x7E0",
            "dtcs": [
                {"dtcCode": "P0420", "ftb": 0, "status": 47, "description": "Catalyst System Efficiency Below Threshold"},
                {"dtcCode": "U0100", "ftb": 0, "status": 9, "description": 'Lost Communication With ECM/PCM "A"'},
            ],
        }
    ]
    vin = out["vin"]
    assert vin["code"] == 0, vin
    assert vin["stdout"] == [
        {"ecu": "0x7E0", "did": 0xF190, "didHex": "F190", "hex": b"WVWZZZ1JZXW000001".hex().upper(), "ascii": "WVWZZZ1JZXW000001"}
    ]
    assert out["unknown"]["code"] == 1 and out["unknown"]["stderr"] == "requestOutOfRange", out["unknown"]
    assert out["reset"]["code"] == 1 and out["reset"]["stderr"] == "serviceNotSupported", out["reset"]
    assert out["requests"] == ["1902ff", "22f190", "221234", "1101"]
