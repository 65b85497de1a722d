import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from nfopt.data import DataNotFoundError, load_fashion_mnist, load_mnist, read_idx
from nfopt.data.idx import FASHION_DEBIAN_DIR

FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path = path.with_name(path.name + (".gz" if gz else ""))
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def make_idx_dir(d: Path, n_train=20, n_test=8, gz=True, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {
        FILES[0]: rng.integers(0, 256, (n_train, 28, 28)),
        FILES[1]: rng.integers(0, 10, n_train),
        FILES[2]: rng.integers(0, 256, (n_test, 28, 28)),
        FILES[3]: rng.integers(0, 10, n_test),
    }
    d.mkdir(parents=True, exist_ok=True)
    for name, a in arrays.items():
        write_idx(d / name, a, gz)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("size", [8, 14, 28])
def test_idx_loader_on_files_in_the_real_format(tmp_path, gz, size):
    arrays = make_idx_dir(tmp_path / "fm", gz=gz, seed=size)
    d = load_fashion_mnist(tmp_path / "fm", size=size)
    assert d.x_train.shape == (20, 1, size, size) and d.x_test.shape == (8, 1, size, size)
    assert torch.equal(d.y_train, torch.from_numpy(arrays[FILES[1]].astype(np.int64)))
    assert abs(d.x_train.mean().item()) < 1e-5 and abs(d.x_train.std().item() - 1) < 1e-4
    assert d.num_classes == 10 and d.input_size == size * size


def test_read_idx_round_trip_and_errors(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", a, gz=False)
    assert np.array_equal(read_idx(tmp_path / "a"), a)
    raw = (tmp_path / "a").read_bytes()
    (tmp_path / "trunc").write_bytes(raw[:-5])
    with pytest.raises(ValueError, match=r"trunc.*truncated or corrupt"):
        read_idx(tmp_path / "trunc")
    (tmp_path / "bad").write_bytes(b"\x01\x02" + raw[2:])
    with pytest.raises(ValueError, match="bad magic"):
        read_idx(tmp_path / "bad")
    (tmp_path / "bad.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="cannot read IDX"):
        read_idx(tmp_path / "bad.gz")


def test_mismatched_counts_are_named(tmp_path):
    make_idx_dir(tmp_path, gz=False)
    write_idx(tmp_path / FILES[1], np.zeros(5), gz=False)
    with pytest.raises(ValueError, match="20 train images but 5 labels"):
        load_mnist(tmp_path)


def test_missing_data_names_every_place_and_the_fix(tmp_path, monkeypatch):
    import nfopt.data.idx as idx

    monkeypatch.setenv("NFOPT_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setattr(idx, "FASHION_DEBIAN_DIR", str(tmp_path / "debian"))  # as on a machine without it
    with pytest.raises(DataNotFoundError) as err:
        load_fashion_mnist(tmp_path / "nowhere")
    msg = str(err.value)
    for place in (str(tmp_path / "nowhere"), str(tmp_path / "env" / "fashion-mnist"), str(tmp_path / "debian")):
        assert place in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "NFOPT_DATA_DIR" in msg


def test_env_dir_is_used(tmp_path, monkeypatch):
    make_idx_dir(tmp_path / "mnist", n_train=6, n_test=3)
    monkeypatch.setenv("NFOPT_DATA_DIR", str(tmp_path))
    assert load_mnist(size=8).x_train.shape == (6, 1, 8, 8)


@pytest.mark.skipif(not Path(FASHION_DEBIAN_DIR).is_dir(), reason="Debian's dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    d = load_fashion_mnist(size=8)
    assert d.x_train.shape == (60000, 1, 8, 8) and d.x_test.shape == (10000, 1, 8, 8)
    assert sorted(d.y_train.unique().tolist()) == list(range(10))
