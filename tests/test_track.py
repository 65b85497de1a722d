"""The MLflow record survives interruptions: each step once, partial and killed runs marked."""

import subprocess
import sys

import torch
from mlflow.tracking import MlflowClient

from nfopt.track import PID_TAG, STATE_TAG, Tracker, repair_runs


def _history(uri, run_id, key="meta_loss"):
    import mlflow

    mlflow.set_tracking_uri(uri)
    return sorted(m.step for m in MlflowClient().get_metric_history(run_id, key))


def test_a_resumed_run_logs_each_step_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    t = Tracker(uri, "e", "r", {"a": 1})
    for step in (1, 2, 3):  # the crashed run got to step 3; its checkpoint was at step 2
        t.log_metrics({"meta_loss": float(step)}, step=step)
    t.end("KILLED")
    t = Tracker(uri, "e", "r", {"a": 1}, run_id=t.run_id)
    for step in (3, 4):  # the resumed run repeats step 3
        t.log_metrics({"meta_loss": float(step)}, step=step)
    t.end("FINISHED")
    assert _history(uri, t.run_id) == [1, 2, 3, 4]
    run = MlflowClient().get_run(t.run_id)
    assert run.info.status == "FINISHED" and run.data.tags[STATE_TAG] == "complete"


def test_runs_whose_process_died_are_marked_killed(tmp_path):
    import mlflow

    from nfopt.track import HOST_TAG, _host

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    exp = client.create_experiment("e")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    # as a SIGKILLed run leaves it: RUNNING, tagged with a process that no longer exists
    killed = client.create_run(exp, tags={PID_TAG: str(dead.pid), HOST_TAG: _host()}).info.run_id
    elsewhere = client.create_run(exp, tags={PID_TAG: str(dead.pid), HOST_TAG: "another-machine"}).info.run_id
    alive = client.create_run(exp, tags={PID_TAG: str(subprocess.os.getpid()), HOST_TAG: _host()}).info.run_id
    assert repair_runs(uri, "e") == [killed]
    run = client.get_run(killed)
    assert run.info.status == "KILLED" and run.data.tags[STATE_TAG] == "killed"
    assert client.get_run(elsewhere).info.status == client.get_run(alive).info.status == "RUNNING"
    assert repair_runs(uri, "e") == []


def test_a_run_stopped_by_max_steps_is_partial(tmp_path):
    from nfopt.recipes.meta_train import run_job
    from tests.recipes.test_meta_train import tiny_spec

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = tiny_spec(tmp_path, tracking={"enabled": True, "uri": uri, "experiment": "e"})
    part = run_job(spec, use_ray=False, progress=False, max_steps=2)
    run = MlflowClient().get_run(part.run_id)
    assert run.info.status == "KILLED" and run.data.tags[STATE_TAG] == "partial"
    full = run_job(spec, resume=True, use_ray=False, progress=False)
    run = MlflowClient().get_run(full.run_id)
    assert full.run_id == part.run_id and run.info.status == "FINISHED" and run.data.tags[STATE_TAG] == "complete"
    assert _history(uri, full.run_id) == [1, 2, 3, 4]
    metrics = run.data.metrics  # system metrics beside the learner's, every step
    assert metrics["system/driver_rss_mb"] > 10 and metrics["system/load_1m"] >= 0
    assert 0 < metrics["system/memory_used_pct"] < 100 and metrics["system/driver_cpu_s"] > 0


def test_a_learned_optimizer_is_an_mlflow_model_loadable_by_registry_name(tmp_path, monkeypatch):
    import nfopt
    from nfopt.recipes.meta_train import run_job
    from tests.recipes.test_meta_train import tiny_spec

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)  # the store's artifacts go under ./mlruns
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    spec = tiny_spec(tmp_path, outer_steps=1, tracking={"enabled": True, "uri": uri, "register_as": "tiny_lopt"})
    result = run_job(spec, use_ray=False, progress=False)
    assert result.model_uri == "models:/tiny_lopt/1"
    trained = nfopt.load_optimizer("models:/tiny_lopt/1")
    direct = nfopt.load_optimizer(result.optimizer_path)
    assert trained.rule.config() == direct.rule.config()
    for (k, a), (_, b) in zip(trained.rule.state_dict().items(), direct.rule.state_dict().items()):
        assert torch.equal(a, b), k
