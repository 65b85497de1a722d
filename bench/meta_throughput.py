"""Benchmark: meta-training throughput on Ray with 1 and 2 workers, and against a JAX peer.

The problem is the JAX peer's: ``digits_mlp``'s draw 0 (a 64-50-10 ReLU MLP, horizon 99), pinned
as a one-task family so both sides train the same networks. Each worker owns the same shard
(``--tasks`` tasks of ``--population`` networks, PES with ``--unroll`` inner steps per
truncation), so 2 workers do twice the work per outer step. Two phases, each measured in
interleaved rounds (one outer step of each case in turn, the order flipping every step), so a
noisy period of the machine hits all of a phase's cases alike:

1. scaling: the NFN-NP rule with 1 and 2 workers, and only those pools alive;
2. per core: the per-parameter MLP rule with 1 worker (with ``--compile`` also both rules with
   the compiled inner step, ``estimator.compile``) and the JAX reference
   (``bench/anchors/jax_pes.py``: the same problem, population, unroll and PES, a per-parameter
   MLP learned optimizer under one ``jax.jit``, pinned to one CPU: XLA's own thread pools
   otherwise took 1.77 cores of 2) in this process.

Why apart: with both cores busy, whatever else runs takes from the 2-worker pool alone (a
1-worker pool leaves a core free). Measured here (2026-12-04, 10 rounds each): 2-worker
efficiency 0.94 with only its pools alive, 0.88 with the other pools' 3 idle actors beside it,
0.87 with the JAX peer's steps interleaved in this process; a meta-training run has neither.
The
scaling efficiency is the median over rounds of ``(inner/s with 2) / (2 x inner/s with 1)``, the
overhead the median share of an outer step spent outside the workers' compute (publishing θ,
gathering estimates, the learner's update), ``vs_jax`` the median over rounds of nfopt's
per-core inner steps/s with the same (per-parameter MLP) rule over the JAX reference's (with
``--compile``: the compiled step's), ``nfn_vs_jax`` the same for the NFN-NP rule. Without JAX
installed (the ``bench`` extra) the JAX figures are skipped. Last line ``RESULT
scaling_efficiency=X overhead=Y vs_jax=Z nfn_vs_jax=W inner_per_s_1=A inner_per_s_2=B
mlp_inner_per_s=C jax_inner_per_s=D jax_cores_used=U [mlp_compiled_inner_per_s=E
nfn_compiled_inner_per_s=F]`` (U: the JAX process's CPU time over wall time while it ran, the
check that its figure is per core, ``device=...``).

``--device cuda``: every worker's population, data, features and meta-model run on the GPU
(``workers.num_gpus``: the pools' workers share the node's GPUs equally), and the JAX peer runs
on the GPU too; the figures are then per worker (with one GPU, the 2-worker pool shares it, so
its "scaling" says how much of the GPU one worker leaves idle), not per core.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml

from nfopt.cluster import RayPool, init_ray
from nfopt.jobs import JobSpec
from nfopt.meta import Learner
from nfopt.recipes.meta_train import _estimator, _make_problem, build_rule
from nfopt.tasks import TaskFamily


def pinned_task(directory: Path) -> Path:
    """A one-task family file: the ``digits_mlp`` task the JAX peer trains (its draw 0:
    architecture, activation, batch size, horizon), so both sides train the same problem."""
    family = TaskFamily.load("digits_mlp")
    task = family.sample(0)
    widths = {rows for rows, _ in task.network_spec.weight_shapes[:-1]}
    if len(widths) != 1:  # a family spec has one width for every hidden layer
        raise ValueError(f"{task.name}: hidden widths {sorted(widths)} differ; a one-task family cannot pin them")
    spec = {
        "name": "digits_mlp_pinned",
        "description": "digits_mlp's draw 0, the JAX peer's problem",
        "dataset": family.spec.dataset.model_dump(exclude_defaults=True),
        "model": {
            "kind": "mlp",
            "hidden_layers": task.network_spec.num_layers - 1,
            "width": widths.pop(),
            "activation": task.activation,
        },
        "batch_size": task.batch_size,
        "loss": family.spec.loss,
        "horizon": task.horizon,
    }
    path = directory / "digits_mlp_pinned.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def make(workers: int, args, kind: str = "nfn_np", compile: bool = False):
    """A learner over ``workers`` population workers (the same shard each: ``--tasks`` tasks of
    ``--population`` networks, PES with ``--unroll`` inner steps per truncation, on
    ``args.task``), meta-model ``kind`` at the quickstart's size (NFN-NP 8 channels x 2 layers;
    MLP 2 x 32); ``compile``: the compiled inner step (``estimator.compile``)."""
    meta = {"kind": "nfn_np", "channels": 8, "layers": 2} if kind == "nfn_np" else {"kind": kind}
    spec = JobSpec.model_validate(
        {
            "name": "bench",
            "task": str(args.task),
            "outer_steps": 1,
            "meta_model": meta,
            "estimator": {"kind": "pes", "unroll": args.unroll, "compile": compile},
            "inner": {"population": args.population, "tasks_per_worker": args.tasks},
            "workers": {"count": workers, "num_cpus": 1, "num_gpus": args.gpu_share},
            "tracking": {"enabled": False},
        }
    )
    rule = build_rule(spec)
    pool = RayPool(
        functools.partial(_make_problem, spec.model_dump_json()),
        _estimator(spec),
        workers,
        args.tasks,
        0,
        1.0,
        args.gpu_share,
    )
    pool.wait_for_workers(120)
    return Learner({k: v.detach() for k, v in rule.named_parameters()}, pool, 3e-4), pool


def interleaved_round(cases: list[str], pools: dict, jax_pes, steps: int) -> tuple[dict, list, float]:
    """One measurement round: ``steps`` outer steps of every case, taken in turn (one step of each,
    the order flipping every step), so a noisy period of the machine hits every case alike.
    Returns inner steps/s per case, the nfopt learners' overhead shares, and the JAX process's
    CPU time over wall time while its steps ran (the check that its figure is per core)."""
    wall = dict.fromkeys(cases, 0.0)
    inner = dict.fromkeys(cases, 0)
    overheads, jax_cpu = [], 0.0
    for s in range(steps):
        for c in cases if s % 2 == 0 else cases[::-1]:
            if c == "jax":
                dt, cpu = jax_pes.timed_step()
                jax_cpu += cpu
                inner[c] += jax_pes.inner_steps_per_outer_step
            else:
                t0 = time.perf_counter()
                m = pools[c][0].step()
                dt = time.perf_counter() - t0
                inner[c] += m["inner_steps"]
                overheads.append(m["overhead"])
            wall[c] += dt
    cores = jax_cpu / wall["jax"] if "jax" in wall else float("nan")
    return {c: inner[c] / wall[c] for c in cases}, overheads, cores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved measurement rounds per phase")
    ap.add_argument("--steps", type=int, default=6, help="outer steps per measurement")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--tasks", type=int, default=2)
    ap.add_argument("--population", type=int, default=4)
    ap.add_argument("--unroll", type=int, default=10)
    ap.add_argument("--no-jax", action="store_true", help="skip the JAX reference")
    ap.add_argument(
        "--compile", action="store_true", help="also measure the compiled inner step (estimator.compile) of both rules"
    )
    ap.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where the workers' populations run (cuda: every worker takes a share of the node's GPUs, and the "
        "JAX peer runs on the GPU too); raise --population there: a GPU wants thousands of networks",
    )
    args = ap.parse_args()
    args.task = pinned_task(Path(tempfile.mkdtemp(prefix="nfopt-bench-")))
    gpus = 0
    if args.device == "cuda":
        gpus = torch.cuda.device_count()
        if gpus == 0:
            raise SystemExit("--device cuda: no CUDA device visible here")
    # the actors of one phase at a time: 1 + 2 for the scaling, 1 (+ 1 + 1 compiled) per core
    actors = 3
    args.gpu_share = gpus / actors if gpus else 0.0  # every worker an equal share of the node's GPUs
    jax_pes = None
    if not args.no_jax:
        # the JAX peer on the same kind of device (its GPU build otherwise takes the GPU by default)
        os.environ.setdefault("JAX_PLATFORMS", "cuda" if gpus else "cpu")
        try:  # before Ray starts: XLA's thread settings are read at import
            from anchors.jax_pes import JaxPES, from_nfopt_task
        except ImportError as err:
            print(f"JAX reference skipped ({err}; pip install -e '.[bench]')")
        else:
            jax_pes = JaxPES(from_nfopt_task(), args.tasks, args.population, args.unroll)
    init_ray(num_cpus=actors, num_gpus=gpus)  # room for one phase's actors; an idle one uses no core
    per_s: dict[str, list[float]] = {}
    jax_cores = []
    ratios, vs_jax, nfn_vs_jax, overheads = [], [], [], []

    def phase(pools: dict, with_jax: bool, report) -> None:
        """Warm ``pools`` (and the JAX peer), run the interleaved rounds, shut the pools down."""
        for learner, _ in pools.values():
            for _ in range(args.warmup):  # with a compiled step, the first steps compile
                learner.step()
        cases = list(pools) + (["jax"] if with_jax else [])
        if with_jax:
            for _ in range(args.warmup):  # the first step compiles
                jax_pes.step()
        for r in range(args.rounds):
            res, ovh, cores = interleaved_round(cases if r % 2 == 0 else cases[::-1], pools, jax_pes, args.steps)
            if with_jax:
                jax_cores.append(cores)
            for c in cases:
                per_s.setdefault(c, []).append(res[c])
            line = report(res, ovh)
            print(f"round {r}: " + ", ".join(f"{c} {res[c]:.0f}" for c in cases) + f" inner steps/s{line}", flush=True)
        for _, pool in pools.values():
            pool.shutdown()

    def scaling(res, ovh) -> str:
        overheads.extend(ovh)
        ratios.append(res["nfn_2"] / (2 * res["nfn_1"]))
        return f"; 2-worker efficiency {ratios[-1]:.2f}"

    def per_core(res, _ovh) -> str:
        if jax_pes is None:
            return ""
        mlp, nfn = ("mlp_1c", "nfn_1c") if args.compile else ("mlp_1", "nfn_pc")
        vs_jax.append(res[mlp] / res["jax"])
        nfn_vs_jax.append(res[nfn] / res["jax"])
        return f"; vs JAX (MLP rule{', compiled' if args.compile else ''}) {vs_jax[-1]:.2f}"

    print("phase 1, scaling: the NFN-NP rule on 1 and 2 workers", flush=True)
    phase({"nfn_1": make(1, args), "nfn_2": make(2, args)}, False, scaling)
    print("phase 2, per core: the rules on 1 worker against the JAX peer", flush=True)
    pools = {"mlp_1": make(1, args, "mlp")}
    if args.compile:
        pools |= {"nfn_1c": make(1, args, compile=True), "mlp_1c": make(1, args, "mlp", compile=True)}
    elif jax_pes is not None:  # the NFN rule on 1 worker again, interleaved with the JAX peer
        pools["nfn_pc"] = make(1, args)
    phase(pools, jax_pes is not None, per_core)
    cases = list(per_s)
    med = {c: statistics.median(v) for c, v in per_s.items()}
    for c in cases:
        print(f"{c}: median {med[c]:.0f} inner steps/s")
    jax_part = (
        f" vs_jax={statistics.median(vs_jax):.2f} nfn_vs_jax={statistics.median(nfn_vs_jax):.2f}" if vs_jax else ""
    )
    tail = f" jax_inner_per_s={med['jax']:.0f} jax_cores_used={max(jax_cores):.2f}" if "jax" in med else ""
    if args.compile:
        tail += f" mlp_compiled_inner_per_s={med['mlp_1c']:.0f} nfn_compiled_inner_per_s={med['nfn_1c']:.0f}"
    print(
        f"RESULT scaling_efficiency={statistics.median(ratios):.2f} overhead={statistics.median(overheads):.3f}"
        f"{jax_part} inner_per_s_1={med['nfn_1']:.0f} inner_per_s_2={med['nfn_2']:.0f} "
        f"mlp_inner_per_s={med['mlp_1']:.0f}{tail} device={args.device}"
    )


if __name__ == "__main__":
    main()
