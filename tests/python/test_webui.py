"""The web page of `tether server` in a real browser (Debian's chromium through chromium-driver
and selenium) against a real server, two agents and two simulated dongles relaying the shipped
capture: sign-in from the fragment link, live frames, pause and filter, activation, a cut side
(degraded and backlog), a resumed and a reset connection, commands when the server has them,
and a page on a second origin reading the API through CORS.

Screenshots of each view go to $TETHER_ARTIFACTS/webui (default: $TMPDIR/tether-artifacts/webui);
the path is printed. Needs TETHER_BIN.
"""

import http.server
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
from loopback import free_port, stop
from loopback import until as poll_until
from relay_harness import chromium, running_relay
from tether_server import TETHER, TIMEOUT, env_without_redis

# scripts/test.sh installs the browser and sets TETHER_REQUIRE_BROWSER: there a missing browser
# fails the suite instead of skipping it.
pytestmark = pytest.mark.skipif(
    not os.environ.get("TETHER_REQUIRE_BROWSER")
    and not (shutil.which(os.environ.get("CHROMIUM_BIN", "chromium")) and shutil.which(os.environ.get("CHROMEDRIVER_BIN", "chromedriver"))),
    reason="chromium and chromium-driver are not installed (scripts/test.sh installs them)",
)

ARTIFACTS = Path(os.environ.get("TETHER_ARTIFACTS", Path(tempfile.gettempdir()) / "tether-artifacts")) / "webui"
SECOND_PORT = free_port()
SECOND_ORIGIN = f"http://127.0.0.1:{SECOND_PORT}"
WAIT = 20


def shot(driver, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")


def until(what: str, fn, patience: float = WAIT):
    # Elements come and go while a view loads: an exception is a "not yet".
    return poll_until(what, fn, patience, tolerate=(Exception,))


def text(driver, css: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css).text


def rows(driver) -> int:
    return int(text(driver, "#row-count") or 0)


COMMANDS_CONFIG = "commands:\n  connector: mock\n  mock_delay_ms: [200, 400]\n"


def server_accepts(tmp: Path, config: str) -> bool:
    """Whether this server build knows a configuration section (the commands service is optional)."""
    path = tmp / "probe.yaml"
    path.write_text(config)
    probe = subprocess.run([TETHER, "server", "--config", str(path), "--check-config"],
                           capture_output=True, timeout=TIMEOUT, env=env_without_redis())
    return probe.returncode == 0


@pytest.fixture(scope="module")
def relay():
    tmp = Path(tempfile.mkdtemp(prefix="tether-webui-"))
    config = f'cors:\n  allowed_origins: ["{SECOND_ORIGIN}"]\n'
    if server_accepts(tmp, COMMANDS_CONFIG):
        config += COMMANDS_CONFIG
    with running_relay(tmp, config) as relay:
        yield relay
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def browser(relay):
    driver = chromium()
    driver.set_page_load_timeout(WAIT)
    print(f"screenshots in {ARTIFACTS}")
    try:
        yield driver
    finally:
        driver.quit()


def open_route(driver, relay, route: str) -> None:
    driver.get(f"{relay.base}/#{route}")
    until("the view", lambda: text(driver, "#view h1"))


def test_sign_in_from_the_fragment_link(relay, browser):
    d = browser
    d.get(f"{relay.base}/#token={relay.token}")
    until("the groups view", lambda: text(d, "#groups") and "web pair" in text(d, "#groups"))
    assert relay.token not in d.current_url, "the token is removed from the address bar"
    assert d.current_url.endswith("#/groups")
    assert d.execute_script("return sessionStorage.getItem('tether.token')") == relay.token
    assert "WEB-A" in text(d, "#dongles") and "WEB-B" in text(d, "#dongles")
    shot(d, "groups")
    # A bad token is refused with a message, and nothing is kept.
    d.execute_script("sessionStorage.clear()")
    d.refresh()
    from selenium.webdriver.common.by import By

    field = until("the sign-in form", lambda: d.find_element(By.ID, "token"))
    field.send_keys("tu_" + "0" * 64)
    field.submit()
    until("the refusal", lambda: "not valid" in text(d, "#view"))
    assert d.execute_script("return sessionStorage.getItem('tether.token')") is None
    shot(d, "sign-in")
    field = d.find_element(By.ID, "token")
    field.clear()
    field.send_keys(relay.token)
    field.submit()
    until("signed in", lambda: "web pair" in text(d, "#view"))


def test_group_view_frames_pause_and_filter(relay, browser):
    from selenium.webdriver.common.by import By

    d = browser
    open_route(d, relay, f"/groups/{relay.group}")
    until("frames", lambda: rows(d) > 20)
    first = rows(d)
    until("more frames", lambda: rows(d) > first)
    until("a frames/s figure", lambda: int(text(d, "#rate")) > 0)
    assert text(d, "#conn") == "live"
    shot(d, "group-live")

    pause = d.find_element(By.ID, "pause")
    pause.click()
    assert pause.get_attribute("aria-pressed") == "true"
    held = rows(d)
    time.sleep(1.5)
    assert rows(d) == held, "a paused table does not grow"
    assert "waiting" in text(d, "#paused-info") or text(d, "#paused-info") == "paused"
    pause.click()
    until("frames after resuming", lambda: rows(d) > held)

    flt = d.find_element(By.ID, "filter")
    flt.send_keys("7BB")
    # The table re-renders on the next animation frame: wait for the rendered rows, not the count.
    def shown_ids():
        return {cell.text for cell in d.find_elements(By.CSS_SELECTOR, ".vt-rows .vt-row:not([hidden]) span:nth-child(5)")}

    until("only 0x7BB rows shown", lambda: rows(d) > 0 and shown_ids() == {"0x7BB"} and shown_ids())
    shot(d, "group-filtered")
    flt.send_keys(" zz")
    until("the filter error", lambda: "hex" in text(d, "#filter-error"))
    flt.clear()
    flt.send_keys(" ")
    until("all rows again", lambda: text(d, "#filter-error") == "" and rows(d) > held)

    # Keyboard: the table scrolls with the arrow keys.
    table = d.find_element(By.CSS_SELECTOR, ".vt")
    table.click()
    from selenium.webdriver.common.keys import Keys

    table.send_keys(Keys.PAGE_DOWN)
    until("the table scrolled", lambda: d.execute_script("return document.querySelector('.vt').scrollTop") > 0)


def test_dongle_view(relay, browser):
    d = browser
    open_route(d, relay, f"/dongles/{relay.dongle_a}")
    assert "WEB-A" in text(d, "h1")
    until("frames", lambda: rows(d) > 5)
    assert "online" in text(d, "#presence")
    shot(d, "dongle-live")


def test_deactivate_and_activate_change_the_mode(relay, browser):
    from selenium.webdriver.common.by import By

    d = browser
    open_route(d, relay, f"/groups/{relay.group}")
    until("active", lambda: d.find_element(By.CSS_SELECTOR, "#mode .badge").get_attribute("data-mode") == "active")
    d.find_element(By.ID, "toggle-mode").click()
    until("inactive", lambda: d.find_element(By.CSS_SELECTOR, "#mode .badge").get_attribute("data-mode") == "inactive")
    assert relay.api("GET", f"/groups/{relay.group}")["mode"] == "inactive"
    d.find_element(By.ID, "toggle-mode").click()
    until("active again", lambda: d.find_element(By.CSS_SELECTOR, "#mode .badge").get_attribute("data-mode") == "active", 60)

    # The groups list follows changes made elsewhere, live from `group_state`.
    open_route(d, relay, "/groups")
    cell = f'tr[data-group="{relay.group}"] .mode .badge'
    until("live list", lambda: "live" in text(d, "#groups-live"))
    relay.api("POST", f"/groups/{relay.group}/deactivate")
    until("inactive in the list", lambda: d.find_element(By.CSS_SELECTOR, cell).get_attribute("data-mode") == "inactive")
    shot(d, "groups-inactive")
    relay.api("POST", f"/groups/{relay.group}/activate")
    until("active in the list", lambda: d.find_element(By.CSS_SELECTOR, cell).get_attribute("data-mode") == "active", 60)


def test_a_cut_side_shows_degraded_and_the_backlog(relay, browser):
    from selenium.webdriver.common.by import By

    d = browser
    open_route(d, relay, f"/groups/{relay.group}")
    until("active", lambda: d.find_element(By.CSS_SELECTOR, "#mode .badge").get_attribute("data-mode") == "active", 60)
    relay.cut_b()
    try:
        until("degraded", lambda: d.find_element(By.CSS_SELECTOR, "#mode .badge").get_attribute("data-mode") == "degraded")
        until("side b offline", lambda: text(d, "#offline-side") == "b")
        until("a backlog towards b", lambda: int(text(d, "#backlog").split("A→B ")[1].split(" ")[0]) > 0)
        until("dongle B offline", lambda: d.find_element(By.CSS_SELECTOR, f'#presence li[data-key="{relay.dongle_b}"] .badge').text == "offline")
        shot(d, "group-degraded")
    finally:
        relay.restore_b()
    until("active after the side returns", lambda: d.find_element(By.CSS_SELECTOR, "#mode .badge").get_attribute("data-mode") == "active", 60)
    until("backlog drained", lambda: text(d, "#backlog") == "A→B 0 · B→A 0", 60)


def test_reconnect_resumes_and_a_server_restart_resets(relay, browser):
    from selenium.webdriver.common.by import By

    d = browser
    open_route(d, relay, f"/groups/{relay.group}")
    until("live", lambda: text(d, "#conn") == "live" and rows(d) > 5)
    d.find_element(By.ID, "reconnect").click()
    until("resumed", lambda: text(d, "#conn") == "resumed")
    assert "after" in text(d, "#conn-detail")
    before = rows(d)
    until("frames after resuming", lambda: rows(d) > before)
    shot(d, "group-resumed")

    # A new server process cannot resume the old one's IDs (in-memory history): the page
    # reconnects by itself and shows the reset.
    relay.stop_server()
    until("reconnecting", lambda: text(d, "#conn") in ("reconnecting", "disconnected"))
    shot(d, "group-reconnecting")
    relay.start_server()
    until("reset shown", lambda: text(d, "#conn") == "reset", 40)
    assert "earlier_process" in text(d, "#conn-detail")
    assert "stream reset" in d.find_element(By.ID, "notices").get_attribute("textContent")
    relay.wait_mode("active")
    after = rows(d)
    until("frames after the restart", lambda: rows(d) > after, 40)
    shot(d, "group-reset")


def test_phone_width_is_readable(relay, browser):
    d = browser
    d.set_window_size(390, 844)
    try:
        open_route(d, relay, f"/groups/{relay.group}")
        until("frames", lambda: rows(d) > 0)
        overflow = d.execute_script("return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 1, f"the page scrolls sideways by {overflow}px on a phone"
        shot(d, "group-phone")
    finally:
        d.set_window_size(1280, 800)


def commands_available(relay) -> bool:
    r = httpx.get(f"{relay.base}/api/v1/vehicles", headers={"Authorization": f"Bearer {relay.token}"}, timeout=TIMEOUT)
    return r.status_code == 200


def test_vehicle_read_dtc(relay, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    d = browser
    assert commands_available(relay), "the server answers /api/v1/vehicles"
    vehicle = relay.api("POST", "/vehicles", {"name": "web car", "dongle_id": relay.dongle_a})
    open_route(d, relay, "/vehicles")
    until("the vehicle", lambda: "web car" in text(d, "#vehicles"))
    shot(d, "vehicles")
    open_route(d, relay, f"/vehicles/{vehicle['id']}")
    Select(d.find_element(By.ID, "command-name")).select_by_value("ReadDTC")
    d.find_element(By.ID, "run-command").click()
    until("a final response", lambda: d.find_element(By.ID, "command-status").get_attribute("data-state") in ("completed", "closed"), 60)
    shot(d, "vehicle-command")
    assert d.find_element(By.ID, "command-status").get_attribute("data-state") == "completed", text(d, "#command-status")
    codes = {cell.text for cell in d.find_elements(By.CSS_SELECTOR, "#responses .dtc")}
    assert "P0420" in codes, codes
    until("the history", lambda: d.find_elements(By.CSS_SELECTOR, "#history tr[data-command]"))


BACKLOG = 1000


def start_vehicle(tmp: Path, name: str, **env) -> tuple:
    """A `tether collector` vehicle on its own store, with its dashboard API on a free port."""
    port = free_port()
    full = {"PATH": os.environ.get("PATH", ""), "ROLE": "vehicle", "DB_PATH": str(tmp / "vehicle.db"),
            "LISTEN": f"127.0.0.1:{port}", "DB_SYNC": "normal", **env}
    proc = subprocess.Popen([TETHER, "collector"], env=full, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=open(tmp / f"{name}.log", "a"))
    return proc, f"http://127.0.0.1:{port}"


def vehicle_status(base: str) -> dict:
    return httpx.get(f"{base}/api/v1/telemetry/status", timeout=5).json()


@pytest.fixture(scope="module")
def vehicle(relay):
    """A real vehicle with a backlog: first offline, it stores BACKLOG frames from a CAN bus
    (python-can through our socketcand server); then, restarted with the server as its remote
    and an agent's token, it reports that queue on connect and drains it."""
    import can

    tmp = Path(tempfile.mkdtemp(prefix="tether-webui-vehicle-"))
    agent = relay.api("POST", "/agents", {"name": "telemetry vehicle"})
    bus_server = subprocess.Popen([TETHER, "can", "serve-socketcand", "--listen", "127.0.0.1:0", "--bus", "vcan0"],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    procs = [bus_server]
    try:
        bus_port = int(bus_server.stdout.readline().split(":")[-1])
        offline, base = start_vehicle(tmp, "vehicle-offline", ENABLE_UPLINK_MANAGER="false",
                                      CAN_BUS=f"socketcand://127.0.0.1:{bus_port}/vcan0")
        procs.append(offline)
        bus = can.Bus(interface="socketcand", host="127.0.0.1", port=bus_port, channel="vcan0")
        try:
            # Frames count once the vehicle is on the bus: send until its queue holds BACKLOG.
            def filled():
                queue = vehicle_status(base)["queue_size"]
                for n in range(min(100, BACKLOG - queue)):
                    bus.send(can.Message(arbitration_id=0x321, is_extended_id=False, data=bytes([n % 256] * 8)))
                return queue >= BACKLOG
            until("the offline vehicle's queue", filled, 60)
        finally:
            bus.shutdown()

        def settled():
            first = vehicle_status(base)["queue_size"]
            time.sleep(0.5)
            return first == vehicle_status(base)["queue_size"] and first
        queued = until("the last frames stored", settled)
        stop(offline)
        assert offline.returncode == 0
        online, base = start_vehicle(tmp, "vehicle", ENABLE_CAN_LISTENER="false", API_KEY=agent["token"],
                                     REMOTE_ENDPOINT_URL=relay.base.replace("http", "ws", 1) + "/ws/telemetry/upload")
        procs.append(online)
        until("the vehicle drains its queue", lambda: vehicle_status(base)["queue_size"] == 0, 60)
        yield {"id": agent["id"], "queued": queued, "base": base}
    finally:
        for proc in reversed(procs):
            stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def test_telemetry_view(relay, browser, vehicle):
    from selenium.webdriver.common.by import By

    d = browser
    open_route(d, relay, "/telemetry")
    until("a status line", lambda: d.find_element("id", "uplink-state").get_attribute("data-state"))
    row = f'#telemetry-vehicles tr[data-vehicle="{vehicle["id"]}"]'
    until("the vehicle's row with its queue", lambda: d.find_element(By.CSS_SELECTOR, f"{row} td[data-queue]").get_attribute("data-queue"))
    assert d.find_element(By.CSS_SELECTOR, row).get_attribute("data-connected") == "true"
    shot(d, "telemetry")

    open_route(d, relay, f"/telemetry/{vehicle['id']}")
    until("the uplink state", lambda: d.find_element(By.ID, "uplink-state").get_attribute("data-state") == "connected")
    # The vehicle's reports: the backlog on connect, then (a second later) the drained queue.
    until("the vehicle's report of its drained queue", lambda: d.find_element(By.ID, "uplink-report").get_attribute("data-queue") == "0")
    assert d.find_element(By.ID, "uplink-report").get_attribute("data-state") == "connected"
    assert "queue 0 records" in text(d, "#uplink-report")
    # The chart plots the statuses the server kept: the backlog reported on connect, then the
    # drained queue.
    chart = d.find_element(By.ID, "telemetry-chart")
    until("the backlog in the chart", lambda: chart.get_attribute("data-queue-max") == str(vehicle["queued"]))
    assert int(chart.get_attribute("data-points")) >= 2
    assert chart.get_attribute("data-queue-last") == "0"
    # Something is drawn in the series' colours (blue queue, red throughput), not only the frame.
    drawn = d.execute_script(
        "const c = arguments[0]; const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 0; i < px.length; i += 4) {"
        "  const [r, g, b] = [px[i], px[i + 1], px[i + 2]];"
        "  if ((b > 100 && r < 80) || (r > 150 && g < 100 && b < 100)) n++; }"
        "return n;", chart)
    assert drawn > 20, f"no series drawn ({drawn} coloured pixels)"
    shot(d, "telemetry-vehicle")


SECOND_PAGE = """<!doctype html><meta charset="utf-8"><title>dashboard</title>
<pre id="groups">…</pre><pre id="events">…</pre><pre id="preflight">…</pre>
<script>
const p = new URLSearchParams(location.hash.slice(1));
const base = p.get("base"), token = p.get("token"), group = p.get("group");
fetch(base + "/api/v1/groups", {headers: {Authorization: "Bearer " + token}})
  .then(r => r.json()).then(b => { document.getElementById("groups").textContent = b.groups.map(g => g.name).join(","); })
  .catch(e => { document.getElementById("groups").textContent = "error: " + e; });
fetch(base + "/api/v1/groups/" + group + "/activate", {method: "POST", headers: {Authorization: "Bearer " + token, "Content-Type": "application/json"}, body: "{}"})
  .then(r => r.json()).then(b => { document.getElementById("preflight").textContent = b.mode; })
  .catch(e => { document.getElementById("preflight").textContent = "error: " + e; });
let n = 0;
const es = new EventSource(base + "/api/v1/streams/groups/" + group + "/console?access_token=" + token);
es.addEventListener("can_frame", () => { n++; document.getElementById("events").textContent = "frames " + n; });
es.onerror = () => { if (n === 0) document.getElementById("events").textContent = "error"; };
</script>"""


@pytest.fixture(scope="module")
def second_origin():
    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            body = SECOND_PAGE.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", SECOND_PORT), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield
    server.shutdown()


def test_a_page_on_another_origin_reads_groups_and_follows_a_console(relay, browser, second_origin):
    d = browser
    fragment = f"#base={relay.base}&token={relay.token}&group={relay.group}"
    d.get(f"{SECOND_ORIGIN}/{fragment}")
    until("groups read cross-origin", lambda: text(d, "#groups") == "web pair")
    until("a cross-origin POST after its preflight", lambda: text(d, "#preflight") == "active")
    until("console frames cross-origin", lambda: text(d, "#events").startswith("frames ") and int(text(d, "#events").split()[1]) > 3)
    shot(d, "second-origin")
    # `localhost` is another origin than `127.0.0.1`, and it is not on the allow-list.
    d.get(f"http://localhost:{SECOND_PORT}/{fragment}")
    until("refused", lambda: text(d, "#groups").startswith("error"))
    until("console refused", lambda: text(d, "#events") == "error")
    assert text(d, "#preflight").startswith("error")
