"""`LearnedUpdateRule`: a meta-model turned into a bounded, Adam-initialised update rule."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from nfopt.lopt import kernels
from nfopt.lopt.features import (
    FeatureConfig,
    build_features,
    constant,
    fan_ins,
    global_inputs,
    init_loss_state,
    tensor_stats,
    time_features,
    update_loss_state,
    update_momenta,
)
from nfopt.lopt.metamodels import build_meta_model
from nfopt.weightspace import NetworkSpec, WeightSpaceFeatures

__all__ = ["LearnedUpdateRule"]

Tensor = torch.Tensor
WSF = WeightSpaceFeatures


def _tensors(x: WSF) -> list[Tensor]:
    return [*x.weights, *x.biases]


def _zero_nonfinite(t: Tensor) -> Tensor:
    """``t`` with NaN and ±inf entries zeroed. Traced by ``torch.compile`` for the CPU as
    ``where(t - t == 0, t, 0)`` (``t - t`` is 0 exactly for finite ``t``, NaN otherwise):
    inductor's CPU code for ``nan_to_num`` tests NaN one float at a time, and in its vector loops
    this form is one compare. Other devices keep ``nan_to_num`` (nothing measured there favours the
    trick, and a code generator that reads ``t - t`` as 0 would zero every entry)."""
    if torch.compiler.is_compiling() and t.device.type == "cpu":
        return torch.where(t - t == 0, t, 0.0)
    return torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0)


#: ``tanh(x) ≈ x P(x²) / Q(x²)`` on ``|x| <= 9`` (beyond, ``tanh`` rounds to ±1 in float32):
#: degree-4 polynomials in ``x²`` fitted here for least maximum relative error (Lawson's
#: iteration on the linearised fit, float64: 2.1e-8), coefficients rounded to float32, lowest
#: degree first. In float32 arithmetic: at most 5 units in the last place of ``tanh`` (mean 0.65)
#: over ``[-12, 12]`` and ``±[1e-10, 12.6]``, never past ±1 (clamped).
_TANH_P = (1.0, 0.13381020724773407, 0.00349558237940073, 2.0608989871107042e-05, 1.3354534367238102e-08)
_TANH_Q = (1.0, 0.46714335680007935, 0.025876959785819054, 0.00032856257166713476, 7.776505981382797e-07)


def _tanh(t: Tensor) -> Tensor:
    """``tanh(t)``. Traced by ``torch.compile`` for the CPU as the rational function above
    (clamps, 8 multiply-adds and a division in inductor's vector loops): inductor's CPU ``tanh``
    calls SLEEF's 1-ulp ``tanhf8`` (~10 cycles an entry here, 126 µs for a 30,080-entry step, ~5%
    of a compiled PES estimate of the per-parameter MLP rule); the rational form took 56 µs.
    Eager and other devices: ``torch.tanh``."""
    if not (torch.compiler.is_compiling() and t.device.type == "cpu"):
        return torch.tanh(t)
    x = t.clamp(-9.0, 9.0)
    x2 = x * x
    num, den = _TANH_P[-1], _TANH_Q[-1]
    for a, b in zip(_TANH_P[-2::-1], _TANH_Q[-2::-1]):
        num, den = num * x2 + a, den * x2 + b
    return (x * num / den).clamp(-1.0, 1.0)


class LearnedUpdateRule(nn.Module):
    r"""A learned optimizer (its parameters are the meta-parameters ``θ``).

    With meta-model outputs ``(d, m[, ℓ])`` on the features of :mod:`nfopt.lopt.features` and the
    Adam direction ``u`` (bias-corrected first/second moments, decays ``0.9/0.999``):

    .. math::  s = b\, e^{σ} e^{g(f)} e^{λ_T} (n_T / 64)^{α} \big( d\, e^{a m} + e^{ρ} u \big), \qquad
               p \leftarrow p - B \tanh(s / B)

    with small fixed ``a`` (``exp_mult``), ``b`` (``step_mult``, the base learning rate), learnable
    global log step-scale ``σ`` and log residual-scale ``ρ`` (both 0 at init), and a bound ``B`` on
    every per-parameter step. With ``lr_head`` the meta-model has a third output ``ℓ`` whose mean
    over each tensor ``T`` (a permutation-invariant pooled read-out: for an NFN it sees the whole
    layer) is that tensor's log step size, ``λ_T = R tanh(mean_T ℓ / R)`` with ``R = lr_range``:
    the authority to choose the step per task and per tensor. The meta-model's head starts at
    zero, so the untrained rule is Adam with learning rate ``b`` (up to the soft bound);
    non-finite steps are zeroed.

    With ``schedule_knots = K > 0`` the rule also has a learned step schedule over the fraction of
    training done ``f = t / num_steps`` (Celo's decoupled learned scheduler): ``g(f)`` is the
    piecewise-linear interpolation of ``K`` learnable log multipliers at ``f = 0, 1/(K-1), ..., 1``
    minus its mean over ``[0, 1]``: the schedule only redistributes the step over training (warm-up,
    decay), the average log step stays the rule's (all 0 at init: the untrained rule is still
    Adam). When the horizon is not known, ``g = 0``. The schedule is a few numbers, so it is
    meta-trained by evolution strategies over whole training runs
    (:class:`~nfopt.meta.estimators.EpisodeES`), which truncated unrolls cannot do without
    short-horizon bias.

    With ``width_exponent`` the rule also has a learnable width exponent ``α`` (θ entry
    ``width_alpha``, 0 at init): each tensor's step is multiplied by ``(n_T / 64)^α`` with ``n_T``
    its fan-in (inputs times kernel size), a power law in width in the spirit of µP / µLO. The
    meta-model sees the fan-in too (``tensor_features``), but what it learns of width holds only
    over the widths it was trained on; one exponent extrapolates to wider networks by
    construction. Like the schedule it is one number, meta-trained by evolution strategies over
    whole runs on a mixture of widths.

    ``kind``: ``"mlp"`` (per-parameter MLP), ``"nfn_np"``, ``"nfn_hnp"`` or ``"nft"``; one instance
    updates MLPs and CNNs of any depth and width. ``init(..., num_steps=N)`` tells the rule the
    horizon (its ``fraction`` input); without it that input reads "unknown".
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
        lr_head: bool = True,
        lr_range: float = 3.0,
        schedule_knots: int = 0,
        width_exponent: bool = False,
    ) -> None:
        super().__init__()
        if hand not in ("adam", "momentum", "none"):
            raise ValueError(f"hand={hand!r}: use 'adam', 'momentum' or 'none'")
        if lr_range <= 0:
            raise ValueError(f"lr_range={lr_range}: must be > 0")
        if schedule_knots < 0 or schedule_knots == 1:
            raise ValueError(f"schedule_knots={schedule_knots}: use 0 (no schedule) or >= 2 knots")
        self.kind, self.meta_kwargs = kind, dict(meta_model or {})
        self.features = features or FeatureConfig()
        if 0.9 not in self.features.decays:
            raise ValueError("features.decays must include 0.9 (the hand-designed direction's momentum)")
        self.exp_mult, self.step_mult, self.bound, self.hand = exp_mult, step_mult, bound, hand
        self.lr_head, self.lr_range, self.schedule_knots = lr_head, lr_range, schedule_knots
        self.width_exponent = width_exponent
        self.meta_model = build_meta_model(
            kind,
            self.features.num_entry_features,
            self.features.num_global_features,
            **{**self.meta_kwargs, "outputs": 3 if lr_head else 2},
        )
        self.log_step_scale = nn.Parameter(torch.zeros(()))
        self.log_hand_scale = nn.Parameter(torch.zeros(()))
        if schedule_knots:
            self.log_schedule = nn.Parameter(torch.zeros(schedule_knots))
        if width_exponent:
            self.width_alpha = nn.Parameter(torch.zeros(()))

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
            "lr_head": self.lr_head,
            "lr_range": self.lr_range,
            "schedule_knots": self.schedule_knots,
            "width_exponent": self.width_exponent,
        }

    @classmethod
    def from_config(cls, cfg: dict) -> LearnedUpdateRule:
        """Inverse of :meth:`config`; configs saved before ``lr_head``, the schedule or the width
        exponent existed rebuild without them."""
        cfg = {"lr_head": False, "schedule_knots": 0, "width_exponent": False, **cfg}
        cfg["features"] = FeatureConfig.from_dict(cfg["features"])
        return cls(**cfg)

    # ------------------------------------------------------------------ protocol
    def init(
        self, spec: NetworkSpec, population: int = 1, dtype=torch.float32, device=None, num_steps: int | None = None
    ) -> dict:
        k = len(self.features.decays)
        state = {
            "step": torch.zeros((), dtype=torch.long, device=device),
            "mom": WSF.zeros(spec, population, k, dtype=dtype, device=device),
            "v": WSF.zeros(spec, population, 1, dtype=dtype, device=device),
        }
        if self.features.loss_features:
            state.update(init_loss_state(population, dtype=dtype, device=device))
        if self._wants_horizon:
            state["num_steps"] = torch.tensor(int(num_steps or 0), dtype=torch.long, device=device)
        return state

    def update(
        self, theta: dict[str, Tensor] | None, state: dict, params: WSF, grads: WSF, loss: Any = None
    ) -> tuple[WSF, dict]:
        """One step for every member (see the class docstring); differentiable in ``theta``."""
        if theta is None:
            return self(state, params, grads, loss)
        return functional_call(self, theta, (state, params, grads, loss))

    def forward(self, state: dict, params: WSF, grads: WSF, loss: Any = None) -> tuple[WSF, dict]:
        cfg = self.features
        k = cfg.decays.index(0.9)
        fast = kernels.applies(
            params.weights[0], *_tensors(params), *_tensors(grads), *_tensors(state["mom"]), *_tensors(state["v"])
        )
        if fast:  # the fused kernels (no gradient flows through the features)
            steps_done = int(state["step"])  # steps done before this one
            mom, v, feats, stats = self._fused_features(state, params, grads, k, steps_done)
            adam = None
            time = time_features(state["step"], cfg, params.batch_size, params.dtype)
        else:
            decays = constant(tuple(cfg.decays), params.dtype, params.device)
            grads = grads.map(_zero_nonfinite)
            mom = update_momenta(state["mom"], grads, decays)
            v = WSF(  # 0.999 v + 0.001 g², two passes per tensor
                [torch.addcmul(a * 0.999, g, g, value=0.001) for a, g in zip(state["v"].weights, grads.weights)],
                [torch.addcmul(a * 0.999, g, g, value=0.001) for a, g in zip(state["v"].biases, grads.biases)],
            )
            m09 = mom.map(lambda t: t[:, k : k + 1])
            step = state["step"] + 1
            adam = self._adam(m09, v, step, params.dtype) if (self.hand == "adam" or cfg.adam_direction) else None
            feats, time = build_features(params, grads, mom, state["step"], cfg, adam=adam)
            stats = tensor_stats(params, m09, v) if cfg.tensor_features else None
        new_state = {"step": state["step"] + 1, "mom": mom, "v": v}
        loss_state = frac = None
        if cfg.loss_features:
            loss_t = None if loss is None else torch.as_tensor(loss, device=params.device)
            loss_state = update_loss_state(state, loss_t)
            new_state.update(loss_state)
        if self._wants_horizon:
            n = state["num_steps"]
            known = (n > 0).to(params.dtype)
            done = (state["step"].to(params.dtype) / n.clamp_min(1).to(params.dtype)).clamp(0, 1)
            frac = torch.stack([done * known, known])[None]  # (1, 2)
            new_state["num_steps"] = n
        glob = global_inputs(time, cfg, loss_state, frac, stats)
        out = self.meta_model(feats, glob)  # (P, 2 or 3, ...)
        scale = self.step_mult * torch.exp(self.log_step_scale)
        if self.schedule_knots:
            scale = scale * torch.exp(self.schedule_value(frac[0, 0], frac[0, 1]))
        hand_scale = torch.exp(self.log_hand_scale)
        base = scale / self.bound  # 0-dim
        if self.width_exponent:  # per layer, shared by its weight and bias: (fan-in / 64)^α
            layer_mult = [base * torch.exp(self.width_alpha * math.log(max(f, 1) / 64)) for f in fan_ins(params)]
        else:
            layer_mult = [base] * len(params)
        if fast and kernels.applies(out.weights[0], *_tensors(out), hand_scale, *layer_mult):
            new = self._fused_step(params, out, mom, v, k, steps_done, hand_scale, layer_mult)
        else:
            hand = {"adam": adam, "momentum": mom.map(lambda t: t[:, k : k + 1]), "none": None}[self.hand]
            if self.hand == "adam" and adam is None:  # features from the kernel: Adam's direction again
                adam = hand = self._adam(mom.map(lambda t: t[:, k : k + 1]), v, state["step"] + 1, params.dtype)
            new = self._step(params, out, hand, hand_scale, layer_mult)
        return new, new_state

    def _fused_features(
        self, state: dict, params: WSF, grads: WSF, k: int, step: int
    ) -> tuple[WSF, WSF, WSF, tuple | None]:
        """The new momenta and second moment, the per-entry features and (with
        ``tensor_features``) the per-tensor statistics, through :func:`nfopt.lopt.kernels.features`
        (``k``: the index of decay 0.9; ``step``: steps done before this one)."""
        cfg = self.features
        fans = fan_ins(params)

        def run(ps, gs, ms, vs) -> list:
            return [
                kernels.features(p, g, m, v, cfg.decays, k, step, cfg.eps, cfg.adam_direction, f)
                for p, g, m, v, f in zip(ps, gs, ms, vs, fans)
            ]

        fw = run(params.weights, grads.weights, state["mom"].weights, state["v"].weights)
        fb = run(params.biases, grads.biases, state["mom"].biases, state["v"].biases)

        def wsf(field: str) -> WSF:
            return WSF([getattr(x, field) for x in fw], [getattr(x, field) for x in fb])

        stats = ([x.stats for x in fw], [x.stats for x in fb]) if cfg.tensor_features else None
        return wsf("mom"), wsf("v"), wsf("feats"), stats

    def _fused_step(
        self, params: WSF, out: WSF, mom: WSF, v: WSF, k: int, step: int, hand_scale: Tensor, layer_mult: list[Tensor]
    ) -> WSF:
        """:meth:`_step` through :func:`nfopt.lopt.kernels.apply_step` (Adam's direction or the
        momentum recomputed there from the new ``mom`` and ``v``; ``k``, ``step`` as in
        :meth:`_fused_features`)."""
        hs = float(hand_scale)
        mults = [float(m) for m in layer_mult]

        def run(ps, os, ms, vs) -> list[Tensor]:
            return [
                kernels.apply_step(
                    p, o, self.hand, m, k, vv, step, hs, self.exp_mult, mult, self.bound, self.lr_range, self.lr_head
                )
                for p, o, m, vv, mult in zip(ps, os, ms, vs, mults)
            ]

        return WSF(
            run(params.weights, out.weights, mom.weights, v.weights),
            run(params.biases, out.biases, mom.biases, v.biases),
        )

    def _step(self, params: WSF, out: WSF, hand: WSF | None, hand_scale: Tensor, layer_mult: list[Tensor]) -> WSF:
        """``p - B tanh(s / B)`` for every tensor (see the class docstring), in PyTorch ops."""
        a, bound, r = self.exp_mult, self.bound, self.lr_range

        def delta(o: Tensor, h: Tensor | None, mult: Tensor) -> Tensor:
            e = torch.exp(a * o[:, 1:2])
            s = o[:, :1] * e if h is None else torch.addcmul(hand_scale * h, o[:, :1], e)
            if self.lr_head:  # per-tensor log step: the tensor's mean of the third output -> (B, 1, 1..)
                lam = o[:, 2:3].mean(dim=tuple(range(2, o.ndim)), keepdim=True)
                mult = mult * torch.exp(r * torch.tanh(lam / r))
            s = bound * _tanh(s * mult)
            return _zero_nonfinite(s)  # non-finite steps are zeroed

        hw = hand.weights if hand is not None else [None] * len(params)
        hb = hand.biases if hand is not None else [None] * len(params)
        return WSF(
            [p - delta(o, h, m) for p, o, h, m in zip(params.weights, out.weights, hw, layer_mult)],
            [p - delta(o, h, m) for p, o, h, m in zip(params.biases, out.biases, hb, layer_mult)],
        )

    @property
    def _wants_horizon(self) -> bool:
        return self.features.fraction or bool(self.schedule_knots)

    def schedule_value(self, fraction: Tensor, known: Tensor) -> Tensor:
        """``g(f)``: the learned log step multiplier at training fraction ``f`` (the knots'
        interpolant minus its mean over ``[0, 1]``) when the horizon is ``known`` (1), else 0;
        a 0-dim tensor."""
        w = self.log_schedule
        k = w.shape[0] - 1
        x = fraction.clamp(0, 1) * k
        knots = torch.arange(k + 1, dtype=x.dtype, device=x.device)
        at = (w * (1 - (x - knots).abs()).clamp_min(0)).sum()  # linear interpolation by hat functions
        mean = (w[:-1] + w[1:]).mean() / 2  # the integral of the interpolant over [0, 1]
        return known * (at - mean)

    @staticmethod
    def _adam(m: WSF, v: WSF, step: Tensor, dtype: torch.dtype) -> WSF:
        """Adam's bias-corrected direction ``m̂ / (sqrt(v̂) + 1e-8)`` (decays 0.9, 0.999)."""
        t = step.to(dtype)
        # 1 - β^t as 1 - exp(t log β): inductor computes these scalars inside its vector loops, and
        # libm's powf there (errno kept: not hoisted) cost ~2% of a compiled inner step; expf less.
        c1, c2 = 1 - torch.exp(t * math.log(0.9)), 1 - torch.exp(t * math.log(0.999))

        def one(a: Tensor, b: Tensor) -> Tensor:  # + tiny: finite gradients where v = 0
            return (a / c1) / (torch.sqrt(b / c2 + 1e-30) + 1e-8)

        return WSF([one(a, b) for a, b in zip(m.weights, v.weights)], [one(a, b) for a, b in zip(m.biases, v.biases)])

    def extra_repr(self) -> str:
        return (
            f"kind={self.kind!r}, features={self.features.num_features}, step_mult={self.step_mult}, "
            f"exp_mult={self.exp_mult}, bound={self.bound}, hand={self.hand!r}, lr_head={self.lr_head}, "
            f"schedule_knots={self.schedule_knots}, width_exponent={self.width_exponent}, "
            f"lr={self.step_mult * math.exp(self.log_step_scale.item()):.2e}"
        )
