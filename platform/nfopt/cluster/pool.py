"""`RayPool`: :class:`nfopt.meta.Worker` shards as Ray actors behind the learner's pool interface.

Per outer step θ is published once (``ray.put``) and every worker returns its estimate; a worker
that died is replaced by a fresh one (new tasks) and the step goes on with the survivors; a
worker slower than ``timeout_s`` is killed and replaced the same way. Both are logged.
"""

from __future__ import annotations

import logging
import os

import ray

from nfopt.meta.learner import Worker

__all__ = ["PopulationWorker", "RayPool", "init_ray"]

log = logging.getLogger(__name__)

#: A :class:`nfopt.meta.Worker` (a shard of inner tasks and their persistent state) as a Ray actor.
PopulationWorker = ray.remote(Worker)


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Attach to ``address`` or start an embedded local Ray bound to 127.0.0.1 (token auth off
    for the embedded cluster; a remote cluster's ``RAY_AUTH_MODE``/token come from the env)."""
    if ray.is_initialized():
        return
    if address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            configure_logging=False,
        )
    else:
        ray.init(address=address, log_to_driver=False)


class RayPool:
    def __init__(
        self,
        make_problem,
        estimator,
        count: int,
        tasks_per_worker: int,
        seed: int,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        timeout_s: float = 300.0,
    ) -> None:
        self._args = (make_problem, estimator, tasks_per_worker)
        self._cls = PopulationWorker.options(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0)
        self.timeout_s, self.seed, self.replaced = timeout_s, seed, 0
        self.workers = [self._spawn(seed * 1000 + k) for k in range(count)]

    def _spawn(self, seed: int):
        make_problem, estimator, tasks = self._args
        return self._cls.remote(make_problem, estimator, tasks, seed)

    @property
    def size(self) -> int:
        return len(self.workers)

    def estimate_all(self, theta) -> list:
        import torch

        layout = [(k, tuple(v.shape)) for k, v in theta.items()]
        ref = ray.put(torch.cat([v.detach().reshape(-1) for v in theta.values()]).cpu().numpy())
        futures = {w.estimate_flat.remote(ref, layout): k for k, w in enumerate(self.workers)}
        ready, pending = ray.wait(list(futures), num_returns=len(futures), timeout=self.timeout_s)
        results = {}
        for f in ready:
            k = futures[f]
            try:
                flat, n, metrics = ray.get(f)
                t, grad, offset = torch.from_numpy(flat.copy()), {}, 0  # Ray hands out read-only buffers
                for name, shape in layout:
                    size = t[offset:].new_empty(shape).numel()
                    grad[name] = t[offset : offset + size].view(shape)
                    offset += size
                results[k] = (grad, n, metrics)
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as err:
                log.warning("worker %d failed (%s); replacing it with fresh tasks", k, type(err).__name__)
                self._replace(k)
        for f in pending:
            k = futures[f]
            log.warning("worker %d exceeded %.0fs; killing and replacing it", k, self.timeout_s)
            ray.kill(self.workers[k], no_restart=True)
            self._replace(k)
        return [results[k] for k in sorted(results)]  # worker order: the average is reproducible

    def _replace(self, k: int) -> None:
        self.replaced += 1
        self.workers[k] = self._spawn(self.seed * 1000 + 500 + self.replaced)

    def get_states(self) -> list[dict]:
        return ray.get([w.get_state.remote() for w in self.workers])

    def set_states(self, states: list[dict]) -> None:
        ray.get([w.set_state.remote(s) for w, s in zip(self.workers, states)])

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w, no_restart=True)
