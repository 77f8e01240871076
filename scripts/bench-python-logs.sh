#!/usr/bin/env bash
# Reading a candump log from Python, whole call to usable columns: `tether.read_log` (a
# FrameTable of NumPy columns built in Rust) against python-can's `can.LogReader` (a list of
# `can.Message`), and the older `tether.parse_log` (a list of `tether.Frame`), side by side.
#
# Files: /work/shared/data/can/savvycan-candump.log (13k frames) and the Nissan capture
# data/captures/nissan-leaf-isotp.log repeated to about 150k frames. Each reader runs RUNS times
# per file, interleaved; the medians and the ratio python-can / tether are printed.
#
# Builds the module with `maturin develop --release` into .venv (speed needs the release build;
# the tests pass with either). Environment: RUNS (default 7), CARGO_TARGET_DIR.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv="$root/.venv"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tether-target}
RUNS=${RUNS:-7}

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check -r tests/python/requirements.txt
VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" "$venv/bin/maturin" develop --quiet --release --locked \
    --manifest-path bindings/Cargo.toml

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
big="$work/nissan-x27.log"
for _ in $(seq 27); do cat data/captures/nissan-leaf-isotp.log; done > "$big"

RUNS="$RUNS" "$venv/bin/python" - /work/shared/data/can/savvycan-candump.log "$big" <<'PY'
import os
import statistics
import sys
import time

import can

import tether

runs = int(os.environ["RUNS"])


def python_can(path):
    return [m for m in can.LogReader(path)]


def read_log(path):
    t = tether.read_log(path)
    # Touch every column a user would use, the 2-D payload included.
    return (t.ts_ns, t.id, t.extended, t.len, t.data, t.channel_codes, len(t))


def parse_log(path):
    with open(path, "rb") as f:
        return tether.parse_log(f.read()).frames


def timed(fn, path):
    t0 = time.perf_counter()
    out = fn(path)
    return time.perf_counter() - t0, out


print(f"{'file':<28} {'frames':>7} {'python-can':>11} {'parse_log':>10} {'read_log':>9} {'ratio':>7}")
for path in sys.argv[1:]:
    frames = len(python_can(path))
    assert frames == len(tether.read_log(path)), "python-can and tether read different frame counts"
    times = {"python-can": [], "parse_log": [], "read_log": []}
    for _ in range(runs):
        times["python-can"].append(timed(python_can, path)[0])
        times["parse_log"].append(timed(parse_log, path)[0])
        times["read_log"].append(timed(read_log, path)[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"{os.path.basename(path):<28} {frames:>7} {med['python-can'] * 1e3:>9.1f}ms "
        f"{med['parse_log'] * 1e3:>8.1f}ms {med['read_log'] * 1e3:>7.2f}ms "
        f"{med['python-can'] / med['read_log']:>6.1f}x"
    )
print(f"medians of {runs} interleaved runs; ratio = python-can / read_log")
PY
