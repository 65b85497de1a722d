"""The one toolkit for YAML specs (jobs, task families, suites, zoos, INR sets): a strict base
model and strict field types.

``StrictModel`` forbids unknown keys, is frozen and refuses non-finite floats (``.inf``,
``.nan``); ``Int`` refuses booleans, floats and strings (``outer_steps: 1e18`` or ``true`` is an
error, not a number); ``Float`` refuses booleans and strings (integers are fine); ``Rate`` is a
``Float`` > 0; ``Seed`` an ``Int`` in ``[0, 2**31)``; ``Name`` a name that is safe as a
directory (no separators, no ``..``). :func:`output_dir` is the one ``{name}`` rule for output
directories; :func:`child_seed` the one derivation of a member's seed from a base seed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, Strict, model_validator

__all__ = [
    "NAME_PATTERN",
    "Float",
    "Int",
    "Name",
    "Rate",
    "Seed",
    "StrictModel",
    "TrackingSpec",
    "child_seed",
    "output_dir",
]

Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
Rate = Annotated[float, Strict(), Field(gt=0, description="a learning rate (> 0)")]
Seed = Annotated[int, Strict(), Field(ge=0, lt=2**31, description="random seed in [0, 2**31)")]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
Name = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        pattern=NAME_PATTERN,
        description="letters, digits, '_', '-', '.'; no path separators, no leading '.' (outputs go under it)",
    ),
]


class StrictModel(BaseModel):
    """Base of every spec: unknown keys are errors; frozen; floats must be finite."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class TrackingSpec(StrictModel):
    """Where a run is tracked in MLflow: the one shape for jobs and experiments. ``tracking:
    false`` (or ``true``) is short for ``{enabled: false}``."""

    enabled: bool = True
    uri: str | None = Field(default=None, description="MLflow tracking URI (default: sqlite:///<cwd>/mlflow.db)")
    experiment: str | None = Field(
        default=None,
        description="MLflow experiment (default: the command's own: nfopt for nfopt run, nfopt-zoo, nfopt-inr)",
    )
    register_as: Name | None = Field(
        default=None,
        description="register the learned optimizer in the MLflow model registry under this name "
        "(load it with nfopt.load_optimizer('models:/NAME/VERSION')); meta-training jobs only",
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value):
        return {"enabled": value} if isinstance(value, bool) else value

    def experiment_or(self, default: str) -> str:
        """The experiment to log to: the one set here, else ``default`` (the command's own)."""
        return self.experiment or default


def output_dir(template: str, name: str) -> Path:
    """An output directory from a spec's template: ``{name}`` becomes the spec's name (a
    :data:`Name`, so it adds no path separators) and the path is made absolute."""
    return Path(template.replace("{name}", name)).absolute()


def child_seed(base: int, index: int, stride: int = 1_000_003) -> int:
    """The seed of member ``index`` (``0 <= index < stride``) of something seeded by ``base``:
    ``base * stride + index``, distinct for distinct ``(base, index)``. Callers that draw
    different kinds of members from one base use different strides (the values already in use:
    1000 for workers, 100_003 for networks of a population, 1_000_003 for minibatches and runs)."""
    return base * stride + index
