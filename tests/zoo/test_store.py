"""Zoo generation: the file format, resume without duplicate or lost runs, the split."""

import json

import pytest
import torch

from nfopt._files import RunExistsError
from nfopt.zoo import store
from nfopt.zoo.spec import ZooSpec
from nfopt.zoo.train import sample_shard


def tiny(tmp_path, **over) -> ZooSpec:
    raw = {
        "name": "t",
        "data": {"name": "digits", "size": 8},
        "runs": 6,
        "shard_size": 4,
        "epochs": 2,
        "steps_per_epoch": 5,
        "save_epochs": [0, 2],
        "batch_size": 16,
        "eval_examples": 100,
        "out": str(tmp_path / "{name}"),
    }
    return ZooSpec.model_validate({**raw, **over})


def test_zoo_format_is_weights_only_loadable_and_complete(tmp_path):
    spec = tiny(tmp_path)
    out = store.build_zoo(spec, use_ray=False, progress=False)
    manifest = json.loads((out / "zoo.json").read_text())
    assert manifest["format"] == store.FORMAT and manifest["architecture"]["channels"] == 16
    shard = torch.load(out / "shards" / "shard_00000.pt", weights_only=True)
    assert shard["params"]["0.weight"].shape == (4, 2, 16, 1, 3, 3)  # (runs, saved epochs, out, in, k, k)
    assert shard["test_acc"].shape == (4, 2) and shard["epochs"] == [0, 2]
    zoo = store.load_zoo(out)
    assert len(zoo) == 6 * 2 and sorted(zoo.hparams) == list(range(6))  # last shard holds 2 runs
    assert torch.equal(zoo.epoch[:2], torch.tensor([0, 2]))
    net = zoo.module(3)
    x = torch.randn(5, 1, 8, 8)
    assert net(x).shape == (5, 10)
    assert str(zoo.network_spec) == "NetworkSpec([16x1x3x3, 16x16x3x3, 16x16x3x3, 10x16])"
    feats = zoo.features(torch.tensor([0, 5]))
    assert feats.batch_size == 2 and torch.equal(feats.weights[0][1, 0], zoo.params["0.weight"][5])


def test_hyperparameters_are_sampled_within_the_space_and_reproducibly(tmp_path):
    spec = tiny(tmp_path, runs=40, shard_size=8)
    runs = [r for k in range(spec.num_shards) for r in sample_shard(spec, k)]
    assert [r["run"] for r in runs] == list(range(40))
    assert sample_shard(spec, 2) == sample_shard(spec, 2)
    s = spec.space
    for r in runs:
        lr_range = s.adam_lr if r["optimizer"] == "adam" else s.sgd_lr
        assert lr_range.low <= r["lr"] <= lr_range.high
        assert s.dropout.low <= r["dropout"] <= s.dropout.high
        assert s.train_fraction.low <= r["train_fraction"] <= s.train_fraction.high
    assert len({r["activation"] for r in runs}) > 1 and len({r["optimizer"] for r in runs}) > 1


def test_an_interrupted_build_resumes_without_duplicate_or_lost_runs(tmp_path, monkeypatch):
    spec = tiny(tmp_path, runs=12)
    real = store.write_shard
    written = []

    def crash_after_two(spec_, shard, result):
        if len(written) == 2:
            raise KeyboardInterrupt  # killed mid-build
        written.append(shard)
        return real(spec_, shard, result)

    monkeypatch.setattr(store, "write_shard", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        store.build_zoo(spec, use_ray=False, progress=False)
    assert store.missing_shards(spec) == [2]
    (spec.out_dir / "shards" / "shard_00001.pt").write_bytes(b"torn")  # a torn file is retrained too
    assert store.missing_shards(spec) == [1, 2]
    before = torch.load(spec.out_dir / "shards" / "shard_00000.pt", weights_only=True)
    monkeypatch.setattr(store, "write_shard", real)
    store.build_zoo(spec, use_ray=False, progress=False)
    zoo = store.load_zoo(spec.out_dir)
    assert sorted(torch.unique(zoo.run).tolist()) == list(range(12)) and len(zoo) == 24
    after = torch.load(spec.out_dir / "shards" / "shard_00000.pt", weights_only=True)
    assert torch.equal(before["params"]["0.weight"], after["params"]["0.weight"])  # not retrained


def test_a_different_spec_cannot_extend_an_existing_zoo(tmp_path):
    store.build_zoo(tiny(tmp_path), use_ray=False, progress=False)
    with pytest.raises(RunExistsError, match="different spec"):
        store.build_zoo(tiny(tmp_path, epochs=3, save_epochs=[3]), use_ray=False, progress=False)


def test_split_is_by_training_run(tmp_path):
    spec = tiny(tmp_path, runs=10, shard_size=5)
    zoo = store.load_zoo(store.build_zoo(spec, use_ray=False, progress=False))
    train, test = zoo.split(0.3, seed=1)
    assert len(train) + len(test) == len(zoo) and not set(train.tolist()) & set(test.tolist())
    train_runs, test_runs = set(zoo.run[train].tolist()), set(zoo.run[test].tolist())
    assert not train_runs & test_runs and len(test_runs) == 3


def test_missing_zoo_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="nfopt zoo"):
        store.load_zoo(tmp_path / "nowhere")


def test_unfinished_zoo_is_not_loaded_in_part(tmp_path):
    spec = tiny(tmp_path, runs=10, shard_size=5)
    out = store.build_zoo(spec, use_ray=False, progress=False)
    (out / "shards" / "shard_00001.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 2 shards not built yet \(first: shard_00001.pt\).*nfopt zoo"):
        store.load_zoo(out)


@pytest.mark.parametrize(
    ("over", "field"),
    [({"save_epochs": [9]}, "save_epochs"), ({"space": {"dropout": {"low": 0.2, "high": 1.5}}}, "dropout")],
)
def test_bad_zoo_specs_name_the_field(tmp_path, over, field):
    with pytest.raises(ValueError, match=field):
        tiny(tmp_path, **over)
