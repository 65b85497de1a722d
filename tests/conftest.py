import os

# In-process Ray clusters of the tests run without token auth, all of them: Ray reads the mode
# once per process (at import), so one test's cluster must not set it for the next. The embedded
# default of `nfopt run` (token auth on) is tested in a subprocess (tests/test_security.py).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import pytest
import torch
from hypothesis import HealthCheck, settings

from tests.helpers import TINY_SUITE

settings.register_profile(
    "nfopt",
    max_examples=int(os.environ.get("NFOPT_HYPOTHESIS_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("nfopt")


@pytest.fixture(scope="module")
def ray_session():
    """An embedded local Ray shared by the tests of a module, shut down after it (a session-wide
    one would interfere with test_submit's separately started head)."""
    ray = pytest.importorskip("ray")
    from nfopt.cluster import init_ray

    init_ray(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture
def tiny_suite(tmp_path):
    """Path of a YAML file holding :data:`tests.helpers.TINY_SUITE`."""
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SUITE)
    return path


@pytest.fixture
def no_tf32():
    """Full float32 products on a GPU for the test (what meta-training's CUDA workers set: TF32's
    10-bit mantissa would swamp the differences the CUDA tests compare)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` skip where no CUDA device is (CI); ``pytest -m cuda`` runs them on one."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
