"""Held-out evaluation with every task a Ray task (``num_cpus`` each); results come back in
suite order whatever order the tasks finish in."""

from __future__ import annotations

import ray

from nfopt.evaluation.protocol import EvalSettings, TaskResult, evaluate_task
from nfopt.tasks import Task

__all__ = ["evaluate_suite_ray"]


@ray.remote
def _evaluate_remote(task: Task, optimizers: dict, settings: EvalSettings) -> TaskResult:
    return evaluate_task(task, optimizers, settings)


def evaluate_suite_ray(
    tasks: list[Task], optimizers: dict, settings: EvalSettings, num_cpus: float = 1.0, progress=None
) -> list[TaskResult]:
    """:func:`nfopt.evaluation.evaluate_task` of every task in parallel on the connected Ray
    cluster; ``progress(done, total, name)`` as each finishes."""
    opt_ref = ray.put(optimizers)  # shipped once, shared by every task
    remote = _evaluate_remote.options(num_cpus=num_cpus)
    futures = {remote.remote(t, opt_ref, settings): k for k, t in enumerate(tasks)}
    results: dict[int, TaskResult] = {}
    pending = list(futures)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        k = futures[done[0]]
        results[k] = ray.get(done[0])
        if progress is not None:
            progress(len(results), len(tasks), tasks[k].name)
    return [results[k] for k in range(len(tasks))]
