"""Zoo shards as Ray tasks (one population of runs each); yields results as they finish so the
driver writes each shard the moment it is complete."""

from __future__ import annotations

from collections.abc import Iterator

import ray

from nfopt.zoo.spec import ZooSpec
from nfopt.zoo.train import train_shard

__all__ = ["train_shards_ray"]


@ray.remote
def _train_remote(spec: ZooSpec, shard: int) -> dict:
    return train_shard(spec, shard)


def train_shards_ray(spec: ZooSpec, shards: list[int]) -> Iterator[tuple[int, dict]]:
    remote = _train_remote.options(num_cpus=spec.num_cpus)
    futures = {remote.remote(spec, k): k for k in shards}
    pending = list(futures)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        yield futures[done[0]], ray.get(done[0])
