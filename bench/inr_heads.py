"""Classifier heads on a trained Inr2Array encoder's latents (``inr2array_encoder.pt`` in a run
directory of ``nfopt inr classify``): variants compared on a validation split (the last 1000
training INRs), the best retrained on all training INRs and tested once; the job's own head is
retrained beside it with this script's seeds (head-training noise). Last line
``RESULT chosen_test=X shipped_head_test=Y``.

Usage: ``python bench/inr_heads.py runs/inr_classify_shared_inr2array``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nfopt.inrs.spec import InrClassifySpec
from nfopt.inrs.store import load_inrs
from nfopt.recipes.inr_classify import ENCODER_FILE, LatentClassifier, Latents, build_encoder


class DeepLatentClassifier(nn.Module):
    """``layers`` transformer layers over the latents, mean, linear head: ``(B, M, D) -> (B, K)``."""

    def __init__(self, d: int, classes: int, layers: int, dropout: float) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=dropout, batch_first=True)
        self.mix = nn.TransformerEncoder(layer, layers)
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, classes))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.mix(z).mean(1))


def fit(make, z: torch.Tensor, y: torch.Tensor, epochs: int) -> nn.Module:
    torch.manual_seed(1)
    model = make()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    gen = torch.Generator().manual_seed(2)
    for _ in range(epochs):
        model.train()
        for b in torch.randperm(len(y), generator=gen).split(64):
            loss = F.cross_entropy(model(z[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return model


@torch.no_grad()
def accuracy(model: nn.Module, z: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return (model(z).argmax(1) == y).float().mean().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="an `nfopt inr classify` run directory that trained inr2array")
    run = ap.parse_args().run
    spec = InrClassifySpec.model_validate(json.loads((run / "results.json").read_text())["spec"])
    ds = load_inrs(spec.inrs)
    enc = build_encoder(spec, ds.network_spec, ds.train.stds())
    enc.load_state_dict(torch.load(run / ENCODER_FILE, map_location="cpu", weights_only=True))
    train, test = Latents(enc, ds.train), Latents(enc, ds.test)
    ztr, zte, ytr, yte = train.z, test.z, train.labels, test.labels
    k, d = int(ytr.max()) + 1, spec.latent_dim
    variants = {
        "job's head (1 layer, 15 epochs)": (lambda: LatentClassifier(d, k, spec.dropout), 15),
        "1 layer, 30 epochs": (lambda: LatentClassifier(d, k, spec.dropout), 30),
        "2 layers, 30 epochs": (lambda: DeepLatentClassifier(d, k, 2, spec.dropout), 30),
        "2 layers, dropout 0.3, 30 epochs": (lambda: DeepLatentClassifier(d, k, 2, 0.3), 30),
    }
    tr, va = torch.arange(len(ytr) - 1000), torch.arange(len(ytr) - 1000, len(ytr))
    val = {}
    for name, (make, epochs) in variants.items():
        t0 = time.perf_counter()
        val[name] = accuracy(fit(make, ztr[tr], ytr[tr], epochs), ztr[va], ytr[va])
        print(f"{name}: validation {val[name]:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    best = max(val, key=val.get)
    make, epochs = variants[best]
    chosen = accuracy(fit(make, ztr, ytr, epochs), zte, yte)
    make, epochs = next(iter(variants.values()))  # the job's head
    shipped = accuracy(fit(make, ztr, ytr, epochs), zte, yte)
    print(f"chosen on validation: {best}: test {chosen:.4f}; the job's head with these seeds: test {shipped:.4f}")
    print(f"RESULT chosen_test={chosen:.4f} shipped_head_test={shipped:.4f}")


if __name__ == "__main__":
    main()
