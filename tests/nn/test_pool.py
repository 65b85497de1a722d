import pytest
import torch
from hypothesis import given

from nfopt import NetworkSpec
from nfopt.nn import HNPPool, NPPool
from nfopt.testing import EquivarianceError, assert_invariant, random_features
from tests.strategies import channels, specs


@given(specs(), channels)
def test_np_pool_invariant_and_sized(spec, c):
    pool = NPPool(spec)
    assert_invariant(pool, spec, in_channels=c, hidden_only=False)
    out = pool(random_features(spec, 3, c))
    assert out.shape == (3, c * NPPool.num_outputs(spec)) == (3, pool.out_features(c))
    assert NPPool.num_outputs(spec) == sum(k + 1 for k in spec.kernel_sizes)


@given(specs(), channels)
def test_hnp_pool_invariant_to_hidden(spec, c):
    pool = HNPPool(spec)
    assert_invariant(pool, spec, in_channels=c, hidden_only=True)
    assert pool(random_features(spec, 2, c)).shape == (2, c * HNPPool.num_outputs(spec))


def test_hnp_pool_keeps_io_information():
    spec = NetworkSpec.mlp([5, 4, 3])
    n_in, n_out = spec.io_sizes
    assert HNPPool.num_outputs(spec) == n_in + 1 + n_out + n_out
    with pytest.raises(EquivarianceError):
        assert_invariant(HNPPool(spec), spec, in_channels=1, hidden_only=False)
    depth1 = NetworkSpec.mlp([3, 2])
    assert HNPPool.num_outputs(depth1) == 3 * 2 + 2


def test_np_pool_values():
    spec = NetworkSpec.mlp([3, 2])
    x = random_features(spec, 1, 1)
    out = NPPool(spec)(x)
    assert torch.allclose(out, torch.stack([x.weights[0].mean(), x.biases[0].mean()])[None])
