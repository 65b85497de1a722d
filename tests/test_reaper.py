"""The watchdog (``nfopt.cluster.reaper``) without Ray: a driver's descendants, also one started
after the watchdog slowed its rescans, die with the driver; a gone driver returns at once.
(The Ray-wide check, agents and all: ``tests/test_security.py``.)"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from nfopt.cluster.reaper import _alive, _stat, reap_after, start_reaper

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="the reaper reads /proc (Linux)")

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]
DRIVER = textwrap.dedent(
    f"""
    import subprocess, sys, time
    print(subprocess.Popen({SLEEPER!r}).pid, flush=True)
    time.sleep(float(sys.argv[1]))  # the watchdog finds nothing new meanwhile and rescans less often
    print(subprocess.Popen({SLEEPER!r}).pid, flush=True)
    time.sleep(120)
    """
)


def test_descendants_die_with_the_driver_also_one_started_late():
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, "3"], stdout=subprocess.PIPE, text=True)
    reaper = start_reaper(driver.pid)
    try:
        kids = [int(driver.stdout.readline())]
        kids.append(int(driver.stdout.readline()))  # ~3 s later: the rescans are ~2-4 s apart by now
        stamps = {k: _stat(k)[1] for k in kids}  # start times: a recycled pid is not the child
        time.sleep(4.5)  # one rescan at most max_interval (4 s) after the late child started
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(_alive(k, stamps[k]) for k in kids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [k for k in kids if _alive(k, stamps[k])], "the driver's children outlived it"
        assert reaper.wait(timeout=10) == 0
    finally:
        for p in (driver, reaper):
            if p.poll() is None:
                p.kill()


def test_a_driver_already_gone_returns_at_once():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    t0 = time.monotonic()
    assert reap_after(gone.pid) == []
    assert time.monotonic() - t0 < 1.0
