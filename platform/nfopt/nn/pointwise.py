"""Per-entry layers over weight space: channel mixing, activations, dropout, normalisation,
learned scales. All act on each weight/bias entry alone, so they commute with every neuron
permutation (NP-equivariant)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from nfopt.nn import fused
from nfopt.nn._layout import fold_weight, unfold_weight
from nfopt.nn._mix import channel_mix
from nfopt.nn.symmetry import Symmetry
from nfopt.weightspace import NetworkSpec, WeightSpaceFeatures

__all__ = ["ChannelLayerNorm", "LearnedScale", "NFActivation", "NFDropout", "Pointwise", "channel_layer_norm"]


class Pointwise(nn.Module):
    """Per-entry linear map of channels, its own per layer: ``H_i[j,k] = A_i W_i[j,k] + a_i``,
    ``u_i[j] = B_i b_i[j] + c_i``. Kernel positions are folded into the channel vector
    (``(k_i C_in) -> (k_i C_out)``), as in the NP layer. Shapes: ``(B, C_in, ...) -> (B, C_out, ...)``."""

    symmetry: Symmetry = "np"  # see nfopt.nn.symmetry

    def __init__(self, spec: NetworkSpec, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.spec, self.in_channels, self.out_channels = spec, in_channels, out_channels
        ks = spec.kernel_sizes
        self.weight_maps = nn.ModuleList(nn.Linear(k * in_channels, k * out_channels) for k in ks)
        self.bias_maps = nn.ModuleList(nn.Linear(in_channels, out_channels) for _ in ks)

    def forward(self, x: WeightSpaceFeatures) -> WeightSpaceFeatures:
        ws, bs = [], []
        for i, (w, b) in enumerate(x):
            lin, blin = self.weight_maps[i], self.bias_maps[i]
            f = fold_weight(w, False, False)  # (B, F, n_r, n_c)
            h = channel_mix(f.reshape(f.shape[0], f.shape[1], -1), lin.weight, lin.bias)  # (B, G, n_r n_c)
            h = h.view(f.shape[0], -1, *f.shape[2:])
            ws.append(unfold_weight(h, tuple(w.shape[2:]), self.out_channels, False, False))
            bs.append(channel_mix(b, blin.weight, blin.bias))
        return WeightSpaceFeatures(ws, bs)

    def extra_repr(self) -> str:
        return f"{self.spec}, in_channels={self.in_channels}, out_channels={self.out_channels}"


class NFActivation(nn.Module):
    """Apply an elementwise function (default ReLU) to every weight and bias feature."""

    symmetry: Symmetry = "np"  # see nfopt.nn.symmetry

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor] | nn.Module = torch.relu) -> None:
        super().__init__()
        self.fn = fn

    @property
    def is_relu(self) -> bool:
        """Whether the function is a ReLU (``torch.relu``, ``F.relu`` or an ``nn.ReLU``): the
        activation NP/HNP layers can fuse (``relu=True``, :func:`nfopt.nn.fuse_relu`)."""
        return self.fn is torch.relu or self.fn is nn.functional.relu or isinstance(self.fn, nn.ReLU)

    def forward(self, x: WeightSpaceFeatures) -> WeightSpaceFeatures:
        return x.map(self.fn)


class NFDropout(nn.Module):
    """Elementwise dropout on every feature (equivariant in distribution; identity in eval)."""

    symmetry: Symmetry = "np"  # see nfopt.nn.symmetry

    def __init__(self, p: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"NFDropout p={p}: must be in [0, 1)")
        self.p = p

    def forward(self, x: WeightSpaceFeatures) -> WeightSpaceFeatures:
        if not self.training or self.p == 0.0:
            return x
        return x.map(lambda t: nn.functional.dropout(t, self.p, True))


def channel_layer_norm(t: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm over the channel vector of every entry: ``(B, C, ...) -> (B, C, ...)`` with the
    affine ``weight, bias: (C,)``. Without autograd on CPU floats, one native pass that keeps
    each chunk of entries in L1 (``nfopt_native::channel_norm``; the plain form below makes ~8
    passes); otherwise plain differentiable ops."""
    if not torch.compiler.is_compiling() and fused.applies(t, weight, bias):
        return torch.ops.nfopt_native.channel_norm(t, weight, bias, eps)
    d = t - t.mean(1, keepdim=True)  # (Tensor.var over dim 1 measured ~10x slower here)
    y = d * torch.rsqrt(d.square().mean(1, keepdim=True) + eps)
    shape = (1, -1) + (1,) * (t.ndim - 2)
    return y * weight.view(shape) + bias.view(shape)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel vector of each entry, with a per-tensor affine
    (``weight, bias: (C,)`` for each weight and each bias tensor). Shapes unchanged."""

    symmetry: Symmetry = "np"  # see nfopt.nn.symmetry

    def __init__(self, spec: NetworkSpec, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.spec, self.channels, self.eps = spec, channels, eps
        n = 2 * spec.num_layers
        self.weight = nn.Parameter(torch.ones(n, channels))
        self.bias = nn.Parameter(torch.zeros(n, channels))

    def forward(self, x: WeightSpaceFeatures) -> WeightSpaceFeatures:
        out = [channel_layer_norm(t, self.weight[k], self.bias[k], self.eps) for k, t in enumerate(x.tensors())]
        return WeightSpaceFeatures(out[0::2], out[1::2])


class LearnedScale(nn.Module):
    """Multiply each weight and bias tensor by its own learned scalar (init ``init_scale``)."""

    symmetry: Symmetry = "np"  # see nfopt.nn.symmetry

    def __init__(self, spec: NetworkSpec, init_scale: float = 1.0) -> None:
        super().__init__()
        self.spec = spec
        self.weight_scales = nn.Parameter(torch.full((spec.num_layers,), float(init_scale)))
        self.bias_scales = nn.Parameter(torch.full((spec.num_layers,), float(init_scale)))

    def forward(self, x: WeightSpaceFeatures) -> WeightSpaceFeatures:
        return WeightSpaceFeatures(
            [w * s for w, s in zip(x.weights, self.weight_scales)],
            [b * s for b, s in zip(x.biases, self.bias_scales)],
        )
