"""INR datasets (format ``nfopt.inrs/1``): a directory with ``inrs.json`` (format, the fit spec,
the SIREN architecture and ``w0``, the number of shards per split) and per split ``train/shard_00000.pt``, ... each
``weights_only``-loadable: ``{"format", "split", "shard", "weights": [(n, out, in)], "biases":
[(n, out)], "labels": (n,), "index": (n,) image index in the split, "psnr": (n,)}``. Shards are
written atomically when complete; a build resumes by fitting only the missing ones, and loading
an unfinished dataset fails, naming the fix."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from nfopt._shards import (
    missing_shards,
    read_manifest,
    read_shard,
    shard_path,
    shard_progress,
    write_manifest,
    write_shard,
)
from nfopt.inrs.fit import fit_sirens, labelled_images
from nfopt.inrs.spec import InrFitSpec
from nfopt.specs import child_seed
from nfopt.weightspace import NetworkSpec, WeightSpaceFeatures

__all__ = ["FORMAT", "InrDataset", "build_inrs", "load_inrs", "permute_hidden"]

FORMAT = "nfopt.inrs/1"
SPLITS = ("train", "test")


def _plan(spec: InrFitSpec) -> dict[str, tuple[torch.Tensor, torch.Tensor, list[Path]]]:
    plan = {}
    for split in SPLITS:
        x, y = labelled_images(spec.source, split)
        n = -(-len(x) // spec.shard_size)
        plan[split] = (x, y, [shard_path(spec.out_dir, k, split) for k in range(n)])
    return plan


def _fit_one(spec: InrFitSpec, x: torch.Tensor, y: torch.Tensor, split: str, k: int) -> dict:
    lo = k * spec.shard_size
    imgs, labels = x[lo : lo + spec.shard_size], y[lo : lo + spec.shard_size]
    feats, quality = fit_sirens(imgs, spec, seed=child_seed(spec.seed, k if split == "train" else 500_000 + k))
    return {
        "split": split,
        "shard": k,
        "weights": [w[:, 0] for w in feats.weights],
        "biases": [b[:, 0] for b in feats.biases],
        "labels": labels,
        "index": torch.arange(lo, lo + len(imgs)),
        "psnr": quality,
    }


def build_inrs(spec: InrFitSpec, use_ray: bool = True, address: str | None = None, progress: bool = True) -> Path:
    """Fit every missing shard of both splits (Ray tasks or in process); returns the directory."""
    plan = _plan(spec)
    image_shape = list(plan["train"][0].shape[1:])
    widths = [2] + [spec.hidden] * spec.hidden_layers + [image_shape[0]]
    arch = {"kind": "siren", "widths": widths, "w0": spec.w0, "image_shape": image_shape}
    shards = {s: len(p[2]) for s, p in plan.items()}
    write_manifest(spec.out_dir / "inrs.json", spec, format=FORMAT, architecture=arch, shards=shards)
    todo = [(split, k) for split in SPLITS for k in missing_shards(plan[split][2], FORMAT)]
    total = sum(len(p[2]) for p in plan.values())
    with shard_progress(f"INRs {spec.name}", total, total - len(todo), progress) as advance:
        calls = [(spec, plan[s][0], plan[s][1], s, k) for s, k in todo]  # each split's images shared
        if use_ray and todo:
            from nfopt.cluster import init_ray
            from nfopt.cluster.fanout import as_completed

            init_ray(address)
            results = as_completed(_fit_one, calls, spec.num_cpus)
        else:
            results = ((i, _fit_one(*call)) for i, call in enumerate(calls))
        for i, result in results:
            s, k = todo[i]
            write_shard(plan[s][2][k], FORMAT, result)
            advance()
    return spec.out_dir


def permute_hidden(feats: WeightSpaceFeatures, generator: torch.Generator | None = None) -> WeightSpaceFeatures:
    """An independent uniformly random hidden-neuron permutation *per example* of ``(B, C, ...)``
    MLP features (the INR's function is unchanged)."""
    ws, bs = list(feats.weights), list(feats.biases)
    bsz = feats.batch_size
    for i in range(len(ws) - 1):  # neuron layer i+1 is hidden
        n = ws[i].shape[2]
        perm = torch.argsort(torch.rand(bsz, n, generator=generator), dim=1)  # (B, n)
        rows = perm[:, None, :, None].expand(-1, ws[i].shape[1], -1, ws[i].shape[3])
        ws[i] = ws[i].gather(2, rows)
        bs[i] = bs[i].gather(2, perm[:, None, :].expand(-1, bs[i].shape[1], -1))
        cols = perm[:, None, None, :].expand(-1, ws[i + 1].shape[1], ws[i + 1].shape[2], -1)
        ws[i + 1] = ws[i + 1].gather(3, cols)
    return WeightSpaceFeatures(ws, bs)


@dataclass
class SplitData:
    weights: list[torch.Tensor]  # (N, out, in) per layer
    biases: list[torch.Tensor]
    labels: torch.Tensor
    index: torch.Tensor
    psnr: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def stds(self) -> list[float]:
        """Each tensor's std over the split, ``[w_1, b_1, w_2, ...]``: the models' input scales."""
        return [float(t.std()) for pair in zip(self.weights, self.biases) for t in pair]

    def features(self, idx: torch.Tensor, augment: bool = False, generator=None) -> WeightSpaceFeatures:
        """INRs ``idx`` as ``(B, 1, ...)`` features; ``augment``: random hidden permutations."""
        f = WeightSpaceFeatures([w[idx].unsqueeze(1) for w in self.weights], [b[idx].unsqueeze(1) for b in self.biases])
        return permute_hidden(f, generator) if augment else f


@dataclass
class InrDataset:
    spec: InrFitSpec
    architecture: dict
    train: SplitData
    test: SplitData

    @property
    def network_spec(self) -> NetworkSpec:
        return NetworkSpec.mlp(self.architecture["widths"])

    @property
    def w0(self) -> float:
        return float(self.architecture["w0"])

    def images(self, split: str, idx: torch.Tensor) -> torch.Tensor:
        """The original images ``(B, C, S, S)`` the INRs ``idx`` of ``split`` were fitted to."""
        x, _ = labelled_images(self.spec.source, split)
        return x[getattr(self, split).index[idx]]


def load_inrs(path: str | Path, limit: dict[str, int | None] | None = None) -> InrDataset:
    """Load an INR dataset written by :func:`build_inrs` (``limit``: first N per split)."""
    path = Path(path)
    manifest = read_manifest(
        path / "inrs.json", FORMAT, "an INR dataset", "fit one with `nfopt inr fit jobs/experiments/inr_*.yaml`"
    )
    spec = InrFitSpec.model_validate(manifest["spec"])
    counts = manifest.get("shards") or {s: len(p[2]) for s, p in _plan(spec).items()}  # older manifests
    splits = {}
    for split in SPLITS:
        files = [shard_path(path, k, split) for k in range(counts[split])]
        absent = [f.name for f in files if not f.exists()]
        if absent:
            raise FileNotFoundError(
                f"{path / split}: {len(absent)} of {len(files)} shards not fitted yet (first: {absent[0]}); "
                f"run `nfopt inr fit` on the spec of {spec.name!r} to finish it (it resumes)"
            )
        shards = [read_shard(f, FORMAT) for f in files]
        cat = {k: torch.cat([s[k] for s in shards]) for k in ("labels", "index", "psnr")}
        ws = [torch.cat([s["weights"][i] for s in shards]) for i in range(len(shards[0]["weights"]))]
        bs = [torch.cat([s["biases"][i] for s in shards]) for i in range(len(shards[0]["biases"]))]
        n = (limit or {}).get(split)
        if n is not None:
            ws, bs, cat = [w[:n] for w in ws], [b[:n] for b in bs], {k: v[:n] for k, v in cat.items()}
        splits[split] = SplitData(ws, bs, **cat)
    return InrDataset(spec, manifest["architecture"], **splits)
