import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nfopt import NetworkSpec
from nfopt.nn import ChannelLayerNorm, LearnedScale, NFActivation, NFDropout, Pointwise
from nfopt.testing import assert_equivariant, random_features
from tests.strategies import channels, specs


@given(specs(), channels, channels)
def test_pointwise_equivariant(spec, c_in, c_out):
    layer = Pointwise(spec, c_in, c_out)
    assert_equivariant(layer, spec, in_channels=c_in)
    y = layer(random_features(spec, 2, c_in, dtype=torch.float32))
    assert y.channels == c_out and y.spec == spec


@given(specs(), channels)
def test_elementwise_wrappers_equivariant(spec, c):
    for layer in (
        NFActivation(),
        NFActivation(torch.nn.GELU()),
        ChannelLayerNorm(spec, c),
        LearnedScale(spec, 0.5),
        NFDropout(0.5),
    ):
        assert_equivariant(layer, spec, in_channels=c)


def test_dropout_and_norm_behave():
    spec = NetworkSpec.mlp([8, 8, 8])
    x = random_features(spec, 4, 3, dtype=torch.float32)
    drop = NFDropout(0.5).train()
    zeros = (drop(x).weights[0] == 0).float().mean().item()
    assert 0.3 < zeros < 0.7
    assert drop.eval()(x).allclose(x)
    with pytest.raises(ValueError, match=r"p=1\.5"):
        NFDropout(1.5)
    y = ChannelLayerNorm(spec, 3)(x)
    assert torch.allclose(y.weights[0].mean(1), torch.zeros(1), atol=1e-5)
    scaled = LearnedScale(spec, 2.0)(x)
    assert scaled.allclose(x * 2.0)


@given(
    st.integers(1, 3),
    st.integers(1, 20),
    st.lists(st.integers(1, 70), min_size=1, max_size=3),
    st.sampled_from([torch.float32, torch.float64]),
)
def test_channel_layer_norm_native_equals_plain_ops(batch, channels, rest, dtype):
    """Inference takes the native one-pass kernel (where built); it computes the plain form."""
    from nfopt.nn.pointwise import channel_layer_norm

    gen = torch.Generator().manual_seed(batch * 100 + channels)
    x = torch.randn(batch, channels, *rest, generator=gen, dtype=dtype) * 3 + 1
    w, b = torch.randn(channels, generator=gen, dtype=dtype), torch.randn(channels, generator=gen, dtype=dtype)
    with torch.no_grad():
        got = channel_layer_norm(x, w, b, 1e-5)
    want = channel_layer_norm(x.requires_grad_(), w, b, 1e-5)  # autograd: the plain ops
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got, want.detach(), rtol=tol, atol=tol)
