"""The generalization-prediction experiment: train each predictor on a zoo's training runs,
report Kendall's τ (and RMSE) on held-out runs, a scatter plot and MLflow logs."""

from __future__ import annotations

import json
import math
import time

import torch
import torch.nn.functional as F

from nfopt.recipes.experiments import claim_experiment, finish_experiment
from nfopt.zoo.predict import build_predictor, kendall_tau
from nfopt.zoo.spec import GeneralizationSpec
from nfopt.zoo.store import Zoo, load_zoo

__all__ = ["PAPER_TAU", "predict_accuracy", "run_generalization", "train_predictor"]

#: Kendall's τ on CIFAR-10-GS reported by the NFN / NFT papers.
PAPER_TAU = {"nfn_hnp": 0.934, "nfn_np": 0.922, "nft": 0.926, "statnn": 0.915}


@torch.no_grad()
def predict_accuracy(model, zoo: Zoo, index: torch.Tensor, batch: int = 256) -> torch.Tensor:
    model.eval()
    return torch.cat([torch.sigmoid(model(zoo.features(index[i : i + batch]))) for i in range(0, len(index), batch)])


def train_predictor(kind: str, zoo: Zoo, train_idx: torch.Tensor, spec: GeneralizationSpec, on_epoch=None):
    """Fit one predictor (binary cross-entropy against test accuracy in [0, 1])."""
    gen = torch.Generator().manual_seed(spec.seed)
    torch.manual_seed(spec.seed)
    sample = train_idx[torch.randperm(len(train_idx), generator=gen)[:512]]
    model = build_predictor(kind, zoo.network_spec, zoo.features(sample), spec.channels, spec.layers)
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, spec.epochs)
    target = zoo.test_acc.float()
    for epoch in range(spec.epochs):
        model.train()
        order = train_idx[torch.randperm(len(train_idx), generator=gen)]
        total = 0.0
        for i in range(0, len(order), spec.batch_size):
            b = order[i : i + spec.batch_size]
            loss = F.binary_cross_entropy_with_logits(model(zoo.features(b)), target[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        sched.step()
        if on_epoch is not None:
            on_epoch(epoch + 1, total / len(order))
    return model


def _scatter(results: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(results)
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.4 * len(kinds), 3.4), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        r = results[kind]
        ax.scatter(r["true"], r["pred"], s=4, alpha=0.5)
        lo, hi = min(r["true"] + r["pred"]), max(r["true"] + r["pred"])
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_title(f"{kind}: τ = {r['tau']:.3f}", fontsize=9)
        ax.set_xlabel("true test accuracy")
        ax.set_ylabel("predicted")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_generalization(spec: GeneralizationSpec, progress: bool = True, overwrite: bool = False) -> dict:
    """Train and score every predictor of ``spec``; writes ``results.json``, ``table.md`` and
    ``scatter.png`` to ``spec.out_dir`` and returns ``{kind: {"tau", "rmse", "seconds", ...}}``."""
    claim_experiment(spec, overwrite)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    zoo = load_zoo(spec.zoo)
    train_idx, test_idx = zoo.split(spec.test_fraction, spec.seed)
    keep = zoo.epoch >= spec.min_epoch
    train_idx, test_idx = train_idx[keep[train_idx]], test_idx[keep[test_idx]]
    results = {}
    with Progress(
        TextColumn("[bold]{task.description}[/bold]"),
        BarColumn(),
        TextColumn("epoch {task.completed}/{task.total} {task.fields[loss]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not progress,
    ) as bar:
        for kind in spec.predictors:
            task = bar.add_task(kind, total=spec.epochs, loss="")
            start = time.perf_counter()
            model = train_predictor(
                kind, zoo, train_idx, spec, lambda e, loss, t=task: bar.update(t, completed=e, loss=f"bce {loss:.4f}")
            )
            pred = predict_accuracy(model, zoo, test_idx)
            true = zoo.test_acc[test_idx].float()
            results[kind] = {
                "tau": kendall_tau(pred, true),
                "rmse": math.sqrt(float(((pred - true) ** 2).mean())),
                "seconds": time.perf_counter() - start,
                "parameters": sum(p.numel() for p in model.parameters()),
                "paper_tau": PAPER_TAU[kind],
                "pred": pred.tolist(),
                "true": true.tolist(),
            }
            spec.out_dir.mkdir(parents=True, exist_ok=True)  # finished predictors survive a later failure
            (spec.out_dir / "partial.json").write_text(json.dumps({k: v["tau"] for k, v in results.items()}))
    meta = {
        "zoo": str(spec.zoo),
        "train_checkpoints": len(train_idx),
        "test_checkpoints": len(test_idx),
        "train_runs": int(torch.unique(zoo.run[train_idx]).numel()),
        "test_runs": int(torch.unique(zoo.run[test_idx]).numel()),
    }
    lines = [
        f"Kendall's τ on {meta['test_checkpoints']} checkpoints of {meta['test_runs']} held-out runs "
        f"(trained on {meta['train_checkpoints']} checkpoints of {meta['train_runs']} runs)",
        "",
        "| predictor | τ (ours) | RMSE | τ paper (CIFAR-10-GS) | parameters | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for kind, r in results.items():
        cells = [kind, f"{r['tau']:.3f}", f"{r['rmse']:.4f}", f"{r['paper_tau']:.3f}", str(r["parameters"])]
        lines.append("| " + " | ".join([*cells, f"{r['seconds']:.0f}"]) + " |")
    ours = sorted(results, key=lambda k: -results[k]["tau"])
    paper = sorted(results, key=lambda k: -PAPER_TAU[k])
    lines += ["", f"ordering ours: {' > '.join(ours)}; paper: {' > '.join(paper)}; same: {ours == paper}"]
    spec.out_dir.mkdir(parents=True, exist_ok=True)
    _scatter(results, spec.out_dir / "scatter.png")
    metrics = {f"{k}.{m}": r[m] for k, r in results.items() for m in ("tau", "rmse")}
    finish_experiment(spec, meta, results, lines, metrics, "nfopt-zoo", ("scatter.png",))
    return results
