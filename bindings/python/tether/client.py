"""REST clients of `tether server` (docs/api.md): ``Client`` (synchronous) and ``AsyncClient``
(asyncio), over httpx.

Both expose the same methods; each one is described once, as a ``Call`` (method, path, body and
how to read the answer) in ``_calls``, and the two classes only run calls. Adding an endpoint
(commands, vehicles, telemetry as the server grows them) is one ``Call`` factory and one line in
each class. Refusals raise the typed errors of ``tether.errors``; unreachable servers raise
``ConnectionFailed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Optional, TypeVar
from urllib.parse import quote, urlencode

import httpx

from tether.console import ConsoleSubscriber
from tether.errors import ConnectionFailed, api_error

__all__ = ["Agent", "AsyncClient", "AuditEntry", "Client", "Dongle", "Group"]

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
    def health() -> Call[dict[str, Any]]:
        return Call("GET", "/healthz", _ident)

    @staticmethod
    def ready() -> Call[dict[str, Any]]:
        return Call("GET", "/readyz", _ident)


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

    async def health(self) -> dict[str, Any]:
        return await self.run(_calls.health())

    async def ready(self) -> dict[str, Any]:
        return await self.run(_calls.ready())
