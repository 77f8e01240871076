#!/usr/bin/env bash
# ISO-TP segmentation + reassembly throughput, side by side in one run: our endpoints (criterion,
# can-io/benches/isotp.rs) and python can-isotp 2.0.7's TransportLayerLogic, each driving a
# sender and a receiver against each other in memory (no bus, no threads) over the same 1,000
# messages (sizes 2, 6, 7, 20, 31, 53, 100, 255, 1000, 4095; classic CAN, padding 0xCC, BS 0,
# STmin 0). Prints messages/s and MB/s for both and the ratio. About a minute.
#
# The Python side runs in .venv-bench (created here, gitignored), or in $TETHER_PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${TETHER_PYTHON:-}" ]; then
    if [ ! -x .venv-bench/bin/python ]; then
        python3 -m venv .venv-bench
        .venv-bench/bin/pip install --quiet "can-isotp==2.0.7"
    fi
    TETHER_PYTHON=.venv-bench/bin/python
fi

RUST_OUT=$(cargo bench -p can-io --bench isotp 2>&1 | grep -E "^isotp/|thrpt: +\[[0-9]" | paste - - )
echo "$RUST_OUT" | sed -E 's/ +/ /g; s/^(isotp\/[a-z_]+).*thrpt: \[[^ ]+ [^ ]+ ([^ ]+ [^ ]+) .*/rust \1 median \2/'

RUST_OUT="$RUST_OUT" "$TETHER_PYTHON" - <<'PYEOF'
import collections, os, re, statistics, time
import isotp

SIZES = [2, 6, 7, 20, 31, 53, 100, 255, 1000, 4095]
MSGS = [bytes(((i * 7 + k) & 0xFF) for i in range(SIZES[k % len(SIZES)])) for k in range(1000)]
TOTAL = sum(len(m) for m in MSGS)

def layer(txq, rxq, txid, rxid):
    addr = isotp.Address(isotp.AddressingMode.Normal_11bits, txid=txid, rxid=rxid)
    params = {"stmin": 0, "blocksize": 0, "tx_padding": 0xCC, "tx_data_length": 8,
              "max_frame_size": 65536, "wftmax": 0}
    return isotp.TransportLayerLogic(rxfn=lambda timeout: rxq.popleft() if rxq else None,
                                     txfn=txq.append, address=addr, params=params)

def run():
    ab, ba = collections.deque(), collections.deque()
    a, b = layer(ab, ba, 0x7E0, 0x7E8), layer(ba, ab, 0x7E8, 0x7E0)
    got = 0
    t = time.perf_counter()
    for m in MSGS:
        a.send(m)
        while True:
            a.process()
            b.process()
            if b.available():
                r = b.recv()
                assert r == m
                got += len(r)
                break
    dt = time.perf_counter() - t
    assert got == TOTAL
    return dt

runs = [run() for _ in range(3)]
dt = statistics.median(runs)
py_msgs, py_mb = len(MSGS) / dt, TOTAL / dt / 1e6
print(f"python can-isotp segment+reassemble median {py_msgs/1e3:.2f} Kmsg/s  {py_mb:.3f} MB/s  (runs {', '.join(f'{r:.2f}s' for r in runs)})")

UNITS = {"elem/s": 1, "Kelem/s": 1e3, "Melem/s": 1e6, "Gelem/s": 1e9,
         "B/s": 1, "KiB/s": 1024, "MiB/s": 1024**2, "GiB/s": 1024**3}
rust = {}
for line in os.environ["RUST_OUT"].splitlines():
    m = re.search(r"^(isotp/\w+).*thrpt:\s*\[\S+ \S+ (\S+) (\S+) ", line)
    if m:
        rust[m.group(1)] = float(m.group(2)) * UNITS[m.group(3)]
rs_msgs = rust["isotp/segment_reassemble_messages"]
rs_mb = rs_msgs * TOTAL / len(MSGS) / 1e6
print(f"rust   tether     segment+reassemble median {rs_msgs/1e3:.2f} Kmsg/s  {rs_mb:.3f} MB/s")
print(f"ratio rust/python: {rs_msgs/py_msgs:.1f}x messages/s, {rs_mb/py_mb:.1f}x MB/s (goal >= 50x)")
PYEOF
