"""The ``nfopt`` command.

Exit codes: 0 success; 2 bad arguments or an invalid job file (the message names the field);
3 a missing checkpoint, sweep or data; 4 an unreachable cluster; 1 a failure during the run (or
a followed job that did not succeed); 130 interrupted (a checkpoint up to the last completed
outer step remains, so ``--resume`` continues).
"""

from __future__ import annotations

import argparse
import logging
import sys

__all__ = ["main"]


def _load(args):
    """``(spec, console)``; ``spec`` is ``None`` (error printed) when the job file is invalid."""
    from rich.console import Console

    from nfopt.jobs import JobSpecError, load_job

    console = Console(stderr=True)
    try:
        return load_job(args.job), console
    except JobSpecError as err:
        console.print(f"[red]error:[/red] {err}")
        return None, console


def _run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    spec, console = _load(args)
    if spec is None:
        return 2
    from nfopt.run import run_job

    try:
        result = run_job(
            spec, resume=args.resume, use_ray=not args.no_ray, address=args.address, max_steps=args.max_steps
        )
    except FileNotFoundError as err:
        console.print(f"[red]error:[/red] {err}")
        return 3
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
    """Meta-train the baselines with the same budget, then the held-out comparison table."""
    from rich.console import Console
    from rich.table import Table

    from nfopt.evaluate import evaluate_tasks
    from nfopt.lopt import load_optimizer
    from nfopt.run import run_job
    from nfopt.tasks import load_suite_tasks

    ev = spec.evaluate
    optimizers = {f"{spec.meta_model.kind} (learned)": load_optimizer(result.optimizer_path).rule}
    for kind in ev.baselines:
        base = spec.model_copy(
            update={
                "name": f"{spec.name}_{kind}",
                "meta_model": spec.meta_model.model_copy(
                    update={
                        "kind": kind,
                        "channels": None,
                        "layers": None,
                        "hidden": None,
                        "blocks": None,
                        "heads": None,
                    }
                ),
                "evaluate": None,
            }
        )
        r = run_job(base, resume=False, use_ray=not args.no_ray, address=args.address)
        optimizers[f"{kind} (learned, same budget)"] = load_optimizer(r.optimizer_path).rule
    rows = evaluate_tasks(
        optimizers, load_suite_tasks(ev.suite), ev.seeds, ev.tuning_seeds, tuple(ev.adam_lrs), ev.steps
    )
    table = Table(title=f"held-out suite {ev.suite}: final train loss (mean of {ev.seeds} seeds), test accuracy")
    for col in ("task", "optimizer", "train loss", "test acc", "vs tuned Adam"):
        table.add_column(col)
    adam = {r.task: r.train_loss for r in rows if r.adam_lr is not None}
    for r in rows:
        versus = f"lr={r.adam_lr:g}" if r.adam_lr is not None else ("beats" if r.train_loss < adam[r.task] else "loses")
        acc = "-" if r.test_accuracy is None else f"{r.test_accuracy:.3f}"
        table.add_row(r.task, r.optimizer, f"{r.train_loss:.4f}", acc, versus)
    Console().print(table)


def _tune(args) -> int:
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    spec, console = _load(args)
    if spec is None:
        return 2
    if spec.search is None:
        console.print(f"[red]error:[/red] {args.job}: no `search` section to tune (see jobs/tune_smoke.yaml)")
        return 2
    from nfopt.cluster import init_ray
    from nfopt.cluster.tune import run_sweep

    init_ray(args.address)
    try:
        result = run_sweep(spec, Path(args.job), resume=args.resume)
    except FileNotFoundError as err:
        console.print(f"[red]error:[/red] {err}")
        return 3
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
    from rich.console import Console

    from nfopt.cluster.submit import ClusterUnreachableError, client, submit

    console = Console(stderr=True)
    try:
        job_id = submit(args.address, args.job, tune=args.tune)
    except ClusterUnreachableError as err:
        console.print(f"[red]error:[/red] {err}")
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
        Console(stderr=True).print(f"[red]error:[/red] {err}")
        return 4
    if args.action == "list":
        for info in c.list_jobs():
            print(f"{info.submission_id}\t{info.status}\t{info.entrypoint}")
    elif args.action == "logs":
        print(c.get_job_logs(args.id), end="")
    else:
        print(c.stop_job(args.id))
    return 0


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nfopt", description="Learned optimizers from neural functionals.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="meta-train a learned optimizer from a job spec")
    run.add_argument("job", help="path to jobs/<name>.yaml")
    run.add_argument("--resume", action="store_true", help="continue from the job's latest checkpoint")
    run.add_argument("--address", default=None, help="attach to a Ray cluster instead of an embedded local one")
    run.add_argument("--no-ray", action="store_true", help="run the workers in this process (debugging)")
    run.add_argument("--max-steps", type=int, default=None, help="stop after this many outer steps (resumable)")
    run.set_defaults(fn=_run)
    tn = sub.add_parser("tune", help="run the job's `search` section as a Ray Tune sweep (ASHA)")
    tn.add_argument("job")
    tn.add_argument("--resume", action="store_true", help="restore an interrupted sweep (Tuner.restore)")
    tn.add_argument("--address", default=None, help="attach to a Ray cluster instead of an embedded local one")
    tn.set_defaults(fn=_tune)
    sb = sub.add_parser("submit", help="submit `nfopt run` (or `tune`) to a Ray cluster via the Jobs API")
    sb.add_argument("job")
    sb.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://HOST:8265")
    sb.add_argument("--tune", action="store_true", help="submit `nfopt tune` instead of `nfopt run`")
    sb.add_argument("--follow", action="store_true", help="stream the job's logs until it ends")
    sb.set_defaults(fn=_submit)
    jb = sub.add_parser("jobs", help="list, show logs of, or stop submitted jobs")
    jb.add_argument("action", choices=["list", "logs", "stop"])
    jb.add_argument("id", nargs="?", default=None)
    jb.add_argument("--address", required=True)
    jb.set_defaults(fn=_jobs)
    ui = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--tracking-uri", default=None)
    ui.set_defaults(fn=_ui)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
