import pytest
import torch
from hypothesis import given, settings

from nfopt import NetworkSpec
from nfopt.nn import ChannelBatchNorm, DWSClassifier, DWSNet, HNPLinear
from nfopt.nn.symmetry import symmetry_of
from nfopt.testing import EquivarianceError, assert_equivariant, assert_invariant, random_features
from tests.strategies import channels, specs


@settings(max_examples=15, deadline=None)
@given(specs(depth=(2, 4), width=(1, 6)), channels, channels)
def test_dwsnet_equivariant_to_hidden_permutations(spec, c_in, c_out):
    for batch_norm, skip in ((True, True), (False, False)):
        net = DWSNet(spec, c_in, 4, c_out, layers=3, batch_norm=batch_norm, input_skip=skip)
        assert symmetry_of(net) == "hnp"
        assert_equivariant(net, spec, c_in)


def test_dwsnet_tells_input_and_output_neurons_apart():
    spec = NetworkSpec.mlp([3, 4, 2])
    torch.manual_seed(0)
    with pytest.raises(EquivarianceError):
        assert_equivariant(DWSNet(spec, 1, 4, 1), spec, 1, hidden_only=False)


def test_batch_norm_in_training_mode_is_equivariant_and_normalises():
    spec = NetworkSpec.mlp([3, 5, 4, 2])
    norm = ChannelBatchNorm(spec, 3).train()
    g = torch.Generator().manual_seed(0)
    x = random_features(spec, 4, 3, g).map(lambda t: 5 * t.float() + 2)
    y = norm(x)
    for t in y.tensors():
        flat = t.transpose(0, 1).reshape(3, -1)
        torch.testing.assert_close(flat.mean(1), torch.zeros(3), atol=1e-5, rtol=0)
        torch.testing.assert_close(flat.std(1, unbiased=False), torch.ones(3), atol=1e-3, rtol=0)
    perm = spec.sample_permutation(g, hidden_only=False)
    torch.testing.assert_close(norm(x.permute(perm)).flatten(), y.permute(perm).flatten())


def test_dwsnet_layers_are_hnp_layers_and_depth_is_checked():
    spec = NetworkSpec.mlp([2, 6, 5, 1])
    net = DWSNet(spec, 1, 8, 1, layers=4)
    assert sum(isinstance(m, HNPLinear) for m in net.modules()) == 4
    with pytest.raises(ValueError, match="at least 2"):
        DWSNet(spec, 1, 8, 1, layers=1)


def test_dws_classifier_is_invariant_and_learns():
    spec = NetworkSpec.mlp([2, 6, 5, 1])
    torch.manual_seed(0)
    model = DWSClassifier(spec, hidden=8, layers=3, classes=3).eval()
    assert_invariant(model, spec, 1, hidden_only=True)
    # it can fit labels that depend on the weights (here: the sign of the mean output bias)
    x = random_features(spec, 64, 1, torch.Generator().manual_seed(1)).map(torch.Tensor.float)
    labels = (x.biases[-1].mean((1, 2)) > 0).long()
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert (model(x).argmax(1) == labels).float().mean() > 0.9
