"""CIFAR-10 from its python-pickle batches (``cifar-10-batches-py``), read offline."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch

from nfopt.data.base import Dataset, resize_images, standardize
from nfopt.data.idx import DataNotFoundError

__all__ = ["load_cifar10"]

_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_TEST = ["test_batch"]


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError, OSError) as err:
        raise ValueError(f"{path}: not a readable CIFAR-10 pickle batch ({err}); re-download it") from err
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a dict with b'data' and b'labels', got {type(d).__name__}")
    data, labels = d.get(b"data", d.get("data")), d.get(b"labels", d.get("labels"))
    if data is None or labels is None:
        raise ValueError(f"{path}: missing b'data' or b'labels' keys (found {sorted(map(str, d))})")
    data = np.asarray(data)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(f"{path}: data {data.shape} with {len(labels)} labels; expected (N, 3072) uint8 and N labels")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def load_cifar10(data_dir: str | Path | None = None, size: int | None = 32, standardized: bool = True) -> Dataset:
    """CIFAR-10 ``(N, 3, size, size)``, standardized (else pixels in [0, 1]), 10 classes. Looks in ``data_dir``,
    ``data_dir/cifar-10-batches-py``, ``$NFOPT_DATA_DIR/cifar-10-batches-py`` and ``$NFOPT_DATA_DIR``."""
    candidates = []
    if data_dir is not None:
        candidates += [Path(data_dir), Path(data_dir) / "cifar-10-batches-py"]
    if os.environ.get("NFOPT_DATA_DIR"):
        env = Path(os.environ["NFOPT_DATA_DIR"])
        candidates += [env / "cifar-10-batches-py", env]
    for d in candidates:
        if all((d / n).is_file() for n in _TRAIN + _TEST):
            tr = [_read_batch(d / n) for n in _TRAIN]
            te = _read_batch(d / _TEST[0])
            x_tr = torch.from_numpy(np.concatenate([x for x, _ in tr]).astype(np.float32) / 255.0)
            x_te = torch.from_numpy(te[0].astype(np.float32) / 255.0)
            x_tr, x_te = resize_images(x_tr, size), resize_images(x_te, size)
            if standardized:
                x_tr, x_te = standardize(x_tr, x_te)
            y_tr = torch.from_numpy(np.concatenate([y for _, y in tr]))
            return Dataset("cifar10", x_tr, y_tr, x_te, torch.from_numpy(te[1]), 10)
    raise DataNotFoundError(
        f"CIFAR-10 pickle batches ({', '.join(_TRAIN + _TEST)}) not found; looked in: "
        f"{'; '.join(map(str, candidates)) or '(nowhere: pass data_dir or set NFOPT_DATA_DIR)'}. "
        "Copy the extracted cifar-10-batches-py directory into $NFOPT_DATA_DIR."
    )
