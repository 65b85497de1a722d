"""Classification invariance, the editing loss, and the `nfopt inr` jobs end to end."""

import json

import pytest
import torch

from nfopt.cli import main
from nfopt.recipes.inr_classify import FlatMLP, NFNClassifier
from nfopt.recipes.inr_edit import Editor, edit_images, edit_loss
from nfopt.testing import EquivarianceError, assert_equivariant, assert_invariant
from nfopt.weightspace import NetworkSpec
from tests.helpers import shipped_job

SPEC = NetworkSpec.mlp([2, 6, 5, 1])
SCALE = [1.0] * 6


def test_nfn_classifier_predictions_are_invariant_to_hidden_permutations():
    torch.manual_seed(0)
    for fourier in (0, 8):
        model = NFNClassifier(SPEC, channels=4, layers=2, classes=3, scale=SCALE, fourier_features=fourier).eval()
        assert_invariant(model, SPEC, 1, hidden_only=True)


def test_the_flat_mlp_baseline_is_not_invariant():
    torch.manual_seed(0)
    model = FlatMLP(SPEC, classes=3, scale=SCALE).eval()
    with pytest.raises(EquivarianceError, match=r"FlatMLP is not invariant .* max relative error (\S+)") as err:
        assert_invariant(model, SPEC, 1, hidden_only=True)
    worst = float(err.value.args[0].split("max relative error ")[1].split()[0])
    assert worst > 1e-3  # not a rounding-level miss: the outputs really change


def test_edits_and_editors():
    img = torch.zeros(1, 1, 5, 5)
    img[0, 0, 2, 2] = 1.0
    dilated = edit_images(img, "dilate")
    assert dilated.sum() == 9 and dilated[0, 0, 1:4, 1:4].eq(1).all()
    assert edit_images(torch.tensor([0.5, 0.8]), "linear_contrast", 2.0).tolist() == [0.5, 1.0]
    low = 0.45 + 0.1 * torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert edit_images(low, "contrast").std() > low.std()  # CLAHE, the papers' colour edit
    for kind in ("nfn_np", "nfn_hnp", "nft", "dwsnets"):
        for fourier in (0, 8):
            editor = Editor(kind, SPEC, channels=4, layers=2, scale=SCALE, fourier_features=fourier)
            with torch.no_grad():
                editor.gain.fill_(1.0)  # a trained editor (the untrained one is the identity)
            assert_equivariant(editor, SPEC, 1, hidden_only=True)
    from nfopt.testing import random_features

    x = random_features(SPEC, 2, 1, torch.Generator().manual_seed(0)).map(torch.Tensor.float)
    for kind in ("nfn_np", "dwsnets", "mlp"):
        out = Editor(kind, SPEC, channels=4, layers=2, scale=SCALE)(x)
        torch.testing.assert_close(out.weights[0], x.weights[0])  # the untrained editor is the identity


def test_inr_jobs_end_to_end(tmp_path, capsys):
    inrs = tmp_path / "inrs"
    assert main(["inr", "fit", shipped_job(tmp_path, "inr_tiny", out=str(inrs)), "--no-ray"]) == 0
    assert (
        main(
            [
                "inr",
                "classify",
                shipped_job(
                    tmp_path, "inr_classify_tiny", inrs=str(inrs), out=str(tmp_path / "c"), ae_schedule="cosine"
                ),
            ]
        )
        == 0
    )
    res = json.loads((tmp_path / "c" / "results.json").read_text())["results"]
    assert set(res) == {"inr2array", "nfn_np", "dwsnets", "mlp"}
    assert all(0 <= r["test_accuracy"] <= 1 for r in res.values())
    encoder = torch.load(tmp_path / "c" / "inr2array_encoder.pt", weights_only=True)  # kept for reuse
    assert encoder and all(isinstance(t, torch.Tensor) for t in encoder.values())
    assert main(["inr", "edit", shipped_job(tmp_path, "inr_edit_tiny", inrs=str(inrs), out=str(tmp_path / "e"))]) == 0
    res = json.loads((tmp_path / "e" / "results.json").read_text())["results"]
    assert set(res) == {"nfn_np", "nfn_hnp", "nft", "dwsnets", "mlp"} and all(r["test_mse"] >= 0 for r in res.values())
    assert (tmp_path / "e" / "edits.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["inr", "edit", shipped_job(tmp_path, "inr_tiny", out=str(inrs))]) == 2  # wrong experiment kind


def test_the_editing_loss():
    from nfopt.inr import Siren, grid_coords, render
    from nfopt.inrs.store import permute_hidden
    from nfopt.weightspace import WeightSpaceFeatures

    torch.manual_seed(0)
    x = WeightSpaceFeatures.from_modules([Siren(2, 8, 2, 1, 30.0) for _ in range(4)])
    spec, shape = x.spec, [1, 6, 6]
    inr = render(x, grid_coords(6, 6), 30.0).transpose(1, 2).reshape(4, 1, 6, 6)
    target = edit_images(inr.clamp(0, 1), "dilate")
    editor = Editor("nfn_np", spec, channels=8, layers=2, scale=[1.0] * 6)
    # the untrained editor is the identity: its loss is the unedited INR's error against the edit
    torch.testing.assert_close(edit_loss(editor, x, target, shape, 30.0), (inr - target).square().flatten(1).mean(1))
    with torch.no_grad():
        editor.gain.fill_(0.5)
    # an equivariant editor's loss does not depend on how the INRs' hidden neurons are ordered
    perm = permute_hidden(x, torch.Generator().manual_seed(1))
    torch.testing.assert_close(edit_loss(editor, perm, target, shape, 30.0), edit_loss(editor, x, target, shape, 30.0))
    # and it is what training lowers
    opt = torch.optim.Adam(editor.parameters(), lr=3e-3)
    first = edit_loss(editor, x, target, shape, 30.0).mean().item()
    for _ in range(40):
        loss = edit_loss(editor, x, target, shape, 30.0).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
