"""The zoo trainer's building blocks: its activations and dropout compute what they claim."""

import torch

from nfopt.zoo.train import _ACT, _dropout


def test_tanh_is_tanh():
    x = torch.linspace(-12, 12, 10001)
    assert torch.allclose(_ACT["tanh"](x), torch.tanh(x), atol=2e-7)


def test_dropout_keeps_each_channel_at_its_rate_and_is_unbiased():
    torch.manual_seed(0)
    keep = torch.tensor([1.0, 0.9, 0.5, 0.7])
    h = torch.ones(64, 4, 20, 20).contiguous(memory_format=torch.channels_last)
    out = _dropout(h, keep, torch.Generator().manual_seed(1))
    assert out.shape == h.shape and out.is_contiguous(memory_format=torch.channels_last)
    kept = (out != 0).float().mean((0, 2, 3))
    assert torch.allclose(kept, keep, atol=0.01)  # 25,600 draws per channel
    assert torch.allclose(out.mean((0, 2, 3)), torch.ones(4), atol=0.02)  # E[out] = h
    assert torch.equal(out[:, 0], h[:, 0])  # keep 1: untouched


def test_dropout_gradient_is_the_same_mask_and_scale():
    h = torch.randn(8, 3, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    out = _dropout(h, torch.tensor([0.5, 0.8, 1.0]), torch.Generator().manual_seed(2))
    out.sum().backward()
    assert torch.allclose(h.grad * h.detach(), out.detach(), atol=1e-6)
