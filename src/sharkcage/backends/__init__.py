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
    """The backend called ``kind``; a clear error for an unknown one.

    ``"dask"`` and ``"ray"`` are imported only here, so ``import sharkcage``
    never imports Dask or Ray; without the extra installed the error says
    which one to install.

    >>> from sharkcage.backends import create_backend
    >>> create_backend("spark")
    Traceback (most recent call last):
        ...
    ValueError: unknown backend 'spark'; choose 'local', 'dask' or 'ray'
    """
    if kind == "local":
        if address is not None:
            raise ValueError("address= is for cluster backends (backend='dask' or 'ray'); the local backend takes none")
        return make_local_backend(**options)
    if kind == "dask":
        from sharkcage.backends.dask import make_dask_backend

        return make_dask_backend(address=address, **options)
    if kind == "ray":
        from sharkcage.backends.ray import make_ray_backend

        return make_ray_backend(address=address, **options)
    raise ValueError(f"unknown backend {kind!r}; choose 'local', 'dask' or 'ray'")
