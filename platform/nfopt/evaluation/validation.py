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
from dataclasses import dataclass

import torch

from nfopt.evaluation.protocol import train_population
from nfopt.tasks import Task, TaskSampler

__all__ = ["DIVERGED_LOG_RATIO", "VALIDATION_SEED0", "ValidationSet"]

#: Task and network seeds of the validation set: task k is ``sampler.sample(VALIDATION_SEED0 + k)``.
VALIDATION_SEED0 = 30_000
#: What a non-finite or exploded network scores (``log`` of a 20x loss increase).
DIVERGED_LOG_RATIO = math.log(20.0)


@dataclass(frozen=True)
class ValidationSet:
    """The fixed tasks, networks and horizon a run is scored on, with each task's initial train
    losses ``(P,)`` (they never change, so they are computed once, by :meth:`draw`)."""

    tasks: tuple[Task, ...]
    seeds: tuple[int, ...]
    steps: int
    initial: tuple[torch.Tensor, ...]

    @classmethod
    def draw(cls, sampler: TaskSampler, tasks: int, networks: int, steps: int) -> ValidationSet:
        """``tasks`` draws of ``sampler`` with seeds ``VALIDATION_SEED0 + k``, ``networks``
        initialisations each (seeds ``VALIDATION_SEED0 + j``), trained for ``steps`` steps."""
        drawn = tuple(sampler.sample(VALIDATION_SEED0 + k) for k in range(tasks))
        seeds = tuple(VALIDATION_SEED0 + j for j in range(networks))
        initial = tuple(
            t.population_of(list(seeds)).evaluate(t.dataset.x_train, t.dataset.y_train)["loss"] for t in drawn
        )
        return cls(drawn, seeds, steps, initial)

    def score(self, rule) -> float:
        """Mean over tasks and networks of ``log(final / initial train loss)`` after ``steps``
        steps of ``rule`` (any update rule); lower is better. Deterministic: networks, minibatches
        and horizon are fixed."""
        ratios = []
        for task, initial in zip(self.tasks, self.initial):
            final = train_population(rule, task, list(self.seeds), steps=self.steps, batch_seed=VALIDATION_SEED0)
            r = torch.log(final["train_loss"] / initial.clamp_min(1e-12))  # inf where it diverged
            ratios.append(torch.nan_to_num(r, nan=DIVERGED_LOG_RATIO).clamp(max=DIVERGED_LOG_RATIO))
        return float(torch.cat(ratios).mean())
