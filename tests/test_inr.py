import pytest
import torch

from nfopt import NetworkSpec, WeightSpaceFeatures
from nfopt.inr import Siren, grid_coords, render


def test_siren_is_a_weight_space_and_render_matches_module():
    torch.manual_seed(0)
    nets = [Siren(2, 16, 3, 3) for _ in range(3)]
    spec = NetworkSpec.from_module(nets[0])
    assert spec.neuron_sizes == (2, 16, 16, 16, 3)
    coords = grid_coords(5, 7)
    assert coords.shape == (35, 2) and coords.min() == -1 and coords.max() == 1
    out = render(WeightSpaceFeatures.from_modules(nets), coords)
    assert out.shape == (3, 35, 3)
    assert torch.allclose(out, torch.stack([n(coords) for n in nets]), atol=1e-5)


def test_render_per_network_coords_and_errors():
    f = WeightSpaceFeatures.from_modules([Siren(2, 8, 1, 1), Siren(2, 8, 1, 1)])
    c = torch.rand(2, 10, 2)
    assert render(f, c).shape == (2, 10, 1)
    with pytest.raises(ValueError, match="C=1"):
        render(WeightSpaceFeatures.cat([f, f]), c)


def test_siren_init_scaling():
    net = Siren(2, 64, 2, 1, w0=30.0)
    assert net[0].weight.abs().max() <= 0.5  # 1 / n_in
    assert net[2].weight.abs().max() <= (6 / 64) ** 0.5 / 30
