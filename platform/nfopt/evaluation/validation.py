"""A fixed validation set of tasks for meta-training: the same few tasks, networks and
minibatches scored every N outer steps, so progress shows through the noise of which tasks each
outer step happened to draw, and the best θ so far can be kept.

The tasks are drawn once from the job's own family or mixture with seeds no training draw uses
(:data:`VALIDATION_SEED0` onwards; training draws 31-bit random seeds), trained from scratch by
the rule for a fixed horizon it is told, and scored by the mean over tasks and networks of
``log(final train loss / initial train loss)`` (whole training set; a diverged network counts as
:data:`DIVERGED_LOG_RATIO`).
"""

from __future__ import annotations

import math

import torch

from nfopt.evaluation.protocol import train_population
from nfopt.tasks import Task, TaskSampler

__all__ = ["DIVERGED_LOG_RATIO", "VALIDATION_SEED0", "validation_score", "validation_tasks"]

#: Task and network seeds of the validation set: task k is ``sampler.sample(VALIDATION_SEED0 + k)``.
VALIDATION_SEED0 = 30_000
#: What a non-finite or exploded network scores (``log`` of a 20x loss increase).
DIVERGED_LOG_RATIO = math.log(20.0)


def validation_tasks(sampler: TaskSampler, count: int) -> list[Task]:
    """The job's fixed validation tasks: ``count`` draws with seeds ``VALIDATION_SEED0 + k``."""
    return [sampler.sample(VALIDATION_SEED0 + k) for k in range(count)]


def validation_score(rule, tasks: list[Task], networks: int, steps: int) -> float:
    """Mean over ``tasks`` and ``networks`` seeds of ``log(final / initial train loss)`` after
    ``steps`` steps of ``rule`` (any update rule); lower is better. Deterministic: networks,
    minibatches and horizon are fixed by the task list."""
    seeds = [VALIDATION_SEED0 + k for k in range(networks)]
    ratios = []
    for task in tasks:
        data = task.dataset
        initial = task.population_of(seeds).evaluate(data.x_train, data.y_train)["loss"]  # (P,)
        final = train_population(rule, task, seeds, steps=steps, batch_seed=VALIDATION_SEED0)["train_loss"]
        r = torch.log(final / initial.clamp_min(1e-12))  # inf where it diverged
        ratios.append(torch.nan_to_num(r, nan=DIVERGED_LOG_RATIO).clamp(max=DIVERGED_LOG_RATIO))
    return float(torch.cat(ratios).mean())
