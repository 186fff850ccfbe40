"""sharkcage on Dask and Ray against the engines' own APIs, side by side in one run.

For each engine, on the same cluster, interleaved (native, sharkcage,
native, ...) so both see the same background load, median of the repeats:

* ``map 1000``      1000 tiny tasks as each API maps them:
                    ``client.gather(client.map(f, xs))`` / ``ray.get([f.remote(x) ...])``
                    vs ``pool.map(f, xs)``.
* ``map 1000, chunksize=1``  the same with one remote call per task: the
                    per-call overhead, without the batching that wins above.
* ``submit 1000``   1000 tiny tasks one call each, every result awaited
                    (sharkcage merges queued single submits into one remote call):
                    ``client.submit`` / ``f.remote`` vs ``executor.submit``.
* ``100 MB``        one numpy array of 100 MB there and back:
                    native ``client.submit(f, a)`` (and ``client.scatter`` first, the
                    better of the two counts) / ``ray.get(f.remote(a))``
                    vs ``pool.apply(f, (a,))``.

The ratio is sharkcage's time over native (below 1: sharkcage is faster):
``ratio`` of the two medians, and ``paired``, the median of each
interleaved pair's ratio (steadier where timings are bimodal: a 100 MB
round trip on Ray takes ~35 ms or ~140 ms depending on the state of Ray's
object store, for native calls and sharkcage's alike).
Clusters are started on 127.0.0.1 with the ``dask``/``ray`` CLIs unless
addresses are given (``--dask-address``, ``--ray-address``).

    python benchmarks/bench_backends.py                  # both engines, throwaway clusters
    python benchmarks/bench_backends.py --backends ray --repeat 7
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))  # cluster_helpers: start/stop clusters

import numpy as np  # noqa: E402

from sharkcage import Pool, ProcessPoolExecutor  # noqa: E402

MB = 1 << 20


def inc(x):
    return x + 1


def identity(a):
    return a


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def compare(cases: dict, repeat: int) -> dict:
    """{case: {"native": [s...], "sharkcage": [s...]}}, runs interleaved after one warm-up each."""
    out = {}
    for case, (native, ours) in cases.items():
        native()
        ours()
        runs = {"native": [], "sharkcage": []}
        for _ in range(repeat):
            runs["native"].append(timed(native))
            runs["sharkcage"].append(timed(ours))
        out[case] = runs
    return out


def dask_cases(address: str, n: int, array: np.ndarray):
    from distributed import Client

    client = Client(address, set_as_default=False)
    t0 = time.perf_counter()
    pool = Pool(backend="dask", address=client)
    ex = ProcessPoolExecutor(backend="dask", address=client)
    connect = time.perf_counter() - t0
    xs = list(range(n))

    def native_map():
        assert client.gather(client.map(inc, xs, pure=False)) == [x + 1 for x in xs]

    def ours_map():
        assert pool.map(inc, xs) == [x + 1 for x in xs]

    def ours_map_1():
        assert pool.map(inc, xs, chunksize=1) == [x + 1 for x in xs]

    def native_submit():
        futures = [client.submit(inc, x, pure=False) for x in xs]
        assert [f.result() for f in futures] == [x + 1 for x in xs]

    def ours_submit():
        futures = [ex.submit(inc, x) for x in xs]
        assert [f.result() for f in futures] == [x + 1 for x in xs]

    def native_array_submit():
        assert client.submit(identity, array, pure=False).result().nbytes == array.nbytes

    def native_array_scatter():
        data = client.scatter(array, hash=False)
        assert client.submit(identity, data, pure=False).result().nbytes == array.nbytes
        del data

    def ours_array():
        assert pool.apply(identity, (array,)).nbytes == array.nbytes

    def close():
        pool.close()
        pool.join()
        ex.shutdown()
        client.close()

    return connect, {
        f"map {n}": (native_map, ours_map),
        f"map {n}, chunksize=1 (a call per task)": (native_map, ours_map_1),
        f"submit {n}": (native_submit, ours_submit),
        f"{array.nbytes // MB} MB round trip (native: submit)": (native_array_submit, ours_array),
        f"{array.nbytes // MB} MB round trip (native: scatter)": (native_array_scatter, ours_array),
    }, close


def ray_cases(address: str, n: int, array: np.ndarray):
    import ray

    ray.init(address=address, log_to_driver=False)
    t0 = time.perf_counter()
    pool = Pool(backend="ray", address=address)
    ex = ProcessPoolExecutor(backend="ray", address=address)
    connect = time.perf_counter() - t0
    rinc = ray.remote(inc)
    ridentity = ray.remote(identity)
    xs = list(range(n))

    def native_map():
        assert ray.get([rinc.remote(x) for x in xs]) == [x + 1 for x in xs]

    def ours_map():
        assert pool.map(inc, xs) == [x + 1 for x in xs]

    def ours_map_1():
        assert pool.map(inc, xs, chunksize=1) == [x + 1 for x in xs]

    def native_submit():
        refs = [rinc.remote(x) for x in xs]
        assert [ray.get(r) for r in refs] == [x + 1 for x in xs]

    def ours_submit():
        futures = [ex.submit(inc, x) for x in xs]
        assert [f.result() for f in futures] == [x + 1 for x in xs]

    def native_array():
        assert ray.get(ridentity.remote(array)).nbytes == array.nbytes

    def ours_array():
        assert pool.apply(identity, (array,)).nbytes == array.nbytes

    def close():
        pool.close()
        pool.join()
        ex.shutdown()
        ray.shutdown()

    return connect, {
        f"map {n}": (native_map, ours_map),
        f"map {n}, chunksize=1 (a call per task)": (native_map, ours_map_1),
        f"submit {n}": (native_submit, ours_submit),
        f"{array.nbytes // MB} MB round trip": (native_array, ours_array),
    }, close


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="dask,ray")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--dask-address")
    ap.add_argument("--ray-address")
    ap.add_argument("--json", help="also write the raw timings here")
    args = ap.parse_args(argv)
    array = np.random.default_rng(0).random(args.mb * MB // 8)
    results = {}
    for engine in [b.strip() for b in args.backends.split(",") if b.strip()]:
        cluster = None
        address = getattr(args, f"{engine}_address")
        if address is None:
            import cluster_helpers

            cluster = cluster_helpers.start_dask() if engine == "dask" else cluster_helpers.start_ray()
            address = cluster.address
        try:
            build = dask_cases if engine == "dask" else ray_cases
            connect, cases, close = build(address, args.tasks, array)
            try:
                results[engine] = {"connect_s": connect, "cases": compare(cases, args.repeat)}
            finally:
                close()
        finally:
            if cluster is not None:
                cluster.stop()
    print(f"{'engine':6} {'case':42} {'native':>10} {'sharkcage':>10} {'ratio':>7} {'paired':>7}")
    for engine, res in results.items():
        for case, runs in res["cases"].items():
            native, ours = statistics.median(runs["native"]), statistics.median(runs["sharkcage"])
            paired = statistics.median(o / n for n, o in zip(runs["native"], runs["sharkcage"]))
            print(f"{engine:6} {case:42} {native * 1e3:8.1f}ms {ours * 1e3:8.1f}ms {ours / native:7.2f} {paired:7.2f}")
        print(f"{engine:6} {'(pool + executor connect, once)':42} {'':>10} {res['connect_s'] * 1e3:8.1f}ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
