import torch
from hypothesis import given, settings

from nfopt import NetworkSpec
from nfopt.nn import (
    SharedChannelNorm,
    SharedGlobalInput,
    SharedNPLinear,
    SharedPointwise,
    SharedWeightSpaceAttention,
    fused_backward,
    layer_roles,
)
from nfopt.testing import assert_equivariant, random_features
from tests.strategies import specs

NP = SharedNPLinear(3, 4)
ATT = SharedWeightSpaceAttention(4, 2)


@given(specs())
def test_one_instance_is_equivariant_on_every_architecture(spec):
    assert_equivariant(NP, spec, 3, hidden_only=False)
    assert_equivariant(SharedPointwise(3, 2), spec, 3)
    assert_equivariant(SharedChannelNorm(3), spec, 3)


@settings(max_examples=10)
@given(specs(width=(1, 8)))
def test_shared_attention_equivariant(spec):
    assert_equivariant(ATT, spec, 4, hidden_only=False)


@settings(max_examples=15)
@given(specs())
def test_shared_np_engine_equals_its_defining_formula(spec):
    torch.manual_seed(0)
    layer = SharedNPLinear(3, 2).double()
    x = random_features(spec, 2, 3).map(lambda t: t.requires_grad_())
    for fused in (True, False):
        with fused_backward(fused):
            a, b = layer(x), layer.forward_reference(x)
            assert a.allclose(b, atol=1e-10)
            ga = torch.autograd.grad(sum(t.square().sum() for t in a.tensors()), [*layer.parameters(), *x.tensors()])
            gb = torch.autograd.grad(sum(t.square().sum() for t in b.tensors()), [*layer.parameters(), *x.tensors()])
            assert all(torch.allclose(p, q, atol=1e-9) for p, q in zip(ga, gb))


def test_roles_and_zero_init_and_global_input():
    assert layer_roles(1) == [0] and layer_roles(4) == [1, 2, 2, 3]
    spec = NetworkSpec.mlp([5, 4, 3, 2])
    x = random_features(spec, 2, 3, dtype=torch.float32)
    out = SharedNPLinear(3, 2, zero_init=True)(x)
    assert all(torch.count_nonzero(t) == 0 for t in out.tensors())
    g = SharedGlobalInput(4, 3)
    glob = torch.randn(2, 4)
    y = g(x, glob)
    d0 = (y.weights[0] - x.weights[0])[:, :, 0, 0]
    # y - x cancels in float32: absolute tolerance at x's rounding (|x| ~ 1), not d0's size
    assert torch.allclose((y.weights[0] - x.weights[0]), d0[:, :, None, None].expand_as(x.weights[0]), atol=1e-6)
    g64 = g.double()
    assert_equivariant(lambda f: g64(f, glob.double()), spec, 3, hidden_only=False)


def test_materialized_matrices_are_reused_only_while_valid():
    """Without a gradient through them the per-layer matrices are built once per architecture and
    parameter state; an in-place change, a storage swap (``.data =``, a dtype round trip), new
    tensors (functional_call) or autograd rebuild them."""
    torch.manual_seed(0)
    layer = SharedNPLinear(3, 2)
    spec, other = NetworkSpec.mlp([5, 4, 3]), NetworkSpec.mlp([6, 4, 3, 2])
    x = random_features(spec, 2, 3, dtype=torch.float32)
    calls = []
    build = layer._materialize
    layer._materialize = lambda s: calls.append(s) or build(s)
    with torch.no_grad():
        first = layer(x)
        assert torch.equal(layer(x).weights[0], first.weights[0]) and len(calls) == 1
        layer(random_features(other, 2, 3, dtype=torch.float32))
        layer(x)
        assert len(calls) == 2  # one build per architecture
        layer.A.mul_(2.0)  # in place: a new version
        changed = layer(x)
        assert len(calls) == 3 and not torch.equal(changed.weights[0], first.weights[0])
        layer.half().float()  # storage swapped and values rounded, no version bump
        rounded = layer(x)
        assert len(calls) == 4 and not torch.equal(rounded.weights[0], changed.weights[0])
        layer.K.data = layer.K.data * 0.5  # ``.data`` swap: no version bump either
        halved = layer(x)
        assert len(calls) == 5 and not torch.equal(halved.weights[0], rounded.weights[0])
        theta = {k: v.clone() for k, v in layer.named_parameters()}
        torch.func.functional_call(layer, theta, (x,))
        assert len(calls) == 6  # other tensors
    y = layer(x)  # grad enabled, parameters require grad: built in the graph
    assert len(calls) == 7 and y.weights[0].requires_grad
    sum(t.sum() for t in y.tensors()).backward()
    assert layer.A.grad is not None and layer.A.grad.abs().sum() > 0
