"""The web page under load (scripts/bench-webui.sh): an open group view fed ~2,000 can_frame
events per second for a measured window, in headless chromium.

A real relay (server, two agents, two simulated dongles replaying the shipped capture at
`--speed`), with console sampling raised above the rate so every frame reaches the page. After
a warm-up, samples every 5 s:
  * main-thread busy: Chrome's own `TaskDuration` (DevTools Performance.getMetrics), the time
    the renderer's main thread spent running tasks, per second of wall time (wall-clock task
    time by default, CPU time with WEBUI_BENCH_TIME_DOMAIN=threadTicks);
  * long tasks (PerformanceObserver 'longtask', the Performance API): count and total time;
  * memory: `performance.memory.usedJSHeapSize` (after the page's own work, no forced GC) and
    the DOM node count;
  * frames/s as the page counts them.
Prints one JSON line per sample and a summary (medians; heap first and last minute).

Usage: TETHER_BIN=… python bench_webui.py [SECONDS=300] [SPEED=12]
"""

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from relay_harness import chromium, running_relay

SECONDS = int(sys.argv[1]) if len(sys.argv) > 1 else 300
SPEED = sys.argv[2] if len(sys.argv) > 2 else "12"
WARMUP = 15
# `timeTicks`: task durations in wall time (includes time the thread waited for a core on a
# busy machine: the conservative figure); `threadTicks`: CPU time of the main thread.
TIME_DOMAIN = os.environ.get("WEBUI_BENCH_TIME_DOMAIN", "timeTicks")
EVERY = 5

OBSERVE = """
window.__long = {n: 0, ms: 0};
new PerformanceObserver((list) => { for (const e of list.getEntries()) { window.__long.n++; window.__long.ms += e.duration; } })
  .observe({type: 'longtask', buffered: true});
"""


def metrics(driver) -> dict:
    got = driver.execute_cdp_cmd("Performance.getMetrics", {})
    return {m["name"]: m["value"] for m in got["metrics"]}


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="tether-webui-bench-"))
    config = "console:\n  sampling_threshold_per_s: 100000\n  queue_capacity: 100000\n"
    with running_relay(tmp, config, speed=SPEED) as relay:
        driver = chromium()
        try:
            driver.execute_cdp_cmd("Performance.enable", {"timeDomain": TIME_DOMAIN})
            driver.get(f"{relay.base}/#token={relay.token}&route=/groups/{relay.group}")
            time.sleep(2)
            driver.execute_script(OBSERVE)
            time.sleep(WARMUP)
            samples = []
            start = time.monotonic()
            prev = metrics(driver)
            prev_t = time.monotonic()
            prev_long = driver.execute_script("return {...window.__long}")
            while time.monotonic() - start < SECONDS:
                time.sleep(EVERY)
                now = metrics(driver)
                t = time.monotonic()
                page = driver.execute_script(
                    "return {rate: +document.getElementById('rate').textContent,"
                    " rows: +document.getElementById('row-count').textContent,"
                    " heap: performance.memory.usedJSHeapSize, nodes: document.getElementsByTagName('*').length,"
                    " conn: document.getElementById('conn').textContent, long: {...window.__long}}")
                wall = t - prev_t
                sample = {
                    "t": round(t - start, 1),
                    "busy": round((now["TaskDuration"] - prev["TaskDuration"]) / wall, 3),
                    "script": round((now["ScriptDuration"] - prev["ScriptDuration"]) / wall, 3),
                    "layout": round((now["LayoutDuration"] + now["RecalcStyleDuration"] - prev["LayoutDuration"] - prev["RecalcStyleDuration"]) / wall, 3),
                    "long_tasks": page["long"]["n"] - prev_long["n"],
                    "long_ms": round(page["long"]["ms"] - prev_long["ms"], 1),
                    "frames_per_s": page["rate"],
                    "rows": page["rows"],
                    "heap_mb": round(page["heap"] / 1e6, 2),
                    "dom_nodes": page["nodes"],
                    "conn": page["conn"],
                }
                print(json.dumps(sample), flush=True)
                samples.append(sample)
                prev, prev_t, prev_long = now, t, page["long"]
        finally:
            driver.quit()
    minute = max(1, 60 // EVERY)
    first, last = samples[:minute], samples[-minute:]
    summary = {
        "seconds": SECONDS,
        "time_domain": TIME_DOMAIN,
        "frames_per_s_median": statistics.median(s["frames_per_s"] for s in samples),
        "busy_median": statistics.median(s["busy"] for s in samples),
        "busy_max": max(s["busy"] for s in samples),
        "script_median": statistics.median(s["script"] for s in samples),
        "layout_median": statistics.median(s["layout"] for s in samples),
        "long_tasks_total": sum(s["long_tasks"] for s in samples),
        "long_ms_total": round(sum(s["long_ms"] for s in samples), 1),
        "heap_mb_first_minute_median": round(statistics.median(s["heap_mb"] for s in first), 2),
        "heap_mb_last_minute_median": round(statistics.median(s["heap_mb"] for s in last), 2),
        "heap_mb_max": max(s["heap_mb"] for s in samples),
        "dom_nodes_max": max(s["dom_nodes"] for s in samples),
        "rows_max": max(s["rows"] for s in samples),
        "connection_states": sorted({s["conn"] for s in samples}),
    }
    print("summary " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
