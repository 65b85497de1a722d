"""Submitting to a real Ray head (started here on 127.0.0.1 with free ports, stopped even on
failure) through the Jobs API; an unreachable cluster fails fast."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # starts Ray: seconds to a minute

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    port, dash = free_port(), free_port()
    # every port Ray would otherwise take at its default, so that another Ray instance on this
    # machine (e.g. a local run holding the dashboard agent's 52365) cannot starve this head
    agent_ports = [
        f"--{name}={free_port()}"
        for name in (
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "metrics-export-port",
            "runtime-env-agent-port",
            "ray-client-server-port",
        )
    ]
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
    cmd = [
        str(bin_dir / "ray"),
        "start",
        "--head",
        "--block",
        f"--port={port}",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        "--num-cpus=2",
        "--include-dashboard=true",
        *agent_ports,
        f"--temp-dir={tempfile.mkdtemp(prefix='nfr', dir='/tmp')}",  # short: Unix socket paths are limited
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        from nfopt.cluster.submit import ClusterUnreachableError, _check

        for _ in range(60):
            try:
                _check(address, timeout=2)
                break
            except ClusterUnreachableError:
                time.sleep(1)
        else:
            pytest.fail("the Ray head did not come up")
        yield address
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_submitted_job_succeeds_and_logs_to_mlflow(ray_head, tmp_path):
    from nfopt.cluster.submit import client, submit

    work = tmp_path / "work"
    shutil.copytree(ROOT / "platform", work / "platform", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "tasks", work / "tasks")
    (work / "jobs").mkdir()
    db = tmp_path / "mlflow.db"
    (work / "jobs" / "tiny.yaml").write_text(
        "name: submitted\ntask: digits_mlp\nouter_steps: 2\nmeta_model: {kind: mlp, hidden: 4}\n"
        "estimator: {kind: pes, unroll: 2}\ninner: {population: 2, tasks_per_worker: 1}\n"
        "workers: {count: 1, num_cpus: 0.5}\n"
        f"checkpoint: {{every: 1, dir: '{tmp_path}/runs/{{name}}'}}\n"
        f"tracking: {{enabled: true, uri: 'sqlite:///{db}', experiment: submitted}}\n"
    )
    job_id = submit(ray_head, "jobs/tiny.yaml", working_dir=work)
    c = client(ray_head)
    for _ in range(180):
        status = str(c.get_job_status(job_id))
        if status.split(".")[-1] in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(1)
    logs = c.get_job_logs(job_id)
    assert status.endswith("SUCCEEDED"), logs[-3000:]
    assert "nfopt run submitted" in logs
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{db}")
    assert len(mlflow.search_runs(experiment_names=["submitted"])) == 1
    assert any(j.submission_id == job_id for j in c.list_jobs())


def test_unreachable_cluster_fails_fast():
    from nfopt.cli import main

    t0 = time.time()
    assert main(["submit", "jobs/meta/smoke.yaml", "--address", f"http://127.0.0.1:{free_port()}"]) == 4
    assert time.time() - t0 < 10


def test_submit_waits_for_the_job_agent_and_not_for_other_errors(monkeypatch):
    import nfopt.cluster.submit as sub

    class Fake:
        def __init__(self, errors):
            self.errors, self.calls = list(errors), 0

        def submit_job(self, **kw):
            self.calls += 1
            if self.errors:
                raise RuntimeError(self.errors.pop(0))
            assert "nfopt.cli run" in kw["entrypoint"]
            return "raysubmit_1"

    monkeypatch.setattr(sub.time, "sleep", lambda s: None)
    busy = "Request failed with status code 500: No available agent to submit job, please try again later.."
    fake = Fake([busy, busy])
    monkeypatch.setattr(sub, "client", lambda address: fake)
    assert sub.submit("http://x", "jobs/meta/smoke.yaml") == "raysubmit_1" and fake.calls == 3
    fake = Fake(["Request failed with status code 400: bad runtime_env"])
    monkeypatch.setattr(sub, "client", lambda address: fake)
    with pytest.raises(RuntimeError, match="bad runtime_env"):
        sub.submit("http://x", "jobs/meta/smoke.yaml")
    assert fake.calls == 1
    fake = Fake([busy] * 5)
    monkeypatch.setattr(sub, "client", lambda address: fake)
    with pytest.raises(RuntimeError, match="dashboard-agent-listen-port"):
        sub.submit("http://x", "jobs/meta/smoke.yaml", agent_wait_s=0)


def test_set_overrides_travel_with_the_submitted_job(monkeypatch):
    from nfopt.cluster import submit as sub

    seen = {}

    class FakeClient:
        def submit_job(self, entrypoint, runtime_env):
            seen["entrypoint"] = entrypoint
            return "job-1"

    monkeypatch.setattr(sub, "client", lambda address: FakeClient())
    assert sub.submit("http://x:8265", "jobs/meta/smoke.yaml", sets=["meta_optimizer.lr=1e-3", "name=a b"]) == "job-1"
    assert seen["entrypoint"].endswith("run jobs/meta/smoke.yaml --set meta_optimizer.lr=1e-3 --set 'name=a b'")
