import pytest
import torch
from hypothesis import given
from torch import nn

from nfopt import NetworkSpec, Permutation
from tests.strategies import specs


def small_cnn():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Sequential(nn.Conv2d(4, 5, 3, padding=1), nn.GELU()),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(),
        nn.Dropout(0.1),
        nn.Linear(5, 7),
        nn.Tanh(),
        nn.Linear(7, 3),
    )


def test_from_module_mlp_and_cnn():
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 6), nn.Sigmoid()), nn.Linear(6, 2))
    spec = NetworkSpec.from_module(mlp)
    assert spec.weight_shapes == ((8, 4), (6, 8), (2, 6))
    assert spec.neuron_sizes == (4, 8, 6, 2)
    assert spec.num_params == sum(p.numel() for p in mlp.parameters())
    cnn = NetworkSpec.from_module(small_cnn())
    assert cnn.weight_shapes == ((4, 1, 3, 3), (5, 4, 3, 3), (7, 5), (3, 7))
    assert cnn.kernel_sizes == (9, 9, 1, 1) and cnn.is_conv
    conv1d = NetworkSpec.from_module(
        nn.Sequential(nn.Conv1d(2, 3, 5), nn.AdaptiveMaxPool1d(1), nn.Flatten(), nn.Linear(3, 1))
    )
    assert conv1d.weight_shapes == ((3, 2, 5), (1, 3))


def test_bias_free_layers_are_recorded():
    spec = NetworkSpec.from_module(nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 2)))
    assert spec.has_bias == (False, True)


@pytest.mark.parametrize(
    "module, match",
    [
        (nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)), r"'1' \(BatchNorm1d\).*weight"),
        (nn.Sequential(nn.Linear(3, 4), nn.Linear(5, 2)), r"'1' \(Linear\) takes 5 inputs.*'0' has 4"),
        (
            nn.Sequential(nn.Linear(3, 4), nn.Unflatten(1, (4, 1)), nn.Conv1d(4, 2, 1)),
            r"'2' \(Conv1d\) comes after Linear",
        ),
        (nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4, 2)), r"'2' \(Linear\).*without global pooling"),
        (nn.Sequential(nn.Conv2d(2, 4, 3, groups=2)), "grouped"),
        (nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(2)), "not global"),
        (nn.Sequential(nn.ReLU()), "no Linear or Conv"),
        (nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)), r"LayerNorm.*weight, bias"),
    ],
)
def test_from_module_rejects_with_named_reason(module, match):
    with pytest.raises(ValueError, match=match):
        NetworkSpec.from_module(module)


def test_spec_validation_errors():
    with pytest.raises(ValueError, match="takes 5 inputs"):
        NetworkSpec(((4, 3), (2, 5)))
    with pytest.raises(ValueError, match="convolution after a linear"):
        NetworkSpec(((4, 3), (2, 4, 3)))
    with pytest.raises(ValueError, match="empty"):
        NetworkSpec(())
    with pytest.raises(ValueError, match="has_bias"):
        NetworkSpec(((4, 3),), (True, False))


def test_spec_is_immutable_and_hashable():
    spec = NetworkSpec.mlp([3, 4, 2])
    with pytest.raises(AttributeError):
        spec.weight_shapes = ()
    assert spec == NetworkSpec(((4, 3), (2, 4)))
    assert len({spec, NetworkSpec.mlp([3, 4, 2])}) == 1


@given(specs())
def test_sample_permutation(spec):
    gen = torch.Generator().manual_seed(0)
    hidden = spec.sample_permutation(gen)
    n = spec.neuron_sizes
    assert hidden.sizes == n
    assert torch.equal(hidden.indices[0], torch.arange(n[0]))
    assert torch.equal(hidden.indices[-1], torch.arange(n[-1]))
    full = spec.sample_permutation(gen, hidden_only=False)
    assert full.sizes == n


@given(specs())
def test_permutation_group_laws(spec):
    gen = torch.Generator().manual_seed(1)
    p, q, r = (spec.sample_permutation(gen, hidden_only=False) for _ in range(3))
    ident = spec.identity_permutation()
    assert (p @ p.inverse()) == ident and (p.inverse() @ p) == ident
    assert (p @ q) @ r == p @ (q @ r)
    assert p @ ident == p


def test_permutation_rejects_non_permutations():
    with pytest.raises(ValueError, match="not a permutation"):
        Permutation((torch.tensor([0, 0, 1]),))
