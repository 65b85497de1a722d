"""The learned update rule's per-tensor work outside its meta-model as two fused CPU kernels
(``nn/csrc/lopt_kernels.cpp``): :func:`features` (gradient clean-up, momenta, second moment,
Adam's direction, normalised per-entry features and per-tensor statistics) and :func:`apply_step`
(the bounded step). The PyTorch path spends ~70 dispatched ops per tensor on them: ~290 of the
~565 ops of a quickstart-size rule update, about half its time (9.4 -> 6.3 ms with the kernels,
interleaved). Inference only: callers keep their PyTorch path, which computes the
same function (tested for equality), wherever :func:`applies` is false."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from nfopt.nn import fused

__all__ = ["FusedFeatures", "applies", "apply_step", "features"]

Tensor = torch.Tensor


def applies(x: Tensor, *tensors: Tensor) -> bool:
    """Whether the kernels can run: CPU float32 ``x`` and ``tensors``, no gradient through any of
    them, no ``torch.func`` transform, not traced by ``torch.compile``, kernels built."""
    return (
        not torch.compiler.is_compiling()
        and all(t.dtype == torch.float32 for t in (x, *tensors))
        and fused.applies(x, *tensors)
    )


def _bias_corrections(step: int) -> tuple[float, float]:
    """Adam's ``1 - 0.9^t`` and ``1 - 0.999^t`` after this step (``step`` steps done before it)."""
    t = step + 1
    return 1 - 0.9**t, 1 - 0.999**t


@dataclass(frozen=True, slots=True)
class FusedFeatures:
    """One tensor's outputs of :func:`features`: ``feats (B, 2 + K [+ 1], ...)``, the new momenta
    ``mom (B, K, ...)`` and second moment ``v (B, 1, ...)``, and ``stats (B, 3)``."""

    feats: Tensor
    mom: Tensor
    v: Tensor
    stats: Tensor


def features(
    p: Tensor,
    g: Tensor,
    mom: Tensor,
    v: Tensor,
    decays: Sequence[float],
    k09: int,
    step: int,
    eps: float,
    adam_feature: bool,
    fan_in: int,
) -> FusedFeatures:
    """One tensor: ``p, g, v: (B, 1, ...)``, ``mom: (B, K, ...)`` (decays ``decays``, the
    ``k09``-th is 0.9) at ``step`` steps done. Returns the features ``[g, p, m_1..m_K (, u)]``
    normalised as :func:`~nfopt.lopt.features.build_features` does (``g`` with non-finite entries
    zeroed; ``u`` Adam's direction after this step, with ``adam_feature``), the updated ``mom``
    and ``v``, and the per-tensor statistics of :func:`~nfopt.lopt.features.tensor_stats`."""
    c1, c2 = _bias_corrections(step)
    f, m, vv, s = torch.ops.nfopt_native.lopt_features(p, g, mom, v, decays, k09, c1, c2, eps, adam_feature, fan_in)
    return FusedFeatures(f, m, vv, s)


def apply_step(
    p: Tensor,
    out: Tensor,
    hand: str,
    mom: Tensor,
    k09: int,
    v: Tensor,
    step: int,
    hand_scale: float,
    exp_mult: float,
    mult: float,
    bound: float,
    lr_range: float,
    lr_head: bool,
) -> Tensor:
    """``p - B tanh(s m)`` of :class:`~nfopt.lopt.rules.LearnedUpdateRule` for one tensor:
    ``p: (B, 1, ...)``, meta-model outputs ``out: (B, 2 or 3, ...)``, the hand-designed
    direction ``hand`` (``"adam"`` from the updated ``mom``'s ``k09``-th channel and ``v`` after
    ``step`` steps done, ``"momentum"``: that channel, ``"none"``) scaled by ``hand_scale``;
    ``mult``: the tensor's step multiplier over the bound. Returns the new ``(B, 1, ...)``."""
    c1, c2 = _bias_corrections(step)
    return torch.ops.nfopt_native.lopt_apply(
        p,
        out,
        None if hand == "none" else mom,
        k09,
        v if hand == "adam" else None,
        c1,
        c2,
        hand_scale,
        exp_mult,
        mult,
        bound,
        lr_range,
        lr_head,
    )
