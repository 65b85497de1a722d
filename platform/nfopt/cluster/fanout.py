"""Independent pieces of work as Ray tasks, yielded as they finish (zoo shards, INR shards,
evaluation tasks): the caller writes or reports each result the moment it is complete."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import ray

from nfopt._malloc import tune_allocator

__all__ = ["as_completed"]


def as_completed(fn: Callable, calls: list[tuple], num_cpus: float = 1.0) -> Iterator[tuple[int, object]]:
    """Run ``fn(*args)`` for every ``args`` in ``calls`` as a Ray task with ``num_cpus``; yield
    ``(index into calls, result)`` in completion order. An argument object passed to more than
    one call (a dataset, the optimizers) goes to the object store once and is shared."""
    seen: dict[int, int] = {}
    for args in calls:
        for a in args:
            seen[id(a)] = seen.get(id(a), 0) + 1
    shared = {}
    for args in calls:
        for a in args:
            if seen[id(a)] > 1 and id(a) not in shared and not isinstance(a, int | float | str | bool):
                shared[id(a)] = ray.put(a)
    remote = ray.remote(_tuned_call).options(num_cpus=num_cpus)
    futures = {remote.remote(fn, *(shared.get(id(a), a) for a in args)): i for i, args in enumerate(calls)}
    pending = list(futures)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        yield futures[done[0]], ray.get(done[0])


def _tuned_call(fn: Callable, *args):
    """``fn(*args)`` in a Ray worker process whose allocator keeps freed memory in its heap
    (:func:`nfopt._malloc.tune_allocator`)."""
    tune_allocator()
    return fn(*args)
