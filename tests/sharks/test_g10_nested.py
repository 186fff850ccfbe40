"""Guarantee 10: a task may itself create a sharkcage.Pool (nested pools work).

The stdlib refuses it ("daemonic processes are not allowed to have children").
"""

from __future__ import annotations

import pytest

from sharkcage import Pool, ProcessPoolExecutor

from . import helpers

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("method", helpers.START_METHODS)
def test_task_creates_a_pool_and_maps_inside_it(method):
    with Pool(1, start_method=method) as pool:
        outer_pid, values, inner_pids = pool.apply_async(helpers.nested_map, (10,)).get(15)
        assert values == [x * x for x in range(10)]
        assert outer_pid not in inner_pids
        assert 1 <= len(inner_pids) <= 2
        # the pool is still fine afterwards
        assert pool.map(helpers.square, range(4)) == [0, 1, 4, 9]


def test_inner_pool_with_each_start_method():
    with Pool(1) as pool:
        for inner_method in helpers.START_METHODS:
            _, values, _ = pool.apply_async(helpers.nested_map, (5, 2, inner_method)).get(15)
            assert values == [0, 1, 4, 9, 16]


def test_nested_pools_in_parallel_outer_tasks():
    with Pool(2) as pool:
        results = pool.map_async(helpers.nested_imap, [3, 4, 5, 6], chunksize=1).get(20)
        assert results == [[x * x for x in range(n)] for n in (3, 4, 5, 6)]


def test_nested_executor_and_executor_outside():
    with ProcessPoolExecutor(2) as ex:
        assert ex.submit(helpers.nested_executor, 5).result(20) == [0, 1, 4, 9, 16]
    with Pool(1) as pool:
        assert pool.apply_async(helpers.nested_executor, (3,)).get(15) == [0, 1, 4]


def test_two_levels_of_nesting():
    with Pool(1) as pool:
        _, values, _ = pool.apply_async(helpers.nested_two_levels, (4,)).get(15)
        assert values == [0, 1, 4, 9]
