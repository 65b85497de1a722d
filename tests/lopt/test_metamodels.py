"""Meta-models: the per-parameter MLP's fused CPU kernel computes what its layers compute."""

import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nfopt.lopt.metamodels import NFNMetaModel, PerParamMLP
from nfopt.nn import PerTensor, _native
from nfopt.testing import random_features, random_spec

needs_compiler = pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler on this machine")


def _mlp(glob: int, hidden: int, layers: int, outputs: int) -> PerParamMLP:
    torch.manual_seed(0)
    m = PerParamMLP(5, glob, hidden=hidden, layers=layers, outputs=outputs).double()
    with torch.no_grad():  # a trained-looking model: the zero head would hide the hidden layers
        for p in m.parameters():
            p.normal_(0.0, 0.5)
    return m


def _glob(kind: str, spec, bsz: int):
    n = spec.num_layers
    if kind == "none":
        return None
    if kind == "network":
        return torch.randn(bsz, 3, dtype=torch.float64)
    return PerTensor(
        [torch.randn(bsz, 3, dtype=torch.float64) for _ in range(n)],
        [torch.randn(bsz, 3, dtype=torch.float64) for _ in range(n)],
    )


@needs_compiler
@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    glob=st.sampled_from(["none", "network", "per_tensor"]),
    hidden=st.integers(1, 12),
    layers=st.integers(1, 3),
    outputs=st.integers(2, 3),
)
def test_fused_per_param_mlp_equals_its_layers(seed, glob, hidden, layers, outputs):
    """Any MLP/CNN spec, any global input: the kernel's output equals the layers' (float64)."""
    spec = random_spec(seed)
    model = _mlp(0 if glob == "none" else 3, hidden, layers, outputs)
    x = random_features(spec, 2, 5, torch.Generator().manual_seed(seed))
    g = _glob(glob, spec, 2)
    with torch.no_grad():
        fused = model._fused(x, g)
        plain = model.rest(model.glob(model.first(x), g) if model.glob is not None else model.first(x))
    assert fused is not None
    for a, b in zip(fused.tensors(), plain.tensors()):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@needs_compiler
def test_per_param_mlp_takes_the_kernel_only_for_inference():
    spec = random_spec(3)
    model = _mlp(3, 8, 2, 2)
    x, g = random_features(spec, 2, 5), torch.randn(2, 3, dtype=torch.float64)
    assert model._fused(x, g) is None  # parameters need gradients: the layers (training θ)
    with torch.no_grad():
        assert model._fused(x, g) is not None
        assert model._fused(x, None) is None  # a missing global input: the layers' own error
        model.rest[0].fn = torch.tanh
        assert model._fused(x, g) is None  # only ReLU is fused


@needs_compiler
def test_the_kernel_runs_inside_one_compiled_graph():
    """``torch.compile(fullgraph=True)`` traces the per-parameter MLP through the fused op (no
    graph break) and gives the eager result."""
    assert _native.available()
    spec = random_spec(5, conv=False)
    model = _mlp(3, 8, 2, 2).float()
    x = random_features(spec, 2, 5, dtype=torch.float32)
    g = torch.randn(2, 3)

    def run(x, g):
        return model(x, g).tensors()

    with torch.no_grad():
        eager = run(x, g)
        compiled = torch.compile(run, fullgraph=True)(x, g)
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 10_000), glob=st.sampled_from(["network", "per_tensor"]), kind=st.sampled_from(["np", "hnp"])
)
def test_nfn_global_input_enters_the_first_layer_as_its_per_sample_bias(seed, glob, kind):
    """Any MLP/CNN spec: the global terms folded into the first NP layer's bias give what adding
    them to its output gives, and the same gradients for every parameter and input."""
    spec = random_spec(seed)
    torch.manual_seed(seed)
    model = NFNMetaModel(5, 3, channels=4, layers=2, kind=kind, outputs=3).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    x = random_features(spec, 2, 5, torch.Generator().manual_seed(seed)).map(lambda t: t.requires_grad_())
    g = _glob(glob, spec, 2)
    for t in [g] if isinstance(g, torch.Tensor) else [*g.weights, *g.biases]:
        t.requires_grad_()
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            folded = model(x, g)
            h = model.first(model.enc(x) if model.enc is not None else x)
            plain = model.rest(model.glob(h, g))
        for a, b in zip(folded.tensors(), plain.tensors()):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    leaves = [*model.parameters(), *x.tensors(), *([g] if isinstance(g, torch.Tensor) else [*g.weights, *g.biases])]
    w = [torch.randn_like(t) for t in folded.tensors()]
    ga = torch.autograd.grad(sum((a * b).sum() for a, b in zip(folded.tensors(), w)), leaves)
    gb = torch.autograd.grad(sum((a * b).sum() for a, b in zip(plain.tensors(), w)), leaves)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@needs_compiler
@pytest.mark.parametrize("kind", ["np", "hnp"])
def test_nfn_layers_followed_by_relu_run_it_in_their_store(kind):
    """Float32 inference (the native per-entry mix, rows of 16+ floats and a column tail): an NP
    layer and the ReLU after it, run as one, give what the layer and then the activation give."""
    from nfopt.weightspace import NetworkSpec

    spec = NetworkSpec(((20, 17), (18, 20), (21, 18), (5, 21)))
    torch.manual_seed(0)
    model = NFNMetaModel(5, 3, channels=6, layers=3, kind=kind, outputs=3, pointwise=1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    x = random_features(spec, 3, 5, torch.Generator().manual_seed(1)).map(lambda t: t.float())
    g = torch.randn(3, 3)
    with torch.no_grad():
        fused = model(x, g)
        h = model.first(model.enc(x) if model.enc is not None else x)
        plain = model.rest(model.glob(h, g))
    for a, b in zip(fused.tensors(), plain.tensors()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
