"""Optional fused CPU kernels: ``csrc/np_kernels.cpp``, one-pass row/column sums and per-entry
mixes for NP/HNP layers and a tiled per-entry MLP for the per-parameter learned optimizer
(``entry_mlp``, usable inside ``torch.compile`` graphs: it has a fake implementation for
tracing); ``csrc/np_layer.cpp``, an NP/HNP layer's whole forward and backward on those kernels
(``np_forward``, ``np_backward``, ``np_pool``); ``csrc/lopt_kernels.cpp``, the learned update
rule's features and bounded step (:mod:`nfopt.lopt.kernels`); ``csrc/nft_kernels.cpp``,
weight-space attention's token gathers with blocked transposes and the per-entry channel
LayerNorm. One library, ``torch.ops.nfopt_native``.

Compiled on first use with the machine's C++ compiler (``torch.utils.cpp_extension``, ninja)
into ``$NFOPT_BUILD_DIR`` (default ``~/.cache/nfopt/native``), keyed by the source and flags, the torch
version and the CPU, so a cached build is never reused on another kind of machine. Where the
build fails (no compiler) or ``NFOPT_NATIVE=0`` is set, layers use the pure-PyTorch path, which
computes the same function (tested for equality).
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path

import torch

__all__ = ["available", "ops"]

_log = logging.getLogger(__name__)
_SOURCES = ("np_kernels.cpp", "np_layer.cpp", "lopt_kernels.cpp", "nft_kernels.cpp")
_SRCS = tuple(Path(__file__).with_name("csrc") / name for name in _SOURCES)
_state: dict = {"tried": False, "ops": None, "error": None}
# -ffp-contract=fast: FMAs (GCC emits none under -std=c++17); part of the build key
_CFLAGS = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=fast", "-fno-math-errno"]


def _cpu_key() -> bytes:
    try:
        with open("/proc/cpuinfo", "rb") as f:
            return b"".join(line for line in f if line.startswith((b"model name", b"flags")))[:4096]
    except OSError:
        return os.uname().machine.encode()


def ops():
    """``torch.ops.nfopt_native`` or ``None`` when the kernels are unavailable."""
    if os.environ.get("NFOPT_NATIVE", "1") == "0":
        return None
    if _state["tried"]:
        return _state["ops"]
    _state["tried"] = True
    try:
        from torch.utils.cpp_extension import load

        src = b"".join(path.read_bytes() for path in _SRCS)
        key = hashlib.sha1(src + " ".join(_CFLAGS).encode() + torch.__version__.encode() + _cpu_key()).hexdigest()[:12]
        root = Path(os.environ.get("NFOPT_BUILD_DIR", Path.home() / ".cache" / "nfopt" / "native"))
        build = root / key
        build.mkdir(parents=True, exist_ok=True)
        _log.info("nfopt: building fused CPU kernels in %s (once per machine)", build)
        load(
            name=f"nfopt_native_{key}",
            sources=[str(path) for path in _SRCS],
            extra_cflags=_CFLAGS,
            extra_ldflags=["-fopenmp"],
            build_directory=str(build),
            is_python_module=False,
            verbose=False,
        )
        _register_fakes()
        _state["ops"] = torch.ops.nfopt_native
    except Exception as err:  # no compiler, no ninja, ...: fall back, say so once
        _state["error"] = err
        warnings.warn(f"nfopt: fused CPU kernels unavailable, using the PyTorch path ({err})", stacklevel=2)
    return _state["ops"]


def _register_fakes() -> None:
    """Shapes of the ops' outputs for tracing (``torch.compile``, fake tensors)."""

    @torch.library.register_fake("nfopt_native::entry_mlp")
    def _(x, w1, c1, weights, biases):  # (B, F, N) -> (B, O, N)
        return x.new_empty((x.shape[0], weights[-1].shape[0], x.shape[2]))


@torch.compiler.assume_constant_result
def available() -> bool:
    """Whether the kernels are built and loaded (builds them on the first call). A constant to
    ``torch.compile``: a traced graph calls the ops directly when they were available."""
    return ops() is not None
