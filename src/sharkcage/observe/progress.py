"""A progress bar that counts successes and failures: :class:`ProgressBar`.

A thin wrapper over ``tqdm.auto.tqdm`` (a widget in Jupyter, text elsewhere)
that the engine drives with one call per finished task. Failures are part of
the picture: the bar's postfix reads ``ok=N err=M``, so a map that is quietly
failing half its tasks is visible while it runs, not only when ``get()``
raises at the end.

>>> import io
>>> out = io.StringIO()
>>> with ProgressBar(total=3, desc="square", enabled=True, file=out) as bar:
...     bar.ok(); bar.ok(); bar.error()
>>> "ok=2 err=1" in out.getvalue() and "3/3" in out.getvalue()
True
"""

from __future__ import annotations

import sys
import threading
from typing import IO, Any

__all__ = ["ProgressBar"]


def _interactive(stream: IO[str] | None) -> bool:
    """True when a person is watching: a terminal on ``stream``, or a Jupyter kernel.

    A notebook's stderr is a pipe, not a TTY, yet its cell shows the widget,
    so the kernel counts as interactive (CONTRACT: the bar is notebook-aware).
    """
    try:
        if stream is not None and stream.isatty():
            return True
    except (AttributeError, ValueError):  # replaced or closed stream
        pass
    ipython = sys.modules.get("IPython")
    if "ipykernel" in sys.modules and ipython is not None:
        try:
            shell = ipython.get_ipython()
        except Exception:
            return False
        return shell is not None and "IPKernelApp" in getattr(shell, "config", {})
    return False


class ProgressBar:
    """Tasks done out of ``total``, with rate, ETA and ``ok=N err=M`` counts.

    ``enabled=None`` shows the bar only when someone can see it (stderr is a
    terminal, or the code runs in a Jupyter kernel) so batch jobs and CI logs
    stay clean; ``True`` forces it, ``False`` makes every method a no-op that
    costs one attribute check. ``total=None`` (a lazy ``imap`` input) counts
    without a percentage until :meth:`set_total` is told the size.

    Every method may be called from any thread: one lock serialises them, as
    tqdm's own objects are not safe to update concurrently. ``close()`` is
    idempotent, and calls after it are ignored, so a late result arriving
    while the pool shuts down cannot resurrect or break the bar.

    >>> bar = ProgressBar(total=2, desc="quiet", enabled=False)
    >>> bar.ok(); bar.error(); bar.close()
    >>> (bar.enabled, bar.ok_count, bar.error_count)
    (False, 1, 1)
    """

    def __init__(self, total: int | None, desc: str = "sharkcage", enabled: bool | None = None,
                 *, file: IO[str] | None = None, **tqdm_kwargs: Any):
        self._lock = threading.Lock()
        self._ok = 0
        self._err = 0
        self._closed = False
        self._bar = None
        if enabled is None:
            enabled = _interactive(file if file is not None else sys.stderr)
        if not enabled:
            return
        # Imported only for a visible bar: a disabled one must not pay tqdm's import.
        if file is not None:
            # tqdm.auto's notebook widget ignores ``file``; an explicit stream means text.
            from tqdm.std import tqdm
            tqdm_kwargs["file"] = file
        else:
            from tqdm.auto import tqdm
        tqdm_kwargs.setdefault("unit", "task")
        tqdm_kwargs.setdefault("dynamic_ncols", True)
        self._bar = tqdm(total=total, desc=desc, **tqdm_kwargs)
        self._bar.set_postfix_str(self._postfix(), refresh=False)

    @property
    def enabled(self) -> bool:
        """Whether a bar is drawn (False for the no-op object).

        >>> ProgressBar(None, "x", enabled=False).enabled
        False
        """
        return self._bar is not None

    @property
    def ok_count(self) -> int:
        """Tasks counted by :meth:`ok` so far (counted even when disabled).

        >>> b = ProgressBar(None, "x", enabled=False); b.ok(3); b.ok_count
        3
        """
        return self._ok

    @property
    def error_count(self) -> int:
        """Tasks counted by :meth:`error` so far (counted even when disabled).

        >>> b = ProgressBar(None, "x", enabled=False); b.error(); b.error_count
        1
        """
        return self._err

    def _postfix(self) -> str:
        return f"ok={self._ok} err={self._err}"

    def _advance(self, n: int) -> None:
        bar = self._bar
        if bar is None or self._closed:
            return
        # refresh=False: tqdm's update() already redraws at most every
        # mininterval, so a 100k-task map does not repaint 100k times.
        bar.set_postfix_str(self._postfix(), refresh=False)
        bar.update(n)

    def ok(self, n: int = 1) -> None:
        """Count ``n`` tasks that finished successfully.

        >>> ProgressBar(1, "x", enabled=False).ok()
        """
        with self._lock:
            if self._closed:
                return
            self._ok += n
            self._advance(n)

    def error(self, n: int = 1) -> None:
        """Count ``n`` tasks that failed (raised, crashed, timed out or were cancelled).

        >>> ProgressBar(1, "x", enabled=False).error()
        """
        with self._lock:
            if self._closed:
                return
            self._err += n
            self._advance(n)

    def set_total(self, total: int | None) -> None:
        """Tell the bar how many tasks there are once it is known (e.g. a lazy input ran out).

        >>> b = ProgressBar(None, "x", enabled=False); b.set_total(10)
        """
        with self._lock:
            if self._bar is not None and not self._closed:
                self._bar.total = total
                self._bar.refresh()

    def close(self) -> None:
        """Draw the final counts and release the bar; safe to call twice.

        >>> b = ProgressBar(1, "x", enabled=False); b.close(); b.close()
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._bar is not None:
                self._bar.set_postfix_str(self._postfix(), refresh=False)
                self._bar.close()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("on" if self._bar is not None else "off")
        return f"<ProgressBar {state} ok={self._ok} err={self._err}>"
