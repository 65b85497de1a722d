"""Offline datasets: every loader returns a :class:`Dataset` of train/test tensors.

``load_dataset(name, **options)`` resolves the names used in task specs.
"""

from __future__ import annotations

from nfopt.data.base import Dataset, resize_images, standardize
from nfopt.data.cifar import load_cifar10
from nfopt.data.idx import DataNotFoundError, load_fashion_mnist, load_mnist, read_idx
from nfopt.data.image import clahe, lab_to_rgb, rgb_to_lab
from nfopt.data.synthetic import inr_images, load_digits, load_mnist1d, photo_patches, teacher_student

__all__ = [
    "DATASETS",
    "DataNotFoundError",
    "Dataset",
    "clahe",
    "inr_images",
    "lab_to_rgb",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
    "load_mnist1d",
    "photo_patches",
    "read_idx",
    "resize_images",
    "rgb_to_lab",
    "standardize",
    "teacher_student",
]

DATASETS = {
    "digits": load_digits,
    "fashion_mnist": load_fashion_mnist,
    "mnist": load_mnist,
    "cifar10": load_cifar10,
    "mnist1d": load_mnist1d,
    "teacher_student": teacher_student,
}


def load_dataset(name: str, **options) -> Dataset:
    """Load a dataset by the name used in task specs (see ``DATASETS``) with loader options."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[name](**options)
