"""Shared fixtures: every test must leave no process, fd, thread or /dev/shm entry behind.

Hangs are sharkcage's failure mode, so every test has a timeout
(pytest-timeout, see pyproject.toml) and an autouse fixture checks, after
each test, that the children it started are gone: it waits a moment for
them, kills what is left (so one leak never poisons the next test) and
fails the test that leaked. A session-level fixture compares fds, threads
and /dev/shm entries before and after the whole run.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time

import psutil
import pytest


def _long_lived_pids() -> set[int]:
    """Helpers the stdlib keeps for the whole interpreter: not leaks."""
    pids = set()
    try:
        from multiprocessing import forkserver, resource_tracker

        if forkserver._forkserver._forkserver_pid:
            pids.add(forkserver._forkserver._forkserver_pid)
        if resource_tracker._resource_tracker._pid:
            pids.add(resource_tracker._resource_tracker._pid)
    except Exception:
        pass
    zygote = sys.modules.get("sharkcage._engine.zygote")
    if zygote is not None:
        pids |= zygote.service_pids()
    return pids


def _children() -> dict[int, psutil.Process]:
    me = psutil.Process()
    keep = _long_lived_pids()
    out = {}
    for p in me.children(recursive=True):
        try:
            if p.pid in keep or p.status() == psutil.STATUS_ZOMBIE and p.ppid() in keep:
                continue
            out[p.pid] = p
        except psutil.Error:
            continue
    # children of the forkserver are ours too (workers), found by ancestry
    for pid in keep:
        try:
            for p in psutil.Process(pid).children(recursive=True):
                if p.pid not in keep:
                    out[p.pid] = p
        except psutil.Error:
            pass
    return out


def leftover_children(before: set[int], wait: float = 3.0) -> list[psutil.Process]:
    deadline = time.monotonic() + wait
    while True:
        left = [p for pid, p in _children().items() if pid not in before and _alive(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _shm_entries() -> set[str]:
    try:
        return set(os.listdir("/dev/shm"))
    except OSError:
        return set()


@pytest.fixture(autouse=True)
def no_leftover_children():
    before = set(_children())
    yield
    left = leftover_children(before)
    if left:
        desc = []
        for p in left:
            try:
                desc.append(f"{p.pid} {p.name()} {' '.join(p.cmdline())[:120]}")
            except psutil.Error:
                desc.append(str(p.pid))
            try:
                p.kill()
            except psutil.Error:
                pass
        pytest.fail("test left child processes behind:\n" + "\n".join(desc))


def _fd_targets() -> dict[int, str]:
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass
    return out


@pytest.fixture(scope="session", autouse=True)
def session_leak_check():
    fds_before = _fd_targets()
    shm_before = _shm_entries()
    yield
    # Threads: sharkcage's own threads end with their pools.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        threads = [t for t in threading.enumerate() if t.name.startswith("sharkcage")]
        if not threads:
            break
        time.sleep(0.05)
    assert not threads, f"sharkcage threads left running: {[t.name for t in threads]}"
    # Every segment sharkcage makes is named "sc<pid>..." (pools, workers,
    # SharedArray, shares): those must all be gone. Other names (the stdlib's
    # sem.mp-*, loky's) can come from any process on the machine — a
    # benchmark or a second test run — so they are not ours to judge.
    deadline = time.monotonic() + 5
    while True:
        new_shm = {n for n in _shm_entries() - shm_before if re.match(r"sc\d", n)}
        if not new_shm or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    assert not new_shm, f"/dev/shm entries left behind: {sorted(new_shm)}"
    # fds opened once per interpreter, not per pool, are named and set
    # aside: sharkcage's zygote socket, the resource tracker's pipe, the
    # stdlib forkserver's alive pipe (the compat tests' reference pools use
    # one) and the stdlib heap's arenas (RawArray of fork-context pools).
    # What is left must be (almost) nothing.
    after = _fd_targets()
    once = _once_per_interpreter_fds(after)
    new = {fd: target for fd, target in after.items() if fds_before.get(fd) != target}
    unexplained = sorted(f"{fd} -> {target}" for fd, target in new.items() if fd not in once)
    # A Ray driver keeps about a dozen fds (its log and GCS clients) after
    # ray.shutdown(), for the rest of the interpreter: not ours.
    allowance = 2 + (16 if "ray" in sys.modules else 0)
    assert len(unexplained) <= allowance, (
        f"fd leak: {len(fds_before)} fds before the session, {len(after)} after; new and unexplained: "
        f"{unexplained}; once per interpreter: {sorted(once)}"
    )


def _once_per_interpreter_fds(targets: dict[int, str]) -> set[int]:
    fds = {fd for fd, target in targets.items() if target.startswith("/dev/shm/pym-")}  # stdlib heap arenas
    from sharkcage._engine import zygote

    z = zygote._zygote
    if z is not None:
        try:
            fds.add(z.sock.fileno())
        except OSError:
            pass
    tracker = sys.modules.get("multiprocessing.resource_tracker")
    if tracker is not None and tracker._resource_tracker._fd is not None:
        fds.add(tracker._resource_tracker._fd)
    forkserver = sys.modules.get("multiprocessing.forkserver")
    if forkserver is not None and forkserver._forkserver._forkserver_alive_fd is not None:
        fds.add(forkserver._forkserver._forkserver_alive_fd)
    return fds


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running soak and scale tests (run with -m slow)")
