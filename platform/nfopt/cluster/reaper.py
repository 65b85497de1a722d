"""A watchdog that leaves no embedded-Ray process behind a driver that died.

When a driver that started an embedded Ray is killed (SIGKILL, OOM), Ray's GCS and raylet go
with it, but some of its agents (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) are
re-parented to init and keep their ports open. :func:`start_reaper` starts this module as a
separate process (its own session, so a signal to the driver's group does not reach it): it
records every descendant of the driver and, once the driver is gone, kills those still alive
(matched by pid *and* start time, so a recycled pid is never hit).

Its own cost stays near zero while the driver works: it sleeps in ``poll`` on a pidfd of the
driver (woken by the driver's exit, not by a timer), and rescans the process table every
``interval`` seconds while the driver's tree changes (Ray starting its agents and workers),
doubling the pause up to ``max_interval`` while it does not. Scanning every 0.5 s took ~1% of a
core (``/proc/*/stat`` of ~100 processes per scan): on 2 cores, a share of what two busy workers
lose to the machine's background.

Run as ``python reaper.py DRIVER_PID`` (standard library only: it starts in milliseconds).
Linux (reads ``/proc``); elsewhere it exits at once and Ray's own clean-up is all there is.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

__all__ = ["descendants", "reap_after", "start_reaper"]

PROC = "/proc"


def _stat(pid: int) -> tuple[int, int, str] | None:
    """``(ppid, start time, name)`` of ``pid`` from ``/proc/<pid>/stat``; ``None`` when gone."""
    try:
        with open(f"{PROC}/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    name = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[19]), name  # ppid, starttime (clock ticks since boot)


def descendants(pid: int) -> dict[int, tuple[int, str]]:
    """``{pid: (start time, name)}`` of every living descendant of ``pid``."""
    table = {}
    for entry in os.listdir(PROC):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            table[int(entry)] = st
    children: dict[int, list[int]] = {}
    for child, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(child)
    out, todo = {}, list(children.get(pid, []))
    while todo:
        c = todo.pop()
        out[c] = (table[c][1], table[c][2])
        todo.extend(children.get(c, []))
    return out


def _alive(pid: int, started: int | None = None) -> bool:
    st = _stat(pid)
    if st is None or (started is not None and st[1] != started):
        return False
    try:
        with open(f"{PROC}/{pid}/status") as f:
            return "\tZ" not in next((line for line in f if line.startswith("State:")), "")
    except OSError:
        return False


def _waiter(pid: int):
    """A function ``wait(seconds)`` that returns when ``pid`` exits or ``seconds`` pass: a poll on
    a pidfd where the kernel has them (Linux 5.3), a sleep elsewhere."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd (old kernel / Python), or already gone
        return time.sleep
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return lambda seconds: poller.poll(seconds * 1000)


def reap_after(driver_pid: int, interval: float = 0.5, max_interval: float = 4.0) -> list[int]:
    """Watch ``driver_pid``; when it exits, kill its recorded descendants. Returns their pids.

    The descendants are rescanned ``interval`` seconds after a scan that found a new one, and
    after twice the last pause (at most ``max_interval``) otherwise."""
    if not os.path.isdir(PROC):
        return []
    me = os.getpid()
    known: dict[int, int] = {}
    started = (_stat(driver_pid) or (0, None, ""))[1]
    wait, pause = _waiter(driver_pid), interval
    while _alive(driver_pid, started):
        found = {pid: st for pid, (st, _) in descendants(driver_pid).items() if pid != me}
        pause = interval if found.keys() - known.keys() else min(2 * pause, max_interval)
        known.update(found)
        wait(pause)
    killed = []
    for pid, st in known.items():
        if _alive(pid, st):
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except OSError:
                pass
    return killed


def start_reaper(driver_pid: int | None = None) -> subprocess.Popen:
    """Start the watchdog for ``driver_pid`` (default: this process) in its own session."""
    return subprocess.Popen(
        # this file by path, not ``-m nfopt.cluster.reaper``: importing the package would import
        # Ray and torch (seconds on a busy machine, during which the driver may already be gone)
        [sys.executable, "-I", __file__, str(driver_pid or os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


if __name__ == "__main__":
    reap_after(int(sys.argv[1]))
