"""`LearnedUpdateRule`: a meta-model turned into a bounded, Adam-initialised update rule."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from nfopt.lopt.features import FeatureConfig, build_features, update_momenta
from nfopt.lopt.metamodels import build_meta_model
from nfopt.weightspace import NetworkSpec, WeightSpaceFeatures

__all__ = ["LearnedUpdateRule"]

Tensor = torch.Tensor
WSF = WeightSpaceFeatures


class LearnedUpdateRule(nn.Module):
    r"""A learned optimizer (its parameters are the meta-parameters ``θ``).

    With meta-model outputs ``(d, m)`` on the features of :mod:`nfopt.lopt.features` and the
    Adam direction ``u`` (bias-corrected first/second moments, decays ``0.9/0.999``):

    .. math::  s = b\, e^{σ} \big( d\, e^{a m} + e^{ρ} u \big), \qquad
               p \leftarrow p - B \tanh(s / B)

    with small fixed ``a`` (``exp_mult``), ``b`` (``step_mult``, the base learning rate), learnable
    global log step-scale ``σ`` and log residual-scale ``ρ`` (both 0 at init), and a bound ``B`` on
    every per-parameter step. The meta-model's head starts at zero, so the untrained rule is Adam
    with learning rate ``b`` (up to the soft bound); non-finite steps are zeroed.

    ``kind``: ``"mlp"`` (per-parameter MLP), ``"nfn_np"``, ``"nfn_hnp"`` or ``"nft"``; one instance
    updates MLPs and CNNs of any depth and width.
    """

    def __init__(
        self,
        kind: str = "nfn_np",
        meta_model: dict | None = None,
        features: FeatureConfig | None = None,
        exp_mult: float = 1e-3,
        step_mult: float = 1e-3,
        bound: float = 0.1,
        hand: str = "adam",
    ) -> None:
        super().__init__()
        if hand not in ("adam", "momentum", "none"):
            raise ValueError(f"hand={hand!r}: use 'adam', 'momentum' or 'none'")
        self.kind, self.meta_kwargs = kind, dict(meta_model or {})
        self.features = features or FeatureConfig()
        if 0.9 not in self.features.decays:
            raise ValueError("features.decays must include 0.9 (the hand-designed direction's momentum)")
        self.exp_mult, self.step_mult, self.bound, self.hand = exp_mult, step_mult, bound, hand
        self.meta_model = build_meta_model(
            kind, self.features.num_entry_features, self.features.num_global_features, **self.meta_kwargs
        )
        self.log_step_scale = nn.Parameter(torch.zeros(()))
        self.log_hand_scale = nn.Parameter(torch.zeros(()))

    # ------------------------------------------------------------------ config
    def config(self) -> dict:
        """Everything needed to rebuild this rule (JSON-able)."""
        return {
            "kind": self.kind,
            "meta_model": self.meta_kwargs,
            "features": self.features.to_dict(),
            "exp_mult": self.exp_mult,
            "step_mult": self.step_mult,
            "bound": self.bound,
            "hand": self.hand,
        }

    @classmethod
    def from_config(cls, cfg: dict) -> LearnedUpdateRule:
        cfg = dict(cfg)
        cfg["features"] = FeatureConfig.from_dict(cfg["features"])
        return cls(**cfg)

    # ------------------------------------------------------------------ protocol
    def init(self, spec: NetworkSpec, population: int = 1, dtype=torch.float32, device=None) -> dict:
        k = len(self.features.decays)
        return {
            "step": torch.zeros((), dtype=torch.long, device=device),
            "mom": WSF.zeros(spec, population, k, dtype=dtype, device=device),
            "v": WSF.zeros(spec, population, 1, dtype=dtype, device=device),
        }

    def update(
        self, theta: dict[str, Tensor] | None, state: dict, params: WSF, grads: WSF, loss: Any = None
    ) -> tuple[WSF, dict]:
        """One step for every member (see the class docstring); differentiable in ``theta``."""
        if theta is None:
            return self(state, params, grads, loss)
        return functional_call(self, theta, (state, params, grads, loss))

    def forward(self, state: dict, params: WSF, grads: WSF, loss: Any = None) -> tuple[WSF, dict]:
        cfg = self.features
        decays = torch.as_tensor(cfg.decays, dtype=params.dtype, device=params.device)
        grads = grads.map(lambda g: torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0))
        mom = update_momenta(state["mom"], grads, decays)
        v = state["v"] * 0.999 + grads * grads * 0.001
        step = state["step"] + 1
        feats, glob = build_features(params, grads, mom, state["step"], cfg)
        out = self.meta_model(feats, glob)  # (P, 2, ...)
        hand = self._hand(mom, v, step, decays)
        scale = self.step_mult * torch.exp(self.log_step_scale)
        hand_scale = torch.exp(self.log_hand_scale)
        a, bound = self.exp_mult, self.bound

        def delta(o: Tensor, h: Tensor | None) -> Tensor:
            s = o[:, :1] * torch.exp(a * o[:, 1:2])
            if h is not None:
                s = s + hand_scale * h
            s = bound * torch.tanh(scale * s / bound)
            return torch.where(torch.isfinite(s), s, torch.zeros_like(s))

        hw = hand.weights if hand is not None else [None] * len(params)
        hb = hand.biases if hand is not None else [None] * len(params)
        new = WSF(
            [p - delta(o, h) for p, o, h in zip(params.weights, out.weights, hw)],
            [p - delta(o, h) for p, o, h in zip(params.biases, out.biases, hb)],
        )
        return new, {"step": step, "mom": mom, "v": v}

    def _hand(self, mom: WSF, v: WSF, step: Tensor, decays: Tensor) -> WSF | None:
        if self.hand == "none":
            return None
        k = self.features.decays.index(0.9)
        m = mom.map(lambda t: t[:, k : k + 1])
        if self.hand == "momentum":
            return m
        t = step.to(decays)
        c1, c2 = 1 - 0.9**t, 1 - 0.999**t
        return (m / c1) / ((v / c2).map(torch.sqrt) + 1e-8)

    def extra_repr(self) -> str:
        return (
            f"kind={self.kind!r}, features={self.features.num_features}, step_mult={self.step_mult}, "
            f"exp_mult={self.exp_mult}, bound={self.bound}, hand={self.hand!r}, "
            f"lr={self.step_mult * math.exp(self.log_step_scale.item()):.2e}"
        )
