"""Big arrays in and out of worker processes: sharkcage vs the stdlib pools, side by side.

Scenarios, for each size (default 100 MB and 1 GB of float64):

* send:   ``pool.apply(total, (a,))`` -- the array goes to a worker, which
          returns its sum (so the worker touches every byte it received);
* return: ``pool.apply(cached, (nbytes,))`` -- a worker returns an array it
          already holds; timed until the parent has the result object;
* share (largest size only): ``pool.share(a)`` then both workers sum it,
          against the stdlib pool sending it to both, and one ``numpy.copy``.

Peers: sharkcage.Pool (default start method, forkserver), multiprocessing.Pool
and concurrent.futures.ProcessPoolExecutor (their defaults: fork on Linux with
Python < 3.14), and in-process ``numpy.copy`` / ``a.sum()`` as the memory-bound
baselines. Every pool has 2 workers, started and warmed up before timing;
each figure is the median (and min) of ``--repeat`` runs, the peers taking
turns within each run so that load from elsewhere hits them alike.

Run:  python benchmarks/bench_zero_copy.py [--sizes 100,1000] [--repeat 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import multiprocessing
import os
import platform
import statistics
import sys
import time

import numpy as np

MB = 1 << 20
_cache: dict = {}


# -- tasks (imported by reference in every worker) -----------------------------


def total(a) -> float:
    return float(a.sum())


def cached(nbytes: int):
    """An array this worker already holds (made on the warm-up call)."""
    arr = _cache.get(nbytes)
    if arr is None:
        arr = _cache[nbytes] = np.ones(nbytes // 8)
    return arr


def total_with_pid(a):
    return os.getpid(), float(a.sum())


def warm(_x=None):
    return os.getpid()


# -- timing ------------------------------------------------------------------------


def timed(fn, check=None) -> float:
    gc.collect()
    t = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - t
    if check is not None:
        check(out)
    del out
    return elapsed


def make_peers(which: list[str]):
    from sharkcage import Pool

    peers = {}
    if "sharkcage" in which:
        peers["sharkcage.Pool"] = ("pool", Pool(2))
    if "mp" in which:
        peers["multiprocessing.Pool"] = ("pool", multiprocessing.Pool(2))
    if "cf" in which:
        peers["ProcessPoolExecutor"] = ("executor", concurrent.futures.ProcessPoolExecutor(2))
    for kind, p in peers.values():
        if kind == "pool":
            p.map(warm, range(8), chunksize=1)
        else:
            list(p.map(warm, range(8)))
    return peers


def apply(kind, p, fn, *args):
    if kind == "pool":
        return p.apply(fn, args)
    return p.submit(fn, *args).result()


def close_peers(peers) -> None:
    for kind, p in peers.values():
        if kind == "pool":
            p.terminate()
            p.join()
        else:
            p.shutdown(cancel_futures=True)


def gbps(nbytes: int, seconds: float) -> str:
    return f"{nbytes / seconds / 1e9:.2f}"


def ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1e3:.0f} ({min(samples) * 1e3:.0f})"


# -- scenarios -----------------------------------------------------------------------
#
# Every repetition runs every peer once, in turn, so a burst of load from
# elsewhere on the machine hits all of them alike instead of one peer's runs.


def run(sizes_mb: list[int], repeat: int, peers_wanted: list[str]) -> list[str]:
    lines: list[str] = []
    peers = make_peers(peers_wanted)
    try:
        for size_mb in sizes_mb:
            lines += size_scenario(size_mb, repeat, peers)
        lines += share_scenario(max(sizes_mb), repeat, peers)
    finally:
        close_peers(peers)
    return lines


def size_scenario(size_mb: int, repeat: int, peers) -> list[str]:
    nbytes = size_mb * 1000 * 1000 // 8 * 8
    a = np.random.default_rng(0).random(nbytes // 8)
    expected = float(a.sum())

    def check_sum(name):
        return lambda s: abs(s - expected) < 1e-6 * abs(expected) or _fail(name, s)

    def check_shape(name):
        return lambda r: r.shape == (nbytes // 8,) or _fail(name, r.shape)

    for kind, p in peers.values():  # warm-up: the worker's array and the code paths
        apply(kind, p, cached, nbytes)
        apply(kind, p, cached, nbytes)
    copy_t, sum_t = [], []
    send = {name: [] for name in peers}
    ret = {name: [] for name in peers}
    for _ in range(repeat):
        copy_t.append(timed(lambda: a.copy()))
        sum_t.append(timed(lambda: a.sum()))
        for name, (kind, p) in peers.items():
            send[name].append(timed(lambda: apply(kind, p, total, a), check_sum(name)))
            ret[name].append(timed(lambda: apply(kind, p, cached, nbytes), check_shape(name)))
        print(f"  {size_mb} MB: repetition done", file=sys.stderr, flush=True)
    t_copy, t_sum = statistics.median(copy_t), statistics.median(sum_t)
    lines = [
        f"\n### {size_mb} MB float64 ({nbytes:,} bytes)\n",
        f"Baselines (in-process): `numpy.copy` {ms(copy_t)} ms ({gbps(nbytes, t_copy)} GB/s), "
        f"`a.sum()` {ms(sum_t)} ms. Times are median (min) of {repeat}.\n",
        "| peer | send + sum in worker (ms) | send throughput (GB/s) | return (ms) | return throughput (GB/s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in peers:
        ts, tr = statistics.median(send[name]), statistics.median(ret[name])
        lines.append(f"| {name} | {ms(send[name])} | {gbps(nbytes, ts)} | {ms(ret[name])} | {gbps(nbytes, tr)} |")
    lines.append("")
    if "sharkcage.Pool" in peers:
        ours_s, ours_r = statistics.median(send["sharkcage.Pool"]), statistics.median(ret["sharkcage.Pool"])
        for name in peers:
            if name != "sharkcage.Pool":
                lines.append(
                    f"- vs {name}: send {statistics.median(send[name]) / ours_s:.1f}x the throughput "
                    f"(min: {min(send[name]) / min(send['sharkcage.Pool']):.1f}x), return "
                    f"{statistics.median(ret[name]) / ours_r:.1f}x (min: {min(ret[name]) / min(ret['sharkcage.Pool']):.1f}x)"
                )
        transfer = max(ours_s - t_sum, 1e-9)
        lines.append(
            f"- vs one in-process `numpy.copy`: send (minus the worker's sum) at {t_copy / transfer:.2f}x its "
            f"throughput, return at {t_copy / ours_r:.2f}x"
        )
    del a
    gc.collect()
    return lines


def share_scenario(size_mb: int, repeat: int, peers) -> list[str]:
    nbytes = size_mb * 1000 * 1000 // 8 * 8
    a = np.random.default_rng(1).random(nbytes // 8)
    expected = float(a.sum())
    copy_t, share_t, use_t, mp_t, pids = [], [], [], [], set()
    for _ in range(repeat):
        copy_t.append(timed(lambda: a.copy()))
        if "sharkcage.Pool" in peers:
            pool = peers["sharkcage.Pool"][1]
            gc.collect()
            t = time.perf_counter()
            h = pool.share(a)
            share_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            out = pool.map(total_with_pid, [h, h], chunksize=1)
            use_t.append(time.perf_counter() - t)
            assert all(abs(s - expected) < 1e-6 * abs(expected) for _, s in out)
            pids |= {pid for pid, _ in out}
            h.release()
            pool._shares.remove(h)
        if "multiprocessing.Pool" in peers:
            pool = peers["multiprocessing.Pool"][1]
            mp_t.append(timed(lambda: pool.map(total_with_pid, [a, a], chunksize=1)))
        print(f"  share {size_mb} MB: repetition done", file=sys.stderr, flush=True)
    lines = [f"\n### `pool.share` of {size_mb} MB to both workers (median (min) of {repeat})\n",
             "| what | time (ms) | note |", "|---|---:|---|",
             f"| one `numpy.copy` (in-process) | {ms(copy_t)} | the bar: one copy of the data |"]
    if share_t:
        both = [s + u for s, u in zip(share_t, use_t)]
        lines += [
            f"| sharkcage: `pool.share(a)` | {ms(share_t)} | one copy into /dev/shm |",
            f"| sharkcage: both workers sum it | {ms(use_t)} | zero-copy read-only views, "
            f"{len(pids)} distinct worker pids |",
            f"| sharkcage: share + both use | {ms(both)} | |",
        ]
    if mp_t:
        lines.append(f"| multiprocessing.Pool: send to both, both sum | {ms(mp_t)} | pickled through pipes, twice |")
    if share_t and mp_t:
        lines.append(f"\nshare + use: {statistics.median(mp_t) / statistics.median(both):.1f}x faster than "
                     f"multiprocessing.Pool; `pool.share` itself costs "
                     f"{statistics.median(share_t) / statistics.median(copy_t):.2f} numpy copies.")
    return lines


def _fail(name, got):
    raise AssertionError(f"{name} returned a wrong result: {got!r}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,1000", help="array sizes in MB, comma-separated (default 100,1000)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--peers", default="sharkcage,mp,cf", help="any of sharkcage,mp,cf")
    ap.add_argument("--out", default=None, help="append the markdown report to this file")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    cmd = "python benchmarks/bench_zero_copy.py " + " ".join(argv if argv is not None else sys.argv[1:])
    load = os.getloadavg()
    head = [
        f"## Zero-copy data plane — {time.strftime('%Y-%m-%d %H:%M')}",
        "",
        f"Command: `{cmd.strip()}`  ",
        f"Machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, numpy {np.__version__}, "
        f"load average at start {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}.",
    ]
    print("\n".join(head), file=sys.stderr, flush=True)
    body = run(sizes, args.repeat, args.peers.split(","))
    report = "\n".join(head + body) + "\n"
    print(report)
    if args.out:
        with open(args.out, "a") as f:
            f.write(report + "\n")
    return 0


if __name__ == "__main__":
    # Re-import under the module's own name, so the tasks pickle by reference.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_zero_copy

    sys.exit(bench_zero_copy.main())
