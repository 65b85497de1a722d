import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nfopt import NetworkSpec
from nfopt.nn import WeightSpaceAttention, attention_fp32
from nfopt.testing import assert_equivariant, random_features
from tests.strategies import specs


@given(specs(), st.integers(1, 2), st.integers(1, 2))
def test_attention_equivariant_to_all_permutations(spec, heads, per_head):
    layer = WeightSpaceAttention(spec, heads * per_head, heads)
    assert_equivariant(layer, spec, hidden_only=False)


@pytest.mark.parametrize(
    "spec",
    [
        NetworkSpec.mlp([3, 2]),  # depth 1
        NetworkSpec.mlp([4, 1, 1, 2]),  # single-neuron layers
        NetworkSpec(((1, 1, 3, 3),)),  # a single conv neuron
        NetworkSpec(((5, 3, 3, 3), (4, 5, 1, 1), (2, 4))),
    ],
)
def test_attention_edge_architectures(spec):
    layer = WeightSpaceAttention(spec, 4, 2)
    assert_equivariant(layer, spec, hidden_only=False)
    x = random_features(spec, 2, 4, dtype=torch.float32).map(lambda t: t.requires_grad_())
    y = layer(x)
    assert y.spec == spec and y.channels == 4
    sum(t.sum() for t in y.tensors()).backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in x.tensors())


def test_attention_under_bf16_autocast_is_finite_and_close():
    spec = NetworkSpec.mlp([8, 6, 4])
    layer = WeightSpaceAttention(spec, 8, 2)
    x = random_features(spec, 3, 8, dtype=torch.float32)
    ref = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    for a, b in zip(out.tensors(), ref.tensors()):
        assert torch.isfinite(a).all()
        assert torch.allclose(a.float(), b, atol=0.1, rtol=0.1)


def test_attention_fp32_scores_survive_half_precision_overflow():
    torch.manual_seed(0)
    q, k, v = (150 * torch.randn(2, 3, 5, 64) for _ in range(3))  # q.k ~ 2e5 > float16 max
    naive = torch.softmax((q.half() @ k.half().transpose(-1, -2)) / 8, -1)
    assert not torch.isfinite(naive).all()
    out = attention_fp32(q.half(), k.half(), v.half())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    ref = torch.nn.functional.scaled_dot_product_attention(q.half().float(), k.half().float(), v.half().float())
    assert torch.allclose(out.float(), ref, atol=0.5, rtol=0.01)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert attention_fp32(q, k, v).dtype == torch.float32


def test_attention_validation_and_dropout():
    spec = NetworkSpec.mlp([4, 3, 2])
    with pytest.raises(ValueError, match="multiple of num_heads"):
        WeightSpaceAttention(spec, 6, 4)
    layer = WeightSpaceAttention(spec, 4, 2, dropout=0.5)
    with pytest.raises(ValueError, match="C=4"):
        layer(random_features(spec, 1, 2, dtype=torch.float32))
    x = random_features(spec, 2, 4, dtype=torch.float32)
    layer.train()
    assert not layer(x).allclose(layer(x))  # dropout on attention weights is active in training
    layer.eval()
    assert layer(x).allclose(layer(x))
