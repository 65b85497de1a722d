"""Typed messages of meta-training: what an estimator returns for one task, what a worker
returns for its shard, and θ packed into one flat buffer for transport between processes.

Both messages are ``NamedTuple``s: read by field name, and still unpackable in order.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["Estimate", "TaskEstimate", "Theta", "pack_theta", "theta_layout", "theta_views", "unpack_theta"]

Tensor = torch.Tensor
Theta = dict[str, Tensor]
Layout = list[tuple[str, tuple[int, ...]]]


class TaskEstimate(NamedTuple):
    """An estimator's answer for one inner task: θ-shaped ``grad``, ``metrics`` (``meta_loss``,
    ``nonfinite``, ``inner_steps``) and the task's next estimator ``state``."""

    grad: Theta
    metrics: dict
    state: dict


class Estimate(NamedTuple):
    """A worker's answer for one outer step: the mean ``grad`` over its ``tasks`` tasks and
    ``metrics`` (mean ``meta_loss``, summed ``nonfinite`` and ``inner_steps``, ``compute_s``)."""

    grad: Theta
    tasks: int
    metrics: dict


def theta_layout(theta: Theta) -> Layout:
    """``[(name, shape), ...]``: how :func:`pack_theta` lays θ out."""
    return [(k, tuple(v.shape)) for k, v in theta.items()]


def pack_theta(theta: Theta) -> np.ndarray:
    """θ (or a θ-shaped gradient) as one flat float array, in :func:`theta_layout` order."""
    return torch.cat([v.detach().reshape(-1).cpu() for v in theta.values()]).numpy()


def unpack_theta(flat, layout: Layout) -> Theta:
    """Inverse of :func:`pack_theta`; copies (buffers from another process are read-only)."""
    return theta_views(torch.from_numpy(np.array(flat)), layout)


def theta_views(flat: Tensor, layout: Layout) -> Theta:
    """Views of a flat ``(D,)`` tensor by name, laid out as :func:`theta_layout` says."""
    out, offset = {}, 0
    for name, shape in layout:
        n = math.prod(shape)
        out[name] = flat[offset : offset + n].view(shape)
        offset += n
    return out
