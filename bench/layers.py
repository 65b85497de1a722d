"""Benchmark: nfopt NP/HNP/attention layers against the reference ``nfn`` package, side by side.

Stack: 3 equivariant linear layers, channels 1 -> 16 -> 16 -> 16, ReLU between, batch 32,
forward + backward from fixed output cotangents (``torch.autograd.backward(outputs, g)``, the same
seeded ``g`` on both sides: the layers' own work, which the roofline bound below counts); nfopt's
layers take the ReLU after them fused (``relu=True``: the same function, no pass of its own),
nfn's apply it after. Each round also times the step with a scalar loss (``sum of mean squares
of the outputs``, this benchmark's measure until 2026-12-04: its square, mean and their backward
cost both sides the same 3-5 ms, which dilutes every ratio): shown beside, and as
``worst_speed_ratio_with_loss``.
Configs: NP 64-32-32-10, HNP 64-32-32-10, NP 784-128-128-10; and one weight-space attention layer
(NFT; 16 channels, 4 heads, 16-channel inputs) against the reference ``NPAttention`` on
64-32-32-10. Timings are medians of interleaved runs in one process (the order flipping every
round); peak memory is the resident-set high-water mark of one step in a fresh subprocess per
side (above the process's resident set just before the step; nfopt's native kernels are loaded
before it, a one-time cost of the process, ~75 MiB of imports).

Allocator: both sides run under the same glibc settings. By default the script re-executes
itself with ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large>`` (keeps large blocks instead of
returning them to the OS and page-faulting them back on every step; see shared/PERFORMANCE.md);
``--default-malloc`` keeps glibc's defaults. The last line is
``RESULT worst_speed_ratio=X worst_memory_ratio=Y nft_speed_ratio=Z hnp_roofline=R
worst_speed_ratio_with_loss=XL nft_speed_ratio_with_loss=ZL`` (worst speed over the NP/HNP
stacks, worst peak-memory ratio nfopt/nfn over all, speed ratio of the attention layer, share of
its roofline bound the HNP stack reaches; the last two with the scalar loss).

Roofline, per config: this machine's matmul peak (a 1024^2 GEMM, timed once beside every round
of steps: the median over the config's rounds) and copy bandwidth (a 256 MiB copy, measured
first); the nfopt step's matmul FLOPs come from ``torch.utils.flop_counter`` (GEMMs only) and
its minimum memory traffic is taken as every activation and activation gradient of the stack
read or written once (4-byte floats), so the bound is ``max(FLOPs / peak, bytes / bandwidth)``;
the table shows achieved GFLOP/s and the share of the bound the step reaches (100% = at the
roofline).

Needs the ``bench`` extra (``nfn==0.1.2``, ``einops``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}
CONFIGS = {
    "NP 64-32-32-10": ("np", (64, 32, 32, 10)),
    "HNP 64-32-32-10": ("hnp", (64, 32, 32, 10)),
    "NP 784-128-128-10": ("np", (784, 128, 128, 10)),
    "NFT attn 64-32-32-10": ("attn", (64, 32, 32, 10)),
}
ATTN_CHANNELS, ATTN_HEADS = 16, 4
CHANNELS = (1, 16, 16, 16)
BATCH = 32


def build(impl: str, kind: str, widths: tuple[int, ...]):
    """(step function, parameter count) for one implementation; ``step()`` runs forward+backward
    from fixed output cotangents, ``step(loss=True)`` backward from the scalar loss instead.

    ``kind="attn"``: one weight-space self-attention layer (16 channels, 4 heads) on 16-channel
    inputs that require grad (ours: ``WeightSpaceAttention``, reference: ``NPAttention``)."""
    torch.manual_seed(0)
    shapes = [(widths[i + 1], widths[i]) for i in range(len(widths) - 1)]
    c0 = ATTN_CHANNELS if kind == "attn" else 1
    ws = [torch.randn(BATCH, c0, *s, requires_grad=kind == "attn") for s in shapes]
    bs = [torch.randn(BATCH, c0, s[0], requires_grad=kind == "attn") for s in shapes]
    if impl == "nfn":
        from nfn.common import NetworkSpec as RefSpec
        from nfn.common import WeightSpaceFeatures as RefFeatures
        from nfn.common.data import ArraySpec
        from nfn.layers import HNPLinear as RefHNP
        from nfn.layers import NPAttention as RefAttn
        from nfn.layers import NPLinear as RefNP

        spec = RefSpec([ArraySpec(s) for s in shapes], [ArraySpec((s[0],)) for s in shapes])
        if kind == "attn":
            layers = torch.nn.ModuleList([RefAttn(spec, ATTN_CHANNELS, num_heads=ATTN_HEADS)])
        else:
            cls = RefNP if kind == "np" else RefHNP
            layers = torch.nn.ModuleList(cls(spec, CHANNELS[i], CHANNELS[i + 1]) for i in range(3))
        x = RefFeatures(ws, bs)
    else:
        from nfopt import NetworkSpec, WeightSpaceFeatures
        from nfopt.nn import HNPLinear, NPLinear, WeightSpaceAttention

        spec = NetworkSpec(tuple(shapes))
        if kind == "attn":
            layers = torch.nn.ModuleList([WeightSpaceAttention(spec, ATTN_CHANNELS, ATTN_HEADS)])
        else:
            cls = NPLinear if kind == "np" else HNPLinear
            # the ReLU between layers fused into the layer before it (the same function)
            layers = torch.nn.ModuleList(cls(spec, CHANNELS[i], CHANNELS[i + 1], relu=i < 2) for i in range(3))
        x = WeightSpaceFeatures(ws, bs)

    def forward():
        h = x
        for k, layer in enumerate(layers):
            h = layer(h)
            if k < len(layers) - 1 and not getattr(layer, "relu", False):
                h = h.map(torch.relu)
        return [*h.weights, *h.biases]

    # the fixed output cotangents, the same on both sides (seeded; outputs have the inputs' shapes
    # with the last layer's channels). Not from a forward pass here: its freed memory would stay
    # in the process and hide part of the step's peak from measure_peak
    gen, c_out = torch.Generator().manual_seed(1), ATTN_CHANNELS if kind == "attn" else CHANNELS[-1]
    cotangents = [torch.randn(BATCH, c_out, *t.shape[2:], generator=gen) for t in (*ws, *bs)]

    def step(loss: bool = False) -> None:
        outs = forward()
        if loss:
            sum(t.square().mean() for t in outs).backward()
        else:
            torch.autograd.backward(outs, cotangents)
        for p in (*layers.parameters(), *ws, *bs):
            p.grad = None

    n_params = sum(p.numel() for p in layers.parameters())
    return step, n_params


_PROBE = (torch.randn(1024, 1024), torch.randn(1024, 1024))


def gemm_probe() -> float:
    """GFLOP/s of one 1024^2 GEMM now: timed beside every round of steps, so the roofline bound
    of a config uses the host's speed while that config ran (it drifts on a shared machine)."""
    a, b = _PROBE
    t0 = time.perf_counter()
    a @ b
    return 2 * 1024**3 / (time.perf_counter() - t0) / 1e9


def machine_peaks() -> tuple[float, float]:
    """(GEMM GFLOP/s, copy GB/s) of this process's thread settings: medians of a few runs."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    gemm = []
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        gemm.append(2 * 1024**3 / (time.perf_counter() - t0) / 1e9)
    src = torch.randn(64 * 2**20)  # 256 MiB
    dst = torch.empty_like(src)
    dst.copy_(src)
    bw = []
    for _ in range(5):
        t0 = time.perf_counter()
        dst.copy_(src)
        bw.append(2 * src.numel() * 4 / (time.perf_counter() - t0) / 1e9)  # read + write
    return statistics.median(gemm), statistics.median(bw)


def _baddbmm_flops(_self, b1, b2, *_, out_shape=None, **__) -> int:  # shapes, as FlopCounterMode passes them
    return 2 * b1[0] * b1[1] * b1[2] * b2[2]


def _addmm_flops(_self, m1, m2, *_, out_shape=None, **__) -> int:
    return 2 * m1[0] * m1[1] * m2[1]


def step_flops(step) -> int:
    """Matmul/conv FLOPs of one ``step()`` (forward and backward). torch's counter skips the
    in-place ``baddbmm_``/``addmm_`` (it read 0.49 GFLOP for the large NP step, whose per-entry
    products alone are ~8): counted here. Under the counter (a dispatch mode) nfopt's layers run
    their plain-op path, the same products as the native kernels."""
    from torch.utils.flop_counter import FlopCounterMode

    inplace = {torch.ops.aten.baddbmm_: _baddbmm_flops, torch.ops.aten.addmm_: _addmm_flops}
    with FlopCounterMode(display=False, custom_mapping=inplace) as fc:
        step()
    return fc.get_total_flops()


def min_bytes(kind: str, widths: tuple[int, ...]) -> int:
    """Activations and their gradients of the stack, each touched once: the least memory traffic
    any implementation of one forward+backward step needs (float32)."""
    entries = sum(widths[i + 1] * widths[i] + widths[i + 1] for i in range(len(widths) - 1))
    chans = [ATTN_CHANNELS, ATTN_CHANNELS] if kind == "attn" else list(CHANNELS)
    # forward: read every layer's input, write its output; backward: read output grads and
    # inputs, write input grads (not for the data input, which needs no gradient)
    per_entry = sum(chans[:-1]) + sum(chans[1:])  # forward reads + writes
    per_entry += sum(chans[1:]) + sum(chans[:-1]) + sum(chans[1:-1])  # backward
    return 4 * BATCH * entries * per_entry


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_child(impl: str, config: str) -> None:
    step, _ = build(impl, *CONFIGS[config])
    if impl == "nfopt":  # load the native kernels first: a one-time cost of the process (~75 MiB of
        from nfopt.nn import _native  # imports), not memory of the step

        _native.available()
    with open("/proc/self/clear_refs", "w") as f:  # reset the high-water mark to the current RSS
        f.write("5")
    before = _status_kib("VmRSS")
    step()
    print(json.dumps({"peak": (_status_kib("VmHWM") - before) * 1024}))


def measure_peak(impl: str, config: str) -> int:
    out = subprocess.run(
        [sys.executable, __file__, "--peak-child", impl, config],
        check=True,
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["peak"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=0, help="timed steps per side (0: by config)")
    ap.add_argument("--default-malloc", action="store_true", help="keep glibc's allocator defaults")
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS), help="subset of configs")
    ap.add_argument("--peak-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.peak_child:
        peak_child(*args.peak_child)
        return
    if not args.default_malloc and any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
    env = "default glibc malloc" if args.default_malloc else " ".join(f"{k}={v}" for k, v in MALLOC_ENV.items())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, allocator: {env}")
    print(f"stack: channels {CHANNELS}, ReLU between, batch {BATCH}, forward+backward from output cotangents")
    peak_gflops, peak_gbs = machine_peaks()
    print(f"machine (this thread setting): GEMM {peak_gflops:.1f} GFLOP/s, copy {peak_gbs:.1f} GB/s\n")
    roofline = []
    header = (
        f"{'config':<20}{'nfn ms':>10}{'nfopt ms':>10}{'speed-up':>10}{'with loss':>11}"
        f"{'nfn MiB':>10}{'nfopt MiB':>11}{'mem ratio':>11}{'params nfn/nfopt':>20}"
    )
    print(header)
    speed, memory, nft, share = [], [], [], {}
    speed_loss, nft_loss = [], []
    for name in args.configs:
        steps, params = {}, {}
        for impl in ("nfn", "nfopt"):
            steps[impl], params[impl] = build(impl, *CONFIGS[name])
        repeats = args.repeats or (5 if "784" in name else 30)
        for impl in steps:  # warm-up
            steps[impl]()
            steps[impl](loss=True)
        times, probes = {(impl, loss): [] for impl in steps for loss in (False, True)}, []
        gemm_probe()
        order = [(impl, loss) for loss in (False, True) for impl in steps]
        for r in range(repeats):
            # the order flips every round: each side follows the other's step (whose memory
            # traffic evicts the caches) as often as the GEMM probe
            for impl, loss in order if r % 2 == 0 else order[::-1]:
                t0 = time.perf_counter()
                steps[impl](loss=loss)
                times[(impl, loss)].append(time.perf_counter() - t0)
            probes.append(gemm_probe())
        flops = step_flops(steps["nfopt"])
        del steps
        with_loss = {impl: statistics.median(v) * 1e3 for (impl, loss), v in times.items() if loss}
        med = {impl: statistics.median(v) * 1e3 for (impl, loss), v in times.items() if not loss}
        peak = statistics.median(probes)  # the GEMM peak while this config ran
        t_flop, t_mem = flops / (peak * 1e9), min_bytes(*CONFIGS[name]) / (peak_gbs * 1e9)
        bound_ms = max(t_flop, t_mem) * 1e3
        share[name] = bound_ms / med["nfopt"]
        roofline.append(
            f"  {name}: {flops / 1e9:.3f} GFLOP per step, {flops / med['nfopt'] / 1e6:.1f} GFLOP/s achieved "
            f"({100 * flops / med['nfopt'] / 1e6 / peak:.0f}% of the GEMM peak, {peak:.0f} GFLOP/s beside its "
            f"steps); roofline bound {bound_ms:.2f} ms ({'compute' if t_flop > t_mem else 'memory'}-bound): "
            f"nfopt reaches {100 * bound_ms / med['nfopt']:.0f}% of it, nfn {100 * bound_ms / med['nfn']:.0f}%"
        )
        peaks = {impl: measure_peak(impl, name) for impl in ("nfn", "nfopt")}
        ratio, mem_ratio = med["nfn"] / med["nfopt"], peaks["nfopt"] / max(peaks["nfn"], 1)
        ratio_loss = with_loss["nfn"] / with_loss["nfopt"]
        (nft if CONFIGS[name][0] == "attn" else speed).append(ratio)
        (nft_loss if CONFIGS[name][0] == "attn" else speed_loss).append(ratio_loss)
        memory.append(mem_ratio)
        print(
            f"{name:<20}{med['nfn']:>10.1f}{med['nfopt']:>10.1f}{ratio:>9.2f}x{ratio_loss:>10.2f}x"
            f"{peaks['nfn'] / 2**20:>10.0f}{peaks['nfopt'] / 2**20:>11.0f}{mem_ratio:>11.2f}"
            f"{params['nfn']:>11}/{params['nfopt']}",
            flush=True,
        )
    print("\nroofline (nfopt's step):")
    print("\n".join(roofline))
    fields = []
    if speed:
        fields.append(f"worst_speed_ratio={min(speed):.2f}")
    fields.append(f"worst_memory_ratio={max(memory):.2f}")
    if nft:
        fields.append(f"nft_speed_ratio={min(nft):.2f}")
    fields += [f"hnp_roofline={v:.2f}" for k, v in share.items() if CONFIGS[k][0] == "hnp"]
    if speed_loss:
        fields.append(f"worst_speed_ratio_with_loss={min(speed_loss):.2f}")
    if nft_loss:
        fields.append(f"nft_speed_ratio_with_loss={min(nft_loss):.2f}")
    print("RESULT " + " ".join(fields))


if __name__ == "__main__":
    main()
