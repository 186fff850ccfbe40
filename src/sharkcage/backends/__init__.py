"""Backends: where a pool's tasks run, behind one small interface.

The facades (:class:`sharkcage.Pool`, :class:`sharkcage.ProcessPoolExecutor`)
speak only :class:`Backend`; ``local`` is the supervised engine of
``sharkcage._engine``. Remote engines (Dask, Ray) plug in here without
touching the facades.
"""

from sharkcage.backends.base import Backend
from sharkcage.backends.local import make_local_backend

__all__ = ["Backend", "make_local_backend", "create_backend"]


def create_backend(kind: str, *, address=None, **options) -> Backend:
    """The backend called ``kind``; a clear error for an unknown one."""
    name = kind
    if name == "local":
        if address is not None:
            raise ValueError("address= is for cluster backends (backend='dask' or 'ray'); the local backend takes none")
        return make_local_backend(**options)
    if name in ("dask", "ray"):
        raise ValueError(
            f"backend={name!r} is not available in this version of sharkcage; "
            "use backend='local' (the default)"
        )
    raise ValueError(f"unknown backend {name!r}; choose 'local'")
