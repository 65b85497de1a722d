"""The JAX peer of ``bench/meta_throughput.py`` optimizes with the same rule as nfopt: at its
zero-head initialisation both are Adam at lr 0.01 under the same ``tanh`` bound, and one jitted
PES outer step runs on nfopt's task."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")

ANCHOR = Path(__file__).resolve().parents[1] / "bench" / "anchors" / "jax_pes.py"


def _anchor():
    spec = importlib.util.spec_from_file_location("jax_pes", ANCHOR)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["jax_pes"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_untrained_jax_rule_matches_nfopts_untrained_rule():
    from nfopt.lopt import LearnedUpdateRule
    from nfopt.lopt.features import FeatureConfig
    from nfopt.weightspace import NetworkSpec, WeightSpaceFeatures

    a = _anchor()
    theta = a.init_lopt(jax.random.PRNGKey(0))
    cfg = FeatureConfig(loss_features=False, fraction=False, tensor_features=False)
    rule = LearnedUpdateRule("mlp", features=cfg, step_mult=0.01, lr_head=False)
    spec = NetworkSpec(((3, 4),))
    gen = torch.Generator().manual_seed(0)
    w, b = torch.randn(3, 4, generator=gen), torch.randn(3, generator=gen)
    state = rule.init(spec, 1)
    jw, jm, jv = np.asarray(w), np.zeros((6, 3, 4), np.float32), np.zeros((3, 4), np.float32)
    for t in range(1, 6):
        gw, gb = torch.randn(3, 4, generator=gen), torch.randn(3, generator=gen)
        params = WeightSpaceFeatures([w[None, None]], [b[None, None]])
        grads = WeightSpaceFeatures([gw[None, None]], [gb[None, None]])
        with torch.no_grad():
            new, state = rule.update(None, state, params, grads)
        w, b = new.weights[0][0, 0], new.biases[0][0, 0]
        jw, jm, jv = a.lopt_update(theta, jw, np.asarray(gw), jm, jv, jax.numpy.asarray(t))
        np.testing.assert_allclose(np.asarray(jw), w.numpy(), rtol=1e-5, atol=1e-6)


def test_one_pes_step_on_nfopts_task():
    a = _anchor()
    pes = a.JaxPES(a.from_nfopt_task(), tasks=1, population=2, unroll=2)
    assert np.isfinite(pes.step()) and pes.inner_steps_per_outer_step == 8
