"""What the Python tests share about processes and sockets on loopback: free ports, a child
stopped with SIGTERM (killed when it does not stop), and polling until something holds.

Import it as `from loopback import free_port, stop, until` (tests/python is on sys.path when
pytest runs there).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port of 127.0.0.1 that was free a moment ago (TCP, or UDP with `socket.SOCK_DGRAM`)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def free_udp_port() -> int:
    """A UDP port of 127.0.0.1 that was free a moment ago."""
    return free_port(socket.SOCK_DGRAM)


def stop(proc: subprocess.Popen[Any], grace: float = 10) -> None:
    """SIGTERM, then SIGKILL when `proc` has not exited within `grace` seconds; reaps it."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def until(
    what: str,
    check: Callable[[], T],
    timeout: float = 30,
    tolerate: tuple[type[BaseException], ...] = (),
) -> T:
    """Calls `check` every 0.1 s until it returns something true, and returns that; fails after
    `timeout` seconds naming `what` and the last result. Exceptions of the `tolerate` types
    count as a false result (a page whose elements come and go while it loads)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            got = check()
        except tolerate as err:
            last = err
        else:
            if got:
                return got
            last = got
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {last!r}")
        time.sleep(0.1)
