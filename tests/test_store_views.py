"""``backends/_store_views``: writable aliases only of Ray object-store memory.

What it does inside Ray (a worker writing to its argument, the driver to its
result) runs against a real Ray in test_backends_cluster.py; here, that it
leaves everything else alone, so a caller copies it as before.
"""

import mmap

import pytest

from sharkcage.backends import _store_views

np = pytest.importorskip("numpy")
pytestmark = pytest.mark.timeout(30)


def test_anything_that_is_not_the_object_store_is_returned_as_it_is():
    data = b"x" * 4096
    assert _store_views.writable(data) is data  # never write into a bytes object
    frozen = np.arange(1000.0)
    frozen.flags.writeable = False  # read-only heap memory
    view = memoryview(frozen)
    assert _store_views.writable(view) is view
    shared = mmap.mmap(-1, 1 << 16)  # a shared mapping, but not Ray's store file
    ro = memoryview(shared).toreadonly()
    assert _store_views.writable(ro) is ro
    writable = bytearray(100)
    assert _store_views.writable(writable) is writable  # already writable: nothing to do
    ro.release()
    view.release()
    shared.close()


def test_a_mapping_of_a_file_named_like_the_store_gets_a_writable_alias(tmp_path):
    path = tmp_path / "plasmaTEST01"  # Ray's store file is /dev/shm/plasmaXXXXXX
    path.write_bytes(bytes(1 << 16))
    with open(path, "r+b") as f:
        store = mmap.mmap(f.fileno(), 1 << 16)  # shared and writable, as Ray maps it
    ro = memoryview(store).toreadonly()
    alias = _store_views.writable(ro)
    assert alias is not ro and not alias.readonly and alias.nbytes == ro.nbytes
    alias[:3] = b"abc"
    assert bytes(ro[:3]) == b"abc"  # the same memory, not a copy
    arr = np.frombuffer(alias, dtype=np.uint8)
    arr[3] = 7
    assert store[3] == 7
    del arr, alias
    ro.release()
    store.close()
