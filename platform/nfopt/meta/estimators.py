"""Meta-gradient estimators behind one protocol.

``state = est.init(problem, seed)`` holds everything an estimator keeps for one inner task;
``grad, metrics, state = est.estimate(problem, theta, state, generator)`` (a
:class:`~nfopt.meta.messages.TaskEstimate`) returns an estimate of
the meta-loss gradient for that task. Tasks whose episode ends (horizon reached, non-finite
parameters) are reset to a fresh seed drawn from ``generator``.

* :class:`ES` — antithetic evolution strategies over a truncation of ``unroll`` inner steps
  (both branches from the same inner state and minibatches; the task continues along the
  positive branch). Biased for truncated unrolls, unbiased for the smoothed loss of one.
* :class:`PES` — persistent ES (Vicol et al., 2021): each branch keeps its own inner state and
  the accumulated perturbations ``ξ`` of the episode; ``(L⁺ - L⁻) ξ / (2σ²)`` is unbiased for the
  gradient of the smoothed loss over the whole episode.
* :class:`TruncatedBackprop` — autograd through the unroll (exact within a truncation).
* :class:`EpisodeES` — antithetic ES over *whole* training runs (a fresh task, network
  initialisations and horizon per estimate): no truncation, so no short-horizon bias, at the
  cost of the variance ES has in many dimensions; for the few meta-parameters of a learned
  step schedule and global step size (``params``), as Celo meta-trains its scheduler.

Every estimator takes ``params``: the names of the θ entries it estimates (an entry matches a
name equal to it or a dotted prefix of it, e.g. ``meta_model``); the others get zero gradient,
so the meta-optimizer leaves them where they are. ``None`` (the default) is all of θ.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from nfopt.meta.messages import TaskEstimate, Theta
from nfopt.meta.problems import InnerProblem

__all__ = [
    "ES",
    "ESTIMATORS",
    "PES",
    "EpisodeES",
    "Estimator",
    "EstimatorKind",
    "TruncatedBackprop",
    "detach_state",
    "selected",
]

Tensor = torch.Tensor


def detach_state(state):
    from nfopt.weightspace import WeightSpaceFeatures

    if isinstance(state, Tensor | WeightSpaceFeatures):
        return state.detach()
    if isinstance(state, dict):
        return {k: detach_state(v) for k, v in state.items()}
    return state


def _new_seed(gen: torch.Generator) -> int:
    return int(torch.randint(2**31 - 1, (), generator=gen))


def selected(name: str, params: Sequence[str] | None) -> bool:
    """Whether θ entry ``name`` is among ``params`` (equal to one, or under one as a dotted prefix)."""
    return params is None or any(name == p or name.startswith(p + ".") for p in params)


def _perturb(theta: Theta, sigma: float, gen: torch.Generator, params: Sequence[str] | None = None) -> Theta:
    """Gaussian perturbations of the selected entries (zeros elsewhere), drawn in θ's order on the
    CPU generator ``gen`` (the same draws whatever device θ is on), placed on θ's device."""
    return {
        k: (sigma * torch.randn(v.shape, generator=gen, dtype=v.dtype)).to(v.device)
        if selected(k, params)
        else torch.zeros_like(v)
        for k, v in theta.items()
    }


def _antithetic(problem: InnerProblem, theta: Theta, eps: Theta, sigma: float, plus, minus, steps: int):
    """Unroll ``θ + ε`` from ``plus`` and ``θ - ε`` from ``minus`` for ``steps`` inner steps;
    ``(coef, mean loss, new plus state, new minus state, info of the pair, done)`` with
    ``coef = (L⁺ - L⁻) / (2σ²)``, the factor every antithetic estimate multiplies its
    perturbation by."""
    lp, s_plus, info = problem.unroll({k: theta[k] + eps[k] for k in theta}, plus, steps)
    lm, s_minus, info_m = problem.unroll({k: theta[k] - eps[k] for k in theta}, minus, steps)
    coef = ((lp - lm) / (2 * sigma**2)).to(next(iter(eps.values())).device)  # the losses' device may not be θ's
    return coef, (lp + lm) / 2, s_plus, s_minus, _both(info, info_m), info["done"] or info_m["done"]


def _both(info: dict, info_m: dict) -> dict:
    """Info of an antithetic pair: counts (non-finite losses, inner steps taken) of both branches."""
    keys = ("nonfinite", "inner_steps")
    return {**info, **{k: info.get(k, 0) + info_m.get(k, 0) for k in keys}}


def _metrics(loss: Tensor, info: dict) -> dict:
    return {"meta_loss": float(loss), "nonfinite": info.get("nonfinite", 0), "inner_steps": info.get("inner_steps", 0)}


class Estimator(Protocol):
    """What every meta-gradient estimator provides (see the module docstring)."""

    def init(self, problem: InnerProblem, seed: int) -> dict: ...

    def estimate(self, problem: InnerProblem, theta: Theta, state: dict, gen: torch.Generator) -> TaskEstimate: ...


@dataclass
class ES:
    sigma: float = 0.01
    unroll: int = 10
    params: Sequence[str] | None = None

    def init(self, problem: InnerProblem, seed: int) -> dict:
        return {"inner": problem.init_state(seed)}

    @torch.no_grad()
    def estimate(self, problem: InnerProblem, theta: Theta, state: dict, gen: torch.Generator):
        eps = _perturb(theta, self.sigma, gen, self.params)
        inner = state["inner"]
        coef, loss, s_plus, _, info, done = _antithetic(problem, theta, eps, self.sigma, inner, inner, self.unroll)
        grad = {k: coef * e for k, e in eps.items()}
        state = self.init(problem, _new_seed(gen)) if done else {"inner": s_plus}
        return TaskEstimate(grad, _metrics(loss, info), state)


@dataclass
class PES:
    sigma: float = 0.01
    unroll: int = 10
    params: Sequence[str] | None = None

    def init(self, problem: InnerProblem, seed: int) -> dict:
        inner = problem.init_state(seed)
        return {"plus": inner, "minus": inner, "xi": None}

    @torch.no_grad()
    def estimate(self, problem: InnerProblem, theta: Theta, state: dict, gen: torch.Generator):
        eps = _perturb(theta, self.sigma, gen, self.params)
        xi = eps if state["xi"] is None else {k: state["xi"][k] + eps[k] for k in eps}
        coef, loss, s_plus, s_minus, info, done = _antithetic(
            problem, theta, eps, self.sigma, state["plus"], state["minus"], self.unroll
        )
        grad = {k: coef * x for k, x in xi.items()}
        state = self.init(problem, _new_seed(gen)) if done else {"plus": s_plus, "minus": s_minus, "xi": xi}
        return TaskEstimate(grad, _metrics(loss, info), state)


@dataclass
class TruncatedBackprop:
    unroll: int = 10
    params: Sequence[str] | None = None

    def init(self, problem: InnerProblem, seed: int) -> dict:
        return {"inner": problem.init_state(seed)}

    def estimate(self, problem: InnerProblem, theta: Theta, state: dict, gen: torch.Generator):
        with torch.enable_grad():
            th = {k: v.detach().requires_grad_(selected(k, self.params)) for k, v in theta.items()}
            loss, new, info = problem.unroll(th, state["inner"], self.unroll)
            wrt = [k for k in th if th[k].requires_grad]
            grads = {}  # nothing selected reaches the loss: a zero gradient
            if wrt and loss.requires_grad:
                grads = dict(zip(wrt, torch.autograd.grad(loss, [th[k] for k in wrt], allow_unused=True)))
        grad = {k: (grads.get(k) if grads.get(k) is not None else torch.zeros_like(th[k])) for k in th}
        state = self.init(problem, _new_seed(gen)) if info["done"] else {"inner": detach_state(new)}
        return TaskEstimate(grad, _metrics(loss.detach(), info), state)


@dataclass
class EpisodeES:
    """Antithetic ES over whole training runs: each estimate draws a fresh task (its own seed:
    networks, data order, horizon), trains it from scratch to its horizon with ``θ + ε`` and with
    ``θ - ε`` on the same minibatches, and returns ``(L⁺ - L⁻) ε / (2σ²)`` — unbiased for the
    gradient of the Gaussian-smoothed whole-run meta-loss (use the problem's ``"tail"`` meta-loss
    to score how training ends). The problem should not shorten episodes by random offsets."""

    sigma: float = 0.1
    params: Sequence[str] | None = None

    def init(self, problem: InnerProblem, seed: int) -> dict:
        return {"seed": seed}

    @torch.no_grad()
    def estimate(self, problem: InnerProblem, theta: Theta, state: dict, gen: torch.Generator):
        inner = problem.init_state(state["seed"])
        steps = max(1, int(inner["horizon"]) - int(inner.get("start", 0)))
        eps = _perturb(theta, self.sigma, gen, self.params)
        coef, loss, _, _, info, _ = _antithetic(problem, theta, eps, self.sigma, inner, inner, steps)
        grad = {k: coef * e for k, e in eps.items()}
        return TaskEstimate(grad, _metrics(loss, info), self.init(problem, _new_seed(gen)))


EstimatorKind = Literal["es", "pes", "tbptt", "episode_es"]  # job specs' estimator.kind
ESTIMATORS: dict[str, type] = {"es": ES, "pes": PES, "tbptt": TruncatedBackprop, "episode_es": EpisodeES}
