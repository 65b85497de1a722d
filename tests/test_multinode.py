"""A multi-node Ray cluster on one machine (``ray.cluster_utils.Cluster``): a worker node leaves
mid-run and meta-training completes on the survivors; a node that joins later takes the
replacement worker. Runs before ``test_submit`` and shuts its cluster down (even on failure)."""

import os

import pytest

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow  # starts Ray: seconds to a minute

from ray.cluster_utils import Cluster  # noqa: E402

from tests.helpers import tiny_job  # noqa: E402


@pytest.fixture
def cluster(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    # the nodes use the machine's address: a driver's ray.init() resolves 127.0.0.1 to it anyway
    node = {"num_cpus": 1, "include_dashboard": False}
    c = Cluster(initialize_head=True, head_node_args=node)
    try:
        c.connect()
        yield c, node
    finally:
        ray.shutdown()
        c.shutdown()
        os.environ.pop("RAY_ADDRESS", None)


def test_meta_training_survives_a_node_leaving_and_uses_one_that_joins(cluster, tmp_path):
    from nfopt.recipes.meta_train import run_job

    c, node_args = cluster
    worker_node = c.add_node(**{k: v for k, v in node_args.items() if k != "include_dashboard"})
    c.wait_for_nodes()
    # one CPU per node and one per population worker: worker 0 on the head, worker 1 on the node
    workers = {"count": 2, "num_cpus": 1, "timeout_s": 60, "place_timeout_s": 10}
    spec = tiny_job(tmp_path, name="nodes", outer_steps=6, workers=workers)
    seen = []

    def churn(learner, pool, metrics):
        seen.append(metrics["workers"])
        if learner.step_count == 1:
            c.remove_node(worker_node)  # the worker on it dies with it; its replacement has no room
        if learner.step_count == 3:
            c.add_node(**{k: v for k, v in node_args.items() if k != "include_dashboard"})  # room again
            assert pool.wait_for_workers(60) == 2  # the pending replacement lands on the new node

    result = run_job(spec, use_ray=True, progress=False, on_step=churn)
    assert result.steps == 6
    assert seen[0] == 2
    assert 1 in seen[1:4]  # the survivor carried the steps while the cluster had one node
    assert seen[-1] == 2  # the replacement was placed on the node that joined
    assert all(h["meta_loss"] == h["meta_loss"] for h in result.history)  # finite, no NaN
