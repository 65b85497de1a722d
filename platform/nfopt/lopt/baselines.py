"""Hand-designed optimizers over stacked parameter dicts (leading population axis), purely
functional: ``state = opt.init(params)``; ``params, state = opt.update(params, grads, state)``.

``lr`` may be a float or a ``(P,)`` tensor (one learning rate per population member)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["SGD", "Adam"]

Tensor = torch.Tensor
Params = dict[str, Tensor]


def _per_member(lr: float | Tensor, t: Tensor) -> float | Tensor:
    if isinstance(lr, Tensor) and lr.ndim == 1:
        return lr.view(-1, *([1] * (t.ndim - 1))).to(t)
    return lr


@dataclass(frozen=True)
class Adam:
    """Adam (Kingma & Ba) with bias correction."""

    lr: float | Tensor = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8

    def init(self, params: Params) -> dict:
        return {
            "step": 0,
            "m": {k: torch.zeros_like(v) for k, v in params.items()},
            "v": {k: torch.zeros_like(v) for k, v in params.items()},
        }

    def update(self, params: Params, grads: Params, state: dict) -> tuple[Params, dict]:
        keys = list(params)
        g = [grads[k] for k in keys]
        m = torch._foreach_add(torch._foreach_mul([state["m"][k] for k in keys], self.b1), g, alpha=1 - self.b1)
        v = torch._foreach_add(
            torch._foreach_mul([state["v"][k] for k in keys], self.b2), torch._foreach_mul(g, g), alpha=1 - self.b2
        )
        step = state["step"] + 1
        c1, c2 = 1 - self.b1**step, 1 - self.b2**step
        denom = torch._foreach_add(torch._foreach_sqrt(torch._foreach_div(v, c2)), self.eps)
        upd = torch._foreach_div(torch._foreach_div(m, c1), denom)
        new = {k: params[k] - _per_member(self.lr, u) * u for k, u in zip(keys, upd)}
        return new, {"step": step, "m": dict(zip(keys, m)), "v": dict(zip(keys, v))}


@dataclass(frozen=True)
class SGD:
    """SGD with (heavy-ball) momentum."""

    lr: float | Tensor = 1e-2
    momentum: float = 0.9

    def init(self, params: Params) -> dict:
        return {"step": 0, "m": {k: torch.zeros_like(v) for k, v in params.items()}}

    def update(self, params: Params, grads: Params, state: dict) -> tuple[Params, dict]:
        m = {k: self.momentum * state["m"][k] + grads[k] for k in params}
        new = {k: params[k] - _per_member(self.lr, m[k]) * m[k] for k in params}
        return new, {"step": state["step"] + 1, "m": m}
