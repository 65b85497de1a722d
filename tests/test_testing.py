"""nfopt.testing must catch broken layers, not only pass good ones."""

import pytest
import torch
from torch import nn

from nfopt import NetworkSpec, WeightSpaceFeatures
from nfopt.nn import NPLinear, NPPool
from nfopt.testing import EquivarianceError, assert_equivariant, assert_invariant, random_spec

SPEC = NetworkSpec.mlp([6, 5, 4, 3])


class FlatMLP(nn.Module):
    """A deliberately non-equivariant layer: a dense map of the flattened weight space."""

    def __init__(self, spec: NetworkSpec, channels: int = 1) -> None:
        super().__init__()
        self.spec = spec
        self.lin = nn.Linear(spec.num_params * channels, spec.num_params * channels)

    def forward(self, x: WeightSpaceFeatures) -> WeightSpaceFeatures:
        flat = x.flatten()
        out = self.lin(flat.reshape(x.batch_size, -1)).reshape(flat.shape)
        return WeightSpaceFeatures.from_flat(out, self.spec)


class RowIndexBias(nn.Module):
    """Subtly broken: NP layer plus a term that depends on the hidden neuron's index."""

    def __init__(self, spec):
        super().__init__()
        self.inner = NPLinear(spec, 1, 1)
        self.in_channels = 1

    def forward(self, x):
        y = self.inner(x)
        w0 = y.weights[0] + 1e-3 * torch.arange(y.weights[0].shape[2], dtype=y.dtype)[:, None]
        return WeightSpaceFeatures((w0, *y.weights[1:]), y.biases)


def test_catches_dense_layer():
    with pytest.raises(EquivarianceError, match="not equivariant"):
        assert_equivariant(FlatMLP(SPEC), SPEC, in_channels=1)


def test_catches_small_index_dependence():
    with pytest.raises(EquivarianceError):
        assert_equivariant(RowIndexBias(SPEC), SPEC, hidden_only=True)


def test_catches_non_invariant_pool():
    class FirstEntry(nn.Module):
        def forward(self, x):
            return x.weights[1][:, :, 0, 0]

    with pytest.raises(EquivarianceError, match="not invariant"):
        assert_invariant(FirstEntry(), SPEC, in_channels=2, hidden_only=True)


def test_passes_good_layers_and_reports_error():
    err = assert_equivariant(NPLinear(SPEC, 2, 3), SPEC)
    assert 0.0 <= err < 1e-12
    assert assert_invariant(NPPool(SPEC), SPEC, in_channels=2) < 1e-12


def test_random_spec_is_deterministic_and_covers_conv():
    assert random_spec(7) == random_spec(7)
    kinds = {random_spec(s).is_conv for s in range(40)}
    assert kinds == {True, False}
    for s in range(40):
        spec = random_spec(s)
        assert 1 <= spec.num_layers <= 5
        assert all(1 <= n <= 16 for n in spec.neuron_sizes)
