"""Guarantee 4: a result that cannot be pickled arrives as SerializationError; the pool lives.

Seed 004: generators, locks and the like cannot be pickled; with the stdlib
the error surfaces far from its task (or kills the result thread).
"""

from __future__ import annotations

import pickle
import threading
import time

import pytest

from sharkcage import Pool, ProcessPoolExecutor, RemoteError, SerializationError, SharkcageError

from . import helpers

pytestmark = pytest.mark.timeout(30)


def _check(e, direction, type_word, task_words):
    assert isinstance(e, SerializationError)
    assert isinstance(e, SharkcageError) and isinstance(e, pickle.PicklingError)
    assert e.direction == direction
    assert type_word in e.type_name, e.type_name
    text = str(e)
    assert direction in text and type_word in text, text
    for word in task_words:
        assert word in e.task and word in text, (e.task, text)


@pytest.mark.parametrize("kind", list(helpers.UNPICKLABLE_TYPE))
def test_apply_unpicklable_result(kind):
    with Pool(2) as pool:
        r = pool.apply_async(helpers.return_unpicklable, (kind,))
        with pytest.raises(SerializationError) as info:
            r.get(15)
        _check(info.value, "result", helpers.UNPICKLABLE_TYPE[kind], ["return_unpicklable"])
        # the pool lives
        assert pool.map(helpers.square, range(10)) == [x * x for x in range(10)]


@pytest.mark.parametrize("kind", ["explodes_on_load", "raises_on_load"])
def test_result_that_fails_to_unpickle_in_the_parent(kind):
    """Unpickling in the parent may raise anything, SystemExit included:
    that task's SerializationError (or RemoteError), never a dead thread."""
    with Pool(2) as pool:
        r = pool.apply_async(helpers.return_unpicklable, (kind,))
        with pytest.raises((SerializationError, RemoteError)) as info:
            r.get(15)
        if isinstance(info.value, SerializationError):
            assert info.value.direction == "result"
            assert "return_unpicklable" in info.value.task
        assert pool.apply(helpers.square, (4,)) == 16
        assert pool.map(helpers.square, range(6)) == [0, 1, 4, 9, 16, 25]


@pytest.mark.parametrize("chunksize", [1, 4])
def test_map_names_the_task_and_imap_delivers_the_others(chunksize):
    with Pool(2) as pool:
        with pytest.raises(SerializationError) as info:
            pool.map(helpers.unpicklable_at, range(10), chunksize)
        _check(info.value, "result", "generator", ["3"])
        it = pool.imap(helpers.unpicklable_at, range(10), chunksize)
        out = []
        for _ in range(10):
            try:
                out.append(it.next(15))
            except SerializationError as e:
                out.append(e)
        assert isinstance(out[3], SerializationError)
        _check(out[3], "result", "generator", ["3"])
        assert out[:3] + out[4:] == [x * x for x in range(10) if x != 3]
        assert pool.map(helpers.square, range(10)) == [x * x for x in range(10)]


def test_executor_unpicklable_result():
    with ProcessPoolExecutor(2) as ex:
        fut = ex.submit(helpers.return_unpicklable, "bad_reduce")
        _check(fut.exception(15), "result", "BadReduce", ["return_unpicklable"])
        assert ex.submit(helpers.square, 9).result(15) == 81


def test_lambda_result_comes_back_working():
    """sharkcage falls back to cloudpickle for data, so a lambda result is not an error."""
    with Pool(1) as pool:
        f = pool.apply(helpers.return_lambda, (3,))
        assert f(5) == 15


# -- arguments ---------------------------------------------------------------


def test_unpicklable_argument_raises_at_submit_time():
    lock = threading.Lock()
    with Pool(2) as pool:
        with pytest.raises(SerializationError) as info:
            pool.apply_async(helpers.ident, (lock,))  # no .get(): raised by the call itself
        _check(info.value, "argument", "lock", ["ident"])
        with pytest.raises(SerializationError) as info:
            pool.map(helpers.ident, [1, 2, (x for x in range(2)), 4])
        _check(info.value, "argument", "generator", ["2"])
        with pytest.raises(SerializationError) as info:
            pool.map_async(helpers.ident, [1, helpers.BadReduce()], 1)
        _check(info.value, "argument", "BadReduce", ["1"])
        with pytest.raises(SerializationError) as info:
            pool.starmap_async(helpers.crash_at, [(1, 2), (lock, 2)])
        _check(info.value, "argument", "lock", ["1"])
        assert pool.map(helpers.square, range(4)) == [0, 1, 4, 9]
    with ProcessPoolExecutor(2) as ex:
        with pytest.raises(SerializationError) as info:
            ex.submit(helpers.ident, lock)
        _check(info.value, "argument", "lock", ["ident"])
        assert ex.submit(helpers.square, 3).result(15) == 9


def test_unpicklable_item_in_lazy_imap_input_fails_at_its_own_position():
    lock = threading.Lock()
    with Pool(2) as pool:
        items = iter([0, 1, lock, 3, 4])
        it = pool.imap(helpers.ident, items)
        out = []
        for _ in range(5):
            try:
                out.append(it.next(15))
            except SerializationError as e:
                out.append(e)
        assert isinstance(out[2], SerializationError)
        _check(out[2], "argument", "lock", ["2"])
        assert out[:2] + out[3:] == [0, 1, 3, 4]


def test_argument_that_fails_to_unpickle_in_the_worker():
    with Pool(2) as pool:
        with pytest.raises(SerializationError) as info:
            pool.apply_async(helpers.ident, (helpers.FailsInWorker(),)).get(15)
        assert info.value.direction == "argument"
        assert "ident" in info.value.task
        out = []
        it = pool.imap(helpers.ident, [1, helpers.FailsInWorker(), 3], 3)
        for _ in range(3):
            try:
                out.append(it.next(15))
            except SerializationError as e:
                out.append(e.direction)
        assert out == [1, "argument", 3]
        assert pool.apply(helpers.square, (5,)) == 25


def test_a_later_chunk_that_cannot_be_pickled_cancels_the_chunks_already_sent(tmp_path):
    """map() hands its first chunk to the workers before pickling the rest:
    when a later chunk cannot be pickled, the call raises, what was sent is
    cancelled (its task stopped, no callback hears of it), and the pool
    carries on."""
    heard = []
    marker = tmp_path / "ran-to-the-end"
    with Pool(2) as pool:
        with pytest.raises(SerializationError) as info:
            pool.map_async(helpers.sleep_then_touch, [(1.0, str(marker)), (0, threading.Lock())], 1,
                           callback=heard.append, error_callback=heard.append)
        _check(info.value, "argument", "lock", ["1"])
        assert pool.map(helpers.square, range(4)) == [0, 1, 4, 9]
        time.sleep(1.5)
    assert not marker.exists()
    assert heard == []
