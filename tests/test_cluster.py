"""Ray pools and runs on the shared local Ray session (``ray_session`` in conftest)."""

import os
import time

import pytest
import torch

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow  # starts Ray: seconds to a minute

from nfopt.cluster import RayPool  # noqa: E402
from nfopt.meta import PES, QuadraticProblem  # noqa: E402
from tests.helpers import tiny_job  # noqa: E402


def make_problem():
    return QuadraticProblem(dim=4, noise=0.1)


def test_pool_survives_a_killed_worker(ray_session):
    pool = RayPool(make_problem, PES(unroll=3), count=2, tasks_per_worker=2, seed=0, num_cpus=0.5, timeout_s=60)
    theta = {"log_lr": torch.tensor(-2.0, dtype=torch.float64)}
    assert len(pool.estimate_all(theta)) == 2
    dead = pool.workers[0]
    ray.kill(dead, no_restart=True)
    for _ in range(300):  # the kill is asynchronous: a call right after it was once answered (CI, 2026-12-04)
        try:
            ray.get(dead.__ray_ready__.remote(), timeout=30)
        except ray.exceptions.RayActorError:
            break
        time.sleep(0.1)
    results = pool.estimate_all(theta)  # the survivor's estimate; the dead worker is replaced
    assert len(results) == 1 and pool.replaced == 1
    assert len(pool.estimate_all(theta)) == 2  # the replacement works
    pool.shutdown()


def test_stuck_worker_is_bounded_by_the_timeout(ray_session):
    class Slow(QuadraticProblem):
        def unroll(self, theta, state, steps):
            import time

            time.sleep(5)
            return super().unroll(theta, state, steps)

    pool = RayPool(Slow, PES(unroll=1), count=1, tasks_per_worker=1, seed=1, num_cpus=0.5, timeout_s=1.0)
    assert pool.estimate_all({"log_lr": torch.tensor(-2.0, dtype=torch.float64)}) == []
    assert pool.replaced == 1
    pool.shutdown()


def test_run_job_on_ray_with_mlflow_and_load_by_uri(ray_session, tmp_path, monkeypatch):
    import nfopt
    from nfopt.recipes.meta_train import run_job

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = tiny_job(tmp_path, name="raytest", tracking={"enabled": True, "uri": uri, "experiment": "test"})
    result = run_job(spec, use_ray=True, progress=False)
    assert result.steps == 3 and result.run_id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    trained = nfopt.load_optimizer(f"runs:/{result.run_id}/learned_optimizer.pt")
    assert trained.rule.kind == "mlp"


def test_a_run_survives_a_worker_killed_mid_run(ray_session, tmp_path):
    from nfopt.recipes.meta_train import run_job

    spec = tiny_job(tmp_path, name="killed", outer_steps=4, workers={"count": 2, "num_cpus": 0.5, "timeout_s": 60})
    seen = []

    def kill_after_first(learner, pool, metrics):
        seen.append(metrics["workers"])
        if learner.step_count == 1:
            ray.kill(pool.workers[1], no_restart=True)

    result = run_job(spec, use_ray=True, progress=False, on_step=kill_after_first)
    assert result.steps == 4
    assert seen[0] == 2 and seen[1] == 1 and seen[-1] == 2  # survivors carried step 2, then replaced
    assert all(torch.isfinite(torch.tensor(h["meta_loss"])) for h in result.history)


def test_evaluation_as_ray_tasks_equals_the_in_process_one(ray_session, tiny_suite):
    from nfopt.cluster.evaluate import evaluate_suite_ray
    from nfopt.evaluation import EvalSettings, evaluate_suite
    from nfopt.tasks import load_suite_tasks

    tasks = load_suite_tasks(tiny_suite)
    settings = EvalSettings(seeds=2, tuning_seeds=1, adam_lrs=(1e-2, 1e-1), sgd_lrs=(1e-1,), steps=8)
    seen = []
    remote = evaluate_suite_ray(tasks, {}, settings, num_cpus=0.5, progress=lambda d, n, name: seen.append(d))
    local = evaluate_suite(tasks, {}, settings)
    assert [t.task for t in remote] == [t.task for t in local] and seen == [1, 2]  # suite order kept
    for a, b in zip(remote, local):
        for ra, rb in zip(a.results, b.results):
            assert ra.lr == rb.lr and ra.train_loss == pytest.approx(rb.train_loss, rel=1e-5)


def test_zoo_shards_as_ray_tasks_equal_the_in_process_build(ray_session, tmp_path):
    from nfopt.zoo.spec import ZooSpec
    from nfopt.zoo.store import build_zoo, load_zoo

    raw = {"name": "z", "data": {"name": "digits"}, "runs": 4, "shard_size": 2, "epochs": 1, "steps_per_epoch": 3}
    raw |= {"save_epochs": [1], "eval_examples": 50, "num_cpus": 0.5}
    ray_zoo = load_zoo(build_zoo(ZooSpec(**raw, out=str(tmp_path / "ray")), progress=False))
    local = load_zoo(build_zoo(ZooSpec(**raw, out=str(tmp_path / "local")), use_ray=False, progress=False))
    assert torch.equal(ray_zoo.run, local.run)
    torch.testing.assert_close(ray_zoo.params["4.weight"], local.params["4.weight"])


def test_daemon_settings_reach_only_what_ray_starts_and_a_users_own_win(monkeypatch):
    from nfopt.cluster.pool import _daemon_env

    monkeypatch.setenv("LOG_NAME_UPDATE_INTERVAL_S", "3")  # the user's own
    monkeypatch.delenv("REPORTER_UPDATE_INTERVAL_MS", raising=False)
    with _daemon_env({"LOG_NAME_UPDATE_INTERVAL_S": "10", "REPORTER_UPDATE_INTERVAL_MS": "60000"}):
        assert os.environ["LOG_NAME_UPDATE_INTERVAL_S"] == "3"
        assert os.environ["REPORTER_UPDATE_INTERVAL_MS"] == "60000"
    assert os.environ["LOG_NAME_UPDATE_INTERVAL_S"] == "3" and "REPORTER_UPDATE_INTERVAL_MS" not in os.environ
