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
    want = channel_layer_norm(x.requires_grad_(), w, b, 1e-5).detach()  # autograd: the plain ops
    # Both against the exact (float64) values, within what the input's conditioning allows: an
    # entry whose channels nearly agree (small std) loses digits when centred, so rounding of
    # order u * max|x| / std reaches the output in either summation order (a fixed 1e-5 failed
    # both ways on such a draw: 3 channels, float32, 3e-5).
    x64, shape = x.detach().double(), (1, -1) + (1,) * len(rest)
    d = x64 - x64.mean(1, keepdim=True)
    std = torch.sqrt(d.square().mean(1, keepdim=True) + 1e-5)
    exact = d / std * w.double().view(shape) + b.double().view(shape)
    u = torch.finfo(dtype).eps
    bound = 16 * u * (1 + x64.abs().amax(1, keepdim=True) / std) * (w.double().abs().view(shape) + 1)
    bound = bound + 4 * u * b.double().abs().view(shape)
    for out in (got, want):
        assert ((out.double() - exact).abs() <= bound).all()
    assert got.dtype == want.dtype == dtype and got.shape == want.shape
