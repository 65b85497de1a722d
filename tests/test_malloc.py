"""nfopt's allocator setting applies in its own processes, is idempotent and can be turned off."""

import subprocess
import sys

import pytest

import nfopt


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tune_allocator_applies_once_and_respects_the_opt_out():
    code = "import nfopt; print(nfopt.tune_allocator(), nfopt.tune_allocator())"
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert on == ["True", "True"]
    off = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"NFOPT_MALLOC": "default"}
    ).stdout.split()
    assert off == ["False", "False"]


def test_importing_nfopt_leaves_the_users_allocator_alone():
    code = "import nfopt, nfopt._malloc as m; nfopt.load_optimizer('nfn_np_small'); print(m._applied)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
    assert callable(nfopt.tune_allocator)
