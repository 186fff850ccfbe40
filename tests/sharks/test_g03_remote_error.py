"""Guarantee 3: an exception that cannot be rebuilt arrives as RemoteError; the pool lives.

Seed 003: mysql-connector's Error sets ``self.args`` in an order that its own
``__init__`` cannot take back, so unpickling it in the parent raised inside the
stdlib's result thread and hung the pool forever.
"""

from __future__ import annotations

import pickle
import textwrap

import pytest

from sharkcage import Pool, ProcessPoolExecutor, RemoteError, SharkcageError

from . import helpers

pytestmark = pytest.mark.timeout(30)

MYSQL_TYPE = f"{helpers.MysqlStyleError.__module__}.{helpers.MysqlStyleError.__qualname__}"


def test_precondition_the_helper_error_really_breaks_pickle():
    e = helpers.MysqlStyleError("Lost connection", 2055)
    with pytest.raises(AttributeError):
        pickle.loads(pickle.dumps(e))


def _check_mysql_error(e, message="2055: Lost connection to MySQL server"):
    assert isinstance(e, helpers.MysqlStyleError)
    assert isinstance(e, RemoteError)
    assert isinstance(e, SharkcageError)
    assert e.type_name == MYSQL_TYPE
    assert e.message == message
    assert "raise MysqlStyleError" in e.remote_traceback or "raise_mysql" in e.remote_traceback
    assert "Traceback" in e.remote_traceback
    text = str(e)
    assert MYSQL_TYPE in text and message in text and "raise_mysql" in text


def test_apply_mysql_style_error_is_catchable_as_the_original_class():
    with Pool(2) as pool:
        r = pool.apply_async(helpers.raise_mysql)
        try:
            r.get(15)
        except helpers.MysqlStyleError as e:  # `except mysql.connector.Error` still works
            _check_mysql_error(e)
            # the picklable state came back without calling __init__
            assert e.errno == 2055
            assert e.msg == "Lost connection to MySQL server"
            assert e.args == (2055, "2055: Lost connection to MySQL server", None)
        else:
            pytest.fail("no exception")
        assert r.ready() and not r.successful()
        # the pool lives
        assert pool.map(helpers.square, range(10)) == [x * x for x in range(10)]
        assert pool.apply(helpers.square, (3,)) == 9


def test_map_raises_it_and_imap_delivers_the_others():
    with Pool(2) as pool:
        with pytest.raises(helpers.MysqlStyleError) as info:
            pool.map(helpers.raise_mysql_at, range(8))
        _check_mysql_error(info.value, "1002: item 2 failed")
        it = pool.imap(helpers.raise_mysql_at, range(8), 3)
        out = []
        for _ in range(8):
            try:
                out.append(it.next(15))
            except RemoteError as e:
                out.append(type(e))
        assert issubclass(out[2], helpers.MysqlStyleError)
        assert out[:2] + out[3:] == [0, 1, 9, 16, 25, 36, 49]
        assert pool.map(helpers.square, range(5)) == [0, 1, 4, 9, 16]


def test_executor_future_gets_the_remote_error():
    with ProcessPoolExecutor(2) as ex:
        fut = ex.submit(helpers.raise_mysql, "gone away", 2006)
        e = fut.exception(15)
        _check_mysql_error(e, "2006: gone away")
        with pytest.raises(helpers.MysqlStyleError):
            fut.result()
        assert ex.submit(helpers.square, 4).result(15) == 16


def test_exception_holding_unpicklable_state():
    with Pool(1) as pool:
        with pytest.raises(helpers.LockHoldingError) as info:
            pool.apply_async(helpers.raise_lock_holding).get(15)
        e = info.value
        assert isinstance(e, RemoteError)
        assert e.message == "holding a lock"
        assert e.code == 42  # what could travel did
        assert "raise_lock_holding" in e.remote_traceback
        assert pool.apply(helpers.square, (6,)) == 36


def test_class_not_importable_in_the_parent_is_a_plain_remote_error():
    with Pool(1) as pool:
        with pytest.raises(RemoteError) as info:
            pool.apply_async(helpers.raise_local_class).get(15)
        e = info.value
        assert type(e) is RemoteError
        assert e.type_name.endswith("raise_local_class.<locals>.LocalOnlyError")
        assert e.message == "local/only"
        assert "raise_local_class" in e.remote_traceback
        assert e.type_name in str(e) and "local/only" in str(e)
        assert pool.apply(helpers.square, (2,)) == 4


def test_exceptions_that_round_trip_keep_their_type():
    with Pool(1) as pool:
        with pytest.raises(ValueError) as info:
            pool.apply_async(helpers.raise_value_error, ("plain",)).get(15)
        assert not isinstance(info.value, RemoteError)
        assert "raise_value_error" in str(info.value.__cause__)


MAIN_SCRIPT = textwrap.dedent(
    """
    import sys
    from sharkcage import Pool, RemoteError

    class MainOnlyError(Exception):
        def __init__(self, msg, errno):
            super().__init__()
            self.errno = errno
            self.full = "{}: {}".format(errno, msg.strip())
            self.args = (errno, self.full)
        def __str__(self):
            return self.full

    def task():
        raise MainOnlyError("defined in __main__", 7)

    if __name__ == "__main__":
        with Pool(2, start_method=sys.argv[1]) as pool:
            try:
                pool.apply_async(task).get(15)
            except RemoteError as e:
                print("REMOTE", e.type_name, "|", e.message, "|", "task" in e.remote_traceback)
            except BaseException as e:
                print("WRONG", type(e).__mro__)
            print("ALIVE", pool.map(abs, [-1, -2, -3]))
    """
)


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_class_defined_in_main_of_python_c(method):
    proc = helpers.run_python(["-c", MAIN_SCRIPT, method])
    assert proc.returncode == 0, proc.stderr
    assert "REMOTE __main__.MainOnlyError | 7: defined in __main__ | True" in proc.stdout, proc.stdout + proc.stderr
    assert "ALIVE [1, 2, 3]" in proc.stdout
