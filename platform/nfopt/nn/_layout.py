"""Conversions between the public layout and the "folded" layout of the kernels.

Public: ``W: (B, C, n_r, n_c, *k)``, ``b: (B, C, n_r)``. Folded: ``X: (B, F, m_r, m_c)`` and
``b: (B, Fb, m_r)`` where a *permutable* neuron axis keeps its size (``m = n``) and a *fixed*
one (an input/output layer under hidden-only symmetry) is folded into the features (``m = 1``):
``F = C * [n_r if r fixed] * [n_c if c fixed] * prod(k)``, ``Fb = C * [n_r if r fixed]``.
The feature axis stays outermost after the batch (channels-first, like the public layout), so
MLP features fold and unfold without copies and stay contiguous for users' elementwise ops.
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor


def _weight_axes(kdims: int, row_fixed: bool, col_fixed: bool) -> list[int]:
    kept = [a for a, fixed in ((2, row_fixed), (3, col_fixed)) if not fixed]
    folded = [a for a, fixed in ((2, row_fixed), (3, col_fixed)) if fixed]
    return [0, 1, *folded, *range(4, 4 + kdims), *kept]


def fold_weight(w: Tensor, row_fixed: bool, col_fixed: bool) -> Tensor:
    """``(B, C, n_r, n_c, *k) -> (B, F, m_r, m_c)`` (a view when strides allow)."""
    b, c, nr, nc = w.shape[:4]
    x = w.permute(*_weight_axes(w.ndim - 4, row_fixed, col_fixed))
    f = c * math.prod(w.shape[4:]) * (nr if row_fixed else 1) * (nc if col_fixed else 1)  # not -1: B may be 0
    return x.reshape(b, f, 1 if row_fixed else nr, 1 if col_fixed else nc)


def unfold_weight(x: Tensor, shape: tuple[int, ...], channels: int, row_fixed: bool, col_fixed: bool) -> Tensor:
    """Inverse of :func:`fold_weight`; ``shape = (n_r, n_c, *k)``. A view of ``x``."""
    nr, nc, *k = shape
    axes = _weight_axes(len(k), row_fixed, col_fixed)
    sizes = {1: channels, 2: nr, 3: nc, **{4 + d: s for d, s in enumerate(k)}}
    y = x.reshape(x.shape[0], *[sizes[a] for a in axes[1:]])
    inv = [axes.index(a) for a in range(len(axes))]
    return y.permute(*inv)


def fold_bias(b: Tensor, fixed: bool) -> Tensor:
    """``(B, C, n) -> (B, Fb, m)``."""
    return b.reshape(b.shape[0], b.shape[1] * b.shape[2], 1) if fixed else b


def unfold_bias(x: Tensor, n: int, channels: int, fixed: bool) -> Tensor:
    """Inverse of :func:`fold_bias`."""
    return x.reshape(x.shape[0], channels, n) if fixed else x
