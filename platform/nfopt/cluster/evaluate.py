"""Held-out evaluation with every task a Ray task (``num_cpus`` each); results come back in
suite order whatever order the tasks finish in."""

from __future__ import annotations

from nfopt.cluster.fanout import as_completed
from nfopt.evaluation.protocol import EvalSettings, TaskResult, evaluate_task
from nfopt.tasks import Task

__all__ = ["evaluate_suite_ray"]


def evaluate_suite_ray(
    tasks: list[Task], optimizers: dict, settings: EvalSettings, num_cpus: float = 1.0, progress=None
) -> list[TaskResult]:
    """:func:`nfopt.evaluation.evaluate_task` of every task in parallel on the connected Ray
    cluster; ``progress(done, total, name)`` as each finishes."""
    results: dict[int, TaskResult] = {}
    for k, result in as_completed(evaluate_task, [(t, optimizers, settings) for t in tasks], num_cpus):
        results[k] = result
        if progress is not None:
            progress(len(results), len(tasks), tasks[k].name)
    return [results[k] for k in range(len(tasks))]
