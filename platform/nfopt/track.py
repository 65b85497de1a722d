"""MLflow tracking (the only module that imports mlflow)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "Tracker",
    "TrackingUnreachableError",
    "default_tracking_uri",
    "download_artifact",
    "ensure_experiment",
    "flatten",
    "repair_runs",
    "system_metrics",
]

#: Tags every run gets: which process on which machine runs it (:func:`repair_runs` reads them)
#: and its state: ``running``, ``complete``, ``partial`` (stopped early, resumable), ``failed``,
#: ``killed`` (its process died).
PID_TAG, HOST_TAG, STATE_TAG = "nfopt.pid", "nfopt.host", "nfopt.state"


#: The MLflow "models from code" file a learned optimizer is logged with (no pickled object): a
#: pyfunc whose ``predict`` returns the optimizer's config and metadata (JSON, one per input
#: row); nfopt itself loads the ``.pt`` in the model's artifacts with ``weights_only=True``
#: (``nfopt.load_optimizer("models:/NAME/VERSION")``).
MODEL_CODE = """
import mlflow
from mlflow.pyfunc import PythonModel


class LearnedOptimizerModel(PythonModel):
    def load_context(self, context):
        import nfopt

        self.trained = nfopt.load_optimizer(context.artifacts["optimizer"])

    def predict(self, context, model_input: list[str], params=None) -> list[str]:
        import json

        about = json.dumps({"config": self.trained.rule.config(), "metadata": self.trained.metadata}, default=str)
        return [about for _ in model_input]


mlflow.models.set_model(LearnedOptimizerModel())
"""


class TrackingUnreachableError(ConnectionError):
    """The tracking server did not answer within a few seconds."""


def _bound_http(uri: str) -> None:
    """For a tracking server (http/https): fail in seconds, not after minutes of retries."""
    if uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


def _host() -> str:
    import socket

    return socket.gethostname()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def repair_runs(uri: str | None = None, experiment: str | None = None) -> list[str]:
    """Mark runs left RUNNING by a process of this machine that no longer exists (SIGKILL,
    power loss) as KILLED, tag ``nfopt.state=killed``; returns their ids. Runs of other
    machines, or without nfopt's process tags, are left alone."""
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(default_tracking_uri(uri))
    client = MlflowClient()
    if experiment is None:
        ids = [e.experiment_id for e in client.search_experiments()]
    else:
        exp = client.get_experiment_by_name(experiment)
        ids = [exp.experiment_id] if exp else []
    fixed = []
    if not ids:
        return fixed
    for run in client.search_runs(ids, filter_string="attributes.status = 'RUNNING'", max_results=1000):
        tags = run.data.tags
        if tags.get(HOST_TAG) != _host() or not tags.get(PID_TAG, "").isdigit():
            continue
        if int(tags[PID_TAG]) == os.getpid() or _alive(int(tags[PID_TAG])):
            continue
        client.set_tag(run.info.run_id, STATE_TAG, "killed")
        client.set_terminated(run.info.run_id, status="KILLED")
        fixed.append(run.info.run_id)
    return fixed


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


def system_metrics() -> dict[str, float]:
    """Machine and driver figures logged beside each meta-training step (stdlib and ``/proc``;
    MLflow's own system-metrics thread needs ``psutil``, which nfopt does not require):
    ``system/load_1m`` (run-queue length over the last minute), ``system/memory_used_pct``,
    ``system/driver_rss_mb`` (peak resident memory of this process) and ``system/driver_cpu_s``."""
    import resource

    out = {"system/load_1m": os.getloadavg()[0]}
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out["system/driver_rss_mb"] = usage.ru_maxrss / 1024  # KiB on Linux
    out["system/driver_cpu_s"] = usage.ru_utime + usage.ru_stime
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        total, avail = (float(info[k].split()[0]) for k in ("MemTotal", "MemAvailable"))
        out["system/memory_used_pct"] = 100.0 * (1 - avail / total)
    except (OSError, KeyError, ValueError):  # not Linux: leave it out
        pass
    return out


class Tracker:
    """One MLflow run: params once, metrics per step, artifacts; ``end(status)`` closes it."""

    def __init__(self, uri: str | None, experiment: str, run_name: str, params: dict, run_id: str | None = None):
        import mlflow

        self.mlflow = mlflow
        uri = default_tracking_uri(uri)
        _bound_http(uri)
        mlflow.set_tracking_uri(uri)
        try:
            mlflow.set_experiment(experiment)
        except Exception as err:
            if uri.startswith(("http://", "https://")):
                raise TrackingUnreachableError(
                    f"tracking.uri {uri}: the MLflow server did not answer ({type(err).__name__}); start it, "
                    "or leave tracking.uri out for the local store"
                ) from None
            raise
        repair_runs(uri, experiment)  # runs of this experiment whose process died: KILLED, not RUNNING
        if run_id is not None:
            try:
                mlflow.get_run(run_id)
            except Exception:  # a checkpoint from another machine's store: continue in a new run
                run_id = None
        self.run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name)
        if run_id is None:
            mlflow.log_params(flatten(params))
        mlflow.set_tags({PID_TAG: str(os.getpid()), HOST_TAG: _host(), STATE_TAG: "running"})
        self.last_step = self._last_logged_step()

    def _last_logged_step(self) -> int:
        """The highest step with a logged metric (-1 for a new run): a resumed run logs each step once."""
        from mlflow.tracking import MlflowClient

        keys = self.mlflow.get_run(self.run_id).data.metrics
        if not keys:
            return -1
        history = MlflowClient().get_metric_history(self.run_id, next(iter(keys)))
        return max((m.step for m in history), default=-1)

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    def log_metrics(self, metrics: dict, step: int) -> None:
        """Log numeric ``metrics`` at ``step``; a step logged before (by the run this one resumes) is skipped."""
        if step <= self.last_step:
            return
        self.mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}, step=step)
        self.last_step = step

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Log a file, or every file under a directory."""
        if Path(path).is_dir():
            self.mlflow.log_artifacts(str(path), artifact_path=artifact_path)
        else:
            self.mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_optimizer_model(self, path: str | Path, register_as: str | None = None) -> str:
        """Log a learned-optimizer file as an MLflow model (``learned_optimizer``) and, with
        ``register_as``, register it in the model registry; returns the model URI
        (``models:/NAME/VERSION`` when registered)."""
        import tempfile
        import warnings

        with tempfile.TemporaryDirectory() as d:
            code = Path(d) / "learned_optimizer_model.py"
            code.write_text(MODEL_CODE)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "add type hints to predict": not a data model
                info = self.mlflow.pyfunc.log_model(
                    name="learned_optimizer",
                    python_model=str(code),
                    artifacts={"optimizer": str(path)},
                    pip_requirements=["nfopt", "torch"],
                )
        if register_as is None:
            return info.model_uri
        version = self.mlflow.register_model(info.model_uri, register_as)
        return f"models:/{version.name}/{version.version}"

    def end(self, status: str = "FINISHED", state: str | None = None) -> None:
        """Close the run with MLflow ``status`` and tag ``nfopt.state`` (default: from the status)."""
        default = {"FINISHED": "complete", "FAILED": "failed", "KILLED": "partial"}.get(status, status.lower())
        self.mlflow.set_tag(STATE_TAG, state or default)
        self.mlflow.end_run(status=status)


def download_artifact(uri: str, tracking_uri: str | None = None) -> Path:
    """A local path for an MLflow artifact URI such as ``runs:/<run_id>/learned_optimizer.pt``."""
    import mlflow

    mlflow.set_tracking_uri(default_tracking_uri(tracking_uri))
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
        if local.is_dir():  # a logged model (models:/NAME/VERSION): its learned-optimizer file
            found = sorted(local.rglob("*.pt"))
            if not found:
                raise FileNotFoundError(f"{uri}: the model holds no learned-optimizer (.pt) file")
            return found[0]
        return local
    except mlflow.exceptions.MlflowException as err:
        raise FileNotFoundError(f"{uri}: no such MLflow artifact ({str(err).splitlines()[0][:200]})") from None
