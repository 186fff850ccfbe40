"""Imported by the forkserver at start: preload the parent's packages.

The list comes from ``SHARKCAGE_PRELOAD`` (set by start.ensure_forkserver).
Every import is guarded: a package that fails to import here simply is not
preloaded, and the worker imports it on demand as usual.
"""

import importlib
import os

for _name in filter(None, os.environ.get("SHARKCAGE_PRELOAD", "").split(",")):
    try:
        importlib.import_module(_name)
    except BaseException:  # noqa: BLE001 - a preload must never kill the forkserver
        pass

# Workers need these anyway; importing them here makes every start cheaper.
import sharkcage._engine.worker  # noqa: E402,F401
