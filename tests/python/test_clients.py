"""`tether.Client`, `tether.AsyncClient` and `tether.ConsoleSubscriber` against the real
`tether server` binary (embedded SQLite default, no Redis), on loopback.

The subscriber is checked for exact resume with `Last-Event-ID`, for reconnecting by itself
when the server restarts, and for surfacing the `stream_reset` the new process sends.
Needs TETHER_BIN (the built `tether` binary).
"""

from __future__ import annotations

import asyncio
import queue
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tether_server import create_token, running_server

import tether
from tether.client import AsyncClient, Client, Group
from tether.console import ConsoleEvent, ConsoleSubscriber, StreamReset
from tether.errors import ApiError, Conflict, ConnectionFailed, InvalidRequest, NotFound, Unauthorized


@pytest.fixture
def server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    data = tmp_path / "data"
    token = create_token(data, "alice")
    with running_server(data) as addr:
        yield {"base": f"http://{addr}", "token": token, "data": data}


def make_group(c: Client, base: str) -> tuple[list[str], Group]:
    agent = c.create_agent("edge")
    assert agent.token and agent.token.startswith("ta_")
    with Client(base, agent.token) as edge:
        dongles = [edge.announce_dongle(serial).id for serial in ("SN-A", "SN-B")]
        assert edge.dongle_assignment(dongles[0]).group is None
    return dongles, c.create_group("pair", dongles[0], dongles[1])


def test_rest_client_round_trip_and_typed_errors(server: dict[str, Any]) -> None:
    base, token = server["base"], server["token"]
    with Client(base, token) as c:
        assert c.health() == {"status": "ok"}
        assert c.ready()["status"] == "ready"
        dongles, group = make_group(c, base)
        assert (group.name, group.mode, group.dongle_a, group.dongle_b) == ("pair", "inactive", *dongles)
        assert group.backlog == {"a_to_b": 0, "b_to_a": 0} and group.offline_side == "both"
        assert [d.serial for d in c.dongles()] == ["SN-A", "SN-B"]
        assert c.dongle(dongles[0]).online is False
        assert [g.id for g in c.groups()] == [group.id]
        assert c.activate_group(group.id).mode == "degraded"
        assert c.activate_group(group.id).mode == "degraded"  # idempotent
        assert c.deactivate_group(group.id).mode == "inactive"
        audit = c.group_audit(group.id)
        assert [(e.action, e.old_mode, e.new_mode) for e in audit] == [
            ("create", None, "inactive"), ("activate", "inactive", "degraded"), ("deactivate", "degraded", "inactive"),
        ]
        assert audit[1].actor == "user:alice"
        assert [a.name for a in c.agents()] == ["edge"]

        # Each refusal comes as its own exception, with the server's code.
        with pytest.raises(NotFound) as nf:
            c.group(str(uuid.uuid4()))
        assert (nf.value.status, nf.value.code) == (404, "not_found")
        with pytest.raises(InvalidRequest) as same:
            c.create_group("x", dongles[0], dongles[0])
        assert same.value.code == "same_dongle"
        with pytest.raises(Conflict) as busy:
            c.create_group("again", dongles[0], dongles[1])
        assert busy.value.code == "dongle_in_group"
        with pytest.raises(InvalidRequest) as empty:
            c.create_agent("")
        assert (empty.value.status, empty.value.code) == (422, "invalid_body")
        c.delete_group(group.id)
        with pytest.raises(NotFound):
            c.delete_group(group.id)
        assert issubclass(NotFound, ApiError) and not NotFound.retryable

    with Client(base, "tu_" + "0" * 64) as stranger, pytest.raises(Unauthorized) as unauth:
        stranger.groups()
    assert unauth.value.code == "unauthorized"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with Client(dead, token, timeout=2) as gone, pytest.raises(ConnectionFailed):
        gone.health()


def test_async_client(server: dict[str, Any]) -> None:
    base, token = server["base"], server["token"]

    async def main() -> list[str]:
        async with AsyncClient(base, token) as c:
            agent = await c.create_agent("edge")
            assert agent.token is not None
            async with AsyncClient(base, agent.token) as edge:
                a = await edge.announce_dongle("SN-1")
                b = await edge.announce_dongle("SN-2")
            group = await c.create_group("pair", a.id, b.id)
            modes = [(await c.activate_group(group.id)).mode, (await c.deactivate_group(group.id)).mode]
            try:
                await c.dongle(str(uuid.uuid4()))
            except NotFound as e:
                modes.append(e.code)
            return modes

    assert asyncio.run(main()) == ["degraded", "inactive", "not_found"]


class Collector:
    """Reads a subscriber on a thread into a queue (an iterator connects on its first `next`,
    so a test that must publish after the stream opened reads this way)."""

    def __init__(self, sub: ConsoleSubscriber) -> None:
        self.sub = sub
        self.events: queue.Queue[ConsoleEvent | BaseException] = queue.Queue()
        threading.Thread(target=self._run, daemon=True).start()
        deadline = time.monotonic() + 20
        while sub.connections == 0:
            assert time.monotonic() < deadline, "the console stream did not open"
            time.sleep(0.02)

    def _run(self) -> None:
        try:
            for event in self.sub:
                self.events.put(event)
        except BaseException as e:  # handed to the test thread
            self.events.put(e)

    def take(self, n: int) -> list[ConsoleEvent]:
        got = []
        for _ in range(n):
            item = self.events.get(timeout=20)
            if isinstance(item, BaseException):
                raise item
            got.append(item)
        return got


def toggle(c: Client, group: str, n: int, state: dict[str, bool]) -> None:
    for _ in range(n):
        active = state.get("active", False)
        (c.deactivate_group if active else c.activate_group)(group)
        state["active"] = not active


def test_console_subscriber_resumes_exactly_with_last_event_id(server: dict[str, Any]) -> None:
    base, token = server["base"], server["token"]
    state: dict[str, bool] = {}
    with Client(base, token) as c:
        _, group = make_group(c, base)
        sub = c.console(group=group.id)
        reader = Collector(sub)
        toggle(c, group.id, 4, state)
        current, *first = reader.take(5)
        sub.close()
        assert current.event == "group_state" and current.id == ""  # the state at subscription
        assert [e.event for e in first] == ["group_state"] * 4
        assert [e.json()["mode"] for e in first] == ["degraded", "inactive", "degraded", "inactive"]
        assert sub.last_event_id == first[-1].id

        # Resume after the second event: exactly the two after it, then live ones.
        resumed = ConsoleSubscriber(f"{base}/api/v1/streams/groups/{group.id}/console", token,
                                    last_event_id=first[1].id)
        reader = Collector(resumed)
        assert [e.id for e in reader.take(2)] == [first[2].id, first[3].id]
        toggle(c, group.id, 1, state)
        (live,) = reader.take(1)
        assert live.json()["mode"] == "degraded" and live.id not in {e.id for e in first}
        resumed.close()

        # A stale ID: one StreamReset (surfaced as its own type), then the retained history.
        stale = iter(c.console(group=group.id, last_event_id="1-0"))
        reset = next(stale)
        assert isinstance(reset, StreamReset)
        assert (reset.requested, reset.reason, reset.oldest) == ("1-0", "earlier_process", first[0].id)
        assert [next(stale).id for _ in range(5)] == [e.id for e in first] + [live.id]

        # Refusals that retrying cannot fix are raised at once.
        with pytest.raises(NotFound):
            next(iter(c.console(group=str(uuid.uuid4()))))
        with pytest.raises(Unauthorized):
            next(iter(ConsoleSubscriber(f"{base}/api/v1/streams/groups/{group.id}/console", "tu_nope")))
        with pytest.raises(ValueError):
            c.console(group=group.id, dongle=group.dongle_a)


def test_console_subscriber_reconnects_across_a_server_restart(tmp_path: Path) -> None:
    """The server stops (ending every stream) and starts again on the same port. The
    subscriber reconnects by itself with `Last-Event-ID`; the new process no longer has that
    ID, so a `StreamReset` (`earlier_process`) comes first, then the new events."""
    data = tmp_path / "data"
    token = create_token(data, "alice")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    state: dict[str, bool] = {}

    with running_server(data, listen=f"127.0.0.1:{port}") as addr:
        base = f"http://{addr}"
        with Client(base, token) as c:
            _, group = make_group(c, base)
        sub = ConsoleSubscriber(f"{base}/api/v1/streams/groups/{group.id}/console", token,
                                max_retries=50, retry_ms=200)
        reader = Collector(sub)
        with Client(base, token) as c:
            toggle(c, group.id, 2, state)
        before = reader.take(3)[1:]  # after the state at subscription
    assert all(e.event == "group_state" for e in before)

    with running_server(data, listen=f"127.0.0.1:{port}") as addr:
        (reset,) = reader.take(1)
        assert isinstance(reset, StreamReset), reset
        assert (reset.requested, reset.reason) == (before[-1].id, "earlier_process")
        while sub.connections < 2:
            time.sleep(0.02)
        with Client(f"http://{addr}", token) as c:
            toggle(c, group.id, 1, state)
        (after,) = reader.take(1)
        assert after.json()["mode"] == "degraded"
        sub.close()
    assert sub.reconnects >= 1 and sub.resets == 1


def test_async_console_subscriber(server: dict[str, Any]) -> None:
    base, token = server["base"], server["token"]
    state: dict[str, bool] = {}
    with Client(base, token) as c:
        _, group = make_group(c, base)
    url = f"{base}/api/v1/streams/groups/{group.id}/console"

    async def main() -> list[str]:
        sub = ConsoleSubscriber(url, token)
        modes: list[str] = []

        async def produce() -> None:
            while sub.connections == 0:  # publish once the stream is open
                await asyncio.sleep(0.02)
            await asyncio.to_thread(lambda: toggle(Client(base, token), group.id, 3, state))

        task = asyncio.create_task(produce())
        async for event in sub:
            # The first event is the group's state at subscription (no id), then the changes.
            modes.append(event.json()["mode"] if event.id else "at subscription")
            if len(modes) == 4:
                sub.close()
        await task
        return modes

    assert asyncio.run(main()) == ["at subscription", "degraded", "inactive", "degraded"]
    assert tether.ConsoleSubscriber is ConsoleSubscriber and tether.Client is Client
