import numpy as np
import pytest
import torch

from nfopt.data import inr_images, load_dataset, load_digits, load_mnist1d, teacher_student


def test_digits():
    d = load_digits()
    assert d.x_train.shape == (1437, 1, 8, 8) and d.x_test.shape == (360, 1, 8, 8)
    assert torch.equal(load_digits().x_train, d.x_train)  # deterministic split
    assert load_digits(size=14).x_train.shape[-1] == 14
    assert d.subset(100, 50).x_train.shape[0] == 100


def test_mnist1d_generated_locally_and_rng_restored():
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    d = load_mnist1d(num_samples=500, seed=3)
    assert np.array_equal(np.random.get_state()[1], before)
    assert d.x_train.shape == (400, 40) and d.x_test.shape == (100, 40) and d.num_classes == 10
    assert torch.equal(load_mnist1d(num_samples=500, seed=3).x_train, d.x_train)


def test_teacher_student():
    d = teacher_student(n_in=5, n_out=2, num_train=100, num_test=20, seed=1)
    assert d.x_train.shape == (100, 5) and d.y_train.shape == (100, 2) and d.num_classes is None
    assert torch.equal(teacher_student(n_in=5, n_out=2, num_train=100, num_test=20, seed=1).y_train, d.y_train)
    assert not torch.equal(teacher_student(n_in=5, n_out=2, num_train=100, num_test=20, seed=2).y_train, d.y_train)


def test_inr_images():
    x = inr_images("digits", size=16, limit=3)
    assert x.shape == (3, 1, 16, 16) and x.min() >= 0 and x.max() <= 1
    photos = inr_images("sklearn_samples", size=32)
    assert photos.shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="source='x'"):
        inr_images("x")


def test_load_dataset_by_name():
    assert load_dataset("digits", size=8).name == "digits"
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        load_dataset("nope")
