#!/usr/bin/env bash
# candump log reading, end to end: `tether can stats` versus python-can iterating
# `can.LogReader`, in one run on the same file (the SavvyCAN capture concatenated COPIES times,
# ~1 M frames by default). Prints both rates (frames/s, medians over RUNS runs) and the ratio.
# Figures go to docs/benchmarks.md ("CAN log parsing").
#
# Env: TETHER_BIN (a release `tether` to use instead of building one), COPIES (default 80 → 1,037,920 frames), RUNS (default 3), PYTHON (default .venv/bin/python),
#      CARGO_TARGET_DIR (default $HOME/.cache/tether-target).
# Takes about half a minute, most of it python-can (the machine is shared: keep it short).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
copies="${COPIES:-80}"
runs="${RUNS:-3}"
python="${PYTHON:-$root/.venv/bin/python}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tether-target}"
capture="$root/../shared/data/can/savvycan-candump.log"
[ -f "$capture" ] || { echo "missing $capture" >&2; exit 1; }
[ -x "$python" ] || { echo "missing $python (python-can venv)" >&2; exit 1; }

if [ -n "${TETHER_BIN:-}" ]; then
    tether="$TETHER_BIN" # a release binary built elsewhere
else
    cargo build --release -q -p tether --bin tether
    tether="$CARGO_TARGET_DIR/release/tether"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log="$work/capture.log"
for _ in $(seq "$copies"); do cat "$capture"; done >"$log"
frames=$(wc -l <"$log")
echo "file: $frames frames, $(du -h "$log" | cut -f1) ($copies × savvycan-candump.log)"

. scripts/lib/bench.sh # median
now() { date +%s%N; }

tether_ns=()
python_ns=()
for run in $(seq "$runs"); do
    t0=$(now)
    counted=$("$tether" can stats "$log" --json | "$python" -c 'import json,sys; print(json.load(sys.stdin)["frames"])')
    t1=$(now)
    [ "$counted" = "$frames" ] || { echo "tether counted $counted frames, expected $frames" >&2; exit 1; }
    # The JSON pipe above is timed too; it is a few milliseconds. Time tether alone:
    t0=$(now); "$tether" can stats "$log" >/dev/null; t1=$(now)
    tether_ns+=($((t1 - t0)))

    t0=$(now)
    counted=$("$python" -c 'import sys, can; print(sum(1 for _ in can.LogReader(sys.argv[1])))' "$log")
    t1=$(now)
    [ "$counted" = "$frames" ] || { echo "python-can counted $counted frames, expected $frames" >&2; exit 1; }
    python_ns+=($((t1 - t0)))
    echo "run $run: tether $(( tether_ns[-1] / 1000000 )) ms, python-can $(( python_ns[-1] / 1000000 )) ms"
done

t_med=$(printf '%s\n' "${tether_ns[@]}" | median)
p_med=$(printf '%s\n' "${python_ns[@]}" | median)
awk -v f="$frames" -v t="$t_med" -v p="$p_med" 'BEGIN {
    tr = f / (t / 1e9); pr = f / (p / 1e9);
    printf "tether can stats:        %12.0f frames/s (median %.3f s)\n", tr, t / 1e9;
    printf "python-can LogReader:    %12.0f frames/s (median %.3f s)\n", pr, p / 1e9;
    printf "ratio:                   %12.1fx\n", tr / pr;
}'
