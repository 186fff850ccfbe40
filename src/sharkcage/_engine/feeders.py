"""Bookkeeping of the lazy-input feeders, shared by every engine."""

from __future__ import annotations

import threading
import weakref


class FeederRegistry:
    """The lazy-input feeders of one backend (see ``_engine.batching.Feeder``).

    Shared by every engine: a pool that is closing waits for its feeders (as
    the stdlib's imap keeps feeding after ``close()``), and an executor's
    ``shutdown()`` stops them. ``_feeders_changed()`` wakes the engine's loop.
    """

    def _init_feeders(self) -> None:
        self._feeder_lock = threading.Lock()
        self._feeders = 0
        self._feeder_set: "weakref.WeakSet" = weakref.WeakSet()

    def feeder_started(self, feeder=None) -> None:
        with self._feeder_lock:
            self._feeders += 1
            if feeder is not None:
                self._feeder_set.add(feeder)

    def feeder_finished(self) -> None:
        with self._feeder_lock:
            self._feeders -= 1
        self._feeders_changed()

    def stop_feeders(self, reason: str) -> None:
        """Lazy inputs pull nothing more (executor shutdown); each says where it stopped."""
        with self._feeder_lock:
            feeders = list(self._feeder_set)
        for f in feeders:
            f.stop(reason)

    def feeders_running(self) -> int:
        with self._feeder_lock:
            return self._feeders

    def _feeders_changed(self) -> None:  # pragma: no cover - every engine overrides it
        raise NotImplementedError
