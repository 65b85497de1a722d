"""Benchmark: inner training steps per second of a population of P networks stepped together
(``nfopt.tasks.Population``: vmap'd loss and gradients + functional Adam) against a Python loop
over P ``nn.Module``s with ``torch.optim.Adam``, side by side on the same task and batches.

Task: ``digits_mlp`` (seed 0), P=32, batch = the task's batch size. Medians of interleaved
rounds of ``--steps`` steps each. Last line ``RESULT population_speedup=X``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from nfopt.lopt import Adam
from nfopt.tasks import TaskFamily


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="digits_mlp")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()

    task = TaskFamily.load(args.family).sample(0)
    data = task.dataset
    pop = task.population(args.size, seed=0)
    modules = pop.to_modules()
    opts = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in modules]
    adam = Adam(lr=1e-3)
    state = {"params": pop.params, "opt": adam.init(pop.spec, len(pop))}
    gen = torch.Generator().manual_seed(0)
    batches = [pop.sample_batch(data.x_train, data.y_train, task.batch_size, gen) for _ in range(args.steps)]

    def population_steps() -> None:
        params, ostate = state["params"], state["opt"]
        for xb, yb in batches:
            loss, grads = pop.loss_and_grad(xb, yb, params)
            new, ostate = adam.update(None, ostate, pop.features(params), pop.features(grads), loss)
            params = pop.params_from_features(new)
        state["params"], state["opt"] = params, ostate

    def module_loop_steps() -> None:
        for xb, yb in batches:
            for k, (m, opt) in enumerate(zip(modules, opts)):
                opt.zero_grad(set_to_none=True)
                task.loss_fn(m(xb[k]), yb[k]).backward()
                opt.step()

    sides = {"population": population_steps, "module loop": module_loop_steps}
    for fn in sides.values():
        fn()
    times = {k: [] for k in sides}
    for _ in range(args.rounds):
        for k, fn in sides.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    rate = {k: args.steps / statistics.median(v) for k, v in times.items()}
    print(f"task {task.name} {task.network_spec}, P={args.size}, batch {task.batch_size}, torch {torch.__version__}")
    for k, r in rate.items():
        print(f"{k:<12} {r:10.1f} population steps/s  ({r * args.size:10.0f} network steps/s)")
    print(f"RESULT population_speedup={rate['population'] / rate['module loop']:.2f}")


if __name__ == "__main__":
    main()
