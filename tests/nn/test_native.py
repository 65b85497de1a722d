"""The optional native kernels and the pure-PyTorch path compute the same thing."""

import shutil

import pytest
import torch

from nfopt import NetworkSpec
from nfopt.nn import HNPLinear, NPLinear, _native
from nfopt.testing import random_features

needs_compiler = pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler on this machine")


@needs_compiler
def test_native_kernels_build_here():
    assert _native.available(), _native._state["error"]


@needs_compiler
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 1, 1, 7), (3, 2, 9, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pool_sums_matches_torch(shape, dtype):
    x = torch.randn(*shape, dtype=dtype)
    rows, cols = _native.ops().pool_sums(x)
    assert torch.allclose(rows, x.sum(2), atol=1e-5) and torch.allclose(cols, x.sum(3), atol=1e-5)
    rows_t, _ = _native.ops().pool_sums(x.transpose(2, 3))  # non-contiguous input
    assert torch.allclose(rows_t, x.transpose(2, 3).sum(2), atol=1e-5)


@needs_compiler
@pytest.mark.parametrize("cls", [NPLinear, HNPLinear])
def test_layers_equal_with_and_without_native(cls, monkeypatch):
    spec = NetworkSpec(((6, 3, 2), (5, 6), (4, 5)))
    torch.manual_seed(0)
    layer = cls(spec, 2, 3).double()
    x = random_features(spec, 3, 2).map(lambda t: t.requires_grad_())

    def run():
        y = layer(x)
        loss = sum((t * t).sum() for t in y.tensors())
        return [*y.tensors(), *torch.autograd.grad(loss, [*x.tensors(), *layer.parameters()])]

    with_native = run()
    monkeypatch.setitem(_native._state, "ops", None)
    without = run()
    for a, b in zip(with_native, without):
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
