"""The `Dataset` record every loader returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["Dataset", "resize_images", "standardize"]


@dataclass(frozen=True)
class Dataset:
    """Train/test tensors of one dataset.

    Images are ``(N, C, H, W)`` float32, sequences ``(N, L)``, vectors ``(N, D)``; labels are
    ``(N,)`` int64 for classification (``num_classes`` set) or ``(N, K)`` float32 targets for
    regression (``num_classes=None``).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int | None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def input_size(self) -> int:
        """Features per example once flattened (the input width of an MLP)."""
        n = 1
        for d in self.input_shape:
            n *= d
        return n

    @property
    def output_size(self) -> int:
        return self.num_classes if self.num_classes is not None else int(self.y_train.shape[-1])

    def subset(self, num_train: int | None = None, num_test: int | None = None) -> Dataset:
        """The first ``num_train``/``num_test`` examples (loaders shuffle deterministically)."""
        return Dataset(
            self.name,
            self.x_train[:num_train],
            self.y_train[:num_train],
            self.x_test[:num_test],
            self.y_test[:num_test],
            self.num_classes,
        )

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={tuple(self.x_train.shape)}, test={tuple(self.x_test.shape)}, "
            f"classes={self.num_classes})"
        )


def resize_images(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """Area-resize ``(N, C, H, W)`` images to ``size x size`` (``None`` or same size: unchanged)."""
    if size is None or (x.shape[-1] == size and x.shape[-2] == size):
        return x
    if size < 1:
        raise ValueError(f"size={size}: image size must be positive")
    return F.interpolate(x, size=(size, size), mode="area")


def standardize(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero mean, unit variance using the training set's scalar statistics."""
    mean, std = train.mean(), train.std().clamp_min(1e-8)
    return (train - mean) / std, (test - mean) / std
