"""Workers (shards of inner tasks) and the learner (averages estimates, clips, steps θ).

No Ray here: :class:`Worker` is a plain object and :class:`LocalPool` calls workers in process;
:mod:`nfopt.cluster` runs the same workers as Ray actors behind the same pool interface.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Protocol, runtime_checkable

import torch
from torch.utils import _pytree as pytree

from nfopt._files import atomic_save
from nfopt.meta.estimators import Estimator
from nfopt.meta.messages import Estimate, Theta, pack_theta, theta_layout, theta_views, unpack_theta

__all__ = ["Learner", "LocalPool", "Worker", "WorkerPool", "atomic_save"]

Tensor = torch.Tensor

#: Up to this many meta-parameters the learner's update runs on one thread (see :func:`_one_thread`).
_ONE_THREAD_MAX = 1 << 20


@contextlib.contextmanager
def _one_thread(numel: int) -> Iterator[None]:
    """Run the enclosed ops on one intra-op thread when ``numel`` is small. Between estimates the
    learner's process idles ~0.1 s, long enough for its OpenMP threads to sleep, and some ATen ops
    split even a few thousand floats between threads (``sqrt`` in Adam's step: grain 2048):
    waking the second thread made one Adam step of 3000 floats 7.8 ms instead of 0.74 ms here
    (2-core VM), ~10% of a quickstart outer step. The count is process-wide: other threads of the
    learner's process run on one intra-op thread meanwhile (~1 ms per outer step)."""
    n = torch.get_num_threads()
    if numel > _ONE_THREAD_MAX or n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class Worker:
    """Owns ``num_tasks`` inner tasks (their states never leave it) and returns the average of
    their meta-gradient estimates for a given θ. A problem that names its ``device`` (a
    :class:`~nfopt.meta.TaskProblem` on a GPU) gets θ there once per estimate, and the estimates
    are summed there; the average travels on the CPU."""

    def __init__(self, make_problem: Callable, estimator: Estimator, num_tasks: int, seed: int) -> None:
        self.problem = make_problem()
        self.estimator = estimator
        self.gen = torch.Generator().manual_seed(seed)
        self.states = [
            estimator.init(self.problem, int(torch.randint(2**31 - 1, (), generator=self.gen)))
            for _ in range(num_tasks)
        ]

    def estimate(self, theta: Theta) -> Estimate:
        t0 = time.perf_counter()
        device = getattr(self.problem, "device", None)
        if device is not None:  # one copy per estimate, not one per unroll (no-op on the CPU)
            theta = {k: v.to(device) for k, v in theta.items()}
        total: Theta | None = None
        losses, nonfinite, inner = [], 0, 0
        for k, st in enumerate(self.states):
            est = self.estimator.estimate(self.problem, theta, st, self.gen)
            self.states[k] = est.state
            total = est.grad if total is None else {n: total[n] + est.grad[n] for n in total}
            losses.append(est.metrics["meta_loss"])
            nonfinite += est.metrics["nonfinite"]
            inner += est.metrics.get("inner_steps", 0)
        n = len(self.states)
        grad = {k: (v / n).cpu() for k, v in total.items()}  # estimates travel on the CPU
        metrics = {
            "meta_loss": sum(losses) / n,
            "nonfinite": nonfinite,
            "inner_steps": inner,
            "compute_s": time.perf_counter() - t0,
        }
        return Estimate(grad, n, metrics)

    def estimate_flat(self, flat, layout: list[tuple[str, tuple[int, ...]]]) -> Estimate:
        """:meth:`estimate` with θ and the gradient as one flat numpy array each (what travels
        between processes: one buffer instead of one pickled tensor per parameter)."""
        est = self.estimate(unpack_theta(flat, layout))
        return est._replace(grad=pack_theta(est.grad))

    def get_state(self) -> dict:
        """The generator and the tasks' states, tensors on the CPU (a CPU-only head or machine can
        read them: checkpoints, Ray's object store)."""
        return {"gen": self.gen.get_state(), "states": _on(self.states, torch.device("cpu"))}

    def set_state(self, state: dict) -> None:
        """Restore :meth:`get_state`'s output; the tasks' tensors go to the problem's device."""
        self.gen.set_state(state["gen"])
        self.states = _on(state["states"], getattr(self.problem, "device", None))


def _on(states, device: torch.device | None):
    """``states`` (a pytree of tensors and weight-space features) with every tensor on ``device``
    (``None``: where they are)."""
    if device is None:
        return states
    return pytree.tree_map(lambda t: t.to(device) if isinstance(t, Tensor) else t, states)


@runtime_checkable
class WorkerPool(Protocol):
    """What the learner needs of its workers, wherever they run (:class:`LocalPool` here,
    :class:`nfopt.cluster.RayPool` as Ray actors): one :class:`Estimate` per live worker for a θ
    (``None`` for one that failed this step), and their states for checkpoints."""

    @property
    def size(self) -> int: ...

    def estimate_all(self, theta: Theta) -> list[Estimate | None]: ...

    def get_states(self) -> list[dict | None]: ...

    def set_states(self, states: list[dict | None]) -> None: ...


class LocalPool:
    """Workers in this process (tests, debugging, ``nfopt run --no-ray``)."""

    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers

    def estimate_all(self, theta: Theta) -> list[Estimate | None]:
        return [w.estimate(theta) for w in self.workers]

    def get_states(self) -> list[dict | None]:
        return [w.get_state() for w in self.workers]

    def set_states(self, states: list[dict | None]) -> None:
        for w, s in zip(self.workers, states):
            if s is not None:
                w.set_state(s)

    @property
    def size(self) -> int:
        return len(self.workers)


class Learner:
    """θ, an Adam meta-optimizer and the outer loop over a worker pool.

    Each :meth:`step`: every worker's estimate (weighted by its number of tasks) is averaged,
    the global norm is clipped to ``clip`` and Adam steps θ. Non-finite estimates are dropped
    and counted.

    With ``average_from = s``, every θ after outer step ``s`` is also folded into a uniform
    running mean (Polyak / stochastic-weight averaging of the meta-parameters): :meth:`final_theta`
    is that mean, which smooths the step-to-step noise of stochastic meta-gradients (single
    iterates of one run differ widely on held-out tasks: ``bench/results/ablation/budget.md``).
    """

    def __init__(
        self,
        theta: Theta,
        pool: WorkerPool,
        lr: float = 1e-3,
        clip: float = 1.0,
        seed: int = 0,
        average_from: int | None = None,
    ) -> None:
        dtypes = {v.dtype for v in theta.values()}
        if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
            raise ValueError(f"θ must share one floating dtype; got {sorted(map(str, dtypes))}")
        # θ is one flat leaf (D,); ``self.theta`` holds views of it by name. A step is then a
        # handful of whole-vector ops and one fused Adam kernel instead of ~10 ops per tensor
        # (0.74 ms for the MLP rule's 16 tensors here, ~2.7 ms on a cold core between estimates).
        self._flat = torch.cat([v.detach().reshape(-1) for v in theta.values()]).clone().requires_grad_()
        self.theta = theta_views(self._flat, theta_layout(theta))
        self.opt = torch.optim.Adam([self._flat], lr=lr, fused=True)
        self.pool, self.clip, self.step_count = pool, clip, 0
        self.average_from = average_from
        self._avg: Tensor | None = None  # running mean of θ (D,), once averaging started
        self.avg_count = 0
        torch.manual_seed(seed)

    @property
    def theta_avg(self) -> Theta | None:
        """The running mean of the averaged θs by name (``None`` before averaging starts)."""
        return None if self._avg is None else theta_views(self._avg, theta_layout(self.theta))

    def current_theta(self) -> Theta:
        return {k: v.detach() for k, v in self.theta.items()}

    def final_theta(self) -> Theta:
        """The θ to ship: the running mean of the averaged steps when there are any, else the
        current θ."""
        if self._avg is None:
            return self.current_theta()
        return {k: v.clone() for k, v in self.theta_avg.items()}

    def _fold_average(self) -> None:
        if self.average_from is None or self.step_count <= self.average_from:
            return
        self.avg_count += 1
        now = self._flat.detach()
        if self._avg is None:
            self._avg = now.clone()
        else:
            self._avg.lerp_(now, 1.0 / self.avg_count)  # mean += (θ - mean) / n

    def _flat_grad(self, grad: Theta) -> Tensor:
        """A θ-shaped estimate as one ``(D,)`` vector in θ's order."""
        return torch.cat([grad[k].reshape(-1) for k in self.theta]).to(self._flat.dtype)

    def step(self) -> dict:
        t0 = time.perf_counter()
        results = self.pool.estimate_all(self.current_theta())
        results = [r for r in results if r is not None]
        metrics: dict = {"workers": len(results)}
        with _one_thread(self._flat.numel()):
            self._update(results, metrics)
        metrics["nonfinite"] = sum(r.metrics["nonfinite"] for r in results)
        metrics["inner_steps"] = sum(r.metrics.get("inner_steps", 0) for r in results)
        compute = max((r.metrics["compute_s"] for r in results), default=0.0)
        metrics["step_s"] = time.perf_counter() - t0
        metrics["overhead"] = max(0.0, metrics["step_s"] - compute) / max(metrics["step_s"], 1e-9)
        self.step_count += 1
        self._fold_average()
        if self.avg_count:
            metrics["averaged_steps"] = self.avg_count
        return metrics

    def _update(self, results: list[Estimate], metrics: dict) -> None:
        """Average the finite estimates (weighted by their tasks), clip and step θ; fills
        ``metrics`` (``dropped_estimates``, ``grad_norm``, ``meta_loss``)."""
        good = []
        if results:
            grads = torch.stack([self._flat_grad(r.grad) for r in results])  # (W, D)
            finite = torch.isfinite(grads).all(dim=1).tolist()
            good = [k for k, ok in enumerate(finite) if ok]
        metrics["dropped_estimates"] = len(results) - len(good)
        total_n = sum(results[k].tasks for k in good)
        if total_n:
            w = grads.new_tensor([results[k].tasks / total_n for k in good])
            grad = w @ grads[good]  # (D,): the task-weighted mean
            norm = float(torch.linalg.vector_norm(grad))
            scale = min(1.0, self.clip / (norm + 1e-12)) if self.clip else 1.0
            self._flat.grad = grad * scale
            self.opt.step()
            metrics["grad_norm"] = norm
            metrics["meta_loss"] = sum(results[k].metrics["meta_loss"] * results[k].tasks for k in good) / total_n

    def state_dict(self, with_workers: bool = True) -> dict:
        return {
            "theta": self.current_theta(),
            "opt": self.opt.state_dict(),
            "step": self.step_count,
            "torch_rng": torch.get_rng_state(),
            "theta_avg": self.theta_avg,
            "avg_count": self.avg_count,
            "workers": self.pool.get_states() if with_workers else None,
        }

    def load_state_dict(self, sd: dict) -> None:
        with torch.no_grad():
            for k, v in sd["theta"].items():
                self.theta[k].copy_(v)
        self.opt.load_state_dict(_one_flat_param(sd["opt"], len(self.theta)))
        self.step_count = sd["step"]
        avg = sd.get("theta_avg")  # absent in checkpoints written before averaging existed
        self._avg = None if avg is None else torch.cat([avg[k].detach().reshape(-1) for k in self.theta]).clone()
        self.avg_count = int(sd.get("avg_count", 0))
        torch.set_rng_state(sd["torch_rng"])
        if sd.get("workers") is not None:
            self.pool.set_states(sd["workers"])


def _one_flat_param(opt_state: dict, tensors: int) -> dict:
    """An Adam state dict for the learner's one flat θ: checkpoints written before θ was flat
    hold one parameter per θ tensor (``tensors`` of them, in θ's order); their moments are
    concatenated."""
    groups = opt_state["param_groups"]
    if len(groups) != 1 or len(groups[0]["params"]) == 1:
        return opt_state
    ids = groups[0]["params"]
    if len(ids) != tensors:
        raise ValueError(f"the checkpoint's meta-optimizer has {len(ids)} parameters; this θ has {tensors} tensors")
    per = [opt_state["state"].get(i, {}) for i in ids]
    state = {}
    if all(per):
        state = {
            "step": torch.as_tensor(per[0]["step"]).clone(),  # a copy: Adam counts it in place
            **{k: torch.cat([p[k].reshape(-1) for p in per]) for k in ("exp_avg", "exp_avg_sq")},
        }
    return {"state": {0: state} if state else {}, "param_groups": [{**groups[0], "params": [0], "fused": True}]}
