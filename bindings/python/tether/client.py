"""REST clients of `tether server` (docs/api.md): ``Client`` (synchronous) and ``AsyncClient``
(asyncio), over httpx.

They cover agents, dongles, groups (with their audit log and live console), vehicles, vehicle
commands (submit, list, wait for the final answer, stream the responses over the server's
``/ws/responses/{command_id}`` WebSocket), the SOVD-style fault and data resources, and the
telemetry records vehicles uplinked (``/api/v1/telemetry/vehicles/...``).

Both expose the same methods; each one is described once, as a ``Call`` (method, path, body and
how to read the answer) in ``_calls``, and the two classes only run calls. Adding an endpoint is
one ``Call`` factory and one line in each class. Refusals raise the typed errors of
``tether.errors``; a command that failed raises ``CommandFailed``; unreachable servers raise
``ConnectionFailed``. The response stream needs the ``websockets`` package (httpx has no
WebSocket client); everything else needs only httpx.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Optional, TypeVar
from urllib.parse import quote, urlencode

import httpx

from tether.console import ConsoleSubscriber
from tether.errors import CommandFailed, ConnectionFailed, WaitTimeout, api_error

__all__ = [
    "Agent",
    "AsyncClient",
    "AuditEntry",
    "Client",
    "Command",
    "CommandPage",
    "CommandResponse",
    "CommandResult",
    "Dongle",
    "Ecu",
    "Group",
    "TelemetryPage",
    "TelemetryRecord",
    "TelemetryVehicle",
    "Vehicle",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Agent:
    """An agent: ``token`` is set only in the answer to ``create_agent``."""

    id: str
    name: str
    created_at: str
    token: Optional[str] = None

    @staticmethod
    def from_json(d: dict[str, Any]) -> Agent:
        return Agent(d["id"], d["name"], d["created_at"], d.get("token"))


@dataclass(frozen=True)
class Dongle:
    """A dongle as the user sees it (``online`` and ``last_seen`` follow the data plane);
    for an agent's ``assignment``, ``group`` is ``{"id", "side", "mode"}`` or ``None``."""

    id: str
    serial: str
    agent_id: Optional[str] = None
    online: bool = False
    last_seen: Optional[str] = None
    created_at: Optional[str] = None
    group: Optional[dict[str, Any]] = None

    @staticmethod
    def from_json(d: dict[str, Any]) -> Dongle:
        return Dongle(
            d["id"], d["serial"], d.get("agent_id"), bool(d.get("online", False)),
            d.get("last_seen"), d.get("created_at"), d.get("group"),
        )


@dataclass(frozen=True)
class Group:
    """A group's state: ``mode`` is ``inactive``, ``active`` or ``degraded``; ``backlog`` has
    ``a_to_b`` and ``b_to_a``; ``offline_side`` is ``"a"``, ``"b"``, ``"both"`` or ``None``."""

    id: str
    name: str
    dongle_a: str
    dongle_b: str
    mode: str
    backlog: dict[str, int] = field(default_factory=dict)
    offline_side: Optional[str] = None

    @staticmethod
    def from_json(d: dict[str, Any]) -> Group:
        return Group(
            d["id"], d["name"], d["dongle_a"], d["dongle_b"], d["mode"],
            dict(d.get("backlog") or {}), d.get("offline_side"),
        )


@dataclass(frozen=True)
class AuditEntry:
    """One mode change of a group."""

    id: int
    at: str
    actor: str
    action: str
    old_mode: Optional[str]
    new_mode: Optional[str]

    @staticmethod
    def from_json(d: dict[str, Any]) -> AuditEntry:
        return AuditEntry(d["id"], d["at"], d["actor"], d["action"], d.get("old_mode"), d.get("new_mode"))


@dataclass(frozen=True)
class Ecu:
    """One ECU of a vehicle: the name commands address it by and its CAN ids."""

    name: str
    request_id: int
    response_id: int

    @staticmethod
    def from_json(d: dict[str, Any]) -> Ecu:
        return Ecu(d["name"], int(d["request_id"]), int(d["response_id"]))


@dataclass(frozen=True)
class Vehicle:
    """A vehicle: ``online`` is true while its agent is connected."""

    id: str
    name: str
    vin: Optional[str] = None
    dongle_id: Optional[str] = None
    ecus: tuple[Ecu, ...] = ()
    created_at: Optional[str] = None
    online: bool = False

    @staticmethod
    def from_json(d: dict[str, Any]) -> Vehicle:
        return Vehicle(
            d["id"], d["name"], d.get("vin"), d.get("dongle_id"),
            tuple(Ecu.from_json(e) for e in d.get("ecus") or ()), d.get("created_at"),
            bool(d.get("online", False)),
        )


@dataclass(frozen=True)
class Command:
    """A vehicle command. ``status``: ``pending``, ``in_progress``, ``completed`` or ``failed``
    (with ``error_message``). The answer to ``submit_command`` has only ``command_id``,
    ``status``, ``submitted_at`` and ``stream_url``."""

    command_id: str
    status: str
    submitted_at: str
    stream_url: str
    vehicle_id: Optional[str] = None
    command_name: Optional[str] = None
    command_params: Optional[dict[str, Any]] = None
    error_message: Optional[str] = None
    completed_at: Optional[str] = None
    deadline_at: Optional[str] = None

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "failed")

    @staticmethod
    def from_json(d: dict[str, Any]) -> Command:
        return Command(
            d["command_id"], d["status"], d["submitted_at"], d["stream_url"], d.get("vehicle_id"),
            d.get("command_name"), d.get("command_params"), d.get("error_message"),
            d.get("completed_at"), d.get("deadline_at"),
        )


@dataclass(frozen=True)
class CommandPage:
    """One page of ``commands()``, newest first; pass ``next_cursor`` back as ``cursor``
    (``None``: the last page)."""

    commands: list[Command]
    next_cursor: Optional[str]


@dataclass(frozen=True)
class CommandResponse:
    """One response of a command (``sequence_number`` from 1; the last one ``is_final``).
    ``payload`` is the ECU's answer as the commands API renders it (``{"ecu", "dtcs": [...]}``,
    ``{"ecu", "did", "didHex", "hex", "ascii"}``, ...). ``response_id`` and ``received_at``
    are set when read from the store, not on the live stream."""

    command_id: str
    sequence_number: int
    is_final: bool
    payload: dict[str, Any]
    response_id: Optional[str] = None
    received_at: Optional[str] = None

    @staticmethod
    def from_json(d: dict[str, Any]) -> CommandResponse:
        payload = d["response_payload"] if "response_payload" in d else d["response"]
        return CommandResponse(
            d["command_id"], int(d["sequence_number"]), bool(d["is_final"]), payload,
            d.get("response_id"), d.get("received_at"),
        )


@dataclass(frozen=True)
class CommandResult:
    """A finished command (``completed``) and all its responses, the final one last."""

    command: Command
    responses: list[CommandResponse]

    @property
    def final(self) -> dict[str, Any]:
        """The final response's payload."""
        return self.responses[-1].payload


@dataclass(frozen=True)
class TelemetryVehicle:
    """A vehicle (agent) that uplinked telemetry: the highest ``last_seq`` stored, how many
    ``records``, the newest record's ``last_ts_ms``, and whether it is ``connected`` now."""

    id: str
    last_seq: int
    records: int
    last_ts_ms: Optional[int]
    connected: bool

    @staticmethod
    def from_json(d: dict[str, Any]) -> TelemetryVehicle:
        return TelemetryVehicle(
            d["id"], int(d["last_seq"]), int(d["records"]), d.get("last_ts_ms"),
            bool(d.get("connected", False)),
        )


@dataclass(frozen=True)
class TelemetryRecord:
    """One stored telemetry record: the vehicle's ``seq``, its ``ts_ms`` and the ``record``
    (``{"kind": "frame", "frame": {...}}`` or ``{"kind": "signals", ...}``)."""

    seq: int
    ts_ms: int
    record: dict[str, Any]

    @staticmethod
    def from_json(d: dict[str, Any]) -> TelemetryRecord:
        return TelemetryRecord(int(d["seq"]), int(d["ts_ms"]), d["record"])


@dataclass(frozen=True)
class TelemetryPage:
    """One page of records in ``seq`` order; pass ``next_after_seq`` back as ``after_seq``
    (``None``: the last page)."""

    items: list[TelemetryRecord]
    next_after_seq: Optional[int]


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and how to read its answer."""

    method: str
    path: str
    parse: Callable[[Any], T]
    body: Optional[dict[str, Any]] = None


def _none(_: Any) -> None:
    return None


def _ident(v: Any) -> Any:
    return v


class _calls:
    """Every endpoint, once."""

    @staticmethod
    def create_agent(name: str) -> Call[Agent]:
        return Call("POST", "/api/v1/agents", Agent.from_json, {"name": name})

    @staticmethod
    def agents() -> Call[list[Agent]]:
        return Call("GET", "/api/v1/agents", lambda d: [Agent.from_json(a) for a in d["agents"]])

    @staticmethod
    def agent(agent_id: str) -> Call[Agent]:
        return Call("GET", f"/api/v1/agents/{quote(agent_id, safe='')}", Agent.from_json)

    @staticmethod
    def delete_agent(agent_id: str) -> Call[None]:
        return Call("DELETE", f"/api/v1/agents/{quote(agent_id, safe='')}", _none)

    @staticmethod
    def announce_dongle(serial: str) -> Call[Dongle]:
        return Call("POST", "/api/v1/agent/dongles", Dongle.from_json, {"serial": serial})

    @staticmethod
    def dongle_assignment(dongle_id: str) -> Call[Dongle]:
        return Call("GET", f"/api/v1/agent/dongles/{quote(dongle_id, safe='')}", Dongle.from_json)

    @staticmethod
    def dongles() -> Call[list[Dongle]]:
        return Call("GET", "/api/v1/dongles", lambda d: [Dongle.from_json(x) for x in d["dongles"]])

    @staticmethod
    def dongle(dongle_id: str) -> Call[Dongle]:
        return Call("GET", f"/api/v1/dongles/{quote(dongle_id, safe='')}", Dongle.from_json)

    @staticmethod
    def create_group(name: str, dongle_a: str, dongle_b: str) -> Call[Group]:
        body = {"name": name, "dongle_a": dongle_a, "dongle_b": dongle_b}
        return Call("POST", "/api/v1/groups", Group.from_json, body)

    @staticmethod
    def groups() -> Call[list[Group]]:
        return Call("GET", "/api/v1/groups", lambda d: [Group.from_json(g) for g in d["groups"]])

    @staticmethod
    def group(group_id: str) -> Call[Group]:
        return Call("GET", f"/api/v1/groups/{quote(group_id, safe='')}", Group.from_json)

    @staticmethod
    def delete_group(group_id: str) -> Call[None]:
        return Call("DELETE", f"/api/v1/groups/{quote(group_id, safe='')}", _none)

    @staticmethod
    def set_group_active(group_id: str, active: bool) -> Call[Group]:
        action = "activate" if active else "deactivate"
        return Call("POST", f"/api/v1/groups/{quote(group_id, safe='')}/{action}", Group.from_json)

    @staticmethod
    def group_audit(group_id: str) -> Call[list[AuditEntry]]:
        path = f"/api/v1/groups/{quote(group_id, safe='')}/audit"
        return Call("GET", path, lambda d: [AuditEntry.from_json(e) for e in d["entries"]])

    @staticmethod
    def create_vehicle(
        name: str, vin: Optional[str], dongle_id: Optional[str], ecus: Sequence[Ecu | dict[str, Any]],
    ) -> Call[Vehicle]:
        body: dict[str, Any] = {"name": name}
        if vin is not None:
            body["vin"] = vin
        if dongle_id is not None:
            body["dongle_id"] = dongle_id
        if ecus:
            body["ecus"] = [
                e if isinstance(e, dict)
                else {"name": e.name, "request_id": e.request_id, "response_id": e.response_id}
                for e in ecus
            ]
        return Call("POST", "/api/v1/vehicles", Vehicle.from_json, body)

    @staticmethod
    def vehicles() -> Call[list[Vehicle]]:
        return Call("GET", "/api/v1/vehicles", lambda d: [Vehicle.from_json(v) for v in d["vehicles"]])

    @staticmethod
    def vehicle(vehicle_id: str) -> Call[Vehicle]:
        return Call("GET", f"/api/v1/vehicles/{quote(vehicle_id, safe='')}", Vehicle.from_json)

    @staticmethod
    def submit_command(vehicle_id: str, command_name: str, params: Optional[dict[str, Any]]) -> Call[Command]:
        body = {"vehicle_id": vehicle_id, "command_name": command_name, "command_params": params or {}}
        return Call("POST", "/api/v1/commands", Command.from_json, body)

    @staticmethod
    def command(command_id: str) -> Call[Command]:
        return Call("GET", f"/api/v1/commands/{quote(command_id, safe='')}", Command.from_json)

    @staticmethod
    def commands(
        vehicle_id: Optional[str], status: Optional[str], limit: Optional[int], cursor: Optional[str],
    ) -> Call[CommandPage]:
        return Call(
            "GET",
            _with_query("/api/v1/commands", vehicle_id=vehicle_id, status=status, limit=limit, cursor=cursor),
            lambda d: CommandPage([Command.from_json(c) for c in d["commands"]], d.get("next_cursor")),
        )

    @staticmethod
    def command_responses(command_id: str) -> Call[list[CommandResponse]]:
        path = f"/api/v1/commands/{quote(command_id, safe='')}/responses"
        return Call("GET", path, lambda d: [CommandResponse.from_json(r) for r in d["responses"]])

    @staticmethod
    def component(
        method: str, vehicle_id: str, ecu: str, resource: str, wait: Optional[int],
    ) -> Call[dict[str, Any]]:
        path = (f"/api/v1/vehicles/{quote(vehicle_id, safe='')}/components/{quote(ecu, safe='')}/"
                f"{resource}")
        return Call(method, _with_query(path, wait=wait), _ident)

    @staticmethod
    def telemetry_vehicles() -> Call[list[TelemetryVehicle]]:
        return Call("GET", "/api/v1/telemetry/vehicles",
                    lambda d: [TelemetryVehicle.from_json(v) for v in d["vehicles"]])

    @staticmethod
    def telemetry_records(
        vehicle_id: str, after_seq: Optional[int], limit: Optional[int],
        from_ts_ms: Optional[int], to_ts_ms: Optional[int],
    ) -> Call[TelemetryPage]:
        path = _with_query(
            f"/api/v1/telemetry/vehicles/{quote(vehicle_id, safe='')}/records",
            after_seq=after_seq, limit=limit, from_ts_ms=from_ts_ms, to_ts_ms=to_ts_ms,
        )
        return Call("GET", path, lambda d: TelemetryPage(
            [TelemetryRecord.from_json(i) for i in d["items"]], d.get("next_after_seq"),
        ))

    @staticmethod
    def health() -> Call[dict[str, Any]]:
        return Call("GET", "/healthz", _ident)

    @staticmethod
    def ready() -> Call[dict[str, Any]]:
        return Call("GET", "/readyz", _ident)


def _with_query(path: str, **params: Any) -> str:
    query = {k: str(v) for k, v in params.items() if v is not None}
    return f"{path}?{urlencode(query)}" if query else path


class _ResponseStream:
    """One ``/ws/responses/{command_id}`` stream apart from its socket, shared by both clients:
    its URL, the time left for the final answer, what a message means, and what each failure
    raises. Needs the ``websockets`` package, imported on first use."""

    def __init__(self, base: str, command_id: str, timeout: Optional[float]) -> None:
        scheme, rest = base.split("://", 1)
        ws_scheme = "wss" if scheme == "https" else "ws"
        self.url = f"{ws_scheme}://{rest}/ws/responses/{quote(command_id, safe='')}"
        self.command_id = command_id
        self.timeout = timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout

    @staticmethod
    def errors() -> tuple[type[BaseException], ...]:
        """What opening or reading the socket may raise; ``open_failed`` and ``recv_failed``
        say what each becomes."""
        from websockets.exceptions import WebSocketException

        return (OSError, WebSocketException, TimeoutError, asyncio.TimeoutError)

    def left(self) -> Optional[float]:
        """Seconds left until the final answer is due (``None``: no limit)."""
        return None if self._deadline is None else self._deadline - time.monotonic()

    def open_failed(self, e: BaseException) -> Exception:
        """The refusal of the upgrade as the server's typed error; anything else as
        ``ConnectionFailed``."""
        from websockets.exceptions import InvalidStatus

        if isinstance(e, InvalidStatus):
            response = getattr(e, "response", None)
            status = int(getattr(response, "status_code", 0))
            return api_error(status, bytes(getattr(response, "body", b"") or b""))
        return ConnectionFailed(f"{self.url}: {e}")

    def recv_failed(self, e: BaseException) -> Exception:
        """No message in time: ``WaitTimeout``; a closed or broken socket: ``ConnectionFailed``."""
        from websockets.exceptions import ConnectionClosed

        if isinstance(e, (TimeoutError, asyncio.TimeoutError)):
            return WaitTimeout(f"command {self.command_id}: no final answer within {self.timeout} s")
        if isinstance(e, ConnectionClosed):
            return ConnectionFailed(f"{self.url}: closed before the final response ({e})")
        return ConnectionFailed(f"{self.url}: {e}")

    def message(self, text: str | bytes) -> CommandResponse:
        """One message: a response, or ``CommandFailed`` for a failure."""
        command_id = self.command_id
        try:
            d = json.loads(text)
            event = d["event"]
        except (ValueError, KeyError, TypeError) as e:
            raise ConnectionFailed(f"response stream of {command_id}: not an event: {text!r:.200}") from e
        if event == "failed":
            raise CommandFailed(command_id, str(d.get("error_message", "")))
        if event != "response":
            raise ConnectionFailed(f"response stream of {command_id}: unknown event {event!r}")
        return CommandResponse.from_json(d)


def _console_url(
    base: str,
    group: Optional[str],
    dongle: Optional[str],
    groups: Sequence[str],
    dongles: Sequence[str],
) -> str:
    single = [x for x in (group, dongle) if x is not None]
    if len(single) + (1 if groups or dongles else 0) != 1:
        raise ValueError("name exactly one of group=, dongle=, or groups=/dongles=")
    if group is not None:
        return f"{base}/api/v1/streams/groups/{quote(group, safe='')}/console"
    if dongle is not None:
        return f"{base}/api/v1/streams/dongles/{quote(dongle, safe='')}/console"
    query = {k: ",".join(v) for k, v in (("groups", groups), ("dongles", dongles)) if v}
    return f"{base}/api/v1/streams/console?{urlencode(query)}"


class _Base:
    def __init__(self, url: str, token: str, timeout: float) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self._timeout = timeout
        self._headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        self._auth = {"Authorization": f"Bearer {token}"}

    def _finish(self, call: Call[T], response: httpx.Response) -> T:
        if response.status_code >= 300:
            raise api_error(response.status_code, response.content)
        return call.parse(response.json() if response.content else None)

    def console(
        self,
        *,
        group: Optional[str] = None,
        dongle: Optional[str] = None,
        groups: Sequence[str] = (),
        dongles: Sequence[str] = (),
        last_event_id: Optional[str] = None,
        **options: Any,
    ) -> ConsoleSubscriber:
        """A subscriber to one group's or dongle's console, or to several on one connection
        (``groups=[...]``, ``dongles=[...]``); iterate it with ``for`` or ``async for``."""
        url = _console_url(self.url, group, dongle, groups, dongles)
        return ConsoleSubscriber(url, self.token, last_event_id=last_event_id, **options)

    def telemetry_stream(self, vehicle_id: str, *, after_seq: Optional[int] = None, **options: Any) -> ConsoleSubscriber:
        """A vehicle's telemetry as it is stored (``/api/v1/telemetry/vehicles/{id}/stream``):
        ``record`` events (``id`` is the seq, ``json()`` is ``{"seq", "ts_ms", "record"}``),
        the stored ones after ``after_seq`` first (without it, only new ones). Reconnects resume
        with ``Last-Event-ID`` as the console does; iterate with ``for`` or ``async for``."""
        url = f"{self.url}/api/v1/telemetry/vehicles/{quote(vehicle_id, safe='')}/stream"
        last = None if after_seq is None else str(after_seq)
        return ConsoleSubscriber(url, self.token, last_event_id=last, **options)


class Client(_Base):
    """A synchronous client of `tether server`: ``Client("http://127.0.0.1:8080", token)``.

    The token is a user token (``tu_...``) for everything but ``announce_dongle`` and
    ``dongle_assignment``, which take an agent token (``ta_...``). Use as a context manager or
    call ``close()``."""

    def __init__(self, url: str, token: str, *, timeout: float = 30.0) -> None:
        super().__init__(url, token, timeout)
        self._http = httpx.Client(base_url=self.url, headers=self._headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, call: Call[T]) -> T:
        """Sends one request and reads its answer."""
        try:
            response = self._http.request(call.method, call.path, json=call.body)
        except httpx.HTTPError as e:
            raise ConnectionFailed(f"{call.method} {self.url}{call.path}: {e}") from e
        return self._finish(call, response)

    def create_agent(self, name: str) -> Agent:
        """Creates an agent; its token is in the answer, and only there."""
        return self.run(_calls.create_agent(name))

    def agents(self) -> list[Agent]:
        return self.run(_calls.agents())

    def agent(self, agent_id: str) -> Agent:
        return self.run(_calls.agent(agent_id))

    def delete_agent(self, agent_id: str) -> None:
        """Revokes an agent (its token stops working at once)."""
        return self.run(_calls.delete_agent(agent_id))

    def announce_dongle(self, serial: str) -> Dongle:
        """(agent token) Announces a dongle the agent talks to; idempotent."""
        return self.run(_calls.announce_dongle(serial))

    def dongle_assignment(self, dongle_id: str) -> Dongle:
        """(agent token) The group and side of one of the agent's dongles."""
        return self.run(_calls.dongle_assignment(dongle_id))

    def dongles(self) -> list[Dongle]:
        return self.run(_calls.dongles())

    def dongle(self, dongle_id: str) -> Dongle:
        return self.run(_calls.dongle(dongle_id))

    def create_group(self, name: str, dongle_a: str, dongle_b: str) -> Group:
        return self.run(_calls.create_group(name, dongle_a, dongle_b))

    def groups(self) -> list[Group]:
        return self.run(_calls.groups())

    def group(self, group_id: str) -> Group:
        return self.run(_calls.group(group_id))

    def delete_group(self, group_id: str) -> None:
        return self.run(_calls.delete_group(group_id))

    def activate_group(self, group_id: str) -> Group:
        return self.run(_calls.set_group_active(group_id, True))

    def deactivate_group(self, group_id: str) -> Group:
        return self.run(_calls.set_group_active(group_id, False))

    def group_audit(self, group_id: str) -> list[AuditEntry]:
        return self.run(_calls.group_audit(group_id))

    def create_vehicle(
        self, name: str, *, vin: Optional[str] = None, dongle_id: Optional[str] = None,
        ecus: Sequence[Ecu | dict[str, Any]] = (),
    ) -> Vehicle:
        """Creates a vehicle; ``ecus`` as ``Ecu`` or ``{"name", "request_id", "response_id"}``
        (ids as numbers or ``"0x7E0"`` strings)."""
        return self.run(_calls.create_vehicle(name, vin, dongle_id, ecus))

    def vehicles(self) -> list[Vehicle]:
        return self.run(_calls.vehicles())

    def vehicle(self, vehicle_id: str) -> Vehicle:
        return self.run(_calls.vehicle(vehicle_id))

    def submit_command(
        self, vehicle_id: str, command_name: str, params: Optional[dict[str, Any]] = None,
    ) -> Command:
        """Submits a command (``ReadDTC``, ``ClearDTC``, ``ReadDataByID``, ...; docs/api.md);
        the answer (``pending``) comes at once. Refused names and params raise
        ``InvalidRequest`` (codes ``unknown_command``, ``invalid_params``)."""
        return self.run(_calls.submit_command(vehicle_id, command_name, params))

    def command(self, command_id: str) -> Command:
        return self.run(_calls.command(command_id))

    def commands(
        self, *, vehicle_id: Optional[str] = None, status: Optional[str] = None,
        limit: Optional[int] = None, cursor: Optional[str] = None,
    ) -> CommandPage:
        """One page of the caller's commands, newest first."""
        return self.run(_calls.commands(vehicle_id, status, limit, cursor))

    def command_responses(self, command_id: str) -> list[CommandResponse]:
        """The responses stored so far, in sequence."""
        return self.run(_calls.command_responses(command_id))

    def stream_responses(self, command_id: str, *, timeout: Optional[float] = 60.0) -> Iterator[CommandResponse]:
        """The command's responses over ``/ws/responses/{command_id}``: the stored ones, then
        live ones, each once and in sequence, ending after the final one. A failed command
        raises ``CommandFailed``; no final answer within ``timeout`` seconds ``WaitTimeout``."""
        from websockets.sync.client import connect

        stream = _ResponseStream(self.url, command_id, timeout)
        try:
            ws = connect(stream.url, additional_headers=self._auth, open_timeout=self._timeout)
        except _ResponseStream.errors() as e:
            raise stream.open_failed(e) from e
        with ws:
            while True:
                try:
                    text = ws.recv(timeout=stream.left())
                except _ResponseStream.errors() as e:
                    raise stream.recv_failed(e) from e
                response = stream.message(text)
                yield response
                if response.is_final:
                    return

    def wait_command(self, command_id: str, *, timeout: Optional[float] = 60.0) -> CommandResult:
        """Waits for the command's final answer (over the response stream) and returns the
        finished command with all its responses; ``CommandFailed`` if it failed."""
        responses = list(self.stream_responses(command_id, timeout=timeout))
        return CommandResult(self.command(command_id), responses)

    def run_command(
        self, vehicle_id: str, command_name: str, params: Optional[dict[str, Any]] = None,
        *, timeout: Optional[float] = 60.0,
    ) -> CommandResult:
        """``submit_command`` then ``wait_command``."""
        command = self.submit_command(vehicle_id, command_name, params)
        return self.wait_command(command.command_id, timeout=timeout)

    def faults(self, vehicle_id: str, ecu: str, *, wait: Optional[int] = None) -> dict[str, Any]:
        """SOVD ``GET .../components/{ecu}/faults`` (a ReadDTC): ``{"command_id", "status":
        "completed", "response", "responses", "href"}``, or ``status`` still running after
        ``wait`` seconds; a failed command raises ``CommandFailed``."""
        return self.run(_calls.component("GET", vehicle_id, ecu, "faults", wait))

    def clear_faults(self, vehicle_id: str, ecu: str, *, wait: Optional[int] = None) -> dict[str, Any]:
        """SOVD ``DELETE .../components/{ecu}/faults`` (a ClearDTC)."""
        return self.run(_calls.component("DELETE", vehicle_id, ecu, "faults", wait))

    def data(self, vehicle_id: str, ecu: str, did: int | str, *, wait: Optional[int] = None) -> dict[str, Any]:
        """SOVD ``GET .../components/{ecu}/data/{did}`` (a ReadDataByID)."""
        did_text = f"0x{did:04X}" if isinstance(did, int) else did
        return self.run(_calls.component("GET", vehicle_id, ecu, f"data/{quote(did_text, safe='')}", wait))

    def telemetry_vehicles(self) -> list[TelemetryVehicle]:
        """The vehicles (agents) whose telemetry the server stored."""
        return self.run(_calls.telemetry_vehicles())

    def telemetry_records(
        self, vehicle_id: str, *, after_seq: Optional[int] = None, limit: Optional[int] = None,
        from_ts_ms: Optional[int] = None, to_ts_ms: Optional[int] = None,
    ) -> TelemetryPage:
        """One page of a vehicle's records after ``after_seq``, optionally only
        ``from_ts_ms <= ts_ms < to_ts_ms``."""
        return self.run(_calls.telemetry_records(vehicle_id, after_seq, limit, from_ts_ms, to_ts_ms))

    def iter_telemetry_records(
        self, vehicle_id: str, *, after_seq: Optional[int] = None, limit: Optional[int] = None,
        from_ts_ms: Optional[int] = None, to_ts_ms: Optional[int] = None,
    ) -> Iterator[TelemetryRecord]:
        """Every record after ``after_seq``, page by page (``limit`` per request)."""
        while True:
            page = self.telemetry_records(
                vehicle_id, after_seq=after_seq, limit=limit, from_ts_ms=from_ts_ms, to_ts_ms=to_ts_ms,
            )
            yield from page.items
            if page.next_after_seq is None:
                return
            after_seq = page.next_after_seq

    def health(self) -> dict[str, Any]:
        return self.run(_calls.health())

    def ready(self) -> dict[str, Any]:
        """``/readyz``; raises ``Unavailable`` when the server is not ready."""
        return self.run(_calls.ready())


class AsyncClient(_Base):
    """The asyncio twin of ``Client``: the same methods, as coroutines."""

    def __init__(self, url: str, token: str, *, timeout: float = 30.0) -> None:
        super().__init__(url, token, timeout)
        self._http = httpx.AsyncClient(base_url=self.url, headers=self._headers, timeout=timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def run(self, call: Call[T]) -> T:
        """Sends one request and reads its answer."""
        try:
            response = await self._http.request(call.method, call.path, json=call.body)
        except httpx.HTTPError as e:
            raise ConnectionFailed(f"{call.method} {self.url}{call.path}: {e}") from e
        return self._finish(call, response)

    async def create_agent(self, name: str) -> Agent:
        return await self.run(_calls.create_agent(name))

    async def agents(self) -> list[Agent]:
        return await self.run(_calls.agents())

    async def agent(self, agent_id: str) -> Agent:
        return await self.run(_calls.agent(agent_id))

    async def delete_agent(self, agent_id: str) -> None:
        return await self.run(_calls.delete_agent(agent_id))

    async def announce_dongle(self, serial: str) -> Dongle:
        return await self.run(_calls.announce_dongle(serial))

    async def dongle_assignment(self, dongle_id: str) -> Dongle:
        return await self.run(_calls.dongle_assignment(dongle_id))

    async def dongles(self) -> list[Dongle]:
        return await self.run(_calls.dongles())

    async def dongle(self, dongle_id: str) -> Dongle:
        return await self.run(_calls.dongle(dongle_id))

    async def create_group(self, name: str, dongle_a: str, dongle_b: str) -> Group:
        return await self.run(_calls.create_group(name, dongle_a, dongle_b))

    async def groups(self) -> list[Group]:
        return await self.run(_calls.groups())

    async def group(self, group_id: str) -> Group:
        return await self.run(_calls.group(group_id))

    async def delete_group(self, group_id: str) -> None:
        return await self.run(_calls.delete_group(group_id))

    async def activate_group(self, group_id: str) -> Group:
        return await self.run(_calls.set_group_active(group_id, True))

    async def deactivate_group(self, group_id: str) -> Group:
        return await self.run(_calls.set_group_active(group_id, False))

    async def group_audit(self, group_id: str) -> list[AuditEntry]:
        return await self.run(_calls.group_audit(group_id))

    async def create_vehicle(
        self, name: str, *, vin: Optional[str] = None, dongle_id: Optional[str] = None,
        ecus: Sequence[Ecu | dict[str, Any]] = (),
    ) -> Vehicle:
        return await self.run(_calls.create_vehicle(name, vin, dongle_id, ecus))

    async def vehicles(self) -> list[Vehicle]:
        return await self.run(_calls.vehicles())

    async def vehicle(self, vehicle_id: str) -> Vehicle:
        return await self.run(_calls.vehicle(vehicle_id))

    async def submit_command(
        self, vehicle_id: str, command_name: str, params: Optional[dict[str, Any]] = None,
    ) -> Command:
        return await self.run(_calls.submit_command(vehicle_id, command_name, params))

    async def command(self, command_id: str) -> Command:
        return await self.run(_calls.command(command_id))

    async def commands(
        self, *, vehicle_id: Optional[str] = None, status: Optional[str] = None,
        limit: Optional[int] = None, cursor: Optional[str] = None,
    ) -> CommandPage:
        return await self.run(_calls.commands(vehicle_id, status, limit, cursor))

    async def command_responses(self, command_id: str) -> list[CommandResponse]:
        return await self.run(_calls.command_responses(command_id))

    async def stream_responses(
        self, command_id: str, *, timeout: Optional[float] = 60.0,
    ) -> AsyncIterator[CommandResponse]:
        """As ``Client.stream_responses``, as an async iterator."""
        from websockets.asyncio.client import connect

        stream = _ResponseStream(self.url, command_id, timeout)
        try:
            ws = await connect(stream.url, additional_headers=self._auth, open_timeout=self._timeout)
        except _ResponseStream.errors() as e:
            raise stream.open_failed(e) from e
        async with ws:
            while True:
                try:
                    text = await asyncio.wait_for(ws.recv(), stream.left())
                except _ResponseStream.errors() as e:
                    raise stream.recv_failed(e) from e
                response = stream.message(text)
                yield response
                if response.is_final:
                    return

    async def wait_command(self, command_id: str, *, timeout: Optional[float] = 60.0) -> CommandResult:
        responses = [r async for r in self.stream_responses(command_id, timeout=timeout)]
        return CommandResult(await self.command(command_id), responses)

    async def run_command(
        self, vehicle_id: str, command_name: str, params: Optional[dict[str, Any]] = None,
        *, timeout: Optional[float] = 60.0,
    ) -> CommandResult:
        command = await self.submit_command(vehicle_id, command_name, params)
        return await self.wait_command(command.command_id, timeout=timeout)

    async def faults(self, vehicle_id: str, ecu: str, *, wait: Optional[int] = None) -> dict[str, Any]:
        return await self.run(_calls.component("GET", vehicle_id, ecu, "faults", wait))

    async def clear_faults(self, vehicle_id: str, ecu: str, *, wait: Optional[int] = None) -> dict[str, Any]:
        return await self.run(_calls.component("DELETE", vehicle_id, ecu, "faults", wait))

    async def data(
        self, vehicle_id: str, ecu: str, did: int | str, *, wait: Optional[int] = None,
    ) -> dict[str, Any]:
        did_text = f"0x{did:04X}" if isinstance(did, int) else did
        return await self.run(_calls.component("GET", vehicle_id, ecu, f"data/{quote(did_text, safe='')}", wait))

    async def telemetry_vehicles(self) -> list[TelemetryVehicle]:
        return await self.run(_calls.telemetry_vehicles())

    async def telemetry_records(
        self, vehicle_id: str, *, after_seq: Optional[int] = None, limit: Optional[int] = None,
        from_ts_ms: Optional[int] = None, to_ts_ms: Optional[int] = None,
    ) -> TelemetryPage:
        return await self.run(_calls.telemetry_records(vehicle_id, after_seq, limit, from_ts_ms, to_ts_ms))

    async def iter_telemetry_records(
        self, vehicle_id: str, *, after_seq: Optional[int] = None, limit: Optional[int] = None,
        from_ts_ms: Optional[int] = None, to_ts_ms: Optional[int] = None,
    ) -> AsyncIterator[TelemetryRecord]:
        while True:
            page = await self.telemetry_records(
                vehicle_id, after_seq=after_seq, limit=limit, from_ts_ms=from_ts_ms, to_ts_ms=to_ts_ms,
            )
            for item in page.items:
                yield item
            if page.next_after_seq is None:
                return
            after_seq = page.next_after_seq

    async def health(self) -> dict[str, Any]:
        return await self.run(_calls.health())

    async def ready(self) -> dict[str, Any]:
        return await self.run(_calls.ready())
