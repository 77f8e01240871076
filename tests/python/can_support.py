"""What the python-can tests share: frames taken off a bus, `tether can` processes stopped
cleanly, and the frames of a candump log.

Import it as `from can_support import frames_of, recv_n, stop_cleanly` (tests/python is on
sys.path when pytest runs there).
"""

from __future__ import annotations

import signal
import subprocess

import can


def frames_of(log_text: str) -> list[str]:
    """The `ID#DATA` part of each candump line."""
    return [line.split()[2] for line in log_text.splitlines() if line.startswith("(")]


def recv_n(bus: can.BusABC, n: int, timeout: float = 10) -> list[can.Message]:
    """The next `n` frames on `bus`; fails when one does not arrive within `timeout` seconds."""
    got: list[can.Message] = []
    while len(got) < n:
        m = bus.recv(timeout=timeout)
        assert m is not None, f"only {len(got)} of {n} frames arrived"
        got.append(m)
    return got


def stop_cleanly(proc: subprocess.Popen[str], timeout: float = 20) -> str:
    """SIGTERM, then asserts that `proc` exited with 0 within `timeout` seconds (killing it
    otherwise); returns its stderr."""
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 0, err
    return err
