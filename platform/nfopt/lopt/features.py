"""Per-parameter input features of learned optimizers, as ``WeightSpaceFeatures`` channels.

The feature set of the per-parameter MLP learned optimizer of Metz et al. (learned_optimization's
``MLPLOpt``, 19 inputs): the gradient, the parameter and momenta at decays 0.1 ... 0.9999, each
normalised by its second moment over the tensor (per network and channel) — 8 per-entry
channels — and ``tanh(t / s)`` of the step count ``t`` over timescales ``s = 1, 3, 10, ..., 1e5``,
11 values that are the same for every entry. Those are kept as a ``(P, 11)`` global vector that
meta-models add after their first (linear) layer: the same function as broadcasting them as 11
more channels into it, at 8/19 of the per-entry cost. Per-tensor normalisation and constants
commute with neuron permutations.

Inputs that let a rule choose its step per task and per tensor (each switchable; files saved
before they existed load with them off):

* ``adam_direction``: Adam's direction ``m̂ / (sqrt(v̂) + eps)`` as one more per-entry channel
  (normalised like the others);
* ``loss_features``: per network, the loss trajectory — ``log(ema_0.9 / ema_0.99)`` (trend),
  ``log(loss / ema_0.9)`` (noise), ``log(ema_0.99 / loss_0)`` (progress), all clipped;
* ``fraction``: ``t / num_steps`` and an indicator that the horizon is known (VeLO's input);
* ``tensor_features``: per tensor and network, ``log10`` of the parameter RMS, of the fan-in and
  of the gradient's signal-to-noise ``rms(m_0.9) / sqrt(mean v)``: invariant to neuron
  permutations, so the global inputs become :class:`~nfopt.nn.PerTensor` inputs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from nfopt.nn import PerTensor
from nfopt.weightspace import WeightSpaceFeatures

__all__ = [
    "FeatureConfig",
    "build_features",
    "constant",
    "fan_ins",
    "global_inputs",
    "init_loss_state",
    "loss_features",
    "second_moment_normalize",
    "tensor_stats",
    "time_features",
    "update_loss_state",
    "update_momenta",
]

NUM_LOSS_FEATURES, NUM_FRACTION_FEATURES, NUM_TENSOR_FEATURES = 3, 2, 3

Tensor = torch.Tensor

_CONSTANTS: dict[tuple, Tensor] = {}


def constant(values: tuple[float, ...], dtype: torch.dtype, device: torch.device | str) -> Tensor:
    """``torch.tensor(values)`` on ``device``, made once per ``(values, dtype, device)`` and reused:
    on a GPU each fresh one is a host-to-device copy the host waits for, once per inner step
    (measured on an H200: ~4 host syncs per inner step, each a constant or the batch indices).
    Made fresh where a reused tensor could not be: under ``torch.compile`` tracing, a dispatch
    mode (fake tensors, FLOP counters) or inference mode (its tensors cannot enter autograd later)."""
    if torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None or torch.is_inference_mode_enabled():
        return torch.tensor(values, dtype=dtype, device=device)
    key = (values, dtype, torch.device(device))
    out = _CONSTANTS.get(key)
    if out is None:
        out = _CONSTANTS[key] = torch.tensor(values, dtype=dtype, device=device)
    return out


@dataclass(frozen=True)
class FeatureConfig:
    decays: tuple[float, ...] = (0.1, 0.5, 0.9, 0.99, 0.999, 0.9999)
    timescales: tuple[float, ...] = (1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000)
    eps: float = 1e-5
    adam_direction: bool = True
    loss_features: bool = True
    fraction: bool = True
    tensor_features: bool = True

    @property
    def num_features(self) -> int:
        """Inputs per parameter: per-entry channels plus global (and per-tensor) values."""
        return self.num_entry_features + self.num_global_features

    @property
    def num_entry_features(self) -> int:
        return 2 + len(self.decays) + int(self.adam_direction)

    @property
    def num_global_features(self) -> int:
        return (
            len(self.timescales)
            + NUM_LOSS_FEATURES * self.loss_features
            + NUM_FRACTION_FEATURES * self.fraction
            + NUM_TENSOR_FEATURES * self.tensor_features
        )

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> FeatureConfig:
        """Inverse of :meth:`to_dict`; switches missing from ``d`` (files saved before they
        existed) are off, so such a file rebuilds the rule it was saved from."""
        flags = {"adam_direction": False, "loss_features": False, "fraction": False, "tensor_features": False}
        return cls(**{**flags, **{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}})


def _inv_rms(t: Tensor, eps: float) -> Tensor:
    """``1 / sqrt(mean(t²) + eps)`` over each tensor's entries: ``(B, C, ...) -> (B, C, 1, ...)``
    (eagerly one read pass, no ``t²`` temporary; traced, the sum of squares, which inductor fuses
    into one pass without the norm's square root of a square)."""
    dims = tuple(range(2, t.ndim))
    if torch.compiler.is_compiling():
        sq = t.square().sum(dim=dims, keepdim=True)
    else:
        sq = torch.linalg.vector_norm(t, 2, dim=dims, keepdim=True).square()
    return torch.rsqrt(sq / t[0, 0].numel() + eps)


def second_moment_normalize(t: Tensor, eps: float) -> Tensor:
    """``t / sqrt(mean(t²) + eps)`` with the mean over each tensor's entries: ``(B, C, ...)``."""
    return t * _inv_rms(t, eps)


def _normalized_cat(parts: list[Tensor], eps: float) -> Tensor:
    """``second_moment_normalize(torch.cat(parts, 1))`` without the concatenated temporary: each
    part is scaled straight into its channels of the output (no autograd: ``out=``)."""
    ref = parts[0]
    out = torch.empty(
        (ref.shape[0], sum(t.shape[1] for t in parts), *ref.shape[2:]), dtype=ref.dtype, device=ref.device
    )
    at = 0
    for t in parts:
        c = t.shape[1]
        torch.mul(t, _inv_rms(t, eps), out=out[:, at : at + c])
        at += c
    return out


def update_momenta(mom: WeightSpaceFeatures, grads: WeightSpaceFeatures, decays: Tensor) -> WeightSpaceFeatures:
    """``m_k <- β_k m_k + (1 - β_k) g`` for every decay ``β_k`` (channels of ``mom``)."""

    def upd(m: Tensor, g: Tensor) -> Tensor:
        w = (1 - decays).to(m).view(1, -1, *([1] * (m.ndim - 2)))
        return torch.lerp(m, g.expand_as(m), w)  # m + (1 - β)(g - m): one pass

    return WeightSpaceFeatures(
        [upd(m, g) for m, g in zip(mom.weights, grads.weights)],
        [upd(m, g) for m, g in zip(mom.biases, grads.biases)],
    )


def time_features(step: Tensor, cfg: FeatureConfig, batch_size: int, dtype: torch.dtype) -> Tensor:
    """``tanh(t / s)`` of the steps done ``t`` (0-dim) over the timescales: ``(B, T)``."""
    t = step.to(dtype)
    if torch.compiler.is_compiling():
        # scalar ops, not a tensor of the timescales: that would be a constant of the graph, which
        # inductor (torch 2.13) does not carry into a ``while_loop`` body (the compiled unroll of
        # :mod:`nfopt.meta.problems`: the body's C++ names a constant it never declared)
        return torch.tanh(torch.stack([t / s for s in cfg.timescales])).expand(batch_size, -1)
    ts = constant(tuple(cfg.timescales), dtype, step.device)
    return torch.tanh(t / ts).expand(batch_size, -1)


def build_features(
    params: WeightSpaceFeatures,
    grads: WeightSpaceFeatures,
    mom: WeightSpaceFeatures,
    step: Tensor,
    cfg: FeatureConfig,
    adam: WeightSpaceFeatures | None = None,
) -> tuple[WeightSpaceFeatures, Tensor]:
    """``(B, 1, ...)`` parameters and gradients, ``(B, K, ...)`` momenta (and with
    ``cfg.adam_direction`` the ``(B, 1, ...)`` Adam direction) -> per-entry features
    ``(B, 2 + K [+ 1], ...)`` (normalised ``[g, p, m_1..m_K, u]``) and time features ``(B, T)``."""
    time = time_features(step, cfg, params.batch_size, params.dtype)  # (B, T)
    extra = adam if cfg.adam_direction else None
    if cfg.adam_direction and adam is None:
        raise ValueError("FeatureConfig.adam_direction needs the Adam direction")

    def one(p: Tensor, g: Tensor, m: Tensor, u: Tensor | None) -> Tensor:
        parts = [g, p, m] if u is None else [g, p, m, u]
        if torch.compiler.is_compiling() or (torch.is_grad_enabled() and any(t.requires_grad for t in parts)):
            return second_moment_normalize(torch.cat(parts, dim=1), cfg.eps)
        return _normalized_cat(parts, cfg.eps)

    uw = extra.weights if extra is not None else [None] * len(params)
    ub = extra.biases if extra is not None else [None] * len(params)
    feats = WeightSpaceFeatures(
        [one(p, g, m, u) for p, g, m, u in zip(params.weights, grads.weights, mom.weights, uw)],
        [one(p, g, m, u) for p, g, m, u in zip(params.biases, grads.biases, mom.biases, ub)],
    )
    return feats, time


def init_loss_state(population: int, dtype=torch.float32, device=None) -> dict[str, Tensor]:
    """Loss-trajectory state (flat, checkpointable): first loss ``(P,)``, EMAs at decays 0.9 and
    0.99 ``(P, 2)``, last loss ``(P,)`` and whether any loss was seen."""
    z = torch.zeros(population, dtype=dtype, device=device)
    return {
        "loss0": z,
        "loss_ema": torch.zeros(population, 2, dtype=dtype, device=device),
        "loss_last": z.clone(),
        "loss_seen": torch.zeros((), dtype=torch.bool, device=device),
    }


def update_loss_state(ls: dict[str, Tensor], loss: Tensor | None) -> dict[str, Tensor]:
    """Fold a ``(P,)`` minibatch loss into the state (the first loss initialises every EMA);
    non-finite losses keep the previous values; ``None`` leaves the state as it is."""
    if loss is None:
        return {k: ls[k] for k in ("loss0", "loss_ema", "loss_last", "loss_seen")}
    ema, seen = ls["loss_ema"], ls["loss_seen"]
    loss = loss.detach().to(ema).reshape(-1).expand(ema.shape[0])
    loss = torch.where(torch.isfinite(loss), loss.abs(), torch.where(seen, ema[:, 0], torch.ones_like(loss)))
    d = constant((0.9, 0.99), loss.dtype, loss.device)
    return {
        "loss0": torch.where(seen, ls["loss0"], loss),
        "loss_ema": torch.where(seen, ema * d + loss[:, None] * (1 - d), loss[:, None].expand(-1, 2)),
        "loss_last": loss,
        "loss_seen": torch.ones_like(seen),
    }


def loss_features(ls: dict[str, Tensor]) -> Tensor:
    """``(P, 3)``: trend ``log(ema_0.9/ema_0.99)``, noise ``log(loss/ema_0.9)``, progress
    ``log(ema_0.99/loss_0)``, clipped; zeros before any loss was seen."""
    tiny = 1e-12
    ema = ls["loss_ema"] + tiny
    ef, es, last, l0 = ema[:, 0], ema[:, 1], ls["loss_last"] + tiny, ls["loss0"] + tiny
    out = torch.stack(
        [torch.log(ef / es).clamp(-2, 2), torch.log(last / ef).clamp(-2, 2), torch.log(es / l0).clamp(-6, 2)], dim=1
    )
    return torch.where(ls["loss_seen"], out, torch.zeros_like(out))


def fan_ins(params: WeightSpaceFeatures) -> list[int]:
    """Each layer's fan-in, inputs times kernel size (weights ``(B, C, n_out, n_in, *k)``); a
    layer's weight and bias share it."""
    return [math.prod(w.shape[3:]) for w in params.weights]


def tensor_stats(
    params: WeightSpaceFeatures, mom: WeightSpaceFeatures, v: WeightSpaceFeatures
) -> tuple[list[Tensor], list[Tensor]]:
    """Per weight and bias, ``(B, 3)``: ``log10`` of the parameter RMS, of the fan-in and of the
    gradient's signal-to-noise ``rms(m) / sqrt(mean v)`` (``mom``: ``(B, 1, ...)``)."""

    def one(p: Tensor, m: Tensor, vv: Tensor, fan_in: int) -> Tensor:
        dims = tuple(range(1, p.ndim))
        rms_p = (p.square().mean(dims) + 1e-16).sqrt()  # + tiny: finite gradients at 0 (bias-free slots)
        snr = (m.square().mean(dims) + 1e-24).sqrt() / (vv.mean(dims) + 1e-24).sqrt()
        fan = torch.full_like(rms_p, math.log10(max(fan_in, 1)))
        return torch.stack([torch.log10(rms_p + 1e-6), fan, torch.log10(snr + 1e-3)], dim=1)

    fans = fan_ins(params)
    ws = [one(p, m, vv, f) for p, m, vv, f in zip(params.weights, mom.weights, v.weights, fans)]
    bs = [one(p, m, vv, f) for p, m, vv, f in zip(params.biases, mom.biases, v.biases, fans)]
    return ws, bs


def global_inputs(
    time: Tensor,
    cfg: FeatureConfig,
    loss_state: dict[str, Tensor] | None = None,
    fraction: Tensor | None = None,
    stats: tuple[list[Tensor], list[Tensor]] | None = None,
) -> Tensor | PerTensor:
    """Join the global inputs the config asks for: ``(B, T)``, or :class:`~nfopt.nn.PerTensor`
    with per-tensor statistics appended to each tensor's copy of the globals."""
    parts = [time]
    if cfg.loss_features:
        parts.append(loss_features(loss_state))
    if cfg.fraction:
        parts.append(fraction.to(time).expand(time.shape[0], -1))
    glob = torch.cat(parts, dim=1) if len(parts) > 1 else time
    if not cfg.tensor_features:
        return glob
    ws, bs = stats
    return PerTensor([torch.cat([glob, s.to(glob)], 1) for s in ws], [torch.cat([glob, s.to(glob)], 1) for s in bs])
