"""Equivariant linear layers over weight space: ``NPLinear`` and ``HNPLinear``."""

from __future__ import annotations

import itertools
import math
from contextlib import contextmanager

import torch
from torch import nn

from nfopt.nn import _core
from nfopt.nn._layout import fold_bias, fold_weight, unfold_bias, unfold_weight
from nfopt.nn._mix import functorch_active
from nfopt.nn.pointwise import NFActivation
from nfopt.nn.symmetry import Symmetry
from nfopt.weightspace import NetworkSpec, WeightSpaceFeatures

__all__ = ["HNPLinear", "NPLinear", "apply_plan", "fuse_relu", "fused_backward"]

_FUSED = True


@contextmanager
def fused_backward(enabled: bool):
    """Choose the hand-written backward (default) or plain autograd for NP/HNP layers.

    Both compute the same function and gradients; plain autograd supports double backward.
    ``torch.func`` transforms always use plain autograd.
    """
    global _FUSED
    old, _FUSED = _FUSED, enabled
    try:
        yield
    finally:
        _FUSED = old


def apply_plan(
    plan: _core.Plan, x: WeightSpaceFeatures, A, Q, Z, beta, adjust=None, relu: bool = False
) -> WeightSpaceFeatures:
    """Run the equivariant linear map of ``plan`` with the given parameter matrices on ``x``:
    fold to the kernels' layout, the fused-backward path when autograd needs it (plain ops
    otherwise, and under ``torch.func``), unfold. ``adjust(xs, bs)`` may edit folded inputs.
    ``relu``: the output passed through a ReLU (in the native mix's store where it runs)."""
    perm, spec, c = plan.perm, plan.spec, plan.c_out
    xs = [fold_weight(w, not perm[i + 1], not perm[i]) for i, w in enumerate(x.weights)]
    bs = [fold_bias(b, not perm[i + 1]) for i, b in enumerate(x.biases)]
    if adjust is not None:
        xs, bs = adjust(xs, bs)
    params = [p for p in (*A, *Q, Z, beta) if p is not None]
    fused = (
        _FUSED
        and torch.is_grad_enabled()
        and not functorch_active(*xs, *params)
        and any(t.requires_grad for t in (*xs, *bs, *params))
    )
    if fused:
        out = _core.FusedEquivariantLinear.apply(plan, len(xs), relu, *xs, *bs, *A, *Q, Z, beta)
        hs, us = out[: len(xs)], out[len(xs) :]
    else:
        # plain ops, or the native layer op (csrc/np_layer.cpp) where no autograd/torch.func sees it
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (*xs, *bs, *params))
        native = None if needs_grad or functorch_active(*xs, *params) else _core._native_for(xs)
        hs, us = _core.forward(plan, xs, bs, A, Q, Z, beta, native=native, relu=relu)
    n = spec.neuron_sizes
    ws = [unfold_weight(h, spec.weight_shapes[i], c, not perm[i + 1], not perm[i]) for i, h in enumerate(hs)]
    bs_out = [unfold_bias(u, n[i + 1], c, not perm[i + 1]) for i, u in enumerate(us)]
    return WeightSpaceFeatures(ws, bs_out)


class _EquivariantLinear(nn.Module):
    """Shared machinery: parameters of :class:`nfopt.nn._core.Plan` and layout handling."""

    def __init__(
        self,
        spec: NetworkSpec,
        in_channels: int,
        out_channels: int,
        permutable: tuple[bool, ...],
        max_params: int | None,
        relu: bool = False,
    ) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels={in_channels}, out_channels={out_channels}: both must be >= 1")
        self.spec, self.in_channels, self.out_channels, self.relu = spec, in_channels, out_channels, relu
        plan = _core.Plan(spec, permutable, in_channels, out_channels)
        self.plan = plan
        L = spec.num_layers
        shapes = {}
        for i in range(L):
            if plan.has_A(i):
                shapes[f"A{i}"] = (plan.fw(i, out=True), plan.fw(i))
        for level in range(L + 1):
            if permutable[level]:
                shapes[f"Q{level}"] = (sum(plan.p_parts(level, out=True)), sum(plan.p_parts(level)))
        shapes["Z"] = (plan.dz, sum(plan.z_out_parts()))
        shapes["beta"] = (sum(plan.z_out_parts()),)
        total = sum(math.prod(s) for s in shapes.values())
        if max_params is not None and total > max_params:
            raise ValueError(
                f"{type(self).__name__} for {spec} with {in_channels}->{out_channels} channels needs "
                f"{total:,} parameters (> max_params={max_params:,}); the HNP maps of the input and "
                "output layers grow as (n_in*k*C)^2 and (n_out*k*C)^2. Use NPLinear(io_embed=True) "
                "for wide inputs/outputs, fewer channels, or raise max_params"
            )
        for name, shape in shapes.items():
            self.register_parameter(name, nn.Parameter(torch.empty(shape)))
        self.reset_parameters()

    def _params(self):
        L = self.spec.num_layers
        A = [getattr(self, f"A{i}", None) for i in range(L)]
        Q = [getattr(self, f"Q{level}", None) for level in range(L + 1)]
        return A, Q, self.Z, self.beta

    def reset_parameters(self) -> None:
        _core.init_parameters(self.plan, *self._params())

    def _check(self, x: WeightSpaceFeatures) -> None:
        if len(x) != self.spec.num_layers or x.channels != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects {self.spec.num_layers} layers with C={self.in_channels}, got {x!r}"
            )
        for i, w in enumerate(x.weights):
            if tuple(w.shape[2:]) != self.spec.weight_shapes[i]:
                raise ValueError(
                    f"weights[{i}] has shape {tuple(w.shape[2:])} per channel, the layer's spec "
                    f"{self.spec} expects {self.spec.weight_shapes[i]}"
                )

    def forward(self, x: WeightSpaceFeatures) -> WeightSpaceFeatures:
        self._check(x)
        return apply_plan(self.plan, x, *self._params(), adjust=self._adjust_inputs, relu=self.relu)

    def _adjust_inputs(self, xs, bs):
        return xs, bs

    def extra_repr(self) -> str:
        relu = ", relu=True" if self.relu else ""
        return f"{self.spec}, in_channels={self.in_channels}, out_channels={self.out_channels}{relu}"


class NPLinear(_EquivariantLinear):
    r"""Linear layer equivariant to permutations of *every* neuron layer (the NFN paper's NP).

    Input ``weights[i]: (B, C_in, n_i, n_{i-1}, *k_i)``, ``biases[i]: (B, C_in, n_i)``; output the
    same with ``C_out`` channels. Kernel positions are folded into the per-entry feature vector
    (``F_i = k_i C``). For weight ``i``, entry ``(j, k)``:

    .. math::
        H_i[j,k] = A_i W_i[j,k]
                 + K_i [\bar W_i[j,:],\ b_i[j],\ \bar W_{i+1}[:,j]]            (column term)
                 + R_i [\bar W_i[:,k],\ \bar W_{i-1}[k,:],\ b_{i-1}[k]]       (row term)
                 + Z_i [\bar W_1, \dots, \bar W_L, \bar b_1, \dots, \bar b_L] + \beta_i

    and for the bias ``u_i[j] = U_i [\bar W_i[j,:], b_i[j], \bar W_{i+1}[:,j]] + V_i[\dots] + \beta'_i``,
    where bars are means over the indicated axes (``:``) or over all entries. This is exactly the
    function class of the NP layer (terms missing at the first and last layer are dropped).

    ``relu=True``: the output passed through a ReLU, the same function as the layer followed by
    :class:`NFActivation` but fused into the layer's passes (applied as the output is stored and
    masked into the output gradient in the backward: no pass over the output of its own).

    With ``io_embed=True`` learned embeddings of the input and output neurons (shapes
    ``(F_1, n_0)``, ``(F_L, n_L)``, ``(C_in, n_L)``) are added to the first/last weights and the
    last bias before the map, which makes it equivariant to hidden permutations only.
    """

    symmetry: Symmetry = "np"  # see nfopt.nn.symmetry

    def __init__(
        self, spec: NetworkSpec, in_channels: int, out_channels: int, io_embed: bool = False, relu: bool = False
    ) -> None:
        L = spec.num_layers
        super().__init__(spec, in_channels, out_channels, (True,) * (L + 1), max_params=None, relu=relu)
        self.io_embed = io_embed
        if io_embed:
            self.symmetry = "hnp"  # input/output neurons are told apart by their embeddings
            n_in, n_out = spec.io_sizes
            k0, kl = spec.kernel_sizes[0], spec.kernel_sizes[-1]
            self.in_embed = nn.Parameter(torch.randn(k0 * in_channels, n_in))  # folded (F_1, n_0)
            self.out_embed = nn.Parameter(torch.randn(kl * in_channels, n_out))  # folded (F_L, n_L)
            self.out_bias_embed = nn.Parameter(torch.randn(in_channels, n_out))

    def _adjust_inputs(self, xs, bs):
        if not self.io_embed:
            return xs, bs
        xs, bs = list(xs), list(bs)
        xs[0] = xs[0] + self.in_embed[None, :, None]  # (B, F, n_1, n_0): broadcast over rows
        xs[-1] = xs[-1] + self.out_embed[None, :, :, None]  # (B, F, n_L, n_{L-1}): over columns
        bs[-1] = bs[-1] + self.out_bias_embed[None]
        return xs, bs

    def extra_repr(self) -> str:
        return super().extra_repr() + (", io_embed=True" if self.io_embed else "")


class HNPLinear(_EquivariantLinear):
    r"""Linear layer equivariant to permutations of the *hidden* neuron layers (the NFN paper's HNP).

    The same terms as :class:`NPLinear`, except that input neurons (columns of ``W_1``) and
    output neurons (rows of ``W_L``, entries of ``b_L``) are told apart: their axes are folded
    into the feature vector, so e.g. ``W_1[j, :]`` is mixed by a dense ``(n_0 F) x (n_0 G)`` map
    and all IO-indexed means enter the global term. This is the complete basis of HNP-equivariant
    linear maps (no redundant terms). Depth 1 has no hidden neurons: the layer is then a dense
    linear map of the whole weight space.

    Parameter count grows as ``(n_0 k_1 C)^2 + (n_L k_L C)^2``; construction fails with a clear
    error above ``max_params`` (default 50M). For wide inputs use ``NPLinear(io_embed=True)``.
    ``relu=True``: a fused ReLU on the output, as in :class:`NPLinear`.
    """

    symmetry: Symmetry = "hnp"  # see nfopt.nn.symmetry

    def __init__(
        self,
        spec: NetworkSpec,
        in_channels: int,
        out_channels: int,
        max_params: int | None = 50_000_000,
        relu: bool = False,
    ) -> None:
        L = spec.num_layers
        permutable = (False, *([True] * (L - 1)), False)
        super().__init__(spec, in_channels, out_channels, permutable, max_params, relu)


def fuse_relu(module: nn.Module) -> int:
    """Fuse the ReLU after every NP/HNP layer into the layer, in place, throughout ``module``:
    wherever an ``nn.Sequential`` holds an :class:`NPLinear` / :class:`HNPLinear` directly
    followed by an :class:`NFActivation` of ``torch.relu`` (or ``F.relu``, ``nn.ReLU``), the layer
    takes ``relu=True`` and the activation becomes ``nn.Identity`` (the same function; neither
    holds parameters, so ``state_dict`` keys and saved models are unchanged). Returns how many
    were fused."""
    fused = 0
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        for first, second in itertools.pairwise(list(seq._modules)):
            layer, act = seq._modules[first], seq._modules[second]
            is_relu = isinstance(act, NFActivation) and act.is_relu
            if isinstance(layer, _EquivariantLinear) and not layer.relu and is_relu:
                layer.relu = True
                seq._modules[second] = nn.Identity()
                fused += 1
    return fused
