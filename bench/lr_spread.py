"""Benchmark: how far apart the best Adam learning rates of a task distribution are.

Samples tasks from a task family or mixture (default ``mix_small``), tunes Adam's learning rate
on each (8-point log grid 1e-4 ... 0.3, two tuning seeds, ``--steps`` inner steps) with the
held-out protocol's ``tune_lr``, prints a table (family, architecture, batch size, augmentation,
tuned lr) and ends with ``RESULT lr_spread=X lr_min=A lr_max=B``: the ratio of the largest to the
smallest tuned lr. A distribution whose tasks all want one lr teaches a learned optimizer nothing
about choosing its step; the pretraining mixture is built so that this spread is >= 30x.
"""

from __future__ import annotations

import argparse
import time

import torch

from nfopt.evaluation.protocol import BASELINES, TUNE_SEED0, tune_lr
from nfopt.tasks import load_tasks

LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="mix_small", help="a task family or mixture in tasks/ (or a path)")
    p.add_argument("--count", type=int, default=24, help="tasks to sample (seeds 0 ... count-1)")
    p.add_argument("--steps", type=int, default=200, help="inner steps per tuning run")
    args = p.parse_args()
    torch.set_num_threads(1)
    source, (make, _) = load_tasks(args.tasks), BASELINES["adam"]
    print("| seed | family | model | batch | reparam s (min-max) | loss scale | tuned Adam lr |")
    print("|---|---|---|---|---|---|---|")
    lrs = []
    for seed in range(args.count):
        t, start = source.sample(seed), time.perf_counter()
        lr, _ = tune_lr(make, t, LRS, [TUNE_SEED0, TUNE_SEED0 + 1], steps=args.steps)
        s = "-" if t.reparam is None else f"{min(t.reparam):.2f}-{max(t.reparam):.2f}"
        print(
            f"| {seed} | {t.family} | {t.kind} {list(t.widths)} {t.activation} | {t.batch_size} | {s} | "
            f"{t.loss_scale:.2f} | {lr:g} |  <!-- {time.perf_counter() - start:.1f} s -->",
            flush=True,
        )
        lrs.append(lr)
    print(f"RESULT lr_spread={max(lrs) / min(lrs):.1f} lr_min={min(lrs):g} lr_max={max(lrs):g}")


if __name__ == "__main__":
    main()
