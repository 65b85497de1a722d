"""The optional native kernels and the pure-PyTorch path compute the same thing."""

import itertools
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nfopt import NetworkSpec
from nfopt.nn import HNPLinear, NPLinear, _native
from nfopt.nn.fused import entry_mlp
from nfopt.nn.linear import apply_plan
from nfopt.testing import random_features

needs_compiler = pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler on this machine")


@needs_compiler
def test_native_kernels_build_here():
    assert _native.available(), _native._state["error"]


def _outputs_and_grads_with_and_without_native(layer, x, monkeypatch):
    """Pairs (native, PyTorch path) of the layer's outputs and of the gradients of a sum of
    squares of them with respect to the inputs and the parameters."""

    def run():
        y = layer(x)
        loss = sum((t * t).sum() for t in y.tensors())
        return [*y.tensors(), *torch.autograd.grad(loss, [*x.tensors(), *layer.parameters()])]

    with_native = run()
    monkeypatch.setitem(_native._state, "ops", None)
    return zip(with_native, run())


@needs_compiler
@pytest.mark.parametrize("c_in", [1, 2])
@pytest.mark.parametrize("cls", [NPLinear, HNPLinear])
def test_layers_equal_with_and_without_native(cls, c_in, monkeypatch):
    spec = NetworkSpec(((6, 3, 2), (5, 6), (4, 5)))
    torch.manual_seed(0)
    layer = cls(spec, c_in, 3).double()
    x = random_features(spec, 3, c_in).map(lambda t: t.requires_grad_())
    for a, b in _outputs_and_grads_with_and_without_native(layer, x, monkeypatch):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def _entry_mix_reference(x, A, col, row):
    return torch.einsum("gf,bfrc->bgrc", A, x) + col[..., None] + row[:, :, None]


@needs_compiler
@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 3),
    f=st.integers(1, 20),
    g=st.integers(1, 35),
    r=st.integers(1, 5),
    c=st.sampled_from([16, 32, 48, 64, 70, 97]),
    transposed=st.booleans(),
)
def test_entry_mix_matches_torch(b, f, g, r, c, transposed):
    """Every output-block size (16, 8, 4, 1), column tails, non-contiguous inputs."""
    x = torch.randn(b, f, c, r).transpose(2, 3) if transposed else torch.randn(b, f, r, c)
    A, col, row = torch.randn(g, f), torch.randn(b, g, r), torch.randn(b, g, c)
    want = _entry_mix_reference(x, A, col, row)
    got = _native.ops().entry_mix(x, A, col, row)
    assert got.shape == want.shape and got.is_contiguous()
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)


@needs_compiler
@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 3),
    f=st.integers(1, 20),
    g=st.integers(1, 21),
    h=st.integers(1, 11),
    r=st.integers(1, 70),
    c=st.sampled_from([16, 32, 48, 64, 70, 97, 1040]),
)
def test_entry_mix_grad_matches_torch(b, f, g, h, r, c):
    """The mix and the weight gradient sum_b x[b] y[b]^T: 4x4 and edge register blocks, column
    tails, runs of short rows (1024 // c of them) with a partial last run."""
    x, y = torch.randn(b, f, r, c), torch.randn(b, h, r, c)
    A, col, row = torch.randn(g, f), torch.randn(b, g, r), torch.randn(b, g, c)
    out, dw = _native.ops().entry_mix_grad(x, A, col, row, y)
    assert torch.allclose(out, _entry_mix_reference(x, A, col, row), rtol=1e-5, atol=1e-5)
    want = torch.einsum("bfrc,bhrc->fh", x.double(), y.double()).float()
    assert dw.shape == (f, h)
    assert torch.allclose(dw, want, rtol=1e-4, atol=1e-4 * (r * c * b) ** 0.5)


@needs_compiler
@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 9), min_size=2, max_size=5),
    data=st.data(),
    mean=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_np_pool_matches_torch(sizes, data, mean, dtype):
    """A layer's pooled features (csrc/np_layer.cpp) in the layouts of nfopt.nn._core: z the
    totals (means) of every weight and bias, P_l the column sums of W_l-1, b_l-1 and the row sums
    of W_l at each permutable neuron layer; fixed layers folded to size 1 (columns of one entry)."""
    L = len(sizes) - 1
    perm = data.draw(st.lists(st.booleans(), min_size=L + 1, max_size=L + 1))
    feats = data.draw(st.lists(st.integers(1, 40), min_size=2 * L, max_size=2 * L))  # past a 16-feature tile
    bsz = data.draw(st.integers(1, 3))
    m = [n if p else 1 for n, p in zip(sizes, perm)]
    xs = [torch.randn(bsz, feats[i], m[i + 1], m[i], dtype=dtype) for i in range(L)]
    bs = [torch.randn(bsz, feats[L + i], m[i + 1], dtype=dtype) for i in range(L)]
    xs[0] = xs[0].transpose(2, 3).contiguous().transpose(2, 3)  # a non-contiguous input
    z, *P = _native.ops().np_pool(xs, bs, [int(p) for p in perm], mean)

    def red(t, dims):
        return t.mean(dims) if mean else t.sum(dims)

    want_z = torch.cat([red(x, (2, 3)) for x in xs] + [red(b, 2) for b in bs], dim=-1)
    want_p = []
    for level in range(L + 1):
        if perm[level]:
            parts = [red(xs[level - 1], 3), bs[level - 1]] if level >= 1 else []
            parts += [red(xs[level], 2)] if level < L else []
            want_p.append(torch.cat([p.transpose(0, 1) for p in parts]))
    assert torch.allclose(z, want_z, rtol=1e-5, atol=1e-5)
    assert len(P) == len(want_p) and all(torch.allclose(a, b, rtol=1e-5, atol=1e-5) for a, b in zip(P, want_p))


@needs_compiler
def test_np_layer_ops_refuse_inconsistent_plans():
    """Malformed calls to the layer ops raise (never write out of bounds)."""
    ops, x, b = _native.ops(), torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4)
    with pytest.raises(RuntimeError, match="columns"):  # layer 1's width seen differently by W_1 and W_2
        ops.np_pool([x, torch.randn(2, 3, 6, 7)], [b, torch.randn(2, 3, 6)], [1, 1, 1], True)
    with pytest.raises(RuntimeError, match="plan"):  # too few part sizes for the permutable levels
        ops.np_forward([x], [b], [None], [None, None], torch.randn(6, 6), torch.randn(6), [1, 1], [1], [3, 3], False)
    with pytest.raises(RuntimeError, match="Q"):  # a permutable level without its Q
        ops.np_forward([x], [b], [None], [None, None], torch.randn(6, 6), torch.randn(6), [1, 0], [3], [3, 3], False)
    with pytest.raises(RuntimeError, match="x \\(B, F"):
        ops.np_pool([torch.randn(2, 3, 4)], [b], [1, 1], True)


@needs_compiler
def test_token_attention_ops_run_here_and_refuse_malformed_calls():
    """The fused token attention is what float32 attention takes here (the BLAS that PyTorch
    links was found); malformed calls raise (never read or write out of bounds)."""
    from nfopt.nn.attention import _fused_tokens

    ops = _native.ops()
    qw, qb = [torch.randn(2, 6, 3, 4), torch.randn(2, 6, 5, 3)], [torch.randn(2, 6, 3), torch.randn(2, 6, 5)]
    assert ops.token_attention_available() and _fused_tokens(ops, qw)
    assert not _fused_tokens(ops, [t.double() for t in qw])  # float32 only: float64 keeps the gathers
    out = ops.token_attention_forward(qw, qb, 2, True)
    weights, biases, probs = [(2, 2, 3, 4), (2, 2, 5, 3)], [(2, 2, 3), (2, 2, 5)], [(4, 3, 3), (4, 10, 10), (4, 4, 4)]
    assert [tuple(t.shape) for t in out] == [*weights, *biases, *probs]  # probs: (B H, T_l, T_l) per level
    with pytest.raises(RuntimeError, match="qw\\[1\\]"):  # layer 1's width seen differently by W_1 and W_2
        ops.token_attention_forward([qw[0], torch.randn(2, 6, 5, 2)], qb, 2, False)
    with pytest.raises(RuntimeError, match="multiple of the heads"):
        ops.token_attention_forward(qw, qb, 4, False)
    with pytest.raises(RuntimeError, match="float32"):
        ops.token_attention_forward([t.double() for t in qw], [t.double() for t in qb], 2, False)
    d_w, d_b = out[:2], out[2:4]
    with pytest.raises(RuntimeError, match="probs\\[1\\]"):
        ops.token_attention_backward(qw, qb, [out[4], out[4], out[6]], d_w, d_b, torch.zeros(2, 4, 6), 2)
    with pytest.raises(RuntimeError, match="output gradient 1"):
        ops.token_attention_backward(qw, qb, out[4:], [d_w[0], d_w[0]], d_b, torch.zeros(2, 4, 6), 2)
    with pytest.raises(RuntimeError, match="d_means"):
        ops.token_attention_backward(qw, qb, out[4:], d_w, d_b, torch.zeros(2, 4), 2)


@needs_compiler
def test_token_attention_propagates_nan_like_the_plain_path():
    """A NaN among the keys makes its softmax columns NaN, as torch's softmax does (the vector
    exp must not clamp it away)."""
    from nfopt.nn.attention import _token_attention

    gen = torch.Generator().manual_seed(0)
    n, heads = [17, 9, 3], 2
    qw = [torch.randn(2, 12, n[i + 1], n[i], generator=gen) for i in range(2)]
    qb = [torch.randn(2, 12, n[i + 1], generator=gen) for i in range(2)]
    qw[0][1, 5, 2, 3] = float("nan")  # a key entry of batch element 1
    got = _native.ops().token_attention_forward(qw, qb, heads, False)
    want_w, want_b = _token_attention([t.double() for t in qw], [t.double() for t in qb], heads, 0.0)
    assert any(t.isnan().any() for t in got)
    for a, b in zip(got, [*want_w, *want_b]):
        assert torch.equal(a.isnan(), b.isnan())


@needs_compiler
def test_entry_mix_streams_large_outputs_exactly():
    x, A = torch.randn(2, 16, 256, 1024), torch.randn(16, 16)  # 32 MiB out: streaming stores
    col, row = torch.randn(2, 16, 256), torch.randn(2, 16, 1024)
    want = _entry_mix_reference(x, A, col, row)
    assert torch.allclose(_native.ops().entry_mix(x, A, col, row), want, rtol=1e-5, atol=1e-4)


@needs_compiler
@pytest.mark.parametrize("batch", [4, 20])  # 20: the tiled passes see more rows per tile
@pytest.mark.parametrize("c_in", [1, 3])
@pytest.mark.parametrize("cls", [NPLinear, HNPLinear])
def test_float32_layers_equal_with_and_without_native(cls, c_in, batch, monkeypatch):
    """Float32 with rows of whole 16-float vectors: the per-entry term and its adjoint run natively
    (and with one input feature, its weight gradient beside the output gradient's sums)."""
    spec = NetworkSpec.mlp([32, 64, 48, 16])
    torch.manual_seed(0)
    layer = cls(spec, c_in, 5)
    x = random_features(spec, batch, c_in).map(lambda t: t.float().requires_grad_())
    for a, b in _outputs_and_grads_with_and_without_native(layer, x, monkeypatch):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


@needs_compiler
@pytest.mark.parametrize("per_batch", [False, True])
def test_wide_hnp_layer_with_transposed_global_products_equals_plain(per_batch, monkeypatch):
    """A wide-input HNP layer (a global map of >= 2^18 entries) at a batch of 20: the native layer
    computes the global products transposed, here also with a per-sample bias (B, ΣG); outputs
    and every gradient equal the plain ops'."""
    spec, bsz = NetworkSpec.mlp([64, 6, 5]), 20
    torch.manual_seed(0)
    layer = HNPLinear(spec, 8, 8, relu=True).double()
    A, Q, Z, beta = layer._params()
    assert Z.numel() >= 2**18
    if per_batch:
        beta = beta + torch.randn(bsz, beta.shape[0], dtype=torch.float64)
    x = random_features(spec, bsz, 8).map(lambda t: t.requires_grad_())

    def run():
        y = apply_plan(layer.plan, x, A, Q, Z, beta, relu=True)
        loss = sum((t * t).sum() for t in y.tensors())
        return [*y.tensors(), *torch.autograd.grad(loss, [*x.tensors(), *layer.parameters()])]

    with_native = run()
    monkeypatch.setitem(_native._state, "ops", None)
    for a, b in zip(with_native, run(), strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_failed_build_falls_back_with_a_warning(monkeypatch):
    import torch.utils.cpp_extension as ext

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(ext, "load", broken)
    monkeypatch.setattr(_native, "_state", {"tried": False, "ops": None, "error": None})
    with pytest.warns(UserWarning, match="no compiler here"):
        assert _native.ops() is None
    spec = NetworkSpec.mlp([4, 3, 2])
    x = random_features(spec, 2, 1).map(lambda t: t.requires_grad_())
    y = NPLinear(spec, 1, 2).double()(x)
    sum(t.sum() for t in y.tensors()).backward()  # the PyTorch path still trains
    assert x.weights[0].grad is not None


def test_native_can_be_disabled(monkeypatch):
    monkeypatch.setenv("NFOPT_NATIVE", "0")
    assert _native.ops() is None


def _entry_mlp_torch(x, w1, c1, layers):
    """The reference: plain ops over (B, F, N)."""
    h = torch.einsum("hf,bfn->bhn", w1, x) + c1[:, :, None]
    for w, b in layers:
        h = torch.einsum("oh,bhn->bon", w, torch.relu(h)) + b[:, None]
    return h


@needs_compiler
@settings(max_examples=25, deadline=None)
@given(
    bsz=st.integers(1, 3),
    f=st.integers(1, 12),
    n=st.integers(1, 100),  # whole tiles of 32 entries and ragged ends
    hidden=st.lists(st.integers(1, 20), min_size=1, max_size=3),  # register blocks of 8 and remainders
    out=st.integers(1, 9),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    strided=st.booleans(),  # weights, biases and c1 as non-contiguous views
    weight_dtype=st.sampled_from([None, torch.float32, torch.float64]),  # None: x's dtype
)
def test_entry_mlp_matches_torch(bsz, f, n, hidden, out, dtype, strided, weight_dtype):
    g = torch.Generator().manual_seed(bsz * 1000 + f * 100 + n)
    sizes = [*hidden, out]
    wd = weight_dtype or dtype

    def param(*shape):
        if not strided:
            return torch.randn(*shape, generator=g, dtype=wd)
        t = torch.randn(*reversed(shape), 2, generator=g, dtype=wd)[..., 0]  # strides (.., 2) then transposed
        return t.permute(*reversed(range(len(shape))))

    x = torch.randn(bsz, f, n, generator=g, dtype=dtype)
    w1, c1 = param(sizes[0], f), param(bsz, sizes[0])
    layers = [(param(o, i), param(o)) for i, o in itertools.pairwise(sizes)]
    y = _native.ops().entry_mlp(x, w1, c1, [w for w, _ in layers], [b for _, b in layers])
    assert y.dtype == dtype
    w1, c1 = w1.to(dtype), c1.to(dtype)
    layers = [(w.to(dtype), b.to(dtype)) for w, b in layers]
    tol = 1e-4 if torch.float32 in (dtype, wd) else 1e-10
    torch.testing.assert_close(y, _entry_mlp_torch(x, w1, c1, layers), rtol=tol, atol=tol)


@needs_compiler
def test_entry_mlp_wrapper_shapes_and_fallbacks(monkeypatch):
    """``nfopt.nn.fused.entry_mlp`` keeps trailing axes, takes non-contiguous inputs, and returns
    ``None`` (callers use their layers) when gradients are needed or the kernels are off."""
    x = torch.randn(2, 3, 5, 4, 3).transpose(2, 3)  # (B, F, n_r, n_c, k), non-contiguous
    w1, c1 = torch.randn(6, 3), torch.randn(2, 6)
    layers = [(torch.randn(2, 6), torch.randn(2))]
    y = entry_mlp(x, w1, c1, layers)
    assert y.shape == (2, 2, 4, 5, 3)
    ref = _entry_mlp_torch(x.reshape(2, 3, -1), w1, c1, layers).view(2, 2, 4, 5, 3)
    torch.testing.assert_close(y, ref)
    assert entry_mlp(x, w1.requires_grad_(), c1, layers) is None  # autograd: the layers' path
    with torch.no_grad():
        assert entry_mlp(x, w1, c1, layers) is not None
        assert entry_mlp(x.to(torch.bfloat16), w1, c1, layers) is None
        assert entry_mlp(x, w1, c1, []) is None
        monkeypatch.setitem(_native._state, "ops", None)
        assert entry_mlp(x, w1, c1, layers) is None


@needs_compiler
@settings(max_examples=30, deadline=None)
@given(
    groups=st.integers(1, 3),
    c=st.integers(1, 3),
    sizes=st.tuples(st.integers(1, 40), st.integers(1, 40), st.integers(1, 40)),
    inner=st.sampled_from(["both", "in", "out"]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_attention_token_kernels_match_torch(groups, c, sizes, inner, dtype):
    """``weight_tokens`` gathers a layer's tokens as the concatenation of transposed views does,
    and ``weight_from_tokens`` sums a weight's two token blocks (full 16 x 16 tiles, transposed in
    registers for float32, and edge tiles)."""
    from nfopt.nn.attention import _tokens

    m, n, p = sizes  # W_in (n, m), W_out (p, n) around neuron layer n
    bsz, sc = 2, groups * c
    w_in, b_in = torch.randn(bsz, sc, n, m, dtype=dtype), torch.randn(bsz, sc, n, dtype=dtype)
    w_out = torch.randn(bsz, sc, p, n, dtype=dtype)
    ws, bs, level = {"both": ([w_in, w_out], [b_in, None], 1), "in": ([w_in], [b_in], 1), "out": ([w_out], [None], 0)}[
        inner
    ]
    got = _native.ops().weight_tokens(
        w_in if inner != "out" else None, b_in if inner != "out" else None, w_out if inner != "in" else None, groups
    )
    assert torch.equal(got, torch.cat(_tokens(ws, bs, level, groups), dim=-1))
    hi = torch.randn(groups, bsz, c, p, m + 3, dtype=dtype)  # the weight (p, m): first m tokens of hi
    lo = torch.randn(groups, bsz, c, m, p + 2, dtype=dtype)  # ... and last p tokens of lo, transposed
    mean = torch.randn(bsz, sc, dtype=dtype)
    want = hi[..., :m] + lo[..., -p:].transpose(3, 4) + mean.view(bsz, groups, c, 1, 1).transpose(0, 1)
    got = _native.ops().weight_from_tokens(hi, lo, mean)
    torch.testing.assert_close(got, want.transpose(0, 1).reshape(bsz, sc, p, m))
