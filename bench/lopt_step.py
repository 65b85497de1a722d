"""Benchmark: one learned-optimizer step against one Adam step on the same P=32 ``digits_mlp``
population, side by side, for the NFN-NP rule at the quickstart's size (8 channels, 2 layers:
``jobs/meta/quickstart.yaml``, the shipped ``nfn_np_small``) and, with ``--kinds``, the
per-parameter MLP, NFN-HNP and NFT rules at their shipped sizes.

A step is what an inner training loop pays per iteration: the population's minibatch loss and
gradients plus the optimizer update; the update alone is reported too. Medians of interleaved
repetitions, both sides in one process under the same allocator settings as ``bench/layers.py``
(re-executes with ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large>`` unless
``--default-malloc``). Last line ``RESULT lopt_step_vs_adam=X lopt_update_vs_adam_update=Y`` for
NFN-NP, then ``<kind>_step_vs_adam=...`` for the other kinds measured, and with ``--compile``
``lopt_step_compiled_vs_adam=...`` for the headline rule through ``torch.compile``.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

import torch

import nfopt
from nfopt.lopt import Adam, LearnedUpdateRule
from nfopt.nn.compiled import inductor_options
from nfopt.tasks import TaskFamily

SHIPPED = {"nfn_np": "nfn_np_small", "mlp": "mlp_small", "nft": "nft_small"}  # nfopt.list_pretrained()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", default="nfn_np,mlp,nfn_hnp,nft", help="meta-models (first: the headline)")
    ap.add_argument("--channels", type=int, default=8, help="NFN channels (quickstart: 8)")
    ap.add_argument("--layers", type=int, default=2, help="NFN layers (quickstart: 2)")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--default-malloc", action="store_true", help="keep glibc's allocator defaults")
    ap.add_argument(
        "--compile",
        action="store_true",
        help="also the headline rule through torch.compile (nn.Module.compile, as LearnedOptimizer(compile=True))",
    )
    args = ap.parse_args()
    env = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}
    if not args.default_malloc and any(os.environ.get(k) != v for k, v in env.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **env})

    task = TaskFamily.load("digits_mlp").sample(0)
    pop, data = task.population(args.size), task.dataset
    kinds = args.kinds.split(",")
    opts = {"adam": Adam(lr=1e-3)}
    for kind in kinds:  # the shipped rule of that kind where there is one (its real inputs), else a fresh one
        if kind in SHIPPED:
            opts[kind] = nfopt.load_optimizer(SHIPPED[kind]).rule
        else:
            meta = {"channels": args.channels, "layers": args.layers} if kind.startswith("nfn") else {}
            opts[kind] = LearnedUpdateRule(kind, meta_model=meta, step_mult=0.01)
    if args.compile:  # a compiled copy of the headline rule (compiles on its first call below, ~45 s)
        compiled = copy.deepcopy(opts[kinds[0]])
        compiled.compile(options=inductor_options("cpu"))  # as LearnedOptimizer(compile=True)
        opts[f"{kinds[0]}+compile"] = compiled
    states = {n: o.init(pop.spec, args.size) for n, o in opts.items()}
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
    for _ in range(args.repeats):  # interleaved: every case once per round
        for k, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"task {task.name} {task.network_spec}, P={args.size}")
    print(f"{'optimizer':<15} {'meta-params':>11} {'step ms':>8} {'update ms':>9} {'step/Adam':>9} {'update/Adam':>11}")
    ratios = {}
    for n, o in opts.items():
        n_meta = sum(p.numel() for p in o.parameters()) if isinstance(o, torch.nn.Module) else 0
        r_step = med[("step", n)] / med[("step", "adam")]
        r_upd = med[("update", n)] / med[("update", "adam")]
        ratios[n] = (r_step, r_upd)
        print(f"{n:<15} {n_meta:>11} {med[('step', n)]:8.2f} {med[('update', n)]:9.2f} {r_step:9.2f} {r_upd:11.2f}")
    head, rest = kinds[0], kinds[1:]
    extra = " ".join(f"{k}_step_vs_adam={ratios[k][0]:.2f}" for k in rest)
    line = f"RESULT lopt_step_vs_adam={ratios[head][0]:.2f} lopt_update_vs_adam_update={ratios[head][1]:.2f}"
    if args.compile:
        extra += f" lopt_step_compiled_vs_adam={ratios[f'{head}+compile'][0]:.2f}"
        extra += f" lopt_update_compiled_vs_adam_update={ratios[f'{head}+compile'][1]:.2f}"
    print(f"{line} {extra}".strip())


if __name__ == "__main__":
    main()
