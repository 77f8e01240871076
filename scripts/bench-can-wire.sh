#!/usr/bin/env bash
# Wire codec speed, in one run on the same capture (shared/data/can/savvycan-candump.log):
# our REMP / cannelloni / multicast codecs (criterion, frames/s) beside python-can 4.6.1's own
# udp_multicast pack_message / unpack_message (the peer). Short: about 30 s in all.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${TETHER_PYTHON:-.venv/bin/python}"
cargo bench -p can-io --bench wire 2>&1 | grep -E "^wire/|thrpt:" | paste - - | \
    sed -E 's/ +/ /g; s/^(wire\/[a-z_]+).*thrpt: \[[^ ]+ [^ ]+ ([^ ]+ [^ ]+) .*/\1 median \2/'
"$PY" - <<'PYEOF'
import statistics, time
import can
from can.interfaces.udp_multicast.utils import pack_message, unpack_message
msgs = list(can.LogReader("../shared/data/can/savvycan-candump.log"))
def rate(fn):
    runs = []
    for _ in range(5):
        t = time.perf_counter(); fn(); runs.append(len(msgs) / (time.perf_counter() - t))
    return statistics.median(runs)
packed = [pack_message(m) for m in msgs]
print(f"python-can multicast pack_message   median {rate(lambda: [pack_message(m) for m in msgs])/1e3:.1f} Kelem/s")
print(f"python-can multicast unpack_message median {rate(lambda: [unpack_message(b) for b in packed])/1e3:.1f} Kelem/s")
PYEOF
