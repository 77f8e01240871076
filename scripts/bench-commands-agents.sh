#!/usr/bin/env bash
# Vehicle commands end to end through real processes: one `tether server` (agent connector),
# AGENTS `tether agent`s with the diagnostics role, each serving VEHICLES/AGENTS buses, and one
# `tether can ecu` (data/ecu/demo.yaml: engine + transmission) per vehicle as a REMP dongle on
# its agent's bus. COMMANDS commands (ReadDTC, ReadDataByID 0xF190, TesterPresent, spread over
# both ECUs of every vehicle) are posted at once, so they are all in flight together; then each
# is polled until it ends. Prints: completed / failed / lost, wall time, and the server-side
# latency (completed_at - submitted_at) p50 / p99 / max.
#
#   scripts/bench-commands-agents.sh            # 1,000 commands, 100 vehicles, 10 agents
#   COMMANDS=200 VEHICLES=20 AGENTS=2 scripts/bench-commands-agents.sh
#
# Uses target/release/tether (built here) unless TETHER_BIN is set. About a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
COMMANDS=${COMMANDS:-1000}
VEHICLES=${VEHICLES:-100}
AGENTS=${AGENTS:-10}
if [ -z "${TETHER_BIN:-}" ]; then
    cargo build --release -p tether >/dev/null
    TETHER_BIN="${CARGO_TARGET_DIR:-target}/release/tether"
fi
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT

TETHER_BIN="$TETHER_BIN" WORK="$WORK" COMMANDS="$COMMANDS" VEHICLES="$VEHICLES" AGENTS="$AGENTS" \
python3 - <<'PYEOF'
import concurrent.futures as cf, json, os, socket, statistics, subprocess, time, urllib.request
from datetime import datetime

TETHER, WORK = os.environ["TETHER_BIN"], os.environ["WORK"]
COMMANDS, VEHICLES, AGENTS = (int(os.environ[k]) for k in ("COMMANDS", "VEHICLES", "AGENTS"))
PROFILE = os.path.abspath("data/ecu/demo.yaml")
procs = []

def spawn(args, log, **kw):
    p = subprocess.Popen(args, stderr=open(os.path.join(WORK, log), "w"), **kw)
    procs.append(p)
    return p

def call(method, base, path, token, body=None):
    req = urllib.request.Request(base + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")

def free_udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]; s.close(); return port

def ts(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()

try:
    data = os.path.join(WORK, "server")
    user = subprocess.run([TETHER, "server", "token", "create", "--user", "bench", "--data-dir", data],
                          capture_output=True, text=True, check=True, env={**os.environ, "REDIS_URL": ""}).stdout.strip()
    server = spawn([TETHER, "server", "--listen", "127.0.0.1:0", "--data-dir", data], "server.log",
                   stdout=subprocess.PIPE, text=True, env={k: v for k, v in os.environ.items() if k != "REDIS_URL"})
    base = server.stdout.readline().strip().removeprefix("tether server listening on ")
    ecus = [{"name": "engine", "request_id": 0x7E0, "response_id": 0x7E8},
            {"name": "transmission", "request_id": 0x7E1, "response_id": 0x7E9}]
    vehicles = []
    for a in range(AGENTS):
        agent = call("POST", base, "/api/v1/agents", user, {"name": f"bench agent {a}"})
        buses = []
        for v in range(a, VEHICLES, AGENTS):
            serial, port = f"BENCH-{v:04d}", free_udp()
            dongle = call("POST", base, "/api/v1/agent/dongles", agent["token"], {"serial": serial})
            veh = call("POST", base, "/api/v1/vehicles", user, {"name": f"car {v}", "dongle_id": dongle["id"], "ecus": ecus})
            buses.append(f"    - {{serial: {serial}, bus: 'udp://127.0.0.1:{port}'}}")
            vehicles.append((veh["id"], port, serial))
        cfg = os.path.join(WORK, f"agent-{a}.yaml")
        with open(cfg, "w") as f:
            f.write(f"server_url: {base}\ntoken: {agent['token']}\ndiagnostics:\n  buses:\n" + "\n".join(buses) + "\n")
        spawn([TETHER, "agent", "--config", cfg], f"agent-{a}.log")
    time.sleep(1.0)
    for vid, port, serial in vehicles:
        spawn([TETHER, "can", "ecu", "--profile", PROFILE, "--bus", f"udp://127.0.0.1:{port}", "--serial", f"E{serial}"],
              f"ecu-{serial}.log")
    deadline = time.time() + 60
    while time.time() < deadline:
        listed = call("GET", base, "/api/v1/vehicles?limit=1000", user)
        items = listed["vehicles"] if isinstance(listed, dict) and "vehicles" in listed else listed
        if sum(1 for v in items if v.get("online")) >= VEHICLES:
            break
        time.sleep(0.5)
    time.sleep(2.0)  # every ECU's REMP hello has reached its agent
    kinds = [("ReadDTC", {"ecu": "engine"}), ("ReadDataByID", {"ecu": "engine", "did": "0xF190"}),
             ("TesterPresent", {"ecu": "transmission"}), ("ReadDTC", {"ecu": "transmission"})]
    jobs = [(vehicles[i % VEHICLES][0], *kinds[(i // VEHICLES) % len(kinds)]) for i in range(COMMANDS)]
    t0 = time.time()
    with cf.ThreadPoolExecutor(64) as pool:
        ids = list(pool.map(lambda j: call("POST", base, "/api/v1/commands", user,
                                           {"vehicle_id": j[0], "command_name": j[1], "command_params": j[2]})["command_id"], jobs))
    posted = time.time() - t0
    pending, ended = set(ids), {}
    stop_at = time.time() + 120
    def check(cid):
        c = call("GET", base, f"/api/v1/commands/{cid}", user)
        return cid, c
    while pending and time.time() < stop_at:
        with cf.ThreadPoolExecutor(32) as pool:
            for cid, c in pool.map(check, list(pending)):
                if c["status"] in ("completed", "failed"):
                    ended[cid] = c
                    pending.discard(cid)
        if pending:
            time.sleep(0.2)
    wall = max((ts(c["completed_at"]) for c in ended.values()), default=t0) - t0
    done = [c for c in ended.values() if c["status"] == "completed"]
    failed = [c for c in ended.values() if c["status"] == "failed"]
    lat = sorted((ts(c["completed_at"]) - ts(c["submitted_at"])) * 1000 for c in done)
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")
    print(f"{COMMANDS} commands over {VEHICLES} vehicles, {AGENTS} agents: {len(done)} completed, "
          f"{len(failed)} failed, {len(pending)} lost")
    if failed:
        print("  failures:", sorted({c['error_message'] for c in failed})[:5])
    print(f"  posted in {posted:.2f} s; all ended {wall:.2f} s after the first POST ({len(ended) / max(wall, 1e-9):.0f} commands/s)")
    print(f"  latency submitted->completed: p50 {q(0.50):.1f} ms, p99 {q(0.99):.1f} ms, max {lat[-1] if lat else float('nan'):.1f} ms")
    if pending or failed:
        raise SystemExit(1)
finally:
    for p in reversed(procs):
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
PYEOF
