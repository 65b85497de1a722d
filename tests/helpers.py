"""Shared test helpers."""

import os
import subprocess
import sys

from nfopt.jobs import JobSpec


def run_without_cuda(code: str, timeout: float = 300) -> str:
    """Run ``code`` in a fresh Python that sees no CUDA device (what a CPU-only head or machine
    sees); its stdout. Fails the test, with the child's stderr, when it fails."""
    code = "import torch\nassert not torch.cuda.is_available()\n" + code
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def tiny_job(tmp_path, **over) -> JobSpec:
    """A meta-training job that runs in seconds (per-parameter MLP, PES, 1 task per worker)."""
    raw = {
        "name": "tiny",
        "task": "digits_mlp",
        "outer_steps": 3,
        "meta_model": {"kind": "mlp", "hidden": 4},
        "estimator": {"kind": "pes", "unroll": 2},
        "inner": {"population": 2, "tasks_per_worker": 1},
        "workers": {"count": 2, "num_cpus": 0.5},
        "checkpoint": {"every": 2, "dir": str(tmp_path / "runs" / "{name}")},
        "tracking": {"enabled": False},
    }
    raw.update(over)
    return JobSpec.model_validate(raw)


#: A two-task suite (classification and regression) that evaluates in seconds.
TINY_SUITE = """
name: tiny
description: two quick tasks
tasks:
  - name: digits_a
    dataset: {name: digits, size: 8}
    model: {kind: mlp, hidden_layers: 1, width: 8, activation: relu}
    batch_size: 32
    horizon: 30
  - name: teacher
    dataset: {name: teacher_student, options: {n_in: 4, n_hidden: 8, n_out: 2, noise: 0.1, seed: 3, num_train: 256}}
    model: {kind: mlp, hidden_layers: 1, width: 8, activation: tanh}
    batch_size: 32
    loss: mse
    horizon: 30
"""


def shipped_job(tmp_path, name: str, **over) -> str:
    """Path of a copy of ``jobs/experiments/<name>.yaml`` with top-level fields replaced by ``over``."""
    import yaml

    raw = yaml.safe_load(open(f"jobs/experiments/{name}.yaml"))
    raw.update(over)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)
