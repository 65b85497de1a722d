"""Benchmark: which inputs a trained learned optimizer relies on (evaluation-time ablation).

Trains the held-out suite's networks (``nfopt evaluate``'s protocol: evaluation seeds, the
task's horizon, the same minibatches) with a trained rule as it is, and with one of its inputs
taken away at evaluation time:

- ``no_lr_head``: the per-tensor log step size read from the meta-model's pooled third output
  is switched off (λ_T = 0), so each tensor gets the base step;
- ``no_loss``: the rule never sees the loss (its loss-trajectory inputs read "unknown");
- ``no_horizon``: the rule is not told the number of steps (its training-fraction input reads
  "unknown").

A variant that does as well as the full rule shows an input the trained rule does not use. Last
line ``RESULT full=L no_lr_head=R1 no_loss=R2 no_horizon=R3``: the geometric-mean final train
loss of the full rule and, per ablation, its ratio to the full rule's (> 1: the input helps).
"""

from __future__ import annotations

import argparse
import math
import time

import nfopt
from nfopt.evaluation.protocol import EVAL_BATCH_SEED, EvalSettings, train_population
from nfopt.tasks import load_suite_tasks


class Ablated:
    """An update rule with one input taken away at evaluation time (see the module docstring)."""

    def __init__(self, rule, what: str) -> None:
        self.rule, self.what = rule, what

    def init(self, spec, population=1, dtype=None, device=None, num_steps=None):
        kw = {} if dtype is None else {"dtype": dtype}
        return self.rule.init(
            spec, population, device=device, num_steps=None if self.what == "no_horizon" else num_steps, **kw
        )

    def update(self, theta, state, params, grads, loss=None):
        if self.what == "no_loss":
            loss = None
        if self.what != "no_lr_head":
            return self.rule.update(theta, state, params, grads, loss)
        self.rule.lr_head = False
        try:
            return self.rule.update(theta, state, params, grads, loss)
        finally:
            self.rule.lr_head = True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--optimizer", default="nfn_np_small", help="a shipped name or a learned-optimizer file")
    p.add_argument("--suite", default="heldout")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--tasks", default=None, help="only these tasks of the suite, comma-separated")
    p.add_argument("--variants", default="full,no_horizon,no_loss,no_lr_head", help="which of them, comma-separated")
    args = p.parse_args()
    rule = nfopt.load_optimizer(args.optimizer).rule
    variants = [v for v in args.variants.split(",") if v != "no_lr_head" or rule.lr_head]
    if variants[0] != "full":
        variants = ["full", *[v for v in variants if v != "full"]]
    tasks = load_suite_tasks(args.suite)
    if args.tasks:
        tasks = [t for t in tasks if t.name in set(args.tasks.split(","))]
    seeds = EvalSettings(seeds=args.seeds).eval_seeds
    logs: dict[str, list[float]] = {v: [] for v in variants}
    print(f"{'task':28s} " + " ".join(f"{v:>11s}" for v in variants), flush=True)
    t0 = time.perf_counter()
    for task in tasks:
        row = {}
        for v in variants:
            r = train_population(rule if v == "full" else Ablated(rule, v), task, seeds, batch_seed=EVAL_BATCH_SEED)
            row[v] = float(r["train_loss"].mean())
            logs[v].append(math.log(max(row[v], 1e-12)))
        print(f"{task.name:28s} " + " ".join(f"{row[v]:11.4f}" for v in variants), flush=True)
    gm = {v: math.exp(sum(x) / len(x)) for v, x in logs.items()}
    print(f"{len(tasks)} tasks x {len(seeds)} seeds, {time.perf_counter() - t0:.0f} s")
    print(f"RESULT full={gm['full']:.4f} " + " ".join(f"{v}={gm[v] / gm['full']:.3f}" for v in variants[1:]))


if __name__ == "__main__":
    main()
