"""Hand-designed optimizers behind the learned-optimizer protocol (see :mod:`nfopt.lopt.protocol`):
``state = opt.init(spec, population)``; ``params, state = opt.update(theta, state, params, grads, loss)``
over ``(P, 1, ...)`` weight-space features; numerically equal to ``torch.optim``'s.

``lr`` may be a float or a ``(P,)`` tensor (one learning rate per population member); ``theta``
(meta-parameters) is unused by hand-designed rules and may be ``None``."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nfopt.weightspace import NetworkSpec, WeightSpaceFeatures

__all__ = ["SGD", "Adam"]

Tensor = torch.Tensor
WSF = WeightSpaceFeatures


def _lr(lr: float | Tensor, like: WSF):
    """``lr`` broadcast per population member, as features-compatible scalars or tensors."""
    if isinstance(lr, Tensor) and lr.ndim == 1:
        return WSF(
            [lr.view(-1, *([1] * (w.ndim - 1))).to(w) for w in like.weights],
            [lr.view(-1, 1, 1).to(b) for b in like.biases],
        )
    return lr


def _pack(ts: list[Tensor]) -> WSF:
    """``[W_1, b_1, ..., W_L, b_L]`` -> features."""
    return WSF(ts[0::2], ts[1::2])


@dataclass(frozen=True)
class Adam:
    """Adam (Kingma & Ba) with bias correction, as ``torch.optim.Adam``."""

    lr: float | Tensor = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8

    def init(
        self, spec: NetworkSpec, population: int = 1, dtype=torch.float32, device=None, num_steps: int | None = None
    ) -> dict:
        z = WSF.zeros(spec, population, 1, dtype=dtype, device=device)
        return {"step": torch.zeros((), dtype=torch.long), "m": z, "v": z.clone()}

    def update(self, theta, state: dict, params: WSF, grads: WSF, loss=None) -> tuple[WSF, dict]:
        step = state["step"] + 1
        g = list(grads.tensors())  # _foreach ops: one kernel launch per op for all tensors
        m = torch._foreach_add(torch._foreach_mul(list(state["m"].tensors()), self.b1), g, alpha=1 - self.b1)
        v = torch._foreach_mul(list(state["v"].tensors()), self.b2)
        torch._foreach_addcmul_(v, g, g, value=1 - self.b2)
        c1, c2 = 1 - self.b1 ** step.item(), 1 - self.b2 ** step.item()
        denom = torch._foreach_add(torch._foreach_sqrt(torch._foreach_div(v, c2)), self.eps)
        direction = torch._foreach_div(torch._foreach_div(m, c1), denom)
        lr = _lr(self.lr, params)
        upd = (
            torch._foreach_mul(direction, list(lr.tensors()))
            if isinstance(lr, WSF)
            else torch._foreach_mul(direction, lr)
        )
        new = torch._foreach_sub(list(params.tensors()), upd)
        return _pack(new), {"step": step, "m": _pack(m), "v": _pack(v)}


@dataclass(frozen=True)
class SGD:
    """SGD with heavy-ball momentum, as ``torch.optim.SGD`` (``buf = μ buf + g``)."""

    lr: float | Tensor = 1e-2
    momentum: float = 0.9

    def init(
        self, spec: NetworkSpec, population: int = 1, dtype=torch.float32, device=None, num_steps: int | None = None
    ) -> dict:
        return {
            "step": torch.zeros((), dtype=torch.long),
            "m": WSF.zeros(spec, population, 1, dtype=dtype, device=device),
        }

    def update(self, theta, state: dict, params: WSF, grads: WSF, loss=None) -> tuple[WSF, dict]:
        m = state["m"] * self.momentum + grads if state["step"].item() > 0 else grads
        return params - m * _lr(self.lr, params), {"step": state["step"] + 1, "m": m}
