"""Per-parameter input features of learned optimizers, as ``WeightSpaceFeatures`` channels.

The feature set of the per-parameter MLP learned optimizer of Metz et al. (learned_optimization's
``MLPLOpt``, 19 inputs): the gradient, the parameter and momenta at decays 0.1 ... 0.9999, each
normalised by its second moment over the tensor (per network and channel) — 8 per-entry
channels — and ``tanh(t / s)`` of the step count ``t`` over timescales ``s = 1, 3, 10, ..., 1e5``,
11 values that are the same for every entry. Those are kept as a ``(P, 11)`` global vector that
meta-models add after their first (linear) layer: the same function as broadcasting them as 11
more channels into it, at 8/19 of the per-entry cost. Per-tensor normalisation and constants
commute with neuron permutations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from nfopt.weightspace import WeightSpaceFeatures

__all__ = ["FeatureConfig", "build_features", "second_moment_normalize", "update_momenta"]

Tensor = torch.Tensor


@dataclass(frozen=True)
class FeatureConfig:
    decays: tuple[float, ...] = (0.1, 0.5, 0.9, 0.99, 0.999, 0.9999)
    timescales: tuple[float, ...] = (1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000)
    eps: float = 1e-5

    @property
    def num_features(self) -> int:
        """Inputs per parameter (19 with the defaults): per-entry channels plus global values."""
        return self.num_entry_features + self.num_global_features

    @property
    def num_entry_features(self) -> int:
        return 2 + len(self.decays)

    @property
    def num_global_features(self) -> int:
        return len(self.timescales)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> FeatureConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def second_moment_normalize(t: Tensor, eps: float) -> Tensor:
    """``t / sqrt(mean(t²) + eps)`` with the mean over each tensor's entries: ``(B, C, ...)``."""
    dims = tuple(range(2, t.ndim))
    return t * torch.rsqrt(t.square().mean(dims, keepdim=True) + eps)


def update_momenta(mom: WeightSpaceFeatures, grads: WeightSpaceFeatures, decays: Tensor) -> WeightSpaceFeatures:
    """``m_k <- β_k m_k + (1 - β_k) g`` for every decay ``β_k`` (channels of ``mom``)."""

    def upd(m: Tensor, g: Tensor) -> Tensor:
        d = decays.to(m).view(1, -1, *([1] * (m.ndim - 2)))
        return m * d + g * (1 - d)

    return WeightSpaceFeatures(
        [upd(m, g) for m, g in zip(mom.weights, grads.weights)],
        [upd(m, g) for m, g in zip(mom.biases, grads.biases)],
    )


def build_features(
    params: WeightSpaceFeatures, grads: WeightSpaceFeatures, mom: WeightSpaceFeatures, step: Tensor, cfg: FeatureConfig
) -> tuple[WeightSpaceFeatures, Tensor]:
    """``(B, 1, ...)`` parameters and gradients, ``(B, K, ...)`` momenta -> per-entry features
    ``(B, 2 + K, ...)`` (normalised ``[g, p, m_1..m_K]``) and global time features ``(B, T)``."""
    ts = torch.as_tensor(cfg.timescales, dtype=params.dtype, device=params.device)
    time = torch.tanh(step.to(ts) / ts).expand(params.batch_size, -1)  # (B, T)

    def one(p: Tensor, g: Tensor, m: Tensor) -> Tensor:
        return second_moment_normalize(torch.cat([g, p, m], dim=1), cfg.eps)

    feats = WeightSpaceFeatures(
        [one(p, g, m) for p, g, m in zip(params.weights, grads.weights, mom.weights)],
        [one(p, g, m) for p, g, m in zip(params.biases, grads.biases, mom.biases)],
    )
    return feats, time
