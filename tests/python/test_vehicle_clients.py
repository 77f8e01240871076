"""`tether.Client` / `tether.AsyncClient` for vehicles, vehicle commands and telemetry, against
real processes on loopback: `tether server` (the default `agent` command connector),
`tether agent` with its diagnostics role (UDS over ISO-TP on a REMP bus) and its telemetry
role (CAN frames uplinked as records), `tether can ecu` simulating the vehicle's ECUs
(data/ecu/demo.yaml) on the diagnostics bus, and a python-can program on the `tether`
interface as the dongle whose frames the telemetry role records.

Needs TETHER_BIN (the built `tether` binary).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import can
import pytest
from loopback import free_udp_port, stop, until
from tether_server import TETHER, create_token, running_server

from tether.client import AsyncClient, Client, Ecu, Vehicle
from tether.errors import CommandFailed, Conflict, InvalidRequest, NotFound, Unauthorized, WaitTimeout

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "data" / "ecu" / "demo.yaml"
DTCS = [
    {"dtcCode": "P0420", "ftb": 0, "status": 0x2F, "description": "Catalyst System Efficiency Below Threshold"},
    {"dtcCode": "P0171", "ftb": 0, "status": 0x24, "description": "System Too Lean (Bank 1)"},
    {"dtcCode": "U0100", "ftb": 0, "status": 0x09, "description": 'Lost Communication With ECM/PCM "A"'},
]


@contextlib.contextmanager
def process(argv: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A child process whose output goes to `log`; stopped with SIGTERM at the end."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            yield proc
        finally:
            stop(proc, grace=15)
    assert proc.returncode == 0, log.read_text()[-3000:]


def answers(c: Client, vehicle_id: str) -> bool:
    try:
        c.run_command(vehicle_id, "TesterPresent", {"ecu": "engine", "ttl_s": 5}, timeout=10)
        return True
    except CommandFailed:
        return False


@pytest.fixture
def car(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A server, an agent serving a vehicle's diagnostics bus and telemetry bus, and the
    vehicle's ECUs simulated on the diagnostics bus."""
    import os

    data = tmp_path / "server"
    token = create_token(data, "alice")
    diag_port, telemetry_port = free_udp_port(), free_udp_port()
    with running_server(data) as addr:
        base = f"http://{addr}"
        with Client(base, token) as c:
            agent = c.create_agent("car-agent")
            assert agent.token is not None
            with Client(base, agent.token) as edge:
                dongle = edge.announce_dongle("CAR-ECUS")
            vehicle = c.create_vehicle(
                "Civic", vin="1hgcm82633a004352", dongle_id=dongle.id,
                ecus=[Ecu("engine", 0x7E0, 0x7E8), {"name": "transmission", "request_id": "0x7E1", "response_id": "0x7E9"}],
            )
        config = tmp_path / "agent.yaml"
        config.write_text(
            f'server_url: "{base}"\ntoken: "${{TETHER_AGENT_TOKEN}}"\ndata_dir: "{tmp_path / "agent"}"\n'
            f'diagnostics:\n  buses:\n    - {{serial: CAR-ECUS, bus: "udp://127.0.0.1:{diag_port}"}}\n'
            f'telemetry:\n  can_bus: "udp://127.0.0.1:{telemetry_port}"\n  status_interval_ms: 0\n'
        )
        env = {**os.environ, "TETHER_AGENT_TOKEN": agent.token, "RUST_LOG": "warn"}
        env.pop("REDIS_URL", None)
        with process([TETHER, "agent", "--config", str(config)], tmp_path / "agent.log", env), \
                process([TETHER, "can", "ecu", "--profile", str(PROFILE), "--bus", f"udp://127.0.0.1:{diag_port}",
                         "--serial", "CAR-ECUS"], tmp_path / "ecu.log"):
            with Client(base, token) as c:
                until("the vehicle online", lambda: c.vehicle(vehicle.id).online)
                # The agent answers the ECU simulator once it has heard its REMP hello (sent
                # again every second): until then a command times out.
                until("the ECUs answering", lambda: answers(c, vehicle.id), timeout=40)
            yield {"base": base, "token": token, "vehicle": vehicle, "agent_id": agent.id,
                   "telemetry_bus": f"udp://127.0.0.1:{telemetry_port}", "dongle": dongle.id}


def test_vehicles_and_commands_with_typed_errors(car: dict[str, Any]) -> None:
    base, token, vehicle = car["base"], car["token"], car["vehicle"]
    assert isinstance(vehicle, Vehicle)
    with Client(base, token) as c:
        assert vehicle.vin == "1HGCM82633A004352"
        assert [(e.name, e.request_id, e.response_id) for e in vehicle.ecus] == [
            ("engine", 0x7E0, 0x7E8), ("transmission", 0x7E1, 0x7E9),
        ]
        assert [v.id for v in c.vehicles()] == [vehicle.id]

        # Submit, then stream the responses over the WebSocket until the final one.
        submitted = c.submit_command(vehicle.id, "ReadDTC", {"ecu": "engine"})
        assert submitted.status == "pending" and submitted.stream_url.endswith(f"/ws/responses/{submitted.command_id}")
        streamed = list(c.stream_responses(submitted.command_id, timeout=30))
        assert [(r.sequence_number, r.is_final) for r in streamed] == [(1, True)]
        assert streamed[0].payload == {"ecu": "engine", "dtcs": DTCS}
        done = c.command(submitted.command_id)
        assert (done.status, done.command_name, done.command_params) == ("completed", "ReadDTC", {"ecu": "engine"})
        stored = c.command_responses(submitted.command_id)
        assert [r.payload for r in stored] == [streamed[0].payload] and stored[0].response_id is not None
        # Streaming a finished command replays its stored responses.
        assert [r.payload for r in c.stream_responses(submitted.command_id)] == [streamed[0].payload]

        vin = c.run_command(vehicle.id, "ReadDataByID", {"ecu": "transmission", "did": "0xF18C"}, timeout=30)
        assert vin.command.status == "completed"
        assert vin.final == {"ecu": "transmission", "did": 0xF18C, "didHex": "F18C", "hex": b"TCM-5521".hex().upper(),
                             "ascii": "TCM-5521"}

        # A functional request: one response per ECU, the last one final.
        functional = c.run_command(vehicle.id, "TesterPresent", timeout=30)
        assert sorted(r.payload["ecu"] for r in functional.responses) == ["engine", "transmission"]
        assert [r.is_final for r in functional.responses] == [False, True]

        # The ECU's negative answer fails the command: CommandFailed with its NRC's name.
        unknown = c.submit_command(vehicle.id, "ReadDataByID", {"ecu": "engine", "did": 0x1234})
        with pytest.raises(CommandFailed) as failed:
            c.wait_command(unknown.command_id, timeout=30)
        assert (failed.value.command_id, failed.value.message) == (unknown.command_id, "requestOutOfRange")
        assert c.command(unknown.command_id).error_message == "requestOutOfRange"

        # SOVD-style resources.
        faults = c.faults(vehicle.id, "engine", wait=30)
        assert faults["status"] == "completed" and faults["response"]["dtcs"] == DTCS
        assert c.data(vehicle.id, "engine", 0xF190, wait=30)["response"]["ascii"] == "1HGCM82633A004352"
        with pytest.raises(CommandFailed) as sovd_failed:
            c.data(vehicle.id, "engine", 0x1234, wait=30)
        assert sovd_failed.value.status == 502 and "requestOutOfRange" in sovd_failed.value.message

        # Every command, two per page, newest first, each once.
        everything, cursor = [], None
        while True:
            page = c.commands(vehicle_id=vehicle.id, limit=2, cursor=cursor)
            assert len(page.commands) <= 2
            everything += page.commands
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        ids = [x.command_id for x in everything]
        assert len(ids) == len(set(ids)) >= 8 and {submitted.command_id, unknown.command_id} <= set(ids)
        assert [x.submitted_at for x in everything] == sorted((x.submitted_at for x in everything), reverse=True)
        assert {x.command_id for x in c.commands(status="failed").commands} >= {unknown.command_id}

        # Refusals, each as its own exception with the server's code.
        with pytest.raises(InvalidRequest) as bad_name:
            c.submit_command(vehicle.id, "FlashEverything")
        assert (bad_name.value.status, bad_name.value.code) == (422, "unknown_command")
        with pytest.raises(InvalidRequest) as bad_params:
            c.submit_command(vehicle.id, "ReadDataByID", {"ecu": "engine"})
        assert bad_params.value.code == "invalid_params" and "did" in bad_params.value.message
        with pytest.raises(NotFound):
            c.submit_command(str(uuid.uuid4()), "ReadDTC")
        with pytest.raises(NotFound):
            list(c.stream_responses(str(uuid.uuid4())))
        with pytest.raises(Conflict) as in_use:
            c.create_vehicle("Twin", dongle_id=car["dongle"])
        assert in_use.value.code == "dongle_in_use"
    with Client(base, "tu_" + "0" * 64) as stranger, pytest.raises(Unauthorized):
        list(stranger.stream_responses(submitted.command_id))


def test_waiting_runs_out_and_says_so(tmp_path: Path) -> None:
    """A vehicle whose agent never connects keeps its command pending: waiting for it ends
    with WaitTimeout, and the command stays pending."""
    data = tmp_path / "server"
    token = create_token(data, "alice")
    with running_server(data) as addr, Client(f"http://{addr}", token) as c:
        agent = c.create_agent("never-connects")
        assert agent.token is not None
        with Client(f"http://{addr}", agent.token) as edge:
            dongle = edge.announce_dongle("PARKED")
        vehicle = c.create_vehicle("offline", dongle_id=dongle.id)
        command = c.submit_command(vehicle.id, "ReadDTC", {"ecuAddress": "0x7E0"})
        started = time.monotonic()
        with pytest.raises(WaitTimeout):
            c.wait_command(command.command_id, timeout=1.0)
        assert 0.9 < time.monotonic() - started < 10
        assert c.command(command.command_id).status == "pending"


def test_async_client_runs_commands(car: dict[str, Any]) -> None:
    base, token, vehicle = car["base"], car["token"], car["vehicle"]

    async def main() -> tuple[list[Any], str, dict[str, Any], str]:
        async with AsyncClient(base, token) as c:
            command = await c.submit_command(vehicle.id, "ReadDTC", {"ecu": "transmission"})
            streamed = [r.payload async for r in c.stream_responses(command.command_id, timeout=30)]
            result = await c.run_command(vehicle.id, "ReadDataByID", {"ecu": "engine", "did": "0xF190"}, timeout=30)
            reset = await c.run_command(vehicle.id, "ECUReset", {"ecu": "engine", "reset_type": "hard"}, timeout=30)
            try:
                await c.wait_command((await c.submit_command(vehicle.id, "ReadDataByID", {
                    "ecu": "transmission", "did": 0xBEEF})).command_id, timeout=30)
                refused = "answered"
            except CommandFailed as e:
                refused = e.message
            return streamed, result.final["ascii"], reset.final, refused

    streamed, vin, reset, refused = asyncio.run(main())
    assert streamed == [{"ecu": "transmission", "dtcs": [
        {"dtcCode": "P0700", "ftb": 0, "status": 8, "description": "Transmission Control System Malfunction"},
    ]}]
    assert vin == "1HGCM82633A004352"
    assert reset == {"ecu": "engine", "hex": "5101"}
    assert refused == "requestOutOfRange"


def test_telemetry_records_of_frames_a_python_can_dongle_sent(car: dict[str, Any]) -> None:
    """A python-can program on the `tether` interface is the REMP dongle of the agent's
    telemetry bus; each frame it sends becomes a record the client pages through."""
    base, token, agent_id = car["base"], car["token"], car["agent_id"]
    sent = [can.Message(arbitration_id=0x100 + i, data=bytes([i, i + 1, i + 2]), is_extended_id=False)
            for i in range(25)]
    with can.Bus(interface="tether", channel=car["telemetry_bus"], serial="TELEMETRY-1") as bus:
        time.sleep(0.5)  # the hello reaches the agent first
        for msg in sent:
            bus.send(msg)
    with Client(base, token) as c:
        stored = until("25 records stored", lambda: next(
            (v for v in c.telemetry_vehicles() if v.id == agent_id and v.records >= 25), None))
        assert stored is not None and stored.last_seq >= 25
        records = list(c.iter_telemetry_records(agent_id, limit=10))
        frames = [r.record["frame"] for r in records if r.record["kind"] == "frame"]
        assert [(f["id"], f["data"], f["extended"]) for f in frames] == [
            (m.arbitration_id, m.data.hex().upper(), False) for m in sent
        ], frames[:3]
        assert [r.seq for r in records] == sorted(r.seq for r in records)
        page = c.telemetry_records(agent_id, after_seq=records[4].seq, limit=3)
        assert [r.seq for r in page.items] == [r.seq for r in records[5:8]]
        assert page.next_after_seq == records[7].seq
        window = c.telemetry_records(agent_id, from_ts_ms=records[0].ts_ms, to_ts_ms=records[0].ts_ms + 1)
        assert all(r.ts_ms == records[0].ts_ms for r in window.items) and window.items

        # The SSE stream from a seq on (resumed with Last-Event-ID, parsed by the Rust parser).
        stream = c.telemetry_stream(agent_id, after_seq=records[19].seq)
        got = []
        for event in stream:
            got.append((event.event, int(event.id), event.json()["seq"]))
            if len(got) == 5:
                stream.close()
        assert got == [("record", r.seq, r.seq) for r in records[20:25]]

    async def async_count() -> int:
        async with AsyncClient(base, token) as ac:
            return len([r async for r in ac.iter_telemetry_records(agent_id, limit=7)])

    assert asyncio.run(async_count()) == len(records)
