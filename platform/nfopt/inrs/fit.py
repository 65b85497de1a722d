"""Fitting SIRENs to images, a population at a time: the ``N`` networks' parameters are stacked
and rendered with batched matrix products over a shared coordinate grid, so one Adam step fits
``N`` images at the cost of one wide network."""

from __future__ import annotations

import torch

from nfopt.data import resize_images
from nfopt.data.synthetic import photo_patches
from nfopt.inr import Siren, grid_coords, render
from nfopt.inrs.spec import InrFitSpec, InrSourceSpec
from nfopt.weightspace import WeightSpaceFeatures

__all__ = ["fit_sirens", "labelled_images", "psnr"]


def labelled_images(source: InrSourceSpec, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images (N, C, S, S) in [0, 1], labels (N,))`` of ``split`` ("train" or "test")."""
    if source.name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.from_numpy(d.images).float()[:, None] / 16.0
        y = torch.from_numpy(d.target).long()
        cut = 1500  # the same first-1500 / rest split as nfopt.data's digits
        x, y = (x[:cut], y[:cut]) if split == "train" else (x[cut:], y[cut:])
    elif source.name == "photo_patches":
        n = (source.train_limit or 5000) if split == "train" else (source.test_limit or 1000)
        x, y = photo_patches(n, source.crop, split, seed=0 if split == "train" else 1)
    elif source.name == "cifar10":
        from nfopt.data.cifar import load_cifar10

        d = load_cifar10(source.root, size=None, standardized=False)
        x, y = (d.x_train, d.y_train) if split == "train" else (d.x_test, d.y_test)
    else:
        from nfopt.data.idx import load_fashion_mnist, load_mnist

        loader = load_fashion_mnist if source.name == "fashion_mnist" else load_mnist
        d = loader(source.root, size=None)
        x, y = (d.x_train, d.y_train) if split == "train" else (d.x_test, d.y_test)
        x = (x - x.amin()) / (x.amax() - x.amin())
    limit = source.train_limit if split == "train" else source.test_limit
    x, y = x[:limit], y[:limit]
    if x.shape[-1] != source.size:
        x = resize_images(x, source.size)
    return x.clamp(0, 1), y


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) for values in [0, 1]: ``(N, ...) -> (N,)``."""
    mse = (pred - target).square().flatten(1).mean(1).clamp_min(1e-10)
    return -10 * torch.log10(mse)


#: images fitted together inside one call: the activations of ~64 SIRENs on a 28x28 grid stay in
#: cache; 500 at once ran 1.7-2.3x slower per image (measured on this machine's CPUs).
CHUNK = 64


def fit_sirens(images: torch.Tensor, spec: InrFitSpec, seed: int) -> tuple[WeightSpaceFeatures, torch.Tensor]:
    """Fit one SIREN per image ``(N, C, S, S)``; returns the fitted weights as one-channel
    features ``(N, 1, ...)`` and each fit's PSNR ``(N,)``. Every image has its own loss and Adam
    state, so fitting in chunks of :data:`CHUNK` gives the same result as all at once."""
    n, c, h, w = images.shape
    torch.manual_seed(spec.seed if spec.shared_init else seed)
    nets = [Siren(2, spec.hidden, spec.hidden_layers, c, spec.w0) for _ in range(1 if spec.shared_init else n)]
    init = WeightSpaceFeatures.from_modules(nets)
    if spec.shared_init:
        init = init.map(lambda t: t.expand(n, *t.shape[1:]))
    coords = grid_coords(h, w)
    target = images.flatten(2).transpose(1, 2)  # (N, H*W, C)
    chunks = [slice(i, i + CHUNK) for i in range(0, n, CHUNK)]
    fitted = WeightSpaceFeatures.stack(
        [_fit_chunk(init.map(lambda t, c=c: t[c]), target[c], coords, spec) for c in chunks]
    )
    with torch.no_grad():
        out = torch.cat([render(fitted.map(lambda t, c=c: t[c]), coords, spec.w0) for c in chunks])
    return fitted, psnr(out.clamp(0, 1), target)


def _fit_chunk(
    init: WeightSpaceFeatures, target: torch.Tensor, coords: torch.Tensor, spec: InrFitSpec
) -> WeightSpaceFeatures:
    """Adam on ``sum_images mean_pixels (render - target)²`` from ``init`` ``(B, 1, ...)``."""
    params = [t.clone().requires_grad_() for pair in init for t in pair]
    opt = torch.optim.Adam(params, lr=spec.lr)

    def current() -> WeightSpaceFeatures:
        return WeightSpaceFeatures(params[0::2], params[1::2])

    for _ in range(spec.steps):
        loss = (render(current(), coords, spec.w0) - target).square().mean((1, 2)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return current().map(torch.Tensor.detach)
