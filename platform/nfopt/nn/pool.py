"""Invariant pooling over weight space: ``NPPool`` and ``HNPPool``."""

from __future__ import annotations

import math

import torch
from torch import nn

from nfopt.nn.symmetry import Symmetry
from nfopt.weightspace import NetworkSpec, WeightSpaceFeatures

__all__ = ["HNPPool", "NPPool"]


def _mean(t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    if not dims:
        return t
    n = math.prod(t.shape[d] for d in dims)
    return t.sum(dims) * (1.0 / n)


class _Pool(nn.Module):
    hidden_only: bool

    def __init__(self, spec: NetworkSpec) -> None:
        super().__init__()
        self.spec = spec

    def _fixed(self, level: int) -> bool:
        return self.hidden_only and level in (0, self.spec.num_layers)

    @classmethod
    def num_outputs(cls, spec: NetworkSpec) -> int:
        """``k``: pooled values per channel (a static function of the spec)."""
        return cls(spec)._count()

    def _count(self) -> int:
        n, total = self.spec.neuron_sizes, 0
        for i, ksize in enumerate(self.spec.kernel_sizes):
            total += ksize * (n[i + 1] if self._fixed(i + 1) else 1) * (n[i] if self._fixed(i) else 1)
            total += n[i + 1] if self._fixed(i + 1) else 1
        return total

    def out_features(self, channels: int) -> int:
        return channels * self._count()

    def forward(self, x: WeightSpaceFeatures) -> torch.Tensor:
        """``(B, C * k)``: per layer, weight means over the pooled neuron axes (kernel kept),
        then the bias mean; flattened channel-major."""
        if x.spec.weight_shapes != self.spec.weight_shapes:
            raise ValueError(f"{type(self).__name__} built for {self.spec}, got features of {x.spec}")
        bsz, c = x.batch_size, x.channels
        out = []
        for i, (w, b) in enumerate(x):
            wdims = tuple(d for d, lv in ((2, i + 1), (3, i)) if not self._fixed(lv))
            out.append(_mean(w, wdims).reshape(bsz, c, -1))
            out.append(_mean(b, () if self._fixed(i + 1) else (2,)).reshape(bsz, c, -1))
        return torch.cat(out, dim=-1).reshape(bsz, -1)  # (B, C * k)


class NPPool(_Pool):
    """Invariant to permutations of every neuron layer: the mean of each weight (per kernel
    position) and each bias, per channel. Output ``(B, C * k)``, ``k = sum_i (prod(kernel_i) + 1)``."""

    symmetry: Symmetry = "np"  # see nfopt.nn.symmetry

    hidden_only = False


class HNPPool(_Pool):
    """Invariant to hidden-neuron permutations: means over hidden axes only, so the first weight
    keeps its input axis, the last weight and bias their output axis. Output ``(B, C * k)`` with
    ``k = n_0 k_1 + 1 + sum_hidden (k_i + 1) + n_L k_L + n_L`` (depth 1: everything, ``n_1 n_0 k_1 + n_1``)."""

    symmetry: Symmetry = "hnp"  # see nfopt.nn.symmetry

    hidden_only = True
