"""Accuracy predictors: Kendall's τ, invariance to hidden-neuron permutations, learning."""

import pytest
import torch

from nfopt.testing import assert_invariant
from nfopt.weightspace import NetworkSpec, WeightSpaceFeatures
from nfopt.zoo.predict import build_predictor, hidden_permutation, kendall_tau, tensor_statistics

CNN = NetworkSpec.from_module(
    torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.ReLU(),
        torch.nn.Conv2d(4, 5, 3),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(5, 3),
    )
)


def _random(spec, batch=6):
    return WeightSpaceFeatures(
        [torch.randn(batch, 1, *s) for s in spec.weight_shapes],
        [torch.randn(batch, 1, s[0]) for s in spec.weight_shapes],
    )


def test_kendall_tau_matches_hand_computed_values():
    assert kendall_tau(torch.tensor([1.0, 2, 3, 4]), torch.tensor([10.0, 20, 30, 40])) == pytest.approx(1.0)
    assert kendall_tau(torch.tensor([1.0, 2, 3, 4]), torch.tensor([4.0, 3, 2, 1])) == pytest.approx(-1.0)
    # 5 concordant, 1 discordant pair of 6: (5 - 1) / 6
    assert kendall_tau(torch.tensor([1.0, 2, 3, 4]), torch.tensor([1.0, 3, 2, 4])) == pytest.approx(4 / 6)
    # ties: tau-b = (C - D) / sqrt((n0 - n1)(n0 - n2)); x has one tied pair
    x, y = torch.tensor([1.0, 1, 2, 3]), torch.tensor([1.0, 2, 3, 4])
    assert kendall_tau(x, y) == pytest.approx(5 / (5 * 6) ** 0.5)


@pytest.mark.parametrize("kind", ["nfn_np", "nfn_hnp", "nft", "statnn"])
def test_predictors_are_invariant_to_hidden_permutations(kind):
    torch.manual_seed(0)
    x = _random(CNN)
    model = build_predictor(kind, CNN, x, channels=4, layers=2).eval()
    assert model(x).shape == (6,)
    assert_invariant(model, CNN, 1, hidden_only=True, inputs=x)


def test_hidden_permutation_preserves_the_network_function():
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    spec = NetworkSpec.from_module(net)
    feats = WeightSpaceFeatures.from_module(net).permute(hidden_permutation(spec))
    permuted = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    with torch.no_grad():
        for i, lin in enumerate((permuted[0], permuted[2])):
            lin.weight.copy_(feats.weights[i][0, 0])
            lin.bias.copy_(feats.biases[i][0, 0])
    x = torch.randn(4, 3)
    torch.testing.assert_close(net(x), permuted(x))


def test_statistics_have_seven_numbers_per_tensor():
    x = _random(CNN, batch=2)
    assert tensor_statistics(x).shape == (2, 7 * 2 * CNN.num_layers)
