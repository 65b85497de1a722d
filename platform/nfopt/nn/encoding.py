"""Position encodings of the input and output neurons.

Input/output neurons have fixed meanings (pixel 3, class 7), while NP layers treat every neuron
layer as exchangeable. These modules tell IO neurons apart, so that a stack of NP layers after
them is equivariant to *hidden* permutations only (the symmetry of a real network).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nfopt.nn.symmetry import Symmetry
from nfopt.weightspace import NetworkSpec, WeightSpaceFeatures

__all__ = ["FourierIOEncoding", "LearnedIOEmbedding"]


class LearnedIOEmbedding(nn.Module):
    """Add learned embeddings: ``W_1[:, :, j, k] += e_in[:, k]``, ``W_L[:, :, j, k] += e_out[:, j]``,
    ``b_L[:, :, j] += e_bias[:, j]`` (kernel positions get their own embedding).
    Shapes unchanged: ``(B, C, ...) -> (B, C, ...)``."""

    symmetry: Symmetry = "hnp"  # see nfopt.nn.symmetry

    def __init__(self, spec: NetworkSpec, channels: int, init_std: float = 1.0) -> None:
        super().__init__()
        self.spec = spec
        n_in, n_out = spec.io_sizes
        k_in, k_out = spec.kernel_shapes[0], spec.kernel_shapes[-1]
        self.in_embed = nn.Parameter(init_std * torch.randn(channels, n_in, *k_in))
        self.out_embed = nn.Parameter(init_std * torch.randn(channels, n_out, *k_out))
        self.out_bias_embed = nn.Parameter(init_std * torch.randn(channels, n_out))

    def forward(self, x: WeightSpaceFeatures) -> WeightSpaceFeatures:
        ws, bs = list(x.weights), list(x.biases)
        ws[0] = ws[0] + self.in_embed[None, :, None]  # broadcast over rows (hidden neurons)
        ws[-1] = ws[-1] + self.out_embed[None, :, :, None]  # broadcast over columns
        bs[-1] = bs[-1] + self.out_bias_embed[None]
        return WeightSpaceFeatures(ws, bs)


class FourierIOEncoding(nn.Module):
    """Append Fourier features of IO-neuron positions as channels: ``C -> C + 4 * num_bands``.

    Position of neuron ``k`` of ``n``: ``p = 2k/(n-1) - 1`` in ``[-1, 1]``. Features
    ``[sin(π f p), cos(π f p)]`` with frequencies ``f = 1..max_freq`` spaced linearly
    (``kind="sinusoidal"``) or drawn once from ``N(0, scale²)`` (``kind="gaussian"``, Gaussian
    Fourier features). One group of ``2 * num_bands`` channels encodes the input neuron (on the
    columns of ``W_1``), another the output neuron (rows of ``W_L`` and ``b_L``); zeros elsewhere.
    Sizes are read from the input, so one instance serves every architecture (``spec`` may be
    ``None``).
    """

    symmetry: Symmetry = "hnp"  # see nfopt.nn.symmetry

    def __init__(
        self,
        spec: NetworkSpec | None,
        in_channels: int,
        num_bands: int = 4,
        kind: str = "sinusoidal",
        max_freq: float = 8.0,
        scale: float = 4.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if kind not in ("sinusoidal", "gaussian"):
            raise ValueError(f"FourierIOEncoding kind={kind!r}: use 'sinusoidal' or 'gaussian'")
        self.spec, self.in_channels, self.num_bands, self.kind = spec, in_channels, num_bands, kind
        if kind == "sinusoidal":
            freqs = torch.linspace(1.0, max_freq, num_bands)
        else:
            freqs = scale * torch.randn(num_bands, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("freqs", freqs)

    @property
    def out_channels(self) -> int:
        return self.in_channels + 4 * self.num_bands

    def _encode(self, n: int, dtype, device) -> torch.Tensor:
        pos = (
            torch.linspace(-1.0, 1.0, n, dtype=dtype, device=device)
            if n > 1
            else torch.zeros(1, dtype=dtype, device=device)
        )
        ang = math.pi * pos[None] * self.freqs.to(dtype)[:, None]  # (num_bands, n)
        return torch.cat([ang.sin(), ang.cos()], dim=0)  # (2 * num_bands, n)

    def forward(self, x: WeightSpaceFeatures) -> WeightSpaceFeatures:
        n_in, n_out = x.weights[0].shape[3], x.weights[-1].shape[2]
        e = 2 * self.num_bands
        dt, dev = x.dtype, x.device
        enc_in, enc_out = self._encode(n_in, dt, dev), self._encode(n_out, dt, dev)
        last = len(x) - 1
        ws, bs = [], []
        for i, (w, b) in enumerate(x):
            bsz, _, nr, nc, *k = w.shape
            extra = w.new_zeros(bsz, 2 * e, nr, nc, *k)
            kdims = (1,) * len(k)
            if i == 0:
                extra[:, :e] = enc_in.view(e, 1, nc, *kdims)
            if i == last:
                extra[:, e:] = enc_out.view(e, nr, 1, *kdims)
            ws.append(torch.cat([w, extra], dim=1))
            bextra = b.new_zeros(bsz, 2 * e, nr)
            if i == last:
                bextra[:, e:] = enc_out
            bs.append(torch.cat([b, bextra], dim=1))
        return WeightSpaceFeatures(ws, bs)
