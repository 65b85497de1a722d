"""Public test helpers: equivariance/invariance checks and random weight spaces.

Use them for your own layers::

    from nfopt.testing import assert_equivariant
    assert_equivariant(MyLayer(spec, 3, 4), spec, in_channels=3)
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable

import torch

from nfopt.nn.symmetry import symmetry_of
from nfopt.weightspace import NetworkSpec, WeightSpaceFeatures

__all__ = [
    "EquivarianceError",
    "assert_equivariant",
    "assert_invariant",
    "max_relative_error",
    "random_features",
    "random_spec",
]


class EquivarianceError(AssertionError):
    """Raised when a layer is not equivariant/invariant within tolerance."""


def random_spec(
    rng: random.Random | int | None = None,
    depth: tuple[int, int] = (1, 5),
    width: tuple[int, int] = (1, 16),
    conv: bool | None = None,
    kernel: tuple[int, int] = (1, 3),
    conv_dims: tuple[int, ...] = (1, 2),
) -> NetworkSpec:
    """A random MLP or CNN spec. ``conv=None`` picks either; a CNN gets 1..depth-1 conv layers
    (at least one) with ``kernel`` sizes per spatial dim, then linear layers."""
    rng = rng if isinstance(rng, random.Random) else random.Random(rng)
    n_layers = rng.randint(*depth)
    widths = [rng.randint(*width) for _ in range(n_layers + 1)]
    is_conv = rng.random() < 0.5 if conv is None else conv
    n_conv = rng.randint(1, n_layers) if is_conv else 0
    ndim = rng.choice(conv_dims)
    shapes = []
    for i in range(n_layers):
        k = tuple(rng.randint(*kernel) for _ in range(ndim)) if i < n_conv else ()
        shapes.append((widths[i + 1], widths[i], *k))
    return NetworkSpec(tuple(shapes))


def random_features(
    spec: NetworkSpec,
    batch_size: int = 2,
    channels: int = 1,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> WeightSpaceFeatures:
    """Standard-normal features of ``spec``."""
    return WeightSpaceFeatures.randn(spec, batch_size, channels, generator=generator, dtype=dtype)


def _flat(out) -> torch.Tensor:
    if isinstance(out, WeightSpaceFeatures):
        return torch.cat([t.reshape(-1) for t in out.tensors()])
    return out.reshape(-1)


def max_relative_error(a, b) -> float:
    """``max |a - b| / max |b|`` over all tensors of two features (or two tensors)."""
    fa, fb = _flat(a), _flat(b)
    if fa.shape != fb.shape:
        raise EquivarianceError(f"output shapes differ: {tuple(fa.shape)} vs {tuple(fb.shape)}")
    scale = fb.abs().max().clamp_min(torch.finfo(fb.dtype).tiny)
    return float((fa - fb).abs().max() / scale)


def _prepare(layer, spec, in_channels, batch_size, seed, inputs):
    gen = torch.Generator().manual_seed(seed)
    layer64 = copy.deepcopy(layer).double() if isinstance(layer, torch.nn.Module) else layer
    if isinstance(layer64, torch.nn.Module):
        layer64.eval()
    if inputs is None:
        c = in_channels if in_channels is not None else getattr(layer, "in_channels", 1)
        inputs = random_features(spec, batch_size, c, gen)
    else:
        inputs = inputs.to(torch.float64)
    return layer64, inputs, gen


def _check(layer, spec, in_channels, hidden_only, num_permutations, batch_size, rtol, seed, inputs, equivariant):
    if hidden_only is None:  # the layer's declared symmetry (nfopt.nn.symmetry); a plain callable: every neuron
        hidden_only = isinstance(layer, torch.nn.Module) and symmetry_of(layer) == "hnp"
    layer64, x, gen = _prepare(layer, spec, in_channels, batch_size, seed, inputs)
    worst = 0.0
    with torch.no_grad():
        y = layer64(x)
        for _ in range(num_permutations):
            perm = spec.sample_permutation(gen, hidden_only=hidden_only)
            expected = y.permute(perm) if equivariant else y
            worst = max(worst, max_relative_error(layer64(x.permute(perm)), expected))
    if worst > rtol:
        what = "equivariant" if equivariant else "invariant"
        raise EquivarianceError(
            f"{type(layer).__name__} is not {what} on {spec} "
            f"({'hidden' if hidden_only else 'all'} neuron permutations): max relative error "
            f"{worst:.3e} > rtol={rtol:.0e}"
        )
    return worst


def assert_equivariant(
    layer: Callable[[WeightSpaceFeatures], WeightSpaceFeatures],
    spec: NetworkSpec,
    in_channels: int | None = None,
    *,
    hidden_only: bool | None = None,
    num_permutations: int = 3,
    batch_size: int = 2,
    rtol: float = 1e-9,
    seed: int = 0,
    inputs: WeightSpaceFeatures | None = None,
) -> float:
    """Check ``layer(x.permute(σ)) == layer(x).permute(σ)`` in float64 for random ``σ``.

    ``hidden_only=None`` (default) tests the layer's declared symmetry (``layer.symmetry``, or
    the smallest among its parts: :func:`nfopt.nn.symmetry.symmetry_of`); ``False`` samples
    permutations of every neuron layer (NP symmetry), ``True`` of hidden layers only (HNP).
    The layer is deep-copied to float64 and put in eval mode. Returns the largest relative
    error; raises :class:`EquivarianceError` above ``rtol``.
    """
    return _check(layer, spec, in_channels, hidden_only, num_permutations, batch_size, rtol, seed, inputs, True)


def assert_invariant(
    layer: Callable[[WeightSpaceFeatures], torch.Tensor],
    spec: NetworkSpec,
    in_channels: int | None = None,
    *,
    hidden_only: bool | None = None,
    num_permutations: int = 3,
    batch_size: int = 2,
    rtol: float = 1e-9,
    seed: int = 0,
    inputs: WeightSpaceFeatures | None = None,
) -> float:
    """Check ``layer(x.permute(σ)) == layer(x)`` in float64 for random ``σ`` (see
    :func:`assert_equivariant`). Returns the largest relative error."""
    return _check(layer, spec, in_channels, hidden_only, num_permutations, batch_size, rtol, seed, inputs, False)
