"""The supervisor's readiness poller: what ``selectors`` does, plus ``mute``.

The direct path (see supervisor.py) lends a worker's channel to a caller
thread for one task: the loop must stop watching that channel and watch it
again a few microseconds later, once per task. With ``selectors`` that is
an unregister and a register, each building keys in Python; on Linux this
is one ``epoll_ctl`` each way (mask 0, then the mask back). Elsewhere it
falls back to ``selectors`` and un/re-registers.

>>> import os
>>> r, w = os.pipe()
>>> p = Poller()
>>> p.register(r, READ, "pipe")
>>> _ = os.write(w, b"x")
>>> p.select(1.0)
[('pipe', 1)]
>>> p.mute(r); p.select(0)
[]
>>> p.unmute(r); p.select(0)
[('pipe', 1)]
>>> p.close(); os.close(r); os.close(w)
"""

from __future__ import annotations

import select
import selectors

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE


class _EpollPoller:
    """fd -> (events, data) over one epoll object."""

    def __init__(self):
        self._ep = select.epoll()
        self._keys: dict[int, list] = {}  # fd -> [events, data]

    @staticmethod
    def _mask(events: int) -> int:
        return (select.EPOLLIN if events & READ else 0) | (select.EPOLLOUT if events & WRITE else 0)

    def register(self, fd: int, events: int, data) -> None:
        if fd in self._keys:
            raise KeyError(f"fd {fd} is already registered")
        self._ep.register(fd, self._mask(events))
        self._keys[fd] = [events, data]

    def unregister(self, fd: int) -> None:
        del self._keys[fd]  # KeyError when not registered, as selectors
        try:
            self._ep.unregister(fd)
        except OSError:  # closed already: the kernel dropped it
            pass

    def modify(self, fd: int, events: int) -> None:
        key = self._keys[fd]
        if key[0] != events:
            self._ep.modify(fd, self._mask(events))
            key[0] = events

    def mute(self, fd: int) -> None:
        """No events for ``fd`` but a hang-up or an error until :meth:`unmute`."""
        if fd not in self._keys:
            raise KeyError(f"fd {fd} is not registered")
        self._ep.modify(fd, 0)

    def unmute(self, fd: int) -> None:
        self._ep.modify(fd, self._mask(self._keys[fd][0]))

    def select(self, timeout: float | None) -> list:
        """``[(data, events)]`` ready within ``timeout`` seconds (None: no limit)."""
        if timeout is not None and timeout <= 0:
            timeout = 0
        ready = []
        keys = self._keys
        for fd, ev in self._ep.poll(-1 if timeout is None else timeout, max(1, len(keys))):
            key = keys.get(fd)
            if key is None:
                continue  # unregistered by another thread since the kernel reported it
            events = (READ if ev & ~select.EPOLLOUT else 0) | (WRITE if ev & ~select.EPOLLIN else 0)
            ready.append((key[1], events & key[0]))
        return ready

    def close(self) -> None:
        self._ep.close()
        self._keys.clear()


class _SelectorsPoller:
    """The same on ``selectors.DefaultSelector`` (no epoll): mute unregisters."""

    def __init__(self):
        self._sel = selectors.DefaultSelector()
        self._muted: dict[int, tuple] = {}

    def register(self, fd: int, events: int, data) -> None:
        self._sel.register(fd, events, data)

    def unregister(self, fd: int) -> None:
        if self._muted.pop(fd, None) is None:
            self._sel.unregister(fd)

    def modify(self, fd: int, events: int) -> None:
        if fd in self._muted:
            self._muted[fd] = (events, self._muted[fd][1])
            return
        key = self._sel.get_key(fd)
        if key.events != events:
            self._sel.modify(fd, events, key.data)

    def mute(self, fd: int) -> None:
        key = self._sel.unregister(fd)
        self._muted[fd] = (key.events, key.data)

    def unmute(self, fd: int) -> None:
        events, data = self._muted.pop(fd)
        self._sel.register(fd, events, data)

    def select(self, timeout: float | None) -> list:
        return [(key.data, events) for key, events in self._sel.select(timeout)]

    def close(self) -> None:
        self._sel.close()
        self._muted.clear()


Poller = _EpollPoller if hasattr(select, "epoll") else _SelectorsPoller
