#!/usr/bin/env bash
# Stream log throughput (relay-core): memory, SQLite and Redis backends at batch sizes 1, 64 and
# 1024, side by side with the raw ceiling of the same engine (plain batched rusqlite inserts;
# redis-benchmark pipelined XADD). Prints a Markdown table; figures go to docs/benchmarks.md.
#
# Needs Redis at REDIS_URL (default redis://127.0.0.1:6379) and redis-benchmark on PATH.
# Takes a few tens of seconds (the machine is shared: keep it short).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-benchmark >/dev/null || { echo "redis-benchmark not found" >&2; exit 1; }
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
exec cargo bench -p relay-core --bench stream_log "$@"
