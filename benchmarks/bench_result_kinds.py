"""What a chunk's results cost by kind: sharkcage's ``map`` against the stdlib's.

A pool must fail only the task whose result cannot be unpickled, so results
that are not plain data once travelled one pickle per item; this measures
``map`` over 100k items whose task returns an int, a tuple, a numpy scalar,
an object of an importable class, and an object of a ``__main__`` class.

    python benchmarks/bench_result_kinds.py [--repeats 5] [--items 100000]

Each sample is a fresh interpreter running one pool (sharkcage's or the
stdlib fork ``Pool``, both 2 workers, default chunking) through every kind
once after a warm-up map; pools alternate within every repeat (repeats
outermost). Prints per kind the medians in ms per map and the ratio
sharkcage / stdlib.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

DRIVER = r"""
import fractions, json, sys, time
import numpy as np

class Point:                       # a __main__ class: cloudpickle carries it by value
    def __init__(self, x):
        self.x = x

def as_int(x):
    return x + 1

def as_pair(x):
    return (x, x + 1)

def as_float64(x):
    return np.float64(x) * 2

def as_fraction(x):                # an importable class (fractions.Fraction)
    return fractions.Fraction(x, 3)

def as_main_object(x):
    return Point(x)

KINDS = {"int": as_int, "tuple": as_pair, "np.float64": as_float64, "Fraction": as_fraction,
         "__main__ class": as_main_object}

if __name__ == "__main__":
    which, n = sys.argv[1], int(sys.argv[2])
    if which == "sharkcage":
        from sharkcage import Pool
        pool = Pool(2)
    else:
        import multiprocessing
        pool = multiprocessing.get_context("fork").Pool(2)
    items = list(range(n))
    out = {}
    with pool:
        pool.map(as_int, items)  # warm: workers up
        for name, fn in KINDS.items():
            t = time.perf_counter()
            res = pool.map(fn, items)
            out[name] = (time.perf_counter() - t) * 1e3
            assert len(res) == n
    print(json.dumps(out))
"""

POOLS = ("sharkcage", "stdlib-fork")


def sample(which: str, items: int) -> dict:
    out = subprocess.run([sys.executable, "-c", DRIVER, which, str(items)], capture_output=True, text=True,
                         timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--items", type=int, default=100_000)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {p: [] for p in POOLS}
    for r in range(args.repeats):
        for which in (POOLS if r % 2 == 0 else POOLS[::-1]):
            results[which].append(sample(which, args.items))
    kinds = list(results["sharkcage"][0])
    print(f"map of {args.items:,} items, medians of {args.repeats} (ms per map)\n")
    print("| result kind | sharkcage | stdlib fork Pool | ratio |")
    print("|---|---:|---:|---:|")
    for kind in kinds:
        ours = statistics.median(s[kind] for s in results["sharkcage"])
        theirs = statistics.median(s[kind] for s in results["stdlib-fork"])
        print(f"| {kind} | {ours:.0f} | {theirs:.0f} | {ours / theirs:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
