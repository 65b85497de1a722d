"""nfopt's ``torch.compile`` calls: inductor options, and functions compiled with their
leading arguments fixed and tensor-only guards (:func:`compile_bound`).

On CPU the compiled graph's wrapper (the code that allocates buffers and calls the generated
kernels and extern ops, once per call) is generated as C++ (``cpp_wrapper``) instead of Python:
at the quickstart's population (4 networks of 3,760 parameters) that wrapper was ~0.3 ms of a
~1.7 ms compiled inner step, and a PES estimate ran 54-73 ms instead of 68-91 ms (MLP rule) and
49 instead of 71 ms (NFN-NP rule) in alternating runs here; a cold compile of the MLP rule's plan
took 49 s against 52 s without it. Other devices keep inductor's defaults (not measured on a GPU).
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch

__all__ = ["compile_bound", "inductor_options"]


def inductor_options(device: torch.device | str) -> dict:
    """Options for ``torch.compile(..., options=...)`` of a function that runs on ``device``."""
    return {"cpp_wrapper": True} if torch.device(device).type == "cpu" else {}


def compile_bound(fn: Callable, *consts, device: torch.device | str) -> Callable:
    """``torch.compile`` of ``lambda *args: fn(*consts, *args)`` for ``device`` whose guards check
    the tensor arguments only (shapes, strides, dtypes): ``consts`` (modules, plans, numbers) are
    constants of the graph, never re-checked per call (checking a learned rule's Python guards took
    ~4% of a 32-network inner step, 0.36 of 9.7 ms).

    Dynamo keeps compiled graphs on the code object of the frame it compiled. With guards on
    tensors only, a graph traced for other constants would pass them: ``torch.compile`` of a
    ``functools.partial`` compiles its own shared wrapper frame, so every such partial with tensors
    of the same shapes ran the first one's graph, constants and all (another rule, plan or
    activation, silently). Each function returned here runs a code object of its own, so its
    graphs are its own."""

    def call(*args):
        return fn(*consts, *args)

    own = types.FunctionType(call.__code__.replace(), call.__globals__, call.__name__, None, call.__closure__)
    options = {"guard_filter_fn": torch.compiler.keep_tensor_guards_unsafe} | inductor_options(device)
    return torch.compile(own, options=options)
