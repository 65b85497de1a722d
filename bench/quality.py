"""Benchmark: learned-optimizer quality on held-out tasks.

Evaluates the pretrained learned optimizers shipped with nfopt (``nfopt.list_pretrained()``:
NFN-NP, NFT and the per-parameter MLP, meta-trained with one budget by ``jobs/meta/pretrain_*.yaml``)
with ``nfopt evaluate``'s protocol on ``tasks/suites/heldout.yaml`` against Adam and SGD-momentum
tuned per task, Adam at its default lr 1e-3, and each learned optimizer's own untrained
initialisation. ``--retrain`` meta-trains them again from their jobs first: phase 1
(``pretrain_<kind>.yaml``), then phase 2 (``pretrain_<kind>_schedule.yaml``, its learned schedule,
from phase 1's result) where there is one, resuming from each job's checkpoint
(``--outer-steps`` caps every phase).

Writes the report (table, CSV/JSON, curves, speed-ups) to ``--out`` and ends with
``RESULT beats_adam=F1 beats_init=F2 beats_mlp=F3 diverged=N best=NAME``: for the best NFN/NFT
optimizer (most wins against tuned Adam), the fraction of held-out tasks on which its mean final
train loss (over evaluation seeds) is below tuned Adam's, below its untrained initialisation's and
below the per-parameter MLP optimizer's, and its number of diverged runs (non-finite or > 2x the
initial loss) over all tasks and seeds.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nfopt
from nfopt.evaluation import EvalSettings, win_fraction
from nfopt.jobs import apply_overrides, load_job
from nfopt.lopt import load_optimizer
from nfopt.recipes.evaluate import run_evaluation, untrained_name
from nfopt.recipes.meta_train import run_job
from nfopt.tasks import load_suite_tasks

SHIPPED = {"nfn_np": "nfn_np_small", "nft": "nft_small", "mlp": "mlp_small"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kinds", default="nfn_np,nft,mlp")
    p.add_argument("--retrain", action="store_true", help="meta-train from jobs/meta/pretrain_<kind>*.yaml first")
    p.add_argument("--outer-steps", type=int, default=None, help="with --retrain: override the jobs' outer steps")
    p.add_argument("--suite", default="heldout")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--tuning-seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=None, help="inner steps per held-out task (default: horizons)")
    p.add_argument("--tasks", default=None, help="only these tasks of the suite, comma-separated")
    p.add_argument("--out", default="bench/results/quality")
    p.add_argument("--overwrite", action="store_true", help="replace a previous report in --out")
    p.add_argument(
        "--use",
        action="append",
        default=[],
        help="KIND=PATH: evaluate this learned-optimizer file as KIND instead of the shipped one (repeat)",
    )
    args = p.parse_args()

    optimizers, budgets = {}, {}
    for kind in args.kinds.split(","):
        if args.retrain:  # phase 1 (the rule), then phase 2 (its schedule) where the kind has one
            phases = [Path(f"jobs/meta/pretrain_{kind}.yaml"), Path(f"jobs/meta/pretrain_{kind}_schedule.yaml")]
            previous = None
            for job in [j for j in phases if j.exists()]:
                spec = load_job(job)
                over = {"outer_steps": args.outer_steps} if args.outer_steps else {}
                if previous is not None:
                    over["init_from"] = str(previous)
                spec = apply_overrides(spec, over) if over else spec
                start = time.perf_counter()
                result = run_job(spec, resume=(spec.checkpoint_dir / "latest.pt").exists())
                previous = result.optimizer_path
                took = time.perf_counter() - start
                print(f"meta-trained {job}: {result.steps} outer steps, {took:.0f} s", flush=True)
            trained = load_optimizer(previous)
        else:
            use = dict(u.split("=", 1) for u in args.use)
            trained = nfopt.load_optimizer(use.get(kind, SHIPPED[kind]))
        optimizers[kind] = trained.rule
        budgets[kind] = trained.metadata.get("inner_steps")
        print(f"{kind}: {budgets[kind]} inner steps of meta-training ({trained.metadata.get('job')})", flush=True)

    settings = EvalSettings(seeds=args.seeds, tuning_seeds=args.tuning_seeds, steps=args.steps)
    tasks = load_suite_tasks(args.suite)
    if args.tasks:
        tasks = [t for t in tasks if t.name in set(args.tasks.split(","))]
    run = run_evaluation(
        tasks,
        optimizers,
        settings,
        args.out,
        title=f"quality: pretrained learned optimizers on held-out suite {args.suite} (meta-training inner steps: "
        + ", ".join(f"{k} {v}" for k, v in budgets.items())
        + ")",
        overwrite=args.overwrite,
    )
    rows = run.rows
    nf = [k for k in optimizers if k != "mlp"]
    best = max(nf, key=lambda k: (win_fraction(rows, k), -sum(r["train_loss"] for r in rows if r["optimizer"] == k)))
    for k in optimizers:
        vs_default, vs_init = win_fraction(rows, k, "adam_1e-3"), win_fraction(rows, k, untrained_name(optimizers, k))
        print(
            f"{k}: beats tuned Adam on {win_fraction(rows, k):.0%}, Adam 1e-3 on {vs_default:.0%}, "
            f"its init on {vs_init:.0%} of {len(tasks)} tasks"
        )
    beats_adam = win_fraction(rows, best)
    beats_init = win_fraction(rows, best, untrained_name(optimizers, best))
    beats_mlp = win_fraction(rows, best, "mlp") if "mlp" in optimizers else float("nan")
    diverged = sum(r["diverged"] for r in rows if r["optimizer"] == best)
    print(f"best NFN/NFT: {best}; report: {run.paths['report']}")
    print(
        f"RESULT beats_adam={beats_adam:.3f} beats_init={beats_init:.3f} beats_mlp={beats_mlp:.3f} "
        f"diverged={diverged} best={best}"
    )


if __name__ == "__main__":
    main()
