"""Issue 5, asyncio (README "What you get": asyncio).

``await`` works on ``AsyncResult`` (value and exception), on executor futures
and on actor futures; ``async for`` iterates ``pool.aimap`` (ordered) and
``pool.aimap_unordered``; coroutine functions are tasks, run on the worker's
own event loop; and none of it blocks the caller's loop, which a lag probe
(a coroutine ticking every 10 ms) measures while 2-second tasks are awaited.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

import actor_helpers as h
from sharkcage import Pool, ProcessPoolExecutor

pytestmark = pytest.mark.timeout(60)

GET = 30  # seconds: a wait longer than this is a hang


def run(coro):
    """asyncio.run with an outer bound, so a blocked await fails instead of hanging."""
    async def bounded():
        return await asyncio.wait_for(coro, GET)

    return asyncio.run(bounded())


@pytest.fixture
def pool():
    p = Pool(2)
    try:
        yield p
    finally:
        p.terminate()
        p.join()


# ---------------------------------------------------------------------------
# await


def test_await_async_result_value_and_exception(pool):
    async def main():
        value = await pool.apply_async(h.square, (12,))
        with pytest.raises(ValueError, match="awaited failure 5e1"):
            await pool.apply_async(h.raise_value_error, ("awaited failure 5e1",))
        mapped = await pool.map_async(h.square, range(6))
        starmapped = await pool.starmap_async(h.sleep_return, [(0, "a"), (0, "b")])
        # awaiting a result that is already done, and twice
        done = pool.apply_async(h.square, (3,))
        done.wait(GET)
        return value, mapped, starmapped, await done, await done

    assert run(main()) == (144, [0, 1, 4, 9, 16, 25], ["a", "b"], 9, 9)


def test_await_executor_futures():
    with ProcessPoolExecutor(2) as ex:
        async def main():
            value = await ex.submit(h.square, 9)
            with pytest.raises(ValueError, match="executor failure 77c"):
                await ex.submit(h.raise_value_error, "executor failure 77c")
            many = await asyncio.gather(*(ex.submit(h.square, i) for i in range(5)))
            wrapped = await asyncio.wrap_future(ex.submit(h.square, 4))
            return value, many, wrapped

        assert run(main()) == (81, [0, 1, 4, 9, 16], 16)


def test_await_actor_futures(pool):
    box = pool.actor(h.Box)

    async def main():
        n = await box.append.submit("a")
        with pytest.raises(KeyError, match="actor method marker 41c2"):
            await box.boom.submit()
        both = await asyncio.gather(box.append.submit("b"), box.get.submit())
        return n, both

    assert run(main()) == (1, [2, ["a", "b"]])


# ---------------------------------------------------------------------------
# async for


def test_aimap_is_ordered(pool):
    async def main():
        return [x async for x in pool.aimap(h.sleep_then_square, range(12), chunksize=1)]

    assert run(main()) == [x * x for x in range(12)]


def test_aimap_unordered_yields_every_result(pool):
    async def main():
        return [x async for x in pool.aimap_unordered(h.sleep_then_square, range(12), chunksize=1)]

    out = run(main())
    assert sorted(out) == [x * x for x in range(12)]


def test_aimap_lazy_generator_input(pool):
    def gen():
        yield from range(50)

    async def main():
        return [x async for x in pool.aimap(h.square, gen())]

    assert run(main()) == [x * x for x in range(50)]


def test_aimap_failed_item_raises_at_its_position_and_iteration_goes_on(pool):
    async def main():
        it = pool.aimap(h.raise_if_three, range(6), chunksize=1)
        got = []
        while True:
            try:
                got.append(await it.__anext__())
            except StopAsyncIteration:
                return got
            except ValueError as e:
                got.append(f"error: {e}")

    assert run(main()) == [0, 1, 2, "error: item 3 fails", 4, 5]


def test_aimap_empty_input(pool):
    async def main():
        return [x async for x in pool.aimap(h.square, [])], [x async for x in pool.aimap_unordered(h.square, [])]

    assert run(main()) == ([], [])


# ---------------------------------------------------------------------------
# coroutine functions as tasks


def test_coroutine_function_via_apply_async(pool):
    value, loop_type, pid = pool.apply_async(h.coro_square, (7,)).get(GET)
    assert value == 49
    assert pid != os.getpid() and "EventLoop" in loop_type
    with pytest.raises(ValueError, match="coroutine failure 31b"):
        pool.apply(h.coro_raises, ("coroutine failure 31b",))

    async def main():  # awaited from the caller's loop too
        return await pool.apply_async(h.coro_square, (8,))

    assert run(main())[0] == 64


def test_coroutine_function_via_map(pool):
    out = pool.map(h.coro_square, range(8))
    assert [v for v, _, _ in out] == [x * x for x in range(8)]
    assert all(pid != os.getpid() for _, _, pid in out)
    assert [v for v, _, _ in pool.imap(h.coro_square, range(5))] == [0, 1, 4, 9, 16]

    async def main():
        return [v async for v, _, _ in pool.aimap(h.coro_square, range(5))]

    assert run(main()) == [0, 1, 4, 9, 16]


def test_coroutine_function_via_executor():
    with ProcessPoolExecutor(1) as ex:
        assert ex.submit(h.coro_square, 6).result(GET)[0] == 36
        assert [v for v, _, _ in ex.map(h.coro_square, range(4))] == [0, 1, 4, 9]


# ---------------------------------------------------------------------------
# the caller's loop is never blocked


def test_awaiting_long_tasks_never_blocks_the_event_loop():
    async def probe(stop: asyncio.Event, lags: list):
        tick = 0.01
        while not stop.is_set():
            t0 = time.perf_counter()
            await asyncio.sleep(tick)
            lags.append(time.perf_counter() - t0 - tick)

    with Pool(2) as pool, ProcessPoolExecutor(1) as ex:
        box = pool.actor(h.Box)
        box.get()  # the actor is up
        ex.submit(h.square, 1).result(GET)  # the executor's worker is up

        async def main():
            stop = asyncio.Event()
            lags: list = []
            prober = asyncio.create_task(probe(stop, lags))
            await asyncio.sleep(0.05)
            t0 = time.perf_counter()
            results = await asyncio.gather(
                pool.apply_async(h.sleep_return, (2, "apply")),
                ex.submit(h.sleep_return, 2, "executor"),
                box.slow.submit(2),
                _collect(pool.aimap(h.sleep_return_one, [2])),
            )
            waited = time.perf_counter() - t0
            stop.set()
            await prober
            return results, waited, lags

        results, waited, lags = run(main())
    assert results == ["apply", "executor", 2, [2]]
    assert waited >= 1.9, "the 2-second tasks were really awaited"
    assert len(lags) > 20, f"the probe ran only {len(lags)} times in {waited:.1f} s: the loop was blocked"
    worst = max(lags)
    assert worst < 0.5, f"the event loop was blocked for {worst:.2f} s while awaiting tasks"


async def _collect(ait):
    return [x async for x in ait]
