import pickle

import pytest
import torch
from hypothesis import given
from torch import nn

from nfopt import NetworkSpec, WeightSpaceFeatures
from tests.strategies import specs
from tests.weightspace.test_spec import small_cnn


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 3))


def test_from_module_shapes_and_load_round_trip():
    net = mlp()
    f = WeightSpaceFeatures.from_module(net)
    assert (f.batch_size, f.channels, len(f)) == (1, 1, 3)
    assert f.weights[0].shape == (1, 1, 7, 5) and f.biases[2].shape == (1, 1, 3)
    other = mlp(seed=1)
    f.load_into(other)
    for a, b in zip(net.parameters(), other.parameters()):
        assert torch.equal(a, b)


def test_from_modules_to_modules_round_trip():
    nets = [mlp(s) for s in range(4)]
    f = WeightSpaceFeatures.from_modules(nets)
    assert f.batch_size == 4
    back = f.to_modules(mlp(99))
    for a, b in zip(nets, back):
        for p, q in zip(a.parameters(), b.parameters()):
            assert torch.equal(p, q)
    with pytest.raises(ValueError, match="modules\\[1\\] has spec"):
        WeightSpaceFeatures.from_modules([mlp(), nn.Sequential(nn.Linear(5, 3))])


def test_bias_free_reads_zero_and_is_never_written():
    net = nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 2))
    f = WeightSpaceFeatures.from_module(net)
    assert torch.equal(f.biases[0], torch.zeros(1, 1, 4))
    (f + 1.0).load_into(net)
    assert net[0].bias is None
    assert torch.allclose(net[2].bias, f.biases[1][0, 0] + 1)


@given(specs())
def test_flat_round_trip(spec):
    f = WeightSpaceFeatures.randn(spec, batch_size=3, channels=2)
    flat = f.flatten()
    assert flat.shape == (3, 2, spec.num_params)
    assert WeightSpaceFeatures.from_flat(flat, spec).allclose(f, rtol=0, atol=0)


def test_flat_matches_parameter_order():
    net = mlp()
    flat = WeightSpaceFeatures.from_module(net).flatten()[0, 0]
    assert torch.equal(flat, torch.cat([p.reshape(-1) for p in net.parameters()]))


@given(specs())
def test_permute_composes_and_inverts(spec):
    gen = torch.Generator().manual_seed(0)
    f = WeightSpaceFeatures.randn(spec, 2, 2, generator=gen)
    p, q = spec.sample_permutation(gen, False), spec.sample_permutation(gen, False)
    assert f.permute(p).permute(q).allclose(f.permute(q @ p), rtol=0, atol=0)
    assert f.permute(p).permute(p.inverse()).allclose(f, rtol=0, atol=0)


def test_permute_matches_matrix_action():
    spec = NetworkSpec.mlp([3, 4, 2])
    f = WeightSpaceFeatures.randn(spec, 1, 1, dtype=torch.float64)
    p = spec.sample_permutation(torch.Generator().manual_seed(3), hidden_only=False)
    mats = [torch.eye(len(i), dtype=torch.float64)[i] for i in p.indices]  # rows e_{idx[j]}
    g = f.permute(p)
    for i in range(2):
        assert torch.allclose(g.weights[i][0, 0], mats[i + 1] @ f.weights[i][0, 0] @ mats[i].T)
        assert torch.allclose(g.biases[i][0, 0], mats[i + 1] @ f.biases[i][0, 0])


@pytest.mark.parametrize("make, x", [(mlp, torch.randn(8, 5)), (small_cnn, torch.randn(8, 1, 10, 10))])
def test_hidden_permutation_preserves_function(make, x):
    net = make().double().eval()
    x = x.double()
    f = WeightSpaceFeatures.from_module(net)
    spec = NetworkSpec.from_module(net)
    perm = spec.sample_permutation(torch.Generator().manual_seed(0))
    assert not perm.is_identity()
    permuted = f.permute(perm).to_modules(net)[0]
    assert not torch.allclose(permuted[0].weight, net[0].weight)
    assert torch.allclose(permuted(x), net(x), atol=1e-12)
    # permuting the output neurons does change the function
    full = spec.sample_permutation(torch.Generator().manual_seed(1), hidden_only=False)
    assert not torch.allclose(f.permute(full).to_modules(net)[0](x), net(x))


def test_arithmetic_cat_to_and_immutability():
    spec = NetworkSpec.mlp([3, 4, 2])
    a, b = WeightSpaceFeatures.randn(spec, 2, 1), WeightSpaceFeatures.randn(spec, 2, 1)
    assert (a + b - b).allclose(a, atol=1e-6)
    assert (2 * a / 2).allclose(a) and (-a + a).allclose(a * 0)
    assert (1.0 - a).allclose(-(a - 1.0))
    c = WeightSpaceFeatures.cat([a, b])
    assert c.channels == 2 and torch.equal(c.weights[0][:, 1:], b.weights[0])
    s = WeightSpaceFeatures.stack([a, b])
    assert s.batch_size == 4
    d = a.to(torch.float64)
    assert d.dtype == torch.float64 and d.to(torch.float32).allclose(a, rtol=0, atol=0)
    with pytest.raises(AttributeError):
        a.weights = ()
    r = pickle.loads(pickle.dumps(a))
    assert r.allclose(a, rtol=0, atol=0)


def test_validation_names_the_problem():
    with pytest.raises(ValueError, match="one bias per weight"):
        WeightSpaceFeatures([torch.zeros(1, 1, 2, 3)], [])
    with pytest.raises(ValueError, match="takes 5 inputs"):
        WeightSpaceFeatures(
            [torch.zeros(1, 1, 4, 3), torch.zeros(1, 1, 2, 5)], [torch.zeros(1, 1, 4), torch.zeros(1, 1, 2)]
        )
    with pytest.raises(ValueError, match="C=1"):
        WeightSpaceFeatures.randn(NetworkSpec.mlp([5, 7, 6, 3]), 1, 2).load_into(mlp())


def test_pytree_round_trip():
    from torch.utils import _pytree as pytree

    f = WeightSpaceFeatures.randn(NetworkSpec.mlp([3, 4, 2]), 2, 1)
    leaves, tree = pytree.tree_flatten(f)
    assert len(leaves) == 4
    assert pytree.tree_unflatten(leaves, tree).allclose(f, rtol=0, atol=0)


def test_scale_tensors_scales_each_tensor_by_its_own_value():
    spec = NetworkSpec.mlp([3, 4, 2])
    x = WeightSpaceFeatures.randn(spec, batch_size=2)
    y = x.scale_tensors(torch.tensor([2.0, 3.0, 4.0, 5.0]))
    for (w, b), (yw, yb), (sw, sb) in zip(x, y, [(2.0, 3.0), (4.0, 5.0)]):
        assert torch.equal(yw, w * sw) and torch.equal(yb, b * sb)
    with pytest.raises(ValueError, match="scales: need 4 values"):
        x.scale_tensors([1.0, 2.0])
