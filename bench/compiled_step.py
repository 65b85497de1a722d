"""Check: a compiled learned-optimizer step takes the eager step, per device.

For each device given (default: CUDA when present, and the CPU), the shipped ``nfn_np_small``
rule's update on one random input, eager and compiled (``nn.Module.compile``), and three steps
of :class:`~nfopt.lopt.LearnedOptimizer` with ``compile=False`` and ``True`` on a small MLP: how
far the parameters moved and the losses. On an H200 with torch 2.11 the compiled optimizer on
CUDA left the parameters where they were (tests/lopt/test_cuda.py); this script tells a
direct-call fault from an optimizer one. Last line ``RESULT <device>_compiled_vs_eager=X
<device>_moved_ratio=Y ...`` (X: largest difference of the direct updates; Y: the compiled
optimizer's parameter movement over the eager one's, 1.0 when they agree; on a GPU also
``<device>_moved_ratio_where_form``: the same with the CPU's NaN-zeroing form forced there).
"""

from __future__ import annotations

import argparse
import contextlib
import copy

import torch
from torch import nn

import nfopt
from nfopt import NetworkSpec, WeightSpaceFeatures


def _mlp(device: str) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 4)).to(device)


def _largest(xs, ys) -> float:
    return max(float((a - b).abs().max()) for a, b in zip(xs, ys))


def direct(trained, device: str) -> float:
    """Largest difference between the eager and the compiled rule's update of one input."""
    rule = copy.deepcopy(trained.rule).to(device)
    compiled = copy.deepcopy(rule)
    compiled.compile()
    spec = NetworkSpec.mlp([10, 32, 4])
    g = torch.Generator().manual_seed(0)
    params = WeightSpaceFeatures.randn(spec, 1, 1, generator=g).to(device)
    grads = WeightSpaceFeatures.randn(spec, 1, 1, generator=g).to(device)
    loss = torch.tensor([1.3], device=device)
    with torch.no_grad():
        state = rule.init(spec, 1, device=device, num_steps=10)
        eager, _ = rule.update(None, state, params, grads, loss)
        comp, _ = compiled.update(None, state, params, grads, loss)
    moved = _largest(eager.tensors(), params.tensors())
    diff = _largest(comp.tensors(), eager.tensors())
    print(f"{device} direct: eager update moved {moved:.3e}, compiled vs eager {diff:.3e}", flush=True)
    return diff


def through_optimizer(trained, device: str, compile: bool, steps: int = 3) -> float:
    """How far three optimizer steps moved the parameters."""
    model = _mlp(device)
    opt = trained(model, num_steps=10, compile=compile)
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(64, 10, generator=g).to(device), torch.randint(4, (64,), generator=g).to(device)
    start = [p.detach().clone() for p in model.parameters()]
    for i in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step(loss=loss)
        moved = _largest([p.detach() for p in model.parameters()], start)
        print(f"{device} optimizer compile={compile} step {i}: loss {loss.item():.6f}, moved {moved:.3e}", flush=True)
    return moved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("devices", nargs="*", help="default: cuda (when present) and cpu")
    args = ap.parse_args()
    devices = args.devices or (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]
    torch.backends.cuda.matmul.allow_tf32 = False
    print("torch", torch.__version__)
    trained = nfopt.load_optimizer("nfn_np_small")
    result = []
    for dev in devices:
        diff = direct(trained, dev)
        eager = through_optimizer(trained, dev, False)
        ratio = through_optimizer(trained, dev, True) / eager
        result += [f"{dev}_compiled_vs_eager={diff:.2e}", f"{dev}_moved_ratio={ratio:.3f}"]
        if dev != "cpu":  # the suspect: the CPU-only NaN-zeroing form, forced on this device
            with _where_form_everywhere():
                print(f"{dev}: the where(t - t == 0) form forced under compile", flush=True)
                forced = through_optimizer(copy.deepcopy(trained), dev, True) / eager
            result.append(f"{dev}_moved_ratio_where_form={forced:.3f}")
    print("RESULT " + " ".join(result))


@contextlib.contextmanager
def _where_form_everywhere():
    """``nfopt.lopt.rules._zero_nonfinite`` traced as ``where(t - t == 0, t, 0)`` on every device
    (the form the CPU takes): a compiled step that moves nothing with it, and moves with the plain
    ``nan_to_num``, names the code generator's reading of ``t - t`` as the fault."""
    from nfopt.lopt import rules

    plain = rules._zero_nonfinite

    def where_form(t):
        if torch.compiler.is_compiling():
            return torch.where(t - t == 0, t, 0.0)
        return plain(t)

    rules._zero_nonfinite = where_form
    torch._dynamo.reset()
    try:
        yield
    finally:
        rules._zero_nonfinite = plain
        torch._dynamo.reset()


if __name__ == "__main__":
    main()
