"""The live console of `tether server` (Server-Sent Events), resumed across disconnects.

``ConsoleSubscriber(url, token)`` reads one console stream (``/api/v1/streams/...``, see
docs/api.md) as a synchronous iterator or an asynchronous one. Bytes go through sse-core's
WHATWG parser (``tether.EventStreamParser``, Rust). When the connection drops or the server ends
the stream, it reconnects after the server's ``retry:`` delay with ``Last-Event-ID`` set to the
last ID it delivered, so events continue without gap or duplicate; when the server no longer has
that ID it sends ``stream_reset``, which is yielded as a ``StreamReset`` (history restarts at the
oldest retained event). Needs httpx.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Optional

import httpx

from tether._tether import EventStreamParser
from tether.errors import ApiError, ConnectionFailed, api_error

__all__ = ["ConsoleEvent", "ConsoleSubscriber", "StreamReset"]

DEFAULT_RETRY_MS = 2000


@dataclass(frozen=True)
class ConsoleEvent:
    """One console event: its SSE ``event`` type (``presence``, ``can_frame``, ``log``,
    ``group_state``, ...), ``id`` (``<ms>-<n>``) and raw ``data`` (one JSON object)."""

    event: str
    id: str
    data: str

    def json(self) -> Any:
        """The payload, parsed."""
        return json.loads(self.data)


@dataclass(frozen=True)
class StreamReset(ConsoleEvent):
    """The server could not resume from ``requested`` (``reason``: ``too_old``,
    ``newer_than_latest``, ``earlier_process``, ``malformed``, ``unknown_id``, ``lagged``);
    the events that follow start at ``oldest``. Events between may have been missed."""

    requested: Optional[str] = None
    oldest: Optional[str] = None
    latest: Optional[str] = None
    reason: str = ""


def _event(event: str, id: str, data: str) -> ConsoleEvent:
    if event != "stream_reset":
        return ConsoleEvent(event, id, data)
    try:
        body = json.loads(data)
    except ValueError:
        body = {}
    return StreamReset(
        event, id, data,
        requested=body.get("requested"), oldest=body.get("oldest"),
        latest=body.get("latest"), reason=str(body.get("reason", "")),
    )


class _Attempt:
    """One connection attempt: whether it got any bytes, and the error that ended it (``None``
    when the server ended the stream). As a context manager it keeps the errors a reconnect may
    fix (HTTP failures, refusals) in ``error`` instead of raising them; ``_after_connection``
    decides."""

    def __init__(self) -> None:
        self.got_bytes = False
        self.error: Optional[Exception] = None

    def __enter__(self) -> _Attempt:
        return self

    def __exit__(
        self,
        kind: Optional[type[BaseException]],
        error: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool:
        if isinstance(error, (httpx.HTTPError, ApiError)):
            self.error = error
            return True
        return False


class ConsoleSubscriber:
    """Subscribes to one console stream of `tether server`.

    ``url``: the stream URL (``http://HOST:PORT/api/v1/streams/groups/{id}/console``, a
    dongle's, or the multiplexed ``/api/v1/streams/console?groups=...``); ``token``: a user
    token (sent as ``Authorization: Bearer``). ``last_event_id`` resumes after that ID.
    ``max_retries``: consecutive failed connection attempts before ``ConnectionFailed`` (``None``:
    forever). ``retry_ms``: the reconnection delay until the server sends its own. ``read_timeout``:
    seconds without any byte (the server sends a keep-alive every 15 s by default) before the
    connection counts as dead and is reopened.

    Iterate it (``for event in sub``) or ``async for event in sub``. Refusals that retrying cannot
    fix (``401``, ``404``, ``400``) raise the matching ``tether.errors.ApiError`` at once.
    ``connections`` counts streams opened (the first one opens on the first ``next``),
    ``reconnects`` the reconnections, ``resets`` the ``stream_reset`` events seen.
    """

    def __init__(
        self,
        url: str,
        token: Optional[str] = None,
        *,
        last_event_id: Optional[str] = None,
        max_retries: Optional[int] = 5,
        retry_ms: int = DEFAULT_RETRY_MS,
        read_timeout: float = 60.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self.url = url
        self._headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if token is not None:
            self._headers["Authorization"] = f"Bearer {token}"
        self._parser = EventStreamParser()
        # The ID of the last event delivered: what a reconnect resumes after (the parser's own
        # buffer may already hold the ID of an event the connection cut short).
        self._last_id = last_event_id or ""
        self._default_retry_ms = retry_ms
        self.max_retries = max_retries
        self._timeout = httpx.Timeout(connect_timeout, read=read_timeout)
        self._closed = False
        self.connections = 0
        self.reconnects = 0
        self.resets = 0

    @property
    def last_event_id(self) -> str:
        """The ID of the last event delivered (sent as ``Last-Event-ID`` on reconnect)."""
        return self._last_id

    @property
    def retry_ms(self) -> int:
        """The reconnection delay in use: the server's ``retry:`` once it sent one."""
        return self._parser.retry_ms or self._default_retry_ms

    def close(self) -> None:
        """Stops the iteration at the next event or reconnection."""
        self._closed = True

    def __enter__(self) -> ConsoleSubscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request_headers(self) -> dict[str, str]:
        headers = dict(self._headers)
        if self._last_id:
            headers["Last-Event-ID"] = self._last_id
        return headers

    def _deliver(self, chunk: bytes) -> list[ConsoleEvent]:
        events = [_event(e.event, e.id, e.data) for e in self._parser.feed(chunk)]
        self.resets += sum(isinstance(e, StreamReset) for e in events)
        return events

    def _after_connection(self, attempts: int, attempt: _Attempt) -> int:
        """Counts a connection that ended; raises when retrying cannot help or is used up.
        Returns the number of consecutive failed attempts so far."""
        error = attempt.error
        if isinstance(error, ApiError) and not error.retryable:
            raise error
        attempts = 0 if attempt.got_bytes else attempts + 1
        if self.max_retries is not None and attempts > self.max_retries:
            reason = error or "the stream ended without data"
            raise ConnectionFailed(f"{self.url}: gave up after {attempts} attempts: {reason}") from error
        self._parser.reconnect()
        self.reconnects += 1
        return attempts

    def _events(self, chunk: bytes, attempt: _Attempt) -> Iterator[ConsoleEvent]:
        """The events ``chunk`` completes, each one's ID kept as the last delivered as it is
        yielded; stops early once the subscriber is closed."""
        attempt.got_bytes = True
        for event in self._deliver(chunk):
            self._last_id = event.id
            yield event
            if self._closed:
                return

    @staticmethod
    def _check(response: httpx.Response, body: bytes) -> None:
        if response.status_code != 200:
            raise api_error(response.status_code, body)
        kind = response.headers.get("content-type", "")
        if not kind.startswith("text/event-stream"):
            raise ApiError(response.status_code, "not_an_event_stream", f"content-type {kind!r}")

    def __iter__(self) -> Iterator[ConsoleEvent]:
        attempts = 0
        with httpx.Client(timeout=self._timeout) as client:
            while not self._closed:
                with _Attempt() as attempt:
                    with client.stream("GET", self.url, headers=self._request_headers()) as r:
                        self._check(r, r.read() if r.status_code != 200 else b"")
                        self.connections += 1
                        for chunk in r.iter_raw():
                            yield from self._events(chunk, attempt)
                            if self._closed:
                                return
                if self._closed:
                    return
                attempts = self._after_connection(attempts, attempt)
                time.sleep(self.retry_ms / 1000)

    async def __aiter__(self) -> AsyncIterator[ConsoleEvent]:
        attempts = 0
        async with httpx.AsyncClient(timeout=self._timeout) as client:
            while not self._closed:
                with _Attempt() as attempt:
                    async with client.stream("GET", self.url, headers=self._request_headers()) as r:
                        self._check(r, await r.aread() if r.status_code != 200 else b"")
                        self.connections += 1
                        async for chunk in r.aiter_raw():
                            for event in self._events(chunk, attempt):
                                yield event
                            if self._closed:
                                return
                if self._closed:
                    return
                attempts = self._after_connection(attempts, attempt)
                await asyncio.sleep(self.retry_ms / 1000)
