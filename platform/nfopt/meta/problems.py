"""Inner problems for meta-training: what an estimator unrolls.

An inner problem is stateless; its *state* (inner parameters, optimizer state, step count,
horizon, minibatch seed) is a dict the estimator keeps, so antithetic branches can start from
the same state and persistent estimators can keep several. ``unroll(theta, state, steps)``
returns the meta-loss of ``steps`` inner steps, the new state and info; it is differentiable in
``theta`` when ``theta`` requires grad, and draws its minibatches from the state alone, so two
calls from one state see the same data (common random numbers for antithetic estimates).
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

import torch
from torch.utils import _pytree as pytree

from nfopt.lopt.rules import LearnedUpdateRule
from nfopt.nn.compiled import compile_bound
from nfopt.specs import child_seed
from nfopt.tasks import TaskSampler
from nfopt.tasks.batched import MLPPlan, mlp_loss_and_grad

__all__ = ["META_LOSSES", "InnerProblem", "MetaLoss", "QuadraticProblem", "TaskProblem", "rematerialized"]

#: What a task problem's unroll returns as meta-loss (see :class:`TaskProblem`); job specs use it too.
MetaLoss = Literal["mean", "log", "final", "tail"]
META_LOSSES: tuple[str, ...] = get_args(MetaLoss)

Tensor = torch.Tensor
Theta = dict[str, Tensor]


class _Remat(torch.autograd.Function):
    """``fn(*args)`` run without keeping its graph; the backward runs it again with grad and
    back-propagates through that. Unlike ``torch.utils.checkpoint`` it works when ``fn`` uses
    ``torch.func`` transforms (no saved-tensor hooks) and for any pytree of tensors in and out."""

    @staticmethod
    def forward(ctx, fn, in_spec, *leaves):
        ctx.fn, ctx.in_spec = fn, in_spec
        ctx.save_for_backward(*leaves)
        with torch.no_grad():
            out = fn(*pytree.tree_unflatten(list(leaves), in_spec))
        out_leaves = pytree.tree_leaves(out)
        ctx.mark_non_differentiable(*[t for t in out_leaves if not t.is_floating_point()])
        return tuple(out_leaves)

    @staticmethod
    def backward(ctx, *grad_out):
        leaves = [t.detach().requires_grad_(t.requires_grad) for t in ctx.saved_tensors]
        with torch.enable_grad():
            out = ctx.fn(*pytree.tree_unflatten(leaves, ctx.in_spec))
        pairs = [(o, g) for o, g in zip(pytree.tree_leaves(out), grad_out) if o.requires_grad and g is not None]
        wrt = [t for t in leaves if t.requires_grad]
        grads = iter(torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True))
        return (None, None, *[next(grads) if t.requires_grad else None for t in leaves])


def rematerialized(fn, *args):
    """``fn(*args)`` (a pytree of tensors in, one out) whose activations are recomputed in the
    backward pass instead of kept: memory of the inputs and outputs only, one extra forward.
    Gradients flow to the tensors in ``args`` only: pass everything differentiable as an
    argument (tensors ``fn`` closes over are constants to it)."""
    leaves, in_spec = pytree.tree_flatten(args)
    if not all(isinstance(t, Tensor) for t in leaves):
        raise TypeError("rematerialized: every leaf of the arguments must be a tensor")
    out_spec = []

    def run(*a):
        out = fn(*a)
        if not out_spec:
            out_spec.append(pytree.tree_structure(out))
        return out

    out_leaves = _Remat.apply(run, in_spec, *leaves)
    return pytree.tree_unflatten(list(out_leaves), out_spec[0])


#: Compiled graphs one fused step may keep (one per plan and shape class; dynamo's default is 8).
_RECOMPILE_LIMIT = 64


def _track(loss: Tensor, loss0: Tensor, clip_loss: float, logs: bool) -> tuple[Tensor, Tensor]:
    """The unroll's bookkeeping of one step's member losses ``(P,)``: the meta-loss term (mean of
    the normalised losses, or of their logs) and how many members blew up (non-finite, or over
    ``clip_loss`` times their start; those count as ``clip_loss``)."""
    norm = loss / loss0
    bad = ~torch.isfinite(norm) | (norm > clip_loss)
    norm = torch.where(bad, torch.full_like(norm, clip_loss), norm)
    return (torch.log(norm.clamp_min(1e-6)) if logs else norm).mean(), bad.sum()


def _step_generator(state: dict, k: int) -> torch.Generator:
    """The random draws of inner step ``state["step"] + k`` of the task ``state["seed"]``: the same
    on every path (compiled or eager unroll), so calls from one state see the same data."""
    return torch.Generator().manual_seed(child_seed(state["seed"], state["step"] + k))


def _step_indices(pop, state: dict, n: int, batch_size: int, first: int, count: int, rows: int) -> Tensor:
    """The minibatch indices of inner steps ``first .. first + count - 1`` (``pop.sample_batch``'s
    draws, on the CPU): ``(rows, P, batch_size)`` with those steps in the first ``count`` rows and
    zeros after (a compiled chunk's fixed length)."""
    idx = torch.zeros(rows, pop.size, batch_size, dtype=torch.long)
    for k in range(count):
        idx[k] = pop.batch_indices(n, batch_size, _step_generator(state, first + k))
    return idx


def _tail_steps(steps: int) -> int:
    """How many of an unroll's last steps the ``tail`` meta-loss averages."""
    return max(1, steps // 5)


#: Inner steps one compiled call runs at most (a ``while_loop`` over the chunk; longer unrolls
#: take several calls). Fixed, so one graph serves every unroll length.
_CHUNK = 16


def _fused_chunk(
    rule: LearnedUpdateRule,
    plan: MLPPlan,
    clip_loss: float,
    logs: bool,
    state_spec: pytree.TreeSpec,
    theta: Theta,
    x: Tensor,
    y: Tensor,
    idx: Tensor,
    first: Tensor,
    end: Tensor,
    scales: dict[str, Tensor],
    loss_scale: Tensor,
    loss0: Tensor,
    tail_from: Tensor,
    acc: tuple[Tensor, Tensor, Tensor, Tensor],
    leaves: list[Tensor],
):
    """Forward-only inner steps ``first .. end - 1`` of an unroll of a plain-MLP population, in one
    graph: a ``while_loop`` whose body is one step (minibatch losses ``(P,)`` on ``x[idx[i -
    first]], y[...]`` (``idx: (_CHUNK, P, batch)``, gathered inside), their gradients, the rule's
    update of the parameters and its state, and the step's bookkeeping (:func:`_track`)).
    ``leaves``: the flattened ``(params, rule state)`` (``state_spec``); ``acc``: the unroll's
    running sums ``(total, tail, last, bad)``: the meta-loss terms summed, summed from step
    ``tail_from`` on, the last one, and the blown-up members counted. Returns the step index
    reached, ``acc`` and ``leaves``. Compiled per plan (:meth:`TaskProblem._compiled_chunk`): one
    call per chunk instead of per step (dynamo's guards, the graph's Python wrapper and the unroll's
    own Python ran ~0.3 ms per compiled step, a fifth of a quickstart-size step here)."""

    def cond(i, *carry):
        return i < end

    def body(i, total, tail, last, bad, *state):
        params, rstate = pytree.tree_unflatten(list(state), state_spec)
        rows = idx.index_select(0, (i - first).reshape(1)).squeeze(0)  # (P, batch)
        loss, grads = mlp_loss_and_grad(plan, plan.params(params), x[rows], y[rows], scales, loss_scale)
        params, rstate = rule.update(theta, rstate, params, plan.features(grads), loss)
        term, blown = _track(loss, loss0, clip_loss, logs)
        tail = tail + torch.where(i >= tail_from, term, torch.zeros_like(term))
        # a loop's outputs may not alias its inputs: copy passed-through state (`is`, not id():
        # torch 2.11's dynamo cannot take id() of a tensor made inside the loop)
        out = [t.clone() if any(t is s for s in state) else t for t in pytree.tree_leaves((params, rstate))]
        return (i + 1, total + term, tail, term, bad + blown, *out)

    # the loop's carried inputs may alias neither each other nor the body's other inputs
    return torch.while_loop(cond, body, (first.clone(), *(a.clone() for a in acc), *leaves))


class InnerProblem(Protocol):
    def init_state(self, seed: int) -> dict: ...

    def unroll(self, theta: Theta, state: dict, steps: int) -> tuple[Tensor, dict, dict]: ...


@dataclass
class QuadraticProblem:
    """``x <- x - exp(theta["log_lr"]) * (grad f(x) + noise)`` on ``f(x) = ½ Σ a_i x_i²``; the
    meta-loss is the mean of ``f`` over the unroll. Small enough for exact meta-gradients
    (tests), with optional gradient noise so estimators see stochastic inner steps."""

    dim: int = 8
    noise: float = 0.0
    horizon: int = 1_000_000

    def init_state(self, seed: int) -> dict:
        g = torch.Generator().manual_seed(seed)
        return {
            "x": torch.randn(self.dim, generator=g, dtype=torch.float64),
            "a": torch.linspace(0.5, 2.0, self.dim, dtype=torch.float64),
            "step": 0,
            "seed": seed,
            "horizon": self.horizon,
        }

    def unroll(self, theta: Theta, state: dict, steps: int) -> tuple[Tensor, dict, dict]:
        x, a = state["x"], state["a"]
        lr = torch.exp(theta["log_lr"])
        total = x.new_zeros(())
        for k in range(steps):
            g = a * x
            if self.noise:
                gen = _step_generator(state, k)
                g = g + self.noise * torch.randn(self.dim, generator=gen, dtype=x.dtype)
            x = x - lr * g
            total = total + 0.5 * (a * x * x).sum()
        new = {**state, "x": x, "step": state["step"] + steps}
        return total / steps, new, {"done": new["step"] >= self.horizon, "nonfinite": 0}


class TaskProblem:
    """Training a ``population`` of networks of a task drawn from ``family`` (a task family or a
    mixture) with a learned update rule. State: the task seed, inner parameters (features), rule
    state, step, horizon, per-member initial loss. The meta-loss is the mean over members and
    unroll steps of the train minibatch loss divided by the member's initial loss
    (``meta_loss="mean"``), the mean of its logarithm (``"log"``: every task's relative progress
    counts alike, late gains as much as early ones), or the normalised loss at the last step
    only (``"final"``), or the mean log of it over the last fifth of the unroll (``"tail"``: how a
    whole training run ends, less noisy than one minibatch); non-finite or huge values are
    clipped at ``clip_loss`` and counted, and a
    task with a member whose loss is non-finite or above ``clip_loss`` times its initial loss
    (blown up, even if finite), or with non-finite parameters, is marked done: its estimator
    resets it with fresh members. The rule
    is told each episode's length (``num_steps``).

    Horizons come from the task (``horizon="task"``), a constant, or log-uniformly between
    ``horizon_range``; each new task starts at a random offset so tasks are not in lockstep.

    ``remat=True`` (for truncated backprop): each inner step of a differentiable unroll is
    recomputed in the backward pass instead of keeping its activations (:func:`rematerialized`),
    so memory holds one step's meta-model activations plus the ``(P, ~10, ...)`` states between
    steps, not ``steps`` x ``(P, ~40, ...)``; about one extra forward per step. The gradient is
    the same up to float rounding.

    ``compile=True`` (for the forward-only estimators: ES, PES, whole-run ES): the inner steps of
    a plain-MLP population (inner gradient and the rule's update) run as one ``torch.compile``
    graph per architecture plan (:class:`~nfopt.tasks.batched.MLPPlan`: depth, activations,
    loss; widths, batch sizes, reparameterisation and loss scales are inputs, not constants): a
    ``while_loop`` over up to ``_CHUNK`` (16) steps per call, so a PES truncation of 10 steps is
    one call (:func:`_fused_chunk`). Compiled on first use in each process: tens of seconds per
    plan on a CPU core, and not cached across processes (torch 2.13's graph cache skips
    ``while_loop`` graphs). A plan whose graph fails to compile warns once and runs eagerly. Other
    steps stay eager.
    """

    def __init__(
        self,
        family: TaskSampler,
        rule: LearnedUpdateRule,
        population: int = 4,
        meta_loss: str = "mean",
        horizon: str | int = "task",
        horizon_range: tuple[int, int] | None = None,
        clip_loss: float = 10.0,
        offsets: bool = True,
        device: str | torch.device = "cpu",
        remat: bool = False,
        compile: bool = False,
    ) -> None:
        if meta_loss not in META_LOSSES:
            raise ValueError(f"meta_loss={meta_loss!r}: use one of {', '.join(map(repr, META_LOSSES))}")
        self.family, self.rule, self.population = family, rule, population
        self.meta_loss, self.horizon, self.horizon_range = meta_loss, horizon, horizon_range
        self.clip_loss, self.offsets, self.remat, self.compile = clip_loss, offsets, remat, compile
        self._compiled: dict[tuple, Any] = {}
        self._eager_plans: set[MLPPlan] = set()  # plans whose compiled unroll failed (warned once)
        self.device = torch.device(device)
        self.rule.to(self.device)  # buffers; θ arrives with every unroll
        self._cache: dict[int, Any] = {}
        self._data: dict[int, tuple[Tensor, Tensor]] = {}

    def _task(self, seed: int):
        if seed not in self._cache:
            if len(self._cache) > 64:
                self._cache.clear()
            task = self.family.sample(seed)
            pop = task.population(self.population, seed)
            pop = pop.replace({k: v.to(self.device) for k, v in pop.params.items()})
            self._cache[seed] = (task, pop)
        return self._cache[seed]

    def _train_data(self, task) -> tuple[Tensor, Tensor]:
        """The task's training set on this problem's device (one copy per dataset)."""
        key = id(task.dataset)
        if key not in self._data:
            d = task.dataset
            self._data[key] = (d.x_train.to(self.device), d.y_train.to(self.device))
        return self._data[key]

    def _horizon(self, task, rng: torch.Generator) -> int:
        if self.horizon == "task":
            return task.horizon
        if self.horizon == "loguniform":
            lo, hi = self.horizon_range or self.family.horizon
            u = torch.rand((), generator=rng).item()
            return round(math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))))
        return int(self.horizon)

    def init_state(self, seed: int) -> dict:
        task, pop = self._task(seed)
        rng = torch.Generator().manual_seed(seed)
        horizon = self._horizon(task, rng)
        x_train, y_train = self._train_data(task)
        xb, yb = pop.sample_batch(x_train, y_train, task.batch_size, rng)
        loss0, _ = pop.loss_and_grad(xb, yb)
        start = int(torch.randint(horizon, (), generator=rng)) if self.offsets else 0
        return {
            "seed": seed,
            "params": pop.features().detach(),
            "rule": self.rule.init(pop.spec, self.population, device=self.device, num_steps=horizon - start),
            "step": 0,
            "start": start,  # the offset only shortens this task's first episode
            "horizon": horizon,
            "loss0": loss0.detach().clamp_min(1e-8),
        }

    def _step(self, pop, theta: Theta, params, rstate: dict, xb: Tensor, yb: Tensor):
        """One inner step: the members' minibatch losses ``(P,)`` at ``params`` and the rule's
        update of ``params`` and its state."""
        loss, grads = pop.loss_and_grad(xb, yb, pop.params_from_features(params))
        params, rstate = self.rule.update(theta, rstate, params, pop.features(grads), loss)
        return loss, params, rstate

    @property
    def _log_losses(self) -> bool:
        """Whether the meta-loss averages log normalised losses (``log``/``tail``) or the losses."""
        return self.meta_loss in ("log", "tail")

    def _compiled_chunk(self, plan: MLPPlan, state_spec: pytree.TreeSpec):
        """The compiled :func:`_fused_chunk` for a plan (and the layout of its state)."""
        key = (plan, state_spec)
        if key not in self._compiled:
            # Guards on tensors only: every input that varies between calls is a tensor, and the
            # rule, plan and bookkeeping constants are fixed per compiled function.
            self._compiled[key] = compile_bound(
                _fused_chunk, self.rule, plan, self.clip_loss, self._log_losses, state_spec, device=self.device
            )
        return self._compiled[key]

    def _unroll_compiled(self, task, pop, theta: Theta, state: dict, steps: int):
        """:meth:`unroll`'s steps through :func:`_fused_chunk`, ``_CHUNK`` steps per call:
        ``(meta-loss, params, rule state, blown-up members counted)``. The same minibatches as the
        eager steps (drawn here, ``(_CHUNK, P, batch)`` per call)."""
        x_train, y_train = self._train_data(task)
        leaves, state_spec = pytree.tree_flatten((state["params"], state["rule"]))
        fused = self._compiled_chunk(pop.plan, state_spec)
        one = next(iter(theta.values())).new_ones(())
        scales = {k: one * pop.scales.get(k, 1.0) for k in pop.params}
        step_at = torch.zeros((), dtype=torch.long, device=self.device)  # no two inputs may share storage
        tail_from = torch.tensor(steps - _tail_steps(steps), device=self.device)
        acc = (one.new_zeros(()), one.new_zeros(()), one.new_zeros(()), torch.zeros_like(step_at))
        for c0 in range(0, steps, _CHUNK):
            n = min(_CHUNK, steps - c0)
            idx = _step_indices(pop, state, len(x_train), task.batch_size, c0, n, _CHUNK)
            end = step_at + n
            args = (x_train, y_train, idx.to(self.device), step_at, end, scales, one * pop.loss_scale)
            out = fused(theta, *args, state["loss0"], tail_from, acc, leaves)
            step_at, acc, leaves = out[0], tuple(out[1:5]), list(out[5:])
        params, rstate = pytree.tree_unflatten(leaves, state_spec)
        total, tail, last, bad = acc
        meta = {"final": last, "tail": tail / _tail_steps(steps)}.get(self.meta_loss, total / steps)
        return meta, params, rstate, bad

    def unroll(self, theta: Theta, state: dict, steps: int) -> tuple[Tensor, dict, dict]:
        task, pop = self._task(state["seed"])
        theta = {k: v.to(self.device) for k, v in theta.items()}
        out = None
        if self.compile and pop.plan is not None and not torch.is_grad_enabled() and pop.plan not in self._eager_plans:
            try:
                with torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT):
                    out = self._unroll_compiled(task, pop, theta, state, steps)
            except torch._dynamo.exc.TorchDynamoException as err:  # nothing changed: its inputs are not mutated
                self._eager_plans.add(pop.plan)
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                warnings.warn(
                    f"compile=True: the compiled unroll failed for plan {pop.plan} ({type(err).__name__}: {first}); "
                    "this problem runs that plan's steps eagerly (the same function, slower)",
                    RuntimeWarning,
                    stacklevel=2,
                )
        if out is None:
            out = self._unroll_eager(task, pop, theta, state, steps)
        meta, params, rstate, nonfinite = out
        step = state["step"] + steps
        finite = torch.stack([torch.isfinite(t).all() for t in params.tensors()]).all()
        nonfinite, finite = torch.stack([nonfinite, finite.long()]).tolist()  # the unroll's one host sync
        new = {**state, "params": params, "rule": rstate, "step": step}
        done = nonfinite > 0 or not finite or step + state["start"] >= state["horizon"]
        return meta, new, {"done": done, "nonfinite": nonfinite, "inner_steps": steps * self.population}

    def _unroll_eager(self, task, pop, theta: Theta, state: dict, steps: int):
        """:meth:`unroll`'s steps one by one (differentiable in ``theta``); returns as
        :meth:`_unroll_compiled`."""
        x_train, y_train = self._train_data(task)
        params, rstate = state["params"], state["rule"]
        losses = []
        nonfinite = torch.zeros((), dtype=torch.long, device=self.device)  # on device: no per-step sync
        # every step's minibatch indices, one copy to the device per unroll
        idx = _step_indices(pop, state, len(x_train), task.batch_size, 0, steps, steps).to(self.device)
        for k in range(steps):
            xb, yb = x_train[idx[k]], y_train[idx[k]]
            if self.remat and torch.is_grad_enabled() and any(v.requires_grad for v in theta.values()):
                step = functools.partial(self._step, pop)
                loss, params, rstate = rematerialized(step, theta, params, rstate, xb, yb)
            else:
                loss, params, rstate = self._step(pop, theta, params, rstate, xb, yb)
            term, bad = _track(loss, state["loss0"], self.clip_loss, self._log_losses)
            nonfinite = nonfinite + bad  # blown-up members reset the task
            losses.append(term)
        if self.meta_loss == "final":
            meta = losses[-1]
        elif self.meta_loss == "tail":
            meta = torch.stack(losses[-_tail_steps(steps) :]).mean()
        else:
            meta = torch.stack(losses).mean()
        return meta, params, rstate, nonfinite
