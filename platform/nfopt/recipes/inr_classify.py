"""INR classification (the NFT paper's Inr2Array experiment): an Inr2Array autoencoder trained
on the INRs' renderings, then a classifier on its latent arrays; an NFN-NP classifier on the
weights directly; a DWSNet (Navon et al.) on the raw weights; and an MLP on flattened weights.
Accuracy on the test split's INRs."""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from nfopt.inr import Siren, grid_coords
from nfopt.inrs.spec import InrClassifySpec
from nfopt.inrs.store import InrDataset, SplitData, load_inrs
from nfopt.nn import (
    DWSClassifier,
    FourierIOEncoding,
    GaussianFourierFeatures,
    Inr2ArrayAutoencoder,
    Inr2ArrayDecoder,
    Inr2ArrayEncoder,
    NFActivation,
    NPLinear,
    NPPool,
    fuse_relu,
)
from nfopt.recipes.experiments import claim_experiment, finish_experiment
from nfopt.weightspace import NetworkSpec, WeightSpaceFeatures

__all__ = [
    "ENCODER_FILE",
    "PAPER_ACCURACY",
    "FlatMLP",
    "LatentClassifier",
    "Latents",
    "NFNClassifier",
    "build_encoder",
    "run_classify",
]

#: Fashion-MNIST INR classification accuracy (%) reported by the NFN / NFT papers.
PAPER_ACCURACY = {"inr2array": 79.3, "nfn_np": 75.6, "dwsnets": 67.1, "mlp": 12.5}
#: the trained Inr2Array encoder's state dict, kept in the run directory
ENCODER_FILE = "inr2array_encoder.pt"


class NFNClassifier(nn.Module):
    """The NFN paper's invariant classifier: each weight scaled by its tensor's dataset std, Gaussian
    Fourier features of every entry (SIREN weights carry the image in small, high-frequency-sensitive
    moves), sinusoidal IO-neuron encodings, NP layers with ReLU, NP pooling, an MLP head.

    ``x`` ``(B, 1, ...)`` -> logits ``(B, classes)``; invariant to hidden-neuron permutations (the IO
    encoding ties the input and output neurons to their positions)."""

    def __init__(
        self,
        spec: NetworkSpec,
        channels: int,
        layers: int,
        classes: int,
        scale: list[float],
        fourier_features: int = 0,
        fourier_scale: float = 1.0,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.fourier = GaussianFourierFeatures(1, fourier_features, fourier_scale) if fourier_features else None
        c = self.fourier.out_channels if self.fourier is not None else 1
        self.io = FourierIOEncoding(spec, c)
        mods: list[nn.Module] = []
        c = self.io.out_channels
        for _ in range(layers):
            mods += [NPLinear(spec, c, channels), NFActivation()]
            c = channels
        self.body, self.pool = nn.Sequential(*mods), NPPool(spec)
        fuse_relu(self.body)  # the ReLUs ride in the layers' passes (same function, same state_dict)
        self.head = nn.Sequential(
            nn.Linear(self.pool.out_features(c), 256), nn.ReLU(), nn.Dropout(dropout), nn.Linear(256, classes)
        )
        self.register_buffer("scale", torch.tensor(scale))

    def forward(self, x: WeightSpaceFeatures) -> torch.Tensor:
        x = x.scale_tensors(1 / self.scale)
        if self.fourier is not None:
            x = self.fourier(x)  # (B, 1 + 2m, ...)
        return self.head(self.pool(self.body(self.io(x))))


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
        return self.net(x.scale_tensors(1 / self.scale).flatten()[:, 0])  # (B, 1, N) -> (B, N)


class LatentClassifier(nn.Module):
    """On a frozen Inr2Array encoder's latent arrays ``(B, M, D)``: a transformer layer over the
    M latents, mean over them, a linear head -> ``(B, classes)``."""

    def __init__(self, latent_dim: int, classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.mix = nn.TransformerEncoderLayer(latent_dim, 4, 2 * latent_dim, dropout=dropout, batch_first=True)
        self.head = nn.Sequential(nn.LayerNorm(latent_dim), nn.Linear(latent_dim, classes))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.mix(z).mean(1))


class Latents:
    """A split's INRs encoded once by a frozen (permutation-invariant) encoder: the
    :class:`SplitData` interface over latent arrays, so augmentation is moot."""

    def __init__(self, encoder: Inr2ArrayEncoder, data: SplitData, batch: int = 256) -> None:
        encoder.eval()
        with torch.no_grad():
            self.z = torch.cat(
                [encoder(data.features(torch.arange(i, min(i + batch, len(data))))) for i in range(0, len(data), batch)]
            )  # (N, M, D)
        self.labels = data.labels

    def __len__(self) -> int:
        return len(self.labels)

    def features(self, idx: torch.Tensor, augment: bool = False, generator=None) -> torch.Tensor:
        return self.z[idx]


def _batches(n: int, size: int, gen: torch.Generator):
    order = torch.randperm(n, generator=gen)
    return [order[i : i + size] for i in range(0, n, size)]


def build_encoder(spec: InrClassifySpec, nspec: NetworkSpec, scale: list[float]) -> Inr2ArrayEncoder:
    """The (untrained) Inr2Array encoder ``spec`` describes for INRs of ``nspec`` whose tensors'
    dataset stds are ``scale``; :data:`ENCODER_FILE` holds a trained one's state dict."""
    return Inr2ArrayEncoder(
        nspec,
        num_latents=spec.num_latents,
        latent_dim=spec.latent_dim,
        channels=spec.channels,
        num_blocks=spec.ae_blocks,
        fourier_features=spec.fourier_features,
        fourier_scale=spec.fourier_scale,
        input_scale=scale,
    )


def _train_autoencoder(
    ds: InrDataset, spec: InrClassifySpec, train: SplitData, scale: list[float], log
) -> Inr2ArrayEncoder:
    """Inr2Array trained to reproduce each INR's rendering; the decoder's base weight space is a
    SIREN initialisation (from an all-zero base a SIREN has no frequencies to start from)."""
    nspec = ds.network_spec
    enc = build_encoder(spec, nspec, scale)
    arch = ds.architecture
    base = WeightSpaceFeatures.from_modules([Siren(*_siren_args(arch))])
    ae = Inr2ArrayAutoencoder(enc, Inr2ArrayDecoder(nspec, latent_dim=spec.latent_dim, base=base), w0=ds.w0)
    opt = torch.optim.AdamW(ae.parameters(), lr=spec.lr)
    coords = grid_coords(*arch["image_shape"][1:])
    gen = torch.Generator().manual_seed(spec.seed)
    n = len(train) if spec.ae_max_train is None else min(spec.ae_max_train, len(train))
    steps = spec.ae_epochs * -(-n // spec.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, (lambda k: 0.5 * (1 + math.cos(math.pi * k / steps))) if spec.ae_schedule == "cosine" else (lambda k: 1.0)
    )
    for epoch in range(spec.ae_epochs):
        total = 0.0
        for b in _batches(n, spec.batch_size, gen):
            loss = ae.reconstruction_loss(train.features(b, spec.augment, gen), coords)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(b)
        log(f"inr2array autoencoder epoch {epoch + 1}/{spec.ae_epochs}: render mse {total / n:.5f}")
    return enc


def _siren_args(arch: dict) -> tuple[int, int, int, int, float]:
    widths = arch["widths"]
    return widths[0], widths[1], len(widths) - 2, widths[-1], float(arch["w0"])


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


def run_classify(spec: InrClassifySpec, progress: bool = True, overwrite: bool = False) -> dict:
    """Train and test every model of ``spec``; writes ``results.json`` and ``table.md``."""
    claim_experiment(spec, overwrite)
    from rich.console import Console

    console = Console(stderr=True, quiet=not progress)
    ds = load_inrs(spec.inrs, {"train": spec.max_train})
    classes = int(ds.train.labels.max()) + 1
    nspec, scale = ds.network_spec, ds.train.stds()
    results = {}
    for name in spec.models:
        torch.manual_seed(spec.seed)
        start = time.perf_counter()
        train, test = ds.train, ds.test
        if name == "inr2array":
            enc = _train_autoencoder(ds, spec, ds.train, scale, console.print)
            # kept for reuse (new classifier heads, latents of other INRs): a state dict only
            spec.out_dir.mkdir(parents=True, exist_ok=True)
            torch.save(enc.state_dict(), spec.out_dir / ENCODER_FILE)
            train, test = Latents(enc, ds.train), Latents(enc, ds.test)
            model: nn.Module = LatentClassifier(spec.latent_dim, classes, spec.dropout)
        elif name == "nfn_np":
            model = NFNClassifier(
                nspec,
                spec.channels,
                spec.layers,
                classes,
                scale,
                spec.fourier_features,
                spec.fourier_scale,
                spec.dropout,
            )
        elif name == "dwsnets":
            model = DWSClassifier(nspec, spec.channels, spec.dws_layers, classes, scale, spec.dropout)
        else:
            model = FlatMLP(nspec, classes, scale)
        _fit_classifier(model, spec, train, name, console.print)
        results[name] = {
            "test_accuracy": accuracy(model, test),
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
    files = (ENCODER_FILE,) if "inr2array" in results else ()
    finish_experiment(spec, meta, results, lines, metrics, "nfopt-inr", files)
    return {**meta, "results": results}
