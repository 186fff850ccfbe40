"""Guarantee 7: imap/imap_unordered (and executor.map) consume their input lazily,
with a bounded number of tasks in flight: an infinite generator works in
bounded memory. (The stdlib's imap and executor.map pull the whole input first.)
"""

from __future__ import annotations

import threading
import time

import pytest

from sharkcage import Pool, ProcessPoolExecutor

from . import helpers

pytestmark = pytest.mark.timeout(30)

PROCESSES = 2


class Source:
    """An infinite generator that records how far it has been pulled."""

    def __init__(self):
        self.pulled = 0
        self.lock = threading.Lock()

    def __iter__(self):
        i = 0
        while True:
            with self.lock:
                self.pulled += 1
            yield i
            i += 1


def bound(chunksize: int) -> int:
    # "a small multiple of workers x chunk size"
    return 4 * PROCESSES * chunksize + PROCESSES


def _consume(it, source, n, chunksize, ordered=True):
    b = bound(chunksize)
    got = []
    worst = 0
    for k in range(n):
        got.append(it.next(15) if hasattr(it, "next") else next(it))
        worst = max(worst, source.pulled - (k + 1))
        assert source.pulled - (k + 1) <= b, f"pulled {source.pulled} after consuming {k + 1} (bound {b})"
    # the consumer pauses: the feeder must not run ahead
    time.sleep(0.5)
    assert source.pulled - n <= b, f"pulled {source.pulled} while the consumer sat at {n} (bound {b})"
    if ordered:
        assert got == [x * x for x in range(n)]
    else:
        assert len(set(got)) == n and all(int(v ** 0.5) ** 2 == v for v in got)
    return worst


@pytest.mark.parametrize("chunksize", [1, 5])
def test_imap_infinite_generator(chunksize):
    source = Source()
    with Pool(PROCESSES) as pool:
        it = pool.imap(helpers.square, iter(source), chunksize)
        _consume(it, source, 60, chunksize)
        # and it keeps going
        _consume_more = [it.next(15) for _ in range(10)]
        assert _consume_more == [x * x for x in range(60, 70)]


@pytest.mark.parametrize("chunksize", [1, 5])
def test_imap_unordered_infinite_generator(chunksize):
    source = Source()
    with Pool(PROCESSES) as pool:
        it = pool.imap_unordered(helpers.square, iter(source), chunksize)
        _consume(it, source, 60, chunksize, ordered=False)


def test_executor_map_infinite_generator():
    source = Source()
    with ProcessPoolExecutor(PROCESSES) as ex:
        results = ex.map(helpers.square, iter(source))
        got = []
        for k in range(60):
            got.append(next(results))
            assert source.pulled - (k + 1) <= bound(1)
        time.sleep(0.5)
        assert source.pulled - 60 <= bound(1)
        assert got == [x * x for x in range(60)]
        results.close()  # leaving early stops the feeding
        time.sleep(0.3)
        pulled = source.pulled
        time.sleep(0.5)
        assert source.pulled == pulled


def test_slow_consumer_bounds_the_input_pulled():
    """Fast tasks, a consumer that never reads: the input stays bounded."""
    source = Source()
    with Pool(PROCESSES) as pool:
        it = pool.imap(helpers.square, iter(source))
        time.sleep(1.0)
        assert source.pulled <= bound(1), source.pulled
        assert it.next(15) == 0


def test_abandoned_infinite_imap_does_not_hang_close_or_terminate():
    source = Source()
    pool = Pool(PROCESSES)
    try:
        it = pool.imap(helpers.square, iter(source))
        assert [it.next(15) for _ in range(5)] == [0, 1, 4, 9, 16]
    finally:
        t0 = time.monotonic()
        pool.terminate()
        pool.join()
        assert time.monotonic() - t0 < 5
    time.sleep(0.3)
    pulled = source.pulled
    assert pulled <= 5 + bound(1)
    time.sleep(0.5)
    assert source.pulled == pulled, "the feeder kept pulling after terminate()"


def test_input_that_raises_fails_at_its_position():
    def source():
        yield 1
        yield 2
        raise RuntimeError("the input broke")

    with Pool(PROCESSES) as pool:
        it = pool.imap(helpers.square, source())
        assert it.next(15) == 1
        assert it.next(15) == 4
        with pytest.raises(RuntimeError, match="the input broke"):
            it.next(15)
