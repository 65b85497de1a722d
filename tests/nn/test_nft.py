import pytest
import torch
from hypothesis import given, settings

from nfopt import NetworkSpec
from nfopt.nn import NFTBlock, build_nft
from nfopt.testing import EquivarianceError, assert_equivariant, assert_invariant, random_features
from tests.strategies import specs


@settings(max_examples=10)
@given(specs(depth=(1, 4), width=(1, 8)))
def test_nft_block_equivariant(spec):
    assert_equivariant(NFTBlock(spec, 4, 2), spec, hidden_only=False)


@pytest.mark.parametrize("io", ["learned", "fourier"])
def test_nft_with_io_encoding_is_hidden_equivariant_and_invariant(io):
    spec = NetworkSpec(((6, 2, 3), (5, 6), (3, 5)))
    eq = build_nft(spec, 1, channels=8, num_blocks=2, num_heads=2, out_channels=2, io_encoding=io)
    assert_equivariant(eq, spec, hidden_only=True)
    with pytest.raises(EquivarianceError):
        assert_equivariant(eq, spec, hidden_only=False)
    inv = build_nft(spec, 1, channels=8, num_blocks=1, num_heads=2, out_features=3, io_encoding=io)
    assert_invariant(inv, spec, hidden_only=True)
    assert inv(random_features(spec, 4, 1, dtype=torch.float32)).shape == (4, 3)


def test_nft_without_io_encoding_is_fully_symmetric():
    spec = NetworkSpec.mlp([5, 4, 3])
    inv = build_nft(spec, 2, channels=8, num_blocks=1, num_heads=2, out_features=1, io_encoding=None, pool="np")
    assert_invariant(inv, spec, hidden_only=False)


def test_nft_trains():
    torch.manual_seed(0)
    spec = NetworkSpec.mlp([4, 3, 2])
    model = build_nft(spec, 1, channels=8, num_blocks=1, num_heads=2, out_features=1)
    x = random_features(spec, 16, 1, dtype=torch.float32)
    target = x.weights[0].mean((1, 2, 3))[:, None]  # an invariant function of the weights
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    first = None
    for _ in range(60):
        loss = (model(x) - target).square().mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first


def test_build_nft_validation():
    spec = NetworkSpec.mlp([3, 2])
    with pytest.raises(ValueError, match="exactly one"):
        build_nft(spec, 1)
    with pytest.raises(ValueError, match="io_encoding"):
        build_nft(spec, 1, out_channels=1, io_encoding="bad")
