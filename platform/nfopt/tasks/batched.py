"""The batched-GEMM path of a population of plain MLPs as pure functions of a hashable
:class:`MLPPlan`: every member's forward is one ``baddbmm`` per layer over ``(P, batch, n)``
activations, and :func:`mlp_loss_and_grad` differentiates the summed loss with ``torch.func``
(the members are independent, so its gradient is each member's gradient).

Pure functions of a plan are what ``torch.compile`` can trace into one graph per architecture:
two populations of the same plan (same layers, activations, loss) share a compiled step whatever
their widths, parameters, reparameterisation scales or loss scale, which arrive as tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nfopt.weightspace import WeightSpaceFeatures

__all__ = ["ELEMENTWISE", "MLPPlan", "layer_features", "layer_params", "mlp_loss_and_grad"]

Tensor = torch.Tensor
Params = dict[str, Tensor]

#: Elementwise, parameter-free modules the batched path applies as they are.
ELEMENTWISE: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.Tanh,
    nn.GELU,
    nn.Sigmoid,
    nn.ELU,
    nn.SiLU,
    nn.LeakyReLU,
    nn.Identity,
    nn.Softplus,
)
_CANONICAL: dict[tuple[type, str], nn.Module] = {}


def _canonical(m: nn.Module) -> nn.Module:
    """One shared instance per activation type and settings, so equal plans hold the same objects."""
    return _CANONICAL.setdefault((type(m), repr(m)), m)


@dataclass(frozen=True)
class MLPPlan:
    """What a plain MLP computes, without its sizes: ``layers`` are ``(name, has_bias)`` of its
    linear layers, ``acts[i]`` the (canonical) elementwise modules after linear layer ``i`` (the
    last entry: after the output layer), ``loss`` ``"cross_entropy"`` or ``"mse"``."""

    layers: tuple[tuple[str, bool], ...]
    acts: tuple[tuple[nn.Module, ...], ...]
    loss: str

    def __post_init__(self) -> None:  # equal plans hold the same activation objects (also after pickling)
        object.__setattr__(self, "acts", tuple(tuple(_canonical(m) for m in a) for a in self.acts))

    def __reduce__(self):
        return MLPPlan, (self.layers, self.acts, self.loss)

    @classmethod
    def of(cls, template: nn.Module, loss: str) -> MLPPlan | None:
        """The plan of ``template`` (an ``nn.Sequential`` of Flatten, Linear and elementwise
        modules starting with Flatten or Linear), or ``None`` if it is not a plain MLP."""
        from nfopt.inr import Sine

        if not isinstance(template, nn.Sequential) or not template:
            return None
        if not isinstance(template[0], (nn.Flatten, nn.Linear)):
            return None
        layers, acts = [], [[]]
        for name, m in template.named_children():
            if isinstance(m, nn.Linear):
                layers.append((name, m.bias is not None))
                acts.append([])
            elif isinstance(m, (Sine, *ELEMENTWISE)):
                if not layers:
                    return None
                acts[-1].append(m)
            elif not isinstance(m, nn.Flatten):
                return None
        return cls(tuple(layers), tuple(tuple(a) for a in acts[1:]), loss)

    def forward(self, params: Params, x: Tensor) -> Tensor:
        """Outputs ``(P, batch, out)`` of every member on its own inputs ``x: (P, batch, ...)``.

        Feature-major inside (``h: (P, features, batch)``, ``h <- W h + b``): the weight gradients
        ``dH H^T`` then come out in the weights' own ``(P, out, in)`` layout, so the learned
        optimizer's passes over them read contiguous memory (batch-major ``H W^T`` leaves them
        transposed)."""
        h = (x.flatten(2) if x.ndim > 3 else x).transpose(1, 2)  # (P, in, batch)
        for (name, has_bias), acts in zip(self.layers, self.acts):
            w = params[f"{name}.weight"]  # (P, out, in)
            h = torch.baddbmm(params[f"{name}.bias"][:, :, None], w, h) if has_bias else w @ h
            for a in acts:
                h = a(h)
        return h.transpose(1, 2)

    def member_losses(self, params: Params, x: Tensor, y: Tensor) -> Tensor:
        """Every member's mean minibatch loss ``(P,)``."""
        out = self.forward(params, x)
        if self.loss == "cross_entropy":
            return F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1)
        return F.mse_loss(out, y, reduction="none").flatten(1).mean(1)

    def features(self, tensors: Params) -> WeightSpaceFeatures:
        """``(P, 1, ...)`` weight-space views of ``tensors`` (:func:`layer_features`)."""
        return layer_features(self.layers, tensors)

    def params(self, feats: WeightSpaceFeatures) -> Params:
        """Inverse of :meth:`features` (:func:`layer_params`)."""
        return layer_params(self.layers, feats)


def layer_features(layers: Sequence[tuple[str, bool]], tensors: Params) -> WeightSpaceFeatures:
    """``(P, 1, ...)`` weight-space views of the stacked ``tensors`` of the layers ``(name,
    has_bias)``, in order; the bias slot of a bias-free layer reads as zeros."""
    ws, bs = [], []
    for name, has_bias in layers:
        w = tensors[f"{name}.weight"]
        ws.append(w.unsqueeze(1))
        bs.append(tensors[f"{name}.bias"].unsqueeze(1) if has_bias else w.new_zeros(w.shape[0], 1, w.shape[1]))
    return WeightSpaceFeatures(ws, bs)


def layer_params(layers: Sequence[tuple[str, bool]], feats: WeightSpaceFeatures) -> Params:
    """Inverse of :func:`layer_features`: views of ``feats`` by parameter name (bias slots of
    bias-free layers dropped)."""
    out = {}
    for (name, has_bias), (w, b) in zip(layers, feats):
        out[f"{name}.weight"] = w[:, 0]
        if has_bias:
            out[f"{name}.bias"] = b[:, 0]
    return out


def mlp_loss_and_grad(
    plan: MLPPlan, params: Params, x: Tensor, y: Tensor, scales: Params | None = None, loss_scale: Tensor | float = 1.0
) -> tuple[Tensor, Params]:
    """Per-member losses ``(P,)`` (times ``loss_scale``) and gradients of ``params`` (stacked like
    them) for networks computing with ``scales[k] * params[k]`` (task reparameterisation;
    ``scales`` may hold any subset of the names). Eagerly by ``torch.autograd.grad`` (1.6x faster
    than ``torch.func.grad`` eagerly at 4-32 networks); under ``torch.compile`` by
    ``torch.func.grad``, which traces into the caller's graph."""
    scales = scales or {}

    def total(ps: Params) -> tuple[Tensor, Tensor]:
        eff = {k: v * scales[k] if k in scales else v for k, v in ps.items()}
        per = plan.member_losses(eff, x, y) * loss_scale
        return per.sum(), per

    if torch.compiler.is_compiling():
        grads, per = torch.func.grad(total, has_aux=True)(params)
        return per, grads
    with torch.enable_grad():
        ps = {k: v.detach().requires_grad_() for k, v in params.items()}
        s, per = total(ps)
        grads = torch.autograd.grad(s, list(ps.values()))
    return per.detach(), dict(zip(ps, grads))
