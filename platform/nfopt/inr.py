"""Implicit neural representations: SIRENs and batched rendering from weight-space features.

SIREN (Sitzmann et al., 2020): ``h_l = sin(w0 (W_l h_{l-1} + b_l))`` for the hidden layers and a
linear output layer. nfopt uses the original scaling: the same ``w0`` (default 30) in every sine
layer, first-layer weights ``U(-1/n_in, 1/n_in)`` and later ones ``U(-sqrt(6/n)/w0, sqrt(6/n)/w0)``.
(Some INR datasets in the literature scale only the first layer; pass ``w0`` consistently to
:func:`render` and :class:`Siren`.)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nfopt.weightspace import WeightSpaceFeatures

__all__ = ["Sine", "Siren", "grid_coords", "render"]


class Sine(nn.Module):
    """``sin(w0 * x)`` (parameter-free, so SIRENs parse as MLP weight spaces)."""

    def __init__(self, w0: float = 30.0) -> None:
        super().__init__()
        self.w0 = w0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.w0 * x)


class Siren(nn.Sequential):
    """SIREN MLP ``in_features -> hidden_features x hidden_layers -> out_features``."""

    def __init__(
        self,
        in_features: int = 2,
        hidden_features: int = 32,
        hidden_layers: int = 2,
        out_features: int = 1,
        w0: float = 30.0,
    ) -> None:
        widths = [in_features] + [hidden_features] * hidden_layers + [out_features]
        mods: list[nn.Module] = []
        for i in range(len(widths) - 1):
            lin = nn.Linear(widths[i], widths[i + 1])
            bound = 1.0 / widths[i] if i == 0 else math.sqrt(6.0 / widths[i]) / w0
            with torch.no_grad():
                lin.weight.uniform_(-bound, bound)
                lin.bias.uniform_(-bound, bound)
            mods.append(lin)
            if i < len(widths) - 2:
                mods.append(Sine(w0))
        super().__init__(*mods)
        self.w0 = w0


def grid_coords(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Pixel-centre coordinates in ``[-1, 1]^2``, row-major: ``(height * width, 2)`` as ``(y, x)``."""
    ys = torch.linspace(-1.0, 1.0, height, device=device, dtype=dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=device, dtype=dtype)
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)


def render(features: WeightSpaceFeatures, coords: torch.Tensor, w0: float = 30.0) -> torch.Tensor:
    """Evaluate a batch of SIRENs given as ``C=1`` MLP features at ``coords``.

    ``coords``: ``(N, n_in)`` shared or ``(B, N, n_in)`` per network -> ``(B, N, n_out)``.
    Differentiable in both the weights and the coordinates.
    """
    if features.channels != 1 or any(w.ndim != 4 for w in features.weights):
        raise ValueError(f"render needs C=1 MLP features, got {features!r}")
    h = coords if coords.ndim == 3 else coords.expand(features.batch_size, *coords.shape)
    last = len(features) - 1
    for i, (w, b) in enumerate(features):
        if i < last:  # sin(w0 (h W^T + b)), with w0 folded into the (small) weights, not the activations
            h = torch.sin(torch.baddbmm(w0 * b[:, 0, None, :], h, w0 * w[:, 0].transpose(1, 2)))  # (B, N, n_i)
        else:
            h = torch.baddbmm(b[:, 0, None, :], h, w[:, 0].transpose(1, 2))  # (B, N, n_out)
    return h
