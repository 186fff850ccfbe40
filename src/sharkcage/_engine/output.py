"""Worker stdout/stderr to the parent's streams, line by line (``label_output=True``).

By default a worker writes straight to the file descriptors it inherited, as
the stdlib's do. With ``label_output=True`` its fds 1 and 2 are sockets
instead; the supervisor reads them (never blocking: they are in its
selector), cuts complete lines, and hands them to one writer thread that
writes ``[worker N] line`` to the parent's *current* ``sys.stdout`` /
``sys.stderr`` — so pytest's capture or a notebook sees them. The writer has
a bounded queue: if the parent's stream stops taking output, lines are
dropped and counted (the pool itself never waits on a stream).
"""

from __future__ import annotations

import queue
import socket
import sys
import threading

from sharkcage._engine.start import mark_own_thread

MAX_QUEUED_LINES = 10_000
_MAX_PARTIAL = 1 << 16  # a "line" longer than this is cut


class OutputPipe:
    """The parent's end of one worker stream (1 = stdout, 2 = stderr)."""

    __slots__ = ("sock", "fd", "stream", "label", "_partial")

    def __init__(self, sock: socket.socket, stream: int, label: str):
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        self.stream = stream
        self.label = label
        self._partial = b""

    def read_lines(self) -> tuple[list[bytes], bool]:
        """Complete lines that arrived, and whether the worker closed the stream."""
        data = b""
        eof = False
        while True:
            try:
                chunk = self.sock.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                eof = True
                break
            if not chunk:
                eof = True
                break
            data += chunk
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > _MAX_PARTIAL:
            lines.append(self._partial)
            self._partial = b""
        if eof and self._partial:
            lines.append(self._partial)
            self._partial = b""
        return lines, eof

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class LineWriter:
    """One thread per pool writing forwarded lines to the parent's streams."""

    def __init__(self, name: str):
        self._queue: queue.Queue = queue.Queue(MAX_QUEUED_LINES)
        self.dropped = 0
        self._thread = mark_own_thread(threading.Thread(target=self._run, name=name, daemon=True))
        self._thread.start()

    def put(self, stream: int, label: str, line: bytes) -> None:
        try:
            self._queue.put_nowait((stream, label, line))
        except queue.Full:
            self.dropped += 1

    def stop(self) -> None:
        try:
            self._queue.put(None, timeout=1.0)
        except queue.Full:
            pass

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            stream, label, line = item
            target = sys.stdout if stream == 1 else sys.stderr
            try:
                target.write(f"{label}{line.decode(errors='replace')}\n")
                target.flush()
            except Exception:  # a closed or broken stream: drop, never die
                self.dropped += 1


class InheritedFd:
    """The parent's fd 1 or 2 *at worker start*, handed to the worker.

    A worker forked from the zygote would otherwise write to the fds the
    parent had when the zygote was forked; a parent that redirected its
    stdout since (pytest's capfd, a daemon re-opening its log) must see its
    workers' output where its own goes now. Pickled for a forkserver or spawn
    child as a passed fd; a fork child simply has it.
    """

    __slots__ = ("fd",)

    def __init__(self, fd: int):
        self.fd = fd

    def __reduce__(self):
        from multiprocessing import reduction

        return (_rebuild_inherited, (reduction.DupFd(self.fd),))


def _rebuild_inherited(dup) -> int:
    return dup.detach()


def parent_stdio() -> tuple | None:
    """The parent's current fds 1 and 2, to give each new worker (None if closed)."""
    import os

    try:
        os.fstat(1)
        os.fstat(2)
    except OSError:
        return None
    return (InheritedFd(1), InheritedFd(2))


def adopt_worker_streams(out, err) -> None:
    """Worker side: fds 1 and 2 become ``out``/``err`` (sockets of the
    supervisor with label_output, or the parent's fds), and Python's
    ``sys.stdout``/``sys.stderr`` are fresh line-buffered files on them.

    Fresh, because a worker forked from the zygote inherits the parent's
    Python stream *objects* of that moment — a test harness's StringIO, or a
    file whose fd the zygote closed — as a spawned process never would.
    """
    import os

    for src, fd in ((out, 1), (err, 2)):
        if isinstance(src, InheritedFd):
            src = src.fd
        if isinstance(src, socket.socket):
            os.dup2(src.fileno(), fd)
            src.close()
        elif isinstance(src, int) and src != fd:
            os.dup2(src, fd)
            os.close(src)
    for name, fd in (("stdout", 1), ("stderr", 2)):
        try:  # buffering=1: line-buffered text, so lines leave as they are printed
            stream = open(fd, "w", buffering=1, closefd=False, encoding="utf-8", errors="backslashreplace")
        except (OSError, ValueError):
            continue
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)
