import pytest
import torch
from hypothesis import given

from nfopt import NetworkSpec
from nfopt.nn import FourierIOEncoding, LearnedIOEmbedding, NPLinear
from nfopt.testing import EquivarianceError, assert_equivariant, random_features
from tests.strategies import channels, specs


@given(specs(), channels)
def test_io_encodings_equivariant_to_hidden(spec, c):
    assert_equivariant(LearnedIOEmbedding(spec, c), spec, in_channels=c, hidden_only=True)
    for kind in ("sinusoidal", "gaussian"):
        enc = FourierIOEncoding(spec, c, num_bands=3, kind=kind)
        assert_equivariant(enc, spec, in_channels=c, hidden_only=True)
        assert enc(random_features(spec, 1, c)).channels == enc.out_channels == c + 12


def test_encodings_break_io_symmetry_and_stack_with_np():
    spec = NetworkSpec.mlp([6, 5, 4])
    enc = FourierIOEncoding(spec, 1, num_bands=2)
    with pytest.raises(EquivarianceError):
        assert_equivariant(enc, spec, in_channels=1, hidden_only=False)
    model = torch.nn.Sequential(enc, NPLinear(spec, enc.out_channels, 2))
    assert_equivariant(model, spec, in_channels=1, hidden_only=True)


def test_fourier_values_and_errors():
    spec = NetworkSpec.mlp([3, 2])
    enc = FourierIOEncoding(spec, 1, num_bands=1, max_freq=1.0)
    y = enc(random_features(spec, 1, 1))
    # input neuron positions -1, 0, 1 -> sin(pi p) = 0, 0, 0 ; cos = -1, 1, -1 on W_1's columns
    assert torch.allclose(y.weights[0][0, 2, 0], torch.tensor([-1.0, 1.0, -1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="kind='bad'"):
        FourierIOEncoding(spec, 1, kind="bad")
