"""Predicting a network's test accuracy from its weights alone (the NFN/NFT papers' Small CNN
Zoo experiment): invariant NFN-NP, NFN-HNP and NFT predictors and the STATNN baseline, trained
on a zoo split by training run and scored with Kendall's τ."""

from __future__ import annotations

import torch
from torch import nn

from nfopt.nn import HNPLinear, HNPPool, NFActivation, NPLinear, NPPool, build_nft, fuse_relu
from nfopt.weightspace import NetworkSpec, Permutation, WeightSpaceFeatures

__all__ = [
    "FeatureScale",
    "NFNPredictor",
    "StatNN",
    "build_predictor",
    "hidden_permutation",
    "kendall_tau",
    "tensor_statistics",
]


def kendall_tau(x: torch.Tensor, y: torch.Tensor) -> float:
    """Kendall's τ-b rank correlation of two ``(N,)`` vectors (ties handled as in τ-b)."""
    x, y = x.double().flatten(), y.double().flatten()
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"kendall_tau needs two vectors of the same length >= 2, got {len(x)} and {len(y)}")
    i, j = torch.triu_indices(len(x), len(x), 1)
    dx, dy = torch.sign(x[i] - x[j]), torch.sign(y[i] - y[j])
    concordance = (dx * dy).sum()
    denom = torch.sqrt((dx != 0).sum().double() * (dy != 0).sum().double())
    return float(concordance / denom) if denom > 0 else 0.0


def hidden_permutation(spec: NetworkSpec, generator: torch.Generator | None = None) -> Permutation:
    """A uniformly random permutation of every hidden neuron layer (inputs and outputs fixed)."""
    sizes, last = spec.neuron_sizes, spec.num_layers
    return Permutation(
        tuple(
            torch.arange(n) if i in (0, last) else torch.randperm(n, generator=generator) for i, n in enumerate(sizes)
        )
    )


class FeatureScale(nn.Module):
    """Divides each weight and bias tensor by its standard deviation over a training set (a
    per-tensor constant, so it commutes with neuron permutations)."""

    def __init__(self, x: WeightSpaceFeatures) -> None:
        super().__init__()
        stds = [t.std().clamp_min(1e-8) for pair in x for t in pair]
        self.register_buffer("inv_std", 1.0 / torch.stack(stds))

    def forward(self, x: WeightSpaceFeatures) -> WeightSpaceFeatures:
        s = self.inv_std
        return WeightSpaceFeatures(
            [w * s[2 * i] for i, w in enumerate(x.weights)], [b * s[2 * i + 1] for i, b in enumerate(x.biases)]
        )


class NFNPredictor(nn.Module):
    """``layers`` equivariant NP (or HNP) linear layers with ReLU, the matching invariant pool,
    then an MLP: ``(B, 1, ...) -> (B,)`` logits of accuracy."""

    def __init__(self, spec: NetworkSpec, kind: str, channels: int, layers: int, hidden: int = 128) -> None:
        super().__init__()
        layer = NPLinear if kind == "np" else HNPLinear
        mods: list[nn.Module] = []
        c = 1
        for _ in range(layers):
            mods += [layer(spec, c, channels), NFActivation()]
            c = channels
        self.body = nn.Sequential(*mods)
        fuse_relu(self.body)  # the ReLUs ride in the layers' passes (same function, same state_dict)
        self.pool = NPPool(spec) if kind == "np" else HNPPool(spec)
        self.head = nn.Sequential(nn.Linear(self.pool.out_features(channels), hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: WeightSpaceFeatures) -> torch.Tensor:
        return self.head(self.pool(self.body(x))).squeeze(-1)


_QUANTILES = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])


def tensor_statistics(x: WeightSpaceFeatures) -> torch.Tensor:
    """STATNN's input ``(B, 7 * 2L)``: mean, variance and the 0/25/50/75/100% quantiles of
    every weight and bias tensor (channel 0)."""
    stats = []
    for pair in x:
        for t in pair:
            flat = t[:, 0].flatten(1)  # (B, numel)
            q = torch.quantile(flat, _QUANTILES.to(flat), dim=1).T  # (B, 5)
            stats += [flat.mean(1, keepdim=True), flat.var(1, keepdim=True), q]
    return torch.cat(stats, dim=1)


class StatNN(nn.Module):
    """The STATNN baseline (Unterthiner et al.): per-tensor statistics, standardised, into an MLP."""

    def __init__(self, train_stats: torch.Tensor, hidden: int = 256) -> None:
        super().__init__()
        self.register_buffer("mu", train_stats.mean(0))
        self.register_buffer("sd", train_stats.std(0).clamp_min(1e-8))
        d = train_stats.shape[1]
        self.mlp = nn.Sequential(
            nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def forward(self, x: WeightSpaceFeatures) -> torch.Tensor:
        return self.mlp((tensor_statistics(x) - self.mu) / self.sd).squeeze(-1)


class _Scaled(nn.Module):
    def __init__(self, scale: FeatureScale, model: nn.Module) -> None:
        super().__init__()
        self.scale, self.model = scale, model

    def forward(self, x: WeightSpaceFeatures) -> torch.Tensor:
        out = self.model(self.scale(x))
        return out.squeeze(-1) if out.ndim == 2 else out


def build_predictor(kind: str, spec: NetworkSpec, train: WeightSpaceFeatures, channels: int, layers: int) -> nn.Module:
    """A permutation-invariant accuracy predictor ``WeightSpaceFeatures (B, 1, ...) -> (B,)``
    logits; ``train`` (a sample of training inputs) sets the input scales."""
    if kind == "statnn":
        return StatNN(tensor_statistics(train))
    scale = FeatureScale(train)
    if kind in ("nfn_np", "nfn_hnp"):
        return _Scaled(scale, NFNPredictor(spec, kind[4:], channels, layers))
    if kind == "nft":
        return _Scaled(scale, build_nft(spec, 1, channels=channels, num_blocks=layers, num_heads=4, out_features=1))
    raise ValueError(f"predictor kind={kind!r}: choose nfn_np, nfn_hnp, nft or statnn")
