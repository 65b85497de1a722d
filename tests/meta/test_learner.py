"""The learner's outer step on a scripted pool: task-weighted mean of the finite estimates,
global-norm clipping, Adam, parameter averaging, and resuming checkpoints of both Adam layouts
(one flat θ now, one parameter per θ tensor before)."""

import math

import pytest
import torch

from nfopt.meta import Learner
from nfopt.meta.messages import Estimate


class ScriptedPool:
    """Returns the given estimates (θ-shaped gradients, task counts) on every call."""

    size = 1

    def __init__(self, grads: list[dict], tasks: list[int]) -> None:
        self.grads, self.tasks = grads, tasks

    def estimate_all(self, theta):
        return [
            Estimate({k: v.clone() for k, v in g.items()}, n, {"meta_loss": 1.0, "nonfinite": 0, "compute_s": 0.0})
            for g, n in zip(self.grads, self.tasks)
        ]

    def get_states(self):
        return [None]

    def set_states(self, states):
        pass


def _theta(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(3, 4, generator=g), "a.bias": torch.randn(3, generator=g), "s": torch.randn(())}


def _reference_steps(theta, grads, tasks, steps, lr, clip, opt_state=None):
    """The outer step written out per tensor with torch's single-tensor Adam."""
    params = {k: v.clone().requires_grad_() for k, v in theta.items()}
    opt = torch.optim.Adam(params.values(), lr=lr, foreach=False)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    finite = [all(torch.isfinite(v).all() for v in g.values()) for g in grads]
    good = [(g, n) for g, n, ok in zip(grads, tasks, finite) if ok]
    total = sum(n for _, n in good)
    mean = {k: sum(g[k] * n for g, n in good) / total for k in theta}
    norm = math.sqrt(sum(float(v.square().sum()) for v in mean.values()))
    scale = min(1.0, clip / (norm + 1e-12)) if clip else 1.0
    for _ in range(steps):
        for k, p in params.items():
            p.grad = mean[k] * scale
        opt.step()
    return {k: v.detach() for k, v in params.items()}, opt


def test_a_step_is_the_clipped_task_weighted_mean_of_finite_estimates_through_adam():
    theta = _theta()
    g1, g2 = _theta(1), _theta(2)
    bad = {k: v.clone() for k, v in _theta(3).items()}
    bad["a.bias"][1] = float("nan")
    grads, tasks = [g1, bad, g2], [2, 5, 1]
    learner = Learner(theta, ScriptedPool(grads, tasks), lr=0.05, clip=0.5)
    for _ in range(3):
        metrics = learner.step()
    assert metrics["dropped_estimates"] == 1 and metrics["workers"] == 3
    expected, _ = _reference_steps(theta, grads, tasks, 3, lr=0.05, clip=0.5)
    for k, v in learner.current_theta().items():
        assert v.shape == theta[k].shape
        torch.testing.assert_close(v, expected[k], rtol=1e-6, atol=1e-6)


def test_a_checkpoint_with_one_adam_parameter_per_tensor_resumes_the_same_trajectory():
    theta, grads, tasks = _theta(), [_theta(4)], [1]
    mid, opt = _reference_steps(theta, grads, tasks, 2, lr=0.1, clip=0.0)
    old = {  # what a learner wrote before θ was one flat tensor
        "theta": mid,
        "opt": opt.state_dict(),
        "step": 2,
        "torch_rng": torch.get_rng_state(),
        "theta_avg": None,
        "avg_count": 0,
        "workers": None,
    }
    learner = Learner(theta, ScriptedPool(grads, tasks), lr=0.1, clip=0.0)
    learner.load_state_dict(old)
    for _ in range(3):
        learner.step()
    expected, _ = _reference_steps(mid, grads, tasks, 3, lr=0.1, clip=0.0, opt_state=opt.state_dict())
    for k, v in learner.current_theta().items():
        torch.testing.assert_close(v, expected[k], rtol=1e-6, atol=1e-6)
    assert learner.state_dict()["opt"]["param_groups"][0]["params"] == [0]  # written back flat


def test_averaging_and_a_flat_checkpoint_round_trip(tmp_path):
    theta, grads = _theta(), [_theta(5)]
    a = Learner(theta, ScriptedPool(grads, [1]), lr=0.1, average_from=1)
    seen = []
    for _ in range(4):
        a.step()
        seen.append({k: v.clone() for k, v in a.current_theta().items()})
    mean = {k: torch.stack([s[k] for s in seen[1:]]).mean(0) for k in theta}  # steps 2..4 averaged
    for k, v in a.final_theta().items():
        torch.testing.assert_close(v, mean[k])
    path = tmp_path / "learner.pt"
    torch.save(a.state_dict(with_workers=False), path)
    b = Learner(_theta(9), ScriptedPool(grads, [1]), lr=0.1, average_from=1)
    b.load_state_dict(torch.load(path, weights_only=True))
    a.step(), b.step()
    for k in theta:
        torch.testing.assert_close(b.current_theta()[k], a.current_theta()[k], rtol=0, atol=0)
        torch.testing.assert_close(b.final_theta()[k], a.final_theta()[k], rtol=0, atol=0)


def test_theta_of_mixed_dtypes_is_refused():
    with pytest.raises(ValueError, match="one floating dtype"):
        Learner({"a": torch.zeros(2), "b": torch.zeros(2, dtype=torch.float64)}, ScriptedPool([], []))


def test_the_update_of_a_small_theta_runs_on_one_thread_and_restores_the_count():
    from nfopt.meta.learner import _ONE_THREAD_MAX, _one_thread

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with _one_thread(3000):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with _one_thread(_ONE_THREAD_MAX + 1):  # a large θ keeps every thread
            assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), _one_thread(10):
            raise RuntimeError("the count comes back on errors too")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
