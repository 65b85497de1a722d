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
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from nfopt.nn import _core
from nfopt.nn._mix import channel_mix, functorch_active
from nfopt.nn.attention import attend_weight_space
from nfopt.nn.linear import apply_plan
from nfopt.nn.pointwise import channel_layer_norm
from nfopt.nn.symmetry import Symmetry
from nfopt.weightspace import NetworkSpec, WeightSpaceFeatures

__all__ = [
    "ROLES",
    "PerTensor",
    "SharedChannelNorm",
    "SharedGlobalInput",
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


def _mix(w: Tensor, x: Tensor, b: Tensor | None = None) -> Tensor:
    """``(G, C) x (B, C, *rest) [+ (G,)] -> (B, G, *rest)`` as one batched GEMM."""
    bsz, c, *rest = x.shape
    return channel_mix(x.reshape(bsz, c, -1), w, b).view(bsz, -1, *rest)


def _kernel_mean(w: Tensor) -> Tensor:
    """``(B, C, n_r, n_c, *k) -> (B, C, n_r, n_c)``."""
    return w.mean(dim=tuple(range(4, w.ndim))) if w.ndim > 4 else w


def _bcast(t: Tensor, ndim: int) -> Tensor:
    return t.reshape(*t.shape, *([1] * (ndim - t.ndim)))


@dataclass(frozen=True)
class _NPConstants:
    """Parameter-free matrices of :class:`SharedNPLinear` on one architecture: ``eye_k[i]``
    ``(k_i, k_i)``; ``project[level]`` ``(3C, D_level)`` maps the ``[c, b, r]`` blocks of a role's
    ``(G, 3C)`` cross-term matrix onto the engine's pooled features of that neuron level (kernel
    means where kernels are folded, zero rows for missing terms); ``pool`` ``(6C, D_z)``: the
    pooled global vector from the engine's."""

    eye_k: tuple[Tensor, ...]
    project: tuple[Tensor, ...]
    pool: Tensor


_CONSTANTS: dict[tuple, _NPConstants] = {}


def _constants(spec: NetworkSpec, c: int, dtype: torch.dtype, device: torch.device) -> _NPConstants:
    """Cached per (architecture, channels, dtype, device): they depend on nothing learnable.
    Traced code builds them as graph ops, uncached: a cached tensor would be a constant of the
    graph and filling the cache a side effect, and neither is allowed inside a ``while_loop`` body
    (the compiled multi-step unroll of :mod:`nfopt.meta.problems`)."""
    if torch.compiler.is_compiling():
        return _build_constants(spec, c, dtype, device)
    key = (spec.weight_shapes, c, dtype, device)
    hit = _CONSTANTS.get(key)
    if hit is not None:
        return hit
    out = _build_constants(spec, c, dtype, device)
    if len(_CONSTANTS) >= 256:  # many architectures (a task mixture): start over
        _CONSTANTS.clear()
    _CONSTANTS[key] = out
    return out


def _build_constants(spec: NetworkSpec, c: int, dtype: torch.dtype, device: torch.device) -> _NPConstants:
    L, ks = spec.num_layers, spec.kernel_sizes
    kw = {"dtype": dtype, "device": device}
    eye = torch.eye(c, **kw)

    def mean_k(k: int) -> Tensor:  # (C, C k): kernel mean of folded (c, kernel) features
        return torch.kron(eye, torch.full((1, k), 1.0 / k, **kw))

    project = []
    for level in range(L + 1):
        parts = ([(0, mean_k(ks[level - 1])), (1, eye)] if level >= 1 else []) + (
            [(2, mean_k(ks[level]))] if level < L else []
        )
        cols = sum(t.shape[1] for _, t in parts)
        m = torch.zeros(3 * c, cols, **kw)
        at = 0
        for j, t in parts:
            m[j * c : (j + 1) * c, at : at + t.shape[1]] = t
            at += t.shape[1]
        project.append(m)
    offs = [0]
    for k in ks:
        offs.append(offs[-1] + c * k)
    boff = [offs[-1] + c * i for i in range(L)]
    s = torch.zeros(6 * c, boff[-1] + c, **kw)
    for i, k in enumerate(ks):
        s[0:c, offs[i] : offs[i + 1]] += mean_k(k) / L
        s[c : 2 * c, boff[i] : boff[i] + c] += eye / L
    s[2 * c : 3 * c, offs[0] : offs[1]] += mean_k(ks[0])
    s[3 * c : 4 * c, boff[0] : boff[0] + c] += eye
    s[4 * c : 5 * c, offs[L - 1] : offs[L]] += mean_k(ks[-1])
    s[5 * c : 6 * c, boff[-1] : boff[-1] + c] += eye
    return _NPConstants(tuple(torch.eye(k, **kw) for k in ks), tuple(project), s)


# Materialised per-layer matrices of SharedNPLinear, per module and architecture, for calls that
# need no gradient through them (the rule applied as an optimizer, ES/PES evaluations): outside
# the modules so they never enter a state dict, a pickle or a deep copy.
_MATERIALIZED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_MATERIALIZED_PER_MODULE = 8  # architectures kept per module (a task mixture: start over)


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

    symmetry: Symmetry = "np"  # see nfopt.nn.symmetry

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

    def forward(
        self, x: WeightSpaceFeatures, terms: tuple[list[Tensor], list[Tensor]] | None = None, relu: bool = False
    ) -> WeightSpaceFeatures:
        """Runs as the per-layer NP engine (fused backward, native pooling) with parameter
        matrices assembled from the role parameters for this architecture. ``terms``: per batch
        element ``(B, C_out)`` values added to every entry of each weight and each bias (e.g.
        :meth:`SharedGlobalInput.terms`), as the engine's per-sample bias: no pass over the
        output. ``relu``: the output passed through a ReLU, in the native mix's store where it
        runs (saves the activation's pass: 5.39 vs 5.73 ms of a quickstart-size rule update)."""
        if x.channels != self.in_channels:
            raise ValueError(f"SharedNPLinear expects C={self.in_channels}, got {x!r}")
        spec = NetworkSpec(tuple(tuple(w.shape[2:]) for w in x.weights))
        plan = _core.Plan(spec, (True,) * (spec.num_layers + 1), self.in_channels, self.out_channels)
        A, Q, Z, beta = self._materialized(spec)
        if terms is not None:  # (B, ΣG): kernel positions of a conv layer share its term
            ks = spec.kernel_sizes
            ws = [t.repeat_interleave(k, dim=1) if k > 1 else t for t, k in zip(terms[0], ks)]
            beta = beta + torch.cat([*ws, *terms[1]], dim=1)
        return apply_plan(plan, x, A, Q, Z, beta, relu=relu)

    def _materialized(self, spec: NetworkSpec):
        """:meth:`_materialize`, reused while the role parameters are the same tensors with the
        same storage at the same version (no in-place change, no ``.data`` swap, no dtype round
        trip since) and no gradient can flow through them: rebuilding them is ~35 small ops per
        call (~70 of the ~640 dispatched ops of a quickstart-size rule update, 3-4% of its time
        here; kernel launches on a GPU)."""
        params = (self.A, self.K, self.R, self.Z, self.beta, self.U, self.V, self.beta_b)
        if (
            (torch.is_grad_enabled() and any(p.requires_grad for p in params))
            or torch.compiler.is_compiling()
            or functorch_active(*params)
            or any(p.is_inference() or p.is_meta for p in params)  # no version counter / storage
        ):
            return self._materialize(spec)
        key = (spec.weight_shapes, self.A.dtype, self.A.device)
        # the tensors, their version counters (in-place changes) and data pointers (``.data =``
        # and dtype round trips replace the storage without a version bump; the entry keeps the
        # old storages alive, so a new one cannot reuse their addresses)
        stamp = (tuple(p._version for p in params), tuple(p.data_ptr() for p in params))
        cache = _MATERIALIZED.setdefault(self, {})
        hit = cache.get(key)
        if hit is not None and hit[1] == stamp and all(r() is p for r, p in zip(hit[0], params)):
            return hit[3]
        out = self._materialize(spec)
        if len(cache) >= _MATERIALIZED_PER_MODULE:
            cache.clear()
        storages = tuple(p.untyped_storage() for p in params)
        cache[key] = (tuple(weakref.ref(p) for p in params), stamp, storages, out)
        return out

    def _materialize(self, spec: NetworkSpec):
        """Per-layer ``A, Q, Z, beta`` of :mod:`nfopt.nn._core` equal to this layer on ``spec``:
        kernel positions share ``A`` (``A ⊗ I_k``), cross terms read kernel means and broadcast
        back, and the pooled global vector is a fixed linear map ``S`` of the engine's."""
        L, ks = spec.num_layers, spec.kernel_sizes
        roles = layer_roles(L)
        consts = _constants(spec, self.in_channels, self.A.dtype, self.A.device)

        def bcast_k(m: Tensor, k: int) -> Tensor:  # (G, .) -> (G k, .): same output at every kernel position
            return m.repeat_interleave(k, dim=0) if k > 1 else m

        A = [torch.kron(self.A[roles[i]], consts.eye_k[i]) if ks[i] > 1 else self.A[roles[i]] for i in range(L)]
        Q = []
        for level in range(L + 1):
            proj = consts.project[level]  # (3C, D_level): [c, b, r] blocks onto this level's pooled features

            rows = []
            if level >= 1:
                i = level - 1
                rows += [bcast_k(self.K[roles[i]] @ proj, ks[i]), self.U[roles[i]] @ proj]
            if level < L:
                rows.append(bcast_k(self.R[roles[level]] @ proj, ks[level]))
            Q.append(torch.cat(rows, dim=0))
        s = consts.pool  # (6C, Dz)
        zs = [bcast_k(self.Z[roles[i]] @ s, ks[i]) for i in range(L)] + [self.V[roles[i]] @ s for i in range(L)]
        betas = [bcast_k(self.beta[roles[i]][:, None], ks[i])[:, 0] for i in range(L)] + [
            self.beta_b[roles[i]] for i in range(L)
        ]
        return A, Q, torch.cat(zs, dim=0).t(), torch.cat(betas)

    def forward_reference(self, x: WeightSpaceFeatures) -> WeightSpaceFeatures:
        """The defining formula in plain ops (slow; tests check :meth:`forward` against it)."""
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
            return _mix(lin.weight, t, lin.bias)

        return WeightSpaceFeatures(
            [apply(self.weight_map, w) for w in x.weights], [apply(self.bias_map, b) for b in x.biases]
        )


@dataclass(frozen=True)
class PerTensor:
    """Inputs that are constant over each tensor: ``weights[i]``, ``biases[i]``: ``(B, T)`` for the
    ``i``-th weight and bias (e.g. per-network globals joined with per-tensor statistics such as
    norms, which every neuron permutation leaves unchanged)."""

    weights: list[Tensor]
    biases: list[Tensor]


class SharedGlobalInput(nn.Module):
    """Add a linear map of per-network global inputs ``(B, T)`` — or of per-tensor inputs
    (:class:`PerTensor`) — to every entry, by layer role (weights) and for biases: the
    contribution of ``T`` channels constant over a tensor to a linear layer, at no per-entry cost.
    ``(B, C, ...), (B, T) | PerTensor -> (B, C, ...)``. Equivariant: the inputs are invariant."""

    def __init__(self, in_features: int, channels: int) -> None:
        super().__init__()
        self.weight_maps = nn.Linear(in_features, len(ROLES) * channels, bias=False)
        self.bias_map = nn.Linear(in_features, channels, bias=False)
        self.channels = channels

    def terms(self, glob: Tensor | PerTensor, num_layers: int) -> tuple[list[Tensor], list[Tensor]]:
        """What :meth:`forward` adds to each weight and each bias tensor of a depth-``num_layers``
        network: two lists of ``num_layers`` ``(B, C)`` tensors."""
        roles = layer_roles(num_layers)
        if isinstance(glob, PerTensor):
            wmaps = self.weight_maps.weight.view(len(ROLES), self.channels, -1)
            ws = [torch.nn.functional.linear(glob.weights[i], wmaps[roles[i]]) for i in range(num_layers)]
            return ws, [self.bias_map(glob.biases[i]) for i in range(num_layers)]
        gw = self.weight_maps(glob).view(glob.shape[0], len(ROLES), self.channels)  # (B, roles, C)
        gb = self.bias_map(glob)
        return [gw[:, roles[i]] for i in range(num_layers)], [gb] * num_layers

    def forward(self, x: WeightSpaceFeatures, glob: Tensor | PerTensor) -> WeightSpaceFeatures:
        gws, gbs = self.terms(glob, len(x))
        return WeightSpaceFeatures(
            [w + _bcast(g, w.ndim) for w, g in zip(x.weights, gws)],
            [b + g[:, :, None] for b, g in zip(x.biases, gbs)],
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
        return x.map(lambda t: channel_layer_norm(t, self.weight, self.bias, self.eps))


class SharedWeightSpaceAttention(nn.Module):
    """:class:`~nfopt.nn.WeightSpaceAttention` for any architecture: query/key/value and output
    projections shared by layer role (weights) and across biases; queries, keys and values of
    conv weights are averaged over kernel positions and the attended result is added to every
    kernel position alike. ``(B, C, ...) -> (B, C, ...)``."""

    symmetry: Symmetry = "np"  # see nfopt.nn.symmetry

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
        roles = layer_roles(len(x))
        qw, qb = [], []
        for i, (w, b) in enumerate(x):
            qw.append(_mix(self.w_qkv[roles[i]], _kernel_mean(w)))  # (B, 3C, n_i, n_{i-1})
            qb.append(_mix(self.b_qkv.weight, b, self.b_qkv.bias))  # (B, 3C, n_i)
        out_w, out_b = attend_weight_space(qw, qb, self.num_heads, self.dropout if self.training else 0.0)
        ws = [  # broadcast over kernel positions
            _bcast(_mix(self.w_out[roles[i]], ow), x.weights[i].ndim).expand_as(x.weights[i])
            for i, ow in enumerate(out_w)
        ]
        bs = [_mix(self.b_out.weight, ob, self.b_out.bias) for ob in out_b]
        return WeightSpaceFeatures(ws, bs)
