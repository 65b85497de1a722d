"""MLP plans: one per architecture shape-class (not per width), stable across pickling; only
plain MLPs have one."""

import pickle

import torch
from torch import nn

from nfopt.tasks import TaskFamily
from nfopt.tasks.batched import MLPPlan, mlp_loss_and_grad


def test_plans_ignore_widths_survive_pickling_and_exist_only_for_plain_mlps():
    def mlp(width, act=nn.ReLU):
        return nn.Sequential(nn.Flatten(), nn.Linear(8, width), act(), nn.Linear(width, 3))

    a, b = MLPPlan.of(mlp(16), "cross_entropy"), MLPPlan.of(mlp(64), "cross_entropy")
    assert a == b and hash(a) == hash(b)
    assert pickle.loads(pickle.dumps(a)) == a
    assert MLPPlan.of(mlp(16, nn.Tanh), "cross_entropy") != a
    assert MLPPlan.of(mlp(16), "mse") != a
    assert MLPPlan.of(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 3)), "mse") is None
    assert MLPPlan.of(nn.Sequential(nn.Linear(8, 4), nn.Dropout(), nn.Linear(4, 3)), "mse") is None


def test_reparameterised_loss_and_grad_equal_autograd_on_the_effective_parameters():
    task = TaskFamily.load("digits_mlp").sample(0)
    pop = task.population(3, seed=1)
    xb, yb = pop.sample_batch(task.dataset.x_train, task.dataset.y_train, 16, torch.Generator().manual_seed(0))
    scales = {"1.weight": 2.0}
    loss, grads = mlp_loss_and_grad(pop.plan, pop.params, xb, yb, scales, loss_scale=0.5)
    ps = {k: v.clone().requires_grad_() for k, v in pop.params.items()}
    ref = pop.plan.member_losses({k: v * scales.get(k, 1.0) for k, v in ps.items()}, xb, yb) * 0.5
    torch.testing.assert_close(loss, ref.detach())
    for k, g in zip(ps, torch.autograd.grad(ref.sum(), list(ps.values()))):
        torch.testing.assert_close(grads[k], g)
