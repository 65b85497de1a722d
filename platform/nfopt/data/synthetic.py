"""Generated data: sklearn digits, MNIST-1D, teacher-student regression, images for INRs."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from nfopt.data.base import Dataset, resize_images, standardize

__all__ = ["inr_images", "load_digits", "load_mnist1d", "photo_patches", "teacher_student"]


def load_digits(size: int | None = 8, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes), standardized, split by a
    fixed stratified shuffle: ``(N, 1, size, size)``."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    d = sk_digits()
    x = d.images.astype(np.float32) / 16.0
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, d.target, test_size=test_fraction, random_state=seed, stratify=d.target
    )
    xs = [resize_images(torch.from_numpy(a)[:, None], size) for a in (x_tr, x_te)]
    x_tr_t, x_te_t = standardize(*xs)
    return Dataset("digits", x_tr_t, torch.from_numpy(y_tr).long(), x_te_t, torch.from_numpy(y_te).long(), 10)


def load_mnist1d(num_samples: int = 5000, seed: int = 42) -> Dataset:
    """MNIST-1D (Greydanus, 2020) generated locally with the ``mnist1d`` package's own
    generator and default arguments (its download path is never used): ``(N, 40)`` sequences,
    10 classes, 80/20 split. The global numpy RNG is restored afterwards."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    state = np.random.get_state()
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(state)
    to = torch.from_numpy
    return Dataset(
        "mnist1d",
        to(d["x"].astype(np.float32)),
        to(d["y"].astype(np.int64)),
        to(d["x_test"].astype(np.float32)),
        to(d["y_test"].astype(np.int64)),
        10,
    )


def teacher_student(
    n_in: int = 16,
    n_hidden: int = 32,
    n_out: int = 1,
    num_train: int = 4096,
    num_test: int = 1024,
    noise: float = 0.05,
    seed: int = 0,
) -> Dataset:
    """Regression on the outputs of a random teacher MLP ``n_in -> n_hidden (tanh) -> n_out``
    with Gaussian inputs and label noise; targets standardized. ``num_classes=None``."""
    g = torch.Generator().manual_seed(seed)
    teacher = nn.Sequential(nn.Linear(n_in, n_hidden), nn.Tanh(), nn.Linear(n_hidden, n_out))
    with torch.no_grad():
        for p in teacher.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / (p.shape[-1] ** 0.5 if p.ndim > 1 else 1.0))
        x = torch.randn(num_train + num_test, n_in, generator=g)
        y = teacher(x)
        y = (y - y.mean(0)) / y.std(0).clamp_min(1e-8)
        y = y + noise * torch.randn(y.shape, generator=g)
    return Dataset("teacher_student", x[:num_train], y[:num_train], x[num_train:], y[num_train:], None)


def inr_images(source: str = "digits", size: int = 28, limit: int | None = None, data_dir=None) -> torch.Tensor:
    """Images to fit INRs to, ``(N, C, size, size)`` in ``[0, 1]``: ``"digits"`` (sklearn),
    ``"fashion_mnist"`` (training images) or ``"sklearn_samples"`` (the two colour photographs
    bundled with scikit-learn, RGB)."""
    if source == "digits":
        from sklearn.datasets import load_digits as sk_digits

        x = torch.from_numpy(sk_digits().images.astype(np.float32) / 16.0)[:, None]
    elif source == "fashion_mnist":
        from nfopt.data.idx import load_fashion_mnist

        d = load_fashion_mnist(data_dir, size=None)
        x = d.x_train
        x = (x - x.amin()) / (x.amax() - x.amin())
    elif source == "sklearn_samples":
        x = _sample_photos()
    else:
        raise ValueError(f"source={source!r}: use 'digits', 'fashion_mnist' or 'sklearn_samples'")
    x = x[:limit]
    return resize_images(x, size).clamp(0.0, 1.0)


def _sample_photos() -> torch.Tensor:
    """The two colour photographs bundled with scikit-learn (china.jpg, flower.jpg), ``(2, 3, 427, 640)`` in [0, 1]."""
    from sklearn.datasets import load_sample_images

    return torch.from_numpy(np.stack(load_sample_images().images).astype(np.float32) / 255.0).permute(0, 3, 1, 2)


def photo_patches(n: int, crop: int, split: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random ``crop`` x ``crop`` colour patches ``(n, 3, crop, crop)`` in [0, 1] of the two
    photographs bundled with scikit-learn, half from each, labelled 0 (china.jpg) or 1 (flower.jpg).
    Training patches lie in the left three quarters of each photo, test patches in the right
    quarter, so the splits share no pixels."""
    photos = _sample_photos()
    h, w = photos.shape[-2:]
    cut = 3 * w // 4
    lo, hi = (0, cut - crop) if split == "train" else (cut, w - crop)
    if hi < lo or crop > h:
        raise ValueError(f"crop={crop}: too large for the {h}x{w} photos' {split} region; use a smaller crop")
    g = torch.Generator().manual_seed(seed)
    label = torch.arange(n) % 2
    top = torch.randint(0, h - crop + 1, (n,), generator=g)
    left = torch.randint(lo, hi + 1, (n,), generator=g)
    x = torch.stack([photos[k, :, t : t + crop, s : s + crop] for k, t, s in zip(label, top, left)])
    return x, label
