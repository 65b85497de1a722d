import itertools
import os
from unittest import mock

import pytest
import torch
from hypothesis import given

from nfopt import NetworkSpec, WeightSpaceFeatures
from nfopt.nn import HNPLinear, NFActivation, NPLinear, WeightSpaceAttention, fuse_relu, fused_backward
from nfopt.testing import EquivarianceError, assert_equivariant, random_features
from tests.strategies import channels, specs


@given(specs(), channels, channels)
def test_np_equivariant_to_all_permutations(spec, c_in, c_out):
    assert_equivariant(NPLinear(spec, c_in, c_out), spec, hidden_only=False)
    assert_equivariant(NPLinear(spec, c_in, c_out, relu=True), spec, hidden_only=False)


@given(specs(), channels, channels)
def test_np_io_embed_equivariant_to_hidden_only(spec, c_in, c_out):
    assert_equivariant(NPLinear(spec, c_in, c_out, io_embed=True), spec, hidden_only=True)


@given(specs(depth=(2, 5), width=(1, 8)), channels, channels)
def test_hnp_equivariant_to_hidden_permutations(spec, c_in, c_out):
    assert_equivariant(HNPLinear(spec, c_in, c_out), spec, hidden_only=True)
    assert_equivariant(HNPLinear(spec, c_in, c_out, relu=True), spec, hidden_only=True)


@pytest.mark.parametrize("layer", ["hnp", "np_io"])
def test_hidden_only_layers_break_io_symmetry(layer):
    """HNP and io_embed layers must *not* be equivariant to IO permutations (they tell IO apart)."""
    spec = NetworkSpec.mlp([6, 5, 4])
    mod = HNPLinear(spec, 2, 2) if layer == "hnp" else NPLinear(spec, 2, 2, io_embed=True)
    with pytest.raises(EquivarianceError):
        assert_equivariant(mod, spec, hidden_only=False)


def test_np_without_io_embed_cannot_tell_io_apart():
    spec = NetworkSpec.mlp([6, 5, 4])
    assert assert_equivariant(NPLinear(spec, 2, 2), spec, hidden_only=False, num_permutations=5) < 1e-12


@pytest.mark.parametrize(
    "spec",
    [
        NetworkSpec.mlp([3, 2]),  # depth 1: no hidden neurons
        NetworkSpec(((4, 2, 3, 3),)),
        NetworkSpec.mlp([5, 1, 1, 3]),  # single-neuron hidden layers
        NetworkSpec(((3, 2, 3), (4, 3, 1), (2, 4))),
    ],
)
@pytest.mark.parametrize(
    "make", [lambda s: NPLinear(s, 2, 3), lambda s: HNPLinear(s, 2, 3), lambda s: NPLinear(s, 2, 3, io_embed=True)]
)
def test_fused_backward_matches_autograd(spec, make):
    torch.manual_seed(0)
    layer = make(spec).double()
    x = random_features(spec, 3, 2).map(lambda t: t.requires_grad_())
    weights = [torch.randn_like(t) for t in layer(x).tensors()]

    def grads():
        y = layer(x)
        loss = sum((w * t).sum() + t.square().sum() for w, t in zip(weights, y.tensors()))
        return torch.autograd.grad(loss, [*x.tensors(), *layer.parameters()])

    fused = grads()
    with fused_backward(False):
        plain = grads()
    for a, b in zip(fused, plain):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "spec, dtype",
    [
        (NetworkSpec.mlp([3, 4, 2]), torch.float64),
        (NetworkSpec(((4, 2, 3, 3), (3, 4))), torch.float64),
        (NetworkSpec.mlp([20, 17, 18, 5]), torch.float32),  # rows of >= 16 floats: the native mix
    ],
)
@pytest.mark.parametrize("cls", [NPLinear, HNPLinear])
def test_fused_relu_equals_layer_then_relu(spec, dtype, cls):
    """``relu=True`` computes the layer followed by a ReLU: outputs and every gradient, on the
    fused backward, the plain path and without autograd."""
    torch.manual_seed(0)
    fused_layer = cls(spec, 2, 3, relu=True).to(dtype)
    layer = cls(spec, 2, 3).to(dtype)
    layer.load_state_dict(fused_layer.state_dict())
    x = random_features(spec, 3, 2).map(lambda t: t.to(dtype).requires_grad_())
    weights = [torch.randn_like(t) for t in layer(x).tensors()]
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}

    def run(module, post):
        y = post(module(x))
        loss = sum((w * t).sum() + t.square().sum() for w, t in zip(weights, y.tensors()))
        return [*y.tensors(), *torch.autograd.grad(loss, [*x.tensors(), *module.parameters()])]

    want = run(layer, lambda y: y.map(torch.relu))
    for fused in (True, False):
        with fused_backward(fused):
            got = run(fused_layer, lambda y: y)
        for a, b in zip(got, want, strict=True):
            assert torch.allclose(a, b, **tol)
        assert all((t >= 0).all() for t in got[: 2 * spec.num_layers])
    with torch.no_grad():
        for a, b in zip(fused_layer(x).tensors(), layer(x).map(torch.relu).tensors()):
            assert torch.allclose(a, b, **tol)


def test_fuse_relu_folds_the_relu_after_each_layer_and_keeps_state_dict():
    spec = NetworkSpec.mlp([5, 4, 3])
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        NPLinear(spec, 1, 3),
        NFActivation(),
        HNPLinear(spec, 3, 3),
        NFActivation(torch.nn.ReLU()),
        NPLinear(spec, 3, 2),
        NFActivation(torch.tanh),  # not a ReLU: stays
        NPLinear(spec, 2, 2, relu=True),
        NFActivation(),  # after an already fused layer: stays (a second ReLU, no change)
    ).double()
    x = random_features(spec, 2, 1)
    want, keys = model(x).tensors(), list(model.state_dict())
    assert fuse_relu(model) == 2
    assert model[0].relu and model[2].relu and not model[4].relu
    assert isinstance(model[1], torch.nn.Identity) and isinstance(model[5], NFActivation)
    assert list(model.state_dict()) == keys
    for a, b in zip(model(x).tensors(), want, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_gradcheck_and_double_backward_on_plain_path():
    spec = NetworkSpec(((3, 2, 2), (2, 3)))
    layer = NPLinear(spec, 1, 2).double()
    x = random_features(spec, 2, 1).map(lambda t: t.requires_grad_())

    def f(*ts):
        return layer(WeightSpaceFeatures(ts[0::2], ts[1::2])).tensors()

    assert torch.autograd.gradcheck(f, x.tensors())
    with fused_backward(False):
        assert torch.autograd.gradgradcheck(f, x.tensors())


def test_works_under_torch_func():
    spec = NetworkSpec.mlp([4, 3, 2])
    layer = NPLinear(spec, 1, 1).double()
    x = random_features(spec, 5, 1)
    params = dict(layer.named_parameters())

    def loss(p, feats):
        return sum(t.square().sum() for t in torch.func.functional_call(layer, p, (feats,)).tensors())

    g = torch.func.grad(loss)(params, x)
    ref = torch.autograd.grad(loss(params, x), list(params.values()))
    for a, b in zip(g.values(), ref):
        assert torch.allclose(a, b)


@pytest.mark.parametrize("cls", [NPLinear, HNPLinear])
@pytest.mark.parametrize(
    "spec", [NetworkSpec.mlp([64, 32, 32, 10]), NetworkSpec(((16, 1, 3, 3), (16, 16, 3, 3), (10, 16)))]
)
def test_init_keeps_activations_order_one_through_four_layers(cls, spec):
    torch.manual_seed(0)
    chans = [1, 16, 16, 16, 16]
    layers = [cls(spec, chans[i], chans[i + 1]) for i in range(4)]
    h = random_features(spec, 8, 1, dtype=torch.float32)
    with torch.no_grad():
        for k, layer in enumerate(layers):
            h = layer(h)
            if k < 3:
                h = h.map(torch.relu)
    var = torch.cat([t.reshape(-1) for t in h.tensors()]).var().item()
    assert 0.05 < var < 20.0, var


def test_output_shapes_dtypes_and_layout():
    spec = NetworkSpec(((4, 3, 3, 3), (5, 4), (2, 5)))
    x = random_features(spec, 2, 3, dtype=torch.float32)
    for layer in (NPLinear(spec, 3, 7), HNPLinear(spec, 3, 7)):
        y = layer(x)
        assert [tuple(w.shape) for w in y.weights] == [(2, 7, 4, 3, 3, 3), (2, 7, 5, 4), (2, 7, 2, 5)]
        assert [tuple(b.shape) for b in y.biases] == [(2, 7, 4), (2, 7, 5), (2, 7, 2)]
        assert y.dtype == torch.float32
    mlp = NetworkSpec.mlp([6, 5, 4])
    y = NPLinear(mlp, 2, 3)(random_features(mlp, 2, 2, dtype=torch.float32))
    assert all(t.is_contiguous() for t in y.tensors())  # standard layout for users' elementwise ops


@pytest.mark.parametrize("native", ["1", "0"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@given(spec=specs(depth=(1, 3), width=(1, 6)))
def test_an_empty_batch_goes_through_forward_and_backward(native, dtype, spec):
    """B = 0 (e.g. an empty shard) gives empty outputs and gradients, native kernels or not; a
    reshape with -1 over zero elements was ambiguous in the layout helpers and the kernels."""
    with mock.patch.dict(os.environ, {"NFOPT_NATIVE": native}):
        _empty_batch_steps(spec, dtype)


def _empty_batch_steps(spec, dtype):
    for layer in (NPLinear(spec, 2, 3), HNPLinear(spec, 2, 3), WeightSpaceAttention(spec, 2, 2)):
        layer = layer.to(dtype)
        x = random_features(spec, 0, 2, dtype=dtype)
        leaves = [t.requires_grad_() for t in x.tensors()]
        y = layer(WeightSpaceFeatures(leaves[0::2], leaves[1::2]))
        assert all(t.shape[0] == 0 for t in y.tensors())
        grads = torch.autograd.grad(sum(t.sum() for t in y.tensors()), leaves, allow_unused=True)
        assert all(g is None or g.shape == t.shape for g, t in zip(grads, leaves))
        with torch.no_grad():
            assert all(t.shape[0] == 0 for t in layer(x).tensors())


def test_bad_input_is_named():
    spec = NetworkSpec.mlp([4, 3, 2])
    layer = NPLinear(spec, 2, 2)
    with pytest.raises(ValueError, match="C=2"):
        layer(random_features(spec, 1, 3, dtype=torch.float32))
    with pytest.raises(ValueError, match="weights\\[0\\]"):
        layer(random_features(NetworkSpec.mlp([5, 3, 2]), 1, 2, dtype=torch.float32))
    with pytest.raises(ValueError, match="max_params"):
        HNPLinear(NetworkSpec.mlp([784, 128, 10]), 16, 16, max_params=1_000_000)


def _burnside_dims(spec: NetworkSpec, hidden_only: bool) -> tuple[int, int]:
    """(dim of equivariant linear maps, dim of invariant vectors) of the weight-space
    permutation representation: averages of chi(g)^2 and chi(g) over the group (Burnside)."""
    n = spec.neuron_sizes
    choices = [
        [tuple(range(m))] if hidden_only and lv in (0, len(n) - 1) else list(itertools.permutations(range(m)))
        for lv, m in enumerate(n)
    ]
    total_sq = total = count = 0
    for g in itertools.product(*choices):
        fix = [sum(p[j] == j for j in range(len(p))) for p in g]
        chi = sum(fix[i + 1] * fix[i] * k + fix[i + 1] for i, k in enumerate(spec.kernel_sizes))
        total_sq, total, count = total_sq + chi * chi, total + chi, count + 1
    return total_sq // count, total // count


@pytest.mark.parametrize(
    "spec",
    [
        NetworkSpec.mlp([2, 3]),
        NetworkSpec.mlp([2, 3, 2]),
        NetworkSpec.mlp([3, 2, 2, 3]),
        NetworkSpec(((2, 2, 2), (3, 2))),
    ],
)
@pytest.mark.parametrize("cls", [NPLinear, HNPLinear])
def test_layer_spans_exactly_the_equivariant_maps(spec, cls):
    """The layer's parameters form a basis of *all* equivariant affine maps: the parameter
    count equals the dimension given by Burnside's lemma and the map params -> function is
    injective (full-rank Jacobian). So no term of the NFN paper is missing and none is redundant."""
    c_in, c_out = 2, 1
    layer = cls(spec, c_in, c_out).double()
    dim_lin, dim_inv = _burnside_dims(spec, hidden_only=cls is HNPLinear)
    n_params = sum(p.numel() for p in layer.parameters())
    assert n_params == c_in * c_out * dim_lin + c_out * dim_inv
    x = random_features(spec, 2 + 2 * n_params // (c_out * spec.num_params), c_in)
    names = [k for k, _ in layer.named_parameters()]

    def out(*flat):
        y = torch.func.functional_call(layer, dict(zip(names, flat)), (x,))
        return torch.cat([t.reshape(-1) for t in y.tensors()])

    jac = torch.autograd.functional.jacobian(out, tuple(p.detach() for p in layer.parameters()), vectorize=True)
    jac = torch.cat([j.reshape(j.shape[0], -1) for j in jac], dim=1)
    assert torch.linalg.matrix_rank(jac).item() == n_params
