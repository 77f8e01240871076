#!/usr/bin/env bash
# The web page under load: an open group view in headless chromium fed ~2,000 can_frame events
# per second (two simulated dongles replaying the shipped capture at SPEED, console sampling
# raised above the rate so every frame reaches the page) for SECONDS. Reports the main thread's
# busy share (Chrome's TaskDuration per wall second), long tasks (Performance API), JS heap and
# DOM size over time (memory must stay flat), and the frame rate the page saw.
# See tests/python/bench_webui.py. Figures in docs/benchmarks.md.
#
# Usage: scripts/bench-webui.sh [SECONDS=300] [SPEED=12]
#        NO_BUILD=1 uses the tether binary already in $CARGO_TARGET_DIR/debug.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_=${1:-300}
SPEED=${2:-12}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tether-target}
if [ -z "${NO_BUILD:-}" ]; then
  nice cargo build -q -p tether --bin tether
fi
export TETHER_BIN=$CARGO_TARGET_DIR/debug/tether
PY=${TETHER_PYTHON:-.venv/bin/python}
cd tests/python
exec "../../$PY" bench_webui.py "$SECONDS_" "$SPEED"
