"""A Python script run inside a private network namespace (`unshare -rn`): loopback up and
multicast routed to it, so multicast tests send nothing outside the sandbox."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


def run_in_private_network(tmp_path: Path, script: str, *args: str, timeout: float = 90) -> Any:
    """Runs `script` (Python source) with `args` in a new network namespace and returns the
    JSON object it printed on its last line."""
    if subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode != 0:
        pytest.fail("unshare -rn is not available: cannot build the private network namespace")
    path = tmp_path / "in_namespace.py"
    path.write_text(script)
    argv = " ".join(shlex.quote(a) for a in (sys.executable, str(path), *args))
    cmd = f"ip link set lo up && ip route add 224.0.0.0/4 dev lo && exec {argv}"
    res = subprocess.run(["unshare", "-rn", "sh", "-c", cmd], capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])
