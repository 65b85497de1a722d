"""Task-family and suite specs (YAML validated by pydantic; unknown keys rejected)."""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, Field, model_validator

from nfopt._files import load_yaml_model, read_yaml
from nfopt.data import DATASETS
from nfopt.specs import Float, Int, StrictModel

__all__ = [
    "AugmentSpec",
    "CNNSpec",
    "DatasetSpec",
    "MLPSpec",
    "MixtureComponent",
    "SuiteSpec",
    "SuiteTask",
    "TaskFamilySpec",
    "TaskMixtureSpec",
    "TaskSpecError",
    "load_suite",
    "load_task_family",
    "load_task_source",
    "task_path",
    "tasks_dir",
]

Activation = Literal["relu", "tanh", "gelu", "sigmoid", "elu", "silu", "leaky_relu"]


def _to_range(v):
    if isinstance(v, int) and not isinstance(v, bool):
        return (v, v)
    if isinstance(v, (list, tuple)) and len(v) == 2:
        return tuple(v)
    raise ValueError("expected an integer or a [min, max] pair")


def _to_list(v):
    return [v] if isinstance(v, str) else v


IntRange = Annotated[tuple[int, int], BeforeValidator(_to_range)]
Activations = Annotated[list[Activation], BeforeValidator(_to_list), Field(min_length=1)]


def _check_range(r: tuple[int, int], name: str, low: int = 1) -> None:
    if r[0] > r[1] or r[0] < low:
        raise ValueError(f"{name}={list(r)}: need {low} <= min <= max")


#: Largest image side a task may ask for (28x28 sources; 256 already means 84x more pixels).
MAX_IMAGE_SIZE = 256


class DatasetSpec(StrictModel):
    """Which data: a name from :data:`nfopt.data.DATASETS`, an image ``size`` (8, 14, 28, ...),
    a training subset, and loader ``options`` (e.g. ``n_in`` for teacher-student)."""

    name: Literal["digits", "fashion_mnist", "mnist", "cifar10", "mnist1d", "teacher_student"]
    size: Int | None = Field(default=None, gt=0, le=MAX_IMAGE_SIZE, description="image side (pixels)")
    num_train: Int | None = Field(default=None, gt=0)
    options: dict[str, Int | Float | str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _loader_takes_them(self):
        params = inspect.signature(DATASETS[self.name]).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return self
        takes = set(params) - {"size"}
        unknown = sorted(set(self.options) - takes)
        if unknown:
            raise ValueError(f"options {unknown} are not options of dataset {self.name!r}; it takes {sorted(takes)}")
        if self.size is not None and "size" not in params:
            raise ValueError(f"dataset {self.name!r} has no image size; leave `size` out")
        return self


class MLPSpec(StrictModel):
    """An MLP family: ``hidden_layers`` and ``width`` ranges, activations to choose from."""

    kind: Literal["mlp"]
    hidden_layers: IntRange = (1, 1)
    width: IntRange = (32, 32)
    activation: Activations = Field(default_factory=lambda: ["relu"])

    @model_validator(mode="after")
    def _ranges(self):
        _check_range(self.hidden_layers, "hidden_layers", low=0)
        _check_range(self.width, "width")
        return self


class CNNSpec(StrictModel):
    """A small CNN family: ``conv_layers`` convolutions of ``channels`` (same padding), global
    average pooling, then a linear classifier."""

    kind: Literal["cnn"]
    conv_layers: IntRange = (2, 2)
    channels: IntRange = (16, 16)
    kernel_size: Int = Field(default=3, gt=0)
    activation: Activations = Field(default_factory=lambda: ["relu"])

    @model_validator(mode="after")
    def _ranges(self):
        _check_range(self.conv_layers, "conv_layers")
        _check_range(self.channels, "channels")
        return self


class TaskFamilySpec(StrictModel):
    """A family of inner training problems; :meth:`nfopt.tasks.TaskFamily.sample` draws one."""

    name: str
    description: str = ""
    dataset: DatasetSpec
    model: Annotated[MLPSpec | CNNSpec, Field(discriminator="kind")]
    batch_size: IntRange = Field(description="minibatch size, or a [min, max] range drawn per task")
    loss: Literal["cross_entropy", "mse"] = "cross_entropy"
    horizon: IntRange = (100, 100)

    @model_validator(mode="after")
    def _consistent(self):
        _check_range(self.horizon, "horizon")
        _check_range(self.batch_size, "batch_size")
        regression = self.dataset.name == "teacher_student"
        if regression and self.loss != "mse":
            raise ValueError("loss: the teacher_student dataset is regression; use loss: mse")
        if not regression and self.loss == "mse":
            raise ValueError(f"loss: {self.dataset.name} is classification; use loss: cross_entropy")
        if self.model.kind == "cnn" and self.dataset.name in ("mnist1d", "teacher_student"):
            raise ValueError(f"model.kind: cnn needs an image dataset, not {self.dataset.name}")
        return self


class AugmentSpec(StrictModel):
    """Task augmentation (in the spirit of learned_optimization's ``ReparamWeights``): a network
    is trained in reparameterised coordinates ``p' = p / s`` (the model uses ``p = s p'``), with
    ``s = s_net * s_tensor``: one log-uniform ``s_net`` per task from ``reparam`` and an independent
    log-uniform ``s_tensor`` per parameter tensor from ``reparam_tensor``; the loss is multiplied
    by a log-uniform ``loss_scale``. A fraction ``prob`` of tasks is augmented; the rest are plain.
    Reparameterising by ``s`` moves Adam's best learning rate by about ``1/s``."""

    prob: Float = Field(default=1.0, ge=0, le=1)
    reparam: tuple[Float, Float] = (1.0, 1.0)
    reparam_tensor: tuple[Float, Float] = (1.0, 1.0)
    loss_scale: tuple[Float, Float] = (1.0, 1.0)

    @model_validator(mode="after")
    def _ranges(self):
        for name in ("reparam", "reparam_tensor", "loss_scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name}={[lo, hi]}: need 0 < min <= max")
        return self


class MixtureComponent(StrictModel):
    """One family of a mixture: a name in ``tasks/`` (or a path), or the family inline; its weight."""

    family: str | TaskFamilySpec
    weight: Float = Field(default=1.0, gt=0)


class TaskMixtureSpec(StrictModel):
    """A weighted mixture of task families plus task augmentation: each drawn task picks a family
    with probability proportional to its weight, samples it, then is augmented (``augment``)."""

    kind: Literal["mixture"]
    name: str
    description: str = ""
    families: list[MixtureComponent] = Field(min_length=1)
    augment: AugmentSpec = AugmentSpec()


class SuiteTask(TaskFamilySpec):
    """One concrete task of a suite: a family spec (usually with single values) and a seed."""

    seed: Int = 0


class SuiteSpec(StrictModel):
    """A held-out suite: named concrete tasks."""

    name: str
    description: str = ""
    tasks: list[SuiteTask] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self):
        names = [t.name for t in self.tasks]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"tasks: duplicate names {sorted(dup)}")
        return self


class TaskSpecError(ValueError):
    """A task or suite file that does not validate; the message names the file and the fields."""


def tasks_dir() -> Path:
    """Where named task families and suites live: ``$NFOPT_TASKS_DIR``, else ``./tasks``, else
    the repository's ``tasks/`` beside the package (editable install), else the copy a wheel
    installs under ``<prefix>/share/nfopt/tasks`` (``pip install`` outside the repository)."""
    env = os.environ.get("NFOPT_TASKS_DIR")
    if env:
        return Path(env)
    if Path("tasks").is_dir():
        return Path("tasks")
    repo = Path(__file__).resolve().parents[3] / "tasks"
    if repo.is_dir():
        return repo
    return Path(sys.prefix) / "share" / "nfopt" / "tasks"


def task_path(ref: str | Path, sub: str = "") -> Path:
    """The file a task reference names: a ``.yaml`` path or an existing file as given, else
    ``<tasks dir>/<sub>/<ref>.yaml`` (``sub="suites"`` for suites)."""
    p = Path(ref)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    return tasks_dir() / sub / f"{ref}.yaml"


def _load(path: Path, model: type[BaseModel]):
    return load_yaml_model(path, model, TaskSpecError, "task", f" (tasks live in {tasks_dir()})")


def load_task_family(ref: str | Path) -> TaskFamilySpec:
    """Read ``tasks/<ref>.yaml`` (or a path) into a validated :class:`TaskFamilySpec`."""
    return _load(task_path(ref), TaskFamilySpec)


def load_task_source(ref: str | Path) -> TaskFamilySpec | TaskMixtureSpec:
    """A task family or a task mixture (``kind: mixture``) from ``tasks/<ref>.yaml`` or a path."""
    path = task_path(ref)
    raw = read_yaml(path, TaskSpecError, "task", f" (tasks live in {tasks_dir()})")
    if isinstance(raw, dict) and raw.get("kind") == "mixture":
        return _load(path, TaskMixtureSpec)
    return _load(path, TaskFamilySpec)


def load_suite(ref: str | Path) -> SuiteSpec:
    """Read ``tasks/suites/<ref>.yaml`` (or a path) into a validated :class:`SuiteSpec`."""
    return _load(task_path(ref, "suites"), SuiteSpec)
