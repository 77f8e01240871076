"""Every ```python block of docs/bindings.md runs as written (each in its own interpreter,
from the repository root, with a real `tether server` at $TETHER_URL — its commands answered
by the server's mock connector — and a user token in $TETHER_TOKEN), so the examples stay
true."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tether_server import create_token, running_server

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "bindings.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```$", DOC.read_text(), flags=re.S | re.M)


def test_the_page_has_examples() -> None:
    assert len(BLOCKS) >= 6


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    data = tmp_path_factory.mktemp("docs-server")
    token = create_token(data, "doc")
    config = data / "server.yaml"
    config.write_text("commands:\n  connector: mock\n  mock_delay_ms: [50, 150]\n")
    with running_server(data, config=config) as addr:
        yield {"TETHER_URL": f"http://{addr}", "TETHER_TOKEN": token}


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_example_runs(index: int, server: dict[str, str]) -> None:
    res = subprocess.run(
        [sys.executable, "-c", BLOCKS[index]], cwd=ROOT, env={**os.environ, **server},
        capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 0, f"example {index + 1} failed:\n{BLOCKS[index]}\n{res.stderr}"
