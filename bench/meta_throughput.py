"""Benchmark: meta-training throughput on Ray with 1 and 2 workers on ``digits_mlp``.

Each worker owns the same shard (``--tasks`` tasks of ``--population`` networks, PES with
``--unroll`` inner steps per truncation), so 2 workers do twice the work per outer step.
Both pools live side by side and are measured in alternating rounds (1 then 2 workers, then 2
then 1, ...), so a noisy period of the machine hits both; the scaling efficiency is the median
over rounds of ``(inner/s with 2) / (2 x inner/s with 1)``, the overhead the median share of an
outer step spent outside the workers' compute (publishing θ, gathering estimates, the learner's
update). Last line ``RESULT scaling_efficiency=X overhead=Y inner_per_s_1=A inner_per_s_2=B``.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

from nfopt.cluster import RayPool, init_ray
from nfopt.jobs import JobSpec
from nfopt.meta import Learner
from nfopt.recipes.meta_train import _estimator, _make_problem, build_rule


def make(workers: int, args):
    """A learner over ``workers`` population workers (the same shard each: ``--tasks`` tasks of
    ``--population`` networks, PES with ``--unroll`` inner steps per truncation)."""
    spec = JobSpec.model_validate(
        {
            "name": "bench",
            "task": "digits_mlp",
            "outer_steps": 1,
            "meta_model": {"kind": "nfn_np", "channels": 8, "layers": 2},
            "estimator": {"kind": "pes", "unroll": args.unroll},
            "inner": {"population": args.population, "tasks_per_worker": args.tasks},
            "workers": {"count": workers, "num_cpus": 1},
            "tracking": {"enabled": False},
        }
    )
    rule = build_rule(spec)
    pool = RayPool(
        functools.partial(_make_problem, spec.model_dump_json()), _estimator(spec), workers, args.tasks, 0, 1.0
    )
    pool.wait_for_workers(120)
    return Learner({k: v.detach() for k, v in rule.named_parameters()}, pool, 3e-4), pool


def measure(learner, steps: int) -> dict:
    t0 = time.perf_counter()
    ms = [learner.step() for _ in range(steps)]
    wall = time.perf_counter() - t0
    return {"inner_per_s": sum(m["inner_steps"] for m in ms) / wall, "overheads": [m["overhead"] for m in ms]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="alternating 1-/2-worker measurement rounds")
    ap.add_argument("--steps", type=int, default=6, help="outer steps per measurement")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--tasks", type=int, default=2)
    ap.add_argument("--population", type=int, default=4)
    ap.add_argument("--unroll", type=int, default=10)
    args = ap.parse_args()
    init_ray(num_cpus=3)  # room for both pools' actors; an idle actor uses no core
    learners = {w: make(w, args) for w in (1, 2)}
    for learner, _ in learners.values():
        for _ in range(args.warmup):
            learner.step()
    ratios, per_s, overheads = [], {1: [], 2: []}, []
    for r in range(args.rounds):
        order = (1, 2) if r % 2 == 0 else (2, 1)  # alternate, so a slow period hits both
        res = {w: measure(learners[w][0], args.steps) for w in order}
        for w in (1, 2):
            per_s[w].append(res[w]["inner_per_s"])
            overheads += res[w]["overheads"]
        ratios.append(res[2]["inner_per_s"] / (2 * res[1]["inner_per_s"]))
        print(
            f"round {r}: 1 worker {res[1]['inner_per_s']:.0f}, 2 workers {res[2]['inner_per_s']:.0f} inner steps/s, "
            f"efficiency {ratios[-1]:.2f}",
            flush=True,
        )
    for _, pool in learners.values():
        pool.shutdown()
    for w in (1, 2):
        print(f"{w} worker(s): median {statistics.median(per_s[w]):.0f} inner steps/s")
    print(
        f"RESULT scaling_efficiency={statistics.median(ratios):.2f} overhead={statistics.median(overheads):.3f} "
        f"inner_per_s_1={statistics.median(per_s[1]):.0f} inner_per_s_2={statistics.median(per_s[2]):.0f}"
    )


if __name__ == "__main__":
    main()
