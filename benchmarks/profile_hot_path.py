"""Where the microseconds of one tiny task go: sharkcage's round trip, taken apart.

    python benchmarks/profile_hot_path.py [--n 3000]

Measures, on this machine, in one run:

* the floor: a raw ``socketpair`` ping-pong between two processes (the
  smallest message there and back), and ``pickle`` of a tiny task and result;
* sharkcage's sequential submit-then-wait round trip
  (``pool.apply_async(...).get()``), which on an idle pool takes the direct
  path: the caller's thread sends the task and reads the reply itself;
* each piece of sharkcage's own work for one task, timed in isolation in
  this process: the caller's side (result object, batch, frame encode,
  reply decode, delivery, borrowing the worker's channel) and the worker's
  (``run_batch`` of one item: call, result pickle).

What the pieces do not add up to is the hand-offs: the worker's wake-up and
the caller's, with their socket and poll syscalls.
"""

from __future__ import annotations

import argparse
import os
import pickle
import select
import socket
import statistics
import sys
import time


def inc(x):
    return x + 1


def per_call(fn, n: int) -> float:
    """Median of 5 runs of ``n`` calls, in µs per call."""
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(runs)


def socket_ping_pong(n: int) -> float:
    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the echo side
        a.close()
        try:
            while True:
                data = b.recv(64)
                if not data:
                    break
                b.sendall(data)
        finally:
            os._exit(0)
    b.close()
    msg = b"x" * 32
    for _ in range(200):
        a.sendall(msg)
        a.recv(64)
    t = time.perf_counter()
    for _ in range(n):
        a.sendall(msg)
        a.recv(64)
    us = (time.perf_counter() - t) / n * 1e6
    a.close()
    os.waitpid(pid, 0)
    return us


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000)
    args = parser.parse_args()
    n = args.n

    floor = socket_ping_pong(n)
    item = ((41,), {})
    pickle_us = per_call(lambda: pickle.loads(pickle.dumps(item, 5)), n) + per_call(
        lambda: pickle.loads(pickle.dumps([42], 5)), n)

    from sharkcage import Pool
    from sharkcage._engine import batching, replies
    from sharkcage._engine.channel import encode
    from sharkcage._engine.worker import CALL, run_batch
    from sharkcage.results import AsyncResult

    with Pool(1) as pool:
        for _ in range(300):
            pool.apply(inc, (1,))
        backend = pool._backend
        direct = 0
        t = time.perf_counter()
        for i in range(n):
            r = pool.apply_async(inc, (i,))
            direct += r.direct is not None
            r.get()
        round_trip = (time.perf_counter() - t) / n * 1e6

        arena = backend.arena
        fn_id = backend.register_function(inc)

        def caller_side():
            job = AsyncResult(backend, "apply(inc)")
            return batching.single(job, fn_id, CALL, item, arena, inline=True)

        batch = caller_side()
        caller_us = per_call(caller_side, n)
        encode_us = per_call(lambda: encode(("run", 1, fn_id, CALL, batch.payload, True)), n)
        reply = run_batch(1, inc, CALL, [item], True, timed=False)
        worker_us = per_call(lambda: run_batch(1, inc, CALL, [item], True, timed=False), n)
        reply_frame = encode(reply)
        decode_us = per_call(lambda: pickle.loads(reply_frame[8:]), n)

        def settle():
            job = AsyncResult(backend, "apply(inc)")
            replies.settle(reply[0], reply[2], [(job, 0)], lambda j, i, ok, v: j.deliver(i, ok, v),
                           backend._load_result)

        settle_us = per_call(settle, n) - per_call(lambda: AsyncResult(backend, "apply(inc)"), n)
        w = next(iter(backend.workers.values()))

        def lease():
            backend.selector.mute(w.end.fd)
            p = select.poll()
            p.register(w.end.fd, select.POLLIN)
            p.register(w.sentinel, select.POLLIN)
            backend.selector.unmute(w.end.fd)

        with backend._lock:  # the loop must not run meanwhile
            lease_us = per_call(lease, n)

    pieces = {
        "caller: result object + batch (plain arguments stay inline)": caller_us,
        "caller: encode the run frame": encode_us,
        "worker: run_batch of one item (call, pickle the result)": worker_us,
        "caller: decode the reply frame": decode_us,
        "caller: settle the outcome (unpickle result, deliver)": settle_us,
        "caller: borrow the worker's channel (mute, poll set-up, unmute)": lease_us,
    }
    accounted = sum(pieces.values())
    print(f"# hot path of one tiny task (Python {sys.version.split()[0]}, {os.cpu_count()} cores)\n")
    print("| piece | µs |")
    print("|---|---:|")
    print(f"| **sharkcage round trip** (`pool.apply_async(inc, (i,)).get()`, sequential) | **{round_trip:.1f}** |")
    for name, us in pieces.items():
        print(f"| {name} | {us:.1f} |")
    print(f"| hand-offs: two process wake-ups, socket and poll syscalls (the rest) | {round_trip - accounted:.1f} |")
    print(f"| floor: raw socketpair ping-pong between two processes | {floor:.1f} |")
    print(f"| floor: pickle dumps+loads of the task and of the result | {pickle_us:.1f} |")
    print(f"\nround trip / raw ping-pong = {round_trip / floor:.2f}x; "
          f"{direct} of {n} calls took the direct path")
    return 0


if __name__ == "__main__":
    sys.exit(main())
