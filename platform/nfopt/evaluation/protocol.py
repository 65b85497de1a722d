"""The held-out evaluation protocol: every optimizer trains the same initialisations; baselines
have their learning rate tuned per task on a log grid with *tuning seeds* (initialisations and
minibatch order) that are never used for evaluation.

Seeds are members of one :class:`~nfopt.tasks.Population`, so each optimizer (and each tuning
grid, one member per (learning rate, tuning seed)) trains all of them in one batched run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from nfopt.lopt import SGD, Adam
from nfopt.tasks import Task

__all__ = [
    "ADAM_LRS",
    "BASELINES",
    "DEFAULT_ADAM",
    "EVAL_BATCH_SEED",
    "EVAL_SEED0",
    "SGD_LRS",
    "TUNE_BATCH_SEED",
    "TUNE_SEED0",
    "EvalSettings",
    "OptimizerResult",
    "TaskResult",
    "evaluate_suite",
    "evaluate_task",
    "train_population",
    "tune_lr",
]

EVAL_SEED0, TUNE_SEED0 = 10_000, 20_000  # initialisation seeds: evaluation k -> 10_000 + k, tuning -> 20_000 + k
EVAL_BATCH_SEED, TUNE_BATCH_SEED = 0, 1  # minibatch orders differ between tuning and evaluation too
DEFAULT_ADAM, DEFAULT_ADAM_LR = "adam_1e-3", 1e-3  # the untuned-Adam baseline's name and learning rate
ADAM_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
SGD_LRS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)

#: Tuned baselines: name -> (rule factory from a learning rate (scalar or per-member tensor), default grid)
BASELINES: dict[str, tuple[Callable, tuple[float, ...]]] = {
    "adam": (lambda lr: Adam(lr=lr), ADAM_LRS),
    "sgd": (lambda lr: SGD(lr=lr, momentum=0.9), SGD_LRS),
}


@dataclass(frozen=True)
class EvalSettings:
    """How a suite is evaluated. ``steps=None`` uses each task's horizon."""

    seeds: int = 5
    tuning_seeds: int = 3
    baselines: tuple[str, ...] = ("adam", "sgd")
    adam_lrs: tuple[float, ...] = ADAM_LRS
    sgd_lrs: tuple[float, ...] = SGD_LRS
    steps: int | None = None
    default_adam: bool = True  # also Adam at its default lr 1e-3, untuned: what a user does without tuning

    def __post_init__(self) -> None:
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise ValueError(f"baselines: unknown {unknown}; choose from {sorted(BASELINES)}")
        if self.seeds < 1 or self.tuning_seeds < 1:
            raise ValueError("seeds and tuning_seeds must be >= 1")
        for name in ("adam_lrs", "sgd_lrs"):
            lrs = getattr(self, name)
            if not lrs or any(not math.isfinite(lr) or lr <= 0 for lr in lrs):
                raise ValueError(
                    f"{name}={list(lrs)}: give a non-empty grid of finite positive learning rates, e.g. 1e-3,1e-2,1e-1"
                )
        if self.steps is not None and self.steps < 1:
            raise ValueError(
                f"steps={self.steps}: give a positive number of inner steps (or leave it out: each horizon)"
            )

    @property
    def eval_seeds(self) -> list[int]:
        return [EVAL_SEED0 + k for k in range(self.seeds)]

    @property
    def tuning_seed_list(self) -> list[int]:
        return [TUNE_SEED0 + k for k in range(self.tuning_seeds)]

    def grid(self, baseline: str) -> tuple[float, ...]:
        return self.adam_lrs if baseline == "adam" else self.sgd_lrs


@torch.no_grad()
def train_population(rule, task: Task, seeds: list[int], steps: int | None = None, batch_seed: int = 0) -> dict:
    """Train one network per seed with ``rule`` (any update rule) for ``steps`` (default: the
    task's horizon). Returns per-seed ``(P,)`` final train loss (whole training set; inf when it
    diverged), test loss and accuracy (``None`` for regression), the minibatch losses
    ``curve (steps, P)`` and ``seconds`` of training (the update loop only)."""
    steps = steps or task.horizon
    pop = task.population_of(seeds)
    data = task.dataset
    params, state = pop.params, rule.init(pop.spec, len(seeds), num_steps=steps)
    gen = torch.Generator().manual_seed(batch_seed)
    curve = []
    start = time.perf_counter()
    for _ in range(steps):
        xb, yb = pop.sample_batch(data.x_train, data.y_train, task.batch_size, gen)
        loss, grads = pop.loss_and_grad(xb, yb, params)
        new, state = rule.update(None, state, pop.features(params), pop.features(grads), loss)
        params = pop.params_from_features(new)
        curve.append(loss)
    seconds = time.perf_counter() - start
    trained = pop.replace(params)
    train = trained.evaluate(data.x_train, data.y_train)
    test = trained.evaluate(data.x_test, data.y_test)
    inf = float("inf")
    return {
        "train_loss": torch.nan_to_num(train["loss"], nan=inf, posinf=inf),
        "test_loss": torch.nan_to_num(test["loss"], nan=inf, posinf=inf),
        "test_accuracy": test.get("accuracy"),
        "curve": torch.nan_to_num(torch.stack(curve), nan=inf, posinf=inf),
        "seconds": seconds,
    }


def tune_lr(
    make_rule: Callable, task: Task, lrs: Iterable[float], tuning_seeds: list[int], steps: int | None = None
) -> tuple[float, dict[float, float]]:
    """The learning rate on ``lrs`` with the lowest mean final train loss over ``tuning_seeds``
    (all (lr, seed) pairs train as one population), and the mean loss of every grid point."""
    lrs = list(lrs)
    members = [(lr, s) for lr in lrs for s in tuning_seeds]
    rule = make_rule(torch.tensor([lr for lr, _ in members]))
    res = train_population(rule, task, [s for _, s in members], steps, batch_seed=TUNE_BATCH_SEED)
    per_lr = res["train_loss"].view(len(lrs), len(tuning_seeds)).mean(1)
    return lrs[int(torch.argmin(per_lr))], {lr: float(v) for lr, v in zip(lrs, per_lr)}


@dataclass
class OptimizerResult:
    """One optimizer on one task: per-seed finals, the ``(steps, seeds)`` minibatch-loss curve,
    wall time per step of the whole population, and for tuned baselines the chosen lr and grid."""

    name: str
    train_loss: list[float]
    test_loss: list[float]
    test_accuracy: list[float] | None
    curve: list[list[float]]
    ms_per_step: float
    lr: float | None = None
    grid: dict[float, float] | None = None

    @property
    def mean_train_loss(self) -> float:
        return sum(self.train_loss) / len(self.train_loss)

    @property
    def lr_at_grid_edge(self) -> bool:
        return self.grid is not None and self.lr in (min(self.grid), max(self.grid))


@dataclass
class TaskResult:
    task: str
    steps: int
    eval_seeds: list[int]
    tuning_seeds: list[int]
    results: list[OptimizerResult] = field(default_factory=list)

    def __getitem__(self, name: str) -> OptimizerResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(f"{name!r} not evaluated on {self.task}; have {[r.name for r in self.results]}")


def _result(name: str, r: dict, steps: int, lr=None, grid=None) -> OptimizerResult:
    acc = r["test_accuracy"]
    return OptimizerResult(
        name=name,
        train_loss=r["train_loss"].tolist(),
        test_loss=r["test_loss"].tolist(),
        test_accuracy=None if acc is None else acc.tolist(),
        curve=r["curve"].tolist(),
        ms_per_step=1000.0 * r["seconds"] / steps,
        lr=lr,
        grid=grid,
    )


def evaluate_task(task: Task, optimizers: dict, settings: EvalSettings) -> TaskResult:
    """Tuned baselines (``settings.baselines``), then every optimizer in ``optimizers`` (name ->
    update rule, used as is), all on the evaluation seeds of ``task``."""
    steps = settings.steps or task.horizon
    out = TaskResult(task.name, steps, settings.eval_seeds, settings.tuning_seed_list)
    for base in settings.baselines:
        make_rule, _ = BASELINES[base]
        lr, grid = tune_lr(make_rule, task, settings.grid(base), settings.tuning_seed_list, steps)
        r = train_population(make_rule(lr), task, settings.eval_seeds, steps, batch_seed=EVAL_BATCH_SEED)
        out.results.append(_result(base, r, steps, lr, grid))
    if settings.default_adam:
        r = train_population(Adam(lr=DEFAULT_ADAM_LR), task, settings.eval_seeds, steps, batch_seed=EVAL_BATCH_SEED)
        out.results.append(_result(DEFAULT_ADAM, r, steps, DEFAULT_ADAM_LR))
    for name, rule in optimizers.items():
        r = train_population(rule, task, settings.eval_seeds, steps, batch_seed=EVAL_BATCH_SEED)
        out.results.append(_result(name, r, steps))
    return out


def evaluate_suite(tasks: list[Task], optimizers: dict, settings: EvalSettings, progress=None) -> list[TaskResult]:
    """:func:`evaluate_task` for every task in this process; ``progress(done, total, name)`` after each."""
    results = []
    for k, task in enumerate(tasks):
        results.append(evaluate_task(task, optimizers, settings))
        if progress is not None:
            progress(k + 1, len(tasks), task.name)
    return results
