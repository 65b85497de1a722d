"""One entry point for ``nfopt evaluate`` and a job's ``evaluate`` section: load optimizers,
run the protocol (Ray tasks or in-process) with a progress bar, write the report, log it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import nfopt
from nfopt._files import claim_output
from nfopt.evaluation.protocol import EvalSettings, TaskResult, evaluate_suite
from nfopt.evaluation.report import SummaryRow, print_table, summarize, win_fraction, write_report
from nfopt.jobs import JobSpec
from nfopt.lopt import LearnedUpdateRule
from nfopt.recipes.meta_train import run_job
from nfopt.specs import TrackingSpec
from nfopt.tasks import load_suite_tasks

__all__ = ["EvaluationRun", "evaluate_job", "load_optimizers", "run_evaluation", "untrained_name", "with_untrained"]

UNTRAINED = " (untrained)"


def _init_key(rule) -> tuple:
    """What an untrained rule computes depends only on these (its head is zero, so the
    meta-model's kind and size do not matter)."""
    cfg = rule.config()
    return tuple(sorted((k, repr(v)) for k, v in cfg.items() if k not in ("kind", "meta_model")))


def untrained_name(optimizers: dict, name: str) -> str:
    """The row :func:`with_untrained` gives the initialisation of learned rule ``name``."""

    key = _init_key(optimizers[name])
    group = [n for n, r in optimizers.items() if isinstance(r, LearnedUpdateRule) and _init_key(r) == key]
    return name + UNTRAINED if len(group) == 1 else "untrained (" + ", ".join(group) + ")"


def with_untrained(optimizers: dict) -> dict:
    """``optimizers`` plus each learned rule's own initialisation (the same rule rebuilt from its
    config, never meta-trained: Adam at the rule's base step), named ``"<name> (untrained)"``:
    the baseline that shows what meta-training, not the Adam start, contributes. Rules whose
    initialisations compute the same function (same config apart from the meta-model) share one
    row, ``"untrained (<names>)"`` (:func:`untrained_name`)."""

    out: dict = {}
    for name, rule in optimizers.items():
        out[name] = rule
        if isinstance(rule, LearnedUpdateRule) and not name.endswith(UNTRAINED):
            row = untrained_name(optimizers, name)
            if row not in out:
                out[row] = LearnedUpdateRule.from_config(rule.config()).eval()
    return out


def load_optimizers(refs: list[str]) -> dict:
    """``{name: update rule}`` from ``PATH``, ``runs:/<id>/learned_optimizer.pt`` or ``NAME=REF``
    entries, or a shipped optimizer's name; unnamed files are called ``<kind>:<job>`` from the
    file's metadata, shipped ones by their name."""

    out: dict = {}
    shipped = set(nfopt.list_pretrained())
    for ref in refs:
        name, _, target = ref.rpartition("=") if "=" in ref and not ref.startswith("runs:/") else ("", "", ref)
        trained = nfopt.load_optimizer(target)
        if not name and target in shipped and not Path(target).exists():
            name = target
        name = name or f"{trained.rule.kind}:{trained.metadata.get('job') or Path(target).stem}"
        while name in out:
            name += "'"
        out[name] = trained.rule
    return out


@dataclass
class EvaluationRun:
    results: list[TaskResult]
    rows: list[SummaryRow]
    paths: dict[str, Path]
    run_id: str | None = None


def _metric_key(*parts: str) -> str:
    return ".".join(re.sub(r"[^\w\-. :/]", "_", p).strip("_") for p in parts)


def run_evaluation(
    tasks: list,
    optimizers: dict,
    settings: EvalSettings,
    out: str | Path,
    *,
    title: str = "nfopt evaluation",
    use_ray: bool = True,
    address: str | None = None,
    num_cpus: float = 1.0,
    tracking: TrackingSpec | None = None,
    progress: bool = True,
    console=None,
    untrained: bool = True,
    overwrite: bool = False,
) -> EvaluationRun:
    """Evaluate, print the table, write the report under ``out`` and (with ``tracking``) log
    metrics and every output file to one MLflow run. With
    ``untrained`` every learned rule is joined by its own initialisation (:func:`with_untrained`).
    A previous report in ``out`` raises :class:`~nfopt._files.RunExistsError` before any work
    unless ``overwrite``."""
    claim_output(Path(out) / "results.json", overwrite, "evaluation report")
    inits: dict[str, str] = {}
    if untrained:
        inits = {n: untrained_name(optimizers, n) for n, r in optimizers.items() if isinstance(r, LearnedUpdateRule)}
        optimizers = with_untrained(optimizers)
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = console or Console(stderr=True)
    with Progress(
        TextColumn("[bold]evaluate[/bold] {task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} tasks"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not progress,
    ) as bar:
        job = bar.add_task("", total=len(tasks))

        def tick(done: int, total: int, name: str) -> None:
            bar.update(job, completed=done, description=f"finished {name}")

        if use_ray:
            from nfopt.cluster import init_ray
            from nfopt.cluster.evaluate import evaluate_suite_ray

            init_ray(address)
            results = evaluate_suite_ray(tasks, optimizers, settings, num_cpus=num_cpus, progress=tick)
        else:
            results = evaluate_suite(tasks, optimizers, settings, progress=tick)
    paths = write_report(results, out, settings, title, inits)
    rows = summarize(results)
    print_table(rows, title)
    run = EvaluationRun(results, rows, paths)
    if tracking is not None:
        from nfopt.track import Tracker

        params = {"tasks": [t.name for t in tasks], "optimizers": list(optimizers), **settings.__dict__}
        tracker = Tracker(tracking.uri, tracking.experiment_or("nfopt"), title, params)
        metrics = {}
        for r in rows:
            for key in ("train_loss", "test_loss", "test_accuracy", "ms_per_step", "speedup"):
                if r[key] is not None:
                    metrics[_metric_key(r["task"], r["optimizer"], key)] = r[key]
        for name in {r["optimizer"] for r in rows if r["vs_ref"] in ("beats", "loses")}:
            metrics[_metric_key(name, "beats_adam_fraction")] = win_fraction(rows, name)
        tracker.log_metrics(metrics, step=0)
        for p in paths.values():
            tracker.log_artifact(p)
        tracker.log_artifact(Path(out) / "curves", "curves")
        run.run_id = tracker.run_id
        tracker.end()
    return run


def evaluate_job(
    spec: JobSpec, optimizer_path: str | Path, use_ray: bool = True, address: str | None = None, overwrite: bool = False
) -> EvaluationRun:
    """A finished job's ``evaluate`` section: meta-train each of ``evaluate.baselines`` (other
    meta-model kinds) with the job's recipe and budget, then the held-out report of the job's
    learned optimizer beside them, the shipped ``evaluate.pretrained`` ones and the tuned
    baselines (in ``<run dir>/evaluation``, logged to MLflow when the job tracks)."""
    ev = spec.evaluate
    if ev is None:
        raise ValueError(f"job {spec.name!r} has no evaluate section")
    optimizers = {f"{spec.meta_model.kind} (learned)": nfopt.load_optimizer(optimizer_path).rule}
    for kind in ev.baselines:
        base = spec.model_copy(
            update={"name": f"{spec.name}_{kind}", "meta_model": spec.meta_model.as_kind(kind), "evaluate": None}
        )
        r = run_job(base, resume=False, use_ray=use_ray, address=address, overwrite=overwrite)
        optimizers[f"{kind} (learned, same budget)"] = nfopt.load_optimizer(r.optimizer_path).rule
    for name in ev.pretrained:
        optimizers[f"{name} (pretrained)"] = nfopt.load_optimizer(name).rule
    settings = EvalSettings(
        seeds=ev.seeds,
        tuning_seeds=ev.tuning_seeds,
        baselines=tuple(ev.tuned_baselines),
        adam_lrs=tuple(ev.adam_lrs),
        sgd_lrs=tuple(ev.sgd_lrs),
        steps=ev.steps,
    )
    tr = spec.tracking
    return run_evaluation(
        load_suite_tasks(ev.suite),
        optimizers,
        settings,
        Path(optimizer_path).parent / "evaluation",
        title=f"{spec.name} on held-out suite {Path(ev.suite).stem}",
        use_ray=use_ray,
        address=address,
        tracking=tr if tr.enabled else None,
        overwrite=True,  # the run's own report: replaced whenever its run is (re)started or resumed
    )
