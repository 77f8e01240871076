"""The real `tether server` binary for the Python tests: the embedded SQLite default (no Redis),
a fresh data directory, users' tokens from `tether server token create`.

Needs TETHER_BIN (the built `tether` binary); scripts/test.sh sets it.
"""

import contextlib
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional, Union

import httpx

TETHER = os.environ.get("TETHER_BIN", "tether")
TIMEOUT = 20


def env_without_redis() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("REDIS_URL", None)
    env["RUST_LOG"] = "warn"
    return env


def create_token(data: Union[str, Path], user: str) -> str:
    """A new API token for `user` (created if needed) in the server's data directory."""
    token = subprocess.run(
        [TETHER, "server", "token", "create", "--user", user, "--data-dir", str(data)],
        capture_output=True, text=True, timeout=TIMEOUT, env=env_without_redis(), check=True,
    ).stdout.strip()
    assert token.startswith("tu_"), token
    return token


def api(base: str, token: str, method: str, path: str, body: Optional[dict[str, Any]] = None) -> Any:
    """`method base+path` with a bearer token and a JSON body; asserts a 2xx answer and returns
    its JSON (None when empty)."""
    r = httpx.request(method, f"{base}{path}", json=body, timeout=TIMEOUT,
                      headers={"Authorization": f"Bearer {token}"})
    assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text}"
    return r.json() if r.content else None


def pair_in_group(base: str, token: str, agent: str, serials: tuple[str, str], group: str) -> tuple[Any, list[str], Any]:
    """Through the REST API as `token`'s user: an agent named `agent`, its two dongles announced
    with `serials`, and an (inactive) group `group` of them → (agent, dongle ids, group)."""
    made = api(base, token, "POST", "/api/v1/agents", {"name": agent})
    dongles = [api(base, made["token"], "POST", "/api/v1/agent/dongles", {"serial": serial})["id"]
               for serial in serials]
    pair = api(base, token, "POST", "/api/v1/groups", {"name": group, "dongle_a": dongles[0], "dongle_b": dongles[1]})
    return made, dongles, pair


@contextlib.contextmanager
def running_server(
    data: Union[str, Path], listen: str = "127.0.0.1:0", config: Union[str, Path, None] = None,
) -> Iterator[str]:
    """Starts `tether server` on `listen` (default: a free loopback port), with the YAML file
    `config` when given; yields its `host:port`. On exit it is stopped with SIGTERM and must
    exit 0."""
    extra = ["--config", str(config)] if config is not None else []
    proc = subprocess.Popen(
        [TETHER, "server", "--listen", listen, "--data-dir", str(data), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env_without_redis(),
    )
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline()
    m = re.match(r"tether server listening on http://(127\.0\.0\.1:\d+)", line)
    if not m:
        proc.kill()
        raise AssertionError(f"unexpected first line {line!r}; stderr: {proc.stderr.read()}")
    try:
        yield m.group(1)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0
