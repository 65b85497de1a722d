"""MNIST and Fashion-MNIST from IDX files (gzipped or raw), read offline from a directory."""

from __future__ import annotations

import gzip
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from nfopt.data.base import Dataset, resize_images, standardize

__all__ = ["DataNotFoundError", "load_fashion_mnist", "load_mnist", "read_idx"]

FASHION_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataNotFoundError(FileNotFoundError):
    """A dataset's files are in none of the places looked; the message says how to get them."""


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw). Raises ``ValueError`` naming the file on a bad magic
    number, unknown type, or a size that does not match the header (truncated/corrupt files)."""
    path = Path(path)
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:  # gzip raises these on truncated/corrupt archives
        raise ValueError(f"{path}: cannot read IDX file ({err}); re-download or re-install it") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4]!r})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: IDX header says {shape} of {dtype} ({expected} bytes) but the file holds "
            f"{len(raw) - header} bytes: truncated or corrupt; re-download or re-install it"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _find(kind: str, candidates: list[Path], hint: str) -> dict[str, Path]:
    looked = []
    for d in candidates:
        found = {}
        for key, stem in _FILES.items():
            for name in (stem + ".gz", stem):
                if (d / name).is_file():
                    found[key] = d / name
                    break
        if len(found) == len(_FILES):
            return found
        looked.append(str(d))
    raise DataNotFoundError(
        f"{kind} IDX files ({', '.join(_FILES.values())}, optionally .gz) not found; looked in: "
        f"{'; '.join(looked) or '(nowhere)'}. {hint}"
    )


def _candidates(data_dir: str | Path | None, subdir: str, default: str | None) -> list[Path]:
    out = []
    if data_dir is not None:
        out += [Path(data_dir), Path(data_dir) / subdir]
    env = os.environ.get("NFOPT_DATA_DIR")
    if env:
        out += [Path(env) / subdir, Path(env)]
    if default:
        out.append(Path(default))
    return out


@lru_cache(maxsize=8)
def _load(kind: str, files: tuple[tuple[str, Path], ...], size: int | None) -> Dataset:
    f = dict(files)
    arrays = {k: read_idx(p) for k, p in f.items()}
    for split in ("train", "test"):
        n_img, n_lab = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_img != n_lab:
            raise ValueError(f"{kind}: {n_img} {split} images but {n_lab} labels ({f[f'{split}_images']})")
    x_tr, x_te = (
        resize_images(torch.from_numpy(arrays[k].astype(np.float32) / 255.0)[:, None], size)
        for k in ("train_images", "test_images")
    )
    x_tr, x_te = standardize(x_tr, x_te)
    y_tr, y_te = (torch.from_numpy(arrays[k].astype(np.int64)) for k in ("train_labels", "test_labels"))
    return Dataset(kind, x_tr, y_tr, x_te, y_te, 10)


def load_fashion_mnist(data_dir: str | Path | None = None, size: int | None = 28) -> Dataset:
    """Fashion-MNIST ``(N, 1, size, size)``, standardized, 10 classes (60k train / 10k test).

    Looks in ``data_dir`` (and ``data_dir/fashion-mnist``), ``$NFOPT_DATA_DIR/fashion-mnist``,
    ``$NFOPT_DATA_DIR``, then Debian's ``/usr/share/datasets/fashion-mnist``. ``size``: 8, 14, 28
    (area resize) or ``None`` for the original 28.
    """
    hint = (
        "Install Debian's package (apt-get install dataset-fashion-mnist) or copy the four IDX files "
        "into $NFOPT_DATA_DIR/fashion-mnist."
    )
    files = _find("Fashion-MNIST", _candidates(data_dir, "fashion-mnist", FASHION_DEBIAN_DIR), hint)
    return _load("fashion_mnist", tuple(sorted(files.items())), size)


def load_mnist(data_dir: str | Path | None = None, size: int | None = 28) -> Dataset:
    """MNIST from the same IDX files, looked for in ``data_dir`` (and ``data_dir/mnist``),
    ``$NFOPT_DATA_DIR/mnist`` and ``$NFOPT_DATA_DIR``."""
    hint = "Copy the four MNIST IDX files into $NFOPT_DATA_DIR/mnist (no download happens at run time)."
    files = _find("MNIST", _candidates(data_dir, "mnist", None), hint)
    return _load("mnist", tuple(sorted(files.items())), size)
