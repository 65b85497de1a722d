"""MLflow tracking (the only module that imports mlflow)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["Tracker", "default_tracking_uri", "download_artifact", "ensure_experiment", "flatten"]


def default_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else an absolute ``sqlite:///<cwd>/mlflow.db``."""
    if uri:
        return uri
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').absolute()}"


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)
    return out


def ensure_experiment(uri: str | None, experiment: str) -> None:
    """Create the store's tables and the experiment once, before parallel writers (Tune trials)
    would race to migrate a fresh sqlite database."""
    import mlflow

    mlflow.set_tracking_uri(default_tracking_uri(uri))
    mlflow.set_experiment(experiment)


class Tracker:
    """One MLflow run: params once, metrics per step, artifacts; ``end(status)`` closes it."""

    def __init__(self, uri: str | None, experiment: str, run_name: str, params: dict, run_id: str | None = None):
        import mlflow

        self.mlflow = mlflow
        mlflow.set_tracking_uri(default_tracking_uri(uri))
        mlflow.set_experiment(experiment)
        if run_id is not None:
            try:
                mlflow.get_run(run_id)
            except Exception:  # a checkpoint from another machine's store: continue in a new run
                run_id = None
        self.run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name)
        if run_id is None:
            mlflow.log_params(flatten(params))

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Log a file, or every file under a directory."""
        if Path(path).is_dir():
            self.mlflow.log_artifacts(str(path), artifact_path=artifact_path)
        else:
            self.mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        self.mlflow.end_run(status=status)


def download_artifact(uri: str, tracking_uri: str | None = None) -> Path:
    """A local path for an MLflow artifact URI such as ``runs:/<run_id>/learned_optimizer.pt``."""
    import mlflow

    mlflow.set_tracking_uri(default_tracking_uri(tracking_uri))
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
