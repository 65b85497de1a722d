"""The ``nfopt`` command.

Exit codes: 0 success; 2 bad arguments or an invalid job file (the message names the field);
3 a missing checkpoint or data; 1 a failure during the run; 130 interrupted (a checkpoint up to
the last completed outer step remains, so ``--resume`` continues).
"""

from __future__ import annotations

import argparse
import logging
import sys

__all__ = ["main"]


def _run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from nfopt.jobs import JobSpecError, load_job

    console = Console(stderr=True)
    try:
        spec = load_job(args.job)
    except JobSpecError as err:
        console.print(f"[red]error:[/red] {err}")
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
    ui = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--tracking-uri", default=None)
    ui.set_defaults(fn=_ui)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
