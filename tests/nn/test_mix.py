import pytest
import torch

from nfopt import NetworkSpec
from nfopt.nn import WeightSpaceAttention
from nfopt.nn._mix import channel_mix, outer_sum
from nfopt.testing import random_features


@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (2, 3, 2, 3000), (2, 40, 50, 7)])  # (B, O, D, N): all branches
def test_outer_sum_matches_einsum(shape):
    b, o, d, n = shape
    x, y = torch.randn(b, o, n, dtype=torch.float64), torch.randn(b, d, n, dtype=torch.float64)
    assert torch.allclose(outer_sum(x, y), torch.einsum("bon,bdn->od", x, y))


def test_channel_mix_gradients():
    x = torch.randn(3, 4, 2500, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.allclose(channel_mix(x, w, b), torch.einsum("of,bfn->bon", w, x) + b[:, None])
    assert torch.autograd.gradcheck(channel_mix, (x[:, :, :7].detach().requires_grad_(), w, b))
    grads = torch.autograd.grad(channel_mix(x, w, b).square().sum(), (x, w, b))
    ref = torch.autograd.grad((torch.einsum("of,bfn->bon", w, x) + b[:, None]).square().sum(), (x, w, b))
    for g, r in zip(grads, ref):
        assert torch.allclose(g, r)


def test_attention_under_torch_func_grad():
    spec = NetworkSpec.mlp([4, 3, 2])
    layer = WeightSpaceAttention(spec, 4, 2).double()
    x = random_features(spec, 2, 4)
    params = dict(layer.named_parameters())

    def loss(p):
        return sum(t.square().sum() for t in torch.func.functional_call(layer, p, (x,)).tensors())

    g = torch.func.grad(loss)(params)
    ref = torch.autograd.grad(loss(params), list(params.values()))
    for a, b in zip(g.values(), ref):
        assert torch.allclose(a, b)
