"""Meta-training checkpoints that load with ``torch.load(weights_only=True)``: nothing in them
can run code. Learner and worker states hold :class:`~nfopt.weightspace.WeightSpaceFeatures`;
they are written as plain containers of tensors and numbers and rebuilt on load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nfopt._files import atomic_save
from nfopt.weightspace import WeightSpaceFeatures

__all__ = ["CheckpointError", "decode_state", "encode_state", "load_checkpoint", "save_checkpoint"]

_WSF = "__nfopt_wsf__"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read safely; the message names the file and the fix."""


def encode_state(obj: Any) -> Any:
    """Plain form of a state: features become ``{_WSF: [weights, biases]}``, tuples lists."""
    if isinstance(obj, WeightSpaceFeatures):
        return {_WSF: [list(obj.weights), list(obj.biases)]}
    if isinstance(obj, dict):
        return {k: encode_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [encode_state(v) for v in obj]
    return obj


def decode_state(obj: Any) -> Any:
    """Inverse of :func:`encode_state`."""
    if isinstance(obj, dict):
        if set(obj) == {_WSF}:
            weights, biases = obj[_WSF]
            return WeightSpaceFeatures(weights, biases)
        return {k: decode_state(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode_state(v) for v in obj]
    return obj


def save_checkpoint(obj: dict, path: str | Path) -> Path:
    """Write ``obj`` atomically in the plain form."""
    return atomic_save(encode_state(obj), path)


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint with ``weights_only=True``; a file that needs more (a pickled object, an
    old-format checkpoint) raises :class:`CheckpointError` naming it, and nothing in it runs."""
    path = Path(path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise CheckpointError(
            f"{path}: not a checkpoint nfopt can load safely (weights_only): {str(err).splitlines()[0]}; "
            "start the run again with --overwrite"
        ) from None
    if not isinstance(raw, dict) or raw.get("format") != "nfopt.run/1":
        raise CheckpointError(f"{path}: not an nfopt run checkpoint (format nfopt.run/1); start again with --overwrite")
    return decode_state(raw)
