"""The neural-functional layers on a CUDA device compute what they compute on the CPU.

Each layer is built once, copied to the CPU and to the GPU with the same parameters, and run
forward and backward (from one fixed output cotangent) on the same inputs: outputs, input
gradients and parameter gradients agree (float64 to ~1e-10; float32 with TF32 off to ~1e-4,
the CPU side taking its fused native kernels where they apply). Skipped without a CUDA device
(``pytest -m cuda`` runs these where one exists)."""

import copy

import pytest
import torch

from nfopt import NetworkSpec, WeightSpaceFeatures
from nfopt.nn import (
    DWSNet,
    HNPLinear,
    HNPPool,
    Inr2ArrayEncoder,
    NFActivation,
    NPLinear,
    NPPool,
    SharedChannelNorm,
    SharedNPLinear,
    SharedPointwise,
    SharedWeightSpaceAttention,
    WeightSpaceAttention,
    build_nft,
    fuse_relu,
)
from nfopt.testing import assert_equivariant, max_relative_error

pytestmark = [pytest.mark.cuda, pytest.mark.usefixtures("no_tf32")]

MLP = NetworkSpec.mlp([7, 9, 6, 3])
CNN = NetworkSpec(((5, 2, 3, 3), (4, 5, 3, 3), (3, 4)))


def _fused(layer: torch.nn.Module) -> torch.nn.Module:
    """``layer`` then ReLU, fused into the layer."""
    seq = torch.nn.Sequential(layer, NFActivation())
    assert fuse_relu(seq) == 1
    return seq


#: name -> (layer builder from a spec, input channels)
LAYERS = {
    "np": (lambda s: NPLinear(s, 3, 4), 3),
    "np_relu": (lambda s: _fused(NPLinear(s, 3, 4)), 3),
    "hnp": (lambda s: HNPLinear(s, 3, 4), 3),
    "hnp_relu": (lambda s: _fused(HNPLinear(s, 3, 4)), 3),
    "np_pool": (lambda s: NPPool(s), 3),
    "hnp_pool": (lambda s: HNPPool(s), 3),
    "attention": (lambda s: WeightSpaceAttention(s, 4, 2), 4),
    "nft": (lambda s: build_nft(s, 2, channels=8, num_blocks=1, num_heads=2, out_features=3), 2),
    "dws": (lambda s: DWSNet(s, 2, 6, 3, layers=2), 2),
    "inr2array": (lambda s: Inr2ArrayEncoder(s, 1, num_latents=4, latent_dim=8, channels=8, num_blocks=1), 1),
    "shared_np": (lambda s: SharedNPLinear(3, 4), 3),
    "shared_pointwise": (lambda s: SharedPointwise(3, 2), 3),
    "shared_norm": (lambda s: SharedChannelNorm(3), 3),
    "shared_attention": (lambda s: SharedWeightSpaceAttention(4, 2), 4),
}


def _flat(out) -> list[torch.Tensor]:
    return list(out.tensors()) if isinstance(out, WeightSpaceFeatures) else [out]


def _run(layer: torch.nn.Module, x: WeightSpaceFeatures, cot: list[torch.Tensor], device: str):
    """Forward and backward of ``layer`` on ``device``; outputs, input and parameter gradients on the CPU."""
    layer = copy.deepcopy(layer).to(device)
    xs = x.to(device).map(lambda t: t.detach().requires_grad_())
    out = _flat(layer(xs))
    torch.autograd.backward(out, [c.to(device) for c in cot])
    grads = [t.grad for t in xs.tensors()] + [p.grad for p in layer.parameters() if p.grad is not None]
    return [t.detach().cpu() for t in out], [g.cpu() for g in grads]


@pytest.mark.parametrize("spec", [MLP, CNN], ids=["mlp", "cnn"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_on_cuda_equals_the_cpu(name, dtype, spec):
    make, c_in = LAYERS[name]
    torch.manual_seed(0)
    layer = make(spec).to(dtype).eval()
    gen = torch.Generator().manual_seed(1)
    x = WeightSpaceFeatures.randn(spec, 3, c_in, generator=gen, dtype=dtype)
    with torch.no_grad():
        shapes = [t.shape for t in _flat(layer(x))]
    cot = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
    out_cpu, grad_cpu = _run(layer, x, cot, "cpu")
    out_gpu, grad_gpu = _run(layer, x, cot, "cuda")
    tol = 1e-10 if dtype == torch.float64 else 2e-4
    assert len(grad_cpu) == len(grad_gpu)
    for got, ref in ((out_gpu, out_cpu), (grad_gpu, grad_cpu)):
        # relative to each tensor's size, or to a thousandth of the largest of its kind: a
        # gradient that is zero in exact arithmetic (a bias before a normalisation) is rounding
        # noise on both devices
        floor = 1e-3 * max(float(t.abs().max()) for t in ref if t.numel())
        for a, b in zip(got, ref):
            assert a.dtype == b.dtype and a.shape == b.shape
            if b.numel():
                assert float((a - b).abs().max()) <= tol * max(float(b.abs().max()), floor)


@pytest.mark.parametrize("name", ["np", "hnp", "attention", "shared_np", "shared_attention"])
def test_layer_on_cuda_is_equivariant(name):
    make, c_in = LAYERS[name]
    layer = make(MLP)
    hidden_only = name == "hnp"
    x = WeightSpaceFeatures.randn(MLP, 2, c_in, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert_equivariant(layer.cuda(), MLP, c_in, hidden_only=hidden_only, inputs=x.to("cuda"))


def test_attention_under_bf16_autocast_on_cuda_is_close_to_float32():
    torch.manual_seed(0)
    layer = WeightSpaceAttention(MLP, 8, 2).cuda()
    x = WeightSpaceFeatures.randn(MLP, 4, 8, dtype=torch.float32).to("cuda")
    ref = layer(x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        low = layer(x)
    assert all(torch.isfinite(t).all() for t in low.tensors())
    assert max_relative_error(low.to(dtype=torch.float32), ref) < 5e-2
