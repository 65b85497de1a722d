"""Benchmark: one learned-optimizer step (NFN-NP meta-model, 16 channels, 3 layers) against one
Adam step on the same P=32 ``digits_mlp`` population, side by side.

A step is what an inner training loop pays per iteration: the population's minibatch loss and
gradients plus the optimizer update; the update alone is reported too. Medians of interleaved
repetitions, both sides in one process under the same allocator settings as ``bench/layers.py``
(re-executes with ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large>`` unless
``--default-malloc``). Last line ``RESULT lopt_step_vs_adam=X lopt_update_vs_adam_update=Y``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from nfopt.lopt import Adam, LearnedUpdateRule
from nfopt.tasks import TaskFamily


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", default="nfn_np", help="meta-model: mlp, nfn_np, nfn_hnp, nft")
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--default-malloc", action="store_true", help="keep glibc's allocator defaults")
    args = ap.parse_args()
    env = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}
    if not args.default_malloc and any(os.environ.get(k) != v for k, v in env.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **env})

    task = TaskFamily.load("digits_mlp").sample(0)
    pop, data = task.population(args.size), task.dataset
    meta = {"channels": args.channels, "layers": args.layers} if args.kind.startswith("nfn") else {}
    rule = LearnedUpdateRule(args.kind, meta_model=meta)
    adam = Adam(lr=1e-3)
    states = {"lopt": rule.init(pop.spec, args.size), "adam": adam.init(pop.spec, args.size)}
    opts = {"lopt": rule, "adam": adam}
    gen = torch.Generator().manual_seed(0)
    xb, yb = pop.sample_batch(data.x_train, data.y_train, task.batch_size, gen)
    loss0, grads0 = pop.loss_and_grad(xb, yb)
    params_f, grads_f = pop.features(), pop.features(grads0)

    def full(name):
        def run():
            loss, grads = pop.loss_and_grad(xb, yb)
            with torch.no_grad():
                opts[name].update(None, states[name], pop.features(), pop.features(grads), loss)

        return run

    def update_only(name):
        def run():
            with torch.no_grad():
                opts[name].update(None, states[name], params_f, grads_f, loss0)

        return run

    cases = {(k, n): (full(n) if k == "step" else update_only(n)) for k in ("step", "update") for n in opts}
    for fn in cases.values():
        fn()
    times = {k: [] for k in cases}
    for _ in range(args.repeats):
        for k, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    n_meta = sum(p.numel() for p in rule.parameters())
    print(f"task {task.name} {task.network_spec}, P={args.size}; meta-model {args.kind} ({n_meta} parameters)")
    for what in ("step", "update"):
        print(f"{what:<7} adam {med[(what, 'adam')]:7.2f} ms   learned {med[(what, 'lopt')]:7.2f} ms")
    r_step = med[("step", "lopt")] / med[("step", "adam")]
    r_upd = med[("update", "lopt")] / med[("update", "adam")]
    print(f"RESULT lopt_step_vs_adam={r_step:.2f} lopt_update_vs_adam_update={r_upd:.2f}")


if __name__ == "__main__":
    main()
