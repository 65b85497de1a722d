"""Held-out evaluation of optimizers against Adam tuned per task.

Every optimizer trains each task from the same initialisations (evaluation seeds); Adam's
learning rate is chosen per task on a log grid with separate tuning seeds, so evaluation seeds
are never used for tuning. Members of a :class:`~nfopt.tasks.Population` are the seeds (and,
for tuning, the grid), so each optimizer trains all of them at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nfopt.lopt import Adam
from nfopt.tasks import Population, Task

__all__ = ["EvalRow", "evaluate_tasks", "train_population", "tune_adam"]

EVAL_SEED0, TUNE_SEED0 = 10_000, 20_000


@torch.no_grad()
def train_population(rule, task: Task, seeds: list[int], steps: int | None = None, batch_seed: int = 0) -> dict:
    """Train one network per seed with ``rule`` (any update rule) for ``steps`` (default: the
    task's horizon). Returns per-seed final train loss (whole training set), test loss and
    accuracy, and the per-step minibatch losses ``(steps, P)``."""
    steps = steps or task.horizon
    pop = Population.from_modules([task.build_model(s) for s in seeds], task.loss)
    data = task.dataset
    params, state = pop.params, rule.init(pop.spec, len(seeds))
    gen = torch.Generator().manual_seed(batch_seed)
    curve = []
    for _ in range(steps):
        xb, yb = pop.sample_batch(data.x_train, data.y_train, task.batch_size, gen)
        loss, grads = pop.loss_and_grad(xb, yb, params)
        new, state = rule.update(None, state, pop.features(params), pop.features(grads), loss)
        params = pop.params_from_features(new)
        curve.append(loss)
    trained = pop.replace(params)
    train = trained.evaluate(data.x_train, data.y_train)
    test = trained.evaluate(data.x_test, data.y_test)
    return {
        "train_loss": torch.nan_to_num(train["loss"], nan=float("inf")),
        "test_loss": test["loss"],
        "test_accuracy": test.get("accuracy"),
        "curve": torch.stack(curve),
    }


def tune_adam(task: Task, lrs: list[float], tuning_seeds: int = 3, steps: int | None = None) -> float:
    """The learning rate on ``lrs`` with the lowest mean final train loss over tuning seeds."""
    seeds = [TUNE_SEED0 + s for s in range(tuning_seeds)]
    members = [(lr, s) for lr in lrs for s in seeds]
    rule = Adam(lr=torch.tensor([lr for lr, _ in members]))
    res = train_population(rule, task, [s for _, s in members], steps, batch_seed=1)
    per_lr = res["train_loss"].view(len(lrs), tuning_seeds).mean(1)
    return lrs[int(torch.argmin(per_lr))]


@dataclass
class EvalRow:
    task: str
    optimizer: str
    train_loss: float
    test_accuracy: float | None
    adam_lr: float | None = None


def evaluate_tasks(
    optimizers: dict,
    tasks: list[Task],
    seeds: int = 5,
    tuning_seeds: int = 3,
    adam_lrs: tuple = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
    steps: int | None = None,
) -> list[EvalRow]:
    """Mean final train loss (and test accuracy) of every optimizer and of tuned Adam per task."""
    rows = []
    eval_seeds = [EVAL_SEED0 + s for s in range(seeds)]
    for task in tasks:
        lr = tune_adam(task, list(adam_lrs), tuning_seeds, steps)
        for name, rule in {"adam (tuned)": Adam(lr=lr), **optimizers}.items():
            r = train_population(rule, task, eval_seeds, steps)
            acc = None if r["test_accuracy"] is None else float(r["test_accuracy"].mean())
            rows.append(
                EvalRow(task.name, name, float(r["train_loss"].mean()), acc, lr if name.startswith("adam") else None)
            )
    return rows
