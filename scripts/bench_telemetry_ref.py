"""Python reference of the telemetry uplink, after the original collector's design, for
scripts/bench-telemetry.sh: the vehicle keeps records in sqlite3 (`uplinked` flag), selects the
un-uplinked ones in batches, sends each batch as JSON over `websockets` and waits for the
remote's ack; the remote inserts the batch into its sqlite3 file, commits, and answers one ack
per batch; the vehicle then marks the batch uplinked. Both files WAL + synchronous=FULL (durable
on both ends, as the Rust run).

Usage: bench_telemetry_ref.py RECORDS PAYLOAD_BYTES BATCH [COLLECT]   (prints one JSON line)

COLLECT is how records enter the vehicle's store: `chunks` (default: 4096 per transaction, the
strongest form) or `rows` (one transaction per record, as the original collector's store does
for every record it collects — its `update_state`). BATCH 1000 is the strong form; the original
uplink manager's default batch size is 50.
"""

import asyncio
import json
import os
import sqlite3
import sys
import tempfile
import time

import websockets


def open_db(path, schema):
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(schema)
    return db


async def main(records, size, batch, collect):
    tmp = tempfile.mkdtemp()
    remote_db = open_db(os.path.join(tmp, "remote.db"),
                        "CREATE TABLE records (vehicle TEXT, seq INTEGER, ts_ms INTEGER, payload TEXT,"
                        " PRIMARY KEY (vehicle, seq))")

    async def handler(ws):
        async for message in ws:
            items = json.loads(message)["records"]
            remote_db.execute("BEGIN")
            remote_db.executemany("INSERT OR IGNORE INTO records VALUES ('car-0', ?, ?, ?)",
                                  [(r["seq"], r["ts_ms"], r["payload"]) for r in items])
            remote_db.execute("COMMIT")
            await ws.send(json.dumps({"ack": items[-1]["seq"]}))

    server = await websockets.serve(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    vehicle_db = open_db(os.path.join(tmp, "vehicle.db"),
                         "CREATE TABLE records (seq INTEGER PRIMARY KEY, ts_ms INTEGER, payload TEXT,"
                         " uplinked INTEGER NOT NULL DEFAULT 0)")
    pad = "x" * max(0, size - 32)
    start = time.perf_counter()
    # Collect: records go into the local store first (in chunks, or one transaction each).
    chunk = 4096 if collect == "chunks" else 1
    for first in range(0, records, chunk):
        vehicle_db.execute("BEGIN")
        vehicle_db.executemany("INSERT INTO records (ts_ms, payload) VALUES (?, ?)",
                               [(1_700_000_000_000 + n, '{"kind":"bench","n":%d,"pad":"%s"}' % (n, pad))
                                for n in range(first, min(records, first + chunk))])
        vehicle_db.execute("COMMIT")
    # Uplink: one batch, one ack, mark.
    async with websockets.connect(f"ws://127.0.0.1:{port}") as ws:
        while True:
            rows = vehicle_db.execute(
                "SELECT seq, ts_ms, payload FROM records WHERE uplinked = 0 ORDER BY seq LIMIT ?",
                (batch,)).fetchall()
            if not rows:
                break
            await ws.send(json.dumps({"records": [{"seq": s, "ts_ms": t, "payload": p} for s, t, p in rows]}))
            ack = json.loads(await ws.recv())["ack"]
            vehicle_db.execute("UPDATE records SET uplinked = 1 WHERE seq <= ? AND uplinked = 0", (ack,))
    secs = time.perf_counter() - start
    held = remote_db.execute("SELECT count(*) FROM records").fetchone()[0]
    assert held == records, (held, records)
    server.close()
    print(json.dumps({"mode": "python-reference", "records": records, "payload_bytes": size,
                      "batch": batch, "collect": collect, "seconds": round(secs, 3), "records_per_s": round(records / secs)}))


if __name__ == "__main__":
    collect = sys.argv[4] if len(sys.argv) > 4 else "chunks"
    if collect not in ("chunks", "rows"):
        sys.exit("COLLECT must be chunks or rows")
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), collect))
