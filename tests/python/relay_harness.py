"""A whole relay on loopback for the browser tests and the web-page bench: a real `tether server`
(optionally with a configuration file), a user, two agents with the dongle role and two
`tether can dongle` simulated dongles replaying the shipped capture in a loop, paired in an
activated group, all set up through the REST API as `tether demo` does.

Agent B can be stopped and started again (`cut_b` / `restore_b`) to take side B offline.
Needs TETHER_BIN.
"""

import contextlib
import os
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

from loopback import free_port, stop
from tether_server import TETHER, api, create_token, env_without_redis

ROOT = Path(__file__).resolve().parents[2]
CAPTURE = ROOT / "data" / "captures" / "nissan-leaf-isotp.log"


class Relay:
    def __init__(self, tmp: Path, config: str = "", speed: str = "4"):
        self.tmp = tmp
        self.data = tmp / "server"
        self.speed = speed
        self.config = tmp / "server.yaml"
        self.config.write_text(config or "{}\n")
        self.token = create_token(self.data, "webui")
        self.procs: dict[str, subprocess.Popen] = {}
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"

    # --- processes --------------------------------------------------------------------------
    def start_server(self) -> None:
        proc = subprocess.Popen(
            [TETHER, "server", "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(self.data),
             "--config", str(self.config)],
            stdout=subprocess.PIPE, stderr=open(self.tmp / "server.log", "a"), text=True,
            env=env_without_redis(),
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not re.match(r"tether server listening on http://127\.0\.0\.1:\d+", line):
            proc.kill()
            raise AssertionError(f"server did not start: {line!r}; see {self.tmp / 'server.log'}")
        self.procs["server"] = proc

    def stop_server(self) -> None:
        stop(self.procs.pop("server"))

    def start_side(self, side: str) -> None:
        agent_token, serial, port = self.sides[side]
        cfg = self.tmp / f"agent-{side}.yaml"
        cfg.write_text(
            f'server_url: "{self.base}"\ntoken: "${{TETHER_AGENT_TOKEN}}"\n'
            f'data_dir: "{self.tmp / ("agent-" + side)}"\n'
            f'dongle:\n  listen: "127.0.0.1:{port}"\n  protocol: remp\n')
        env = env_without_redis()
        env["TETHER_AGENT_TOKEN"] = agent_token
        self.procs[f"agent-{side}"] = subprocess.Popen(
            [TETHER, "agent", "--config", str(cfg)], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=open(self.tmp / f"agent-{side}.log", "a"), env=env)
        if f"dongle-{side}" not in self.procs:
            self.procs[f"dongle-{side}"] = subprocess.Popen(
                [TETHER, "can", "dongle", "--serial", serial, "--agent", f"127.0.0.1:{port}",
                 "--replay", str(CAPTURE), "--speed", self.speed, "--loop"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=open(self.tmp / f"dongle-{side}.log", "a"), env=env_without_redis())

    def cut_b(self) -> None:
        """Stops agent B: side B goes offline, frames from A pile up as a backlog."""
        stop(self.procs.pop("agent-b"))

    def restore_b(self) -> None:
        self.start_side("b")

    # --- REST --------------------------------------------------------------------------------
    def api(self, method: str, path: str, body: Optional[dict] = None, token: Optional[str] = None):
        return api(self.base, token or self.token, method, f"/api/v1{path}", body)

    def setup(self) -> None:
        self.sides = {}
        dongles = []
        for side, serial in (("a", "WEB-A"), ("b", "WEB-B")):
            agent = self.api("POST", "/agents", {"name": f"web agent {side}"})
            dongle = self.api("POST", "/agent/dongles", {"serial": serial}, token=agent["token"])
            dongles.append(dongle["id"])
            self.sides[side] = (agent["token"], serial, free_port(socket.SOCK_DGRAM))
        self.dongle_a, self.dongle_b = dongles
        group = self.api("POST", "/groups", {"name": "web pair", "dongle_a": dongles[0], "dongle_b": dongles[1]})
        self.group = group["id"]
        self.api("POST", f"/groups/{self.group}/activate")

    def wait_mode(self, mode: str, patience: float = 60) -> dict:
        deadline = time.monotonic() + patience
        state = {}
        while time.monotonic() < deadline:
            state = self.api("GET", f"/groups/{self.group}")
            if state["mode"] == mode:
                return state
            time.sleep(0.2)
        raise AssertionError(f"group not {mode} after {patience} s: {state}")

    def close(self) -> None:
        for name in ["dongle-a", "dongle-b", "agent-a", "agent-b", "server"]:
            if name in self.procs:
                stop(self.procs.pop(name))


@contextlib.contextmanager
def running_relay(tmp: Path, config: str = "", speed: str = "4"):
    relay = Relay(tmp, config, speed)
    try:
        relay.start_server()
        relay.setup()
        relay.start_side("a")
        relay.start_side("b")
        relay.wait_mode("active")
        yield relay
    finally:
        relay.close()


def chromium(width: int = 1280, height: int = 800):
    """Headless Debian chromium driven by chromium-driver through selenium."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--disable-extensions"):
        options.add_argument(arg)
    service = Service(executable_path=os.environ.get("CHROMEDRIVER_BIN", "/usr/bin/chromedriver"))
    return webdriver.Chrome(options=options, service=service)
