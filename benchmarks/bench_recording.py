"""What stats and timeline recording cost: tiny-task throughput, recording on vs off.

Each sample runs in a fresh interpreter; on and off alternate within every
repeat (repeats outermost), and the medians are compared as a ratio.

    python benchmarks/bench_recording.py [--repeats 7] [--tasks 20000]

Workloads: ``apply_async`` of N tiny tasks then wait all (one batch per few
tasks: the per-batch recording cost shows most here), and ``imap`` of N tiny
tasks at default settings (adaptive chunks).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

DRIVER = r"""
import json, sys, time
from sharkcage import Pool

def inc(x):
    return x + 1

if __name__ == "__main__":
    record = sys.argv[1] == "on"
    n = int(sys.argv[2])
    with Pool(2, record=record) as pool:
        pool.map(inc, range(100))  # warm: workers up, function shipped
        t = time.perf_counter()
        rs = [pool.apply_async(inc, (i,)) for i in range(n)]
        for r in rs:
            r.get()
        apply_us = (time.perf_counter() - t) / n * 1e6
        t = time.perf_counter()
        for _ in pool.imap(inc, range(n * 5)):
            pass
        imap_us = (time.perf_counter() - t) / (n * 5) * 1e6
    print(json.dumps({"apply_async_us": apply_us, "imap_us": imap_us}))
"""


def sample(mode: str, tasks: int) -> dict:
    out = subprocess.run([sys.executable, "-c", DRIVER, mode, str(tasks)], capture_output=True, text=True,
                         timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--tasks", type=int, default=20000)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {"on": [], "off": []}
    for r in range(args.repeats):
        order = ("on", "off") if r % 2 == 0 else ("off", "on")
        for mode in order:
            results[mode].append(sample(mode, args.tasks))
    print(f"| workload | recording on (median µs/task) | off | on/off |")
    print(f"|---|---|---|---|")
    for key in ("apply_async_us", "imap_us"):
        on = statistics.median(s[key] for s in results["on"])
        off = statistics.median(s[key] for s in results["off"])
        print(f"| {key[:-3]} | {on:.2f} | {off:.2f} | {on / off:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
