"""Shared test helpers."""

from nfopt.jobs import JobSpec


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
