"""`WeightSpaceFeatures`: per-entry features over a batch of weight spaces.

Layout (that of the reference ``nfn`` package): ``weights[i]: (B, C, n_i, n_{i-1}, *kernel_i)``
and ``biases[i]: (B, C, n_i)``. nfopt layers return tensors of this shape whose storage is
channels-last, so that stacks of layers never copy; any strides are accepted as input.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from nfopt.weightspace.modules import parse_module
from nfopt.weightspace.spec import NetworkSpec, Permutation

__all__ = ["WeightSpaceFeatures"]

Tensor = torch.Tensor


class WeightSpaceFeatures:
    """Weight and bias features of ``B`` networks with ``C`` channels each. Immutable."""

    __slots__ = ("biases", "weights")

    weights: tuple[Tensor, ...]
    biases: tuple[Tensor, ...]

    def __init__(self, weights: Sequence[Tensor], biases: Sequence[Tensor]) -> None:
        weights, biases = tuple(weights), tuple(biases)
        if len(weights) != len(biases) or not weights:
            raise ValueError(
                f"WeightSpaceFeatures needs one bias per weight (got {len(weights)} weights, {len(biases)} biases)"
            )
        b0, c0 = weights[0].shape[:2]
        for i, (w, b) in enumerate(zip(weights, biases)):
            if w.ndim < 4 or b.ndim != 3:
                raise ValueError(
                    f"weights[{i}] must be (B, C, n_out, n_in, *kernel) and biases[{i}] (B, C, n_out); "
                    f"got {tuple(w.shape)} and {tuple(b.shape)}"
                )
            if w.shape[:3] != b.shape or w.shape[:2] != (b0, c0):
                raise ValueError(
                    f"layer {i}: weight {tuple(w.shape)} and bias {tuple(b.shape)} disagree on "
                    f"(B, C, n_out) or with layer 0's (B, C)=({b0}, {c0})"
                )
            if i and w.shape[3] != weights[i - 1].shape[2]:
                raise ValueError(
                    f"weights[{i}] takes {w.shape[3]} inputs but weights[{i - 1}] has {weights[i - 1].shape[2]} outputs"
                )
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "biases", biases)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("WeightSpaceFeatures is immutable; build a new one")

    # ------------------------------------------------------------------ shape facts
    @property
    def batch_size(self) -> int:
        return self.weights[0].shape[0]

    @property
    def channels(self) -> int:
        return self.weights[0].shape[1]

    @property
    def spec(self) -> NetworkSpec:
        """The spec implied by the shapes (every layer read as having a bias)."""
        return NetworkSpec(tuple(tuple(w.shape[2:]) for w in self.weights))

    @property
    def dtype(self) -> torch.dtype:
        return self.weights[0].dtype

    @property
    def device(self) -> torch.device:
        return self.weights[0].device

    def __len__(self) -> int:
        return len(self.weights)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return iter(zip(self.weights, self.biases))

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.weights[i], self.biases[i]

    def tensors(self) -> tuple[Tensor, ...]:
        """``(W_1, b_1, ..., W_L, b_L)``."""
        return tuple(t for pair in self for t in pair)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{tuple(w.shape[2:])}" for w in self.weights)
        return f"WeightSpaceFeatures(B={self.batch_size}, C={self.channels}, layers=[{shapes}])"

    # ------------------------------------------------------------------ modules
    @classmethod
    def from_module(cls, module: nn.Module) -> WeightSpaceFeatures:
        """Weights of one MLP/CNN as features with ``B=1, C=1`` (a missing bias reads as 0).
        The tensors are detached copies: later changes to the module do not leak in."""
        ws, bs = [], []
        for _, layer in parse_module(module):
            w = layer.weight.detach().clone()
            ws.append(w[None, None])
            b = layer.bias.detach().clone() if layer.bias is not None else w.new_zeros(w.shape[0])
            bs.append(b[None, None])
        return cls(ws, bs)

    @classmethod
    def from_modules(cls, modules: Sequence[nn.Module]) -> WeightSpaceFeatures:
        """Weights of several same-shaped networks stacked along ``B`` (``C=1``)."""
        feats = [cls.from_module(m) for m in modules]
        if not feats:
            raise ValueError("from_modules needs at least one module")
        spec0 = feats[0].spec
        for k, f in enumerate(feats[1:], 1):
            if f.spec != spec0:
                raise ValueError(f"modules[{k}] has spec {f.spec}, modules[0] has {spec0}")
        return cls.stack(feats)

    def load_into(self, module: nn.Module, index: int = 0) -> nn.Module:
        """Write network ``index`` of this batch (``C`` must be 1) into ``module`` in place.

        Bias slots of bias-free layers are not written. Returns ``module``.
        """
        if self.channels != 1:
            raise ValueError(f"load_into needs C=1 features (one value per parameter), got C={self.channels}")
        layers = parse_module(module)
        if len(layers) != len(self):
            raise ValueError(f"module has {len(layers)} weight layers, features have {len(self)}")
        with torch.no_grad():
            for (name, layer), (w, b) in zip(layers, self):
                if tuple(layer.weight.shape) != tuple(w.shape[2:]):
                    raise ValueError(f"'{name}' has weight {tuple(layer.weight.shape)}, features {tuple(w.shape[2:])}")
                layer.weight.copy_(w[index, 0])
                if layer.bias is not None:
                    layer.bias.copy_(b[index, 0])
        return module

    def to_modules(self, template: nn.Module) -> list[nn.Module]:
        """One deep copy of ``template`` per batch element, loaded with its weights."""
        return [self.load_into(copy.deepcopy(template), k) for k in range(self.batch_size)]

    # ------------------------------------------------------------------ symmetry
    def permute(self, perm: Permutation) -> WeightSpaceFeatures:
        """Apply ``W_i -> W_i[σ_i][:, σ_{i-1}]`` and ``b_i -> b_i[σ_i]`` (kernel dims untouched)."""
        idx = [i.to(self.device) for i in perm.indices]
        if tuple(len(i) for i in idx) != self.spec.neuron_sizes:
            raise ValueError(f"permutation sizes {perm.sizes} do not fit {self.spec.neuron_sizes}")
        ws = tuple(w.index_select(2, idx[i + 1]).index_select(3, idx[i]) for i, w in enumerate(self.weights))
        bs = tuple(b.index_select(2, idx[i + 1]) for i, b in enumerate(self.biases))
        return WeightSpaceFeatures(ws, bs)

    # ------------------------------------------------------------------ algebra
    def map(self, fn: Callable[[Tensor], Tensor]) -> WeightSpaceFeatures:
        """Apply ``fn`` to every weight and bias tensor."""
        return WeightSpaceFeatures(tuple(fn(w) for w in self.weights), tuple(fn(b) for b in self.biases))

    def scale_tensors(self, scales: Sequence[float] | Tensor) -> WeightSpaceFeatures:
        """Multiply each tensor by its own scalar: ``scales`` holds ``2 L`` values in the order
        ``(w_1, b_1, w_2, b_2, ...)`` (e.g. the inverse of per-tensor dataset stds)."""
        if len(scales) != 2 * len(self):
            raise ValueError(
                f"scales: need {2 * len(self)} values (w_1, b_1, w_2, ...) for {len(self)} layers, got {len(scales)}"
            )
        return WeightSpaceFeatures(
            tuple(w * scales[2 * i] for i, w in enumerate(self.weights)),
            tuple(b * scales[2 * i + 1] for i, b in enumerate(self.biases)),
        )

    def _zip(self, other: WeightSpaceFeatures | Tensor | float, fn) -> WeightSpaceFeatures:
        if isinstance(other, WeightSpaceFeatures):
            if len(other) != len(self):
                raise ValueError(f"cannot combine features with {len(self)} and {len(other)} layers")
            return WeightSpaceFeatures(
                tuple(fn(a, b) for a, b in zip(self.weights, other.weights)),
                tuple(fn(a, b) for a, b in zip(self.biases, other.biases)),
            )
        return self.map(lambda t: fn(t, other))

    def __add__(self, other):
        return self._zip(other, torch.add)

    __radd__ = __add__

    def __sub__(self, other):
        return self._zip(other, torch.sub)

    def __rsub__(self, other):
        return self._zip(other, lambda a, b: b - a)

    def __mul__(self, other):
        return self._zip(other, torch.mul)

    __rmul__ = __mul__

    def __truediv__(self, other):
        return self._zip(other, torch.div)

    def __neg__(self):
        return self.map(torch.neg)

    def to(self, *args, **kwargs) -> WeightSpaceFeatures:
        """``Tensor.to`` on every tensor (device and/or dtype)."""
        return self.map(lambda t: t.to(*args, **kwargs))

    def detach(self) -> WeightSpaceFeatures:
        return self.map(torch.Tensor.detach)

    def clone(self) -> WeightSpaceFeatures:
        return self.map(torch.clone)

    def allclose(self, other: WeightSpaceFeatures, **kw) -> bool:
        return len(self) == len(other) and all(
            a.shape == b.shape and torch.allclose(a, b, **kw) for a, b in zip(self.tensors(), other.tensors())
        )

    # ------------------------------------------------------------------ batching
    @staticmethod
    def cat(feats: Sequence[WeightSpaceFeatures], dim: int = 1) -> WeightSpaceFeatures:
        """Concatenate along channels (``dim=1``, default) or batch (``dim=0``)."""
        if dim not in (0, 1):
            raise ValueError(f"cat dim must be 0 (batch) or 1 (channels), got {dim}")
        feats = list(feats)
        return WeightSpaceFeatures(
            tuple(torch.cat(ws, dim) for ws in zip(*(f.weights for f in feats))),
            tuple(torch.cat(bs, dim) for bs in zip(*(f.biases for f in feats))),
        )

    @staticmethod
    def stack(feats: Sequence[WeightSpaceFeatures]) -> WeightSpaceFeatures:
        """Concatenate along the batch axis."""
        return WeightSpaceFeatures.cat(feats, dim=0)

    def __getstate__(self):
        return (self.weights, self.biases)

    def __setstate__(self, state) -> None:
        object.__setattr__(self, "weights", state[0])
        object.__setattr__(self, "biases", state[1])

    # ------------------------------------------------------------------ flat vectors
    def flatten(self) -> Tensor:
        """``(B, C, N)`` with ``N = spec.num_params``, ordered ``W_1, b_1, ..., W_L, b_L``
        (the order of ``module.parameters()`` for networks with biases)."""
        b, c = self.batch_size, self.channels
        return torch.cat([t.reshape(b, c, -1) for t in self.tensors()], dim=-1)

    @classmethod
    def from_flat(cls, flat: Tensor, spec: NetworkSpec) -> WeightSpaceFeatures:
        """Inverse of :meth:`flatten`: ``flat`` is ``(B, C, N)``, ``(B, N)`` (C=1) or ``(N,)``."""
        if flat.ndim == 1:
            flat = flat[None, None]
        elif flat.ndim == 2:
            flat = flat[:, None]
        if flat.shape[-1] != spec.num_params:
            raise ValueError(f"flat vector has {flat.shape[-1]} entries, {spec} needs {spec.num_params}")
        bsz, c = flat.shape[:2]
        sizes = [s for w in spec.weight_shapes for s in (w, (w[0],))]
        parts = torch.split(flat, [int(torch.Size(s).numel()) for s in sizes], dim=-1)
        tensors = [p.reshape(bsz, c, *s) for p, s in zip(parts, sizes)]
        return cls(tensors[0::2], tensors[1::2])

    @classmethod
    def zeros(cls, spec: NetworkSpec, batch_size: int = 1, channels: int = 1, **kw) -> WeightSpaceFeatures:
        return cls(
            [torch.zeros(batch_size, channels, *s, **kw) for s in spec.weight_shapes],
            [torch.zeros(batch_size, channels, *s, **kw) for s in spec.bias_shapes],
        )

    @classmethod
    def randn(
        cls,
        spec: NetworkSpec,
        batch_size: int = 1,
        channels: int = 1,
        generator: torch.Generator | None = None,
        **kw,
    ) -> WeightSpaceFeatures:
        return cls(
            [torch.randn(batch_size, channels, *s, generator=generator, **kw) for s in spec.weight_shapes],
            [torch.randn(batch_size, channels, *s, generator=generator, **kw) for s in spec.bias_shapes],
        )


def _register_pytree() -> None:
    """Make features a pytree node so ``torch.func`` transforms can take and return them."""
    try:
        from torch.utils import _pytree as pytree
    except ImportError:  # pragma: no cover
        return
    n_of = len

    def flatten(f: WeightSpaceFeatures):
        return list(f.weights) + list(f.biases), n_of(f)

    def unflatten(values, n):
        # No validation: inside torch.func transforms the tensors are per-example views.
        values = list(values)
        out = object.__new__(WeightSpaceFeatures)
        out.__setstate__((tuple(values[:n]), tuple(values[n:])))
        return out

    pytree.register_pytree_node(WeightSpaceFeatures, flatten, unflatten)


_register_pytree()
