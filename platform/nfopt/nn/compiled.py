"""Inductor options for nfopt's ``torch.compile`` calls.

On CPU the compiled graph's wrapper (the code that allocates buffers and calls the generated
kernels and extern ops, once per call) is generated as C++ (``cpp_wrapper``) instead of Python:
at the quickstart's population (4 networks of 3,760 parameters) that wrapper was ~0.3 ms of a
~1.7 ms compiled inner step, and a PES estimate ran 54-73 ms instead of 68-91 ms (MLP rule) and
49 instead of 71 ms (NFN-NP rule) in alternating runs here; a cold compile of the MLP rule's plan
took 49 s against 52 s without it. Other devices keep inductor's defaults (not measured on a GPU).
"""

from __future__ import annotations

import torch

__all__ = ["inductor_options"]


def inductor_options(device: torch.device | str) -> dict:
    """Options for ``torch.compile(..., options=...)`` of a function that runs on ``device``."""
    return {"cpp_wrapper": True} if torch.device(device).type == "cpu" else {}
