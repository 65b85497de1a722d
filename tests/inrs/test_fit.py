"""SIREN fitting, the INR dataset format and resume, per-example hidden permutations."""

import json

import pytest
import torch

from nfopt._files import RunExistsError
from nfopt.inr import grid_coords, render
from nfopt.inrs.fit import fit_sirens, labelled_images, psnr
from nfopt.inrs.spec import InrFitSpec
from nfopt.inrs.store import FORMAT, build_inrs, load_inrs, permute_hidden
from nfopt.weightspace import WeightSpaceFeatures


def _spec(tmp_path, **over):
    raw = {
        "name": "t",
        "source": {"name": "digits", "size": 8, "train_limit": 12, "test_limit": 6},
        "hidden": 32,
        "hidden_layers": 2,
        "steps": 150,
        "shard_size": 5,
        "out": str(tmp_path / "{name}"),
    }
    return InrFitSpec.model_validate({**raw, **over})


def test_siren_fitting_reconstructs_images(tmp_path):
    spec = _spec(tmp_path)
    images, _ = labelled_images(spec.source, "train")
    images = images[:3]
    feats, quality = fit_sirens(images, spec, seed=0)
    assert feats.batch_size == 3 and quality.shape == (3,)
    rendered = render(feats, grid_coords(8, 8), spec.w0).transpose(1, 2).reshape(3, 1, 8, 8)
    torch.testing.assert_close(psnr(rendered.clamp(0, 1), images), quality)
    assert quality.min() > 25  # digits fitted closely within 150 steps
    _, q_short = fit_sirens(images, _spec(tmp_path, steps=5), seed=0)
    assert quality.mean() > q_short.mean() + 5


def test_fitting_in_chunks_equals_fitting_all_at_once(tmp_path, monkeypatch):
    import nfopt.inrs.fit as fit

    spec = _spec(tmp_path, steps=10)
    images, _ = labelled_images(spec.source, "train")
    monkeypatch.setattr(fit, "CHUNK", 4)
    chunked, q_chunked = fit_sirens(images[:10], spec, seed=1)
    monkeypatch.setattr(fit, "CHUNK", 100)
    whole, q_whole = fit_sirens(images[:10], spec, seed=1)
    assert chunked.allclose(whole, atol=1e-6) and torch.allclose(q_chunked, q_whole)


def test_dataset_format_resume_and_loading(tmp_path):
    spec = _spec(tmp_path)
    out = build_inrs(spec, use_ray=False, progress=False)
    manifest = json.loads((out / "inrs.json").read_text())
    assert manifest["format"] == FORMAT and manifest["architecture"]["widths"] == [2, 32, 32, 1]
    shard = torch.load(out / "train" / "shard_00000.pt", weights_only=True)
    assert shard["weights"][0].shape == (5, 32, 2) and shard["labels"].shape == (5,)
    first = shard["weights"][0].clone()
    assert manifest["shards"] == {"train": 3, "test": 2}
    (out / "train" / "shard_00001.pt").unlink()  # lost mid-build
    with pytest.raises(
        FileNotFoundError, match=r"1 of 3 shards not fitted yet \(first: shard_00001.pt\).*nfopt inr fit"
    ):
        load_inrs(out)  # an unfinished dataset is never loaded in part
    (out / "test" / "shard_00000.pt").write_bytes(b"torn")
    build_inrs(spec, use_ray=False, progress=False)
    ds = load_inrs(out)
    assert len(ds.train) == 12 and len(ds.test) == 6
    assert ds.train.index.tolist() == list(range(12))  # no duplicate, none lost
    assert torch.equal(ds.train.weights[0][:5], first)  # kept shards are not refitted
    assert (ds.train.psnr > 20).all()
    images = ds.images("train", torch.tensor([0, 7]))
    rendered = render(ds.train.features(torch.tensor([0, 7])), grid_coords(8, 8), ds.w0)
    assert (rendered.transpose(1, 2).reshape(2, 1, 8, 8) - images).abs().max() < 0.2


def test_hidden_permutations_change_weights_not_the_rendered_image(tmp_path):
    torch.manual_seed(0)
    feats = WeightSpaceFeatures(
        [torch.randn(4, 1, 6, 2), torch.randn(4, 1, 5, 6), torch.randn(4, 1, 1, 5)],
        [torch.randn(4, 1, 6), torch.randn(4, 1, 5), torch.randn(4, 1, 1)],
    )
    permuted = permute_hidden(feats, torch.Generator().manual_seed(1))
    assert not torch.equal(permuted.weights[1], feats.weights[1])
    coords = grid_coords(5, 5)
    torch.testing.assert_close(render(permuted, coords, 1.0), render(feats, coords, 1.0))


def test_missing_dataset_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="nfopt inr fit"):
        load_inrs(tmp_path)


def test_colour_sources_fit_three_channel_sirens_and_take_the_contrast_edit(tmp_path):
    from nfopt.inrs.spec import InrEditSpec
    from nfopt.recipes.inr_edit import run_edit
    from tests.data.test_cifar import write_batches

    write_batches(tmp_path / "cifar", n=3)
    x, y = labelled_images(
        InrFitSpec.model_validate(
            {"name": "c", "source": {"name": "cifar10", "root": str(tmp_path / "cifar"), "size": 8}}
        ).source,
        "test",
    )
    assert x.shape == (3, 3, 8, 8) and y.shape == (3,) and 0 <= float(x.min()) and float(x.max()) <= 1

    patches = {"name": "photo_patches", "size": 8, "crop": 32, "train_limit": 6, "test_limit": 4}
    spec = _spec(tmp_path, source=patches, hidden=16, steps=20, shard_size=6)
    out = build_inrs(spec, use_ray=False, progress=False)
    arch = json.loads((out / "inrs.json").read_text())["architecture"]
    assert arch["widths"] == [2, 16, 16, 3] and arch["image_shape"] == [3, 8, 8]
    edit = InrEditSpec.model_validate(
        {
            "name": "e",
            "inrs": str(out),
            "edit": "contrast",
            "models": ["nfn_np", "mlp"],
            "epochs": 1,
            "channels": 4,
            "layers": 1,
            "fourier_features": 4,
            "out": str(tmp_path / "e"),
            "tracking": False,
        }
    )
    res = run_edit(edit, progress=False)
    assert res["edit"] == "contrast" and res["unedited_mse"] > 0
    assert all(r["test_mse"] >= 0 and r["paper_dilation"] is None for r in res["results"].values())


def test_a_build_resumes_across_spec_fields_added_at_their_defaults(tmp_path):
    from nfopt._shards import same_spec

    spec = _spec(tmp_path, steps=5)
    out = build_inrs(spec, use_ray=False, progress=False)
    manifest = json.loads((out / "inrs.json").read_text())
    del manifest["spec"]["source"]["crop"]  # as written before InrSourceSpec.crop existed
    (out / "inrs.json").write_text(json.dumps(manifest))
    (out / "train" / "shard_00002.pt").unlink()
    build_inrs(spec, use_ray=False, progress=False)  # resumes
    assert len(load_inrs(out).train) == 12
    old = manifest["spec"]
    assert not same_spec(old, _spec(tmp_path, steps=5, source={**spec.source.model_dump(), "crop": 32}))
    assert not same_spec(old, _spec(tmp_path, steps=6))
    assert not same_spec({**old, "retired_field": 1}, spec)
    with pytest.raises(RunExistsError, match="different spec"):
        build_inrs(_spec(tmp_path, steps=6), use_ray=False, progress=False)
