"""Run a meta-training job: build the rule, the workers and the learner from a
:class:`~nfopt.jobs.JobSpec`, loop with progress, checkpoint atomically, track in MLflow."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch

import nfopt
from nfopt._files import RunExistsError
from nfopt.evaluation.validation import ValidationSet
from nfopt.jobs import JobSpec
from nfopt.lopt import FeatureConfig, LearnedUpdateRule, save_optimizer
from nfopt.lopt.pretrained import pretrained_path
from nfopt.meta import ESTIMATORS, Learner, LocalPool, TaskProblem, Worker
from nfopt.meta.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from nfopt.meta.estimators import selected
from nfopt.specs import child_seed
from nfopt.tasks import load_tasks
from nfopt.tasks.spec import load_suite

__all__ = [
    "MAX_IDLE_STEPS",
    "NoProgressError",
    "PreparedJob",
    "RunExistsError",
    "RunResult",
    "build_rule",
    "check_job",
    "run_job",
]


class NoProgressError(RuntimeError):
    """Meta-training produced no usable meta-gradient: no live estimate (every worker failed or
    none was placed) or a zero one (every inner loss at its clip value: a blown-up rule) for
    :data:`MAX_IDLE_STEPS` steps in a row, or in every step of the run."""


#: Consecutive outer steps without a usable meta-gradient after which a run stops with an error.
MAX_IDLE_STEPS = 5


log = logging.getLogger(__name__)


def build_rule(spec: JobSpec) -> LearnedUpdateRule:
    m = spec.meta_model
    torch.manual_seed(spec.seed)
    flags = ("adam_direction", "loss_features", "fraction", "tensor_features")
    return LearnedUpdateRule(
        m.kind,
        meta_model=m.meta_kwargs(),
        features=FeatureConfig(**{f: f in m.inputs for f in flags}),
        step_mult=m.step_mult,
        exp_mult=m.exp_mult,
        bound=m.bound,
        hand=m.hand,
        lr_head=m.lr_head,
        schedule_knots=m.schedule_knots,
        width_exponent=m.width_exponent,
    )


class PreparedJob(NamedTuple):
    """What :func:`check_job` built on the way: the rule, the θ it starts from and the budget
    already spent on that θ (``init_from``)."""

    rule: LearnedUpdateRule
    theta: dict
    budget: dict


def check_job(spec: JobSpec) -> PreparedJob:
    """Everything that can be checked before meta-training starts, each error naming its field:
    the task family or mixture (``ValueError``, ``FileNotFoundError``), the learned optimizer
    ``init_from`` names and whether it fits ``meta_model``, ``estimator.params``, and the
    evaluation suite and shipped optimizers the ``evaluate`` section names (``ValueError``)."""
    try:
        load_tasks(spec.task)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"task: {err}") from None
    except ValueError as err:
        raise ValueError(f"task: {err}") from None
    rule = build_rule(spec)
    theta, budget = _initial_theta(spec, rule)  # budget: meta-training spent so far, over every resume
    _check_params(spec, theta)
    if spec.evaluate is not None:
        _check_evaluate(spec)
    return PreparedJob(rule, theta, budget)


def _check_evaluate(spec: JobSpec) -> None:
    try:
        load_suite(spec.evaluate.suite)
    except (ValueError, FileNotFoundError) as err:
        raise ValueError(f"evaluate.suite: {err}") from None
    for name in spec.evaluate.pretrained:
        try:
            pretrained_path(name)
        except KeyError as err:
            raise ValueError(f"evaluate.pretrained: {err.args[0]}") from None


def _initial_theta(spec: JobSpec, rule: LearnedUpdateRule) -> tuple[dict, dict]:
    """θ to start from and the meta-training budget already in it: the untrained rule, or the
    learned optimizer named by ``spec.init_from`` (a shipped name, a file or a ``runs:/`` or
    ``models:/`` URI; ``ValueError``
    naming the field that differs when its rule is not the job's ``meta_model``)."""
    budget = {"inner_steps": 0, "wall_s": 0.0}
    if spec.init_from is None:
        return {k: v.detach() for k, v in rule.named_parameters()}, budget
    ref = spec.init_from
    try:  # a shipped name, a path, or an MLflow URI: nfopt.load_optimizer's one resolution
        source = nfopt.load_optimizer(ref)
    except FileNotFoundError as err:  # names the shipped ones
        raise ValueError(f"init_from: {err}") from None
    want, got = rule.config(), source.rule.config()
    addable = {k for k in ("schedule_knots", "width_exponent") if not got.get(k)}  # may be added to a rule
    diff = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k) and k not in addable)
    if diff:
        fields = ", ".join(f"{k}: job {want.get(k)!r} vs {got.get(k)!r}" for k in diff)
        raise ValueError(f"init_from: {ref} is a different rule than meta_model ({fields}); make them match")
    meta = source.metadata or {}
    budget = {"inner_steps": int(meta.get("inner_steps") or 0), "wall_s": float(meta.get("meta_train_wall_s") or 0)}
    start = {k: v.detach() for k, v in rule.named_parameters()}  # entries the source lacks (added ones): at init
    start.update({k: v.detach().clone() for k, v in source.rule.named_parameters()})
    return start, budget


def _check_params(spec: JobSpec, theta: dict) -> None:
    """``estimator.params`` must each name a θ entry (or a dotted prefix of some)."""
    for name in spec.estimator.params or []:
        if not any(selected(k, [name]) for k in theta):
            top = sorted({k.split(".")[0] for k in theta})
            raise ValueError(f"estimator.params: {name!r} is no meta-parameter of this rule; it has {top}")


#: Job fields a checkpoint must share with the job that resumes it (the rest may change: steps, tracking, ...).
RESUME_FIELDS = ("task", "meta_model", "estimator", "inner", "workers.count", "init_from")


def _check_same_job(path: Path, saved: dict, spec: JobSpec) -> None:
    """A checkpoint written by another job (other task, rule, population...) is refused, naming the fields."""
    now = spec.model_dump()
    try:  # fields added since the checkpoint was written take their defaults
        saved = JobSpec.model_validate(saved).model_dump()
    except ValueError:
        pass
    diff = []
    for name in RESUME_FIELDS:
        a, b = saved, now
        for part in name.split("."):
            a, b = (a or {}).get(part), (b or {}).get(part)
        if a != b:
            diff.append(f"{name}: checkpoint {a!r} vs job {b!r}")
    if diff:
        raise CheckpointError(
            f"{path}: written by a different job ({'; '.join(diff)}); resume it with the job that wrote it, "
            "or start again with --overwrite"
        )


def _make_problem(spec_json: str) -> TaskProblem:
    """Top-level (picklable) factory run inside each worker."""
    spec = JobSpec.model_validate_json(spec_json)
    torch.set_num_threads(max(1, int(spec.workers.num_cpus) or 1))
    device = "cuda" if spec.workers.num_gpus > 0 and torch.cuda.is_available() else "cpu"
    if device == "cuda":  # full float32: TF32's 10-bit mantissa can swamp ES/PES loss differences at small sigma
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return TaskProblem(
        load_tasks(spec.task),
        build_rule(spec),
        population=spec.inner.population,
        meta_loss=spec.inner.meta_loss,
        horizon=spec.inner.horizon,
        horizon_range=spec.inner.horizon_range,
        offsets=spec.estimator.kind != "episode_es",  # whole runs: no shortened first episodes
        device=device,
        remat=spec.estimator.remat,
        compile=spec.estimator.compile,
    )


def _estimator(spec: JobSpec):
    e = spec.estimator
    cls, params = ESTIMATORS[e.kind], e.params
    if e.kind == "tbptt":
        return cls(unroll=e.unroll, params=params)
    if e.kind == "episode_es":
        return cls(sigma=e.sigma, params=params)
    return cls(sigma=e.sigma, unroll=e.unroll, params=params)


@dataclass
class RunResult:
    steps: int
    history: list[dict] = field(default_factory=list)
    checkpoint: Path | None = None
    optimizer_path: Path | None = None
    run_id: str | None = None
    model_uri: str | None = None  # the learned optimizer as an MLflow model (models:/NAME/VERSION if registered)


def _best_score(path: Path) -> float:
    """The validation score of the best rule a resumed run kept (``inf`` when there is none)."""
    if not path.exists():
        return math.inf
    return float(nfopt.load_optimizer(path).metadata.get("val_loss", math.inf))


def _plot(history: list[dict], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return None
    xs = [h["step"] for h in history if "meta_loss" in h]
    ys = [h["meta_loss"] for h in history if "meta_loss" in h]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(xs, ys)
    ax.set_xlabel("outer step")
    ax.set_ylabel("meta-loss (train loss / initial loss)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_job(
    spec: JobSpec,
    resume: bool = False,
    use_ray: bool = True,
    address: str | None = None,
    progress: bool = True,
    max_steps: int | None = None,
    on_step=None,
    overwrite: bool = False,
    _pool=None,
) -> RunResult:
    """Meta-train per ``spec``. ``resume`` continues from ``<checkpoint_dir>/latest.pt``; a
    fresh start where a run already is raises :class:`RunExistsError` unless ``overwrite``;
    ``max_steps`` stops early (the run can be resumed); ``on_step(learner, pool, metrics)`` is
    called after every outer step. Returns the history and output paths."""
    rule, theta, budget = check_job(spec)  # a bad task, init_from, suite or name fails here, before any worker starts
    ckdir = spec.checkpoint_dir
    existing = [p for p in (ckdir / "latest.pt", ckdir / "learned_optimizer.pt") if p.exists()]
    if existing and not resume and not overwrite:
        raise RunExistsError(
            f"{ckdir} already holds a run ({', '.join(p.name for p in existing)}): "
            "continue it with --resume, or start again with --overwrite (replaces it)"
        )
    make_problem = functools.partial(_make_problem, spec.model_dump_json())
    estimator = _estimator(spec)
    w = spec.workers
    if use_ray and address is None and w.num_cpus > (os.cpu_count() or 1):
        raise ValueError(
            f"workers.num_cpus={w.num_cpus}: the embedded Ray has {os.cpu_count()} CPUs, so no worker could be "
            "placed; lower it, or pass --address of a cluster with larger nodes"
        )
    if _pool is not None:  # tests: a pool that fails in a chosen way
        pool = _pool
    elif use_ray:
        from nfopt.cluster import RayPool, init_ray

        init_ray(address)
        pool = RayPool(
            make_problem,
            estimator,
            w.count,
            spec.inner.tasks_per_worker,
            spec.seed,
            w.num_cpus,
            w.num_gpus,
            w.timeout_s,
            w.place_timeout_s,
        )
    else:
        seeds = [child_seed(spec.seed, k, stride=1000) for k in range(w.count)]  # as RayPool's workers
        pool = LocalPool([Worker(make_problem, estimator, spec.inner.tasks_per_worker, s) for s in seeds])
    mo = spec.meta_optimizer
    learner = Learner(theta, pool, mo.lr, mo.clip, spec.seed, average_from=mo.average_from(spec.outer_steps))
    latest = ckdir / "latest.pt"
    run_id = None
    if resume:
        if not latest.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {latest}; run without --resume to start")
        ck = load_checkpoint(latest)
        _check_same_job(latest, ck.get("job") or {}, spec)
        try:
            learner.load_state_dict(ck["learner"])
        except (KeyError, RuntimeError, ValueError, TypeError) as err:
            detail = " ".join(str(err).split())[:200]
            raise CheckpointError(f"{latest}: does not fit this job ({detail}); start again with --overwrite") from None
        run_id = ck.get("run_id")
        budget = dict(ck.get("budget") or budget)
    tracker = None
    if spec.tracking.enabled:
        from nfopt.track import Tracker, system_metrics

        tracker = Tracker(
            spec.tracking.uri, spec.tracking.experiment_or("nfopt"), spec.name, spec.model_dump(), run_id=run_id
        )
        run_id = tracker.run_id
    result = RunResult(steps=learner.step_count, run_id=run_id)
    val = spec.validation
    val_set = ValidationSet.draw(load_tasks(spec.task), val.tasks, val.networks, val.steps) if val else None
    best_path = ckdir / "best_optimizer.pt"
    if not resume and best_path.exists():  # a fresh start (--overwrite): the old run's best goes with it
        best_path.unlink()
    best = _best_score(best_path)
    start_step = learner.step_count
    end = spec.outer_steps if max_steps is None else min(spec.outer_steps, learner.step_count + max_steps)
    status = "FAILED"

    def checkpoint() -> Path:
        return save_checkpoint(
            {
                "learner": learner.state_dict(),
                "job": spec.model_dump(),
                "run_id": run_id,
                "budget": dict(budget),
                "format": "nfopt.run/1",
            },
            latest,
        )

    def saved_rule() -> LearnedUpdateRule:
        """The rule as it would be saved now: the final θ (the running mean when averaging)."""
        rule.load_state_dict({**rule.state_dict(), **learner.final_theta()})
        return rule

    def metadata(**extra) -> dict:
        return {
            "job": spec.name,
            "outer_steps": learner.step_count,
            "averaged_outer_steps": learner.avg_count,
            "inner_steps": int(budget["inner_steps"]),
            "meta_train_wall_s": round(budget["wall_s"], 1),
            "task": spec.task,
            "init_from": spec.init_from,
            **extra,
            "spec": spec.model_dump(mode="json"),
        }

    try:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[loss]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, disable=not progress, transient=False) as bar:
            task = bar.add_task(spec.name, total=spec.outer_steps, completed=learner.step_count, loss="")
            idle = usable_steps = 0
            while learner.step_count < end:
                t0 = time.perf_counter()
                m = learner.step()
                m["step"] = learner.step_count
                norm = m.get("grad_norm", 0.0)  # absent: no live estimate
                usable = math.isfinite(norm) and norm > 0
                m["usable_gradient"] = float(usable)
                idle = 0 if usable else idle + 1
                usable_steps += usable
                if not usable:
                    why = "no live estimate" if "grad_norm" not in m else "a zero meta-gradient (every loss clipped?)"
                    log.warning("outer step %d: %s (%d in a row)", learner.step_count, why, idle)
                elapsed = time.perf_counter() - t0
                m["inner_steps_per_s"] = m["inner_steps"] / max(elapsed, 1e-9)
                budget["inner_steps"] += m["inner_steps"]
                budget["wall_s"] += elapsed
                m["budget_inner_steps"] = budget["inner_steps"]
                if val and (learner.step_count % val.every == 0 or learner.step_count == spec.outer_steps):
                    current = saved_rule()
                    m["val_loss"] = val_set.score(current)
                    if m["val_loss"] < best:
                        best = m["val_loss"]
                        save_optimizer(current, best_path, metadata=metadata(val_loss=best))
                result.history.append(m)
                if learner.step_count % spec.checkpoint.every == 0:
                    result.checkpoint = checkpoint()
                if on_step is not None:  # after the checkpoint, so a hook can ship it (Tune)
                    on_step(learner, pool, m)
                if tracker:
                    live = getattr(pool, "placed", pool.size)
                    tracker.log_metrics({**m, "live_workers": live, **system_metrics()}, step=learner.step_count)
                bar.update(task, completed=learner.step_count, loss=f"meta-loss {m.get('meta_loss', float('nan')):.4f}")
                if idle >= MAX_IDLE_STEPS:
                    raise NoProgressError(
                        f"{spec.name}: {idle} outer steps in a row without a usable meta-gradient ({why}); "
                        "check workers.num_cpus against the cluster, the task, and meta_model.step_mult"
                    )
            if learner.step_count > start_step and usable_steps == 0:
                raise NoProgressError(
                    f"{spec.name}: no outer step produced a usable meta-gradient ({why}); the rule was not trained"
                )
        result.checkpoint = checkpoint()
        result.optimizer_path = save_optimizer(saved_rule(), ckdir / "learned_optimizer.pt", metadata=metadata())
        (ckdir / "job.json").write_text(json.dumps(spec.model_dump(), indent=2))
        curve = _plot(result.history, ckdir / "meta_loss.png") if result.history else None
        if tracker:
            kept = best_path if best_path.exists() else None
            for p in (result.checkpoint, result.optimizer_path, ckdir / "job.json", curve, kept):
                if p is not None:
                    tracker.log_artifact(p)
            result.model_uri = tracker.log_optimizer_model(result.optimizer_path, spec.tracking.register_as)
        status = "FINISHED" if learner.step_count >= spec.outer_steps else "KILLED"  # KILLED: partial, resumable
    finally:
        result.steps = learner.step_count
        if tracker:
            tracker.end(status)
        if use_ray:
            pool.shutdown()
    return result
