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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from nfopt.meta.messages import TaskEstimate, Theta
from nfopt.meta.problems import InnerProblem

__all__ = ["ES", "ESTIMATORS", "PES", "Estimator", "TruncatedBackprop", "detach_state"]

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


def _perturb(theta: Theta, sigma: float, gen: torch.Generator) -> Theta:
    return {k: sigma * torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in theta.items()}


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

    def init(self, problem: InnerProblem, seed: int) -> dict:
        return {"inner": problem.init_state(seed)}

    @torch.no_grad()
    def estimate(self, problem: InnerProblem, theta: Theta, state: dict, gen: torch.Generator):
        eps = _perturb(theta, self.sigma, gen)
        lp, s_plus, info = problem.unroll({k: theta[k] + eps[k] for k in theta}, state["inner"], self.unroll)
        lm, _, info_m = problem.unroll({k: theta[k] - eps[k] for k in theta}, state["inner"], self.unroll)
        coef = (lp - lm) / (2 * self.sigma**2)
        grad = {k: coef * e for k, e in eps.items()}
        info = _both(info, info_m)
        state = self.init(problem, _new_seed(gen)) if info["done"] or info_m["done"] else {"inner": s_plus}
        return TaskEstimate(grad, _metrics((lp + lm) / 2, info), state)


@dataclass
class PES:
    sigma: float = 0.01
    unroll: int = 10

    def init(self, problem: InnerProblem, seed: int) -> dict:
        inner = problem.init_state(seed)
        return {"plus": inner, "minus": inner, "xi": None}

    @torch.no_grad()
    def estimate(self, problem: InnerProblem, theta: Theta, state: dict, gen: torch.Generator):
        eps = _perturb(theta, self.sigma, gen)
        xi = eps if state["xi"] is None else {k: state["xi"][k] + eps[k] for k in eps}
        lp, s_plus, info = problem.unroll({k: theta[k] + eps[k] for k in theta}, state["plus"], self.unroll)
        lm, s_minus, info_m = problem.unroll({k: theta[k] - eps[k] for k in theta}, state["minus"], self.unroll)
        coef = (lp - lm) / (2 * self.sigma**2)
        grad = {k: coef * x for k, x in xi.items()}
        info = _both(info, info_m)
        done = info["done"] or info_m["done"]
        state = self.init(problem, _new_seed(gen)) if done else {"plus": s_plus, "minus": s_minus, "xi": xi}
        return TaskEstimate(grad, _metrics((lp + lm) / 2, info), state)


@dataclass
class TruncatedBackprop:
    unroll: int = 10

    def init(self, problem: InnerProblem, seed: int) -> dict:
        return {"inner": problem.init_state(seed)}

    def estimate(self, problem: InnerProblem, theta: Theta, state: dict, gen: torch.Generator):
        with torch.enable_grad():
            th = {k: v.detach().requires_grad_() for k, v in theta.items()}
            loss, new, info = problem.unroll(th, state["inner"], self.unroll)
            grads = torch.autograd.grad(loss, list(th.values()), allow_unused=True)
        grad = {k: (g if g is not None else torch.zeros_like(th[k])) for k, g in zip(th, grads)}
        state = self.init(problem, _new_seed(gen)) if info["done"] else {"inner": detach_state(new)}
        return TaskEstimate(grad, _metrics(loss.detach(), info), state)


ESTIMATORS = {"es": ES, "pes": PES, "tbptt": TruncatedBackprop}
