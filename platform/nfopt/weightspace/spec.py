"""`NetworkSpec`: the static shape of an MLP/CNN weight space and its permutation action.

A network with ``L`` layers has neuron layers ``0..L`` with sizes ``n_0..n_L`` (``n_0`` the
input width or input channels, ``n_L`` the output width). Layer ``i`` (1-based in the maths,
0-based in Python tuples) has weight ``W_i: (n_i, n_{i-1}, *kernel_i)`` and bias ``b_i: (n_i,)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

__all__ = ["NetworkSpec", "Permutation"]


@dataclass(frozen=True)
class Permutation:
    """One permutation per neuron layer ``0..L`` of a weight space.

    ``indices[l]`` is a LongTensor of length ``n_l``: after permuting, neuron ``j`` of layer ``l``
    is the old neuron ``indices[l][j]``. Acting on weights this is
    ``W_i -> W_i[indices[i]][:, indices[i-1]]`` and ``b_i -> b_i[indices[i]]``, i.e.
    ``W_i -> P_i W_i P_{i-1}^T`` with ``P_l`` the permutation matrix with rows ``e_{indices[l][j]}``.

    Composition follows matrix products: ``(p @ q)`` applies ``q`` first, then ``p``.
    """

    indices: tuple[torch.Tensor, ...]

    def __post_init__(self) -> None:
        idx = tuple(torch.as_tensor(i, dtype=torch.long) for i in self.indices)
        for level, i in enumerate(idx):
            if i.ndim != 1 or not torch.equal(i.sort().values, torch.arange(len(i))):
                raise ValueError(f"Permutation.indices[{level}] is not a permutation of 0..{len(i) - 1}")
        object.__setattr__(self, "indices", idx)

    @classmethod
    def identity(cls, sizes: tuple[int, ...]) -> Permutation:
        return cls(tuple(torch.arange(n) for n in sizes))

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(len(i) for i in self.indices)

    def __matmul__(self, other: Permutation) -> Permutation:
        """``self @ other``: the permutation that applies ``other`` first, then ``self``."""
        if self.sizes != other.sizes:
            raise ValueError(f"cannot compose permutations of sizes {self.sizes} and {other.sizes}")
        return Permutation(tuple(o[s] for s, o in zip(self.indices, other.indices)))

    compose = __matmul__

    def inverse(self) -> Permutation:
        return Permutation(tuple(torch.argsort(i) for i in self.indices))

    def is_identity(self) -> bool:
        return all(torch.equal(i, torch.arange(len(i))) for i in self.indices)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Permutation)
            and self.sizes == other.sizes
            and all(torch.equal(a, b) for a, b in zip(self.indices, other.indices))
        )

    def __hash__(self) -> int:
        return hash(tuple(tuple(i.tolist()) for i in self.indices))


@dataclass(frozen=True)
class NetworkSpec:
    """Immutable shape of a weight space.

    Args:
        weight_shapes: per layer ``(n_out, n_in, *kernel)``; kernels of 0-3 spatial dims.
        has_bias: per layer, whether the real network has a bias. Features always carry a bias
            slot of shape ``(n_out,)``; for bias-free layers it is read as zeros and never written
            back to a module.

    Convolutional layers (with kernel dims) must all come before linear layers (CNN: convs,
    global pooling, then linear layers). ``n_in`` of each layer must equal ``n_out`` of the
    previous one.
    """

    weight_shapes: tuple[tuple[int, ...], ...]
    has_bias: tuple[bool, ...] = field(default=())

    def __post_init__(self) -> None:
        shapes = tuple(tuple(int(d) for d in s) for s in self.weight_shapes)
        object.__setattr__(self, "weight_shapes", shapes)
        if not shapes:
            raise ValueError("NetworkSpec.weight_shapes is empty: a weight space needs >= 1 layer")
        has_bias = tuple(bool(b) for b in self.has_bias) or (True,) * len(shapes)
        if len(has_bias) != len(shapes):
            raise ValueError(f"NetworkSpec.has_bias has {len(has_bias)} entries for {len(shapes)} layers")
        object.__setattr__(self, "has_bias", has_bias)
        seen_linear = False
        for i, s in enumerate(shapes):
            if len(s) < 2 or len(s) > 5 or any(d < 1 for d in s):
                raise ValueError(
                    f"NetworkSpec.weight_shapes[{i}]={s}: expected (n_out, n_in, *kernel) with "
                    "positive sizes and at most 3 kernel dims"
                )
            if i > 0 and s[1] != shapes[i - 1][0]:
                raise ValueError(
                    f"NetworkSpec.weight_shapes[{i}]={s} takes {s[1]} inputs but layer {i - 1} "
                    f"has {shapes[i - 1][0]} outputs"
                )
            if len(s) == 2:
                seen_linear = True
            elif seen_linear:
                raise ValueError(
                    f"NetworkSpec.weight_shapes[{i}]={s} is a convolution after a linear layer; "
                    "CNN weight spaces are convolutions, global pooling, then linear layers"
                )

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_module(cls, module: torch.nn.Module) -> NetworkSpec:
        """Spec of an MLP/CNN module (see :func:`nfopt.weightspace.modules.parse_module`)."""
        from nfopt.weightspace.modules import parse_module

        layers = parse_module(module)
        return cls(
            tuple(tuple(layer.weight.shape) for _, layer in layers),
            tuple(layer.bias is not None for _, layer in layers),
        )

    @classmethod
    def mlp(cls, widths: tuple[int, ...] | list[int]) -> NetworkSpec:
        """Spec of an MLP with neuron-layer widths ``(n_0, ..., n_L)``."""
        w = tuple(widths)
        return cls(tuple((w[i + 1], w[i]) for i in range(len(w) - 1)))

    # ----------------------------------------------------------------- shape facts
    @property
    def num_layers(self) -> int:
        """``L``: number of weight layers."""
        return len(self.weight_shapes)

    def __len__(self) -> int:
        return self.num_layers

    @property
    def neuron_sizes(self) -> tuple[int, ...]:
        """``(n_0, ..., n_L)``."""
        return (self.weight_shapes[0][1], *(s[0] for s in self.weight_shapes))

    @property
    def kernel_shapes(self) -> tuple[tuple[int, ...], ...]:
        return tuple(s[2:] for s in self.weight_shapes)

    @property
    def kernel_sizes(self) -> tuple[int, ...]:
        """Number of kernel positions per layer (1 for linear layers)."""
        return tuple(math.prod(k) for k in self.kernel_shapes)

    @property
    def bias_shapes(self) -> tuple[tuple[int], ...]:
        return tuple((s[0],) for s in self.weight_shapes)

    @property
    def num_params(self) -> int:
        """Number of scalars in the weight space (bias slots of bias-free layers included)."""
        return sum(math.prod(s) + s[0] for s in self.weight_shapes)

    @property
    def num_hidden_layers(self) -> int:
        return self.num_layers - 1

    @property
    def io_sizes(self) -> tuple[int, int]:
        """``(n_in, n_out)``."""
        return self.neuron_sizes[0], self.neuron_sizes[-1]

    @property
    def is_conv(self) -> bool:
        return any(len(s) > 2 for s in self.weight_shapes)

    # ----------------------------------------------------------------- permutations
    def sample_permutation(self, generator: torch.Generator | None = None, hidden_only: bool = True) -> Permutation:
        """A uniformly random permutation of the neuron layers.

        With ``hidden_only`` (the symmetry of a real network), input and output neuron layers
        get the identity; otherwise every neuron layer is permuted (the NP symmetry group).
        """
        sizes = self.neuron_sizes
        idx = []
        for level, n in enumerate(sizes):
            io = level in (0, len(sizes) - 1)
            idx.append(torch.arange(n) if hidden_only and io else torch.randperm(n, generator=generator))
        return Permutation(tuple(idx))

    def identity_permutation(self) -> Permutation:
        return Permutation.identity(self.neuron_sizes)

    def __repr__(self) -> str:
        layers = ", ".join("x".join(map(str, s)) for s in self.weight_shapes)
        return f"NetworkSpec([{layers}])"
