"""`TaskFamily` (a spec that samples tasks) and `Task` (one concrete inner training problem)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nfopt.data import Dataset, load_dataset
from nfopt.tasks.spec import CNNSpec, MLPSpec, SuiteSpec, TaskFamilySpec, load_suite, load_task_family
from nfopt.weightspace import NetworkSpec

__all__ = ["Task", "TaskFamily", "build_model", "load_suite_tasks"]

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
}


@lru_cache(maxsize=16)
def _dataset(name: str, size: int | None, num_train: int | None, options: tuple) -> Dataset:
    kwargs = dict(options)
    if size is not None:
        kwargs["size"] = size
    d = load_dataset(name, **kwargs)
    return d.subset(num_train) if num_train else d


def build_model(
    kind: str, widths: tuple[int, ...], activation: str, input_shape: tuple[int, ...], out: int, kernel_size: int = 3
) -> nn.Sequential:
    """An MLP (``widths`` = hidden widths) or CNN (``widths`` = conv channels) for the data."""
    act = _ACTIVATIONS[activation]
    mods: list[nn.Module] = []
    if kind == "mlp":
        n = 1
        for d in input_shape:
            n *= d
        mods.append(nn.Flatten())
        for w in widths:
            mods += [nn.Linear(n, w), act()]
            n = w
        mods.append(nn.Linear(n, out))
    else:
        c = input_shape[0]
        for w in widths:
            mods += [nn.Conv2d(c, w, kernel_size, padding=kernel_size // 2), act()]
            c = w
        mods += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, out)]
    return nn.Sequential(*mods)


@dataclass(frozen=True)
class Task:
    """One inner training problem: data, an architecture, a batch size, a loss and a horizon."""

    name: str
    family: str
    seed: int
    spec: TaskFamilySpec = field(repr=False)
    kind: str
    widths: tuple[int, ...]
    activation: str
    batch_size: int
    loss: str
    horizon: int

    @property
    def dataset(self) -> Dataset:
        d = self.spec.dataset
        return _dataset(d.name, d.size, d.num_train, tuple(sorted(d.options.items())))

    def build_model(self, seed: int | None = None) -> nn.Module:
        """A freshly initialised inner network (deterministic for a given ``seed``)."""
        data = self.dataset
        ks = self.spec.model.kernel_size if isinstance(self.spec.model, CNNSpec) else 3
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed if seed is None else seed)
            return build_model(self.kind, self.widths, self.activation, data.input_shape, data.output_size, ks)

    @cached_property
    def network_spec(self) -> NetworkSpec:
        return NetworkSpec.from_module(self.build_model())

    def loss_fn(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, target) if self.loss == "cross_entropy" else F.mse_loss(out, target)

    def population(self, size: int, seed: int = 0):
        """``size`` independently initialised networks as a :class:`~nfopt.tasks.Population`."""
        from nfopt.tasks.population import Population

        return Population.from_modules([self.build_model(seed * 100_003 + k) for k in range(size)], self.loss)


class TaskFamily:
    """A validated family spec; :meth:`sample` draws concrete tasks reproducibly."""

    def __init__(self, spec: TaskFamilySpec) -> None:
        self.spec = spec

    @classmethod
    def load(cls, ref: str | Path) -> TaskFamily:
        """From ``tasks/<ref>.yaml`` or a path."""
        return cls(load_task_family(ref))

    @property
    def name(self) -> str:
        return self.spec.name

    def sample(self, seed: int) -> Task:
        """The task for ``seed``: architecture, activation and horizon drawn from the ranges."""
        rng = random.Random(f"{self.spec.name}:{seed}")
        m = self.spec.model
        if isinstance(m, MLPSpec):
            depth = rng.randint(*m.hidden_layers)
            widths = tuple(rng.randint(*m.width) for _ in range(depth))
        else:
            depth = rng.randint(*m.conv_layers)
            widths = tuple(rng.randint(*m.channels) for _ in range(depth))
        return Task(
            name=f"{self.spec.name}/{seed}",
            family=self.spec.name,
            seed=seed,
            spec=self.spec,
            kind=m.kind,
            widths=widths,
            activation=rng.choice(list(m.activation)),
            batch_size=self.spec.batch_size,
            loss=self.spec.loss,
            horizon=rng.randint(*self.spec.horizon),
        )

    def __repr__(self) -> str:
        return f"TaskFamily({self.spec.name!r})"


def load_suite_tasks(ref: str | Path | SuiteSpec) -> list[Task]:
    """The concrete tasks of a suite (``tasks/suites/<ref>.yaml``), each named as in the suite."""
    suite = ref if isinstance(ref, SuiteSpec) else load_suite(ref)
    tasks = []
    for t in suite.tasks:
        family = TaskFamilySpec.model_validate(t.model_dump(exclude={"seed"}))
        task = TaskFamily(family).sample(t.seed)
        fields = {k: getattr(task, k) for k in Task.__dataclass_fields__}
        tasks.append(Task(**{**fields, "name": t.name}))
    return tasks
