"""Benchmark: meta-training throughput on Ray with 1 and 2 workers on ``digits_mlp``.

Each worker owns the same shard (``--tasks`` tasks of ``--population`` networks, PES with
``--unroll`` inner steps per truncation), so 2 workers do twice the work per outer step.
Reports outer steps/s, inner steps/s, scaling efficiency ``(inner/s with 2) / (2 x inner/s
with 1)`` and the share of an outer step spent outside the workers' compute (publishing θ,
gathering estimates, the learner's update). Last line
``RESULT scaling_efficiency=X overhead=Y``.
"""

from __future__ import annotations

import argparse
import statistics
import time

from nfopt.cluster import init_ray
from nfopt.jobs import JobSpec
from nfopt.run import build_rule


def measure(workers: int, args) -> dict:
    import functools

    from nfopt.cluster import RayPool
    from nfopt.meta import Learner
    from nfopt.run import _estimator, _make_problem

    spec = JobSpec.model_validate(
        {
            "name": "bench",
            "task": "digits_mlp",
            "outer_steps": args.steps,
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
    learner = Learner({k: v.detach() for k, v in rule.named_parameters()}, pool, 3e-4)
    for _ in range(args.warmup):
        learner.step()
    t0 = time.perf_counter()
    ms = [learner.step() for _ in range(args.steps)]
    wall = time.perf_counter() - t0
    pool.shutdown()
    return {
        "outer_per_s": args.steps / wall,
        "inner_per_s": sum(m["inner_steps"] for m in ms) / wall,
        "overhead": statistics.median(m["overhead"] for m in ms),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--tasks", type=int, default=2)
    ap.add_argument("--population", type=int, default=4)
    ap.add_argument("--unroll", type=int, default=10)
    args = ap.parse_args()
    init_ray(num_cpus=2)
    res = {w: measure(w, args) for w in (1, 2)}
    for w, r in res.items():
        print(
            f"{w} worker(s): {r['outer_per_s']:.2f} outer steps/s, {r['inner_per_s']:.0f} inner steps/s, "
            f"overhead {100 * r['overhead']:.1f}% of a step"
        )
    eff = res[2]["inner_per_s"] / (2 * res[1]["inner_per_s"])
    print(f"RESULT scaling_efficiency={eff:.2f} overhead={max(r['overhead'] for r in res.values()):.3f}")


if __name__ == "__main__":
    main()
