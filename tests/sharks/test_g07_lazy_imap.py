"""Guarantee 7: imap/imap_unordered (and executor.map) consume their input lazily,
with a bounded number of tasks in flight (a small multiple of workers x chunk
size): an infinite generator works in bounded memory. (The stdlib's imap and
executor.map pull the whole input first: with an infinite one they never return.)

With an explicit ``chunksize`` the bound is checked tightly. Without one,
sharkcage sizes chunks itself (adaptive), so the test checks the input is
pulled no further while the consumer pauses, and stays under a fixed cap.
"""

from __future__ import annotations

import threading
import time

import pytest

from sharkcage import Pool, ProcessPoolExecutor

from . import helpers

pytestmark = pytest.mark.timeout(30)

PROCESSES = 2
# Without chunksize, chunks adapt up to 4096 items (docs); in flight stay at most
# 2 x workers chunks + workers items. Allow twice that, and no more.
DEFAULT_CAP = 4 * PROCESSES * 4096 + PROCESSES


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


def _next(it):
    return it.next(15) if hasattr(it, "next") else next(it)


def _consume(it, source, n, chunksize, ordered=True):
    """Consume n results, checking the input pulled ahead of the consumer."""
    b = bound(chunksize) if chunksize else DEFAULT_CAP
    got = []
    for k in range(n):
        got.append(_next(it))
        assert source.pulled - (k + 1) <= b, f"pulled {source.pulled} after consuming {k + 1} (bound {b})"
    # the consumer pauses: the feeder must stop pulling
    time.sleep(0.3)
    settled = source.pulled
    assert settled - n <= b, f"pulled {settled} while the consumer sat at {n} (bound {b})"
    time.sleep(0.3)
    assert source.pulled == settled, f"the input kept being pulled ({settled} -> {source.pulled}) with no consumer"
    if ordered:
        assert got == [x * x for x in range(n)]
    else:
        assert len(set(got)) == n and all(int(round(v ** 0.5)) ** 2 == v for v in got)


@pytest.mark.parametrize("chunksize", [1, 5, None])
def test_imap_infinite_generator(chunksize):
    source = Source()
    with Pool(PROCESSES) as pool:
        it = pool.imap(helpers.square, iter(source), chunksize)
        _consume(it, source, 60, chunksize)
        assert [it.next(15) for _ in range(10)] == [x * x for x in range(60, 70)]  # and it goes on


@pytest.mark.parametrize("chunksize", [1, 5, None])
def test_imap_unordered_infinite_generator(chunksize):
    source = Source()
    with Pool(PROCESSES) as pool:
        it = pool.imap_unordered(helpers.square, iter(source), chunksize)
        _consume(it, source, 60, chunksize, ordered=False)


@pytest.mark.parametrize("chunksize", [1, 3, None])
def test_executor_map_infinite_generator(chunksize):
    source = Source()
    with ProcessPoolExecutor(PROCESSES) as ex:
        kwargs = {} if chunksize is None else {"chunksize": chunksize}
        results = ex.map(helpers.square, iter(source), **kwargs)
        _consume(results, source, 60, chunksize)
        results.close()  # leaving early stops the feeding
        time.sleep(0.3)
        pulled = source.pulled
        time.sleep(0.3)
        assert source.pulled == pulled


@pytest.mark.parametrize("chunksize", [1, None])
def test_consumer_that_never_reads_bounds_the_input_pulled(chunksize):
    source = Source()
    with Pool(PROCESSES) as pool:
        it = pool.imap(helpers.square, iter(source), chunksize)
        time.sleep(0.4)
        settled = source.pulled
        assert settled <= (bound(chunksize) if chunksize else DEFAULT_CAP), settled
        time.sleep(0.3)
        assert source.pulled == settled
        assert it.next(15) == 0


def test_abandoned_infinite_imap_does_not_hang_terminate():
    source = Source()
    pool = Pool(PROCESSES)
    try:
        it = pool.imap(helpers.square, iter(source), 1)
        assert [it.next(15) for _ in range(5)] == [0, 1, 4, 9, 16]
    finally:
        t0 = time.monotonic()
        pool.terminate()
        pool.join()
        assert time.monotonic() - t0 < 5
    time.sleep(0.3)
    pulled = source.pulled
    assert pulled <= 5 + bound(1)
    time.sleep(0.3)
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
