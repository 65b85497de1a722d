"""Learned update rules and the drop-in optimizer on a CUDA device: the same updates as on the
CPU, state kept on the parameters' device, files written on a GPU load without one. Skipped
without a CUDA device (``pytest -m cuda``)."""

import pytest
import torch
from torch import nn

import nfopt
from nfopt import NetworkSpec
from nfopt.lopt import load_optimizer, save_optimizer
from tests.helpers import run_without_cuda
from tests.lopt.test_rules import KINDS, inputs, perturb_meta_model, rule_of

pytestmark = [pytest.mark.cuda, pytest.mark.usefixtures("no_tf32")]


def _steps(rule, spec: NetworkSpec, device: str, dtype: torch.dtype, n: int = 3):
    rule = rule.to(device=device, dtype=dtype)
    params, grads = (t.to(device) for t in inputs(spec, 2, dtype=dtype))
    state = rule.init(spec, 2, dtype=dtype, device=device, num_steps=20)
    loss = torch.tensor([2.0, 1.5], dtype=dtype, device=device)
    for _ in range(n):
        params, state = rule.update(None, state, params, grads, loss)
        grads, loss = grads * 0.7, loss * 0.9
    return params, state


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", KINDS)
def test_rule_updates_on_cuda_equal_the_cpu(kind, dtype):
    rule = rule_of(kind, schedule_knots=4)
    perturb_meta_model(rule)
    cnn = NetworkSpec(((6, 2, 3, 3), (5, 6, 3, 3), (4, 5)))  # conv and linear tensors
    for spec in (NetworkSpec.mlp([7, 16, 9, 3]), cnn):
        cpu, _ = _steps(rule, spec, "cpu", dtype)
        gpu, state = _steps(rule, spec, "cuda", dtype)
        assert gpu.device.type == "cuda"
        assert all(v.device.type == "cuda" for v in state.values())  # tensors and features
        tol = 1e-10 if dtype == torch.float64 else 1e-5
        for a, b in zip(gpu.tensors(), cpu.tensors()):
            torch.testing.assert_close(a.cpu(), b, rtol=tol, atol=tol)


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))


def _train(model: nn.Module, opt, steps: int, device: str) -> list[float]:
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(64, 10, generator=g).to(device), torch.randint(4, (64,), generator=g).to(device)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step(loss=loss)
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("compile", [False, True])
def test_pretrained_optimizer_trains_a_cuda_model_as_it_trains_a_cpu_one(compile):
    rule = nfopt.load_optimizer("nfn_np_small")
    cpu, gpu = _mlp(), _mlp().cuda()
    opt_cpu, opt_gpu = rule(cpu, num_steps=10), rule(gpu, num_steps=10, compile=compile)  # one rule, two devices
    assert next(rule.rule.parameters()).device.type == "cpu"  # the caller's rule stays where it was
    b = _train(gpu, opt_gpu, 10, "cuda")
    a = _train(cpu, opt_cpu, 10, "cpu")
    assert b == pytest.approx(a, rel=1e-3)
    for p, q in zip(gpu.parameters(), cpu.parameters()):
        torch.testing.assert_close(p.cpu(), q, rtol=1e-3, atol=1e-5)


def test_rule_saved_from_a_gpu_loads_and_runs_without_one(tmp_path):
    rule = rule_of("nfn_np")
    perturb_meta_model(rule)
    path = save_optimizer(rule.cuda(), tmp_path / "lopt.pt")
    code = (
        "import nfopt\n"
        f"opt = nfopt.load_optimizer({str(path)!r})\n"
        "model = torch.nn.Linear(3, 2)\n"
        "o = opt(model)\n"
        "model(torch.ones(4, 3)).sum().backward()\n"
        "o.step()\n"
        "print('ok', next(opt.rule.parameters()).device)\n"
    )
    assert run_without_cuda(code).startswith("ok cpu")
    again = load_optimizer(path)  # here too: the weights come back on the CPU, equal to the GPU's
    for (k, v), w in zip(again.rule.state_dict().items(), rule.state_dict().values()):
        assert v.device.type == "cpu" and torch.equal(v, w.cpu()), k
