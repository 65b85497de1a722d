"""The zoo file format (version ``nfopt.zoo/1``), resumable builds and loading.

A zoo is a directory::

    zoo.json                 format, the ZooSpec, the architecture, parameter names, shard count
    shards/shard_00000.pt    one per shard, written atomically once the shard is complete

Each shard file is ``torch.load(..., weights_only=True)``-loadable: ``{"format", "shard",
"runs": [hyperparameters per run], "epochs": [saved epochs], "params": {name: (R, E, ...)},
"train_acc"/"test_acc"/"test_loss": (R, E)}`` where ``name`` is a parameter name of
:func:`nfopt.zoo.train.build_cnn` (``"0.weight"``, ...). Runs are numbered globally and a shard's
runs are a deterministic function of (seed, shard), so a build interrupted at any point
resumes by training only the shards whose file is missing: nothing is duplicated or lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from nfopt._shards import missing_shards as _missing
from nfopt._shards import read_manifest, read_shard, shard_path, shard_progress, write_manifest
from nfopt._shards import write_shard as _write
from nfopt.weightspace import NetworkSpec, WeightSpaceFeatures
from nfopt.zoo.spec import ZooSpec
from nfopt.zoo.train import build_cnn

__all__ = ["FORMAT", "Zoo", "build_zoo", "load_zoo", "missing_shards", "write_shard"]

FORMAT = "nfopt.zoo/1"


def _architecture(spec: ZooSpec, in_channels: int, num_classes: int) -> dict:
    return {
        "kind": "cnn",
        "in_channels": in_channels,
        "channels": spec.channels,
        "conv_layers": spec.conv_layers,
        "num_classes": num_classes,
        "kernel": 3,
        "stride": 2,
    }


def _write_manifest(spec: ZooSpec, in_channels: int, num_classes: int) -> None:
    arch = _architecture(spec, in_channels, num_classes)
    write_manifest(spec.out_dir / "zoo.json", spec, format=FORMAT, architecture=arch)


def _paths(spec: ZooSpec) -> list[Path]:
    return [shard_path(spec.out_dir, k) for k in range(spec.num_shards)]


def write_shard(spec: ZooSpec, shard: int, result: dict) -> Path:
    return _write(_paths(spec)[shard], FORMAT, {"shard": shard, **result, "epochs": list(result["epochs"])})


def missing_shards(spec: ZooSpec) -> list[int]:
    """Shards without a complete file (a torn or unreadable one counts as missing)."""
    return _missing(_paths(spec), FORMAT)


def build_zoo(spec: ZooSpec, use_ray: bool = True, address: str | None = None, progress: bool = True) -> Path:
    """Train every missing shard (as Ray tasks, or in process) and write it; returns the zoo dir."""
    from nfopt.zoo.train import load_zoo_data, train_shard

    data = load_zoo_data(spec)
    _write_manifest(spec, data.input_shape[0], data.num_classes)
    todo = missing_shards(spec)
    with shard_progress(f"zoo {spec.name}", spec.num_shards, spec.num_shards - len(todo), progress) as advance:
        if use_ray and todo:
            from nfopt.cluster import init_ray
            from nfopt.cluster.fanout import as_completed

            init_ray(address)
            results = as_completed(train_shard, [(spec, k) for k in todo], spec.num_cpus)  # tasks load the data
        else:
            results = ((i, train_shard(spec, k, data)) for i, k in enumerate(todo))
        for i, result in results:
            write_shard(spec, todo[i], result)
            advance()
    return spec.out_dir


@dataclass
class Zoo:
    """A loaded zoo: ``N = runs x saved epochs`` checkpoints, run-major.

    ``params``: ``{name: (N, ...)}``; ``run``, ``epoch``: ``(N,)`` long; ``train_acc``,
    ``test_acc``, ``test_loss``: ``(N,)``; ``hparams[run]``: that run's hyperparameters."""

    spec: ZooSpec
    architecture: dict
    params: dict[str, torch.Tensor]
    run: torch.Tensor
    epoch: torch.Tensor
    train_acc: torch.Tensor
    test_acc: torch.Tensor
    test_loss: torch.Tensor
    hparams: dict[int, dict]

    def __len__(self) -> int:
        return len(self.run)

    def module(self, i: int) -> torch.nn.Module:
        """Checkpoint ``i`` as an ``nn.Sequential`` of :func:`~nfopt.zoo.train.build_cnn`."""
        a = self.architecture
        net = build_cnn(
            a["in_channels"],
            a["channels"],
            a["conv_layers"],
            a["num_classes"],
            self.hparams[int(self.run[i])]["activation"],
        )
        net.load_state_dict({k: v[i] for k, v in self.params.items()})
        return net

    @property
    def network_spec(self) -> NetworkSpec:
        return NetworkSpec.from_module(self.module(0))

    def features(self, index: torch.Tensor) -> WeightSpaceFeatures:
        """Checkpoints ``index`` as one-channel weight-space features ``(len(index), 1, ...)``."""
        names = list(self.params)
        ws = [self.params[n][index].unsqueeze(1) for n in names[0::2]]
        bs = [self.params[n][index].unsqueeze(1) for n in names[1::2]]
        return WeightSpaceFeatures(ws, bs)

    def split(self, test_fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Checkpoint indices ``(train, test)`` split by *training run*: every checkpoint of a
        run lands on the same side, so no test run was seen at another epoch."""
        runs = torch.unique(self.run)
        perm = runs[torch.randperm(len(runs), generator=torch.Generator().manual_seed(seed))]
        n_test = max(1, round(test_fraction * len(runs)))
        test_runs = perm[:n_test]
        is_test = torch.isin(self.run, test_runs)
        return (~is_test).nonzero().squeeze(1), is_test.nonzero().squeeze(1)


def load_zoo(path: str | Path) -> Zoo:
    """Load every shard of the zoo at ``path``; a missing manifest or an unfinished build raises an
    error naming the fix (a zoo is never loaded in part)."""
    path = Path(path)
    manifest = read_manifest(
        path / "zoo.json", FORMAT, "a zoo directory", "build one with `nfopt zoo jobs/experiments/zoo_small.yaml`"
    )
    spec = ZooSpec.model_validate(manifest["spec"])
    shards = [shard_path(path, k) for k in range(spec.num_shards)]
    absent = [f.name for f in shards if not f.exists()]
    if absent:
        raise FileNotFoundError(
            f"{path}/shards: {len(absent)} of {len(shards)} shards not built yet (first: {absent[0]}); "
            f"run `nfopt zoo` on the spec of {spec.name!r} to finish it (it resumes)"
        )
    params: dict[str, list] = {}
    cols: dict[str, list] = {k: [] for k in ("run", "epoch", "train_acc", "test_acc", "test_loss")}
    hparams = {}
    for f in shards:
        s = read_shard(f, FORMAT)
        r, e = s["test_acc"].shape
        for k, v in s["params"].items():
            params.setdefault(k, []).append(v.flatten(0, 1))  # (R*E, ...) run-major
        cols["run"].append(torch.tensor([h["run"] for h in s["runs"]]).repeat_interleave(e))
        cols["epoch"].append(torch.tensor(s["epochs"]).repeat(r))
        for k in ("train_acc", "test_acc", "test_loss"):
            cols[k].append(s[k].flatten())
        hparams.update({h["run"]: h for h in s["runs"]})
    cat = {k: torch.cat(v) for k, v in cols.items()}
    return Zoo(spec, manifest["architecture"], {k: torch.cat(v) for k, v in params.items()}, hparams=hparams, **cat)
