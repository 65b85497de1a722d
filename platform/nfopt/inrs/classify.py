"""INR classification (the NFT paper's Inr2Array experiment): an Inr2Array autoencoder trained
on the INRs' renderings, then a classifier on its latent arrays; an NFN-NP classifier on the
weights directly; and an MLP on flattened weights. Accuracy on the test split's INRs."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from nfopt.experiments import finish_experiment
from nfopt.inr import grid_coords
from nfopt.inrs.spec import InrClassifySpec
from nfopt.inrs.store import InrDataset, SplitData, load_inrs
from nfopt.nn import Inr2ArrayAutoencoder, Inr2ArrayDecoder, Inr2ArrayEncoder, NFActivation, NPLinear, NPPool
from nfopt.weightspace import NetworkSpec, WeightSpaceFeatures

__all__ = ["PAPER_ACCURACY", "FlatMLP", "LatentClassifier", "NFNClassifier", "run_classify"]

#: Fashion-MNIST INR classification accuracy (%) reported by the NFN / NFT papers.
PAPER_ACCURACY = {"inr2array": 79.3, "nfn_np": 75.6, "dwsnets": 67.1, "mlp": 12.5}


class NFNClassifier(nn.Module):
    """NP layers with ReLU, NP pooling (invariant to every neuron permutation), an MLP head."""

    def __init__(self, spec: NetworkSpec, channels: int, layers: int, classes: int, scale: list[float]) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        c = 1
        for _ in range(layers):
            mods += [NPLinear(spec, c, channels), NFActivation()]
            c = channels
        self.body, self.pool = nn.Sequential(*mods), NPPool(spec)
        self.head = nn.Sequential(
            nn.Linear(self.pool.out_features(c), 256), nn.ReLU(), nn.Dropout(0.1), nn.Linear(256, classes)
        )
        self.register_buffer("scale", torch.tensor(scale))

    def forward(self, x: WeightSpaceFeatures) -> torch.Tensor:
        x = WeightSpaceFeatures(
            [w / self.scale[2 * i] for i, w in enumerate(x.weights)],
            [b / self.scale[2 * i + 1] for i, b in enumerate(x.biases)],
        )
        return self.head(self.pool(self.body(x)))


class FlatMLP(nn.Module):
    """The baseline: every weight flattened into one vector (not permutation invariant)."""

    def __init__(self, spec: NetworkSpec, classes: int, scale: list[float], hidden: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(spec.num_params, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, classes),
        )
        self.register_buffer("scale", torch.tensor(scale))

    def forward(self, x: WeightSpaceFeatures) -> torch.Tensor:
        parts = []
        for i, (w, b) in enumerate(x):
            parts += [w.flatten(1) / self.scale[2 * i], b.flatten(1) / self.scale[2 * i + 1]]
        return self.net(torch.cat(parts, 1))


class LatentClassifier(nn.Module):
    """A frozen Inr2Array encoder, then a transformer layer over the latent array and a linear head."""

    def __init__(self, encoder: Inr2ArrayEncoder, latent_dim: int, classes: int) -> None:
        super().__init__()
        self.encoder = encoder.requires_grad_(False)
        self.mix = nn.TransformerEncoderLayer(latent_dim, 4, 2 * latent_dim, dropout=0.1, batch_first=True)
        self.head = nn.Sequential(nn.LayerNorm(latent_dim), nn.Linear(latent_dim, classes))

    def forward(self, x: WeightSpaceFeatures) -> torch.Tensor:
        with torch.no_grad():
            z = self.encoder.eval()(x)  # (B, num_latents, latent_dim)
        return self.head(self.mix(z).mean(1))


def _scales(data: SplitData) -> list[float]:
    return [float(t.std()) for pair in zip(data.weights, data.biases) for t in pair]


def _batches(n: int, size: int, gen: torch.Generator):
    order = torch.randperm(n, generator=gen)
    return [order[i : i + size] for i in range(0, n, size)]


def _train_autoencoder(ds: InrDataset, spec: InrClassifySpec, train: SplitData, log) -> Inr2ArrayEncoder:
    nspec = ds.network_spec
    enc = Inr2ArrayEncoder(nspec, num_latents=spec.num_latents, latent_dim=spec.latent_dim, channels=spec.channels)
    ae = Inr2ArrayAutoencoder(enc, Inr2ArrayDecoder(nspec, latent_dim=spec.latent_dim), w0=ds.w0)
    opt = torch.optim.AdamW(ae.parameters(), lr=spec.lr)
    coords = grid_coords(*ds.architecture["image_shape"][1:])
    gen = torch.Generator().manual_seed(spec.seed)
    for epoch in range(spec.ae_epochs):
        total = 0.0
        for b in _batches(len(train), spec.batch_size, gen):
            loss = ae.reconstruction_loss(train.features(b, spec.augment, gen), coords)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        log(f"inr2array autoencoder epoch {epoch + 1}/{spec.ae_epochs}: render mse {total / len(train):.5f}")
    return enc


def _fit_classifier(model: nn.Module, spec: InrClassifySpec, train: SplitData, name: str, log) -> nn.Module:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, spec.epochs)
    gen = torch.Generator().manual_seed(spec.seed + 1)
    for epoch in range(spec.epochs):
        model.train()
        total, correct = 0.0, 0
        for b in _batches(len(train), spec.batch_size, gen):
            logits = model(train.features(b, spec.augment, gen))
            loss = F.cross_entropy(logits, train.labels[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
            correct += int((logits.argmax(1) == train.labels[b]).sum())
        sched.step()
        n = len(train)
        log(f"{name} epoch {epoch + 1}/{spec.epochs}: loss {total / n:.4f}, train acc {correct / n:.3f}")
    return model


@torch.no_grad()
def accuracy(model: nn.Module, data: SplitData, batch: int = 256) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(data), batch):
        idx = torch.arange(i, min(i + batch, len(data)))
        correct += int((model(data.features(idx)).argmax(1) == data.labels[idx]).sum())
    return correct / len(data)


def run_classify(spec: InrClassifySpec, progress: bool = True) -> dict:
    """Train and test every model of ``spec``; writes ``results.json`` and ``table.md``."""
    from rich.console import Console

    console = Console(stderr=True, quiet=not progress)
    ds = load_inrs(spec.inrs, {"train": spec.max_train})
    classes = int(ds.train.labels.max()) + 1
    nspec, scale = ds.network_spec, _scales(ds.train)
    results = {}
    for name in spec.models:
        torch.manual_seed(spec.seed)
        start = time.perf_counter()
        if name == "inr2array":
            enc = _train_autoencoder(ds, spec, ds.train, console.print)
            model: nn.Module = LatentClassifier(enc, spec.latent_dim, classes)
        elif name == "nfn_np":
            model = NFNClassifier(nspec, spec.channels, spec.layers, classes, scale)
        else:
            model = FlatMLP(nspec, classes, scale)
        _fit_classifier(model, spec, ds.train, name, console.print)
        results[name] = {
            "test_accuracy": accuracy(model, ds.test),
            "seconds": time.perf_counter() - start,
            "paper": PAPER_ACCURACY.get(name),
        }
    meta = {"train_inrs": len(ds.train), "test_inrs": len(ds.test), "mean_psnr": float(ds.train.psnr.mean())}
    lines = [
        f"INR classification: {meta['train_inrs']} training INRs, {meta['test_inrs']} test INRs "
        f"(mean fit PSNR {meta['mean_psnr']:.1f} dB)",
        "",
        "| model | test accuracy (ours) | paper (Fashion-MNIST INRs) | seconds |",
        "|---|---|---|---|",
        *[
            f"| {k} | {100 * r['test_accuracy']:.1f}% | {'-' if r['paper'] is None else str(r['paper']) + '%'} "
            f"| {r['seconds']:.0f} |"
            for k, r in results.items()
        ],
    ]
    metrics = {f"{k}.test_accuracy": r["test_accuracy"] for k, r in results.items()}
    finish_experiment(spec, meta, results, lines, metrics, "nfopt-inr")
    return {**meta, "results": results}
