"""A per-entry ReLU MLP as one fused CPU kernel: the whole MLP of the per-parameter learned
optimizer, tile by tile of 16 (AVX2) or 32 (AVX-512) entries, its hidden activations kept in L1
(``entry_mlp`` in ``csrc/np_kernels.cpp``). For inference only (no autograd); callers fall back to their PyTorch
layers, which compute the same function, wherever :func:`entry_mlp` returns ``None``."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from nfopt.nn import _native
from nfopt.nn._mix import functorch_active

__all__ = ["applies", "entry_mlp"]

Tensor = torch.Tensor


def applies(x: Tensor, *params: Tensor) -> bool:
    """Whether the kernel can run on input ``x`` with these parameters: CPU float ``x``, no
    gradient needed, no ``torch.func`` transform, kernels built. Cheap: callers may ask before
    preparing the kernel's inputs."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, *params)):
        return False
    return not functorch_active(x, *params) and _native.available()


def entry_mlp(x: Tensor, w1: Tensor, c1: Tensor, layers: Sequence[tuple[Tensor, Tensor]]) -> Tensor | None:
    """``y = W_D relu(... relu(W_1 x + c1) ...) + b_D`` at every entry of ``x``.

    ``x: (B, F, *rest)``; ``w1: (H_1, F)``; ``c1: (B, H_1)``, the first layer's bias per batch
    element (where per-network inputs enter); ``layers``: ``(W_d: (H_d, H_{d-1}), b_d: (H_d,))``
    for the later layers, ReLU between all. Returns ``(B, H_D, *rest)``, or ``None`` where the
    kernel does not apply: gradients needed, a ``torch.func`` transform, not a CPU float tensor,
    or no kernels built."""
    if not layers or not applies(x, w1, c1, *(t for pair in layers for t in pair)):
        return None
    bsz, f, *rest = x.shape
    y = torch.ops.nfopt_native.entry_mlp(
        x.reshape(bsz, f, -1), w1, c1, [w for w, _ in layers], [b for _, b in layers]
    )  # (B, H_D, N)
    return y.view(bsz, -1, *rest)
