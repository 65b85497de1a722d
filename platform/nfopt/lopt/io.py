"""Saving and loading learned optimizers as one ``weights_only``-loadable file."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import torch

from nfopt._files import atomic_save
from nfopt.lopt.optimizer import LearnedOptimizer
from nfopt.lopt.rules import LearnedUpdateRule

__all__ = ["FORMAT", "OptimizerFileError", "TrainedOptimizer", "load_optimizer", "save_optimizer"]

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

    def __call__(
        self,
        params,
        num_steps: int | None = None,
        lr: float = 1.0,
        weight_decay: float = 0.0,
        describe: Collection[str] = (),
        compile: bool = False,
    ) -> LearnedOptimizer:
        """A :class:`LearnedOptimizer` with this rule over ``params`` (a model, its parameters or
        param groups); ``lr`` multiplies the trained step, ``weight_decay`` is decoupled;
        ``describe``: module families seen as their own weight spaces (``nfopt.lopt.layout``);
        ``compile``: run the rule's step through ``torch.compile``."""
        return LearnedOptimizer(
            params,
            self.rule,
            num_steps=num_steps,
            lr=lr,
            weight_decay=weight_decay,
            describe=describe,
            compile=compile,
        )

    def __repr__(self) -> str:
        return f"TrainedOptimizer({self.rule.kind!r}, metadata={self.metadata})"


class OptimizerFileError(ValueError):
    """A learned-optimizer file that cannot be used; the message names the file and what is wrong."""


def load_optimizer(path: str | Path) -> TrainedOptimizer:
    """Load a file written by :func:`save_optimizer` (``torch.load(weights_only=True)``).

    ``FileNotFoundError`` when it is missing; :class:`OptimizerFileError` (a ``ValueError``)
    naming the file and the problem when it is not a complete, finite nfopt optimizer file
    (truncated, not a torch file, another format, no config, weights of other shapes, NaN/inf)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such learned-optimizer file")
    if path.is_dir():
        raise OptimizerFileError(f"{path}: is a directory; give its learned_optimizer.pt")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        size = path.stat().st_size
        raise OptimizerFileError(
            f"{path}: not a readable nfopt learned-optimizer file ({size} bytes: truncated, or not written by "
            f"nfopt.lopt.save_optimizer; torch.load said: {str(err).splitlines()[0][:160]})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise OptimizerFileError(f"{path}: format {got!r} is not {FORMAT!r}; save with nfopt.lopt.save_optimizer")
    for field, kind in (("config", dict), ("state_dict", dict)):
        if not isinstance(payload.get(field), kind):
            raise OptimizerFileError(
                f"{path}: field {field!r} is missing or not a {kind.__name__}; the file is damaged"
            )
    try:
        rule = LearnedUpdateRule.from_config(payload["config"])
    except (TypeError, ValueError, KeyError) as err:
        raise OptimizerFileError(f"{path}: field 'config' does not describe a learned update rule ({err})") from None
    try:
        rule.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]
        raise OptimizerFileError(f"{path}: field 'state_dict' does not fit its config ({detail})") from None
    bad = [k for k, v in payload["state_dict"].items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise OptimizerFileError(f"{path}: non-finite (NaN/inf) weights in {bad[:3]}; the run that wrote it diverged")
    return TrainedOptimizer(rule.eval(), payload.get("metadata"))
