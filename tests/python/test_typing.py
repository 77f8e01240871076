"""The type stubs (`tether/_tether.pyi`, `py.typed`) and the package's Python files pass
`mypy --strict`, together with the typed tests that use them the way a program would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
TYPED_TESTS = ["test_tables.py", "test_can_interface.py", "test_clients.py", "test_docs.py",
               "test_vehicle_clients.py", "test_isotp_uds.py",
               "test_typing.py", "tether_server.py", "loopback.py", "can_support.py"]


def test_mypy_strict_accepts_the_package_and_the_typed_tests() -> None:
    # The cache lives in the virtualenv (ignored by git) when there is one.
    cache = Path(sys.prefix) / ".mypy_cache" if sys.prefix != sys.base_prefix else HERE / ".mypy_cache"
    res = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(cache),
         str(ROOT / "bindings" / "python" / "tether"), *(str(HERE / t) for t in TYPED_TESTS)],
        capture_output=True, text=True, timeout=600, cwd=HERE,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Success: no issues found" in res.stdout
