"""On a quadratic inner problem the true meta-gradient is known (autograd through the unroll):
truncated backprop is exact, antithetic ES and PES are unbiased within their standard error."""

import torch

from nfopt.meta import ES, PES, EpisodeES, QuadraticProblem, TruncatedBackprop
from nfopt.meta.estimators import selected

THETA = {"log_lr": torch.tensor(-2.0, dtype=torch.float64)}


def exact_grad(problem, theta, seed, truncations, unroll):
    """d(loss of the last truncation)/d theta with the full dependence on earlier truncations."""
    th = {k: v.clone().requires_grad_() for k, v in theta.items()}
    state = problem.init_state(seed)
    for _ in range(truncations):
        loss, state, _ = problem.unroll(th, state, unroll)
    return torch.autograd.grad(loss, th["log_lr"])[0]


def test_truncated_backprop_is_exact():
    prob = QuadraticProblem(dim=5, noise=0.1)
    est = TruncatedBackprop(unroll=6)
    g, metrics, _ = est.estimate(prob, THETA, est.init(prob, 3), torch.Generator().manual_seed(0))
    assert torch.allclose(g["log_lr"], exact_grad(prob, THETA, 3, 1, 6), rtol=1e-12)
    assert metrics["meta_loss"] > 0


def _mean_and_se(samples):
    s = torch.stack(samples)
    return s.mean(), s.std() / len(s) ** 0.5


def test_antithetic_es_is_unbiased_on_one_truncation():
    prob = QuadraticProblem(dim=4, noise=0.05)
    est = ES(sigma=0.01, unroll=5)
    gen = torch.Generator().manual_seed(1)
    samples = [est.estimate(prob, THETA, est.init(prob, 0), gen)[0]["log_lr"] for _ in range(1500)]
    mean, se = _mean_and_se(samples)
    true = exact_grad(prob, THETA, 0, 1, 5)
    assert abs(mean - true) < 4 * se, (mean, true, se)


def test_pes_is_unbiased_over_the_episode():
    """The PES estimate at the third truncation matches the gradient of that truncation's loss
    through all three (where truncated ES/backprop would miss the earlier ones)."""
    prob = QuadraticProblem(dim=4, noise=0.05)
    est = PES(sigma=0.01, unroll=4)
    gen = torch.Generator().manual_seed(2)
    samples = []
    for _ in range(1200):
        state = est.init(prob, 0)
        for _ in range(3):
            g, _, state = est.estimate(prob, THETA, state, gen)
        samples.append(g["log_lr"])
    mean, se = _mean_and_se(samples)
    true = exact_grad(prob, THETA, 0, 3, 4)
    truncated = exact_grad(prob, THETA, 0, 1, 4)  # sanity: the full-episode gradient differs
    assert abs(mean - true) < 4 * se, (mean, true, se)
    assert abs(true - truncated) > 4 * se


def test_episodes_reset_when_the_horizon_ends():
    prob = QuadraticProblem(dim=3, horizon=8)
    for est in (ES(unroll=4), PES(unroll=4), TruncatedBackprop(unroll=4)):
        gen = torch.Generator().manual_seed(0)
        state = est.init(prob, 0)
        _, _, state = est.estimate(prob, THETA, state, gen)
        inner = state.get("inner", state.get("plus"))
        assert inner["step"] == 4
        _, _, state = est.estimate(prob, THETA, state, gen)
        inner = state.get("inner", state.get("plus"))
        assert inner["step"] == 0 and inner["seed"] != 0  # a fresh task
        if isinstance(est, PES):
            assert state["xi"] is None


def test_estimators_satisfy_the_protocol_and_answer_with_typed_messages():
    from nfopt.meta import ESTIMATORS, Estimate, TaskEstimate, Worker
    from nfopt.meta.messages import pack_theta, theta_layout, unpack_theta

    prob = QuadraticProblem(dim=4, horizon=20)
    for name, cls in ESTIMATORS.items():
        kw = {"tbptt": {"unroll": 3}, "episode_es": {"sigma": 0.1}}.get(name, {"unroll": 3, "sigma": 0.1})
        est = cls(**kw)
        out = est.estimate(prob, THETA, est.init(prob, 1), torch.Generator().manual_seed(0))
        assert isinstance(out, TaskEstimate) and set(out.grad) == set(THETA)
        worker = Worker(lambda: prob, est, num_tasks=2, seed=0)
        answer = worker.estimate(THETA)
        assert isinstance(answer, Estimate) and answer.tasks == 2 and "meta_loss" in answer.metrics
    flat = pack_theta(THETA)
    back = unpack_theta(flat, theta_layout(THETA))
    assert all(torch.equal(back[k], THETA[k]) for k in THETA)


def test_episode_es_is_unbiased_for_the_whole_run():
    """Whole runs from scratch to the horizon: the estimate matches the gradient of the loss over
    the entire run, and every estimate starts a fresh task."""
    prob = QuadraticProblem(dim=4, noise=0.05, horizon=12)
    est = EpisodeES(sigma=0.01)
    gen = torch.Generator().manual_seed(3)
    samples = [est.estimate(prob, THETA, est.init(prob, 0), gen)[0]["log_lr"] for _ in range(1500)]
    mean, se = _mean_and_se(samples)
    true = exact_grad(prob, THETA, 0, 1, 12)
    assert abs(mean - true) < 4 * se, (mean, true, se)
    _, metrics, state = est.estimate(prob, THETA, est.init(prob, 0), gen)
    assert state["seed"] != 0 and metrics["meta_loss"] > 0


def test_params_choose_which_meta_parameters_are_estimated():
    theta = {**THETA, "frozen.w": torch.tensor([0.5, 1.0], dtype=torch.float64)}
    prob = QuadraticProblem(dim=3, noise=0.05, horizon=6)
    estimators = (ES, PES, TruncatedBackprop, EpisodeES)
    for cls in estimators:
        kw = {} if cls is EpisodeES else {"unroll": 3}
        for params, live, dead in ((["log_lr"], "log_lr", "frozen.w"), (["frozen"], None, "log_lr")):
            est = cls(params=params, **kw)
            grad = est.estimate(prob, theta, est.init(prob, 0), torch.Generator().manual_seed(0))[0]
            assert torch.equal(grad[dead], torch.zeros_like(grad[dead])), (cls, params)
            if live:
                assert grad[live].abs() > 0, cls
    assert selected("meta_model.layers.0.weight", ["meta_model"]) and selected("log_schedule", None)
    assert not selected("meta_model_x", ["meta_model"]) and not selected("log_step_scale", ["log_schedule"])


def test_perturbations_are_drawn_on_the_cpu_generator_and_live_on_thetas_device():
    """Same draws whatever device θ is on (here the shape-only 'meta' device stands in for CUDA)."""
    from nfopt.meta.estimators import _perturb

    theta = {"a": torch.zeros(3), "b": torch.zeros(2, 2)}
    on_meta = {k: v.to("meta") for k, v in theta.items()}
    cpu = _perturb(theta, 0.1, torch.Generator().manual_seed(0), params=["a"])
    dev = _perturb(on_meta, 0.1, torch.Generator().manual_seed(0), params=["a"])
    assert all(v.device.type == "meta" for v in dev.values())
    assert cpu["a"].abs().sum() > 0 and torch.count_nonzero(cpu["b"]) == 0


def test_every_estimator_kind_a_job_may_name_exists():
    from typing import get_args

    from nfopt.meta import ESTIMATORS, EstimatorKind

    assert set(ESTIMATORS) == set(get_args(EstimatorKind))
