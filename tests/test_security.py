"""The embedded Ray: token authentication keeps clients without the token out, and a driver that
dies (SIGKILL) leaves no Ray process behind (the reaper). Ray 2.60 binds some listeners to every
interface whatever the node address; the README's security section names them."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from nfopt.cluster.reaper import _alive, descendants

pytest.importorskip("ray")

pytestmark = pytest.mark.slow  # starts Ray: seconds to a minute

DRIVER = textwrap.dedent(
    """
    import time
    import ray
    from nfopt.cluster import init_ray
    init_ray(num_cpus=1)
    print("GCS", ray._private.worker.global_worker.node.gcs_address, flush=True)
    time.sleep(300)
    """
)
CLIENT = textwrap.dedent(
    """
    import sys
    import ray
    try:
        ray.init(address=sys.argv[1], log_to_driver=False)
        print("CONNECTED")
    except Exception as err:
        print("REFUSED", type(err).__name__)
    """
)


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ADDRESS")}
    return {**env, **extra}


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="the reaper reads /proc (Linux)")
def test_embedded_ray_refuses_clients_without_the_token_and_dies_with_its_driver(tmp_path):
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_env()
    )
    try:
        line = ""
        deadline = time.monotonic() + 120
        while not line.startswith("GCS") and time.monotonic() < deadline:
            line = driver.stdout.readline()
            assert line or driver.poll() is None, "the driver exited before Ray started"
        assert line.startswith("GCS"), "Ray did not start within 120 s"
        gcs = line.split()[1]
        tree = descendants(driver.pid)
        names = {name for _, name in tree.values()}
        assert {"gcs_server", "raylet"} <= names, names
        # a client with no token (another user's HOME, token mode) is refused at once
        home = tmp_path / "home"
        home.mkdir()
        out = subprocess.run(
            [sys.executable, "-c", CLIENT, gcs],
            env=_env(HOME=str(home), RAY_AUTH_MODE="token"),
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
        assert "REFUSED AuthenticationError" in out, out
        # SIGKILL the driver: the reaper kills what Ray would orphan (dashboard / runtime-env agents)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        deadline = time.monotonic() + 30
        alive = tree
        while alive and time.monotonic() < deadline:
            time.sleep(0.5)
            alive = {pid: v for pid, v in tree.items() if _alive(pid, v[0])}
        assert not alive, f"left behind: {sorted(name for _, name in alive.values())}"
    finally:
        if driver.poll() is None:
            driver.kill()
