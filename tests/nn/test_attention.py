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


def _reference_attention(layer: WeightSpaceAttention, x):
    """The layer's documented formula, token by token (MLP specs: no kernel positions)."""
    spec, c, heads = layer.spec, layer.channels, layer.num_heads
    d, L, n = c // heads, spec.num_layers, spec.neuron_sizes
    qw = [
        torch.einsum("oc,bcrs->bors", layer.w_qkv[i], w) + layer.w_qkv_bias[i][:, None, None]
        for i, w in enumerate(x.weights)
    ]
    qb = [torch.einsum("oc,bcr->bor", layer.b_qkv[i], b) + layer.b_qkv_bias[i][:, None] for i, b in enumerate(x.biases)]
    bsz = x.batch_size
    cols = [torch.zeros(bsz, c, n[i + 1], n[i], dtype=torch.float64) for i in range(L)]
    rows = [torch.zeros_like(t) for t in cols]
    bias_out = [torch.zeros(bsz, c, n[i + 1], dtype=torch.float64) for i in range(L)]
    for level in range(L + 1):
        where = []  # (kind, tensor index, position) per token
        if level >= 1:
            where += [("col", level - 1, s) for s in range(n[level - 1])] + [("bias", level - 1, 0)]
        if level < L:
            where += [("row", level, r) for r in range(n[level + 1])]

        def token(kind, i, pos, j):  # (B, C, n_level) of q/k/v j
            if kind == "col":
                return qw[i][:, j * c : (j + 1) * c, :, pos]
            if kind == "bias":
                return qb[i][:, j * c : (j + 1) * c]
            return qw[i][:, j * c : (j + 1) * c, pos, :]

        q, k, v = (torch.stack([token(*t, j) for t in where], 1).view(bsz, len(where), heads, d, -1) for j in range(3))
        scores = torch.einsum("bthcj,bshcj->bhts", q, k) / (d * n[level]) ** 0.5
        out = torch.einsum("bhts,bshcj->bthcj", scores.softmax(-1), v).reshape(bsz, len(where), c, -1)
        for t, (kind, i, pos) in enumerate(where):
            if kind == "col":
                cols[i][:, :, :, pos] = out[:, t]
            elif kind == "bias":
                bias_out[i] = out[:, t]
            else:
                rows[i][:, :, pos, :] = out[:, t]
    means = torch.stack([t.mean((-2, -1)) for t in qw] + [t.mean(-1) for t in qb], 1)  # (B, 2L, 3C)
    q, k, v = (means[..., j * c : (j + 1) * c].reshape(bsz, 2 * L, heads, d) for j in range(3))
    a = torch.einsum("bthc,bshc->bhts", q, k).div(d**0.5).softmax(-1)
    g = torch.einsum("bhts,bshc->bthc", a, v).reshape(bsz, 2 * L, c)
    ws = [
        torch.einsum("oc,bcrs->bors", layer.w_out[i], cols[i] + rows[i] + g[:, i, :, None, None])
        + layer.w_out_bias[i][:, None, None]
        for i in range(L)
    ]
    bs = [
        torch.einsum("oc,bcr->bor", layer.b_out[i], bias_out[i] + g[:, L + i, :, None]) + layer.b_out_bias[i][:, None]
        for i in range(L)
    ]
    return ws, bs


@pytest.mark.parametrize("widths", [[5, 4, 3], [3, 6, 1, 2], [2, 3]])
def test_attention_computes_its_documented_formula(widths):
    spec = NetworkSpec.mlp(widths)
    layer = WeightSpaceAttention(spec, 4, 2).double()
    x = random_features(spec, 3, 4, dtype=torch.float64)
    y = layer(x)
    ws, bs = _reference_attention(layer, x)
    for got, want in zip((*y.weights, *y.biases), (*ws, *bs)):
        assert torch.allclose(got, want, atol=1e-10)


def test_attention_gradients_match_finite_differences():
    spec = NetworkSpec.mlp([3, 4, 2])
    layer = WeightSpaceAttention(spec, 4, 2).double()
    x = random_features(spec, 2, 4, dtype=torch.float64)
    inputs = [t.clone().requires_grad_() for t in x.tensors()]

    def f(*ts):
        y = layer(type(x)(list(ts[0::2]), list(ts[1::2])))  # tensors() interleaves w_i, b_i
        return tuple(y.tensors())

    assert torch.autograd.gradcheck(f, inputs)
    # parameters too: the hand-written backward's dq/dk/dv reach the projections
    params = [p for p in layer.parameters()]
    loss = sum(t.square().sum() for t in f(*inputs))
    grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        k = 3  # one weight entry of the q/k/v projection of tensor 1, by central differences
        p = layer.w_qkv[1]
        p.view(-1)[k] += 1e-6
        up = sum(t.square().sum() for t in f(*inputs))
        p.view(-1)[k] -= 2e-6
        down = sum(t.square().sum() for t in f(*inputs))
        p.view(-1)[k] += 1e-6
    idx = next(i for i, q in enumerate(params) if q is p)
    assert torch.allclose(grads[idx].view(-1)[k], (up - down) / 2e-6, rtol=1e-5, atol=1e-7)


@given(specs(), st.integers(1, 2), st.integers(1, 3), st.booleans(), st.sampled_from([torch.float64, torch.float32]))
def test_attention_fused_backward_equals_autograd(spec, heads, per_head, all_outputs, dtype):
    """The token attention's hand-written backward (``_TokenAttention``: in float64 native token
    gathers, in float32 the fused per-(batch, head) ops, where built) gives the values and input
    gradients of its plain-op form, also when some outputs get no gradient; so does the
    inference path (no autograd)."""
    from nfopt.nn import attention

    c, L, bsz = heads * per_head, spec.num_layers, 2
    gen = torch.Generator().manual_seed(len(spec))
    n = spec.neuron_sizes
    qw = [torch.randn(bsz, 3 * c, n[i + 1], n[i], generator=gen, dtype=dtype) for i in range(L)]
    qb = [torch.randn(bsz, 3 * c, n[i + 1], generator=gen, dtype=dtype) for i in range(L)]
    leaves = [t.requires_grad_() for t in (*qw, *qb)]
    fused = attention._TokenAttention.apply(heads, L, *leaves)
    aw, ab = attention._token_attention(qw, qb, heads, 0.0)
    plain = (*aw, *ab, attention._means(qw, qb))
    used = range(len(plain)) if all_outputs else range(0, len(plain), 2)
    weights = [torch.randn(plain[i].shape, generator=gen, dtype=torch.float64) for i in used]
    with torch.no_grad():
        iw, ib = attention._token_attention(qw, qb, heads, 0.0)
    tol, gtol = (1e-12, 1e-10) if dtype == torch.float64 else (1e-5, 1e-4)
    for a, b, c in zip(fused, plain, (*iw, *ib)):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
        torch.testing.assert_close(c, b, rtol=tol, atol=tol)
    got = torch.autograd.grad(sum((fused[i] * w).sum() for i, w in zip(used, weights)), leaves)
    want = torch.autograd.grad(sum((plain[i] * w).sum() for i, w in zip(used, weights)), leaves)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=gtol, atol=gtol)
