"""Architecture-agnostic ("shared") layers: one instance runs on MLP/CNN weight spaces of any
depth, width and kernel size, so one learned optimizer serves many networks.

The paper-faithful layers (:class:`~nfopt.nn.NPLinear`, ...) keep one parameter set per layer
index and per kernel size; these share parameters by layer *role* — the only layer of a depth-1
network, or the first, hidden and last layers — apply per-entry maps to each kernel position
alike, average kernel positions in the cross-entry terms, and pool global terms across layers.
They are exactly equivariant to permutations of every neuron layer (add a
:class:`~nfopt.nn.FourierIOEncoding` first for the hidden-only symmetry of real networks).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nfopt.nn.attention import attend_weight_space
from nfopt.weightspace import WeightSpaceFeatures

__all__ = [
    "ROLES",
    "SharedChannelNorm",
    "SharedNPLinear",
    "SharedPointwise",
    "SharedWeightSpaceAttention",
    "layer_roles",
]

Tensor = torch.Tensor
ROLES = ("only", "first", "hidden", "last")


def layer_roles(num_layers: int) -> list[int]:
    """Role index (into :data:`ROLES`) of each weight layer of a depth-``num_layers`` network."""
    if num_layers == 1:
        return [0]
    return [1] + [2] * (num_layers - 2) + [3]


def _mix(w: Tensor, x: Tensor) -> Tensor:
    """``(G, C) x (B, C, *rest) -> (B, G, *rest)``."""
    return torch.einsum("gc,bc...->bg...", w, x)


def _kernel_mean(w: Tensor) -> Tensor:
    """``(B, C, n_r, n_c, *k) -> (B, C, n_r, n_c)``."""
    return w.mean(dim=tuple(range(4, w.ndim))) if w.ndim > 4 else w


def _bcast(t: Tensor, ndim: int) -> Tensor:
    return t.reshape(*t.shape, *([1] * (ndim - t.ndim)))


class SharedNPLinear(nn.Module):
    r"""NP-equivariant linear layer for any MLP/CNN weight space, parameters shared by role ``ρ``.

    With kernel-averaged weights ``\bar W_i``, ``P_l = [\bar W_l 1/n_{l-1}, b_l, 1^T \bar W_{l+1}/n_{l+1}]``
    (``(B, 3C, n_l)``; zeros where a layer is missing) and ``z = [mean_i g_i, mean_i \bar b_i, g_1,
    \bar b_1, g_L, \bar b_L]`` (``(B, 6C)``, ``g_i`` the mean of ``W_i``):

    .. math::
        H_i[j,k,\kappa] = A_\rho W_i[j,k,\kappa] + K_\rho P_i[j] + R_\rho P_{i-1}[k] + Z_\rho z + \beta_\rho,
        \qquad u_i[j] = U_\rho P_i[j] + V_\rho z + \beta'_\rho

    (``P_i`` lives on the rows' neuron layer, ``P_{i-1}`` on the columns'). Shapes:
    ``(B, C_in, ...) -> (B, C_out, ...)``. ``zero_init`` starts every map at zero (an output
    head that begins as the zero function).
    """

    def __init__(self, in_channels: int, out_channels: int, zero_init: bool = False) -> None:
        super().__init__()
        c, g, r = in_channels, out_channels, len(ROLES)
        self.in_channels, self.out_channels = c, g
        self.A = nn.Parameter(torch.empty(r, g, c))
        self.K = nn.Parameter(torch.empty(r, g, 3 * c))
        self.R = nn.Parameter(torch.empty(r, g, 3 * c))
        self.Z = nn.Parameter(torch.empty(r, g, 6 * c))
        self.beta = nn.Parameter(torch.zeros(r, g))
        self.U = nn.Parameter(torch.empty(r, g, 3 * c))
        self.V = nn.Parameter(torch.empty(r, g, 6 * c))
        self.beta_b = nn.Parameter(torch.zeros(r, g))
        with torch.no_grad():
            for p, fan in ((self.A, 13 * c), (self.K, 13 * c), (self.R, 13 * c), (self.Z, 13 * c)):
                p.uniform_(-1, 1).mul_(0.0 if zero_init else math.sqrt(6.0 / fan))
            for p in (self.U, self.V):
                p.uniform_(-1, 1).mul_(0.0 if zero_init else math.sqrt(6.0 / (9 * c)))

    def forward(self, x: WeightSpaceFeatures) -> WeightSpaceFeatures:
        if x.channels != self.in_channels:
            raise ValueError(f"SharedNPLinear expects C={self.in_channels}, got {x!r}")
        L, roles = len(x), layer_roles(len(x))
        wk = [_kernel_mean(w) for w in x.weights]  # (B, C, n_i, n_{i-1})
        r = [w.mean(2) for w in wk]  # (B, C, n_{i-1}): means over rows
        c = [w.mean(3) for w in wk]  # (B, C, n_i): means over columns
        g = [ci.mean(2) for ci in c]  # (B, C)
        bm = [b.mean(2) for b in x.biases]
        P = []
        for level in range(L + 1):
            ref = r[level] if level < L else c[level - 1]
            zero = torch.zeros_like(ref)
            inc = [c[level - 1], x.biases[level - 1]] if level >= 1 else [zero, zero]
            out = [r[level]] if level < L else [zero]
            P.append(torch.cat(inc + out, dim=1))  # (B, 3C, n_level)
        z = torch.cat([torch.stack(g).mean(0), torch.stack(bm).mean(0), g[0], bm[0], g[-1], bm[-1]], dim=1)
        ws, bs = [], []
        for i, w in enumerate(x.weights):
            rho = roles[i]
            glob = z @ self.Z[rho].t() + self.beta[rho]  # (B, G)
            h = _mix(self.A[rho], w)  # (B, G, n_i, n_{i-1}, *k)
            h = h + _bcast((_mix(self.K[rho], P[i + 1]) + glob[:, :, None])[..., None], h.ndim)
            h = h + _bcast(_mix(self.R[rho], P[i])[:, :, None, :], h.ndim)
            ws.append(h)
            bs.append(_mix(self.U[rho], P[i + 1]) + (z @ self.V[rho].t() + self.beta_b[rho])[:, :, None])
        return WeightSpaceFeatures(ws, bs)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}"


class SharedPointwise(nn.Module):
    """Per-entry channel map shared by every weight (and, separately, every bias) of any network;
    kernel positions are mapped alike. ``(B, C_in, ...) -> (B, C_out, ...)``."""

    def __init__(self, in_channels: int, out_channels: int, zero_init: bool = False) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.weight_map = nn.Linear(in_channels, out_channels)
        self.bias_map = nn.Linear(in_channels, out_channels)
        if zero_init:
            for m in (self.weight_map, self.bias_map):
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: WeightSpaceFeatures) -> WeightSpaceFeatures:
        def apply(lin: nn.Linear, t: Tensor) -> Tensor:
            return _mix(lin.weight, t) + _bcast(lin.bias, t.ndim - 1)

        return WeightSpaceFeatures(
            [apply(self.weight_map, w) for w in x.weights], [apply(self.bias_map, b) for b in x.biases]
        )


class SharedChannelNorm(nn.Module):
    """LayerNorm over each entry's channel vector with one affine for all tensors."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.in_channels = channels
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: WeightSpaceFeatures) -> WeightSpaceFeatures:
        def norm(t: Tensor) -> Tensor:
            y = (t - t.mean(1, keepdim=True)) * torch.rsqrt(t.var(1, unbiased=False, keepdim=True) + self.eps)
            return y * _bcast(self.weight, t.ndim - 1) + _bcast(self.bias, t.ndim - 1)

        return x.map(norm)


class SharedWeightSpaceAttention(nn.Module):
    """:class:`~nfopt.nn.WeightSpaceAttention` for any architecture: query/key/value and output
    projections shared by layer role (weights) and across biases; queries, keys and values of
    conv weights are averaged over kernel positions and the attended result is added to every
    kernel position alike. ``(B, C, ...) -> (B, C, ...)``."""

    def __init__(self, channels: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if num_heads < 1 or channels % num_heads:
            raise ValueError(f"channels={channels} must be a positive multiple of num_heads={num_heads}")
        c, r = channels, len(ROLES)
        self.in_channels, self.num_heads, self.dropout = channels, num_heads, dropout
        bound = 1.0 / math.sqrt(c)
        self.w_qkv = nn.Parameter(torch.empty(r, 3 * c, c).uniform_(-bound, bound))
        self.w_out = nn.Parameter(torch.empty(r, c, c).uniform_(-bound, bound))
        self.b_qkv = nn.Linear(c, 3 * c)
        self.b_out = nn.Linear(c, c)

    def forward(self, x: WeightSpaceFeatures) -> WeightSpaceFeatures:
        roles, c = layer_roles(len(x)), self.in_channels
        qw, qb = [], []
        for i, (w, b) in enumerate(x):
            qw.append([t.contiguous() for t in _mix(self.w_qkv[roles[i]], _kernel_mean(w)).split(c, dim=1)])
            qb.append([t.contiguous() for t in (_mix(self.b_qkv.weight, b) + self.b_qkv.bias[:, None]).split(c, dim=1)])
        out_w, out_b = attend_weight_space(qw, qb, self.num_heads, self.dropout if self.training else 0.0)
        ws = [  # broadcast over kernel positions
            _bcast(_mix(self.w_out[roles[i]], ow), x.weights[i].ndim).expand_as(x.weights[i])
            for i, ow in enumerate(out_w)
        ]
        bs = [_mix(self.b_out.weight, ob) + self.b_out.bias[:, None] for ob in out_b]
        return WeightSpaceFeatures(ws, bs)
