"""Framing over one worker's socket: length-prefixed pickled messages.

Each worker has its own socketpair, so a worker that dies mid-write can only
spoil its own channel (DESIGN.md). The parent end is non-blocking and driven
by the supervisor's selector: :class:`ParentEnd` buffers partial reads and
queues writes until the socket is writable, so a worker busy on a long task
(which stops reading) can never freeze the supervisor. The worker end is
plain blocking I/O: a worker has nothing else to do.

Frame: 8-byte big-endian length, then a pickle of the message tuple.
"""

from __future__ import annotations

import pickle
import socket
import struct
from collections import deque

HEADER = struct.Struct("!Q")
_MAX_SEND = 1 << 20  # bytes per send() call; keeps each loop turn short
# recv() into one buffer kept per end: recv(n) allocates n bytes per call, and
# a large n is an mmap/munmap pair plus page faults on every message.
_RECV_BUFFER = 1 << 16


def encode(message) -> bytes:
    body = pickle.dumps(message, 5)
    return HEADER.pack(len(body)) + body


class ChannelClosed(Exception):
    """The other end is gone (EOF or a broken pipe)."""


class ParentEnd:
    """The supervisor's non-blocking end of one worker's channel."""

    __slots__ = ("sock", "fd", "_inbuf", "_out", "_out_offset", "_rbuf", "_rview")

    def __init__(self, sock: socket.socket):
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        self._inbuf = bytearray()
        self._rbuf = bytearray(_RECV_BUFFER)
        self._rview = memoryview(self._rbuf)
        self._out: deque[bytes] = deque()
        self._out_offset = 0

    # -- writing ------------------------------------------------------------
    def queue(self, data: bytes) -> None:
        self._out.append(data)

    def flush(self) -> bool:
        """Write what the socket takes now; True when everything went out."""
        out = self._out
        while out:
            head = out[0]
            try:
                view = memoryview(head)[self._out_offset : self._out_offset + _MAX_SEND]
                sent = self.sock.send(view)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as e:
                raise ChannelClosed(str(e)) from e
            self._out_offset += sent
            if self._out_offset >= len(head):
                out.popleft()
                self._out_offset = 0
        return True

    def has_output(self) -> bool:
        """Queued bytes not written yet."""
        return bool(self._out)

    # -- reading ------------------------------------------------------------
    def read_messages(self) -> list:
        """Everything complete that has arrived; raises ChannelClosed on EOF."""
        buf = self._inbuf
        eof = False
        while True:
            try:
                n = self.sock.recv_into(self._rbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                eof = True
                break
            if not n:
                eof = True
                break
            buf += self._rview[:n]
            if n < _RECV_BUFFER:
                break
        messages = []
        pos = 0
        n = len(buf)
        while n - pos >= 8:
            (size,) = HEADER.unpack_from(buf, pos)
            if n - pos - 8 < size:
                break
            messages.append(bytes(buf[pos + 8 : pos + 8 + size]))
            pos += 8 + size
        if pos:
            del buf[:pos]
        if eof and not messages:
            raise ChannelClosed("worker closed its channel")
        return messages

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class WorkerEnd:
    """The worker's blocking end."""

    def __init__(self, sock: socket.socket):
        sock.setblocking(True)
        self.sock = sock
        self._buf = bytearray()
        self._rbuf = bytearray(_RECV_BUFFER)
        self._rview = memoryview(self._rbuf)

    def send(self, message) -> None:
        self.sock.sendall(encode(message))

    def _fill(self, need: int) -> None:
        while len(self._buf) < need:
            n = self.sock.recv_into(self._rbuf)
            if not n:
                raise ChannelClosed("the parent closed the channel")
            self._buf += self._rview[:n]

    def recv(self):
        """The next message; raises ChannelClosed when the parent is gone."""
        self._fill(8)
        (size,) = HEADER.unpack_from(self._buf, 0)
        self._fill(8 + size)
        body = bytes(self._buf[8 : 8 + size])
        del self._buf[: 8 + size]
        return pickle.loads(body)

    def has_buffered(self) -> bool:
        return len(self._buf) > 0

