"""Benchmark: learned-optimizer quality on held-out tasks.

Meta-trains NFN-NP, NFN-HNP, NFT and per-parameter-MLP learned optimizers with the same budget
(``jobs/quality.yaml``: same task family, estimator, outer steps, workers; only the meta-model
differs), then evaluates all four with ``nfopt evaluate``'s protocol on
``tasks/suites/heldout.yaml`` against Adam and SGD-momentum tuned per task. Meta-training
resumes from each kind's checkpoint, so an interrupted bench continues where it stopped.

Writes the report (table, CSV/JSON, curves, speed-ups) to ``--out`` and ends with
``RESULT beats_adam=F1 beats_mlp=F2``: for the best NFN/NFT optimizer (most wins against
tuned Adam), the fraction of held-out tasks on which it beats tuned Adam and on which it beats
the per-parameter MLP optimizer (mean final train loss over evaluation seeds).
"""

from __future__ import annotations

import argparse
import time

from nfopt.evaluation import EvalSettings, win_fraction
from nfopt.evaluation.driver import run_evaluation
from nfopt.jobs import apply_overrides, load_job
from nfopt.lopt import load_optimizer
from nfopt.run import run_job
from nfopt.tasks import load_suite_tasks

SIZES = {
    "nfn_np": {"meta_model.channels": 8, "meta_model.layers": 2},
    "nfn_hnp": {"meta_model.channels": 8, "meta_model.layers": 2},
    "nft": {"meta_model.channels": 8, "meta_model.blocks": 1, "meta_model.heads": 2},
    "mlp": {"meta_model.hidden": 32},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--job", default="jobs/quality.yaml")
    p.add_argument("--kinds", default="nfn_np,nfn_hnp,nft,mlp")
    p.add_argument("--outer-steps", type=int, default=None, help="override the job's outer steps")
    p.add_argument("--suite", default="heldout")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--tuning-seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=None, help="inner steps per held-out task (default: horizons)")
    p.add_argument("--out", default="bench/results/quality")
    args = p.parse_args()

    base = load_job(args.job)
    if args.outer_steps:
        base = apply_overrides(base, {"outer_steps": args.outer_steps})
    optimizers, budget = {}, {}
    for kind in args.kinds.split(","):
        spec = apply_overrides(base, {"name": f"{base.name}_{kind}", "meta_model.kind": kind, **SIZES[kind]})
        start = time.perf_counter()
        resume = (spec.checkpoint_dir / "latest.pt").exists()
        result = run_job(spec, resume=resume)
        budget[kind] = time.perf_counter() - start
        optimizers[kind] = load_optimizer(result.optimizer_path).rule
        print(f"meta-trained {kind}: {result.steps} outer steps in {budget[kind]:.0f} s (this call)", flush=True)

    settings = EvalSettings(seeds=args.seeds, tuning_seeds=args.tuning_seeds, steps=args.steps)
    tasks = load_suite_tasks(args.suite)
    run = run_evaluation(
        tasks,
        optimizers,
        settings,
        args.out,
        title=f"quality: learned optimizers meta-trained on {base.task} ({base.outer_steps} outer steps each), "
        f"held-out suite {args.suite}",
        tracking={"uri": base.tracking.uri, "experiment": base.tracking.experiment},
    )
    nf = [k for k in optimizers if k != "mlp"]
    best = max(
        nf, key=lambda k: (win_fraction(run.rows, k), -sum(r["train_loss"] for r in run.rows if r["optimizer"] == k))
    )
    beats_adam = win_fraction(run.rows, best)
    beats_mlp = win_fraction(run.rows, best, "mlp") if "mlp" in optimizers else float("nan")
    for k in optimizers:
        print(f"{k}: beats tuned Adam on {win_fraction(run.rows, k):.0%} of {len(tasks)} tasks")
    print(f"best NFN/NFT: {best}; report: {run.paths['report']}")
    print(f"RESULT beats_adam={beats_adam:.3f} beats_mlp={beats_mlp:.3f} best={best}")


if __name__ == "__main__":
    main()
