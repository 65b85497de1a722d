"""Task problems: rematerialised truncated backprop gives the gradient the kept graph gives."""

import pytest
import torch
from pydantic import ValidationError
from torch.utils import _pytree as pytree

from nfopt.jobs import EstimatorSpec
from nfopt.lopt import FeatureConfig, LearnedUpdateRule
from nfopt.meta import TaskProblem, TruncatedBackprop, problems
from nfopt.meta.problems import rematerialized
from nfopt.tasks import TaskFamily


def _tbptt_grad(remat: bool) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    features = FeatureConfig(adam_direction=True, fraction=True, tensor_features=True)
    rule = LearnedUpdateRule("nfn_np", meta_model={"channels": 4, "layers": 2}, features=features)
    theta = {k: v.detach() + 0.05 * torch.randn_like(v) for k, v in rule.named_parameters()}  # a non-zero head
    prob = TaskProblem(TaskFamily.load("digits_mlp"), rule, population=2, meta_loss="log", offsets=False, remat=remat)
    est = TruncatedBackprop(unroll=4)
    return est.estimate(prob, theta, est.init(prob, 11), torch.Generator().manual_seed(0)).grad


def test_rematerialised_tbptt_gives_the_same_meta_gradient():
    kept, remat = _tbptt_grad(False), _tbptt_grad(True)
    assert kept.keys() == remat.keys()
    assert any(g.abs().sum() > 0 for g in kept.values())
    for k in kept:
        torch.testing.assert_close(remat[k], kept[k], rtol=1e-4, atol=1e-7, msg=k)


def test_rematerialized_differentiates_through_torch_func_and_pytrees():
    w = torch.randn(3, requires_grad=True)
    x = torch.randn(5, 3)

    def fn(state, x, w):  # a pytree in and out, with a torch.func transform inside
        g = torch.func.grad(lambda v: (x @ v).tanh().sum())(state["v"] * w)
        return {"v": state["v"] - 0.1 * g, "n": state["n"] + 1}

    state = {"v": torch.randn(3), "n": torch.zeros((), dtype=torch.long)}
    direct = fn(state, x, w)
    out = rematerialized(fn, state, x, w)
    assert out["n"] == 1 and not out["n"].requires_grad
    torch.testing.assert_close(out["v"], direct["v"])
    (g_direct,) = torch.autograd.grad(direct["v"].square().sum(), w)
    (g_remat,) = torch.autograd.grad(out["v"].square().sum(), w)
    torch.testing.assert_close(g_remat, g_direct)


def test_remat_is_for_truncated_backprop_only():
    assert EstimatorSpec(kind="tbptt", remat=True).remat and EstimatorSpec(kind="pes", compile=True).compile
    with pytest.raises(ValidationError, match="remat applies to estimator kind 'tbptt' only"):
        EstimatorSpec(kind="pes", remat=True)
    with pytest.raises(ValidationError, match="compile applies to the forward-only estimators"):
        EstimatorSpec(kind="tbptt", compile=True)


def test_compiled_forward_only_unrolls_equal_eager_ones_across_tasks_of_one_plan(monkeypatch):
    """The compiled steps (one ``while_loop`` graph per plan; widths, scales and loss scale are
    inputs) give the eager unroll's losses, counts and parameters, on two tasks of one plan, one of
    them reparameterised; an unroll longer than a chunk takes several calls (the last one partly
    filled) and the ``tail`` meta-loss spans chunks."""
    monkeypatch.setattr(problems, "_CHUNK", 2)
    torch.manual_seed(0)
    rule = LearnedUpdateRule("mlp", meta_model={"hidden": 8})
    theta = {k: v.detach() + 0.05 * torch.randn_like(v) for k, v in rule.named_parameters()}
    fam = TaskFamily.load("digits_mlp")
    eager = TaskProblem(fam, rule, population=2, offsets=False, meta_loss="tail")
    fused = TaskProblem(fam, rule, population=2, offsets=False, meta_loss="tail", compile=True)
    seeds = [s for s in range(40) if fam.sample(s).network_spec.num_layers == 2 and fam.sample(s).activation == "relu"][
        :2
    ]  # one plan, two widths
    for prob in (eager, fused):  # reparameterise the second task's population
        task, pop = prob._task(seeds[1])
        prob._cache[seeds[1]] = (task, pop.reparameterize({"1.weight": 3.0}, loss_scale=0.5))
    for seed, steps in zip(seeds, (3, 15)):  # chunks of 2, the last of 1; a tail of 3 steps over two chunks
        with torch.no_grad():
            a_loss, a, a_info = eager.unroll(theta, eager.init_state(seed), steps)
            b_loss, b, b_info = fused.unroll(theta, fused.init_state(seed), steps)
        torch.testing.assert_close(b_loss, a_loss, rtol=1e-5, atol=1e-6)
        assert b_info == a_info and b["step"] == a["step"] == steps
        for x, y in zip(b["params"].tensors(), a["params"].tensors()):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)
        for x, y in zip(pytree.tree_leaves(b["rule"]), pytree.tree_leaves(a["rule"])):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)
    assert len(fused._compiled) == 1


def test_compiled_problems_of_one_process_keep_their_own_constants():
    """Two compiled problems that differ only in a constant of the step (the meta-loss: the last
    normalised loss vs the mean log of them), with same-shaped tensors, in one process: each computes its
    own meta-loss (compiled steps guard on tensors only; a shared graph would pass both)."""
    torch.manual_seed(0)
    rule = LearnedUpdateRule("mlp", meta_model={"hidden": 8})
    theta = {k: v.detach() for k, v in rule.named_parameters()}
    fam = TaskFamily.load("digits_mlp")
    seed = next(s for s in range(40) if fam.sample(s).network_spec.num_layers == 2)
    for meta_loss in ("final", "log"):
        eager = TaskProblem(fam, rule, population=2, offsets=False, meta_loss=meta_loss)
        fused = TaskProblem(fam, rule, population=2, offsets=False, meta_loss=meta_loss, compile=True)
        with torch.no_grad():
            want, _, _ = eager.unroll(theta, eager.init_state(seed), 2)
            got, _, _ = fused.unroll(theta, fused.init_state(seed), 2)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_a_plan_whose_compiled_unroll_fails_warns_once_and_runs_eagerly(monkeypatch):
    """A compile failure (say a meta-model dynamo cannot trace inside a ``while_loop``) is not a
    crash: the problem warns, runs that plan's steps eagerly (the same losses as an eager
    problem) and does not try to compile it again."""
    calls = []

    def failing(self, plan, spec):
        def fn(*args):
            calls.append(plan)
            raise torch._dynamo.exc.TorchDynamoException("cannot trace this body")

        return fn

    monkeypatch.setattr(TaskProblem, "_compiled_chunk", failing)
    rule = LearnedUpdateRule("mlp", meta_model={"hidden": 8})
    theta = {k: v.detach() for k, v in rule.named_parameters()}
    fam = TaskFamily.load("digits_mlp")
    eager = TaskProblem(fam, rule, population=2, offsets=False)
    fused = TaskProblem(fam, rule, population=2, offsets=False, compile=True)
    with torch.no_grad():
        want, _, _ = eager.unroll(theta, eager.init_state(0), 2)
        with pytest.warns(RuntimeWarning, match="compiled unroll failed.*cannot trace this body.*eagerly"):
            got, _, _ = fused.unroll(theta, fused.init_state(0), 2)
        again, _, _ = fused.unroll(theta, fused.init_state(0), 2)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(again, want)
    assert len(calls) == 1
