"""The ``nfopt`` command.

Exit codes: 0 success; 2 bad arguments or an invalid job file (the message names the field);
3 a missing checkpoint, sweep or data; 4 an unreachable cluster or tracking server; 5 a run
already where a new one would go (``--resume`` or ``--overwrite``); 6 meta-training made no
progress (no usable meta-gradient); 1 a failure during the run (or a followed job that did not
succeed); 130 interrupted (a checkpoint up to the last completed outer step remains, so
``--resume`` continues).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rich.markup import escape

from nfopt._malloc import tune_allocator

__all__ = ["main"]


def _error(console, text: str) -> None:
    """Print ``error: TEXT`` (``TEXT`` literal: rich markup such as ``[min, max]`` is not interpreted)."""
    console.print("[red]error:[/red] " + escape(text))


def _load(args):
    """``(spec, console)``; ``spec`` is ``None`` (error printed) when the job file is invalid."""
    from rich.console import Console

    from nfopt.jobs import JobSpecError, apply_overrides, load_job

    console = Console(stderr=True)
    try:
        spec = load_job(args.job)
        sets = getattr(args, "set", None) or []
        if sets:
            spec = apply_overrides(spec, _parse_sets(sets), what="--set")
        return spec, console
    except JobSpecError as err:
        _error(console, str(err))
        return None, console


def _parse_sets(items: list[str]) -> dict:
    """``["a.b=1e-3", "c=[1, 2]"]`` -> ``{"a.b": 0.001, "c": [1, 2]}`` (values read as YAML)."""
    import yaml

    from nfopt.jobs import JobSpecError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise JobSpecError(f"--set {item!r}: write FIELD=VALUE, e.g. --set meta_optimizer.lr=1e-3")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise JobSpecError(f"--set {item!r}: the value is not valid YAML ({err})") from None
        if isinstance(parsed, str):  # YAML 1.1 reads 1e-3 as a string: numbers as Python writes them
            for cast in (int, float):
                try:
                    parsed = cast(parsed)
                    break
                except ValueError:
                    pass
        out[key.strip()] = parsed
    return out


def _validate(args) -> int:
    spec, console = _load(args)
    if spec is None:
        return 2
    from nfopt.recipes.meta_train import check_job

    try:
        check_job(spec)
    except (ValueError, FileNotFoundError) as err:
        _error(console, f"{args.job}: {err}")
        return 2
    from rich.console import Console

    Console().print(f"{args.job}: valid; outputs would go to {spec.checkpoint_dir}")
    return 0


def _run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    spec, console = _load(args)
    if spec is None:
        return 2
    from nfopt._files import RunExistsError
    from nfopt.cluster.submit import ClusterUnreachableError
    from nfopt.recipes.meta_train import NoProgressError, run_job
    from nfopt.track import TrackingUnreachableError

    console.print(f"[dim]outputs: {escape(str(spec.checkpoint_dir))}[/dim]")
    try:
        result = run_job(
            spec,
            resume=args.resume,
            use_ray=not args.no_ray,
            address=args.address,
            max_steps=args.max_steps,
            overwrite=args.overwrite,
        )
    except RunExistsError as err:
        _error(console, str(err))
        return 5
    except NoProgressError as err:
        _error(console, str(err))
        return 6
    except (ClusterUnreachableError, TrackingUnreachableError) as err:
        _error(console, str(err))
        return 4
    except FileNotFoundError as err:
        _error(console, f"{args.job}: {err}")
        return 3
    except ValueError as err:  # a task or mixture file that does not validate (names the file and field)
        _error(console, f"{args.job}: {err}")
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]: resume with --resume")
        return 130
    table = Table(title=f"nfopt run {spec.name}")
    for col in ("outer steps", "first meta-loss", "last meta-loss", "learned optimizer", "MLflow run"):
        table.add_column(col)
    losses = [h["meta_loss"] for h in result.history if "meta_loss" in h]
    table.add_row(
        str(result.steps),
        f"{losses[0]:.4f}" if losses else "-",
        f"{losses[-1]:.4f}" if losses else "-",
        str(result.optimizer_path),
        result.run_id or "-",
    )
    Console().print(table)
    if spec.evaluate is not None and result.steps >= spec.outer_steps:
        _evaluate(spec, result, args)
    return 0


def _evaluate(spec, result, args) -> None:
    """The job's ``evaluate`` section (:func:`nfopt.recipes.evaluate.evaluate_job`)."""
    from nfopt.recipes.evaluate import evaluate_job

    evaluate_job(spec, result.optimizer_path, use_ray=not args.no_ray, address=args.address, overwrite=args.overwrite)


def _evaluate_cmd(args) -> int:
    from rich.console import Console

    from nfopt._files import RunExistsError
    from nfopt.evaluation import EvalSettings
    from nfopt.recipes.evaluate import load_optimizers, run_evaluation
    from nfopt.specs import TrackingSpec
    from nfopt.tasks import load_suite_tasks

    console = Console(stderr=True)

    def grid(text: str | None, name: str):
        if text is None:
            return None
        try:
            return tuple(float(x) for x in text.split(","))
        except ValueError:
            raise ValueError(f"--{name}: {text!r} is not comma-separated numbers, e.g. 1e-3,1e-2") from None

    try:
        tasks = load_suite_tasks(args.suite)
        if args.tasks:
            wanted = set(args.tasks.split(","))
            missing = wanted - {t.name for t in tasks}
            if missing:
                raise ValueError(f"--tasks: {sorted(missing)} not in the suite; it has {[t.name for t in tasks]}")
            tasks = [t for t in tasks if t.name in wanted]
        extra = {
            k: v
            for k, v in (("adam_lrs", grid(args.adam_lrs, "adam-lrs")), ("sgd_lrs", grid(args.sgd_lrs, "sgd-lrs")))
            if v
        }
        baselines = tuple(b for b in args.baselines.split(",") if b)
        settings = EvalSettings(args.seeds, args.tuning_seeds, baselines, steps=args.steps, **extra)
        optimizers = load_optimizers(args.optimizer or [])
    except FileNotFoundError as err:
        _error(console, str(err))
        return 3
    except ValueError as err:  # includes pydantic's ValidationError and malformed optimizer files
        _error(console, str(err))
        return 2
    out = Path(args.out or f"reports/{Path(args.suite).stem}")
    if out.exists() and not out.is_dir():
        _error(console, f"--out {out}: is a file; give a directory for the report")
        return 2
    if not optimizers and not settings.baselines:
        _error(console, "nothing to evaluate: give --optimizer PATH (or keep the baselines)")
        return 2
    try:
        run = run_evaluation(
            tasks,
            optimizers,
            settings,
            out,
            title=f"held-out suite {Path(args.suite).stem}",
            use_ray=not args.no_ray,
            address=args.address,
            tracking=None if args.no_track else TrackingSpec(uri=args.tracking_uri, experiment=args.experiment),
            overwrite=args.overwrite,
        )
    except RunExistsError as err:
        _error(console, str(err))
        return 5
    except FileNotFoundError as err:  # a dataset's files (DataNotFoundError says where it looked)
        _error(console, f"{args.suite}: {err}")
        return 3
    console.print(f"report: {run.paths['report']}" + (f"  MLflow run: {run.run_id}" if run.run_id else ""))
    return 0


def _tune(args) -> int:
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    spec, console = _load(args)
    if spec is None:
        return 2
    if spec.search is None:
        _error(console, f"{args.job}: no `search` section to tune (see jobs/meta/tune_smoke.yaml)")
        return 2
    from nfopt.cluster import init_ray
    from nfopt.recipes.sweep import run_sweep

    init_ray(args.address)
    try:
        result = run_sweep(spec, Path(args.job), resume=args.resume)
    except FileNotFoundError as err:
        _error(console, str(err))
        return 3
    except ImportError as err:  # search.algorithm's package is not installed
        _error(console, f"{args.job}: {err}")
        return 2
    table = Table(title=f"nfopt tune {spec.name}: trials")
    cols = list(result.rows[0]) if result.rows else []
    for c in cols:
        table.add_column(str(c))
    for r in sorted(result.rows, key=lambda r: r.get(spec.search.metric, float("inf"))):
        table.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in r.values()])
    Console().print(table)
    Console().print(
        f"best: {result.best}\nbest job: {result.best_job}\nbest learned optimizer: {result.best_optimizer}"
    )
    return 0


def _submit(args) -> int:
    from nfopt.cluster.submit import ClusterUnreachableError, client, submit

    spec, console = _load(args)  # validated here (with its --set overrides) before it travels
    if spec is None:
        return 2
    try:
        job_id = submit(args.address, args.job, tune=args.tune, sets=args.set)
    except ClusterUnreachableError as err:
        _error(console, str(err))
        return 4
    print(job_id)
    if args.follow:
        import asyncio

        async def tail() -> None:
            async for lines in client(args.address).tail_job_logs(job_id):
                print(lines, end="")

        asyncio.run(tail())
        status = client(args.address).get_job_status(job_id)
        print(f"job {job_id}: {status}")
        return 0 if str(status).endswith("SUCCEEDED") else 1
    return 0


def _jobs(args) -> int:
    from rich.console import Console

    from nfopt.cluster.submit import ClusterUnreachableError, client

    try:
        c = client(args.address)
    except ClusterUnreachableError as err:
        _error(Console(stderr=True), str(err))
        return 4
    if args.action == "list":
        for info in c.list_jobs():
            print(f"{info.submission_id}\t{info.status}\t{info.entrypoint}")
    elif args.action == "logs":
        print(c.get_job_logs(args.id), end="")
    else:
        print(c.stop_job(args.id))
    return 0


def _experiment(args, kinds: tuple[str, ...], hint: str = "") -> int:
    """Load an experiment spec of one of ``kinds`` and run it (``nfopt zoo`` / ``nfopt inr``)."""
    from rich.console import Console

    from nfopt._files import RunExistsError
    from nfopt.recipes.experiments import ExperimentSpecError, load_experiment

    console = Console(stderr=True)
    try:
        spec = load_experiment(args.job, kinds)
    except FileNotFoundError as err:
        _error(console, str(err))
        return 3
    except ExperimentSpecError as err:
        _error(console, f"{err}{hint}")
        return 2
    try:
        if spec.experiment == "zoo":
            from nfopt.zoo.store import build_zoo

            out = build_zoo(spec, use_ray=not args.no_ray, address=args.address)
            console.print(f"zoo: {out} ({spec.runs} runs x {len(spec.save_epochs)} checkpoints)")
        elif spec.experiment == "inr_fit":
            from nfopt.inrs.store import build_inrs

            console.print(f"INR dataset: {build_inrs(spec, use_ray=not args.no_ray, address=args.address)}")
        else:
            from nfopt.recipes.generalization import run_generalization
            from nfopt.recipes.inr_classify import run_classify
            from nfopt.recipes.inr_edit import run_edit
            from nfopt.recipes.tickets import run_tickets

            runners = {"generalization": run_generalization, "tickets": run_tickets}
            runners |= {"inr_classify": run_classify, "inr_edit": run_edit}
            runners[spec.experiment](spec, overwrite=args.overwrite)
    except RunExistsError as err:
        _error(console, str(err))
        return 5
    except FileNotFoundError as err:
        _error(console, str(err))
        return 3
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]: run the same command again to resume (complete shards are kept)")
        return 130
    return 0


def _zoo(args) -> int:
    return _experiment(args, ("zoo", "generalization", "tickets"))


def _inr(args) -> int:
    hint = f" (`nfopt inr {args.action}` takes experiment: inr_{args.action})"
    return _experiment(args, (f"inr_{args.action}",), hint)


def _ui(args) -> int:
    import subprocess

    from nfopt.track import default_tracking_uri

    uri = default_tracking_uri(args.tracking_uri)
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(args.port),
    ]
    return subprocess.call(cmd)


def _pretrained(args) -> int:
    from rich.console import Console

    from nfopt.lopt import list_pretrained, ship_pretrained

    console = Console()
    if args.action == "list":
        for name, desc in list_pretrained().items():
            console.print(f"[bold]{name}[/bold]  {desc}")
        return 0
    if args.action == "show":
        import json

        from nfopt.lopt import load_optimizer
        from nfopt.lopt.pretrained import pretrained_path

        if not args.run_dir:
            _error(console, "show needs NAME (see `nfopt pretrained list`)")
            return 2
        try:
            path = pretrained_path(args.run_dir)
        except KeyError as err:
            _error(console, f"{err.args[0]}")
            return 2
        trained = load_optimizer(path)
        meta = {k: v for k, v in trained.metadata.items() if k != "spec"}
        console.print(f"[bold]{args.run_dir}[/bold]  {escape(str(path))}")
        console.print(escape(json.dumps({"config": trained.rule.config(), "metadata": meta}, indent=2, default=str)))
        report = path.with_suffix(".md")
        if report.is_file():
            console.print(escape(report.read_text()))
        return 0
    if not args.run_dir or not args.name:
        _error(console, "ship needs RUN_DIR and --name NAME")
        return 2
    try:
        dest = ship_pretrained(args.run_dir, args.name, args.report, overwrite=args.overwrite)
    except FileNotFoundError as err:
        _error(console, str(err))
        return 3
    except (FileExistsError, ValueError) as err:
        _error(console, str(err))
        return 2
    console.print(f"shipped {args.name}: {dest}")
    return 0


def _runs(args) -> int:
    from rich.console import Console

    from nfopt.track import repair_runs

    fixed = repair_runs(args.tracking_uri, args.experiment)
    Console().print(f"marked {len(fixed)} run(s) whose process died as KILLED" + "".join(f"\n  {r}" for r in fixed))
    return 0


def _add_set(parser: argparse.ArgumentParser, what: str = "override a job field") -> None:
    parser.add_argument("--set", action="append", metavar="FIELD=VALUE", help=f"{what}, e.g. meta_optimizer.lr=1e-3")


EXIT_CODES = """exit codes:
  0    success
  1    a failure during the run (or a followed job that did not succeed)
  2    bad arguments or an invalid file (the message names the file and the field)
  3    a missing file: checkpoint, sweep, data, optimizer
  4    an unreachable Ray cluster or MLflow tracking server
  5    a run, report or result already where a new one would go (use --resume or --overwrite)
  6    meta-training made no progress (no usable meta-gradient)
  130  interrupted (--resume continues from the last checkpoint)"""


def main(argv: list[str] | None = None) -> int:
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("nfopt")
    except PackageNotFoundError:  # run from a source tree without installing
        ver = "unknown"
    parser = argparse.ArgumentParser(
        prog="nfopt",
        description="Learned optimizers from neural functionals.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"nfopt {ver}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="meta-train a learned optimizer from a job spec")
    run.add_argument("job", help="path to a job spec, e.g. jobs/meta/quickstart.yaml")
    run.add_argument("--resume", action="store_true", help="continue from the job's latest checkpoint")
    run.add_argument("--address", default=None, help="attach to a Ray cluster instead of an embedded local one")
    run.add_argument("--no-ray", action="store_true", help="run the workers in this process (debugging)")
    run.add_argument("--max-steps", type=int, default=None, help="stop after this many outer steps (resumable)")
    run.add_argument("--overwrite", action="store_true", help="start again where a run already is (replaces it)")
    _add_set(run)
    run.set_defaults(fn=_run)
    va = sub.add_parser("validate", help="check a job (its task, suite and pretrained names too) without running it")
    va.add_argument("job")
    _add_set(va)
    va.set_defaults(fn=_validate)
    tn = sub.add_parser("tune", help="run the job's `search` section as a Ray Tune sweep (ASHA)")
    tn.add_argument("job")
    tn.add_argument("--resume", action="store_true", help="restore an interrupted sweep (Tuner.restore)")
    tn.add_argument("--address", default=None, help="attach to a Ray cluster instead of an embedded local one")
    _add_set(tn)
    tn.set_defaults(fn=_tune)
    sb = sub.add_parser("submit", help="submit `nfopt run` (or `tune`) to a Ray cluster via the Jobs API")
    sb.add_argument("job")
    sb.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://HOST:8265")
    sb.add_argument("--tune", action="store_true", help="submit `nfopt tune` instead of `nfopt run`")
    sb.add_argument("--follow", action="store_true", help="stream the job's logs until it ends")
    _add_set(sb, "override a job field (applied remotely)")
    sb.set_defaults(fn=_submit)
    jb = sub.add_parser("jobs", help="list, show logs of, or stop submitted jobs")
    jb.add_argument("action", choices=["list", "logs", "stop"])
    jb.add_argument("id", nargs="?", default=None)
    jb.add_argument("--address", required=True)
    jb.set_defaults(fn=_jobs)
    ev = sub.add_parser("evaluate", help="learned optimizers vs tuned Adam/SGD on a held-out suite")
    ev.add_argument("--optimizer", action="append", help="PATH, runs:/<id>/learned_optimizer.pt or NAME=REF (repeat)")
    ev.add_argument("--suite", required=True, help="a suite in tasks/suites/ or a path")
    ev.add_argument("--seeds", type=int, default=5, help="evaluation seeds per task")
    ev.add_argument("--tuning-seeds", type=int, default=3, help="separate seeds for tuning the baselines' lr")
    ev.add_argument("--baselines", default="adam,sgd", help="tuned baselines, comma-separated (adam, sgd; '' none)")
    ev.add_argument("--adam-lrs", default=None, help="Adam's lr grid, e.g. 1e-4,1e-3,1e-2")
    ev.add_argument("--sgd-lrs", default=None, help="SGD-momentum's lr grid")
    ev.add_argument("--steps", type=int, default=None, help="inner steps (default: each task's horizon)")
    ev.add_argument("--tasks", default=None, help="only these tasks of the suite, comma-separated")
    ev.add_argument("--out", default=None, help="report directory (default reports/<suite>)")
    ev.add_argument("--address", default=None, help="attach to a Ray cluster instead of an embedded local one")
    ev.add_argument("--no-ray", action="store_true", help="evaluate the tasks one after another in this process")
    ev.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    ev.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default sqlite:///<cwd>/mlflow.db)")
    ev.add_argument("--experiment", default="nfopt-evaluate")
    ev.add_argument("--overwrite", action="store_true", help="replace a previous report in --out")
    ev.set_defaults(fn=_evaluate_cmd)
    zo = sub.add_parser(
        "zoo", help="build a model zoo, or run a zoo experiment (generalization prediction, winning tickets)"
    )
    zo.add_argument("job", help="jobs/experiments/zoo_*.yaml, generalization*.yaml, tickets*.yaml")
    zo.add_argument("--address", default=None, help="attach to a Ray cluster instead of an embedded local one")
    zo.add_argument("--no-ray", action="store_true", help="train zoo shards one after another in this process")
    zo.add_argument("--overwrite", action="store_true", help="replace an experiment's previous results.json")
    zo.set_defaults(fn=_zoo)
    ir = sub.add_parser("inr", help="INR experiments: fit an INR dataset, classify INRs, edit INRs")
    ir.add_argument("action", choices=["fit", "classify", "edit"])
    ir.add_argument("job", help="jobs/experiments/inr_*.yaml")
    ir.add_argument("--address", default=None, help="attach to a Ray cluster instead of an embedded local one")
    ir.add_argument("--no-ray", action="store_true", help="fit shards one after another in this process")
    ir.add_argument("--overwrite", action="store_true", help="replace an experiment's previous results.json")
    ir.set_defaults(fn=_inr)
    pt = sub.add_parser(
        "pretrained",
        aliases=["optimizers"],
        help="list or show the shipped learned optimizers, or ship a finished run as one",
    )
    pt.add_argument("action", choices=["list", "show", "ship"])
    pt.add_argument("run_dir", nargs="?", default=None, help="show: the optimizer's NAME; ship: the run's directory")
    pt.add_argument("--name", default=None, help="ship: the name to load it by")
    pt.add_argument("--report", default=None, help="ship: its evaluation report (markdown)")
    pt.add_argument("--overwrite", action="store_true", help="ship: replace a shipped optimizer of that name")
    pt.set_defaults(fn=_pretrained)
    rn = sub.add_parser("runs", help="repair the MLflow record: runs whose process died are marked KILLED")
    rn.add_argument("action", choices=["repair"])
    rn.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default sqlite:///<cwd>/mlflow.db)")
    rn.add_argument("--experiment", default=None, help="only this experiment (default: all)")
    rn.set_defaults(fn=_runs)
    ui = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--tracking-uri", default=None)
    ui.set_defaults(fn=_ui)
    args = parser.parse_args(argv)
    tune_allocator()  # nfopt's own process: keep freed tensors' memory in the heap (nfopt._malloc)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
