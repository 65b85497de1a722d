"""``nfopt tune``: a job's ``search`` section as Ray Tune trials of the learner.

Each trial is a function trainable running :func:`nfopt.recipes.meta_train.run_job` on the job with the
trial's overrides: it reports every ``report_every`` outer steps with a checkpoint
(``tune.report(metrics, checkpoint=...)``), resumes from ``tune.get_checkpoint()``, asks for a
placement group with one bundle for itself and one per population worker, and is one MLflow run
under the sweep's experiment. ASHA stops weak trials early. At the end: a table of trials, the
best configuration as a runnable job file, and its learned optimizer exported (and logged).
"""

from __future__ import annotations

import math
import re
import shutil
import tempfile
from pathlib import Path

import yaml
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import Searcher

from nfopt.jobs import JobSpec, SearchSpec, apply_overrides
from nfopt.lopt import save_optimizer
from nfopt.meta.checkpoint import load_checkpoint
from nfopt.recipes.meta_train import build_rule, run_job
from nfopt.specs import output_dir
from nfopt.tasks.spec import task_path

__all__ = ["SEARCH_EXTRA", "TIME_ATTR", "TuneResult", "run_sweep", "search_algorithm"]

TIME_ATTR = "outer_step"  # what ASHA's grace period and max_t count (the job's `search.grace_period` says so)
SEARCH_EXTRA = "pip install 'nfopt[search]'"


def _space(search) -> dict:
    out = {}
    for key, dist in search.space.items():
        ((kind, values),) = dist.items()
        out[key] = {
            "loguniform": lambda v: tune.loguniform(*v),
            "uniform": lambda v: tune.uniform(*v),
            "choice": tune.choice,
            "grid": tune.grid_search,
        }[kind](values)
    return out


def search_algorithm(search: SearchSpec) -> Searcher | None:
    """The Ray Tune searcher of ``search.algorithm`` minimising ``search.metric`` (``None``: Tune's
    random/grid sampling).
    Raises ``ImportError`` naming the extra to install when its package is missing."""
    if search.algorithm == "random":
        return None
    try:
        if search.algorithm == "optuna":
            import optuna  # noqa: F401  (Ray imports it lazily; fail here, with the fix)
            from ray.tune.search.optuna import OptunaSearch

            return OptunaSearch(metric=search.metric, mode="min", seed=search.seed)
        import hyperopt  # noqa: F401
        from ray.tune.search.hyperopt import HyperOptSearch

        return HyperOptSearch(metric=search.metric, mode="min", random_state_seed=search.seed)
    except ImportError as err:
        raise ImportError(
            f"search.algorithm: {search.algorithm} needs the `{search.algorithm}` package ({SEARCH_EXTRA}): {err}"
        ) from None


def _trial_spec(base_json: str, overrides: dict, trial_dir: Path, experiment: str) -> JobSpec:
    base = JobSpec.model_validate_json(base_json)
    spec = apply_overrides(base, overrides)
    every = base.search.report_every
    return spec.model_copy(
        update={
            "name": re.sub(r"[^A-Za-z0-9_.\-]", "_", f"{base.name}-{trial_dir.name}")[:128],  # a valid Name
            "search": None,
            "evaluate": None,
            "checkpoint": spec.checkpoint.model_copy(update={"every": every, "dir": str(trial_dir / "ckpt")}),
            "tracking": spec.tracking.model_copy(update={"experiment": experiment}),
        }
    )


def _trainable(config: dict) -> None:

    ctx = tune.get_context()
    trial_dir = Path(ctx.get_trial_dir())
    overrides = {k: v for k, v in config.items() if k not in ("_base", "_experiment")}
    spec = _trial_spec(config["_base"], overrides, trial_dir, config["_experiment"])
    ckdir = spec.checkpoint_dir
    resume = False
    ck = tune.get_checkpoint()
    if ck is not None:
        with ck.as_directory() as d:
            ckdir.mkdir(parents=True, exist_ok=True)
            shutil.copy(Path(d) / "latest.pt", ckdir / "latest.pt")
        resume = True
    every = spec.checkpoint.every

    def report(learner, pool, m) -> None:
        metrics = {k: float(v) for k, v in m.items() if isinstance(v, int | float) and math.isfinite(float(v))}
        metrics[TIME_ATTR] = learner.step_count  # ASHA's clock: outer steps, whatever report_every is
        if learner.step_count % every == 0 or learner.step_count == spec.outer_steps:
            with tempfile.TemporaryDirectory() as d:
                shutil.copy(ckdir / "latest.pt", Path(d) / "latest.pt")
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    run_job(spec, resume=resume, use_ray=True, progress=False, on_step=report)


def _absolute(spec: JobSpec) -> JobSpec:
    """The task file and the tracking URI as absolute references."""
    from nfopt.track import default_tracking_uri

    task = str(task_path(spec.task).absolute())
    tracking = spec.tracking.model_copy(update={"uri": default_tracking_uri(spec.tracking.uri)})
    return spec.model_copy(update={"task": task, "tracking": tracking})


class TuneResult:
    def __init__(self, rows: list[dict], best: dict, best_job: Path, best_optimizer: Path | None, path: str):
        self.rows, self.best, self.best_job, self.best_optimizer, self.experiment_path = (
            rows,
            best,
            best_job,
            best_optimizer,
            path,
        )


def run_sweep(spec: JobSpec, job_path: Path, resume: bool = False) -> TuneResult:
    """Run (or with ``resume`` restore) the sweep of ``spec.search``; Ray must be initialised."""
    spec = _absolute(spec)  # trials run in their own directories
    search = spec.search
    storage = output_dir(search.storage_path, spec.name)
    experiment = f"{spec.name}-sweep"
    w = spec.workers
    bundles = [{"CPU": 0.5}] + [{"CPU": max(w.num_cpus, 0.1), "GPU": w.num_gpus}] * w.count
    trainable = tune.with_resources(_trainable, tune.PlacementGroupFactory(bundles))
    exp_dir = storage / experiment
    if spec.tracking.enabled:
        from nfopt.track import ensure_experiment

        ensure_experiment(spec.tracking.uri, experiment)
    if resume:
        if not tune.Tuner.can_restore(str(exp_dir)):
            raise FileNotFoundError(f"--resume: no restorable sweep at {exp_dir}")
        tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        scheduler = (
            ASHAScheduler(time_attr=TIME_ATTR, max_t=spec.outer_steps, grace_period=search.grace_period)
            if search.scheduler == "asha"
            else FIFOScheduler()
        )
        tuner = tune.Tuner(
            trainable,
            param_space={**_space(search), "_base": spec.model_dump_json(), "_experiment": experiment},
            tune_config=tune.TuneConfig(
                metric=search.metric,
                mode="min",
                scheduler=scheduler,
                search_alg=search_algorithm(search),
                num_samples=search.num_samples,
                max_concurrent_trials=search.max_concurrent,
            ),
            run_config=tune.RunConfig(name=experiment, storage_path=str(storage), verbose=0),
        )
    grid = tuner.fit()
    rows = []
    for r in grid:
        cfg = {k: v for k, v in (r.config or {}).items() if not k.startswith("_")}
        rows.append(
            {
                "trial": Path(r.path).name if r.path else "?",
                **cfg,
                search.metric: (r.metrics or {}).get(search.metric, float("nan")),
                "steps": int((r.metrics or {}).get(TIME_ATTR, 0)),
                "error": bool(r.error),
            }
        )
    best = grid.get_best_result(metric=search.metric, mode="min")
    overrides = {k: v for k, v in best.config.items() if not k.startswith("_")}
    best_spec = apply_overrides(spec, overrides).model_copy(update={"search": None, "name": f"{spec.name}-best"})
    out = storage / experiment
    best_job = out / "best_job.yaml"
    best_job.write_text(yaml.safe_dump(best_spec.model_dump(mode="json"), sort_keys=False))
    best_opt = None
    if best.checkpoint is not None:
        with best.checkpoint.as_directory() as d:
            ck = load_checkpoint(Path(d) / "latest.pt")
        rule = build_rule(best_spec)
        rule.load_state_dict({**rule.state_dict(), **ck["learner"]["theta"]})
        best_opt = save_optimizer(rule, out / "best_learned_optimizer.pt", metadata={"sweep": experiment, **overrides})
        if spec.tracking.enabled:
            from nfopt.track import Tracker

            t = Tracker(spec.tracking.uri, experiment, f"{experiment}-best", {"overrides": overrides})
            t.log_artifact(best_job)
            t.log_artifact(best_opt)
            t.end()
    return TuneResult(rows, overrides, best_job, best_opt, str(out))
