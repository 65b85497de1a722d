"""Shared by the examples: train one model per optimizer on the same data order, plot the curves.

Each optimizer is built by a factory ``(model, steps) -> (torch.optim.Optimizer, lr_scheduler)``;
the training loop is plain PyTorch (``loss.backward(); opt.step(); sched.step()``), which is the
point: a pretrained nfopt optimizer drops in where AdamW was.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import nfopt

__all__ = ["OPTIMIZERS", "best_of", "compare", "optimizers", "parse_lrs", "plot_curves", "write_results"]

Factory = Callable[[nn.Module, int], tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]]


def _adamw(lr: float) -> Factory:
    def make(model: nn.Module, steps: int):
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)

    return make


def _nfopt(name: str) -> Factory:
    def make(model: nn.Module, steps: int):
        opt = nfopt.load_optimizer(name)(model, num_steps=steps, weight_decay=0.01)  # the whole model
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)

    return make


def optimizers(adamw_lrs: list[float], pretrained: tuple[str, ...] = ("nfn_np_small",)) -> dict[str, Factory]:
    """name -> factory: AdamW at each learning rate of ``adamw_lrs`` (``adamw_lr=<lr>``: the
    grid the comparison is tuned over) and shipped pretrained optimizers (``nfopt.list_pretrained()``),
    all with decoupled weight decay 0.01 and a cosine schedule."""
    out: dict[str, Factory] = {f"adamw_lr={lr:g}": _adamw(lr) for lr in adamw_lrs}
    return out | {name: _nfopt(name) for name in pretrained}


def parse_lrs(text: str) -> list[float]:
    """``"3e-4,1e-3"`` -> ``[3e-4, 1e-3]``; a ``ValueError`` naming the flag otherwise."""
    try:
        lrs = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--adamw-lrs: {text!r} is not comma-separated numbers, e.g. 3e-4,1e-3,3e-3") from None
    if not lrs or any(lr <= 0 for lr in lrs):
        raise ValueError(f"--adamw-lrs: {text!r}: give at least one learning rate > 0")
    return lrs


#: The default comparison: AdamW at 1e-3 and the shipped NFN optimizer.
OPTIMIZERS: dict[str, Factory] = optimizers([1e-3])


def compare(
    make_model: Callable[[], nn.Module],
    batches: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    evaluate: Callable[[nn.Module], dict[str, float]],
    steps: int,
    seed: int = 0,
    optimizers: dict[str, Factory] | None = None,
) -> dict[str, dict]:
    """Train ``make_model()`` (same initialisation, seeded) with each optimizer for ``steps``
    minibatches (same order); returns per optimizer the minibatch-loss curve, the final
    ``evaluate(model)`` and the wall time."""
    out = {}
    for name, factory in (optimizers or OPTIMIZERS).items():
        torch.manual_seed(seed)
        model = make_model()
        opt, sched = factory(model, steps)
        gen = torch.Generator().manual_seed(seed)
        curve, t0 = [], time.perf_counter()
        model.train()
        for _ in range(steps):
            x, y = batches(gen)
            loss = loss_fn(model, x, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            curve.append(loss.item())
        model.eval()
        with torch.no_grad():
            final = evaluate(model)
        out[name] = {"curve": curve, "final": final, "seconds": time.perf_counter() - t0}
        print(f"{name:24s} " + " ".join(f"{k}={v:.4f}" for k, v in final.items()), flush=True)
    return out


def plot_curves(results: dict[str, dict], title: str, path: Path, smooth: int = 20) -> Path:
    """Smoothed minibatch-loss curves of every optimizer in one figure (``path``: a ``.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in results.items():
        c = torch.tensor(r["curve"])
        k = max(1, min(smooth, len(c) // 5))
        s = torch.nn.functional.avg_pool1d(c[None, None], k, stride=1)[0, 0] if len(c) >= k else c
        ax.plot(range(k - 1, k - 1 + len(s)), s.tolist(), label=name)
    ax.set(xlabel="step", ylabel="train loss (minibatch, smoothed)", title=title, yscale="log")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def best_of(results: dict[str, dict], prefix: str, metric: str, lower: bool = True) -> str:
    """The name among ``results`` starting with ``prefix`` (e.g. the AdamW grid) with the best
    final ``metric``: the tuned baseline."""
    names = [n for n in results if n.startswith(prefix)]
    sign = 1 if lower else -1
    return min(names, key=lambda n: sign * results[n]["final"][metric])


def write_results(results: dict[str, dict], out: Path, name: str) -> Path:
    """``<out>/<name>.json`` (curves, finals, seconds); prints ``RESULT <optimizer>_<metric>=...``
    (optimizer names as slugs) as the last line."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(results))
    parts = []
    for opt, r in results.items():
        slug = "".join(c if c.isalnum() else "_" for c in opt.lower()).strip("_")
        parts += [f"{slug}_{k}={v:.4f}" for k, v in r["final"].items() if math.isfinite(v)]
    print("RESULT " + " ".join(parts))
    return path
