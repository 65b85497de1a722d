"""Saving and loading learned optimizers as one ``weights_only``-loadable file."""

from __future__ import annotations

from pathlib import Path

import torch

from nfopt._files import atomic_save
from nfopt.lopt.optimizer import LearnedOptimizer
from nfopt.lopt.rules import LearnedUpdateRule

__all__ = ["FORMAT", "TrainedOptimizer", "load_optimizer", "save_optimizer"]

FORMAT = "nfopt.learned_optimizer/1"


def save_optimizer(rule: LearnedUpdateRule, path: str | Path, metadata: dict | None = None) -> Path:
    """Write config + weights (+ JSON-able ``metadata``) atomically (temp file, then rename)."""
    payload = {
        "format": FORMAT,
        "config": rule.config(),
        "state_dict": {k: v.detach().cpu() for k, v in rule.state_dict().items()},
        "metadata": dict(metadata or {}),
    }
    return atomic_save(payload, path)


class TrainedOptimizer:
    """A loaded learned optimizer: ``opt = trained(model.parameters())`` gives a
    :class:`~nfopt.lopt.LearnedOptimizer`; ``trained.rule`` is the functional update rule."""

    def __init__(self, rule: LearnedUpdateRule, metadata: dict | None = None) -> None:
        self.rule, self.metadata = rule, dict(metadata or {})

    def __call__(self, params, num_steps: int | None = None) -> LearnedOptimizer:
        return LearnedOptimizer(params, self.rule, num_steps=num_steps)

    def __repr__(self) -> str:
        return f"TrainedOptimizer({self.rule.kind!r}, metadata={self.metadata})"


def load_optimizer(path: str | Path) -> TrainedOptimizer:
    """Load a file written by :func:`save_optimizer` (``torch.load(weights_only=True)``)."""
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise ValueError(f"{path}: not a readable nfopt learned-optimizer file ({err})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path}: format {got!r} is not {FORMAT!r}; save with nfopt.lopt.save_optimizer")
    rule = LearnedUpdateRule.from_config(payload["config"])
    rule.load_state_dict(payload["state_dict"])
    return TrainedOptimizer(rule.eval(), payload.get("metadata"))
