import pytest
import torch

from nfopt import NetworkSpec, WeightSpaceFeatures
from nfopt.inr import Siren, grid_coords
from nfopt.nn import GaussianFourierFeatures, Inr2ArrayAutoencoder, Inr2ArrayDecoder, Inr2ArrayEncoder
from nfopt.testing import EquivarianceError, assert_invariant, random_features

SIREN = NetworkSpec.from_module(Siren(2, 8, 2, 1))


@pytest.mark.parametrize(
    "spec",
    [SIREN, NetworkSpec.mlp([2, 1, 3, 1]), NetworkSpec.mlp([2, 3]), NetworkSpec(((4, 1, 3, 3), (3, 4)))],
)
def test_encoder_invariant_to_hidden_permutations(spec):
    enc = Inr2ArrayEncoder(spec, num_latents=4, latent_dim=16, channels=8, num_blocks=1, num_heads=2)
    z = enc(random_features(spec, 3, 1, dtype=torch.float32))
    assert z.shape == (3, 4, 16)
    assert_invariant(enc, spec, in_channels=1, hidden_only=True)


def test_encoder_tells_io_neurons_apart():
    enc = Inr2ArrayEncoder(SIREN, num_latents=4, latent_dim=16, channels=8, num_blocks=1, num_heads=2)
    with pytest.raises(EquivarianceError):
        assert_invariant(enc, SIREN, in_channels=1, hidden_only=False)


def test_fourier_features_shape():
    g = GaussianFourierFeatures(2, num_features=5)
    x = random_features(SIREN, 1, 2)
    y = g(x)
    assert y.channels == g.out_channels == 22
    assert torch.equal(y.weights[0][:, :2], x.weights[0])  # the raw value is kept
    assert y.weights[0][:, 2:].abs().max() <= 1.0


def test_untrained_decoder_returns_base_and_autoencoder_learns():
    torch.manual_seed(0)
    nets = [Siren(2, 8, 2, 1) for _ in range(6)]
    x = WeightSpaceFeatures.from_modules(nets)
    base = WeightSpaceFeatures.from_module(Siren(2, 8, 2, 1))
    enc = Inr2ArrayEncoder(SIREN, num_latents=4, latent_dim=16, channels=8, num_blocks=1, num_heads=2)
    dec = Inr2ArrayDecoder(SIREN, latent_dim=16, num_heads=2, base=base)
    out = dec(enc(x))
    assert out.spec == SIREN and out.batch_size == 6
    assert out.allclose(WeightSpaceFeatures.stack([base] * 6))
    ae = Inr2ArrayAutoencoder(enc, dec)
    coords = grid_coords(6, 6)
    opt = torch.optim.Adam(ae.parameters(), 2e-3)
    losses = []
    for _ in range(40):
        loss = ae.reconstruction_loss(x, coords)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_encoder_input_scale_divides_each_tensor_and_is_checked():
    torch.manual_seed(0)
    scale = [0.5, 2.0, 0.1, 1.0, 3.0, 0.2]
    scaled = Inr2ArrayEncoder(SIREN, num_latents=4, latent_dim=16, channels=8, num_blocks=1, input_scale=scale)
    raw = Inr2ArrayEncoder(SIREN, num_latents=4, latent_dim=16, channels=8, num_blocks=1)
    raw.load_state_dict({k: v for k, v in scaled.state_dict().items() if k != "input_scale"}, strict=False)
    x = random_features(SIREN, 2, 1, dtype=torch.float32)
    pre = WeightSpaceFeatures(
        [w / scale[2 * i] for i, w in enumerate(x.weights)], [b / scale[2 * i + 1] for i, b in enumerate(x.biases)]
    )
    torch.testing.assert_close(scaled(x), raw(pre))
    assert_invariant(scaled, SIREN, in_channels=1, hidden_only=True)
    with pytest.raises(ValueError, match="input_scale"):
        Inr2ArrayEncoder(SIREN, input_scale=[1.0, 2.0])
