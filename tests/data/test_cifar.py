import pickle

import numpy as np
import pytest

from nfopt.data import DataNotFoundError, load_cifar10

NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def write_batches(d, n=4, seed=0):
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
        with open(d / name, "wb") as f:
            pickle.dump(batch, f)


def test_cifar_loader_on_pickles_in_the_real_format(tmp_path):
    write_batches(tmp_path / "cifar-10-batches-py")
    d = load_cifar10(tmp_path, size=16)
    assert d.x_train.shape == (20, 3, 16, 16) and d.x_test.shape == (4, 3, 16, 16)
    assert d.y_train.dtype.is_floating_point is False and d.num_classes == 10
    raw = load_cifar10(tmp_path, size=None, standardized=False)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb") as f:
        first = pickle.load(f)[b"data"][0]
    assert raw.x_test.shape == (4, 3, 32, 32) and float(raw.x_test.min()) >= 0 and float(raw.x_test.max()) <= 1
    assert np.allclose(raw.x_test[0].numpy().reshape(-1) * 255, first)  # channel-major, like the pickle rows


def test_cifar_corrupt_and_missing(tmp_path, monkeypatch):
    write_batches(tmp_path)
    (tmp_path / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="data_batch_3: not a readable CIFAR-10 pickle"):
        load_cifar10(tmp_path)
    with open(tmp_path / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match=r"expected \(N, 3072\)"):
        load_cifar10(tmp_path)
    monkeypatch.delenv("NFOPT_DATA_DIR", raising=False)
    with pytest.raises(DataNotFoundError, match="NFOPT_DATA_DIR"):
        load_cifar10(tmp_path / "empty")
