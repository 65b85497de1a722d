"""Outputs of a held-out evaluation: a summary per (task, optimizer) with win/loss against the
tuned reference and the speed-up, a terminal table, CSV/JSON, PNG plots and a markdown report."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict
from pathlib import Path

import torch

from nfopt.evaluation.protocol import EvalSettings, OptimizerResult, TaskResult

__all__ = [
    "SummaryRow",
    "markdown_table",
    "print_table",
    "smooth",
    "speedup",
    "summarize",
    "win_fraction",
    "write_report",
]

SummaryRow = (
    dict  # task, optimizer, train_loss(_std), test_loss, test_accuracy, ms_per_step, lr, vs_ref, speedup, diverged
)


def smooth(curve: torch.Tensor, window: int) -> torch.Tensor:
    """Trailing moving average of ``curve (steps,)`` over ``window`` steps (shorter at the start)."""
    c = torch.cat([curve.new_zeros(1), curve.double().cumsum(0)])
    t = torch.arange(1, len(curve) + 1)
    lo = (t - window).clamp(min=0)
    return ((c[t] - c[lo]) / (t - lo)).to(curve.dtype)


def _mean_curve(r: OptimizerResult) -> torch.Tensor:
    return torch.tensor(r.curve, dtype=torch.float64).mean(1)  # (steps,) mean over seeds


def speedup(opt: OptimizerResult, ref: OptimizerResult) -> float | None:
    """The fraction of the steps ``opt`` needs for its (smoothed, seed-mean) minibatch loss to
    reach ``ref``'s final one: 0.5 means twice as fast; ``None`` if it never gets there."""
    steps = len(ref.curve)
    window = max(1, steps // 20)
    target = smooth(_mean_curve(ref), window)[-1]
    reached = (smooth(_mean_curve(opt), window) <= target).nonzero()
    return None if len(reached) == 0 else (int(reached[0]) + 1) / steps


def _std(xs: list[float]) -> float:
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / max(1, len(xs) - 1))


def summarize(results: list[TaskResult], reference: str = "adam") -> list[SummaryRow]:
    """One row per (task, optimizer): mean/std final train loss over seeds, test loss/accuracy,
    wall time per step, tuned lr, ``vs_ref`` (beats/loses/reference) and :func:`speedup`."""
    rows = []
    for tr in results:
        ref = tr[reference] if any(r.name == reference for r in tr.results) else None
        for r in tr.results:
            if ref is None or r is ref:
                versus, speed = ("reference" if r is ref else "-"), None
            else:
                versus = "beats" if r.mean_train_loss < ref.mean_train_loss else "loses"
                speed = speedup(r, ref)
            acc = r.test_accuracy
            first = r.curve[0] if r.curve else [math.inf] * len(r.train_loss)
            diverged = sum(not math.isfinite(f) or f > 2 * l0 for f, l0 in zip(r.train_loss, first))
            rows.append(
                {
                    "task": tr.task,
                    "optimizer": r.name,
                    "train_loss": r.mean_train_loss,
                    "train_loss_std": _std(r.train_loss),
                    "test_loss": sum(r.test_loss) / len(r.test_loss),
                    "test_accuracy": None if acc is None else sum(acc) / len(acc),
                    "ms_per_step": r.ms_per_step,
                    "lr": r.lr,
                    "lr_at_grid_edge": r.lr_at_grid_edge,
                    "vs_ref": versus,
                    "speedup": speed,
                    "diverged": diverged,
                }
            )
    return rows


def win_fraction(rows: list[SummaryRow], optimizer: str, other: str = "adam") -> float:
    """Fraction of tasks on which ``optimizer``'s mean final train loss is below ``other``'s."""
    by = {(r["task"], r["optimizer"]): r["train_loss"] for r in rows}
    tasks = sorted({t for t, o in by if o == optimizer and (t, other) in by})
    return sum(by[t, optimizer] < by[t, other] for t in tasks) / max(1, len(tasks))


def _fmt(x, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec)


def _table_lines(rows: list[SummaryRow]) -> tuple[list[str], list[list[str]]]:
    head = [
        "task",
        "optimizer",
        "train loss (± std)",
        "test acc",
        "ms/step",
        "lr",
        "vs tuned Adam",
        "speed-up",
        "diverged",
    ]
    body = []
    for r in rows:
        lr = "-" if r["lr"] is None else f"{r['lr']:g}" + (" (grid edge)" if r["lr_at_grid_edge"] else "")
        speed = (
            "-" if r["vs_ref"] in ("reference", "-") else ("never" if r["speedup"] is None else f"{r['speedup']:.2f}")
        )
        body.append(
            [
                r["task"],
                r["optimizer"],
                f"{r['train_loss']:.4f} ± {r['train_loss_std']:.4f}",
                _fmt(r["test_accuracy"], ".3f"),
                f"{r['ms_per_step']:.1f}",
                lr,
                r["vs_ref"],
                speed,
                str(r.get("diverged", 0)),
            ]
        )
    return head, body


def print_table(rows: list[SummaryRow], title: str, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    head, body = _table_lines(rows)
    table = Table(title=title)
    for h in head:
        table.add_column(h)
    for line in body:
        table.add_row(*line)
    if console is None:  # logs and pipes get the whole table, not 80 squeezed columns
        import sys

        console = Console() if sys.stdout.isatty() else Console(width=170)
    console.print(table)


def markdown_table(rows: list[SummaryRow]) -> str:
    head, body = _table_lines(rows)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(b) + " |" for b in body])


def _plot_task(ax, tr: TaskResult) -> None:
    window = max(1, tr.steps // 50)
    for r in tr.results:
        per_seed = torch.tensor(r.curve, dtype=torch.float64).T  # (seeds, steps)
        sm = torch.stack([smooth(c, window) for c in per_seed])
        x = torch.arange(1, tr.steps + 1)
        (line,) = ax.plot(x, sm.mean(0), label=r.name, lw=1.4)
        ax.fill_between(x, sm.min(0).values, sm.max(0).values, color=line.get_color(), alpha=0.2, lw=0)
    ax.set_title(tr.task, fontsize=9)
    ax.set_xlabel("step")
    ax.set_ylabel("train loss (minibatch)")
    finite = [v for r in tr.results for row in r.curve for v in row if math.isfinite(v)]
    if finite and min(finite) > 0:
        ax.set_yscale("log")


def plot_curves(results: list[TaskResult], out: Path) -> list[Path]:
    """``curves.png`` (every task) and ``curves/<task>.png``: seed-mean lines, min-max seed bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    (out / "curves").mkdir(parents=True, exist_ok=True)
    for tr in results:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        _plot_task(ax, tr)
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(out / "curves" / f"{tr.task}.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    cols = min(3, len(results))
    rows = math.ceil(len(results) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, tr in zip(axes.flat, results):
        _plot_task(ax, tr)
    for ax in list(axes.flat)[len(results) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    paths.insert(0, out / "curves.png")
    fig.savefig(paths[0], dpi=100)
    plt.close(fig)
    return paths


def plot_speedups(rows: list[SummaryRow], out: Path) -> Path:
    """Bars of the step fraction each optimizer needs to reach tuned Adam's final loss (lower is
    faster; hatched bars at 1.0 never got there)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    compared = [r for r in rows if r["vs_ref"] in ("beats", "loses")]
    tasks = list(dict.fromkeys(r["task"] for r in compared))
    names = list(dict.fromkeys(r["optimizer"] for r in compared))
    fig, ax = plt.subplots(figsize=(min(14, 3 + 1.1 * len(tasks)), 4))
    width = 0.8 / max(1, len(names))
    for j, name in enumerate(names):
        for i, task in enumerate(tasks):
            r = next((r for r in compared if r["task"] == task and r["optimizer"] == name), None)
            if r is None:
                continue
            never = r["speedup"] is None
            ax.bar(
                i + j * width,
                1.0 if never else r["speedup"],
                width,
                color=f"C{j}",
                hatch="//" if never else None,
                alpha=0.5 if never else 1.0,
                label=name if i == 0 else None,
            )
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(tasks))], tasks, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("fraction of Adam's steps needed")
    ax.set_title("steps to reach tuned Adam's final loss (hatched: never)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "speedups.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(
    results: list[TaskResult],
    out: str | Path,
    settings: EvalSettings,
    title: str = "nfopt evaluation",
    inits: dict[str, str] | None = None,
) -> dict[str, Path]:
    """Write ``summary.csv``, ``per_seed.csv``, ``results.json``, ``curves.png`` (+ one per task),
    ``speedups.png`` and ``report.md`` (embedding the plots) under ``out``; returns their paths.
    ``inits`` maps a learned optimizer to the row of its untrained initialisation (the report
    then says how often meta-training beat it)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = summarize(results)
    paths: dict[str, Path] = {"summary_csv": out / "summary.csv", "per_seed_csv": out / "per_seed.csv"}
    with open(paths["summary_csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(paths["per_seed_csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task", "optimizer", "seed", "train_loss", "test_loss", "test_accuracy", "lr", "ms_per_step"])
        for tr in results:
            for r in tr.results:
                for k, seed in enumerate(tr.eval_seeds):
                    acc = None if r.test_accuracy is None else r.test_accuracy[k]
                    w.writerow([tr.task, r.name, seed, r.train_loss[k], r.test_loss[k], acc, r.lr, r.ms_per_step])
    paths["json"] = out / "results.json"
    payload = {"title": title, "settings": asdict(settings), "summary": rows, "tasks": [asdict(t) for t in results]}
    paths["json"].write_text(json.dumps(payload, default=str))
    curves = plot_curves(results, out)
    paths["curves"] = curves[0]
    paths["speedups"] = plot_speedups(rows, out)
    learned = list(dict.fromkeys(r["optimizer"] for r in rows if r["vs_ref"] in ("beats", "loses")))
    wins = [f"- **{n}** beats tuned Adam on {win_fraction(rows, n):.0%} of the tasks" for n in learned]
    for n, init in (inits or {}).items():
        if n in learned and init in learned:
            wins.append(
                f"- **{n}** beats its untrained initialisation on {win_fraction(rows, n, init):.0%} of the tasks"
            )
    bad = sum(r.get("diverged", 0) for r in rows if r["optimizer"] in learned)
    wins.append(f"- diverged runs (non-finite or > 2x initial loss) among compared optimizers: {bad}")
    edge = sorted({(r["task"], r["optimizer"]) for r in rows if r["lr_at_grid_edge"]})
    md = [
        f"# {title}",
        "",
        f"{len(results)} tasks, {settings.seeds} evaluation seeds; baselines {', '.join(settings.baselines)} tuned per "
        f"task on a log grid with {settings.tuning_seeds} separate tuning seeds (initialisations and minibatch order "
        "never used for evaluation). Train loss: whole training set after the last step, mean ± std over seeds. "
        "Speed-up: fraction of the steps needed to reach tuned Adam's final (smoothed) minibatch loss.",
        "",
        *wins,
        "",
        markdown_table(rows),
        "",
        "![loss curves](curves.png)",
        "",
        "![speed-ups](speedups.png)",
    ]
    if edge:
        md += [
            "",
            "Tuned learning rate at the edge of its grid (widen the grid): " + ", ".join(f"{t}/{o}" for t, o in edge),
        ]
    paths["report"] = out / "report.md"
    paths["report"].write_text("\n".join(md) + "\n")
    return paths
