"""`RayPool`: :class:`nfopt.meta.Worker` shards as Ray actors behind the learner's pool interface.

Per outer step θ goes to every placed worker as one flat buffer (inline in the calls while it is
small: :data:`INLINE_BYTES`; else published once with ``ray.put``) and each returns its estimate; a
worker that died (its process, or its whole node) is replaced by a fresh one (new tasks) and the
step goes on with the survivors; a worker slower than ``timeout_s`` is killed and replaced the
same way. Both are logged.

Placement is elastic: a new worker is waited for (up to ``place_timeout_s``) once, on the first step
after it was created; if the cluster has no room for it by then (a node left and none replaced
it), later steps go on without it and it joins as soon as Ray places it (a node came back). A step
never starts with no worker up while one may still come: it waits for the first (up to
``timeout_s``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator

import ray

from nfopt._malloc import tune_allocator
from nfopt.cluster.reaper import start_reaper
from nfopt.cluster.submit import ClusterUnreachableError
from nfopt.meta.learner import Worker
from nfopt.meta.messages import Estimate, pack_theta, theta_layout, unpack_theta
from nfopt.specs import child_seed

__all__ = ["INLINE_BYTES", "PopulationWorker", "RayPool", "init_ray"]

log = logging.getLogger(__name__)

#: θ up to this size travels inline in each worker's call (Ray's own limit for inlined arguments,
#: ``max_direct_call_object_size``); a ``ray.put`` object costs the worker a fetch from the
#: object store first: 2-6 ms of a ~75 ms quickstart step here, measured with a 24 KB θ.
INLINE_BYTES = 100 * 1024


#: A :class:`nfopt.meta.Worker` (a shard of inner tasks and their persistent state) as a Ray actor.
class _AllocatorTunedWorker(Worker):
    """A :class:`~nfopt.meta.Worker` whose process keeps freed memory in its heap
    (:func:`nfopt._malloc.tune_allocator`: ~1.9x faster learned-optimizer updates)."""

    def __init__(self, *args, **kwargs) -> None:
        tune_allocator()
        super().__init__(*args, **kwargs)


PopulationWorker = ray.remote(_AllocatorTunedWorker)


#: Settings of an embedded Ray's own daemons (each left as the environment gives it): the log
#: monitor re-lists the session's log files every 0.1 s below 1000 files and the dashboard agent
#: samples every process every 5 s, for a dashboard and log forwarding an embedded nfopt Ray has
#: off (``include_dashboard=False``, ``log_to_driver=False``). Beside an idle session here: log
#: monitor 25 -> 10 CPU ticks in 30 s, dashboard agent 22 -> 13 (~0.8% of a core in all, which
#: two busy workers on a 2-core node otherwise lose).
QUIET_DAEMONS = {
    "RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "0",  # re-list files every LOG_NAME_UPDATE_INTERVAL_S only
    "LOG_NAME_UPDATE_INTERVAL_S": "10",
    "REPORTER_UPDATE_INTERVAL_MS": "60000",
}


@contextlib.contextmanager
def _daemon_env(settings: dict[str, str]) -> Iterator[None]:
    """``settings`` in the environment (where not set already) while Ray starts its daemons, which
    inherit them; this process's environment afterwards as before."""
    added = {k: v for k, v in settings.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def init_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Attach to ``address`` (its ``RAY_AUTH_MODE``/token come from the env) or start an embedded
    local Ray: node address 127.0.0.1, no dashboard, Ray's token authentication (its default;
    Ray 2.60 offers no way to bind every listener to loopback, so the token, generated in
    ``~/.ray/auth_token``, is what keeps other clients out: see the README's "Safe by default";
    ``RAY_AUTH_MODE=disabled`` in the environment turns it off), and a watchdog
    (:mod:`nfopt.cluster.reaper`) that kills the cluster's processes if this driver dies without
    shutting it down; its daemons run quieter (:data:`QUIET_DAEMONS`). ``num_cpus``/``num_gpus``:
    the embedded Ray's resources (``None``: what Ray detects)."""
    if ray.is_initialized():
        return
    if address is None:
        with _daemon_env(QUIET_DAEMONS):
            ray.init(
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                log_to_driver=False,
                configure_logging=False,
            )
        start_reaper()
    else:
        _reachable(address)
        ray.init(address=address, log_to_driver=False)


def _reachable(address: str, timeout: float = 5.0) -> None:
    """Fail within ``timeout`` seconds (:class:`ClusterUnreachableError`) when nothing listens at
    a ``HOST:PORT`` cluster address, instead of Ray's minutes of retries; ``auto`` and
    ``ray://`` addresses are left to Ray."""
    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as err:
        raise ClusterUnreachableError(
            f"--address {address}: no Ray cluster answers there ({err}); start one with "
            "`ray start --head --node-ip-address=127.0.0.1` and pass its GCS address (HOST:6379)"
        ) from None


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
        place_timeout_s: float = 120.0,
    ) -> None:
        self._args = (make_problem, estimator, tasks_per_worker)
        self._cls = PopulationWorker.options(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0)
        self.timeout_s, self.place_timeout_s, self.seed, self.replaced = timeout_s, place_timeout_s, seed, 0
        self._unplaced: dict[int, ray.ObjectRef] = {}  # worker index -> readiness of an actor not yet up
        self._waited: set[int] = set()  # unplaced workers a step already waited for
        self.workers = [self._spawn(k, child_seed(seed, k, stride=1000)) for k in range(count)]

    def _spawn(self, k: int, seed: int):
        make_problem, estimator, tasks = self._args
        actor = self._cls.remote(make_problem, estimator, tasks, seed)
        self._unplaced[k] = actor.__ray_ready__.remote()
        self._waited.discard(k)
        return actor

    def _placed(self) -> list[int]:
        """Indices of workers whose actor is up; waits once (``place_timeout_s``) for newly created ones."""
        if self._unplaced:
            refs = {r: k for k, r in self._unplaced.items()}
            fresh = any(k not in self._waited for k in self._unplaced)
            done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=self.place_timeout_s if fresh else 0)
            if not done and len(refs) == len(self.workers):
                # no worker up at all (a slow start on a loaded machine): a step without any would
                # be wasted, so wait for the first one, up to the worker timeout
                done, _ = ray.wait(list(refs), num_returns=1, timeout=self.timeout_s)
            self._waited.update(self._unplaced)
            for r in done:
                k = refs[r]
                del self._unplaced[k]
                try:
                    ray.get(r)
                except ray.exceptions.RayActorError:
                    log.warning("worker %d died while starting; replacing it", k)
                    self._replace(k)
            waiting = sorted(k for k in self._unplaced)
            if waiting:
                log.warning("workers %s not placed yet (no room in the cluster); going on without them", waiting)
        return [k for k in range(len(self.workers)) if k not in self._unplaced]

    def wait_for_workers(self, timeout_s: float) -> int:
        """Block until every worker is up or ``timeout_s`` passed; returns how many are up."""
        if self._unplaced:
            ray.wait(list(self._unplaced.values()), num_returns=len(self._unplaced), timeout=timeout_s)
            self._waited.update(self._unplaced)  # waited for now: collect what is up without waiting again
            self._placed()
        return self.placed

    @property
    def placed(self) -> int:
        """How many workers are up (without waiting)."""
        return len(self.workers) - len(self._unplaced)

    @property
    def size(self) -> int:
        return len(self.workers)

    def estimate_all(self, theta) -> list[Estimate]:
        layout = theta_layout(theta)
        flat = pack_theta(theta)
        ref = flat if flat.nbytes <= INLINE_BYTES else ray.put(flat)
        futures = {self.workers[k].estimate_flat.remote(ref, layout): k for k in self._placed()}
        if not futures:
            return []
        ready, pending = ray.wait(list(futures), num_returns=len(futures), timeout=self.timeout_s)
        results = {}
        for f in ready:
            k = futures[f]
            try:
                est = ray.get(f)
                results[k] = est._replace(grad=unpack_theta(est.grad, layout))
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
        self.workers[k] = self._spawn(k, child_seed(self.seed, 500 + self.replaced, stride=1000))

    def get_states(self) -> list[dict | None]:
        """Per-worker state; ``None`` for a worker not placed yet (it restarts fresh on resume)."""
        placed = [k for k in range(len(self.workers)) if k not in self._unplaced]
        states = dict(zip(placed, ray.get([self.workers[k].get_state.remote() for k in placed])))
        return [states.get(k) for k in range(len(self.workers))]

    def set_states(self, states: list[dict | None]) -> None:
        ray.get([w.set_state.remote(s) for w, s in zip(self.workers, states) if s is not None])

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w, no_restart=True)
