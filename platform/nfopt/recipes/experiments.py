"""One loader for the experiment specs (``nfopt zoo`` / ``nfopt inr``), chosen by the file's
``experiment`` field; errors name the file and every offending field; the start (:func:`claim_experiment`) and
finish (:func:`finish_experiment`) every experiment recipe shares."""

from __future__ import annotations

from pathlib import Path

from nfopt._files import claim_output, read_yaml, validate_yaml_model
from nfopt.jobs import EXPERIMENTS

__all__ = ["RESULTS_FILE", "ExperimentSpecError", "claim_experiment", "finish_experiment", "load_experiment"]

#: What a finished experiment leaves in ``spec.out_dir`` (beside ``table.md``).
RESULTS_FILE = "results.json"


class ExperimentSpecError(ValueError):
    pass


def load_experiment(path: str | Path, allowed: tuple[str, ...] | None = None):
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such experiment file")
    raw = read_yaml(path, ExperimentSpecError, "experiment") or {}
    kind = raw.get("experiment") if isinstance(raw, dict) else None
    allowed = allowed or tuple(EXPERIMENTS)
    if kind not in allowed:
        raise ExperimentSpecError(f"{path}: field 'experiment' must be one of {list(allowed)}, got {kind!r}")
    return validate_yaml_model(path, raw, EXPERIMENTS[kind], ExperimentSpecError)


def claim_experiment(spec, overwrite: bool = False) -> None:
    """Before any work: refuse (:class:`~nfopt._files.RunExistsError`) to run where a finished
    experiment's :data:`RESULTS_FILE` already is, unless ``overwrite``."""
    claim_output(spec.out_dir / RESULTS_FILE, overwrite, "result of this experiment")


def finish_experiment(
    spec,
    meta: dict,
    results: dict,
    lines: list[str],
    metrics: dict[str, float],
    experiment: str,
    files: tuple[str, ...] = (),
) -> None:
    """Write ``results.json`` (spec, ``meta``, ``results``) and ``table.md`` (``lines``) to
    ``spec.out_dir``, log ``metrics`` and those files (plus ``files`` there) to one MLflow run
    under ``spec.tracking``'s experiment (default ``experiment``) when it is enabled, and print the table."""
    import json

    out = spec.out_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULTS_FILE).write_text(json.dumps({"spec": spec.model_dump(), **meta, "results": results}))
    (out / "table.md").write_text("\n".join(lines) + "\n")
    if spec.tracking.enabled:
        from nfopt.track import Tracker

        tracker = Tracker(
            spec.tracking.uri, spec.tracking.experiment_or(experiment), spec.name, {**spec.model_dump(), **meta}
        )
        tracker.log_metrics(metrics, step=0)
        for f in (RESULTS_FILE, "table.md", *files):
            tracker.log_artifact(out / f)
        tracker.end()
    print("\n".join(lines))
